//! The relay client: a node's control connection to one relay (a
//! [`RelayLink`]) and the set of relays a node keeps ([`RelaySet`]).
//!
//! A session's QUIC packets reach QUIC through a *virtual* remote address
//! ([`VirtualAddr`]): the link routes QUIC datagrams for it into
//! frames to the relay ([`FrameTunnel`]) and the receive loop hands the
//! session's frames back to QUIC as coming from it. Moving the connection
//! (another relay, a punched path) re-points the route; QUIC's own loss
//! recovery resends whatever was in flight, so nothing is lost.
//!
//! Sessions the link *accepted* (we are the target) are owned by the link:
//! their routes go when the relay ends the session or the link dies. Routes
//! of sessions we *opened* belong to the caller, who may move them.

use crate::lock::lock;
use crate::node::Node;
use crate::quic::{Connection, DatagramTunnel, QuicError};
use crate::socket::relay_plane::VirtualAddr;
use crate::runtime;
use macula_nat_proto::signal::{HelloKind, Msg};
use macula_nat_proto::relay::frame;
use macula_nat_proto::relay::msg::{NodeId, RelayMsg, Refusal};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Ping period on a link carrying sessions, and how long without an
/// answer means dead (a relayed connection fails over after that).
const PING_EVERY: Duration = Duration::from_millis(500);
const SILENT_LIMIT: Duration = Duration::from_millis(2500);
/// The same on a link that only holds a reservation: a relay serves
/// thousands of these, and at 500 ms their pings were most of its work
/// (`bench/capacity.md`: 10,000 reservations did not hold); a dead relay is
/// still left within about 8 s.
const IDLE_PING_EVERY: Duration = Duration::from_millis(1500);
const IDLE_SILENT_LIMIT: Duration = Duration::from_millis(7500);
/// Waits between attempts to reach a wanted relay: doubling from the
/// first to the last, each drawn at random from its upper half, so that
/// the nodes of a relay that died do not all dial it again at once.
const REDIAL_FIRST: Duration = Duration::from_millis(500);
const REDIAL_MAX: Duration = Duration::from_secs(30);
/// Bound on connecting + the first status, and on an `Open`.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one control message leaving: a relay that stops reading is
/// dead (the link closes), it does not hold our tasks.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `m` on the link within [`SEND_TIMEOUT`]; closes the link if the
/// relay does not take it in time.
async fn send_within(conn: &Connection, m: RelayMsg) -> Result<(), RelayError> {
    match tokio::time::timeout(SEND_TIMEOUT, conn.send(m.encode())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(RelayError::Closed),
        Err(_) => {
            conn.close("relay not reading");
            Err(RelayError::Timeout)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay refused: {}", .0.name())]
    Refused(Refusal),
    #[error("relay connection closed")]
    Closed,
    #[error("relay timed out")]
    Timeout,
    #[error("quic: {0}")]
    Quic(#[from] QuicError),
}

impl RelayError {
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Refused(r) => r.name(),
            RelayError::Closed => "closed",
            RelayError::Timeout => "timeout",
            RelayError::Quic(_) => "quic",
        }
    }
}

/// Carries one session's QUIC datagrams to the relay as frames.
#[derive(Debug)]
pub struct FrameTunnel {
    node: Weak<Node>,
    relay: SocketAddr,
    session: u64,
}

thread_local! {
    static FRAME_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(16 * 1024));
}

impl DatagramTunnel for FrameTunnel {
    fn send(&self, _dst: SocketAddr, datagram: &[u8]) {
        let Some(node) = self.node.upgrade() else { return };
        FRAME_BUF.with(|b| {
            let mut b = b.borrow_mut();
            frame::encode_into(&mut b, self.session, datagram);
            if node.try_send_to(&b, self.relay) {
                node.relay_plane().tunnelled_out.fetch_add(datagram.len() as u64, Ordering::Relaxed);
            }
        });
    }

    /// QUIC's GSO batch stays one: each datagram gets its frame header in
    /// place and the frames leave in one `sendmsg` (one syscall per
    /// datagram was half the sender's CPU).
    fn send_batch(&self, _dst: SocketAddr, contents: &[u8], segment: usize) {
        let Some(node) = self.node.upgrade() else { return };
        let head = self.session.to_be_bytes();
        FRAME_BUF.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            for d in contents.chunks(segment) {
                b.push(frame::TAG);
                b.extend_from_slice(&head);
                b.extend_from_slice(d);
            }
            let sent = node.try_send_segments(&b, segment + frame::HEADER, self.relay);
            let payload = contents.len().min(sent * segment);
            node.relay_plane().tunnelled_out.fetch_add(payload as u64, Ordering::Relaxed);
        });
    }
}

/// A session opened through a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPath {
    pub relay: NodeId,
    pub relay_addr: SocketAddr,
    pub session: u64,
    /// The address QUIC uses for the peer.
    pub virtual_addr: SocketAddr,
}

struct LinkInner {
    node: Weak<Node>,
    relay_id: NodeId,
    relay_addr: SocketAddr,
    conn: Connection,
    reserved: AtomicBool,
    load: AtomicU16,
    observed: Mutex<Option<SocketAddr>>,
    /// Bumped on every Status, so `reserve` can wait for the next one.
    status: watch::Sender<u64>,
    pending: Mutex<HashMap<u32, oneshot::Sender<Result<u64, Refusal>>>>,
    next_tag: AtomicU32,
    /// Sessions we accepted: session -> virtual address.
    accepted: Mutex<HashMap<u64, SocketAddr>>,
    /// Sessions we opened (routes owned by the opener).
    opened: Mutex<HashMap<u64, SocketAddr>>,
    last_pong: Mutex<Instant>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A control connection to one relay. Cheap to clone.
#[derive(Clone)]
pub struct RelayLink {
    inner: Arc<LinkInner>,
}

impl std::fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLink").field("relay", &self.inner.relay_addr).finish_non_exhaustive()
    }
}

impl RelayLink {
    /// Connects to the relay at `relay_addr` whose node key is `relay_id`.
    pub async fn connect(node: &Arc<Node>, relay_addr: SocketAddr, relay_id: NodeId) -> Result<RelayLink, RelayError> {
        let go = async {
            let conn = node.quic()?.connect_control(relay_addr, relay_id).await?;
            conn.send(Msg::Hello(HelloKind::Relay).encode()).await?;
            Ok::<_, RelayError>(conn)
        };
        let conn = tokio::time::timeout(LINK_TIMEOUT, go).await.map_err(|_| RelayError::Timeout)??;
        let (status, mut status_rx) = watch::channel(0u64);
        let link = RelayLink {
            inner: Arc::new(LinkInner {
                node: Arc::downgrade(node),
                relay_id,
                relay_addr,
                conn,
                reserved: AtomicBool::new(false),
                load: AtomicU16::new(0),
                observed: Mutex::new(None),
                status,
                pending: Mutex::new(HashMap::new()),
                next_tag: AtomicU32::new(1),
                accepted: Mutex::new(HashMap::new()),
                opened: Mutex::new(HashMap::new()),
                last_pong: Mutex::new(Instant::now()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let recv = runtime::spawn(recv_loop(Arc::downgrade(&link.inner), link.inner.conn.clone()));
        let ping = runtime::spawn(ping_loop(Arc::downgrade(&link.inner)));
        lock(&link.inner.tasks).extend([recv, ping]);
        match tokio::time::timeout(LINK_TIMEOUT, status_rx.changed()).await {
            Ok(Ok(())) => Ok(link),
            Ok(Err(_)) => Err(RelayError::Closed),
            Err(_) => {
                link.close();
                Err(RelayError::Timeout)
            }
        }
    }

    pub fn relay_id(&self) -> NodeId {
        self.inner.relay_id
    }

    pub fn relay_addr(&self) -> SocketAddr {
        self.inner.relay_addr
    }

    pub fn is_reserved(&self) -> bool {
        self.inner.reserved.load(Ordering::Acquire)
    }

    /// The relay's load when it last said (per mille of its max sessions).
    pub fn load_permille(&self) -> u16 {
        self.inner.load.load(Ordering::Relaxed)
    }

    /// Our address as the relay sees it.
    pub fn observed(&self) -> Option<SocketAddr> {
        *lock(&self.inner.observed)
    }

    pub fn is_alive(&self) -> bool {
        self.inner.conn.close_reason().is_none()
    }

    /// Resolves when the link is dead (closed, or the relay went silent).
    pub async fn closed(&self) {
        self.inner.conn.closed().await;
    }

    pub fn close(&self) {
        self.inner.conn.close("relay link closed");
    }

    /// Makes this node reachable through the relay.
    pub async fn reserve(&self) -> Result<(), RelayError> {
        let mut rx = self.inner.status.subscribe();
        rx.borrow_and_update();
        send_within(&self.inner.conn, RelayMsg::Reserve).await?;
        match tokio::time::timeout(LINK_TIMEOUT, rx.changed()).await {
            Ok(Ok(())) if self.is_reserved() => Ok(()),
            Ok(Ok(())) => Err(RelayError::Refused(Refusal::Disabled)),
            Ok(Err(_)) => Err(RelayError::Closed),
            Err(_) => Err(RelayError::Timeout),
        }
    }

    /// Opens a session to `to` whose QUIC datagrams use `virt` (a fresh
    /// [`VirtualAddr`] for a new connection, or the connection's current
    /// address, virtual or real, to move it here). The route for `virt` now leads here.
    pub async fn open(&self, to: NodeId, virt: impl Into<SocketAddr>) -> Result<RelayPath, RelayError> {
        self.open_within(to, virt, LINK_TIMEOUT).await
    }

    /// [`Self::open`], waiting at most `wait` for the relay's answer (a
    /// caller with other relays to try gives a dead one less time).
    pub async fn open_within(&self, to: NodeId, virt: impl Into<SocketAddr>, wait: Duration) -> Result<RelayPath, RelayError> {
        let virt = virt.into();
        let tag = self.inner.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(tag, tx);
        let sent = send_within(&self.inner.conn, RelayMsg::Open { to, tag }).await;
        let r = match sent {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(wait.min(LINK_TIMEOUT), rx).await {
                Ok(Ok(Ok(session))) => Ok(session),
                Ok(Ok(Err(refusal))) => Err(RelayError::Refused(refusal)),
                Ok(Err(_)) => Err(RelayError::Closed),
                Err(_) => Err(RelayError::Timeout),
            },
        };
        lock(&self.inner.pending).remove(&tag);
        let session = r?;
        self.inner.install(session, virt)?;
        lock(&self.inner.opened).insert(session, virt);
        Ok(RelayPath { relay: self.inner.relay_id, relay_addr: self.inner.relay_addr, session, virtual_addr: virt })
    }

    /// Ends a session we opened (the relay tells the peer). The caller has
    /// already moved or dropped the route.
    pub fn close_session(&self, session: u64) {
        lock(&self.inner.opened).remove(&session);
        if let Some(node) = self.inner.node.upgrade() {
            node.relay_plane().set_session(self.inner.relay_addr, session, None);
        }
        let conn = self.inner.conn.clone();
        runtime::spawn(async move {
            let _ = send_within(&conn, RelayMsg::Close { session }).await;
        });
    }
}

impl LinkInner {
    fn install(&self, session: u64, virt: SocketAddr) -> Result<(), RelayError> {
        let node = self.node.upgrade().ok_or(RelayError::Closed)?;
        let tunnel = Arc::new(FrameTunnel { node: self.node.clone(), relay: self.relay_addr, session });
        node.quic()?.route_via(virt, tunnel);
        node.relay_plane().set_session(self.relay_addr, session, Some((virt, self.relay_id)));
        Ok(())
    }

    /// Forgets an accepted session and its route.
    fn drop_accepted(&self, session: u64) {
        let virt = lock(&self.accepted).remove(&session);
        if let (Some(node), Some(v)) = (self.node.upgrade(), virt) {
            node.relay_plane().set_session(self.relay_addr, session, None);
            if let Ok(q) = node.quic() {
                q.clear_route(v);
            }
        }
    }

    fn on_closed(&self) {
        let accepted: Vec<u64> = lock(&self.accepted).keys().copied().collect();
        for s in accepted {
            self.drop_accepted(s);
        }
        let opened: Vec<u64> = lock(&self.opened).drain().map(|(s, _)| s).collect();
        if let Some(node) = self.node.upgrade() {
            for s in opened {
                node.relay_plane().set_session(self.relay_addr, s, None);
            }
        }
        lock(&self.pending).clear();
    }
}

async fn recv_loop(weak: Weak<LinkInner>, conn: Connection) {
    while let Some(bytes) = conn.recv().await {
        let Some(link) = weak.upgrade() else { return };
        let m = match RelayMsg::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("relay link: bad message: {e:?}");
                continue;
            }
        };
        match m {
            RelayMsg::Status { observed, reserved, load_permille } => {
                let before = lock(&link.observed).replace(observed);
                if before.is_some_and(|b| b != observed) {
                    // The relay follows our link to a new address: ours
                    // may have moved (only the rendezvous's word counts).
                    if let Some(node) = link.node.upgrade() {
                        node.reflexive().suspect();
                    }
                }
                link.reserved.store(reserved, Ordering::Release);
                link.load.store(load_permille, Ordering::Relaxed);
                link.status.send_modify(|n| *n += 1);
            }
            RelayMsg::Opened { tag, session, .. } => {
                if let Some(tx) = lock(&link.pending).remove(&tag) {
                    let _ = tx.send(Ok(session));
                }
            }
            RelayMsg::Refused { tag, reason } => {
                if let Some(tx) = lock(&link.pending).remove(&tag) {
                    let _ = tx.send(Err(reason));
                }
            }
            RelayMsg::Incoming { session, .. } => {
                // The reservation is the consent: accept while we hold it.
                let reply = if link.reserved.load(Ordering::Acquire) {
                    let virt = VirtualAddr::fresh().addr();
                    match link.install(session, virt) {
                        Ok(()) => {
                            lock(&link.accepted).insert(session, virt);
                            RelayMsg::Accept { session }
                        }
                        Err(_) => RelayMsg::Decline { session },
                    }
                } else {
                    RelayMsg::Decline { session }
                };
                let _ = send_within(&conn, reply).await;
            }
            RelayMsg::Ended { session, .. } => {
                link.drop_accepted(session);
                lock(&link.opened).remove(&session);
                if let Some(node) = link.node.upgrade() {
                    node.relay_plane().set_session(link.relay_addr, session, None);
                }
            }
            RelayMsg::Pong { .. } => {
                *lock(&link.last_pong) = Instant::now();
            }
            other => tracing::debug!("relay link: unexpected {other:?}"),
        }
    }
    if let Some(link) = weak.upgrade() {
        link.on_closed();
    }
}

async fn ping_loop(weak: Weak<LinkInner>) {
    let mut nonce = 0u32;
    let mut last_ping = Instant::now();
    // Since when the link has been pinged at the busy pace: silence is
    // judged against the pace the relay was actually asked at.
    let mut busy_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let Some(link) = weak.upgrade() else { return };
        if link.conn.close_reason().is_some() {
            return;
        }
        let busy = !lock(&link.accepted).is_empty() || !lock(&link.opened).is_empty();
        busy_since = if busy { busy_since.or(Some(Instant::now())) } else { None };
        let (every, limit) = match busy_since {
            Some(t) if t.elapsed() >= SILENT_LIMIT => (PING_EVERY, SILENT_LIMIT),
            Some(_) => (PING_EVERY, IDLE_SILENT_LIMIT),
            None => (IDLE_PING_EVERY, IDLE_SILENT_LIMIT),
        };
        let silent = lock(&link.last_pong).elapsed();
        if silent > limit {
            tracing::debug!("relay {} silent for {silent:?}: link closed", link.relay_addr);
            link.conn.close("relay silent");
            return;
        }
        if last_ping.elapsed() + Duration::from_millis(50) < every {
            continue;
        }
        last_ping = Instant::now();
        nonce = nonce.wrapping_add(1);
        let conn = link.conn.clone();
        drop(link);
        let _ = send_within(&conn, RelayMsg::Ping { nonce }).await;
    }
}

impl Drop for LinkInner {
    fn drop(&mut self) {
        {
            let mut t = lock(&self.tasks);
            for t in t.drain(..) {
                t.abort();
            }
        }
        self.conn.close("relay link dropped");
        self.on_closed();
    }
}

/// The relays a node keeps: reserved links to the relays it wants to be
/// reachable through (re-established when they die), plus unreserved links
/// it opened to reach peers through their relays.
pub struct RelaySet {
    node: Weak<Node>,
    links: Mutex<HashMap<NodeId, RelayLink>>,
    wanted: Mutex<Vec<(NodeId, SocketAddr)>>,
    connecting: Mutex<std::collections::HashSet<NodeId>>,
    /// Wanted relays that could not be reached: not before when, and the
    /// last backoff.
    redial: Mutex<HashMap<NodeId, (Instant, Duration)>>,
    changed: watch::Sender<u64>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl RelaySet {
    pub fn new(node: &Arc<Node>) -> Arc<RelaySet> {
        let set = Arc::new(RelaySet {
            node: Arc::downgrade(node),
            links: Mutex::new(HashMap::new()),
            wanted: Mutex::new(Vec::new()),
            connecting: Mutex::new(Default::default()),
            redial: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&set);
        let task = runtime::spawn(async move {
            loop {
                let Some(set) = weak.upgrade() else { return };
                set.maintain();
                drop(set);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        *lock(&set.task) = Some(task);
        set
    }

    /// The relays to stay reserved at (best first).
    pub fn set_wanted(self: &Arc<Self>, relays: Vec<(NodeId, SocketAddr)>) {
        *lock(&self.wanted) = relays;
        self.maintain();
    }

    /// Relays we hold a live reservation at, in the wanted order: what the
    /// node advertises as "reachable through".
    pub fn reserved(&self) -> Vec<(NodeId, SocketAddr)> {
        let wanted = lock(&self.wanted).clone();
        let links = lock(&self.links).clone();
        wanted
            .into_iter()
            .filter(|(id, _)| links.get(id).is_some_and(|l| l.is_alive() && l.is_reserved()))
            .collect()
    }

    /// Fires when reservations change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A live link to the relay (existing, or a new unreserved one).
    pub async fn link_to(&self, id: NodeId, addr: SocketAddr) -> Result<RelayLink, RelayError> {
        if let Some(l) = lock(&self.links).get(&id).cloned().filter(|l| l.is_alive()) {
            return Ok(l);
        }
        let node = self.node.upgrade().ok_or(RelayError::Closed)?;
        let link = RelayLink::connect(&node, addr, id).await?;
        lock(&self.links).insert(id, link.clone());
        Ok(link)
    }

    /// Reconnects and reserves wanted relays whose link is missing or dead;
    /// forgets dead links.
    fn maintain(self: &Arc<Self>) {
        let wanted = lock(&self.wanted).clone();
        {
            let mut l = lock(&self.links);
            let before = l.len();
            l.retain(|_, link| link.is_alive());
            if l.len() != before {
                self.changed.send_modify(|n| *n += 1);
            }
        }
        for (id, addr) in wanted {
            let ok = lock(&self.links).get(&id).is_some_and(|l| l.is_reserved());
            if ok {
                continue;
            }
            if lock(&self.redial).get(&id).is_some_and(|(not_before, _)| Instant::now() < *not_before) {
                continue;
            }
            if !lock(&self.connecting).insert(id) {
                continue;
            }
            let weak = Arc::downgrade(self);
            runtime::spawn(async move {
                let Some(set) = weak.upgrade() else { return };
                let r = async {
                    let link = set.link_to(id, addr).await?;
                    link.reserve().await?;
                    Ok::<_, RelayError>(())
                }
                .await;
                if let Err(e) = r {
                    let mut redial = lock(&set.redial);
                    let backoff = redial.get(&id).map_or(REDIAL_FIRST, |(_, b)| (*b * 2).min(REDIAL_MAX));
                    let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                    redial.insert(id, (Instant::now() + wait, backoff));
                    tracing::debug!("relay {addr}: reservation failed: {e}; next try in {wait:?}");
                } else {
                    lock(&set.redial).remove(&id);
                    set.changed.send_modify(|n| *n += 1);
                }
                lock(&set.connecting).remove(&id);
            });
        }
    }

    pub fn close(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        let links: Vec<RelayLink> = lock(&self.links).drain().map(|(_, v)| v).collect();
        for l in links {
            l.close();
        }
    }
}

impl Drop for RelaySet {
    fn drop(&mut self) {
        self.close();
    }
}
