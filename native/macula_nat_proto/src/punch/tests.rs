use super::sim::*;
use super::*;
use crate::detect::sim::XorShift;
use crate::nat::{Filtering, NatType};
use crate::port_predictor::contiguity_window;
use crate::strategy::{aim, choose, Aim, PeerNat, Side, Strategy};

fn ty(s: &str) -> NatType {
    NatType::all().find(|t| t.to_string() == s).unwrap_or_else(|| panic!("no type {s}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn cfg(role: Role, targets: Vec<(usize, SocketAddr)>) -> PunchConfig {
    let (us, peer) = if role == Role::Initiator { (ID_A, ID_B) } else { (ID_B, ID_A) };
    PunchConfig::new(role, us, peer, session(1), targets, Duration::from_millis(100))
}

/// A request as the peer (`sender`) would send it.
fn request(tid: TransactionId, session: SessionId, sender: NodeId, flags: u8) -> Vec<u8> {
    Message::binding_request(tid)
        .with(Attribute::PunchToken(PunchToken { session, sender, flags }))
        .with_fingerprint()
        .encode()
}

fn decode(t: &Transmit) -> (Message, PunchToken) {
    let m = Message::decode(&t.payload).unwrap();
    let tok = m.punch_token().unwrap();
    (m, tok)
}

// --- the machine alone -----------------------------------------------------

#[test]
fn initiator_waits_half_the_rendezvous_rtt_responder_starts_at_once() {
    let t0 = Instant::now();
    let target = vec![(0, addr("198.18.0.1:4000"))];
    let mut i = Punch::new(cfg(Role::Initiator, target.clone()), t0);
    assert!(i.poll_transmit(t0).is_none());
    assert_eq!(i.poll_timeout(), Some(t0 + Duration::from_millis(50)));
    assert!(i.poll_transmit(t0 + Duration::from_millis(49)).is_none());
    let t = i.poll_transmit(t0 + Duration::from_millis(50)).unwrap();
    assert_eq!((t.socket, t.dst), (0, addr("198.18.0.1:4000")));
    let (m, tok) = decode(&t);
    assert_eq!(m.class, Class::Request);
    assert!(m.fingerprint);
    assert_eq!(tok, PunchToken { session: session(1), sender: ID_A, flags: 0 });

    let mut r = Punch::new(cfg(Role::Responder, target), t0);
    assert!(r.poll_transmit(t0).is_some());
}

/// Happy eyeballs: with both families among the targets, IPv4 paths start
/// `ipv4_lag` after IPv6 ones; with one family there is nothing to wait for.
#[test]
fn ipv4_paths_start_behind_ipv6_ones() {
    let t0 = Instant::now();
    let lag = Duration::from_millis(100);
    let (v4, v6) = (addr("198.18.0.1:4000"), addr("[2001:db8::1]:4000"));
    let mut c = cfg(Role::Responder, vec![(0, v4), (0, v6)]);
    c.ipv4_lag = lag;
    let mut r = Punch::new(c.clone(), t0);
    let mut sent = Vec::new();
    for ms in 0..=100u64 {
        let now = t0 + Duration::from_millis(ms);
        while let Some(t) = r.poll_transmit(now) {
            sent.push((ms, t.dst));
        }
    }
    assert_eq!(sent.first(), Some(&(0, v6)));
    assert_eq!(sent.iter().find(|(_, d)| *d == v4), Some(&(100, v4)), "{sent:?}");
    c.targets = vec![(0, v4)];
    assert_eq!(Punch::new(c, t0).poll_transmit(t0).map(|t| t.dst), Some(v4));
}

#[test]
fn retries_on_schedule_then_times_out_once() {
    let t0 = Instant::now();
    let mut c = cfg(Role::Responder, vec![(0, addr("198.18.0.1:4000"))]);
    c.max_attempts = 3;
    c.retry_interval = Duration::from_millis(40);
    c.timeout = Duration::from_millis(500);
    let mut p = Punch::new(c, t0);
    let mut sends = Vec::new();
    let mut now = t0;
    while !p.is_finished() {
        while let Some(t) = p.poll_transmit(now) {
            sends.push((now - t0, decode(&t).0.transaction_id));
        }
        now = p.poll_timeout().unwrap().max(now);
        p.handle_timeout(now);
    }
    let ms: Vec<u128> = sends.iter().map(|(d, _)| d.as_millis()).collect();
    assert_eq!(ms, vec![0, 40, 80]);
    // one transaction per transmission, so an answer names the one it answers
    assert!(sends[0].1 != sends[1].1 && sends[1].1 != sends[2].1 && sends[0].1 != sends[2].1);
    assert_eq!(now - t0, Duration::from_millis(500));
    assert_eq!(p.poll_result(), Some(Err(PunchError::Timeout)));
    assert_eq!(p.poll_result(), None);
    assert_eq!(p.poll_timeout(), None);
    assert!(p.poll_transmit(now).is_none());
}

#[test]
fn answers_requests_with_xor_mapped_address_and_own_token() {
    let t0 = Instant::now();
    let mut p = Punch::new(cfg(Role::Responder, vec![]), t0);
    let from = addr("198.18.0.7:31000");
    let tid = [5u8; 12];
    assert!(p.handle_datagram(t0, 2, from, &request(tid, session(1), ID_A, 0)));
    let t = p.poll_transmit(t0).unwrap();
    assert_eq!((t.socket, t.dst), (2, from));
    let (m, tok) = decode(&t);
    assert_eq!((m.class, m.transaction_id), (Class::SuccessResponse, tid));
    assert_eq!(m.mapped_address(), Some(from));
    assert!(m.attributes.contains(&Attribute::XorMappedAddress(from)));
    assert_eq!(tok, PunchToken { session: session(1), sender: ID_B, flags: 0 });
    assert!(m.fingerprint);
    // ... and probes the path back at once (triggered check)
    let t = p.poll_transmit(t0).unwrap();
    assert_eq!((t.socket, t.dst, decode(&t).0.class), (2, from, Class::Request));
    assert_eq!(p.stats().peer_reflexive, 1);
    // the pure answer function gives the same bytes
    let pure = answer_request(&request(tid, session(1), ID_A, 0), from, &session(1), &ID_B, &ID_A, false).unwrap();
    assert_eq!(Message::decode(&pure).unwrap().punch_token(), Some(tok));
}

#[test]
fn foreign_sessions_and_wrong_senders_are_ignored_and_counted() {
    let t0 = Instant::now();
    let mut p = Punch::new(cfg(Role::Responder, vec![]), t0);
    let from = addr("198.18.0.7:31000");
    // another session: not ours, the runtime may route it elsewhere
    assert!(!p.handle_datagram(t0, 0, from, &request([1; 12], session(2), ID_A, 0)));
    // our session, spoofed or reflected sender: ours, dropped
    assert!(p.handle_datagram(t0, 0, from, &request([1; 12], session(1), NodeId::from_bytes([0xEE; 32]), 0)));
    assert!(p.handle_datagram(t0, 0, from, &request([1; 12], session(1), ID_B, 0)));
    let s = p.stats();
    assert_eq!((s.foreign_session, s.bad_sender), (1, 2));
    assert!(p.poll_transmit(t0).is_none(), "nothing answered");
    assert_eq!(session_of(&request([1; 12], session(9), ID_A, 0)), Some(session(9)));
    assert_eq!(answer_request(&request([1; 12], session(2), ID_A, 0), from, &session(1), &ID_B, &ID_A, false), None);
    assert_eq!(answer_request(&request([1; 12], session(1), ID_B, 0), from, &session(1), &ID_B, &ID_A, false), None);
}

#[test]
fn plain_stun_and_non_stun_are_not_consumed() {
    let t0 = Instant::now();
    let mut p = Punch::new(cfg(Role::Initiator, vec![]), t0);
    let from = addr("198.18.0.7:31000");
    let plain = Message::binding_request([3; 12]).with_fingerprint().encode();
    assert!(!p.handle_datagram(t0, 0, from, &plain));
    // a token but no FINGERPRINT: not a punch packet
    let nofp = Message::binding_request([3; 12])
        .with(Attribute::PunchToken(PunchToken { session: session(1), sender: ID_B, flags: 0 }))
        .encode();
    assert!(!p.handle_datagram(t0, 0, from, &nofp));
    assert!(!p.handle_datagram(t0, 0, from, &[0xC0, 0, 0, 1, 2, 3]));
    assert!(!p.handle_datagram(t0, 0, from, &[]));
    assert_eq!(session_of(&plain), None);
    assert_eq!(p.stats(), PunchStats::default());
}

#[test]
fn arbitrary_bytes_never_panic() {
    let t0 = Instant::now();
    let mut p = Punch::new(cfg(Role::Responder, vec![(0, addr("198.18.0.1:4000"))]), t0);
    let mut r = XorShift(0x1234_5678);
    let valid = request([9; 12], session(1), ID_A, PunchToken::NOMINATE);
    for i in 0..20_000u32 {
        let mut d = if i % 3 == 0 {
            valid.clone()
        } else {
            (0..(r.next() % 120) as usize).map(|_| r.next() as u8).collect()
        };
        if !d.is_empty() && i % 3 == 0 {
            let k = (r.next() as usize) % d.len();
            d[k] ^= 1 << (r.next() % 8);
            d.truncate(d.len() - (r.next() as usize % 3).min(d.len()));
        }
        let from = SocketAddr::new(IpAddr::from([198, 18, 0, (r.next() % 4) as u8]), (r.next() % 65536) as u16);
        let now = t0 + Duration::from_micros(u64::from(i) * 50);
        p.handle_datagram(now, (r.next() % 3) as usize, from, &d);
        while p.poll_transmit(now).is_some() {}
        p.handle_timeout(now);
    }
    assert!(p.stats().peer_reflexive as usize <= MAX_PEER_REFLEXIVE);
}

#[test]
fn rate_cap_spaces_requests_but_not_answers() {
    let t0 = Instant::now();
    let targets: Vec<_> = (0..50).map(|i| (0, SocketAddr::new(IpAddr::from([198, 18, 0, 1]), 4000 + i))).collect();
    let mut c = cfg(Role::Responder, targets);
    c.rate_pps = 100;
    let mut p = Punch::new(c, t0);
    assert!(p.poll_transmit(t0).is_some());
    assert!(p.poll_transmit(t0).is_none(), "second request must wait 10 ms");
    assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_millis(10)));
    // an answer goes out regardless
    p.handle_datagram(t0, 0, addr("198.18.0.1:4000"), &request([1; 12], session(1), ID_A, 0));
    let t = p.poll_transmit(t0).unwrap();
    assert_eq!(decode(&t).0.class, Class::SuccessResponse);
    assert!(p.poll_transmit(t0 + Duration::from_millis(9)).is_none());
    assert!(p.poll_transmit(t0 + Duration::from_millis(10)).is_some());
}

/// A driver whose timer always wakes late (here 1.7 ms, like tokio's 1 ms
/// ticks on a busy core) still gets the full rate, and never more than the
/// cap in any second.
#[test]
fn late_wakeups_do_not_lower_the_rate() {
    let t0 = Instant::now();
    let targets: Vec<_> = (0..2000).map(|i| (0, SocketAddr::new(IpAddr::from([198, 18, 0, 1]), 2000 + i))).collect();
    let mut c = cfg(Role::Responder, targets);
    c.rate_pps = 200;
    c.max_attempts = 1;
    c.timeout = Duration::from_secs(60);
    let mut p = Punch::new(c, t0);
    let late = Duration::from_micros(1700);
    let mut now = t0;
    let mut sent = Vec::new();
    while now < t0 + Duration::from_secs(5) {
        while let Some(t) = p.poll_transmit(now) {
            assert_eq!(decode(&t).0.class, Class::Request);
            sent.push(Sent { host: 0, at: now - t0, request: true });
        }
        now = p.poll_timeout().unwrap().max(now) + late;
    }
    let per_s = sent.len() as f64 / 5.0;
    assert!((195.0..=201.0).contains(&per_s), "{per_s} requests per second");
    assert!(max_requests_per_second(&sent, 0) <= 201);
}

#[test]
fn birthday_probes_are_distinct_ports_of_the_peer_ip_after_the_delay() {
    let t0 = Instant::now();
    let mut c = cfg(Role::Responder, vec![]);
    let ip: IpAddr = "198.18.0.9".parse().unwrap();
    c.birthday = Some(BirthdayProbe { socket: 1, peer_ip: ip, probes: 300, start_after: Duration::from_millis(200) });
    c.rate_pps = 1000;
    c.timeout = Duration::from_secs(5);
    let mut p = Punch::new(c, t0);
    assert!(p.poll_transmit(t0).is_none());
    assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_millis(200)));
    let mut now = t0 + Duration::from_millis(200);
    let mut ports = std::collections::HashSet::new();
    while !p.is_finished() {
        while let Some(t) = p.poll_transmit(now) {
            assert_eq!((t.socket, t.dst.ip()), (1, ip));
            assert!(ports.insert(t.dst.port()), "probe port repeated");
        }
        now = p.poll_timeout().unwrap().max(now);
        p.handle_timeout(now);
    }
    assert_eq!(ports.len(), 300);
    assert_eq!(p.stats().probes_sent, 300);
}

#[test]
fn asking_for_more_probes_than_ports_stops_at_the_whole_range() {
    let t0 = Instant::now();
    let mut c = cfg(Role::Responder, vec![(0, addr("198.18.0.9:7000"))]);
    c.birthday = Some(BirthdayProbe { socket: 0, peer_ip: "198.18.0.9".parse().unwrap(), probes: u32::MAX, start_after: Duration::ZERO });
    c.rate_pps = u32::MAX;
    c.max_attempts = 1;
    c.timeout = Duration::from_secs(3600);
    let mut p = Punch::new(c, t0);
    let mut now = t0;
    let mut polls = 0u32;
    while let Some(t) = p.poll_timeout().filter(|t| *t < t0 + Duration::from_secs(3600)) {
        now = t.max(now);
        while p.poll_transmit(now).is_some() {}
        polls += 1;
        assert!(polls < 200_000, "no progress");
    }
    // the planned path's port is skipped, every other port probed once
    assert_eq!(p.stats().probes_sent, u64::from(crate::port_predictor::PORT_RANGE) - 1);
    assert_eq!(p.stats().requests_sent, u64::from(crate::port_predictor::PORT_RANGE));
}

// --- two machines through simulated NATs ------------------------------------

fn pair(a: &str, b: &str) -> [PeerNat; 2] {
    [behind(ty(a)), behind(ty(b))]
}

fn assert_punched(o: &Outcome, what: &str) {
    assert!(o.agreed(), "{what}: {:?} / {:?} stats {:?}", o.results[0], o.results[1], o.stats);
}

#[test]
fn simple_punch_both_ei_mapping_pd_filtering() {
    let peers = pair("EI-PP-PD", "EI-RD-PD");
    let s = choose(&peers[0], &peers[1]);
    assert_eq!(s, Strategy::SimplePunch);
    let o = punch_pair(s, peers, 30, 0, 1, 0.95);
    assert_punched(&o, "simple");
    // start (rtt/2 = 60 ms) + a little over one round trip
    assert!(o.done[0] < Duration::from_millis(400) && o.done[1] < Duration::from_millis(400), "{:?}", o.done);
    let a = o.ok(0).unwrap();
    assert_eq!(a.rtt, Duration::from_millis(60));
}

#[test]
fn contiguity_prediction_with_delta() {
    for (a, da, b, db) in [("PD-PC-PD", 2, "EI-PP-PD", 1), ("PD-PC-PD", -1, "PD-PC-PD", 3), ("HD-PC-PD", 5, "PD-PC-HD", 1)] {
        let peers = [PeerNat { port_delta: Some(da), ..behind(ty(a)) }, PeerNat { port_delta: Some(db), ..behind(ty(b)) }];
        let s = choose(&peers[0], &peers[1]);
        assert_eq!(s, Strategy::PredictContiguity, "{a} vs {b}");
        let o = punch_pair(s, peers, 25, 0, 3, 0.95);
        assert_punched(&o, &format!("{a}/{da} vs {b}/{db}"));
    }
}

#[test]
fn preservation_prediction() {
    for (a, b) in [("HD-PP-PD", "PD-PP-PD"), ("PD-PP-PD", "EI-PP-PD"), ("PD-PP-PD", "PD-PC-PD")] {
        let peers = pair(a, b);
        let s = choose(&peers[0], &peers[1]);
        assert!(matches!(s, Strategy::PredictPreservation | Strategy::PredictContiguity), "{a} vs {b}: {s}");
        let o = punch_pair(s, peers, 25, 0, 5, 0.95);
        assert_punched(&o, &format!("{a} vs {b}"));
    }
}

#[test]
fn connection_reversal_learns_the_random_port() {
    for (a, b) in [("PD-RD-PD", "EI-PP-HD"), ("HD-PC-HD", "PD-RD-PD"), ("PD-PC-HD", "HD-RD-PD"), ("PD-PP-EI", "HD-RD-HD")] {
        let peers = pair(a, b);
        let s = choose(&peers[0], &peers[1]);
        assert!(matches!(s, Strategy::ConnectionReversal { .. }), "{a} vs {b}: {s}");
        let o = punch_pair(s, peers, 25, 0, 6, 0.95);
        assert_punched(&o, &format!("{a} vs {b}"));
    }
}

/// Requests per sliding second never exceed the cap (+1 for the window edge).
fn max_requests_per_second(sent: &[Sent], host: usize) -> usize {
    let times: Vec<Duration> = sent.iter().filter(|s| s.host == host && s.request).map(|s| s.at).collect();
    let mut best = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while times[i] - times[j] >= Duration::from_secs(1) {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

#[test]
fn birthday_probing_succeeds_with_high_probability_within_the_rate_cap() {
    let limits = birthday_limits();
    let runs = 40;
    let mut wins = 0;
    for seed in 0..runs {
        // alternate which side is hard, and the easy side's filtering
        let peers = if seed % 2 == 0 { pair("PD-RD-PD", "EI-PP-PD") } else { pair("HD-PP-PD", "HD-RD-EI") };
        let s = choose(&peers[0], &peers[1]);
        assert!(matches!(s, Strategy::BirthdayProbing { .. }));
        let o = punch_pair(s, peers, 20, 0, 1000 + seed, 0.95);
        for h in 0..2 {
            let rate = max_requests_per_second(&o.sent, h);
            assert!(rate <= limits.rate_pps as usize + 1, "seed {seed} host {h}: {rate} requests in a second");
            assert!(o.done[h] <= limits.max_duration + Duration::from_secs(2), "seed {seed}: {:?}", o.done);
        }
        if o.agreed() {
            wins += 1;
        } else {
            assert!(o.results.iter().all(|r| *r == Some(Err(PunchError::Timeout))), "seed {seed}: {:?}", o.results);
        }
    }
    // plan: p >= 0.95; 34 of 40 is about three standard deviations below
    assert!(wins >= 34, "{wins}/{runs} birthday punches succeeded");
}

#[test]
fn rd_vs_rd_times_out_within_the_deadline() {
    for (a, b) in [("PD-RD-PD", "PD-RD-PD"), ("HD-RD-PD", "PD-RD-HD")] {
        let peers = pair(a, b);
        assert_eq!(choose(&peers[0], &peers[1]), Strategy::Relay);
        // what a naive runtime would try: each other's reflexive address
        let o = punch_pair(Strategy::Relay, peers, 25, 0, 9, 0.95);
        assert_eq!(o.results, [Some(Err(PunchError::Timeout)), Some(Err(PunchError::Timeout))], "{a} vs {b}");
        let rtt = Duration::from_millis(100);
        let timeout = PunchConfig::new(Role::Initiator, ID_A, ID_B, session(0), vec![], rtt).timeout;
        for h in 0..2 {
            assert!(o.done[h] <= rtt + timeout, "{:?}", o.done);
        }
    }
}

#[test]
fn lost_first_packets_are_recovered_by_retries() {
    for drop in [1, 3, 6] {
        let peers = pair("EI-PP-PD", "EI-PC-PD");
        let s = choose(&peers[0], &peers[1]);
        let rtt = Duration::from_millis(100);
        let Planned { hosts, cfgs } = plan(s, peers, rtt, 11, 0.95);
        let mut net = Net::new(hosts, 25, 0, 11);
        net.drop_first = [drop, drop];
        let t0 = Instant::now();
        let [ca, cb] = cfgs;
        let mut m = [Punch::new(ca, t0), Punch::new(cb, t0 + rtt / 2)];
        let o = net.run(&mut m, t0);
        assert_punched(&o, &format!("drop {drop}"));
        assert!(o.stats[0].requests_sent > drop as u64);
    }
}

#[test]
fn random_loss_is_survived() {
    let mut wins = 0;
    for seed in 0..20 {
        let peers = pair("PD-PC-PD", "HD-PP-HD");
        let s = choose(&peers[0], &peers[1]);
        let o = punch_pair(s, peers, 25, 200, 500 + seed, 0.95);
        wins += usize::from(o.agreed());
    }
    assert!(wins >= 18, "{wins}/20 with 20% loss");
}

#[test]
fn several_working_paths_end_on_the_same_one() {
    // two public hosts, each punching from two sockets to both of the
    // other's: four paths work, both sides must pick the same
    let peers = [public(Filtering::Pd), public(Filtering::Pd)];
    let rtt = Duration::from_millis(80);
    let Planned { mut hosts, cfgs } = plan(Strategy::SimplePunch, peers, rtt, 21, 0.95);
    let second = [hosts[0].add_socket(6000), hosts[1].add_socket(6000)];
    for h in &mut hosts {
        let last = h.locals.len() - 1;
        let l = h.locals[last];
        h.nat.outbound(l, RENDEZVOUS.parse().unwrap());
    }
    let [mut ca, mut cb] = cfgs;
    let a_addrs = [hosts[0].locals[0], hosts[0].locals[second[0]]];
    let b_addrs = [hosts[1].locals[0], hosts[1].locals[second[1]]];
    ca.targets = [0, second[0]].iter().flat_map(|s| b_addrs.iter().map(move |d| (*s, *d))).collect();
    cb.targets = [0, second[1]].iter().flat_map(|s| a_addrs.iter().map(move |d| (*s, *d))).collect();
    let mut net = Net::new(hosts, 20, 0, 21);
    let t0 = Instant::now();
    let mut m = [Punch::new(ca, t0), Punch::new(cb, t0 + rtt / 2)];
    let o = net.run(&mut m, t0);
    assert_punched(&o, "four paths");
}

/// Connection reversal the way the runtime runs it (a QUIC dial, not the
/// punch machine), through the simulated NATs: the listener (on its fresh
/// socket when its port is preserved) sends one packet towards the dialer's
/// reflexive address; the dialer sends to the ports the listener's answer
/// may come from (a contiguous listener's window, a PD-mapping preserving
/// listener's answer socket), then dials the most likely target; the
/// listener answers to wherever the dial came from, from its answer socket
/// if it has one (the split path). With PD mapping on the listener the
/// answer comes from another port of the listener's IP, which the dialer
/// follows (the runtime aliases it); otherwise it must come from the
/// dialled address. Two full exchanges must get through.
fn reversal_connects(dialer: &PeerNat, listener: &PeerNat) -> bool {
    let (mut h, mut l) = (Host::new(0, dialer, 11), Host::new(1, listener, 12));
    let (h_refl, l_refl) = (h.register(), l.register());
    let preserved = aim(listener) == Aim::Preserved;
    let follow = crate::strategy::answers_from_new_port(listener);
    let l_sock = if preserved { l.add_socket(40_000) } else { 0 };
    let l_answer = if preserved && follow { l.add_socket(40_010) } else { l_sock };
    l.nat.outbound(l.locals[l_sock], h_refl);
    let l_ip = l.public_ip();
    let tgts: Vec<SocketAddr> = match aim(listener) {
        Aim::Reflexive => vec![l_refl],
        Aim::Preserved => vec![SocketAddr::new(l_ip, l.locals[l_sock].port()), SocketAddr::new(l_ip, l.locals[l_answer].port())],
        Aim::Contiguous(d) => contiguity_window(l_refl.port(), d, 8).into_iter().map(|p| SocketAddr::new(l_ip, p)).collect(),
        // Its rendezvous mapping: only an EI filter admits the dial there.
        Aim::Unpredictable => vec![l_refl],
    };
    if follow {
        for t in tgts[1..].iter().filter(|t| **t != tgts[0]) {
            h.nat.outbound(h.locals[0], *t);
        }
    }
    let target = tgts[0];
    let listening = [l.locals[l_sock], l.locals[l_answer]];
    (0..2).all(|_| {
        let h_pub = h.nat.outbound(h.locals[0], target);
        if !l.nat.inbound(h_pub, target).is_some_and(|s| listening.contains(&s)) {
            return false;
        }
        let answer = l.nat.outbound(l.locals[l_answer], h_pub);
        let from_ok = if follow { answer.ip() == l_ip } else { answer == target };
        from_ok && h.nat.inbound(answer, h_pub) == Some(h.locals[0])
    })
}

/// Every pair the strategy table does not relay really punches through the
/// simulated NATs with the planned configuration; birthday pairs get up to
/// three attempts (the runtime retries them too); connection reversals are
/// checked as the runtime dials them ([`reversal_connects`]).
#[test]
fn every_non_relay_pair_of_the_table_punches_in_simulation() {
    let mut peers: Vec<PeerNat> = NatType::all().map(behind).collect();
    peers.extend(Filtering::ALL.into_iter().map(public));
    let mut failures = Vec::new();
    let mut tried = 0;
    for (i, a) in peers.iter().enumerate() {
        for b in &peers[i..] {
            let s = choose(a, b);
            if s.is_relay() {
                continue;
            }
            tried += 1;
            let attempts = if matches!(s, Strategy::BirthdayProbing { .. }) { 3 } else { 1 };
            let ok = match s {
                Strategy::ConnectionReversal { dialer: Side::A } => reversal_connects(a, b),
                Strategy::ConnectionReversal { dialer: Side::B } => reversal_connects(b, a),
                _ => (0..attempts).any(|k| punch_pair(s, [*a, *b], 15, 0, 77 + tried * 13 + k, 0.95).agreed()),
            };
            if !ok {
                failures.push(format!("{} vs {}: {s}", label(a), label(b)));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {tried} failed: {failures:#?}", failures.len());
    assert_eq!(tried, 342 + 3 * 27 + 6 - count_relay_public());
}

fn label(p: &PeerNat) -> String {
    if p.public {
        format!("public/{:?}", p.nat.filtering)
    } else {
        p.nat.to_string()
    }
}

/// Pairs involving a public host that the table relays (none expected).
fn count_relay_public() -> u64 {
    let mut peers: Vec<PeerNat> = NatType::all().map(behind).collect();
    peers.extend(Filtering::ALL.into_iter().map(public));
    let mut n = 0;
    for (i, a) in peers.iter().enumerate() {
        for b in &peers[i..] {
            if (a.public || b.public) && choose(a, b).is_relay() {
                n += 1;
            }
        }
    }
    n
}

/// No relay cell connects in simulation, whichever way a runtime could try:
/// a simultaneous open to the reflexive addresses, either side dialing while
/// the other primes, or a connection reversal either way (which connects
/// the seven random-random pairs the table dials, see `strategy`).
#[test]
fn relay_cells_do_not_connect_in_simulation() {
    let mut peers: Vec<PeerNat> = NatType::all().map(behind).collect();
    peers.extend(Filtering::ALL.into_iter().map(public));
    let mut relays = 0;
    for (i, a) in peers.iter().enumerate() {
        for b in &peers[i..] {
            if !choose(a, b).is_relay() {
                continue;
            }
            relays += 1;
            // what a runtime could try: simultaneous open to the reflexive
            // addresses, or either side dialing while the other primes
            let tries = [Strategy::Relay, Strategy::ConnectionReversal { dialer: Side::A }, Strategy::ConnectionReversal { dialer: Side::B }];
            let punched = tries.iter().any(|s| punch_pair(*s, [*a, *b], 15, 0, 5, 0.95).agreed())
                || reversal_connects(a, b)
                || reversal_connects(b, a);
            assert!(!punched, "{} vs {}", label(a), label(b));
        }
    }
    assert_eq!(relays, 36);
}

// --- only where the peer really is (Verify) ---------------------------------

/// Everything the machine sends until `end`, as (offset, dst, class).
fn run_alone(p: &mut Punch, t0: Instant, end: Duration) -> Vec<(Duration, SocketAddr, Class)> {
    let mut out = Vec::new();
    let mut now = t0;
    while now - t0 < end {
        while let Some(t) = p.poll_transmit(now) {
            out.push((now - t0, t.dst, decode(&t).0.class));
        }
        let Some(next) = p.poll_timeout() else { break };
        now = next.max(now + Duration::from_millis(1));
        p.handle_timeout(now);
    }
    out
}

#[test]
fn an_unverified_target_gets_one_request_a_known_one_its_plan() {
    let t0 = Instant::now();
    let (known, claimed) = (addr("198.18.0.1:4000"), addr("198.18.0.9:5000"));
    let mut c = cfg(Role::Responder, vec![(0, known), (0, claimed)]);
    c.max_attempts = 255;
    c.timeout = Duration::from_secs(60);
    c.verify = Some(Verify::known(vec![known]));
    let mut p = Punch::new(c, t0);
    let sent = run_alone(&mut p, t0, Duration::from_secs(70));
    let to = |a| sent.iter().filter(|(_, d, _)| *d == a).count();
    assert_eq!((to(known), to(claimed)), (255, UNVERIFIED_REQUESTS as usize));
    assert_eq!(p.stats().unverified_withheld, 254);
}

#[test]
fn an_unverified_target_that_answers_gets_the_rest_of_its_plan() {
    let t0 = Instant::now();
    let claimed = addr("198.18.0.9:5000");
    let mut c = cfg(Role::Responder, vec![(0, claimed)]);
    c.max_attempts = 5;
    c.verify = Some(Verify::known(vec![]));
    let mut p = Punch::new(c, t0);
    let first = p.poll_transmit(t0).unwrap();
    assert!(p.poll_transmit(t0 + Duration::from_secs(1)).is_none(), "nothing more before it answers");
    // the peer answers from there: verified
    let (m, _) = decode(&first);
    let answer = answer_bytes(m.transaction_id, addr("198.18.0.2:7000"), PunchToken { session: session(1), sender: ID_A, flags: 0 });
    let t1 = t0 + Duration::from_millis(60);
    assert!(p.handle_datagram(t1, 0, claimed, &answer));
    let later = run_alone(&mut p, t1, Duration::from_secs(2));
    // the responder keeps asking (keep-alives) until nominated
    assert!(later.iter().filter(|(_, d, c)| *d == claimed && *c == Class::Request).count() >= 2, "{later:?}");
}

#[test]
fn requests_from_an_unverified_address_get_one_answer_and_one_check_each() {
    let t0 = Instant::now();
    let mut c = cfg(Role::Responder, vec![]);
    c.verify = Some(Verify::known(vec![addr("198.18.0.1:4000")]));
    c.timeout = Duration::from_secs(30);
    let mut p = Punch::new(c, t0);
    let spoofed = addr("198.18.0.66:53");
    let (mut bytes_in, mut bytes_out) = (0usize, 0usize);
    let mut now = t0;
    for k in 0..20u8 {
        let req = request([k; 12], session(1), ID_A, 0);
        bytes_in += req.len();
        p.handle_datagram(now, 0, spoofed, &req);
        while let Some(t) = p.poll_transmit(now) {
            assert_eq!(t.dst, spoofed);
            bytes_out += t.payload.len();
        }
        now += Duration::from_millis(100);
        p.handle_timeout(now);
    }
    while let Some(t) = p.poll_transmit(now + Duration::from_secs(10)) {
        bytes_out += t.payload.len();
    }
    // an answer (request + XOR-MAPPED-ADDRESS) and one triggered check per
    // request received: ICE's exchange, never the plan's retransmissions
    assert!(bytes_out <= bytes_in * 23 / 10, "{bytes_out} out for {bytes_in} in");
}
