//! What a [`Signal`](super::Signal) shares with its sessions ([`Inner`]): the node,
//! the rendezvous and its control connection, the open sessions, the
//! dispatcher, the relays, the allocation tracker.

use super::error::ConnectError;
use super::opts::SignalConfig;
use crate::{Connection, Node};
use crate::detect::alloc_probe::AllocTracker;
use crate::quic::dispatch::Dispatch;
use crate::relay::RelaySet;
use macula_nat_proto::limits::caps::Caps;
use macula_nat_proto::signal::{Msg, NodeId, SessionId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, watch};

/// Signalling messages of one session, routed from the control loop.
pub(super) type SessionTx = mpsc::UnboundedSender<Msg>;

pub(super) struct Inner {
    pub(super) node: Arc<Node>,
    pub(super) rendezvous: SocketAddr,
    pub(super) rendezvous_id: NodeId,
    pub(super) cfg: RwLock<SignalConfig>,
    pub(super) control: watch::Sender<Option<Connection>>,
    pub(super) observed: Mutex<Option<SocketAddr>>,
    pub(super) sessions: Mutex<HashMap<SessionId, SessionTx>>,
    pub(super) dispatch: Arc<Dispatch>,
    pub(super) relays: Arc<RelaySet>,
    /// Where our NAT's port counter is, when it allocates contiguously.
    pub(super) alloc: Arc<AllocTracker>,
    /// Relayed connections where we were the responder, for the upgrade
    /// (their method changes when the initiator moves them).
    pub(super) relayed_in: Mutex<Vec<Connection>>,
    /// Responder sessions running, per initiator and in total (see
    /// `SignalConfig::max_responder_sessions`).
    pub(super) responding: Mutex<Caps<NodeId>>,
    pub(super) role: Role,
}

/// What a membership is to its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The home whose view of our address is our reflexive address, and
    /// that learns the primer TTL.
    Primary,
    /// Another home (see `super::homes`): joined, pinged and rejoined like
    /// the primary, but its view of our address is not taken as ours
    /// (behind an address-dependent NAT each rendezvous sees another port).
    Standby,
    /// A guest membership (see `super::reach`), dialled on demand.
    Guest,
}

pub(super) fn control(inner: &Inner) -> Result<Connection, ConnectError> {
    inner.control.borrow().clone().ok_or(ConnectError::NoRendezvous)
}
