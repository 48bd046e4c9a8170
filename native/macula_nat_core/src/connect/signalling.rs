//! The signalling client: a node's membership at a rendezvous ([`Signal`],
//! the membership itself in `membership`), and [`connect`] through it, or
//! through the target's own rendezvous (`reach`).

use crate::lock::{lock, write};
use super::error::ConnectError;
use super::inner::Inner;
use super::membership::{build_inner, start};
use super::opts::{ConnectOpts, Connected, SignalConfig};
use super::reach::{initiate_anywhere, Reach};
use crate::{Connection, Node};
use crate::profile_cache::ProfileCache;
use crate::quic::Method;
use crate::relay::RelaySet;
use macula_nat_proto::connect::public_profile;
use macula_nat_proto::record::PeerInfo;
use macula_nat_proto::signal::NodeId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;

/// A node's membership at a rendezvous. Dropping it (or `close`) leaves.
pub struct Signal {
    pub(super) inner: Arc<Inner>,
    pub(super) task: JoinHandle<()>,
    /// Follows the node's published profile (see
    /// `membership::follow_profile`).
    pub(super) follow: JoinHandle<()>,
    /// Reaching targets registered at other rendezvous.
    pub(super) reach: Arc<Reach>,
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.close();
    }
}

impl Signal {
    /// Joins the rendezvous at `rendezvous_addr` (whose node key must be
    /// `rendezvous_id`) with a public, unfiltered profile. Use
    /// [`Signal::join_with`] to give the node's detected profile.
    pub async fn join(node: Arc<Node>, rendezvous_addr: SocketAddr, rendezvous_id: NodeId) -> Result<Signal, ConnectError> {
        Self::join_with(node, rendezvous_addr, rendezvous_id, SignalConfig::new(public_profile())).await
    }

    pub async fn join_with(
        node: Arc<Node>,
        rendezvous_addr: SocketAddr,
        rendezvous_id: NodeId,
        cfg: SignalConfig,
    ) -> Result<Signal, ConnectError> {
        let relays = RelaySet::new(&node);
        let inner = build_inner(node, rendezvous_addr, rendezvous_id, cfg, relays, false)?;
        let mut tasks = start(&inner).await?.into_iter();
        let (Some(task), Some(follow)) = (tasks.next(), tasks.next()) else { return Err(ConnectError::Closed) };
        Ok(Signal { inner, task, follow, reach: Arc::default() })
    }

    /// Where records are looked up when our rendezvous does not know a
    /// target (see `reach`): the node's profile cache, whose DHT holds the
    /// signed records. Without one a connect only reaches nodes registered
    /// at our rendezvous.
    pub fn set_directory(&self, cache: Option<Arc<ProfileCache>>) {
        self.reach.set_directory(cache);
    }

    /// Keeps the relays we hold a live reservation at in `adv`'s record
    /// (its `RESERVED` contacts): where a peer that found us by id may
    /// relay to us. Follows them until the signal closes.
    pub fn advertise_reservations(&self, adv: Arc<crate::advertiser::Advertiser>) {
        self.reach.advertise_reservations(&self.inner.relays, adv);
    }

    /// Guest signalling connections (to other rendezvous) open right now.
    pub fn guest_connections(&self) -> usize {
        self.reach.guests()
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.inner.node
    }

    /// Our address as the rendezvous sees it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        *lock(&self.inner.observed)
    }

    /// Sessions with a signalling channel open right now (initiator and
    /// responder sides): what a stuck session would leak.
    pub fn open_sessions(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Responder sessions running right now (bounded by
    /// `SignalConfig::max_responder_sessions`).
    pub fn responder_sessions(&self) -> usize {
        lock(&self.inner.responding).held()
    }

    /// Whether the control connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.control.borrow().as_ref().is_some_and(|c| c.close_reason().is_none())
    }

    /// Replaces the configured profile: the one advertised while the node
    /// has none published (a node whose detections publish to
    /// [`Node::local_profile`] needs no call here; tests use it to give a
    /// profile by hand to a node that detects none).
    pub fn set_profile(&self, profile: PeerInfo) {
        write(&self.inner.cfg).profile = profile;
    }

    /// The next incoming connection: sessions where this node was the
    /// responder, and unsolicited connections. `None` once the node closed.
    pub async fn accept(&self) -> Option<Connection> {
        self.inner.dispatch.accept().await
    }

    /// The relays to hold reservations at, best first (e.g. from the relay
    /// registry). The live ones are advertised to peers.
    pub fn set_relays(&self, relays: Vec<(NodeId, SocketAddr)>) {
        self.inner.relays.set_wanted(relays);
    }

    /// Relays we hold a live reservation at.
    pub fn reserved_relays(&self) -> Vec<(NodeId, SocketAddr)> {
        self.inner.relays.reserved()
    }

    /// Leaves the rendezvous (closes the control connection).
    pub fn close(&self) {
        self.task.abort();
        self.follow.abort();
        self.inner.relays.close();
        self.reach.close();
        if let Some(c) = self.inner.control.borrow().as_ref() {
            c.close("signal closed");
        }
    }
}

/// Connects to `target`: through the signal's rendezvous, or, when it does
/// not know the target, through one its signed record names (see
/// [`Signal::set_directory`]).
pub async fn connect(signal: &Signal, target: NodeId, opts: ConnectOpts) -> Result<(Connection, Method), ConnectError> {
    connect_detailed(signal, target, opts).await.map(|c| (c.conn, c.method))
}

/// Like [`connect`], also saying which strategy was used and how long it took.
pub async fn connect_detailed(signal: &Signal, target: NodeId, opts: ConnectOpts) -> Result<Connected, ConnectError> {
    let started = Instant::now();
    let timeout = opts.timeout;
    let r = tokio::time::timeout(timeout, initiate_anywhere(&signal.inner, &signal.reach, target, &opts)).await;
    match r {
        Ok(Ok((conn, method, strategy, through))) => {
            tracing::debug!("signal: connected to {} ({}, {})", conn.remote_address(), method.name(), strategy.name());
            conn.set_method(method);
            super::failover::look_after_direct(&through, &conn, target, &opts);
            Ok(Connected { conn, method, strategy, elapsed: started.elapsed() })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::Timeout),
    }
}
