//! Measures where our NAT's port counter is: a STUN Binding request from a
//! throwaway socket (a new internal endpoint, so the NAT makes a new
//! mapping, the latest one) to a STUN server, usually the rendezvous (every
//! node answers STUN). A port-contiguous side advertises the answer so its
//! peer aims one step past it; see
//! `macula_nat_proto::port_predictor::AllocBase` for why and when. Two
//! sockets ask at once: one may sit on a recycled local port whose old
//! mapping the NAT still holds (1-2 % of sockets in the lab matrix, where
//! a host churns through hundreds of sockets a minute); the latest of
//! their answers and the node's observed port counts.
//!
//! Not an exception to one socket per node: the throwaway socket carries no
//! traffic of ours; it measures the NAT's counter, which every internal
//! endpoint shares, not a path.

use crate::lock::lock;
use crate::{runtime, Node};
use macula_nat_proto::port_predictor::{latest_allocation, AllocBase};
use macula_nat_proto::stun::{Class, Message};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Mappings our sockets made outside sessions so far (the mapping-lifetime
/// measurement learns and relearns mappings in the background, each a new
/// allocation on a contiguous NAT): a base measured before one is not used.
/// Process-wide: conservative when one process runs several nodes.
static OTHER_MAPPINGS: AtomicU64 = AtomicU64::new(0);
/// Sessions between taking a base and having made their mappings (each
/// holds a [`Spent`]). Background mappings wait for them: one made inside
/// that window moves the counter under a peer's prediction (seen in the
/// BEAM lab: a port-contiguous pair relayed after 4 s while the lifetime
/// measurement ran).
static HOLDING: AtomicUsize = AtomicUsize::new(0);
/// Longest a background mapping waits for sessions holding a base.
const HOLD_WAIT_MAX: Duration = Duration::from_secs(5);

/// Called before a socket outside any session sends a datagram that may
/// make a new mapping on our NAT: waits (at most [`HOLD_WAIT_MAX`]) while
/// sessions are predicting from the counter, then counts the mapping.
pub(crate) async fn mapping_outside_sessions() {
    let until = Instant::now() + HOLD_WAIT_MAX;
    while HOLDING.load(Ordering::Acquire) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    count_mapping_outside_sessions();
}

/// Counts a mapping made outside sessions without waiting (see
/// [`mapping_outside_sessions`]).
pub(crate) fn count_mapping_outside_sessions() {
    OTHER_MAPPINGS.fetch_add(1, Ordering::AcqRel);
}

/// How long a measurement stays usable while no session of ours allocates
/// (other hosts behind the NAT move the counter too). An idle node's first
/// session after that measures again, one round trip to the server.
pub const BASE_MAX_AGE: Duration = Duration::from_secs(30);

/// The allocation base of one node socket behind a port-contiguous NAT:
/// measured at join and after each session in the background, taken by the
/// next session (measured inline when stale).
pub struct AllocTracker {
    node: Weak<Node>,
    server: SocketAddr,
    base: Mutex<AllocBase>,
}

/// What a measurement is checked against: the node socket's reflexive
/// address at the rendezvous (a past allocation of the same NAT, on the
/// public IP that counts) and the NAT's port delta.
#[derive(Clone, Copy, Debug)]
pub struct Basis {
    pub observed: SocketAddr,
    pub delta: i32,
}

/// A session's hold on the base: when dropped (the session's mappings are
/// made), the base is measured again in the background.
pub struct Spent(Arc<AllocTracker>, Basis, Duration, Hold);

/// One session counted in [`HOLDING`] (a guard, so a session dropped
/// mid-measurement is counted out too).
struct Hold;

impl Hold {
    fn new() -> Hold {
        HOLDING.fetch_add(1, Ordering::AcqRel);
        Hold
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        HOLDING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Spent {
    fn drop(&mut self) {
        self.0.clone().refresh(self.1, self.2);
    }
}

impl AllocTracker {
    /// Measures against `server` (a STUN server reached from `node`'s socket
    /// IP; the rendezvous).
    pub fn new(node: &Arc<Node>, server: SocketAddr) -> Arc<AllocTracker> {
        Arc::new(AllocTracker { node: Arc::downgrade(node), server, base: Mutex::new(AllocBase::new(BASE_MAX_AGE)) })
    }

    /// Measures in the background; a session that allocates meanwhile
    /// voids the measurement. `basis`, `rtt`: as for [`Self::take`].
    pub fn refresh(self: Arc<Self>, basis: Basis, rtt: Duration) {
        let token = lock(&self.base).probe_started();
        runtime::spawn(async move {
            let p = self.measure(basis, rtt).await;
            lock(&self.base).probed(token, p, std::time::Instant::now());
        });
    }

    /// The base for a session about to make mappings from the node socket:
    /// the fresh measurement or a new one, which is never behind `basis`'s
    /// observed port (what peers aim past without a measurement). `rtt`:
    /// to the server, as far as known. Hold the [`Spent`] for the session.
    pub async fn take(self: &Arc<Self>, basis: Basis, rtt: Duration) -> (u16, Spent) {
        let hold = Hold::new();
        let fresh = {
            let mut b = lock(&self.base);
            b.others_allocated(OTHER_MAPPINGS.load(Ordering::Acquire));
            b.fresh(std::time::Instant::now())
        };
        let port = match fresh {
            Some(p) => p,
            None => self.measure(basis, rtt).await,
        };
        lock(&self.base).used();
        (port, Spent(self.clone(), basis, rtt, hold))
    }

    /// The latest of two new mappings and the observed one. Answers for
    /// another IP do not count (a NAT that pools addresses: its counter
    /// for that IP says nothing about ours).
    async fn measure(&self, basis: Basis, rtt: Duration) -> u16 {
        let Some(ip) = self.node.upgrade().and_then(|n| n.local_addr().ok()).map(|a| a.ip()) else {
            return basis.observed.port();
        };
        let (a, b) = tokio::join!(latest_mapping(ip, self.server, rtt), latest_mapping(ip, self.server, rtt));
        let ours = [a, b].into_iter().flatten().filter(|m| m.ip() == basis.observed.ip()).map(|m| m.port());
        latest_allocation(basis.delta, std::iter::once(basis.observed.port()).chain(ours)).unwrap_or(basis.observed.port())
    }
}

/// The public address of a fresh mapping made towards `server` from
/// `local_ip`, or `None` if the server did not answer in time. `rtt`: the
/// round trip to the server as far as it is known; the request is sent
/// three times within a wait of four round trips (at least 150 ms, at most
/// 1 s).
pub async fn latest_mapping(local_ip: IpAddr, server: SocketAddr, rtt: Duration) -> Option<SocketAddr> {
    let _permit = crate::fd_budget::take_one().ok()?;
    let sock = crate::socket::local_ports::bind_fresh(local_ip).ok()?;
    let _lease = crate::socket::local_ports::Lease::of(sock.local_addr().ok()?.port());
    sock.set_nonblocking(true).ok()?;
    let sock = UdpSocket::from_std(sock).ok()?;
    let txid = crate::txid::csprng();
    // Sized for a full answer from responders that answer no more than
    // they receive (ours).
    let req = Message::binding_request(txid).sized_for_answer().encode();
    let wait = (rtt * 4).clamp(Duration::from_millis(150), Duration::from_secs(1));
    let start = Instant::now();
    let deadline = start + wait;
    let mut resend = [start + wait / 3, start + wait * 2 / 3].into_iter();
    let mut next = Some(start);
    let mut buf = [0u8; 1500];
    loop {
        if next.is_some_and(|t| t <= Instant::now()) {
            // A failed send is a lost request: the resends and the deadline
            // deal with it.
            let _ = sock.send_to(&req, server).await;
            next = resend.next();
        }
        let wake = next.map_or(deadline, |t| t.min(deadline));
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if from != server {
                    continue;
                }
                let Ok(msg) = Message::decode(&buf[..n]) else { continue };
                if msg.class == Class::SuccessResponse && msg.transaction_id == txid {
                    return msg.mapped_address();
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{runtime, Identity, Node, NodeConfig};

    #[test]
    fn a_node_tells_the_mapping_of_a_new_socket() {
        let server = Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap();
        let at = server.local_addr().unwrap();
        let got = runtime::handle().block_on(latest_mapping("127.0.0.1".parse().unwrap(), at, Duration::from_millis(1)));
        let got = got.expect("the node answers");
        // No NAT on loopback: the mapping is the throwaway socket itself,
        // which is neither the server's nor a fixed port.
        assert_eq!(got.ip(), at.ip());
        assert_ne!(got.port(), at.port());
    }

    #[test]
    fn a_silent_server_gives_none_within_the_wait() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = silent.local_addr().unwrap();
        let t0 = std::time::Instant::now();
        let got = runtime::handle().block_on(latest_mapping("127.0.0.1".parse().unwrap(), at, Duration::from_millis(1)));
        assert_eq!(got, None);
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(1), "{took:?}");
        // It was asked three times.
        silent.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 100];
        let asked = std::iter::from_fn(|| silent.recv_from(&mut buf).ok()).count();
        assert_eq!(asked, 3);
    }

    #[test]
    fn background_mappings_wait_while_a_session_predicts() {
        let server = Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap();
        let at = server.local_addr().unwrap();
        let tracker = AllocTracker::new(&server, at);
        let basis = Basis { observed: at, delta: 1 };
        runtime::handle().block_on(async {
            let (_, spent) = tracker.take(basis, Duration::from_millis(1)).await;
            let before = OTHER_MAPPINGS.load(Ordering::Acquire);
            let waiting = tokio::spawn(mapping_outside_sessions());
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!waiting.is_finished(), "a background mapping went ahead while a session held the base");
            drop(spent);
            tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("released with the session").unwrap();
            assert!(OTHER_MAPPINGS.load(Ordering::Acquire) > before);
        });
    }
}
