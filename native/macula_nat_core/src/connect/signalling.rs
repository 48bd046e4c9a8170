//! The signalling client: a node's membership at its rendezvous
//! ([`Signal`]: one or several homes, `homes`; each a membership,
//! `membership`), and [`connect`] through a live one, or through the
//! target's own rendezvous (`reach`).

use crate::lock::{lock, write};
use super::error::ConnectError;
use super::inner::Inner;
use super::homes::Home;
use super::opts::{ConnectOpts, Connected, SignalConfig};
use super::reach::{initiate_anywhere, Reach};
use crate::{Connection, Node};
use crate::profile_cache::ProfileCache;
use crate::quic::Method;
use macula_nat_proto::connect::public_profile;
use macula_nat_proto::record::{Contact, PeerInfo};
use macula_nat_proto::signal::NodeId;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;

/// A node's membership at its rendezvous: one or several homes (see
/// `homes`), one set of relays. Dropping it (or `close`) leaves.
pub struct Signal {
    /// In the configured order; the first is the primary.
    pub(super) homes: Vec<Home>,
    /// Reaching targets registered at other rendezvous.
    pub(super) reach: Arc<Reach>,
    /// Keeps our record naming the live homes (see `homes::advertise`).
    advertising: Mutex<Option<JoinHandle<()>>>,
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
        Self::join_homes(node, &[Contact { node_id: rendezvous_id, addr: rendezvous_addr }], cfg).await
    }

    /// Joins every rendezvous of `rendezvous` (preferred first; duplicates
    /// dropped, at most `macula_nat_proto::homes::MAX_HOMES`) from the
    /// node's one socket: the node is reachable through any of them while
    /// one lives. Fails only when none can be joined; one that cannot yet
    /// is retried in the background.
    pub async fn join_homes(node: Arc<Node>, rendezvous: &[Contact], cfg: SignalConfig) -> Result<Signal, ConnectError> {
        let homes = super::homes::join(node, rendezvous, cfg).await?;
        Ok(Signal { homes, reach: Arc::default(), advertising: Mutex::new(None) })
    }

    pub(super) fn inner(&self) -> &Arc<Inner> {
        &self.homes[0].inner
    }

    /// Where records are looked up when our rendezvous do not know a
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
        self.reach.advertise_reservations(&self.inner().relays, adv);
    }

    /// Keeps `adv`'s record naming the homes that are live (all of them
    /// when none is): a dead one leaves it within a second of being
    /// noticed, and comes back once rejoined. Until the signal closes.
    pub fn advertise_homes(&self, adv: Arc<crate::advertiser::Advertiser>) {
        let task = super::homes::advertise(&self.homes, adv);
        if let Some(old) = lock(&self.advertising).replace(task) {
            old.abort();
        }
    }

    /// Our homes (the rendezvous we join), in the configured order, and
    /// whether each control connection is up right now.
    pub fn homes(&self) -> Vec<(Contact, bool)> {
        self.homes.iter().map(|h| (h.contact(), h.is_live())).collect()
    }

    /// Guest signalling connections (to other rendezvous) open right now.
    pub fn guest_connections(&self) -> usize {
        self.reach.guests()
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.inner().node
    }

    /// Our address as the primary rendezvous sees it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        *lock(&self.inner().observed)
    }

    /// Sessions with a signalling channel open right now (initiator and
    /// responder sides, all homes): what a stuck session would leak.
    pub fn open_sessions(&self) -> usize {
        self.homes.iter().map(|h| lock(&h.inner.sessions).len()).sum()
    }

    /// Responder sessions running right now (bounded by
    /// `SignalConfig::max_responder_sessions` per home).
    pub fn responder_sessions(&self) -> usize {
        self.homes.iter().map(|h| lock(&h.inner.responding).held()).sum()
    }

    /// Whether a control connection (to any home) is up right now.
    pub fn is_connected(&self) -> bool {
        self.homes.iter().any(Home::is_live)
    }

    /// Replaces the configured profile: the one advertised while the node
    /// has none published (a node whose detections publish to
    /// [`Node::local_profile`] needs no call here; tests use it to give a
    /// profile by hand to a node that detects none).
    pub fn set_profile(&self, profile: PeerInfo) {
        for h in &self.homes {
            write(&h.inner.cfg).profile = profile.clone();
        }
    }

    /// The next incoming connection: sessions where this node was the
    /// responder (through any home), and unsolicited connections. `None`
    /// once the node closed.
    pub async fn accept(&self) -> Option<Connection> {
        self.inner().dispatch.accept().await
    }

    /// The relays to hold reservations at, best first (e.g. from the relay
    /// registry). The live ones are advertised to peers.
    pub fn set_relays(&self, relays: Vec<(NodeId, SocketAddr)>) {
        self.inner().relays.set_wanted(relays);
    }

    /// Relays we hold a live reservation at.
    pub fn reserved_relays(&self) -> Vec<(NodeId, SocketAddr)> {
        self.inner().relays.reserved()
    }

    /// Leaves the rendezvous (closes the control connections), the relays
    /// and the guests, and stops writing our record.
    pub fn close(&self) {
        if let Some(t) = lock(&self.advertising).take() {
            t.abort();
        }
        for h in &self.homes {
            h.close();
        }
        self.inner().relays.close();
        self.reach.close();
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
    let live: Vec<bool> = signal.homes.iter().map(Home::is_live).collect();
    let homes: Vec<Arc<Inner>> = macula_nat_proto::homes::order(&live).into_iter().map(|i| signal.homes[i].inner.clone()).collect();
    let r = tokio::time::timeout(timeout, initiate_anywhere(&homes, &signal.reach, target, &opts)).await;
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
