//! Runs a sans-IO [`Detection`] on the node's own UDP socket: every mapping
//! probe leaves from the socket that will later punch and carry QUIC. Extra
//! sockets, opened per detection and closed when it ends, learn the
//! allocation policy from fresh mappings, and one (the filter socket) runs
//! the filtering tests, so that no changed-address answer ever reaches the
//! NAT at the node socket's public port (see `DetectConfig::filter_socket`).

use crate::lock::lock;
use crate::{Error, Node};
use macula_nat_proto::detect::{DetectConfig, DetectError, Detection, SocketId};
use macula_nat_proto::nat::NatProfile;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A profile plus what the runtime knows and the sans-IO layer does not.
#[derive(Clone, Debug)]
pub struct Detected {
    pub profile: NatProfile,
    /// Unix seconds.
    pub detected_at: u64,
    /// Local address of the measured socket (the node's).
    pub local_addr: SocketAddr,
    pub elapsed: Duration,
}

#[derive(Debug)]
pub enum DetectFailure {
    Detect(DetectError),
    Runtime(Error),
}

impl From<Error> for DetectFailure {
    fn from(e: Error) -> Self {
        DetectFailure::Runtime(e)
    }
}

impl From<std::io::Error> for DetectFailure {
    fn from(e: std::io::Error) -> Self {
        DetectFailure::Runtime(Error::Io(e))
    }
}

/// The interface address the kernel would use towards `dst` (connecting a
/// UDP socket sends nothing). Detection needs it to recognise "no NAT" when
/// the node is bound to 0.0.0.0.
fn source_ip_towards(dst: SocketAddr, bound: IpAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    let any: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(dst).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(bound)
}

/// Detects the node's NAT on its first socket, with the observers of that
/// socket's family. A dual-stack node given IPv6 observers detects its
/// IPv6 side beside it, on its IPv6 socket, and keeps the IPv6 public
/// address found there ([`Node::public6`]: behind a stateful firewall its
/// own; behind NPTv6 or NAT66 another, which it then signals); without
/// IPv6 observers its global interface addresses stand for it.
pub async fn detect(node: Arc<Node>, cfg: DetectConfig) -> Result<Detected, DetectFailure> {
    let bound = node.local_addr()?;
    let six = node.local_addr6()?.filter(|_| bound.is_ipv4() && cfg.observers.iter().any(SocketAddr::is_ipv6));
    let six = six.map(|b6| tokio::spawn(detect_on(node.clone(), cfg.clone(), b6, false)));
    let r = detect_on(node.clone(), cfg, bound, true).await;
    if let Some(h) = six {
        match h.await {
            Ok(Ok(d)) => node.set_public6(Some(d.profile.public_addr)),
            Ok(Err(e)) => tracing::debug!("detect: IPv6 side: {e:?}"),
            Err(_) => {}
        }
    }
    r
}

/// One detection on the node's socket bound at `bound`, with the
/// observers of its family; `nat44`: the socket whose NAT earlier
/// detections remember and whose hairpin is measured (not a dual-stack
/// node's IPv6 one).
async fn detect_on(node: Arc<Node>, mut cfg: DetectConfig, bound: SocketAddr, nat44: bool) -> Result<Detected, DetectFailure> {
    let started = Instant::now();
    cfg.observers.retain(|o| o.is_ipv4() == bound.is_ipv4());
    let Some(first) = cfg.observers.first().copied() else {
        return Err(DetectFailure::Detect(DetectError::NoObservers));
    };
    let local = SocketAddr::new(source_ip_towards(first, bound.ip()), bound.port());
    let mut subscription = node.subscribe_stun();
    let primary = node.socket_for(&first)?;
    if nat44 {
        cfg.opened.extend(lock(node.detect_memory()).opened(Instant::now()));
    }
    let filter_socket = cfg.filter_socket;
    // Beside the main detection, on a socket of its own (see `hairpin`).
    let hairpin = Joinable(nat44.then(|| tokio::spawn(super::hairpin::hairpins(first, bound.ip()))));
    let mut d = Detection::new(cfg, local, Instant::now(), crate::txid::CSPRNG);

    // Probe sockets and the filter socket, each forwarding what it
    // receives into one channel. Answers only: a few per request.
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<(SocketId, SocketAddr, Vec<u8>)>();
    let mut probes: Vec<Arc<UdpSocket>> = Vec::new();
    let mut readers = Vec::new();
    let open = |id: SocketId| {
        let tx = probe_tx.clone();
        async move {
            let sock = Arc::new(UdpSocket::bind(SocketAddr::new(bound.ip(), 0)).await?);
            let s = sock.clone();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((len, from)) = s.recv_from(&mut buf).await {
                    if tx.send((id, from, buf[..len].to_vec())).is_err() {
                        return;
                    }
                }
            });
            Ok::<_, std::io::Error>((sock, reader))
        }
    };
    // Probe and filter sockets come out of the process's fd budget; the
    // permits are held until the detection ends.
    let wanted = d.probe_sockets_needed() + usize::from(filter_socket);
    let _permits = if wanted > 0 { Some(crate::fd_budget::take(wanted, wanted).ok_or_else(crate::fd_budget::exhausted)?) } else { None };
    for n in 0..d.probe_sockets_needed() {
        let (sock, reader) = open(SocketId::Probe(n)).await?;
        d.set_probe_local_addr(n, SocketAddr::new(local.ip(), sock.local_addr()?.port()));
        readers.push(reader);
        probes.push(sock);
    }
    let filter = if filter_socket {
        let (sock, reader) = open(SocketId::Filter).await?;
        d.set_filter_local_addr(SocketAddr::new(local.ip(), sock.local_addr()?.port()));
        readers.push(reader);
        Some(sock)
    } else {
        None
    };
    let _abort_readers = AbortOnDrop(readers);

    let result = loop {
        let now = Instant::now();
        while let Some(t) = d.poll_transmit(now) {
            let sock = match t.socket {
                SocketId::Primary => &primary,
                SocketId::Probe(n) => match probes.get(n) {
                    Some(s) => s,
                    None => continue,
                },
                SocketId::Filter => match &filter {
                    Some(s) => s,
                    None => continue,
                },
            };
            // A send error (e.g. unreachable network) is a lost probe; the
            // state machine's retransmission and deadline deal with it.
            let _ = sock.send_to(&t.payload, t.dst).await;
        }
        if let Some(r) = d.poll_result() {
            break r;
        }
        let deadline = d.poll_timeout().unwrap_or_else(|| now + Duration::from_millis(50));
        // Answers first: after a stall (a starved runtime thread), an answer
        // already in hand must not lose to the timer that gives its probe up.
        tokio::select! {
            biased;
            Some((from, data)) = subscription.rx.recv() => {
                d.handle_datagram(SocketId::Primary, from, &data, Instant::now());
            }
            Some((id, from, data)) = probe_rx.recv() => {
                d.handle_datagram(id, from, &data, Instant::now());
            }
            _ = tokio::time::sleep_until(deadline.into()) => d.handle_timeout(Instant::now()),
        }
    };
    // Sent is sent, whatever the verdict: remember it even on failure.
    // In a block: the guard must be gone before the await below (the
    // future is sent between threads).
    let mut profile = {
        let mut memory = lock(node.detect_memory());
        let mut profile = result.map_err(DetectFailure::Detect);
        if nat44 {
            memory.remember(d.primary_destinations(), Instant::now());
            if let Ok(p) = profile.as_mut() {
                memory.settle_filtering(p, d.filtering_measured());
            }
        }
        profile?
    };
    if !profile.no_nat {
        profile.hairpin = hairpin.join().await;
    }
    let detected_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Detected { profile, detected_at, local_addr: local, elapsed: started.elapsed() })
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

/// A task aborted if the detection ends (or fails) before joining it.
struct Joinable<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Joinable<T> {
    async fn join(mut self) -> T
    where
        T: Default,
    {
        match self.0.take() {
            Some(h) => h.await.unwrap_or_default(),
            None => T::default(),
        }
    }
}

impl<T> Drop for Joinable<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::observer_server::ObserverServer;
    use crate::{Identity, NodeConfig};
    use macula_nat_proto::nat::{Allocation, Filtering, Mapping};

    #[test]
    fn loopback_without_nat_is_open_internet() {
        let srv = ObserverServer::start("127.0.0.1:0".parse().unwrap(), Some("127.0.0.2:0".parse().unwrap()), None).unwrap();
        let node = Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap();
        let cfg = DetectConfig { observers: vec![srv.primary()], ..DetectConfig::default() };
        let got = crate::runtime::handle().block_on(detect(node.clone(), cfg)).unwrap();
        let p = got.profile;
        assert!(p.no_nat, "{p:?}");
        assert_eq!((p.mapping, p.filtering, p.allocation), (Mapping::Ei, Filtering::Ei, Allocation::Pp));
        assert_eq!(p.public_addr, node.local_addr().unwrap());
        assert!(got.elapsed < Duration::from_secs(1), "{:?}", got.elapsed);
    }

    #[test]
    fn no_answer_is_a_timeout() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let node = Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap();
        let cfg = DetectConfig {
            observers: vec![silent.local_addr().unwrap()],
            timeout: Duration::from_millis(300),
            ..DetectConfig::default()
        };
        let r = crate::runtime::handle().block_on(detect(node, cfg));
        assert!(matches!(r, Err(DetectFailure::Detect(DetectError::Timeout))), "{r:?}");
    }

    /// A dual-stack node detects both sides: the IPv4 verdict is the
    /// result, the IPv6 public address is kept on the node.
    #[test]
    fn a_dual_stack_node_detects_its_ipv6_side_too() {
        let Ok(srv6) = ObserverServer::start("[::1]:0".parse().unwrap(), None, None) else {
            eprintln!("SKIPPED: no IPv6 loopback");
            return;
        };
        let srv = ObserverServer::start("127.0.0.1:0".parse().unwrap(), None, None).unwrap();
        let node = Node::open_dual(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Some("[::1]:0".parse().unwrap()), Identity::generate()).unwrap();
        let cfg = DetectConfig { observers: vec![srv6.primary(), srv.primary()], ..DetectConfig::default() };
        let got = crate::runtime::handle().block_on(detect(node.clone(), cfg)).unwrap();
        assert_eq!(got.profile.public_addr, node.local_addr().unwrap());
        assert_eq!(node.public6(), node.local_addr6().unwrap());
        // Without IPv6 observers nothing is detected there.
        let v4 = Node::open_dual(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Some("[::1]:0".parse().unwrap()), Identity::generate()).unwrap();
        let cfg = DetectConfig { observers: vec![srv.primary()], ..DetectConfig::default() };
        crate::runtime::handle().block_on(detect(v4.clone(), cfg)).unwrap();
        assert_eq!(v4.public6(), None);
    }
}
