//! The relay server: a node that forwards other nodes' QUIC packets.
//!
//! Control: clients connect with `Hello(Relay)` (the node's dispatcher
//! hands those connections here), are told their observed address, may
//! reserve, open sessions to reserved nodes and accept sessions opened to
//! them (message formats: `macula_nat_proto::relay::msg`). Data: frames
//! arrive on the node socket and are forwarded from the receive loop itself
//! (no task switch per packet), or handed to the session's shaper task when
//! the bandwidth limit says "later". Decisions are the sans-IO
//! `RelayTable`'s; this module only does the IO and the timers.
//!
//! Events (session start/end, with byte counts) go to a bounded channel
//! (the owner's): the callbacks run wherever that channel is read, never on
//! the data path; an event that finds it full is dropped and counted.
//!
//! What a client can make the server hold: its control messages wait in a
//! queue of [`CLIENT_QUEUE`] (beyond it they are dropped and counted, e.g.
//! the Pongs of a client that pings and never reads; Pings beyond the
//! table's ping rate are not answered and count as dropped too); a client
//! that made the server drop [`CLIENT_DROP_LIMIT`] of them, or whose send stalls
//! longer than [`CLIENT_SEND_TIMEOUT`] (it stopped reading its stream), is
//! closed. Each client has its own writer, so a stalled one never delays
//! another. Its sessions and
//! reservations are capped by the table (`Limits`, per key).
//!
//! Legs follow their control connection: when QUIC migrated it (the
//! client's NAT rebound), its current remote address becomes the leg's
//! address. Checked on every control message (clients ping twice a second)
//! and on every sweep.

use crate::lock::lock;
use crate::node::Node;
use crate::socket::FamilySockets;
use crate::quic::{Connection, QuicError};
use crate::socket::relay_plane::FrameForwarder;
use crate::runtime;
use macula_nat_proto::relay::frame;
use macula_nat_proto::relay::msg::{EndReason, NodeId, RelayMsg, Refusal};
use macula_nat_proto::relay::table::{ClientId, DropReason, Ended, Limits, RelayTable, RelaySessionId as SessionId, Verdict};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the owner hears about sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    Started { session: SessionId, a: NodeId, b: NodeId },
    Ended { session: SessionId, a: NodeId, b: NodeId, bytes: u64, reason: EndReason },
}

/// A frame in a shaper queue: when it is due, where to, the frame.
type Shaped = (tokio::time::Instant, SocketAddr, Vec<u8>);

/// Frames waiting in a session's shaper, beyond which new ones are dropped.
const SHAPER_QUEUE: usize = 4096;

/// Control messages waiting for one client, beyond which they are dropped.
pub const CLIENT_QUEUE: usize = 64;

/// Control messages dropped for one client after which it is closed: an
/// honest client gets a few a second and reads them all.
pub const CLIENT_DROP_LIMIT: u64 = 1024;

/// Longest one control message may take to leave before the client that
/// does not read is closed.
pub const CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Room in the owner's event channel (the NIF's and the tests'): enough
/// for every session of a full relay to start and end at once.
pub const EVENT_QUEUE: usize = 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub sessions: usize,
    pub reservations: usize,
    pub clients: usize,
    pub frames_forwarded: u64,
    pub bytes_forwarded: u64,
    pub dropped_over_limit: u64,
    pub dropped_not_a_leg: u64,
    pub dropped_unknown: u64,
    /// Control messages dropped because their client's queue was full.
    pub control_dropped: u64,
    /// Clients closed because they did not read their control messages (a
    /// send stalled, or `CLIENT_DROP_LIMIT` dropped).
    pub clients_stalled: u64,
    /// Events dropped because the owner's channel was full.
    pub events_dropped: u64,
    /// Legs moved to their control connection's new address.
    pub legs_moved: u64,
}

struct Shared {
    node: Weak<Node>,
    table: Mutex<RelayTable>,
    /// Each client's connection, its writer queue (one writer task per
    /// client keeps its messages in order) and the messages dropped over it.
    clients: Mutex<HashMap<ClientId, (Connection, mpsc::Sender<Vec<u8>>, u64)>>,
    shapers: Mutex<HashMap<SessionId, mpsc::Sender<Shaped>>>,
    events: mpsc::Sender<RelayEvent>,
    next_client: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    control_dropped: AtomicU64,
    clients_stalled: AtomicU64,
    events_dropped: AtomicU64,
    legs_moved: AtomicU64,
    /// Sessions refused, by reason (rare: a lock is cheap enough).
    refused: Mutex<HashMap<&'static str, u64>>,
}

/// A running relay on a node. Dropping it stops relaying like [`RelayServer::stop`].
pub struct RelayServer {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Its hooks in the node, removed by `stop` only if still its own (a
    /// new server may have started on the node before an old one stops,
    /// e.g. when the owning process was restarted).
    hooks: (Arc<dyn FrameForwarder>, mpsc::UnboundedSender<Connection>),
}

impl RelayServer {
    /// Starts relaying on `node` with `limits`; events go to `events` (a
    /// bounded channel: [`EVENT_QUEUE`] is a good size; over it they are
    /// dropped and counted).
    pub fn start(node: &Arc<Node>, limits: Limits, events: mpsc::Sender<RelayEvent>) -> Result<RelayServer, QuicError> {
        let dispatch = node.dispatch()?;
        let shared = Arc::new(Shared {
            node: Arc::downgrade(node),
            table: Mutex::new(RelayTable::new(limits.clone())),
            clients: Mutex::new(HashMap::new()),
            shapers: Mutex::new(HashMap::new()),
            events,
            next_client: AtomicU64::new(1),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            control_dropped: AtomicU64::new(0),
            clients_stalled: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            legs_moved: AtomicU64::new(0),
            refused: Mutex::new(HashMap::new()),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        dispatch.set_relay(Some(tx.clone()));
        let forwarder: Arc<dyn FrameForwarder> = Arc::new(Forwarder(Arc::downgrade(&shared)));
        node.relay_plane().set_server(Some(forwarder.clone()));
        let accept = {
            let weak = Arc::downgrade(&shared);
            runtime::spawn(async move {
                while let Some(conn) = rx.recv().await {
                    let Some(s) = weak.upgrade() else { return };
                    runtime::spawn(client_loop(s, conn));
                }
            })
        };
        let sweep = {
            let weak = Arc::downgrade(&shared);
            let every = (limits.session_timeout.min(limits.pending_timeout) / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
            runtime::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let Some(s) = weak.upgrade() else { return };
                    let ended = lock(&s.table).sweep(Instant::now());
                    for e in ended {
                        s.announce_end(e);
                    }
                    let clients: Vec<(ClientId, Connection)> = lock(&s.clients).iter().map(|(id, c)| (*id, c.0.clone())).collect();
                    for (id, conn) in clients {
                        s.follow(id, &conn);
                    }
                }
            })
        };
        Ok(RelayServer { shared, tasks: vec![accept, sweep], hooks: (forwarder, tx) })
    }

    /// Stops relaying: every session ends (peers are told, events fire,
    /// returned too), reservations are dropped, control connections are
    /// closed shortly after so the `Ended` messages reach the peers.
    pub fn stop(&mut self) -> Vec<Ended> {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(node) = self.shared.node.upgrade() {
            node.relay_plane().clear_server_if(&self.hooks.0);
            if let Ok(d) = node.dispatch() {
                d.clear_relay_if(&self.hooks.1);
            }
        }
        let ended = lock(&self.shared.table).disable();
        for e in &ended {
            self.shared.announce_end(e.clone());
        }
        let clients: Vec<Connection> = lock(&self.shared.clients).drain().map(|(_, v)| v.0).collect();
        runtime::spawn(async move {
            // Let the Ended messages leave before the close overtakes them.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for c in clients {
                c.close("relay disabled");
            }
        });
        ended
    }

    pub fn stats(&self) -> RelayStats {
        let (sessions, reservations, over, leg, unknown) = {
            let t = lock(&self.shared.table);
            (
                t.sessions(),
                t.reservations(),
                t.dropped(DropReason::OverLimit),
                t.dropped(DropReason::NotALeg),
                t.dropped(DropReason::UnknownSession),
            )
        };
        RelayStats {
            sessions,
            reservations,
            clients: lock(&self.shared.clients).len(),
            frames_forwarded: self.shared.frames.load(Ordering::Relaxed),
            bytes_forwarded: self.shared.bytes.load(Ordering::Relaxed),
            dropped_over_limit: over,
            dropped_not_a_leg: leg,
            dropped_unknown: unknown,
            control_dropped: self.shared.control_dropped.load(Ordering::Relaxed),
            clients_stalled: self.shared.clients_stalled.load(Ordering::Relaxed),
            events_dropped: self.shared.events_dropped.load(Ordering::Relaxed),
            legs_moved: self.shared.legs_moved.load(Ordering::Relaxed),
        }
    }

    /// Sessions refused so far, by [`Refusal::name`] (only reasons seen).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        lock(&self.shared.refused).iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// New limits for a running relay (enabling it again with other
    /// options): `max_sessions` and `session_timeout` apply at once, the
    /// bandwidth limit to sessions opened from now on. Sessions go on.
    pub fn set_limits(&self, limits: Limits) {
        lock(&self.shared.table).enable(limits);
    }

    pub fn limits(&self) -> Limits {
        lock(&self.shared.table).limits().clone()
    }

    /// Sessions per `max_sessions`, per mille (what the registry advertises).
    pub fn load_permille(&self) -> u16 {
        lock(&self.shared.table).load_permille()
    }
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            self.stop();
        }
    }
}

impl Shared {
    /// Queues `m` for the client; a full queue drops it (counted, see
    /// [`Shared::dropped_for`]).
    fn send(&self, client: ClientId, m: RelayMsg) {
        let full = {
            let clients = lock(&self.clients);
            let Some(c) = clients.get(&client) else { return };
            matches!(c.1.try_send(m.encode()), Err(mpsc::error::TrySendError::Full(_)))
        };
        if full {
            self.dropped_for(client);
        }
    }

    /// Counts a control message not sent to the client (its queue was full,
    /// or a Pong over the ping rate); its `CLIENT_DROP_LIMIT`th closes it.
    fn dropped_for(&self, client: ClientId) {
        self.control_dropped.fetch_add(1, Ordering::Relaxed);
        let mut clients = lock(&self.clients);
        let Some(c) = clients.get_mut(&client) else { return };
        c.2 += 1;
        if c.2 == CLIENT_DROP_LIMIT {
            self.clients_stalled.fetch_add(1, Ordering::Relaxed);
            c.0.close("relay: control messages not read");
        }
    }

    /// Hands an event to the owner; a full channel drops it (counted).
    fn event(&self, ev: RelayEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(ev) {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Moves the client's legs to its connection's current remote address,
    /// if QUIC migrated it. quinn switches a connection's remote address
    /// only for an authenticated packet from the new address, and back if
    /// the path then fails validation, so only the client itself can move
    /// its legs (the next check follows a revert).
    fn follow(&self, client: ClientId, conn: &Connection) {
        let now_at = conn.remote_address();
        if lock(&self.table).move_client(client, now_at) {
            self.legs_moved.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("relay: client {client} moved to {now_at}");
            // A client behind a renumbered router cannot see the move.
            let reserved = lock(&self.table).client_reserved(client);
            self.status(client, now_at, reserved);
        }
    }

    /// Tells an opener its session was refused, and counts it.
    fn refuse(&self, client: ClientId, tag: u32, reason: Refusal) {
        *lock(&self.refused).entry(reason.name()).or_insert(0) += 1;
        self.send(client, RelayMsg::Refused { tag, reason });
    }

    fn status(&self, client: ClientId, observed: SocketAddr, reserved: bool) {
        let load = lock(&self.table).load_permille();
        self.send(client, RelayMsg::Status { observed, reserved, load_permille: load });
    }

    /// Tells the legs and the owner that a session ended.
    fn announce_end(&self, e: Ended) {
        lock(&self.shapers).remove(&e.session);
        if e.was_active {
            self.event(RelayEvent::Ended { session: e.session, a: e.a, b: e.b, bytes: e.bytes, reason: e.reason });
            for c in [e.a_client, e.b_client] {
                self.send(c, RelayMsg::Ended { session: e.session, reason: e.reason });
            }
        } else {
            let reason = if e.reason == EndReason::Disabled { Refusal::Disabled } else { Refusal::Declined };
            self.refuse(e.a_client, e.tag, reason);
        }
    }

    /// Forwards a run of frames from `from` (one frame, or `stride`-sized
    /// frames of one GRO batch). The table decides each frame under one
    /// lock; consecutive frames going to the same leg leave together as one
    /// GSO batch, straight out of the receive buffer.
    fn forward(&self, sock: &FamilySockets, from: SocketAddr, run: &[u8], stride: usize) {
        let now = Instant::now();
        VERDICTS.with(|v| {
            let mut verdicts = v.borrow_mut();
            verdicts.clear();
            {
                let mut t = lock(&self.table);
                for f in run.chunks(stride) {
                    let Some(session) = frame::session_of(f) else {
                        verdicts.push((0, Verdict::Drop(DropReason::UnknownSession)));
                        continue;
                    };
                    verdicts.push((session, t.forward(from, session, f.len() - frame::HEADER, now)));
                }
            }
            // Frames [first, i) all go to `to`.
            let mut pending: Option<(usize, SocketAddr)> = None;
            for (i, &(session, verdict)) in verdicts.iter().enumerate() {
                if let Verdict::Forward { to } = verdict {
                    if !matches!(pending, Some((_, p)) if p == to) {
                        if let Some((first, p)) = pending {
                            self.send_run(sock, p, run, stride, first..i);
                        }
                        pending = Some((i, to));
                    }
                    continue;
                }
                if let Some((first, p)) = pending.take() {
                    self.send_run(sock, p, run, stride, first..i);
                }
                if let Verdict::Delay { to, after } = verdict {
                    let f = &run[i * stride..run.len().min((i + 1) * stride)];
                    self.shape(session, to, after, f, f.len() - frame::HEADER);
                }
            }
            if let Some((first, p)) = pending {
                self.send_run(sock, p, run, stride, first..verdicts.len());
            }
        });
    }

    /// Sends frames `frames` (indices into `run`) to `to` and counts them.
    fn send_run(&self, sock: &FamilySockets, to: SocketAddr, run: &[u8], stride: usize, frames: std::ops::Range<usize>) {
        let bytes = &run[frames.start * stride..run.len().min(frames.end * stride)];
        // An IPv6 client's frames may go on to an IPv4 one, and back.
        let sent = sock.for_dst(&to).try_send_segments(to, bytes, stride);
        if sent > 0 {
            let sent_bytes = bytes.len().min(sent * stride);
            self.frames.fetch_add(sent as u64, Ordering::Relaxed);
            self.bytes.fetch_add((sent_bytes - sent * frame::HEADER) as u64, Ordering::Relaxed);
        }
    }

    /// Queues a frame in its session's shaper (a task per shaped session,
    /// started on its first delayed frame): frames leave in order at their
    /// due times.
    fn shape(&self, session: SessionId, to: SocketAddr, after: Duration, frame: &[u8], len: usize) {
        let due = tokio::time::Instant::now() + after;
        let mut shapers = lock(&self.shapers);
        let tx = shapers.entry(session).or_insert_with(|| {
            let (tx, mut rx) = mpsc::channel::<Shaped>(SHAPER_QUEUE);
            let node = self.node.clone();
            runtime::spawn(async move {
                while let Some((due, to, f)) = rx.recv().await {
                    tokio::time::sleep_until(due).await;
                    let Some(n) = node.upgrade() else { return };
                    n.try_send_to(&f, to);
                }
            });
            tx
        });
        if tx.try_send((due, to, frame.to_vec())).is_ok() {
            self.frames.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// Per-frame verdicts of the run being forwarded (reused: no allocation
    /// per batch on the receive loop).
    static VERDICTS: RefCell<Vec<(SessionId, Verdict)>> = const { RefCell::new(Vec::new()) };
}

struct Forwarder(Weak<Shared>);

impl FrameForwarder for Forwarder {
    fn forward(&self, sock: &FamilySockets, from: SocketAddr, run: &[u8], stride: usize) {
        if let Some(s) = self.0.upgrade() {
            s.forward(sock, from, run, stride);
        }
    }
}

/// One client's control connection, until it closes.
async fn client_loop(shared: Arc<Shared>, conn: Connection) {
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let observed = conn.remote_address();
    let node_id = conn.peer_id();
    lock(&shared.table).connect(id, node_id, observed, Instant::now());
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
    let writer = {
        let conn = conn.clone();
        let weak = Arc::downgrade(&shared);
        runtime::spawn(async move {
            while let Some(m) = wrx.recv().await {
                match tokio::time::timeout(CLIENT_SEND_TIMEOUT, conn.send(m)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        // It stopped reading: closing it ends its sessions
                        // and reservation (the client loop sees the close).
                        if let Some(s) = weak.upgrade() {
                            s.clients_stalled.fetch_add(1, Ordering::Relaxed);
                        }
                        conn.close("relay: control messages not read");
                        return;
                    }
                }
            }
        })
    };
    lock(&shared.clients).insert(id, (conn.clone(), wtx, 0));
    shared.status(id, observed, false);
    while let Some(bytes) = conn.recv().await {
        let m = match RelayMsg::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("relay: bad message from a client: {e:?}");
                continue;
            }
        };
        let now = Instant::now();
        shared.follow(id, &conn);
        match m {
            RelayMsg::Reserve => {
                let ok = lock(&shared.table).reserve(id);
                shared.status(id, conn.remote_address(), ok);
            }
            RelayMsg::Open { to, tag } => {
                let session: SessionId = rand::random();
                let r = lock(&shared.table).open(id, &to, session, tag, now);
                match r {
                    Ok(p) => shared.send(p.b_client, RelayMsg::Incoming { session: p.session, from: node_id }),
                    Err(reason) => shared.refuse(id, tag, reason),
                }
            }
            RelayMsg::Accept { session } => {
                let started = lock(&shared.table).accept(id, session, now);
                if let Some(s) = started {
                    shared.event(RelayEvent::Started { session, a: s.a, b: s.b });
                    shared.send(s.a_client, RelayMsg::Opened { tag: s.tag, session, peer: s.b });
                }
            }
            RelayMsg::Decline { session } => {
                let r = lock(&shared.table).decline(id, session);
                if let Some((a, tag)) = r {
                    shared.refuse(a, tag, Refusal::Declined);
                }
            }
            RelayMsg::Close { session } => {
                let e = lock(&shared.table).close(id, session);
                if let Some(e) = e {
                    shared.announce_end(e);
                }
            }
            RelayMsg::Ping { nonce } => {
                let ok = lock(&shared.table).ping(id, now);
                if ok {
                    shared.send(id, RelayMsg::Pong { nonce });
                } else {
                    shared.dropped_for(id);
                }
            }
            other => tracing::debug!("relay: unexpected message from a client: {other:?}"),
        }
    }
    let ended = lock(&shared.table).disconnect(id);
    lock(&shared.clients).remove(&id);
    for e in ended {
        shared.announce_end(e);
    }
    writer.abort();
}
