//! A node: one identity and the one UDP socket that carries STUN probes,
//! punch packets and QUIC. Detection measures the mapping of this very socket,
//! so it must never be swapped for another while the node lives.
//!
//! One socket per address family: a dual-stack node (`Node::open_dual`) has
//! a second socket for IPv6, with its own receive loop feeding the same
//! STUN subscribers, punch sessions, relay plane and QUIC endpoint; sends
//! go out on the socket of the destination's family. A node bound to an
//! IPv6 address alone is IPv6-only.

use crate::lock::{lock, write};
use crate::quic::dispatch::Dispatch;
use crate::local_profile::LocalProfile;
use crate::quic::{QuicConfig, QuicEndpoint, QuicError};
#[cfg(test)]
use macula_nat_proto::stun::{Class, Message};
use crate::socket::punch_routes::PunchRoutes;
use crate::socket::recv_loop::{recv_loop, StunSinks};
use crate::socket::relay_plane::RelayPlane;
use crate::socket::{self, BufPool, Counters, Inbox, NodeSocket, SocketSlot, RECV_BATCH};
use crate::{runtime, Connection, Error, Identity, NodeId};
use macula_nat_proto::observer::{Observer, ObserverConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

pub use crate::socket::recv_loop::StunSubscription;

/// How long a closing node keeps its socket so its QUIC connections can
/// tell their peers (CONNECTION_CLOSE) instead of leaving them to time out.
const QUIC_CLOSE_GRACE: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub bind: SocketAddr,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0) }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Binding requests this node answered (every node is a plain STUN
    /// server for its peers).
    pub stun_answered: u64,
    /// Malformed or unexpected STUN datagrams dropped.
    pub stun_dropped: u64,
    /// Binding requests left unanswered: over the responder's rate limits
    /// or byte ledger (`macula_nat_proto::reply_budget`), or the socket
    /// would have blocked.
    pub stun_refused: u64,
    /// Non-STUN datagrams dropped before reaching QUIC (endpoint not keeping
    /// up). Datagrams arriving while QUIC is not running are not counted.
    pub quic_dropped: u64,
    /// Payload bytes this node put into relay sessions (what relays count).
    pub relayed_bytes_out: u64,
}

/// A dual-stack node's IPv6 socket (see the module docs).
struct Six {
    local: SocketAddr,
    slot: SocketSlot,
    task: RwLock<Option<JoinHandle<()>>>,
}

pub struct Node {
    identity: Identity,
    local_addr: SocketAddr,
    six: Option<Six>,
    // Behind a lock so `close` can release the port even while other
    // handles to the node still exist: a restarted owner must be able to
    // bind the same configured port again. The receive task holds the last
    // reference until the runtime drops the aborted task (microseconds
    // later), so the release is prompt but not synchronous; close never
    // blocks (it may run on a BEAM scheduler) and openers retry briefly.
    // With QUIC running, the slot is emptied after `QUIC_CLOSE_GRACE` at
    // most; the QUIC socket reads the slot per send and keeps no reference.
    socket: SocketSlot,
    recv_task: RwLock<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    counters: Arc<Counters>,
    stun_sinks: Arc<Mutex<StunSinks>>,
    /// Non-STUN datagrams on their way to QUIC.
    inbox: Arc<Inbox>,
    /// Created on first use; holds no reference back to the node.
    quic: Mutex<Option<QuicEndpoint>>,
    /// Hole-punch sessions: where the receive loop sends punch packets.
    punch: Arc<PunchRoutes>,
    /// Relay frames and aliases of relayed connections (see `relay::plane`).
    relay: Arc<RelayPlane>,
    /// Sorts incoming QUIC connections once signalling is used.
    dispatch: Mutex<Option<Arc<Dispatch>>>,
    /// What earlier detections on this socket opened (see `detector`).
    detect_memory: Mutex<macula_nat_proto::detect::DetectMemory>,
    /// This node's profile as detection publishes it, for signalling.
    profile: LocalProfile,
    /// Our public address as the rendezvous sees it, and its changes.
    reflexive: Arc<crate::netchange::Reflexive>,
    /// TTL of a primer that passes our NAT(s) and dies before a peer's (0:
    /// none is safe or it is not known yet); see [`crate::punch::primer`].
    primer_ttl: std::sync::atomic::AtomicU8,
    /// Settings for the QUIC endpoint when it is created.
    quic_config: Mutex<QuicConfig>,
    /// A dual-stack node's IPv6 public address as its last IPv6 detection
    /// saw it (see `detect::detector::detect`).
    public6: Mutex<Option<SocketAddr>>,
    /// The measured mapping lifetime, for endpoints created later.
    mapping_lifetime: Mutex<Option<Duration>>,
    /// Why the node failed (its receive loop ended on a socket error);
    /// `None` while it works. See [`Node::failure`].
    failure: tokio::sync::watch::Sender<Option<String>>,
}

impl Node {
    /// Binds the socket and starts its receive loop. Binding is a quick
    /// syscall, so this may run on a BEAM scheduler.
    pub fn open(config: NodeConfig, identity: Identity) -> Result<Arc<Node>, Error> {
        Self::open_dual(config, None, identity)
    }

    /// Like [`Node::open`], with a second socket on `bind6` (an IPv6
    /// address; `config.bind` then IPv4) for a dual-stack node.
    pub fn open_dual(config: NodeConfig, bind6: Option<SocketAddr>, identity: Identity) -> Result<Arc<Node>, Error> {
        if bind6.is_some_and(|b| !b.is_ipv6() || config.bind.is_ipv6()) {
            return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a dual-stack node binds IPv4 and IPv6")));
        }
        let _guard = runtime::handle().enter();
        let (socket, local_addr) = Self::bind_socket(config.bind)?;
        let six = bind6.map(Self::bind_socket).transpose()?;
        let slot = |s: &Arc<NodeSocket>| s.slot_len();
        let inbox = Inbox::new(BufPool::new(slot(&socket).max(six.as_ref().map_or(0, |(s, _)| slot(s))) * RECV_BATCH));
        let counters = Arc::new(Counters::default());
        let stun_sinks = Arc::new(Mutex::new(StunSinks::default()));
        let punch = Arc::new(PunchRoutes::default());
        let relay = Arc::new(RelayPlane::default());
        let observer = |local| {
            Observer::new(ObserverConfig {
                primary: local,
                alternate: None,
                software: Some(format!("macula_nat {}", env!("CARGO_PKG_VERSION"))),
            })
            .map_err(|e| Error::Internal(format!("{e:?}")))
        };
        let observers = (observer(local_addr)?, six.as_ref().map(|(_, l)| observer(*l)).transpose()?);
        Ok(Arc::new_cyclic(|me: &std::sync::Weak<Node>| {
            let start = |socket: &Arc<NodeSocket>, other: Option<&Arc<NodeSocket>>, local, observer| {
                let me = me.clone();
                let received = recv_loop(
                    socket.clone(),
                    other.cloned(),
                    local,
                    observer,
                    counters.clone(),
                    stun_sinks.clone(),
                    inbox.clone(),
                    punch.clone(),
                    relay.clone(),
                );
                // A socket that fails for good must not leave a node that looks open
                // and hears nothing: it fails visibly and closes.
                runtime::spawn(async move {
                    if let Err(e) = received.await {
                        tracing::warn!("node socket failed: {e}");
                        if let Some(node) = me.upgrade() {
                            node.fail(e.to_string());
                        }
                    }
                })
            };
            let task = start(&socket, six.as_ref().map(|(s6, _)| s6), local_addr, observers.0);
            let six = six.zip(observers.1).map(|((s6, local), obs)| Six {
                local,
                task: RwLock::new(Some(start(&s6, Some(&socket), local, obs))),
                slot: Arc::new(RwLock::new(Some(s6))),
            });
            Node {
                identity,
                local_addr,
                six,
                socket: Arc::new(RwLock::new(Some(socket))),
                recv_task: RwLock::new(Some(task)),
                closed: AtomicBool::new(false),
                counters,
                stun_sinks,
                inbox,
                quic: Mutex::new(None),
                punch,
                relay,
                dispatch: Mutex::new(None),
                detect_memory: Mutex::new(Default::default()),
                profile: LocalProfile::default(),
                reflexive: Arc::default(),
                primer_ttl: std::sync::atomic::AtomicU8::new(0),
                quic_config: Mutex::new(QuicConfig::default()),
                public6: Mutex::new(None),
                mapping_lifetime: Mutex::new(None),
                failure: tokio::sync::watch::Sender::new(None),
            }
        }))
    }

    /// One node socket, non-blocking, with its local address. Port 0: not
    /// one of ours that a NAT may still map (`local_ports`).
    fn bind_socket(bind: SocketAddr) -> Result<(Arc<NodeSocket>, SocketAddr), Error> {
        let std_sock = match bind.port() {
            0 => crate::socket::local_ports::bind_fresh(bind.ip())?,
            _ => crate::socket::local_ports::bind(bind)?,
        };
        std_sock.set_nonblocking(true)?;
        let local = std_sock.local_addr()?;
        Ok((Arc::new(NodeSocket::new(UdpSocket::from_std(std_sock)?)?), local))
    }

    /// Closes the node, then says why: whoever hears of the failure finds
    /// it closed.
    fn fail(&self, why: String) {
        self.close();
        self.failure.send_if_modified(|f| f.is_none().then(|| *f = Some(why)).is_some());
    }

    /// Why the node failed (`Some` once its socket failed and it closed);
    /// `changed()` on the receiver wakes when it does.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// The settings the QUIC endpoint is created with (on first use): e.g.
    /// the largest message, `max_message_bytes`. No effect once created.
    pub fn set_quic_config(&self, cfg: QuicConfig) {
        *lock(&self.quic_config) = cfg;
    }

    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This node's NAT profile as its detections publish it (see
    /// [`crate::local_profile`]); signalling reads it when it signals.
    pub fn local_profile(&self) -> &LocalProfile {
        &self.profile
    }

    /// Our public address as our rendezvous reports it, and its changes
    /// (see [`crate::netchange`]).
    pub fn reflexive(&self) -> &Arc<crate::netchange::Reflexive> {
        &self.reflexive
    }

    /// The primer TTL learnt towards the rendezvous, if a primer is safe
    /// (see [`crate::punch::primer`]).
    pub fn primer_ttl(&self) -> Option<u8> {
        Some(self.primer_ttl.load(std::sync::atomic::Ordering::Relaxed)).filter(|&t| t > 0)
    }

    pub(crate) fn set_primer_ttl(&self, ttl: Option<u8>) {
        self.primer_ttl.store(ttl.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn detect_memory(&self) -> &Mutex<macula_nat_proto::detect::DetectMemory> {
        &self.detect_memory
    }

    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.check_open()?;
        Ok(self.local_addr)
    }

    /// The node's IPv6 address: its second socket's on a dual-stack node,
    /// its one socket's on an IPv6-only node; `None` without IPv6.
    pub fn local_addr6(&self) -> Result<Option<SocketAddr>, Error> {
        self.check_open()?;
        Ok(self.six.as_ref().map(|s| s.local).or(Some(self.local_addr).filter(|a| a.is_ipv6())))
    }

    /// The IPv6 public address a dual-stack node's IPv6 detection found
    /// (`None`: none ran, e.g. no IPv6 observers).
    pub fn public6(&self) -> Option<SocketAddr> {
        *lock(&self.public6)
    }

    pub(crate) fn set_public6(&self, a: Option<SocketAddr>) {
        *lock(&self.public6) = a;
    }

    /// The address families the node has a socket for.
    pub fn families(&self) -> macula_nat_proto::connect::family::Families {
        use macula_nat_proto::connect::family::Families;
        match (self.local_addr.is_ipv6(), self.six.is_some()) {
            (false, false) => Families::V4,
            (false, true) => Families::DUAL,
            (true, _) => Families::V6,
        }
    }

    /// The slot of the socket that sends to `dst`.
    fn slot_for(&self, dst: &SocketAddr) -> &SocketSlot {
        match &self.six {
            Some(s) if dst.is_ipv6() => &s.slot,
            _ => &self.socket,
        }
    }

    /// The node's socket for sending to `dst` (the one of its family).
    pub fn socket_for(&self, dst: &SocketAddr) -> Result<Arc<UdpSocket>, Error> {
        socket::current(self.slot_for(dst)).map(|s| s.io.clone()).ok_or(Error::Closed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The node's socket, for sending. Receiving belongs to the node's loop.
    pub fn socket(&self) -> Result<Arc<UdpSocket>, Error> {
        socket::current(&self.socket).map(|s| s.io.clone()).ok_or(Error::Closed)
    }

    /// The node's QUIC endpoint on its socket, created on first use with
    /// default settings.
    pub fn quic(&self) -> Result<QuicEndpoint, QuicError> {
        let cfg = lock(&self.quic_config).clone();
        self.quic_with(cfg)
    }

    /// Like [`Node::quic`]; `cfg` applies only if this call creates the
    /// endpoint.
    pub fn quic_with(&self, cfg: QuicConfig) -> Result<QuicEndpoint, QuicError> {
        let mut quic = lock(&self.quic);
        if let Some(q) = quic.as_ref() {
            return Ok(q.clone());
        }
        if self.is_closed() {
            return Err(QuicError::Closed);
        }
        let sock = socket::current(&self.socket).ok_or(QuicError::Closed)?;
        let sock6 = match &self.six {
            Some(s) => Some((socket::current(&s.slot).ok_or(QuicError::Closed)?, s.slot.clone())),
            None => None,
        };
        let q = QuicEndpoint::on_node(
            &self.identity,
            &sock,
            self.socket.clone(),
            sock6.as_ref().map(|(s, slot)| (&**s, slot.clone())),
            self.inbox.clone(),
            self.counters.clone(),
            cfg,
        )?;
        q.set_mapping_lifetime(*lock(&self.mapping_lifetime));
        *quic = Some(q.clone());
        Ok(q)
    }

    /// The NAT's measured mapping lifetime (from the profile): spaces the
    /// keep-alives of control connections dialled from now on (see
    /// [`QuicEndpoint::set_mapping_lifetime`]).
    pub fn set_mapping_lifetime(&self, lifetime: Option<Duration>) {
        *lock(&self.mapping_lifetime) = lifetime;
        let quic = lock(&self.quic).clone();
        if let Some(q) = quic {
            q.set_mapping_lifetime(lifetime);
        }
    }

    /// The hole-punch session registry of this node.
    pub(crate) fn punch_routes(&self) -> &Arc<PunchRoutes> {
        &self.punch
    }

    /// Payload bytes this node sent through relay sessions so far.
    pub fn relayed_bytes_out(&self) -> u64 {
        self.relay.tunnelled_out.load(Ordering::Relaxed)
    }

    /// The relay (its node key) that a relayed connection's remote address
    /// leads through right now; `None` for a real address.
    pub fn relay_of(&self, remote: &SocketAddr) -> Option<NodeId> {
        self.relay.relay_of(remote)
    }

    /// Where relay frames and aliased datagrams go.
    pub(crate) fn relay_plane(&self) -> &Arc<RelayPlane> {
        &self.relay
    }

    /// Sends one datagram now or not at all (a full socket buffer drops it,
    /// like a congested link; QUIC retransmits). For the relay data path,
    /// which runs inside synchronous hooks.
    pub(crate) fn try_send_to(&self, payload: &[u8], dst: SocketAddr) -> bool {
        self.try_send_segments(payload, payload.len(), dst) == 1
    }

    /// Sends `contents` as datagrams of `segment` bytes (the last may be
    /// shorter), as one GSO batch where the kernel has GSO, now or not at
    /// all; how many leading datagrams left. The relay data path's
    /// `try_send_to` for a whole QUIC batch.
    pub(crate) fn try_send_segments(&self, contents: &[u8], segment: usize, dst: SocketAddr) -> usize {
        let Some(sock) = socket::current(self.slot_for(&dst)) else { return 0 };
        let n = sock.try_send_segments(dst, contents, segment);
        if n > 0 {
            self.counters.datagrams_out.fetch_add(n as u64, Ordering::Relaxed);
            self.counters.bytes_out.fetch_add(contents.len().min(n * segment) as u64, Ordering::Relaxed);
        }
        n
    }

    /// The incoming-connection dispatcher, started on first use (it takes
    /// over the QUIC accept queue; see [`crate::quic::dispatch`]).
    pub(crate) fn dispatch(&self) -> Result<Arc<Dispatch>, QuicError> {
        let mut d = lock(&self.dispatch);
        if let Some(d) = d.as_ref() {
            return Ok(d.clone());
        }
        let started = Dispatch::start(self.quic()?);
        *d = Some(started.clone());
        Ok(started)
    }

    /// The next incoming connection for the application, whether or not
    /// the node has joined a rendezvous yet. Always through the dispatcher:
    /// an accept waiting on the raw QUIC queue when a join starts the
    /// dispatcher would lose the race for every connection to it (the
    /// dispatcher classifies them and queues the application's where that
    /// accept never looks), which is how an `accept/1` called just after a
    /// node started missed a connection its peer had. `None` once closed.
    pub async fn accept(&self) -> Option<Connection> {
        self.dispatch().ok()?.accept().await
    }

    pub async fn send_to(&self, payload: &[u8], dst: SocketAddr) -> Result<(), Error> {
        let sock = self.socket_for(&dst)?;
        let n = sock.send_to(payload, dst).await?;
        self.counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Subscribe to STUN responses arriving on the node's socket.
    pub fn subscribe_stun(&self) -> StunSubscription {
        StunSinks::subscribe(&self.stun_sinks)
    }

    pub fn stats(&self) -> NodeStats {
        let c = &self.counters;
        NodeStats {
            datagrams_in: c.datagrams_in.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            datagrams_out: c.datagrams_out.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            stun_answered: c.stun_answered.load(Ordering::Relaxed),
            stun_dropped: c.stun_dropped.load(Ordering::Relaxed),
            stun_refused: c.stun_refused.load(Ordering::Relaxed),
            relayed_bytes_out: self.relay.tunnelled_out.load(Ordering::Relaxed),
            quic_dropped: self.inbox.dropped(),
        }
    }

    /// Idempotent. Stops the receive loop, closes QUIC connections and
    /// releases the port: at once without QUIC, otherwise after a short grace
    /// (at most `QUIC_CLOSE_GRACE`) in which the connections tell their peers.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for task in std::iter::once(&self.recv_task).chain(self.six.as_ref().map(|s| &s.task)) {
            if let Some(t) = write(task).take() {
                t.abort();
            }
        }
        let quic = lock(&self.quic).take();
        let slots: Vec<(SocketSlot, u16)> = std::iter::once((self.socket.clone(), self.local_addr.port()))
            .chain(self.six.as_ref().map(|s| (s.slot.clone(), s.local.port())))
            .collect();
        let release = move || {
            for (slot, port) in slots {
                write(&slot).take();
                crate::socket::local_ports::released(port);
            }
        };
        match quic {
            None => release(),
            Some(q) => {
                q.close();
                runtime::spawn(async move {
                    q.wait_idle(QUIC_CLOSE_GRACE).await;
                    release();
                });
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> NodeConfig {
        NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }
    }

    #[test]
    fn control_keep_alive_follows_the_measured_lifetime() {
        let s = Duration::from_secs;
        let n = Node::open(loopback(), Identity::generate()).unwrap();
        // Measured before the endpoint exists: it applies when created.
        n.set_mapping_lifetime(Some(s(10)));
        let q = n.quic().unwrap();
        assert_eq!(q.control_keep_alive(), s(4));
        // At most a third of the 30 s idle timeout, whatever the lifetime.
        n.set_mapping_lifetime(Some(s(120)));
        assert_eq!(q.control_keep_alive(), s(10));
        n.set_mapping_lifetime(None);
        assert_eq!(q.control_keep_alive(), QuicConfig::default().keep_alive);
        n.close();
    }

    #[test]
    fn open_send_receive_close_releases_port() {
        let a = Node::open(loopback(), Identity::generate()).unwrap();
        let b = Node::open(loopback(), Identity::generate()).unwrap();
        let b_addr = b.local_addr().unwrap();
        runtime::handle().block_on(async {
            for _ in 0..5 {
                a.send_to(b"hello", b_addr).await.unwrap();
            }
            for _ in 0..100 {
                if b.stats().datagrams_in == 5 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        assert_eq!(b.stats().datagrams_in, 5);
        assert_eq!(b.stats().bytes_in, 25);
        assert_eq!(a.stats().datagrams_out, 5);
        b.close();
        assert!(matches!(b.local_addr(), Err(Error::Closed)));
        // The port is free again (promptly) although `b` is still referenced.
        let mut again = None;
        for _ in 0..100 {
            match Node::open(NodeConfig { bind: b_addr }, Identity::generate()) {
                Ok(n) => {
                    again = Some(n);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        let again = again.expect("port released within 500 ms");
        assert_eq!(again.local_addr().unwrap(), b_addr);
    }

    /// A GSO sender makes the kernel hand a GRO-enabled receiver one buffer
    /// of equal-size datagrams; STUN requests inside such a batch must still
    /// be answered, and the rest still counted and passed on.
    #[test]
    fn stun_inside_a_gro_batch_is_answered() {
        use quinn::udp::{Transmit, UdpSocketState};
        let b = Node::open(loopback(), Identity::generate()).unwrap();
        let _quic = b.quic().unwrap();
        let b_addr = b.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = UdpSocketState::new((&sender).into()).unwrap();
        if state.max_gso_segments() < 2 {
            eprintln!("SKIPPED: no UDP GSO on this kernel");
            return;
        }
        let req = |k: u8| Message::binding_request([k; 12]).encode();
        // Three 20-byte datagrams: STUN, a QUIC-looking one (fixed bit set), STUN.
        let contents = [req(1), vec![0x40; 20], req(2)].concat();
        let t = Transmit { destination: b_addr, ecn: None, contents: &contents, segment_size: Some(20), src_ip: None };
        state.try_send((&sender).into(), &t).unwrap();
        // UdpSocketState made it non-blocking; block (bounded) for answers.
        sender.set_nonblocking(false).unwrap();
        sender.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut buf = [0u8; 1500];
            let n = sender.recv(&mut buf).expect("STUN answer");
            let m = Message::decode(&buf[..n]).unwrap();
            assert_eq!(m.class, Class::SuccessResponse);
            seen.push(m.transaction_id[0]);
        }
        seen.sort();
        assert_eq!(seen, vec![1, 2]);
        // The counters are bumped after the answer leaves: give the receive
        // loop a moment to get there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while b.stats().stun_answered < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(b.stats().datagrams_in, 3);
        assert_eq!(b.stats().stun_answered, 2);
    }
}
