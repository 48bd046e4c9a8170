//! The hard side's extra sockets in birthday probing, and the winning one as
//! a QUIC path.
//!
//! # The one exception to "one UDP socket per node"
//!
//! Everywhere else a node has exactly one socket, so the mapping detection
//! measured is the one that punches and carries QUIC. Birthday probing is
//! different by definition: a side whose NAT allocates a random port per
//! destination ("hard") can only be found by the other side's random probes
//! if it holds *many* mappings towards that side at once, and a mapping
//! belongs to a socket. So the hard side opens a few hundred short-lived
//! sockets ([`SocketSet`], bound to the node socket's IP, port 0), each
//! sending to the easy side's one endpoint so its NAT opens a mapping. Their
//! receive loops feed punch packets to the punch machine with their socket
//! index (the node socket is 0, these are `1..`).
//!
//! Once the machine picks a path, every other socket is closed at once. If
//! the winner is an extra socket `k`, it becomes the QUIC path while QUIC
//! stays on the node's one endpoint ([`PathSocket::route`]): the endpoint's
//! datagrams for the peer's address go out through socket `k` (a
//! [`DatagramTunnel`] route) and what socket `k` receives from the peer that
//! is not STUN is handed to the endpoint with `inject`, as if it had arrived
//! on the node socket. The route and the socket live exactly as long as the
//! QUIC connection ([`PathGuard::hold_while`]); on failure, or when the
//! punch is dropped, every socket closes.
//!
//! # The second exception: a fresh socket for a preserved port
//!
//! A NAT with HD or PD mapping and port preservation (PP) keeps the local
//! port only for a socket's *first* mapping; the node socket spent that on
//! the observers and the rendezvous, so its mapping towards a new peer gets
//! some other port. Such a side can be predicted only through a socket
//! opened for the session ([`SocketSet::open`] with one socket), whose port
//! it advertises in its profile and whose first packet goes to the peer
//! (see `connector`). The session's punch, or the connection-reversal
//! listener's opening packets, leave from that socket and it carries the
//! QUIC connection exactly like a birthday winner. The reversal listener has
//! no punch to tell it the peer's address: [`PathSocket::route_first`] takes
//! it from the first QUIC datagram that arrives. A listener with PD mapping
//! opens a second one, the answer socket: its answer to the dialer's port
//! would leave the dialed socket through a new mapping with an unknown port,
//! so QUIC answers from the answer socket instead, whose first mapping keeps
//! its (advertised) port, and receives on both ("split path").
//!
//! Limits: the route is keyed by the peer's address, so another connection
//! of this node to that very address would move onto the path too (not
//! expected: it is the peer's punched endpoint). Traffic on the path is not
//! in the node's datagram counters.

use crate::lock::lock;
use crate::socket::local_ports::Lease;
use crate::quic::conn::WeakConnection;
use crate::quic::{Connection, DatagramTunnel, QuicEndpoint};
use crate::runtime;
use bytes::Bytes;
use macula_nat_proto::punch::{self, SessionId};
use macula_nat_proto::stun;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A punch packet received on socket `.0` (machine numbering).
pub(crate) type Received = (usize, SocketAddr, Vec<u8>);

/// Punch packets queued from all extra sockets before more are dropped.
const QUEUE: usize = 1024;
/// QUIC datagrams an extra socket keeps from before it became the path: the
/// peer may dial the moment it has nominated the path, a little before this
/// side has heard the nomination. Beyond this QUIC retransmits.
const EARLY_QUIC: usize = 16;
/// Larger than any QUIC datagram (quinn's MTU discovery stops at 1452).
const RECV_BUF: usize = 2048;
/// How often the watcher lets go of the connection so that the owner's
/// dropping its last handle still closes it.
const WATCH: Duration = Duration::from_millis(250);

/// The hard side's extra sockets for one punch.
pub struct SocketSet {
    /// Socket `k` of the machine is `socks[k - 1]`; `None` once closed.
    socks: Vec<Option<Arc<Extra>>>,
    /// The winner after [`SocketSet::keep_only`], still usable for sending
    /// while the machine lingers, without keeping it open.
    kept: Option<(usize, Weak<UdpSocket>)>,
    rx: mpsc::Receiver<Received>,
}

impl SocketSet {
    /// No extra sockets: the punch runs on the node socket alone.
    pub fn empty() -> SocketSet {
        let (_, rx) = mpsc::channel(1);
        SocketSet { socks: Vec::new(), kept: None, rx }
    }

    /// Opens `n` sockets on `ip` (port 0) that take `session`'s punch
    /// packets, or none if the fd budget cannot spare all `n`.
    pub fn open(ip: IpAddr, n: usize, session: SessionId) -> SocketSet {
        Self::open_at_least(ip, n, n, session)
    }

    /// Opens up to `n` sockets on `ip` (port 0) that take `session`'s punch
    /// packets: as many as the process's fd budget spares, none if that is
    /// fewer than `min` (see [`crate::fd_budget`]). Stops at the first
    /// socket that cannot be opened: fewer sockets only lower the hit
    /// probability.
    pub fn open_at_least(ip: IpAddr, n: usize, min: usize, session: SessionId) -> SocketSet {
        let (tx, rx) = mpsc::channel(QUEUE);
        let Some(permits) = crate::fd_budget::take(n, min) else {
            tracing::debug!("birthday: fd budget cannot spare {min} of {n} sockets");
            return SocketSet { socks: Vec::new(), kept: None, rx };
        };
        let _rt = runtime::handle().enter();
        let n = permits.count();
        let mut socks = Vec::with_capacity(n);
        for (i, permit) in permits.into_singles().into_iter().enumerate() {
            let (io, lease) = match bind(ip) {
                Ok((io, lease)) => (Arc::new(io), lease),
                Err(e) => {
                    tracing::debug!("birthday: opened {i} of {n} sockets: {e}");
                    break;
                }
            };
            let sink = Arc::new(QuicSink::default());
            // The permit goes with the receive task, the socket's last
            // holder: it returns to the budget when the descriptor closes.
            let task = runtime::spawn(receive(i + 1, io.clone(), tx.clone(), session, sink.clone(), permit));
            socks.push(Some(Arc::new(Extra { io, sink, task, _lease: lease })));
        }
        SocketSet { socks, kept: None, rx }
    }

    /// The local port of machine socket `index` (>= 1), if open.
    pub fn port(&self, index: usize) -> Option<u16> {
        let e = self.socks.get(index.checked_sub(1)?)?.as_ref()?;
        e.io.local_addr().ok().map(|a| a.port())
    }

    /// Socket `index` (>= 1) as a path while the set still punches on it:
    /// the socket stays open as long as either holds it.
    pub fn share(&self, index: usize) -> Option<PathSocket> {
        let extra = self.socks.get(index.checked_sub(1)?)?.clone()?;
        Some(PathSocket { index, extra })
    }

    /// Sends a TTL-limited primer from socket `index` (>= 1), if open (see
    /// [`crate::punch::primer`]).
    pub fn prime(&self, index: usize, dst: SocketAddr, ttl: u8) {
        if let Some(Some(e)) = index.checked_sub(1).and_then(|i| self.socks.get(i)) {
            crate::punch::primer::send(&*e.io, dst, ttl);
        }
    }

    /// Sends one TTL-limited primer from every open extra socket to `dst`
    /// (the hard side's NAT then maps each socket towards the easy side
    /// before anything of the easy side's can arrive; see `connector`).
    /// A few hundred sends: a pause for the runtime every [`PRIMER_CHUNK`].
    pub(crate) async fn prime_all(&self, dst: SocketAddr, ttl: u8) -> usize {
        let socks: Vec<Arc<UdpSocket>> = self.socks.iter().flatten().map(|e| e.io.clone()).collect();
        let mut sent = 0;
        for chunk in socks.chunks(PRIMER_CHUNK) {
            for io in chunk {
                sent += usize::from(send_primer(&**io, dst, ttl).await);
            }
            tokio::task::yield_now().await;
        }
        sent
    }

    /// The socket of machine index `index` (>= 1), if open.
    pub(crate) fn io(&self, index: usize) -> Option<Arc<UdpSocket>> {
        Some(self.socks.get(index.checked_sub(1)?)?.as_ref()?.io.clone())
    }

    /// Machine socket indices of the open extra sockets.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.socks.iter().enumerate().filter(|(_, s)| s.is_some()).map(|(i, _)| i + 1)
    }

    /// Open extra sockets.
    pub fn len(&self) -> usize {
        self.socks.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends from machine socket `index` (>= 1); a closed socket drops it.
    pub(crate) async fn send(&self, index: usize, payload: &[u8], dst: SocketAddr) -> std::io::Result<()> {
        let io = match index.checked_sub(1).and_then(|i| self.socks.get(i)) {
            Some(Some(e)) => Some(e.io.clone()),
            _ => self.kept.as_ref().filter(|(k, _)| *k == index).and_then(|(_, w)| w.upgrade()),
        };
        match io {
            Some(io) => io.send_to(payload, dst).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// The next punch packet from an extra socket; pending forever when
    /// none can come (no sockets, or all closed).
    pub(crate) async fn recv(&mut self) -> Received {
        match self.rx.recv().await {
            Some(d) => d,
            None => std::future::pending().await,
        }
    }

    /// Takes socket `index` (>= 1) out of the set, leaving the others open;
    /// dropping the result closes it.
    pub(crate) fn take(&mut self, index: usize) -> Option<PathSocket> {
        let extra = self.socks.get_mut(index.checked_sub(1)?)?.take()?;
        Some(PathSocket { index, extra })
    }

    /// Closes every extra socket but `winner` (a machine index; 0 or `None`
    /// closes them all) and hands that one out.
    pub(crate) fn keep_only(&mut self, winner: Option<usize>) -> Option<PathSocket> {
        let kept = winner.and_then(|k| k.checked_sub(1)).and_then(|i| self.socks.get_mut(i)).and_then(Option::take);
        self.socks.clear();
        let extra = kept?;
        let index = winner.unwrap_or(0);
        self.kept = Some((index, Arc::downgrade(&extra.io)));
        Some(PathSocket { index, extra })
    }
}

/// Primers sent between two pauses for the runtime (a sendmsg each, some
/// microseconds: a chunk keeps a runtime thread well under a millisecond).
pub(crate) const PRIMER_CHUNK: usize = 32;

/// Sends primers from `sock` to each of `dsts`, in order, pausing for the
/// runtime every [`PRIMER_CHUNK`]; how many left.
pub(crate) async fn prime_each(sock: &impl AsRawFd, dsts: impl IntoIterator<Item = SocketAddr>, ttl: u8) -> usize {
    let mut sent = 0;
    for (i, dst) in dsts.into_iter().enumerate() {
        if i > 0 && i % PRIMER_CHUNK == 0 {
            tokio::task::yield_now().await;
        }
        sent += usize::from(send_primer(sock, dst, ttl).await);
    }
    sent
}

/// One primer; a full send buffer (hundreds from one socket) is waited out
/// a little rather than losing the primer, another error is tried once
/// more (an earlier ICMP error reported by this send instead of sending).
async fn send_primer(sock: &impl AsRawFd, dst: SocketAddr, ttl: u8) -> bool {
    for _ in 0..20 {
        match crate::punch::primer::try_send(sock, dst, ttl) {
            Ok(()) => return true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(_) => return crate::punch::primer::try_send(sock, dst, ttl).is_ok(),
        }
    }
    false
}

fn bind(ip: IpAddr) -> std::io::Result<(UdpSocket, Lease)> {
    let s = crate::socket::local_ports::bind_fresh(ip)?;
    let lease = Lease::of(s.local_addr()?.port());
    s.set_nonblocking(true)?;
    Ok((UdpSocket::from_std(s)?, lease))
}

/// One extra socket and its receive loop (stopped on drop, which closes
/// the socket once the last send through it is done).
struct Extra {
    io: Arc<UdpSocket>,
    sink: Arc<QuicSink>,
    task: JoinHandle<()>,
    _lease: Lease,
}

impl Drop for Extra {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    index: usize,
    io: Arc<UdpSocket>,
    tx: mpsc::Sender<Received>,
    session: SessionId,
    sink: Arc<QuicSink>,
    _permit: crate::fd_budget::FdPermit,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, from) = match io.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors of earlier sends (the easy side's NAT refusing our
            // opening packets) say nothing about this socket.
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::WouldBlock) => continue,
            Err(e) => {
                tracing::debug!("birthday socket {index}: {e}");
                return;
            }
        };
        let data = &buf[..n];
        if stun::is_stun(data) {
            if punch::session_of(data) == Some(session) {
                // Full queue: drop, the peer retransmits.
                let _ = tx.try_send((index, from, data.to_vec()));
            }
        } else {
            sink.offer(from, data);
        }
    }
}

/// Where an extra socket's non-STUN datagrams go.
#[derive(Default)]
struct QuicSink {
    state: Mutex<SinkState>,
    /// A datagram was queued while not yet the path.
    arrived: tokio::sync::Notify,
}

enum SinkState {
    /// Not the QUIC path (yet): keep a few, in case it becomes it.
    Early(VecDeque<(SocketAddr, Bytes)>),
    /// The QUIC path to `remote`: its datagrams go to the endpoint.
    Path { quic: QuicEndpoint, remote: SocketAddr },
}

impl Default for SinkState {
    fn default() -> Self {
        SinkState::Early(VecDeque::new())
    }
}

impl QuicSink {
    fn offer(&self, from: SocketAddr, data: &[u8]) {
        let mut s = lock(&self.state);
        match &mut *s {
            SinkState::Early(q) if q.len() < EARLY_QUIC => {
                q.push_back((from, Bytes::copy_from_slice(data)));
                self.arrived.notify_one();
            }
            SinkState::Early(_) => {}
            // Only the peer: nothing else should reach QUIC through here.
            SinkState::Path { quic, remote } if *remote == from => {
                quic.inject(from, Bytes::copy_from_slice(data));
            }
            SinkState::Path { .. } => {}
        }
    }

    fn attach(&self, quic: QuicEndpoint, remote: SocketAddr) {
        let mut s = lock(&self.state);
        if let SinkState::Early(q) = std::mem::take(&mut *s) {
            for (from, d) in q.into_iter().filter(|(f, _)| *f == remote) {
                quic.inject(from, d);
            }
        }
        *s = SinkState::Path { quic, remote };
    }

    /// The sender of the oldest datagram queued before this became a path.
    fn first_sender(&self) -> Option<SocketAddr> {
        match &*lock(&self.state) {
            SinkState::Early(q) => q.front().map(|(from, _)| *from),
            SinkState::Path { .. } => None,
        }
    }

    fn detach(&self) {
        *lock(&self.state) = SinkState::default();
    }
}

/// Sends the routed QUIC datagrams from the path socket.
#[derive(Debug)]
struct SocketTunnel {
    io: Arc<UdpSocket>,
}

impl DatagramTunnel for SocketTunnel {
    fn send(&self, dst: SocketAddr, datagram: &[u8]) {
        // Never blocks; a full buffer is loss, which QUIC recovers from.
        let _ = self.io.try_send_to(datagram, dst);
    }
}

/// The extra socket that won the punch, not yet carrying QUIC.
pub struct PathSocket {
    // Only the tests ask which machine socket won.
    #[cfg_attr(not(test), allow(dead_code))]
    index: usize,
    extra: Arc<Extra>,
}

impl PathSocket {
    /// Machine socket index.
    #[cfg(test)]
    pub fn index(&self) -> usize {
        self.index
    }

    /// Local address (for the tests).
    #[cfg(test)]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.extra.io.local_addr().ok()
    }

    /// Waits for the first QUIC datagram to arrive on this socket and makes
    /// the socket `quic`'s path to its sender (a connection-reversal
    /// listener learns the dialer's port that way). A stranger's datagram
    /// arriving first would take the path; the port is fresh and lives for
    /// one session, and the QUIC handshake still authenticates the peer.
    ///
    /// With `answer`, QUIC sends from that socket instead and receives on
    /// both (the split path of a PD-mapping listener, see `strategy`): the
    /// dialer reaches this socket, the answer socket's first mapping goes to
    /// the dialer and keeps its preserved port, which the dialer expects.
    pub async fn route_first(self, quic: &QuicEndpoint, answer: Option<PathSocket>) -> PathGuard {
        let sink = self.extra.sink.clone();
        let from = loop {
            let notified = sink.arrived.notified();
            if let Some(from) = sink.first_sender() {
                break from;
            }
            notified.await;
        };
        self.route_with(quic, from, answer)
    }

    /// Makes this socket `quic`'s path to `remote`, in both directions,
    /// until the guard is dropped.
    pub fn route(self, quic: &QuicEndpoint, remote: SocketAddr) -> PathGuard {
        self.route_with(quic, remote, None)
    }

    /// Like [`PathSocket::route`]; with `answer`, QUIC's datagrams to
    /// `remote` leave from `answer` and both sockets take `remote`'s in.
    fn route_with(self, quic: &QuicEndpoint, remote: SocketAddr, answer: Option<PathSocket>) -> PathGuard {
        let out = answer.as_ref().map_or(&self.extra, |a| &a.extra).io.clone();
        quic.route_via(remote, Arc::new(SocketTunnel { io: out }));
        let extras: Vec<Arc<Extra>> = std::iter::once(self.extra).chain(answer.map(|a| a.extra)).collect();
        for e in &extras {
            e.sink.attach(quic.clone(), remote);
        }
        PathGuard { quic: quic.clone(), remote, extras }
    }
}

/// A path socket carrying QUIC for one remote. Dropping it clears the route
/// and closes the socket.
pub struct PathGuard {
    quic: QuicEndpoint,
    remote: SocketAddr,
    /// The receiving socket, and the answer socket of a split path.
    extras: Vec<Arc<Extra>>,
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        self.quic.clear_route(self.remote);
        for e in self.extras.drain(..) {
            // Breaks the sink's hold on the endpoint even if the task is
            // mid-poll when aborted.
            e.sink.detach();
        }
    }
}

impl PathGuard {
    /// Keeps the path for as long as `conn` is open: until it closes for
    /// any reason or its last handle is dropped, plus a short grace for its
    /// CONNECTION_CLOSE to leave through the path.
    pub fn hold_while(self, conn: &Connection) {
        after_close(conn, move || drop(self));
    }
}

/// Runs `f` once `conn` has closed for any reason or its last handle is
/// gone, plus a short grace for its CONNECTION_CLOSE to leave: for state
/// whose lifetime follows the connection's (a path socket, an alias).
pub(crate) fn after_close(conn: &Connection, f: impl FnOnce() + Send + 'static) {
    let weak = conn.downgrade();
    runtime::spawn(async move {
        let rtt = watch(&weak).await;
        tokio::time::sleep(close_grace(rtt)).await;
        f();
    });
}

/// Waits until the connection is closed or gone; its last RTT if known.
async fn watch(weak: &WeakConnection) -> Option<Duration> {
    loop {
        let c = weak.upgrade()?;
        if c.close_reason().is_some() {
            return Some(c.rtt());
        }
        // Holding `c` keeps the connection open, so hold it only for a
        // while: an owner dropping the last handle must still close it.
        let _ = tokio::time::timeout(WATCH, c.closed()).await;
    }
}

fn close_grace(rtt: Option<Duration>) -> Duration {
    rtt.map_or(Duration::from_millis(200), |r| r * 3).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionId {
        SessionId::from_bytes([7; 16])
    }

    fn punch_packet(session: SessionId) -> Vec<u8> {
        use macula_nat_proto::stun::{Attribute, Message, PunchToken};
        Message::binding_request([1; 12])
            .with(Attribute::PunchToken(PunchToken { session, sender: macula_nat_proto::id::NodeId::from_bytes([9; 32]), flags: 0 }))
            .with_fingerprint()
            .encode()
    }

    #[test]
    fn extra_sockets_feed_their_sessions_punch_packets_with_their_index() {
        runtime::handle().block_on(async {
            let mut set = SocketSet::open("127.0.0.1".parse().unwrap(), 3, session());
            assert_eq!(set.indices().collect::<Vec<_>>(), vec![1, 2, 3]);
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = set.socks[1].as_ref().unwrap().io.local_addr().unwrap();
            // Another session's packet and a non-STUN datagram are not fed.
            peer.send_to(&punch_packet(SessionId::from_bytes([8; 16])), to).unwrap();
            peer.send_to(b"\x40quic", to).unwrap();
            peer.send_to(&punch_packet(session()), to).unwrap();
            let (k, from, data) = tokio::time::timeout(Duration::from_secs(2), set.recv()).await.expect("fed");
            assert_eq!((k, from, data), (2, peer.local_addr().unwrap(), punch_packet(session())));
            // Sending from an index leaves from that socket.
            set.send(3, b"x", peer.local_addr().unwrap()).await.unwrap();
            let mut buf = [0u8; 8];
            peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let (_, src) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(src, set.socks[2].as_ref().unwrap().io.local_addr().unwrap());
        });
    }

    #[test]
    fn keep_only_closes_the_losers_and_hands_out_the_winner() {
        runtime::handle().block_on(async {
            let mut set = SocketSet::open("127.0.0.1".parse().unwrap(), 4, session());
            let addrs: Vec<SocketAddr> = set.socks.iter().map(|s| s.as_ref().unwrap().io.local_addr().unwrap()).collect();
            let path = set.keep_only(Some(3)).expect("winner");
            assert_eq!((path.index(), path.local_addr()), (3, Some(addrs[2])));
            assert!(set.is_empty());
            // The losers' ports are free again at once (the loops are
            // aborted; give the runtime a moment to drop them).
            tokio::time::sleep(Duration::from_millis(50)).await;
            for (i, a) in addrs.iter().enumerate() {
                let rebound = std::net::UdpSocket::bind(a);
                assert_eq!(rebound.is_ok(), i != 2, "socket {} reopened: {:?}", i + 1, rebound.err());
            }
            // Sending from the kept index still works while the path lives.
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            set.send(3, b"y", peer.local_addr().unwrap()).await.unwrap();
            drop(path);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(std::net::UdpSocket::bind(addrs[2]).is_ok(), "winner closed with its guard");
            // Nothing can come any more: recv pends instead of spinning.
            assert!(tokio::time::timeout(Duration::from_millis(50), set.recv()).await.is_err());
        });
    }

    #[test]
    fn no_winner_or_the_node_socket_closes_all() {
        runtime::handle().block_on(async {
            for w in [None, Some(0)] {
                let mut set = SocketSet::open("127.0.0.1".parse().unwrap(), 2, session());
                assert!(set.keep_only(w).is_none());
                assert!(set.is_empty());
            }
            assert!(SocketSet::empty().keep_only(Some(1)).is_none());
        });
    }

    fn node() -> Arc<crate::Node> {
        crate::Node::open(crate::NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, crate::Identity::generate()).unwrap()
    }

    /// A dials B at `path_addr`, where B listens with `route_first` on
    /// `path` (and `answer`); B's guard is held while B's connection lives.
    async fn dial_routed(a: &crate::Node, b: &crate::Node, path: PathSocket, answer: Option<PathSocket>, path_addr: SocketAddr) -> (Connection, Connection) {
        let (qa, qb) = (a.quic().unwrap(), b.quic().unwrap());
        let routed = tokio::spawn({
            let qb = qb.clone();
            async move { path.route_first(&qb, answer).await }
        });
        let accepted = tokio::spawn(async move { qb.accept().await });
        let ca = qa.connect(path_addr, b.node_id()).await.expect("handshake over the routed path");
        let guard = routed.await.unwrap();
        let cb = accepted.await.unwrap().expect("accepted");
        guard.hold_while(&cb);
        (ca, cb)
    }

    /// Waits (bounded) until `addr` can be bound again: the socket closed.
    async fn released(addr: SocketAddr) -> bool {
        for _ in 0..100 {
            if std::net::UdpSocket::bind(addr).is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// B's QUIC endpoint talks to A through B's path socket only: B's node
    /// socket carries nothing, A sees the path socket's address. Closing the
    /// connection closes the socket and clears the route.
    #[test]
    fn quic_rides_the_path_socket_until_the_connection_closes() {
        let (a, b) = (node(), node());
        runtime::handle().block_on(async {
            let (qa, qb) = (a.quic().unwrap(), b.quic().unwrap());
            let a_addr = a.local_addr().unwrap();
            let mut set = SocketSet::open("127.0.0.1".parse().unwrap(), 2, session());
            let path = set.keep_only(Some(2)).unwrap();
            let path_addr = path.local_addr().unwrap();
            let guard = path.route(&qb, a_addr);
            let accepted = tokio::spawn(async move { qb.accept().await });
            let ca = qa.connect(path_addr, b.node_id()).await.expect("handshake over the path socket");
            let cb = accepted.await.unwrap().expect("accepted");
            guard.hold_while(&cb);
            assert_eq!(ca.remote_address(), path_addr);
            assert_eq!(cb.remote_address(), a_addr);
            ca.send(b"ping".to_vec()).await.unwrap();
            assert_eq!(cb.recv().await.as_deref(), Some(&b"ping"[..]));
            cb.send(b"pong".to_vec()).await.unwrap();
            assert_eq!(ca.recv().await.as_deref(), Some(&b"pong"[..]));
            let st = b.stats();
            assert_eq!((st.datagrams_in, st.datagrams_out), (0, 0), "B's node socket carried QUIC");
            drop(cb);
            ca.close("done");
            assert!(released(path_addr).await, "path socket still open after the close");
            // The route is gone: B reaches A from its node socket again.
            let qb = b.quic().unwrap();
            let cb2 = qb.connect(a_addr, a.node_id());
            let accepted = tokio::spawn({
                let qa = qa.clone();
                async move { qa.accept().await }
            });
            // Held until accepted: the acceptor reads the dialler's first
            // byte, which a dialler dropped at once may never send.
            let _cb2 = cb2.await.expect("direct dial after the route was cleared");
            assert!(accepted.await.unwrap().is_some());
            assert!(b.stats().datagrams_out > 0);
        });
    }

    /// A connection-reversal listener's fresh socket: nothing says in
    /// advance where the dialer comes from; the first QUIC datagram does,
    /// and the path carries the connection both ways from then on.
    #[test]
    fn route_first_follows_the_first_dialer() {
        let (a, b) = (node(), node());
        runtime::handle().block_on(async {
            let mut set = SocketSet::open("127.0.0.1".parse().unwrap(), 1, session());
            let port = set.port(1).expect("fresh port");
            let path = set.keep_only(Some(1)).unwrap();
            let path_addr = path.local_addr().unwrap();
            assert_eq!(path_addr.port(), port);
            let (ca, cb) = dial_routed(&a, &b, path, None, path_addr).await;
            assert_eq!(cb.remote_address(), a.local_addr().unwrap());
            ca.send(b"ping".to_vec()).await.unwrap();
            assert_eq!(cb.recv().await.as_deref(), Some(&b"ping"[..]));
            cb.send(b"pong".to_vec()).await.unwrap();
            assert_eq!(ca.recv().await.as_deref(), Some(&b"pong"[..]));
            assert_eq!(b.stats().datagrams_out, 0, "B's node socket carried QUIC");
        });
    }

    /// The split path: the dialer reaches the listener's dialed socket, the
    /// listener's QUIC answers from its answer socket, the dialer follows
    /// that port as an alias of the dialed one (as it does for a PD-mapping
    /// listener) and keeps sending to the dialed socket. Both ends carry
    /// messages; B's node socket carries nothing; the guard holds both
    /// sockets until the connection ends.
    #[test]
    fn split_path_answers_from_the_answer_socket() {
        let (a, b) = (node(), node());
        runtime::handle().block_on(async {
            let mut set = SocketSet::open("127.0.0.1".parse().unwrap(), 2, session());
            let answer = set.take(2).expect("answer socket");
            let answer_addr = answer.local_addr().unwrap();
            let path = set.keep_only(Some(1)).unwrap();
            let path_addr = path.local_addr().unwrap();
            assert!(a.relay_plane().expect_follow(path_addr));
            let (ca, cb) = dial_routed(&a, &b, path, Some(answer), path_addr).await;
            assert_eq!(ca.remote_address(), path_addr, "the dialer's QUIC sees the dialed address");
            assert!(a.relay_plane().has_alias(&answer_addr), "the answer came from the answer socket");
            assert_eq!(cb.remote_address(), a.local_addr().unwrap());
            for i in 0..3u8 {
                ca.send(vec![i; 2000]).await.unwrap();
                assert_eq!(cb.recv().await, Some(vec![i; 2000]));
                cb.send(vec![i; 3000]).await.unwrap();
                assert_eq!(ca.recv().await, Some(vec![i; 3000]));
            }
            assert_eq!(b.stats().datagrams_out, 0, "B's node socket carried QUIC");
            drop(cb);
            ca.close("done");
            assert!(released(path_addr).await && released(answer_addr).await, "split path outlived its connection");
            a.relay_plane().end_follow(path_addr);
        });
    }

    /// Dropping every handle closes the connection; the path follows.
    #[test]
    fn dropping_the_last_handle_ends_the_path() {
        let (a, b) = (node(), node());
        runtime::handle().block_on(async {
            let (qa, qb) = (a.quic().unwrap(), b.quic().unwrap());
            let mut set = SocketSet::open("127.0.0.1".parse().unwrap(), 1, session());
            let path = set.keep_only(Some(1)).unwrap();
            let path_addr = path.local_addr().unwrap();
            let guard = path.route(&qb, a.local_addr().unwrap());
            let accepted = tokio::spawn(async move { qb.accept().await });
            let ca = qa.connect(path_addr, b.node_id()).await.unwrap();
            let cb = accepted.await.unwrap().unwrap();
            guard.hold_while(&cb);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(std::net::UdpSocket::bind(path_addr).is_err(), "held while the connection lives");
            drop(cb);
            assert!(released(path_addr).await, "path socket outlived its connection");
            // A hears that B closed (through the path, before it closed).
            let reason = tokio::time::timeout(Duration::from_secs(5), ca.closed()).await.expect("A told");
            assert!(matches!(reason, crate::CloseReason::Peer { .. }), "{reason:?}");
        });
    }

    #[test]
    fn close_grace_is_bounded() {
        assert_eq!(close_grace(None), Duration::from_millis(200));
        assert_eq!(close_grace(Some(Duration::from_millis(1))), Duration::from_millis(100));
        assert_eq!(close_grace(Some(Duration::from_millis(100))), Duration::from_millis(300));
        assert_eq!(close_grace(Some(Duration::from_secs(2))), Duration::from_secs(1));
    }
}
