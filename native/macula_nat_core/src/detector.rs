//! Runs a sans-IO [`Detection`] on the node's own UDP socket: every mapping
//! and filtering probe leaves from the socket that will later punch and
//! carry QUIC. Extra probe sockets are opened only to learn the allocation
//! policy from fresh mappings, and closed when detection ends.

use crate::{Error, Node};
use macula_nat_proto::detect::{DetectConfig, DetectError, Detection, SocketId};
use macula_nat_proto::nat::{Filtering, NatProfile};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How long after a detection its probes' destinations are assumed to be
/// still open in the NAT's filter. RFC 4787 (REQ-5) wants mappings to live
/// at least 2 minutes and recommends 5; twice that errs on the safe side,
/// where a re-detection merely keeps the last measured filtering.
const OPENED_FOR: Duration = Duration::from_secs(600);

/// What a node's detections leave for the next one on the same socket. The
/// first detection's tests II-IV open the socket's filter towards the
/// observer's alternate addresses; within the NAT's timeout a second one
/// would see its filtering tests answered whatever the filtering (see
/// [`DetectConfig::opened`]). So the sans-IO layer is told what was
/// opened, and when it cannot measure, the last measured verdict behind
/// the same public IP stands (if the new evidence allows it).
#[derive(Debug, Default)]
pub struct DetectMemory {
    /// Destinations the node socket sent probes to, with the last time.
    opened: Vec<(SocketAddr, Instant)>,
    /// Last filtering measured on clean evidence, and behind which public IP.
    measured: Option<(IpAddr, Filtering)>,
}

impl DetectMemory {
    fn opened(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.opened.retain(|&(_, at)| now.saturating_duration_since(at) < OPENED_FOR);
        self.opened.iter().map(|&(a, _)| a).collect()
    }

    fn remember(&mut self, sent: Vec<SocketAddr>, now: Instant) {
        self.opened.retain(|(a, _)| !sent.contains(a));
        self.opened.extend(sent.into_iter().map(|a| (a, now)));
    }

    /// `profile.filtering` is a conservative bound unless `measured`: keep
    /// the last measured verdict when it is at least as strict as that bound
    /// allows (a stricter bound is itself evidence: silence is never faked).
    fn settle_filtering(&mut self, profile: &mut NatProfile, measured: bool) {
        let ip = profile.public_addr.ip();
        match self.measured {
            _ if measured => self.measured = Some((ip, profile.filtering)),
            Some((at, f)) if at == ip && f <= profile.filtering => profile.filtering = f,
            _ => {}
        }
    }
}

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
    let Some(first) = cfg.observers.first().copied() else {
        return Err(DetectFailure::Detect(DetectError::NoObservers));
    };
    let local = SocketAddr::new(source_ip_towards(first, bound.ip()), bound.port());
    let mut subscription = node.subscribe_stun();
    let primary = node.socket()?;
    let seed: u64 = rand::random();
    cfg.opened.extend(node.detect_memory().lock().map(|mut m| m.opened(Instant::now())).unwrap_or_default());
    let mut d = Detection::new(cfg, local, Instant::now(), seed);

    // Probe sockets, each forwarding what it receives into one channel.
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<(usize, SocketAddr, Vec<u8>)>();
    let mut probes: Vec<Arc<UdpSocket>> = Vec::new();
    let mut readers = Vec::new();
    for n in 0..d.probe_sockets_needed() {
        let sock = Arc::new(UdpSocket::bind(SocketAddr::new(bound.ip(), 0)).await?);
        let port = sock.local_addr()?.port();
        d.set_probe_local_addr(n, SocketAddr::new(local.ip(), port));
        let (s, tx) = (sock.clone(), probe_tx.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((len, from)) = s.recv_from(&mut buf).await {
                if tx.send((n, from, buf[..len].to_vec())).is_err() {
                    return;
                }
            }
        }));
        probes.push(sock);
    }
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
            Some((n, from, data)) = probe_rx.recv() => {
                d.handle_datagram(SocketId::Probe(n), from, &data, Instant::now());
            }
            _ = tokio::time::sleep_until(deadline.into()) => d.handle_timeout(Instant::now()),
        }
    };
    // Sent is sent, whatever the verdict: remember it even on failure.
    let mut memory = node.detect_memory().lock().unwrap_or_else(|p| p.into_inner());
    memory.remember(d.primary_destinations(), Instant::now());
    let mut profile = result.map_err(DetectFailure::Detect)?;
    memory.settle_filtering(&mut profile, d.filtering_measured());
    drop(memory);
    let detected_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Detected { profile, detected_at, local_addr: local, elapsed: started.elapsed() })
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

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
    use crate::observer_server::ObserverServer;
    use crate::{Identity, NodeConfig};
    use macula_nat_proto::nat::{Allocation, Filtering, Mapping};

    fn profile(ip: &str, filtering: Filtering) -> NatProfile {
        NatProfile {
            mapping: Mapping::Ei,
            filtering,
            allocation: Allocation::Pp,
            public_addr: SocketAddr::new(ip.parse().unwrap(), 4000),
            port_delta: None,
            confidence: macula_nat_proto::nat::Confidence::Medium,
            mapping_lifetime: None,
            hairpin: None,
            no_nat: false,
        }
    }

    #[test]
    fn memory_keeps_the_last_measured_filtering_where_the_evidence_allows() {
        let mut m = DetectMemory::default();
        // Nothing measured yet: a bound stays a bound.
        let mut p = profile("203.0.113.1", Filtering::Pd);
        m.settle_filtering(&mut p, false);
        assert_eq!(p.filtering, Filtering::Pd);
        // Measured EI; a later ambiguous run (bound PD or HD) keeps EI.
        m.settle_filtering(&mut profile("203.0.113.1", Filtering::Ei), true);
        for bound in [Filtering::Pd, Filtering::Hd, Filtering::Ei] {
            let mut p = profile("203.0.113.1", bound);
            m.settle_filtering(&mut p, false);
            assert_eq!(p.filtering, Filtering::Ei, "bound {bound:?}");
        }
        // Behind another public IP the old verdict means nothing.
        let mut p = profile("198.51.100.1", Filtering::Pd);
        m.settle_filtering(&mut p, false);
        assert_eq!(p.filtering, Filtering::Pd);
        // A measured PD replaces it; an HD bound (test III answered from a
        // port never opened) contradicts PD and wins.
        m.settle_filtering(&mut profile("203.0.113.1", Filtering::Pd), true);
        let mut p = profile("203.0.113.1", Filtering::Hd);
        m.settle_filtering(&mut p, false);
        assert_eq!(p.filtering, Filtering::Hd);
    }

    #[test]
    fn memory_forgets_what_was_opened_after_the_nat_would_have() {
        let mut m = DetectMemory::default();
        let t0 = Instant::now();
        let a: SocketAddr = "198.51.100.2:3479".parse().unwrap();
        let b: SocketAddr = "198.51.100.1:3479".parse().unwrap();
        m.remember(vec![a, b], t0);
        m.remember(vec![a], t0 + OPENED_FOR / 2);
        assert_eq!(m.opened(t0 + OPENED_FOR / 4).len(), 2);
        // b expired; a was sent to again halfway.
        assert_eq!(m.opened(t0 + OPENED_FOR), vec![a]);
        assert!(m.opened(t0 + OPENED_FOR * 2).is_empty());
    }

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
