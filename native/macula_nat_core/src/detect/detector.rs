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

pub async fn detect(node: Arc<Node>, mut cfg: DetectConfig) -> Result<Detected, DetectFailure> {
    let started = Instant::now();
    let bound = node.local_addr()?;
    // Detection runs on the node's first socket: observers of its family.
    // A dual-stack node's IPv6 side has no NAT to detect (a stateful
    // firewall at most); its global addresses are its candidates.
    cfg.observers.retain(|o| o.is_ipv4() == bound.is_ipv4());
    let Some(first) = cfg.observers.first().copied() else {
        return Err(DetectFailure::Detect(DetectError::NoObservers));
    };
    let local = SocketAddr::new(source_ip_towards(first, bound.ip()), bound.port());
    let mut subscription = node.subscribe_stun();
    let primary = node.socket()?;
    cfg.opened.extend(lock(node.detect_memory()).opened(Instant::now()));
    let filter_socket = cfg.filter_socket;
    // Beside the main detection, on a socket of its own (see `hairpin`).
    let hairpin = Joinable(Some(tokio::spawn(super::hairpin::hairpins(first, bound.ip()))));
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
        memory.remember(d.primary_destinations(), Instant::now());
        let mut profile = result.map_err(DetectFailure::Detect)?;
        memory.settle_filtering(&mut profile, d.filtering_measured());
        profile
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
}
