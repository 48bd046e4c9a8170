use super::*;
use crate::punch::{PunchConfig, Role};
use crate::id::{NodeId, SessionId};
use crate::strategy::Dialer;
use std::time::Instant;

#[test]
fn peers_behind_one_public_address_punch_whatever_their_types() {
    // Two symmetric NATs: the table says relay; behind the same one
    // (same public IP) they punch (LAN candidates, or a hairpin).
    let mut a = contiguous_peer(0);
    a.info.allocation = Allocation::Rd;
    a.info.public_addr = Some("203.0.113.9:4000".parse().unwrap());
    let b = a.clone();
    assert_eq!(decide(&a, &b, 0, false), Strategy::Relay);
    assert!(shares_public_ip(&a, "203.0.113.9:5000".parse().unwrap()));
    assert!(!shares_public_ip(&a, "203.0.113.10:4000".parse().unwrap()));
    assert_eq!(decide(&a, &b, 0, true), Strategy::SimplePunch);
    assert_eq!(decide(&a, &b, signal::FLAG_RELAY_ONLY, true), Strategy::Relay);
    // Nodes of one host (loopback) are not behind a NAT.
    a.info.public_addr = Some("127.0.0.1:4000".parse().unwrap());
    assert!(!shares_public_ip(&a, "127.0.0.1:5000".parse().unwrap()));
}

fn contiguous_peer(alloc_base: u16) -> Profile {
    let info = PeerInfo {
        mapping: Mapping::Pd,
        filtering: Filtering::Pd,
        allocation: Allocation::Pc,
        confidence: Confidence::High,
        public_addr: None,
        port_delta: Some(2),
        no_nat: false,
        detected_at: 0,
        endpoints: Vec::new(),
        rendezvous: Vec::new(),
    };
    Profile { info, local_port: 5000, answer_port: 0, alloc_base, candidates: Vec::new(), relays: Vec::new() }
}

#[test]
fn a_contiguous_peer_is_aimed_past_its_latest_allocation() {
    let observed: SocketAddr = "203.0.113.9:20910".parse().unwrap();
    let at = |p: u16| SocketAddr::new(observed.ip(), p);
    // Measured for the session: past it, the observed address last.
    let t = targets(&contiguous_peer(20944), observed);
    let want: Vec<_> = (1..=CONTIGUITY_WINDOW as u16).map(|k| at(20944 + 2 * k)).chain([observed]).collect();
    assert_eq!(t, want);
    // Not measured: past the observed mapping.
    let t = targets(&contiguous_peer(0), observed);
    assert_eq!(t[0], at(20912));
    assert_eq!(t.len(), CONTIGUITY_WINDOW + 1);
    // The window wraps at the top of the port range.
    let t = targets(&contiguous_peer(65534), observed);
    assert_eq!(&t[..2], &[at(1024), at(1026)]);
}

/// The easy side primes the ports its machine will probe: the same
/// ports in the same order, from the same seed.
#[test]
fn primed_probe_ports_are_the_machines_probes() {
    use crate::punch::Punch;
    let seed = 0x1234_5678_9abc_def0;
    let ip: std::net::IpAddr = "203.0.113.40".parse().unwrap();
    let sched = BirthdaySchedule::standard(Duration::from_millis(50)).unwrap();
    let mut cfg = PunchConfig::new(Role::Responder, NodeId::from_bytes([1; 32]), NodeId::from_bytes([2; 32]), SessionId::from_bytes([3; 16]), Vec::new(), Duration::from_millis(50));
    cfg.seed = seed;
    sched.configure_easy(&mut cfg, 0, ip);
    let t0 = Instant::now();
    let mut p = Punch::new(cfg, t0);
    let gap = Duration::from_secs(1) / sched.rate_pps;
    let mut probed = Vec::new();
    let mut t = t0 + sched.start_after;
    while probed.len() < sched.plan.probes as usize && t < t0 + sched.timeout {
        while let Some(tx) = p.poll_transmit(t) {
            assert_eq!(tx.dst.ip(), ip);
            probed.push(tx.dst.port());
        }
        t += gap;
    }
    let primed: Vec<u16> = probe_ports(seed).collect();
    assert_eq!(primed.len(), sched.plan.probes as usize);
    assert_eq!(probed, primed);
}

#[test]
fn a_second_session_only_for_predictions_that_fit_the_timeout() {
    let t = Duration::from_secs(10);
    let punch_timeout = Duration::from_millis(2300);
    assert!(may_retry(Strategy::PredictContiguity, punch_timeout, t));
    assert!(may_retry(Strategy::PredictPreservation, punch_timeout, t));
    assert!(may_retry(Strategy::ConnectionReversal { dialer: Side::A }, punch_timeout, t));
    // A reversal whose plain-dial bound ran out after 4.3 s just fits
    // twice plus a relay into 10 s; a slower one only into a longer
    // timeout.
    let cr = Strategy::ConnectionReversal { dialer: Side::B };
    assert!(may_retry(cr, Duration::from_millis(4300), t));
    assert!(!may_retry(cr, Duration::from_millis(4600), t));
    assert!(may_retry(cr, Duration::from_millis(4600), Duration::from_secs(15)));
    // The edge: exactly twice plus the relay budget fits.
    assert!(may_retry(Strategy::PredictContiguity, (t - RELAY_BUDGET) / 2, t));
    assert!(!may_retry(Strategy::PredictContiguity, (t - RELAY_BUDGET) / 2 + Duration::from_millis(1), t));
    // Nothing predicted: a new session would not do better.
    for s in [Strategy::Direct { dialer: Dialer::A }, Strategy::SimplePunch, Strategy::BirthdayProbing { hard: Side::A }, Strategy::Relay] {
        assert!(!may_retry(s, Duration::ZERO, t), "{s}");
    }
}

#[test]
fn a_peer_s_candidates_are_kept_only_where_it_is() {
    let inside = |ip: IpAddr| matches!(ip, IpAddr::V4(v) if v.is_private() || v.is_loopback());
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    let peer_seen = a("203.0.113.5:40000");
    let claimed = vec![a("203.0.113.5:41000"), a("198.51.100.7:53"), a("192.168.1.20:4000"), a("8.8.8.8:443")];
    // Behind another NAT: only other ports of its own public IP.
    let mut c = claimed.clone();
    keep_reachable(&mut c, Some("192.0.2.1".parse().unwrap()), peer_seen, inside);
    assert_eq!(c, vec![a("203.0.113.5:41000")]);
    // Behind our NAT: its LAN addresses too, never a third party's.
    let mut c = claimed.clone();
    keep_reachable(&mut c, Some(peer_seen.ip()), peer_seen, inside);
    assert_eq!(c, vec![a("203.0.113.5:41000"), a("192.168.1.20:4000")]);
}

#[test]
fn a_peer_never_gets_more_punch_attempts_than_the_cap() {
    assert_eq!(peer_attempts(0, 10), 10);
    assert_eq!(peer_attempts(1, 10), 1);
    assert_eq!(peer_attempts(12, 10), 12);
    assert_eq!(peer_attempts(255, 10), MAX_PEER_ATTEMPTS);
    assert_eq!(peer_attempts(0, 1000), MAX_PEER_ATTEMPTS);
}
