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

use crate::lock::lock;
use crate::quic::QuicError;
use macula_nat_proto::signal::{HelloKind, Msg, NodeId, SessionId};
use crate::{runtime, Connection, Node};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Pending sessions (Connect relayed, no Answer yet) expire after this.
const PENDING_TTL: Duration = Duration::from_secs(30);

struct Peer {
    conn: Connection,
    observed: SocketAddr,
    gen: u64,
}

#[derive(Default)]
struct State {
    peers: HashMap<NodeId, Peer>,
    /// session -> (initiator, responder, when)
    pending: HashMap<SessionId, (NodeId, NodeId, Instant)>,
    stats: RendezvousStats,
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
}

/// A running rendezvous service; stops when dropped (or `stop`).
pub struct Rendezvous {
    node: Arc<Node>,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Rendezvous {
    /// Serves on `node`'s socket. Takes over the node's incoming QUIC
    /// connections (see [`crate::quic::dispatch`]); a `Signal` on the same node
    /// still works.
    pub fn serve(node: Arc<Node>) -> Result<Rendezvous, QuicError> {
        let dispatch = node.dispatch()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Connection>();
        dispatch.set_control(Some(tx));
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = runtime::spawn(async move {
            let gens = Arc::new(AtomicU64::new(0));
            while let Some(conn) = rx.recv().await {
                let gen = gens.fetch_add(1, Ordering::Relaxed);
                runtime::spawn(serve_peer(st.clone(), conn, gen));
            }
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

async fn send(conn: &Connection, m: &Msg) {
    if let Err(e) = conn.send(m.encode()).await {
        tracing::debug!("rendezvous: send to {:?} failed: {e}", conn.remote_address());
    }
}

fn lookup(state: &Mutex<State>, id: &NodeId) -> Option<(Connection, SocketAddr)> {
    lock(state).peers.get(id).map(|p| (p.conn.clone(), p.observed))
}

async fn serve_peer(state: Arc<Mutex<State>>, conn: Connection, gen: u64) {
    let me = conn.peer_id();
    let observed = conn.remote_address();
    let old = {
        let mut s = lock(&state);
        s.stats.registrations += 1;
        s.peers.insert(me, Peer { conn: conn.clone(), observed, gen })
    };
    if let Some(old) = old {
        old.conn.close("replaced by a newer control connection");
    }
    send(&conn, &Msg::Registered { observed }).await;
    while let Some(bytes) = conn.recv().await {
        let m = match Msg::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("rendezvous: bad message: {e}");
                continue;
            }
        };
        // The peer's address may have changed (QUIC follows a migrating
        // client): use the current one.
        let observed = conn.remote_address();
        {
            let mut s = lock(&state);
            if let Some(p) = s.peers.get_mut(&me).filter(|p| p.gen == gen) {
                p.observed = observed;
            }
        }
        match m {
            Msg::Connect { to, session, flags, attempts, profile } => match lookup(&state, &to) {
                None => {
                    lock(&state).stats.unknown_targets += 1;
                    send(&conn, &Msg::Unknown { session }).await
                }
                Some((b, _)) => {
                    {
                        let mut s = lock(&state);
                        s.stats.connects += 1;
                        let now = Instant::now();
                        s.pending.retain(|_, (_, _, t)| now.duration_since(*t) < PENDING_TTL);
                        s.pending.insert(session, (me, to, now));
                    }
                    send(&b, &Msg::Incoming { from: me, session, flags, attempts, profile, observed }).await;
                }
            },
            Msg::Answer { to, session, profile } => {
                let ok = lock(&state)
                    .pending
                    .remove(&session)
                    .is_some_and(|(a, b, _)| a == to && b == me);
                let Some((a, _)) = lookup(&state, &to).filter(|_| ok) else { continue };
                lock(&state).stats.answers += 1;
                send(&a, &Msg::Answered { from: me, session, profile, observed }).await;
                let (ra, rb) = (a.rtt(), conn.rtt());
                let max = ra.max(rb);
                let go = |own: Duration, peer: Duration| Msg::Go { session, wait: (max - own) / 2, own_rtt: own, peer_rtt: peer };
                // Both at once: neither send waits for the other.
                let (ga, gb) = (go(ra, rb), go(rb, ra));
                tokio::join!(send(&a, &ga), send(&conn, &gb));
            }
            // A registered peer refreshing its registration (after a new
            // detection): where we see it now. Nothing else of it is kept
            // here; profiles travel in each session's messages.
            Msg::Hello(HelloKind::Control) => send(&conn, &Msg::Registered { observed }).await,
            Msg::Reject { peer, session, reason } => {
                {
                    let mut s = lock(&state);
                    s.pending.remove(&session);
                    s.stats.rejects += 1;
                }
                if let Some((a, _)) = lookup(&state, &peer) {
                    send(&a, &Msg::Reject { peer: me, session, reason }).await;
                }
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
