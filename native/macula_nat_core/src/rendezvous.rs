//! Rendezvous: any node can serve as one.
//!
//! Peers keep a control connection to the rendezvous (QUIC on their one
//! socket, node-key authenticated; QUIC keep-alive keeps their NAT mapping
//! open). The first message on it is `Hello(Control)`; the peer's NodeId is
//! the one proven in the TLS handshake, and its *observed address* is the
//! connection's remote address: its reflexive address (for EI mapping) on
//! the socket it will punch from. The rendezvous answers `Registered` with
//! that address.
//!
//! It then relays signalling between registered peers (formats in
//! [`macula_nat_proto::signal`]): `Connect` from A becomes `Incoming` at B, B's
//! `Answer` becomes `Answered` at A, each stamped with the sender's observed
//! address; right after `Answered` it sends `Go` to both with RTT-based
//! waits so that both start punching together. A `Connect` to a peer that
//! is not registered gets `Unknown`; a `Reject` is relayed.
//!
//! A newer control connection of the same NodeId replaces the older one
//! (a peer that reconnected after losing its mapping).
//!
//! What a registration holds is the control connection and the address the
//! peer is seen at (refreshed from the connection at every message it
//! sends); no profile or candidates: those travel in every `Connect` and
//! `Answer`. A peer refreshes its registration after each detection by
//! sending `Hello(Control)` again on the same connection, and gets
//! `Registered` with the address seen now.
//!
//! Every peer may be hostile ([`RendezvousLimits`], README "Limits against
//! hostile peers"): the sessions waiting for an answer are bounded per
//! initiator and in total (indexed by session, expired oldest first, never
//! scanned), a peer's `Connect`s and other messages are rate-limited, and
//! nothing a peer's task does waits for another peer: each peer has a
//! bounded send queue drained by its own writer, whose sends time out (a
//! peer that stops reading is disconnected, and a full queue drops what
//! would not fit, counted).

use crate::lock::lock;
use crate::quic::QuicError;
use macula_nat_proto::limits::caps::{Caps, Expiry, Rate};
use macula_nat_proto::signal::{reject, HelloKind, Msg, NodeId, SessionId};
use crate::{runtime, Connection, Node};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What one peer can make a rendezvous hold or do; over a bound a `Connect`
/// is answered `Reject(BUSY)` and other messages or sends are dropped
/// (counted in [`RendezvousStats`]).
#[derive(Clone, Debug)]
pub struct RendezvousLimits {
    /// Sessions relayed and not yet answered, per initiator.
    pub pending_per_peer: usize,
    /// ... and from all initiators together.
    pub pending_total: usize,
    /// A pending session is forgotten this long after its `Connect`.
    pub pending_ttl: Duration,
    /// `Connect`s per second a peer may send on average, and at once.
    pub connects_per_sec: u32,
    pub connect_burst: u32,
    /// Other messages (`Answer`, `Reject`, `Hello`) per second, and at once.
    pub messages_per_sec: u32,
    pub message_burst: u32,
    /// Messages queued towards one peer; beyond it new ones are dropped.
    pub send_queue: usize,
    /// A send to a peer that takes longer (it stopped reading) disconnects
    /// that peer.
    pub send_timeout: Duration,
}

impl Default for RendezvousLimits {
    fn default() -> Self {
        RendezvousLimits {
            pending_per_peer: 64,
            pending_total: 10_000,
            pending_ttl: Duration::from_secs(30),
            connects_per_sec: 50,
            connect_burst: 100,
            messages_per_sec: 200,
            message_burst: 400,
            send_queue: 256,
            send_timeout: Duration::from_secs(5),
        }
    }
}

struct Peer {
    conn: Connection,
    /// Its writer's queue (see [`writer`]).
    out: mpsc::Sender<Vec<u8>>,
    observed: SocketAddr,
    /// The address its last `Registered` named (see [`tell_moved`]).
    told: SocketAddr,
    gen: u64,
}

struct Pending {
    initiator: NodeId,
    responder: NodeId,
    at: Instant,
}

struct State {
    limits: RendezvousLimits,
    peers: HashMap<NodeId, Peer>,
    pending: HashMap<SessionId, Pending>,
    /// Pending sessions per initiator and in total.
    held: Caps<NodeId>,
    expiry: Expiry<SessionId>,
    stats: RendezvousStats,
}

impl State {
    fn new(limits: RendezvousLimits) -> State {
        State {
            held: Caps::new(limits.pending_per_peer, limits.pending_total),
            expiry: Expiry::new(limits.pending_ttl),
            limits,
            peers: HashMap::new(),
            pending: HashMap::new(),
            stats: RendezvousStats::default(),
        }
    }

    /// Forgets the pending sessions whose time is up (oldest first: each
    /// call costs the expired ones, never the whole map).
    fn expire(&mut self, now: Instant) {
        while let Some((at, s)) = self.expiry.pop_expired(now) {
            if self.pending.get(&s).is_some_and(|p| p.at == at) {
                self.forget(&s);
            }
        }
    }

    fn forget(&mut self, s: &SessionId) -> Option<Pending> {
        let p = self.pending.remove(s)?;
        self.held.release(&p.initiator);
        Some(p)
    }

    /// Queues `m` for `to` without waiting: a full queue (a peer that does
    /// not keep up) drops it.
    fn send(&mut self, to: &NodeId, m: &Msg) {
        let Some(p) = self.peers.get(to) else { return };
        if p.out.try_send(m.encode()).is_err() {
            self.stats.dropped_sends += 1;
        }
    }
}

/// What a rendezvous has done since it started (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RendezvousStats {
    /// Control connections registered (a reconnect counts again).
    pub registrations: u64,
    /// `Connect`s passed on to a registered target.
    pub connects: u64,
    /// `Connect`s to a target that is not registered (`Unknown`).
    pub unknown_targets: u64,
    /// `Answer`s passed on (each also starts a `Go`).
    pub answers: u64,
    /// `Reject`s passed on.
    pub rejects: u64,
    /// `Connect`s refused over a bound (pending sessions, rate, a session id
    /// already in use).
    pub refused_connects: u64,
    /// Other messages dropped over a peer's message rate.
    pub dropped_messages: u64,
    /// Messages not queued towards a peer whose queue was full.
    pub dropped_sends: u64,
    /// Peers disconnected because a send to them timed out.
    pub stalled_peers: u64,
}

/// A running rendezvous service; stops when dropped (or `stop`).
pub struct Rendezvous {
    node: Arc<Node>,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Rendezvous {
    /// Serves on `node`'s socket with the default [`RendezvousLimits`].
    /// Takes over the node's incoming QUIC connections (see
    /// [`crate::quic::dispatch`]); a `Signal` on the same node still works.
    pub fn serve(node: Arc<Node>) -> Result<Rendezvous, QuicError> {
        Self::serve_with(node, RendezvousLimits::default())
    }

    pub fn serve_with(node: Arc<Node>, limits: RendezvousLimits) -> Result<Rendezvous, QuicError> {
        let dispatch = node.dispatch()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Connection>();
        dispatch.set_control(Some(tx));
        let state = Arc::new(Mutex::new(State::new(limits)));
        let st = state.clone();
        let task = runtime::spawn(async move {
            let gens = Arc::new(AtomicU64::new(0));
            let moved = runtime::spawn(tell_moved(Arc::downgrade(&st)));
            while let Some(conn) = rx.recv().await {
                let gen = gens.fetch_add(1, Ordering::Relaxed);
                runtime::spawn(serve_peer(st.clone(), conn, gen));
            }
            moved.abort();
        });
        Ok(Rendezvous { node, state, task })
    }

    /// Registered peers (NodeId, observed address).
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        lock(&self.state).peers.iter().map(|(k, p)| (*k, p.observed)).collect()
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Counters since start.
    pub fn stats(&self) -> RendezvousStats {
        lock(&self.state).stats
    }

    /// Sessions relayed and not yet answered (bounded by
    /// [`RendezvousLimits::pending_total`]).
    pub fn pending_sessions(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// Stops serving and closes the control connections.
    pub fn stop(&self) {
        if let Ok(d) = self.node.dispatch() {
            d.set_control(None);
        }
        self.task.abort();
        {
            let mut s = lock(&self.state);
            for (_, p) in s.peers.drain() {
                p.conn.close("rendezvous stopped");
            }
        }
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often [`tell_moved`] looks at the peers' addresses.
pub const MOVED_SCAN: Duration = Duration::from_secs(1);

/// Tells a peer when its control connection moved (QUIC followed it to a
/// new address: its router was renumbered or its NAT rebound the mapping):
/// `Registered` with the new address, which the peer cannot see from
/// inside its NAT and treats as a network change (`crate::netchange`).
/// One timer per rendezvous, however many peers: each tick compares each
/// peer's connection address with the one it was last told.
async fn tell_moved(state: std::sync::Weak<Mutex<State>>) {
    let mut tick = tokio::time::interval(MOVED_SCAN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let mut s = lock(&state);
        let mut moved = Vec::new();
        for (id, p) in s.peers.iter_mut() {
            let now = p.conn.remote_address();
            if now != p.told {
                p.told = now;
                p.observed = now;
                moved.push((*id, now));
            }
        }
        for (id, observed) in moved {
            tracing::debug!("rendezvous: {:02x?} moved to {observed}", &id.as_bytes()[..4]);
            s.send(&id, &Msg::Registered { observed });
        }
    }
}

/// Sends what is queued for one peer, each send bounded by `timeout`; a
/// send that times out means the peer stopped reading: it is disconnected
/// (its queue then ends too). Ends when the peer's registration is gone.
async fn writer(state: Arc<Mutex<State>>, conn: Connection, mut rx: mpsc::Receiver<Vec<u8>>, timeout: Duration) {
    while let Some(m) = rx.recv().await {
        match tokio::time::timeout(timeout, conn.send(m)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!("rendezvous: send to {:?} failed: {e}", conn.remote_address());
                return;
            }
            Err(_) => {
                tracing::debug!("rendezvous: {:?} stopped reading; disconnecting it", conn.remote_address());
                lock(&state).stats.stalled_peers += 1;
                conn.close("stopped reading its control stream");
                return;
            }
        }
    }
}

async fn serve_peer(state: Arc<Mutex<State>>, conn: Connection, gen: u64) {
    let me = conn.peer_id();
    let observed = conn.remote_address();
    let (limits, old) = {
        let mut s = lock(&state);
        let limits = s.limits.clone();
        let (out, rx) = mpsc::channel(limits.send_queue.max(1));
        runtime::spawn(writer(state.clone(), conn.clone(), rx, limits.send_timeout));
        s.stats.registrations += 1;
        let old = s.peers.insert(me, Peer { conn: conn.clone(), out, observed, told: observed, gen });
        s.send(&me, &Msg::Registered { observed });
        (limits, old)
    };
    if let Some(old) = old {
        old.conn.close("replaced by a newer control connection");
    }
    let now = Instant::now();
    let mut connects = Rate::new(limits.connects_per_sec, limits.connect_burst, now);
    let mut messages = Rate::new(limits.messages_per_sec, limits.message_burst, now);
    while let Some(bytes) = conn.recv().await {
        let m = match Msg::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("rendezvous: bad message: {e}");
                continue;
            }
        };
        let now = Instant::now();
        // The peer's address may have changed (QUIC follows a migrating
        // client): use the current one.
        let observed = conn.remote_address();
        let mut s = lock(&state);
        if !s.peers.get(&me).is_some_and(|p| p.gen == gen) {
            // Replaced by a newer control connection.
            break;
        }
        if let Some(p) = s.peers.get_mut(&me) {
            p.observed = observed;
        }
        let allowed = match m {
            Msg::Connect { .. } => connects.allow(now),
            _ => messages.allow(now),
        };
        if !allowed {
            match m {
                Msg::Connect { to, session, .. } => {
                    s.stats.refused_connects += 1;
                    s.send(&me, &Msg::Reject { peer: to, session, reason: reject::BUSY });
                }
                _ => s.stats.dropped_messages += 1,
            }
            continue;
        }
        match m {
            Msg::Connect { to, session, flags, attempts, profile } => {
                if !s.peers.contains_key(&to) {
                    s.stats.unknown_targets += 1;
                    s.send(&me, &Msg::Unknown { session });
                    continue;
                }
                s.expire(now);
                // A session id already in use is someone else's session:
                // never overwritten.
                let taken = s.pending.contains_key(&session);
                if taken || s.held.take(&me).is_err() {
                    s.stats.refused_connects += 1;
                    let reason = if taken { reject::BAD_REQUEST } else { reject::BUSY };
                    s.send(&me, &Msg::Reject { peer: to, session, reason });
                    continue;
                }
                s.pending.insert(session, Pending { initiator: me, responder: to, at: now });
                s.expiry.push(session, now);
                s.stats.connects += 1;
                s.send(&to, &Msg::Incoming { from: me, session, flags, attempts, profile, observed });
            }
            Msg::Answer { to, session, profile } => {
                let ours = s.pending.get(&session).is_some_and(|p| p.initiator == to && p.responder == me);
                if !ours {
                    continue;
                }
                s.forget(&session);
                let Some(a) = s.peers.get(&to).map(|p| p.conn.clone()) else { continue };
                s.stats.answers += 1;
                s.send(&to, &Msg::Answered { from: me, session, profile, observed });
                let (ra, rb) = (a.rtt(), conn.rtt());
                let max = ra.max(rb);
                let go = |own: Duration, peer: Duration| Msg::Go { session, wait: (max - own) / 2, own_rtt: own, peer_rtt: peer };
                // Both queued at once: neither waits for the other.
                s.send(&to, &go(ra, rb));
                s.send(&me, &go(rb, ra));
            }
            // A registered peer refreshing its registration (after a new
            // detection): where we see it now. Nothing else of it is kept
            // here; profiles travel in each session's messages.
            Msg::Hello(HelloKind::Control) => {
                if let Some(p) = s.peers.get_mut(&me) {
                    p.told = observed;
                }
                s.send(&me, &Msg::Registered { observed })
            }
            // A home's liveness probe (see `macula_nat_proto::homes`).
            Msg::Ping { nonce } => s.send(&me, &Msg::Pong { nonce }),
            Msg::Reject { peer, session, reason } => {
                // Only a party of a pending session ends it, and only its
                // other party hears of it.
                let party = s.pending.get(&session).is_some_and(|p| (p.initiator, p.responder) == (peer, me) || (p.initiator, p.responder) == (me, peer));
                if !party {
                    continue;
                }
                s.forget(&session);
                s.stats.rejects += 1;
                s.send(&peer, &Msg::Reject { peer: me, session, reason });
            }
            other => tracing::debug!("rendezvous: unexpected {other:?}"),
        }
    }
    {
        let mut s = lock(&state);
        if s.peers.get(&me).is_some_and(|p| p.gen == gen) {
            s.peers.remove(&me);
        }
    }
}
