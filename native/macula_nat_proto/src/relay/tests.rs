use super::frame;
use super::msg::{EndReason, RelayMsg, Refusal};
use super::table::*;
use crate::id::NodeId;
use crate::wire::WireError;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn all_msgs() -> Vec<RelayMsg> {
    vec![
        RelayMsg::Reserve,
        RelayMsg::Status { observed: addr("203.0.113.7:4433"), reserved: true, load_permille: 731 },
        RelayMsg::Status { observed: addr("[2001:db8::2]:9"), reserved: false, load_permille: 0 },
        RelayMsg::Open { to: NodeId::from_bytes([7; 32]), tag: 0xDEAD_BEEF },
        RelayMsg::Incoming { session: u64::MAX, from: NodeId::from_bytes([1; 32]) },
        RelayMsg::Accept { session: 42 },
        RelayMsg::Decline { session: 43 },
        RelayMsg::Opened { tag: 9, session: 44, peer: NodeId::from_bytes([2; 32]) },
        RelayMsg::Refused { tag: 10, reason: Refusal::MaxSessions },
        RelayMsg::Close { session: 45 },
        RelayMsg::Ended { session: 46, reason: EndReason::Inactive },
        RelayMsg::Ping { nonce: 1 },
        RelayMsg::Pong { nonce: u32::MAX },
    ]
}

#[test]
fn every_message_round_trips_and_every_truncation_is_refused() {
    for m in all_msgs() {
        let b = m.encode();
        assert_eq!(RelayMsg::decode(&b), Ok(m.clone()));
        for n in 0..b.len() {
            assert!(RelayMsg::decode(&b[..n]).is_err(), "{m:?} truncated to {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(RelayMsg::decode(&longer).is_err(), "{m:?} with a trailing byte");
    }
}

#[test]
fn unknown_types_and_codes_are_refused() {
    for t in (0u8..=255).filter(|t| !(0x21..=0x2C).contains(t)) {
        assert_eq!(RelayMsg::decode(&[t, 0, 0, 0, 0, 0, 0, 0, 0]), Err(WireError::BadEnum));
    }
    let mut refused = RelayMsg::Refused { tag: 1, reason: Refusal::Declined }.encode();
    *refused.last_mut().unwrap() = 99;
    assert!(RelayMsg::decode(&refused).is_err());
    let mut ended = RelayMsg::Ended { session: 1, reason: EndReason::Closed }.encode();
    *ended.last_mut().unwrap() = 0;
    assert!(RelayMsg::decode(&ended).is_err());
    let mut status = RelayMsg::Status { observed: addr("1.2.3.4:5"), reserved: true, load_permille: 1 }.encode();
    status[8] = 2; // the reserved flag
    assert!(RelayMsg::decode(&status).is_err());
}

#[test]
fn codes_and_names_are_stable_and_distinct() {
    let refusals = [
        Refusal::NoReservation,
        Refusal::MaxSessions,
        Refusal::Disabled,
        Refusal::Declined,
        Refusal::SelfSession,
        Refusal::BadRequest,
    ];
    for r in refusals {
        assert_eq!(Refusal::from_code(r.code()), Some(r));
    }
    let names: std::collections::HashSet<_> = refusals.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), refusals.len());
    assert_eq!(Refusal::MaxSessions.name(), "max_sessions");
    for e in [EndReason::Inactive, EndReason::Closed, EndReason::PeerGone, EndReason::Disabled] {
        assert_eq!(EndReason::from_code(e.code()), Some(e));
    }
}

#[test]
fn frames_carry_the_session_and_the_payload_untouched() {
    let f = frame::encode(0x0102_0304_0506_0708, b"quic bytes");
    assert_eq!(f[0], frame::TAG);
    assert_eq!(f.len(), frame::HEADER + 10);
    assert!(frame::is_frame(&f));
    assert_eq!(frame::session_of(&f), Some(0x0102_0304_0506_0708));
    assert_eq!(frame::payload(&f), Some(&b"quic bytes"[..]));
    assert!(!frame::is_frame(&f[..frame::HEADER - 1]));
    assert_eq!(frame::session_of(&f[..3]), None);
    // An empty payload is still a frame (nothing to forward, but well formed).
    assert!(frame::is_frame(&frame::encode(1, b"")));
    // Nothing else on the node socket starts with the tag: STUN has its top
    // two bits clear, our QUIC packets have the fixed bit 0x40 set.
    assert_eq!(frame::TAG & 0xC0, 0x80);
    let stun = crate::stun::Message::binding_request([3; 12]).encode();
    assert!(!frame::is_frame(&stun));
}

const A: NodeId = NodeId::from_bytes([0xA; 32]);
const B: NodeId = NodeId::from_bytes([0xB; 32]);
const C: NodeId = NodeId::from_bytes([0xC; 32]);

fn table(limits: Limits) -> RelayTable {
    let mut t = RelayTable::new(limits);
    t.connect(1, A, addr("10.0.0.1:1000"));
    t.connect(2, B, addr("10.0.0.2:2000"));
    t.connect(3, C, addr("10.0.0.3:3000"));
    t
}

fn active(t: &mut RelayTable, now: Instant) -> u64 {
    assert!(t.reserve(2));
    let p = t.open(1, &B, 77, 5, now).unwrap();
    assert_eq!(p, Pending { session: 77, b_client: 2 });
    let s = t.accept(2, 77, now).unwrap();
    assert_eq!(s, Started { session: 77, a: A, b: B, a_client: 1, tag: 5 });
    77
}

#[test]
fn only_a_reserved_node_can_be_reached() {
    let now = Instant::now();
    let mut t = table(Limits::default());
    assert_eq!(t.open(1, &B, 1, 0, now), Err(Refusal::NoReservation));
    assert_eq!(t.open(1, &NodeId::from_bytes([0xEE; 32]), 1, 0, now), Err(Refusal::NoReservation));
    assert_eq!(t.open(99, &B, 1, 0, now), Err(Refusal::BadRequest), "unknown opener");
    assert!(t.reserve(2));
    assert!(!t.reserve(99));
    assert_eq!(t.open(2, &B, 1, 0, now), Err(Refusal::SelfSession));
    assert!(t.open(1, &B, 1, 0, now).is_ok());
    assert_eq!(t.open(3, &B, 1, 0, now), Err(Refusal::BadRequest), "session id in use");
    // Frames of a pending session go nowhere.
    assert_eq!(t.forward(addr("10.0.0.1:1000"), 1, 100, now), Verdict::Drop(DropReason::NotActive));
    // Only the target accepts.
    assert_eq!(t.accept(1, 1, now), None);
    assert_eq!(t.accept(3, 1, now), None);
    assert!(t.accept(2, 1, now).is_some());
    assert_eq!(t.accept(2, 1, now), None, "accepting twice");
}

#[test]
fn frames_go_from_one_leg_to_the_other_and_nowhere_else() {
    let now = Instant::now();
    let mut t = table(Limits::default());
    let s = active(&mut t, now);
    assert_eq!(t.forward(addr("10.0.0.1:1000"), s, 1200, now), Verdict::Forward { to: addr("10.0.0.2:2000") });
    assert_eq!(t.forward(addr("10.0.0.2:2000"), s, 800, now), Verdict::Forward { to: addr("10.0.0.1:1000") });
    assert_eq!(t.forward(addr("10.0.0.3:3000"), s, 100, now), Verdict::Drop(DropReason::NotALeg));
    assert_eq!(t.forward(addr("10.0.0.1:1001"), s, 100, now), Verdict::Drop(DropReason::NotALeg));
    assert_eq!(t.forward(addr("10.0.0.1:1000"), s + 1, 100, now), Verdict::Drop(DropReason::UnknownSession));
    assert_eq!(t.session_bytes(s), Some(2000), "dropped frames are not counted");
    assert_eq!(t.dropped(DropReason::NotALeg), 2);
    assert_eq!(t.dropped(DropReason::UnknownSession), 1);
}

#[test]
fn max_sessions_refuses_the_next_open_before_the_target_hears_of_it() {
    let now = Instant::now();
    let mut t = table(Limits { max_sessions: 2, ..Limits::default() });
    assert!(t.reserve(2));
    assert!(t.reserve(3));
    assert!(t.open(1, &B, 1, 0, now).is_ok());
    assert_eq!(t.load_permille(), 500);
    assert!(t.open(1, &C, 2, 0, now).is_ok(), "pending sessions count too");
    assert_eq!(t.open(3, &B, 3, 0, now), Err(Refusal::MaxSessions));
    assert_eq!(t.load_permille(), 1000);
    let e = t.close(1, 1).unwrap();
    assert_eq!((e.reason, e.was_active), (EndReason::Closed, false));
    assert!(t.open(3, &B, 3, 0, now).is_ok(), "a slot is free again");
}

#[test]
fn decline_refuses_the_opener_and_frees_the_slot() {
    let now = Instant::now();
    let mut t = table(Limits { max_sessions: 1, ..Limits::default() });
    assert!(t.reserve(2));
    t.open(1, &B, 9, 33, now).unwrap();
    assert_eq!(t.decline(3, 9), None, "not the target");
    assert_eq!(t.decline(2, 9), Some((1, 33)));
    assert_eq!(t.sessions(), 0);
    assert!(t.open(1, &B, 10, 0, now).is_ok());
}

#[test]
fn a_departed_client_takes_its_reservation_and_sessions_along() {
    let now = Instant::now();
    let mut t = table(Limits::default());
    let s = active(&mut t, now);
    t.forward(addr("10.0.0.1:1000"), s, 500, now);
    let ended = t.disconnect(2);
    assert_eq!(ended.len(), 1);
    assert_eq!((ended[0].a, ended[0].b, ended[0].bytes, ended[0].reason), (A, B, 500, EndReason::PeerGone));
    assert!(ended[0].was_active);
    assert!(!t.is_reserved(&B));
    assert_eq!(t.open(1, &B, 2, 0, now), Err(Refusal::NoReservation));
    assert!(t.disconnect(2).is_empty(), "twice is harmless");
}

#[test]
fn a_newer_reservation_wins_and_the_old_connection_leaving_keeps_it() {
    let now = Instant::now();
    let mut t = table(Limits::default());
    assert!(t.reserve(2));
    t.connect(4, B, addr("10.0.0.2:2001")); // B reconnected from a new mapping
    assert!(t.reserve(4));
    t.disconnect(2);
    assert!(t.is_reserved(&B));
    let p = t.open(1, &B, 5, 0, now).unwrap();
    assert_eq!(p.b_client, 4);
    t.accept(4, 5, now).unwrap();
    assert_eq!(t.legs(5), Some((addr("10.0.0.1:1000"), addr("10.0.0.2:2001"))));
}

#[test]
fn inactive_sessions_end_after_the_timeout_and_traffic_keeps_them() {
    let t0 = Instant::now();
    let mut t = table(Limits { session_timeout: Duration::from_secs(30), ..Limits::default() });
    let s = active(&mut t, t0);
    assert!(t.sweep(t0 + Duration::from_secs(29)).is_empty());
    t.forward(addr("10.0.0.2:2000"), s, 10, t0 + Duration::from_secs(29));
    assert!(t.sweep(t0 + Duration::from_secs(58)).is_empty(), "traffic renewed it");
    let e = t.sweep(t0 + Duration::from_secs(59));
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].reason, e[0].bytes), (EndReason::Inactive, 10));
}

#[test]
fn pending_sessions_expire() {
    let t0 = Instant::now();
    let mut t = table(Limits::default());
    assert!(t.reserve(2));
    t.open(1, &B, 3, 8, t0).unwrap();
    assert!(t.sweep(t0 + PENDING_TIMEOUT - Duration::from_millis(1)).is_empty());
    let e = t.sweep(t0 + PENDING_TIMEOUT);
    assert_eq!((e.len(), e[0].was_active, e[0].tag, e[0].a_client), (1, false, 8, 1));
}

#[test]
fn disable_ends_everything_and_refuses_until_enabled() {
    let now = Instant::now();
    let mut t = table(Limits::default());
    let _ = active(&mut t, now);
    assert!(t.reserve(3));
    t.open(1, &C, 12, 0, now).unwrap();
    let mut ended = t.disable();
    ended.sort_by_key(|e| e.session);
    assert_eq!(ended.iter().map(|e| (e.session, e.reason)).collect::<Vec<_>>(), vec![(12, EndReason::Disabled), (77, EndReason::Disabled)]);
    assert_eq!(t.sessions(), 0);
    assert_eq!(t.reservations(), 0);
    assert!(!t.reserve(2));
    assert_eq!(t.open(1, &B, 1, 0, now), Err(Refusal::Disabled));
    t.enable(Limits::default());
    assert!(t.reserve(2));
    assert!(t.open(1, &B, 1, 0, now).is_ok());
}

/// A greedy sender (twice the limit, 1200-byte frames, both directions)
/// for 10 s: what passes is within 1 % of the limit, and the queue never
/// holds a frame longer than allowed.
#[test]
fn the_bandwidth_limit_holds_over_ten_seconds() {
    let t0 = Instant::now();
    let limit = 1_000_000u64;
    let limits = Limits { bandwidth_limit: Some(limit), ..Limits::default() };
    let max_wait = limits.max_queue_delay;
    let mut t = table(limits);
    let s = active(&mut t, t0);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let mut passed = 0u64;
    let mut last_departure = t0;
    let frames = (2 * limit * 10 / 1200) as u64;
    for i in 0..frames {
        let now = t0 + Duration::from_nanos(i * 10_000_000_000 / frames);
        let from = if i % 3 == 0 { b } else { a };
        match t.forward(from, s, 1200, now) {
            Verdict::Forward { .. } => {
                passed += 1200;
                last_departure = last_departure.max(now);
            }
            Verdict::Delay { after, .. } => {
                assert!(after <= max_wait);
                passed += 1200;
                let dep = now + after;
                assert!(dep >= last_departure, "frames leave in order");
                last_departure = dep;
            }
            Verdict::Drop(r) => assert_eq!(r, DropReason::OverLimit),
        }
    }
    // Everything that passed has left by 10 s + the queue.
    let rate = passed as f64 / (last_departure - t0).as_secs_f64();
    assert!((rate - limit as f64).abs() / (limit as f64) < 0.01, "rate {rate}");
    assert_eq!(t.session_bytes(s), Some(passed));
    assert!(t.dropped(DropReason::OverLimit) > 0);
}

#[test]
fn a_sender_under_the_limit_is_never_delayed() {
    let t0 = Instant::now();
    let mut t = table(Limits { bandwidth_limit: Some(1_000_000), ..Limits::default() });
    let s = active(&mut t, t0);
    for i in 0..1000u64 {
        // 500 kB/s
        let now = t0 + Duration::from_micros(i * 2400);
        assert!(matches!(t.forward(addr("10.0.0.1:1000"), s, 1200, now), Verdict::Forward { .. }));
    }
}

#[test]
fn token_bucket_burst_then_rate() {
    let t0 = Instant::now();
    let mut b = TokenBucket::new(100_000, t0);
    // Burst: 4 KiB floor (50 ms of 100 kB/s is only 5 kB... the larger wins).
    assert_eq!(b.take(t0, 5000, Duration::ZERO), Some(Duration::ZERO));
    // Out of tokens: 1000 bytes cost 10 ms.
    assert_eq!(b.take(t0, 1000, Duration::from_millis(50)), Some(Duration::from_millis(10)));
    assert_eq!(b.take(t0, 10_000, Duration::from_millis(50)), None, "beyond the queue: nothing taken");
    assert_eq!(b.take(t0, 1000, Duration::from_millis(50)), Some(Duration::from_millis(20)));
    // A second later the bucket is full again (capped at the burst).
    assert_eq!(b.take(t0 + Duration::from_secs(1), 5000, Duration::ZERO), Some(Duration::ZERO));
    assert_eq!(b.take(t0 + Duration::from_secs(1), 1, Duration::ZERO), None);
}

#[test]
fn small_frames_pass_at_once_but_are_charged() {
    let t0 = Instant::now();
    let mut t = table(Limits { bandwidth_limit: Some(100_000), ..Limits::default() });
    let s = active(&mut t, t0);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    // Fill the queue from A.
    while matches!(t.forward(a, s, 1200, t0), Verdict::Forward { .. } | Verdict::Delay { .. }) {}
    // B's acknowledgements still go through at once...
    for _ in 0..50 {
        assert_eq!(t.forward(b, s, SMALL_FRAME, t0), Verdict::Forward { to: a });
    }
    // ...and their bytes push A's next frame further out: 50 * 128 bytes =
    // 64 ms at 100 kB/s, beyond the 100 ms queue that was already full.
    assert_eq!(t.forward(a, s, 1200, t0 + Duration::from_millis(60)), Verdict::Drop(DropReason::OverLimit));
    assert!(matches!(t.forward(a, s, 1200, t0 + Duration::from_millis(80)), Verdict::Delay { .. }));
}
