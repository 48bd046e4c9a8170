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
        Refusal::TooManySessions,
        Refusal::TooManyPending,
        Refusal::RateLimited,
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
    let now = Instant::now();
    t.connect(1, A, addr("10.0.0.1:1000"), now);
    t.connect(2, B, addr("10.0.0.2:2000"), now);
    t.connect(3, C, addr("10.0.0.3:3000"), now);
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
    t.connect(4, B, addr("10.0.0.2:2001"), now); // B reconnected from a new mapping
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
    let pending = Limits::default().pending_timeout;
    assert!(pending <= Duration::from_secs(4), "shorter than the opener's 5 s wait");
    assert!(t.sweep(t0 + pending - Duration::from_millis(1)).is_empty());
    let e = t.sweep(t0 + pending);
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

/// No shares and no rate: only the per-key cap under test binds.
fn wide() -> Limits {
    Limits { max_pending_per_key: 1000, max_sessions_per_key: 1000, max_opens_per_minute: 100_000, ..Limits::default() }
}

#[test]
fn one_key_holds_at_most_its_share_of_sessions() {
    let now = Instant::now();
    let mut t = table(Limits { max_sessions: 10, max_sessions_per_key: 4, ..wide() });
    assert!(t.reserve(2));
    for s in 0..4 {
        t.open(1, &B, s, 0, now).unwrap();
        t.accept(2, s, now).unwrap();
    }
    assert_eq!(t.open(1, &B, 4, 0, now), Err(Refusal::TooManySessions));
    assert_eq!(t.key_sessions(&A), 4);
    // A second key gets its own share, and the relay still has room.
    for s in 10..14 {
        t.open(3, &B, s, 0, now).unwrap();
    }
    assert_eq!(t.open(3, &B, 14, 0, now), Err(Refusal::TooManySessions));
    assert_eq!(t.sessions(), 8);
    let d = NodeId::from_bytes([0xD; 32]);
    t.connect(4, d, addr("10.0.0.4:4000"), now);
    assert!(t.open(4, &B, 20, 0, now).is_ok(), "two keys do not hold every slot");
    // Ending one of A's sessions gives it a slot back; the target's count
    // is not the opener's (B opened nothing).
    t.close(2, 0).unwrap();
    assert!(t.open(1, &B, 4, 0, now).is_ok());
    assert_eq!(t.key_sessions(&B), 0);
}

#[test]
fn one_key_has_at_most_its_pending_sessions_waiting() {
    let now = Instant::now();
    let mut t = table(Limits { max_pending_per_key: 2, ..wide() });
    assert!(t.reserve(2));
    t.open(1, &B, 1, 0, now).unwrap();
    t.open(1, &B, 2, 0, now).unwrap();
    assert_eq!(t.open(1, &B, 3, 0, now), Err(Refusal::TooManyPending));
    // An accepted session no longer waits; a declined one is gone.
    t.accept(2, 1, now).unwrap();
    t.open(1, &B, 3, 0, now).unwrap();
    assert_eq!(t.open(1, &B, 4, 0, now), Err(Refusal::TooManyPending));
    t.decline(2, 2).unwrap();
    t.open(1, &B, 4, 0, now).unwrap();
    // Expired pending sessions give their place back too.
    let e = t.sweep(now + Limits::default().pending_timeout);
    assert_eq!(e.len(), 2);
    t.open(1, &B, 5, 0, now + Limits::default().pending_timeout).unwrap();
}

#[test]
fn opens_per_minute_per_key_refill_over_the_minute() {
    let t0 = Instant::now();
    let mut t = table(Limits { max_opens_per_minute: 3, ..wide() });
    assert!(t.reserve(2));
    for s in 0..3 {
        t.open(1, &B, s, 0, t0).unwrap();
        t.close(1, s).unwrap();
    }
    assert_eq!(t.open(1, &B, 9, 0, t0), Err(Refusal::RateLimited));
    assert_eq!(t.open(1, &B, 9, 0, t0 + Duration::from_secs(19)), Err(Refusal::RateLimited), "a refused open costs nothing more, but earns nothing");
    assert!(t.open(1, &B, 9, 0, t0 + Duration::from_secs(21)).is_ok(), "one token every 20 s");
    // Another key is not affected.
    assert!(t.reserve(3));
    assert!(t.open(2, &C, 10, 0, t0).is_ok());
}

#[test]
fn reservations_are_capped_per_key_and_in_all() {
    let now = Instant::now();
    let mut t = table(Limits { max_reservations: 2, max_reservations_per_key: 2, ..Limits::default() });
    t.connect(4, B, addr("10.0.0.2:2001"), now);
    t.connect(5, B, addr("10.0.0.2:2002"), now);
    assert!(t.reserve(2) && t.reserve(4));
    assert_eq!(t.key_reservations(&B), 2);
    assert!(t.reserve(5), "the newest wins");
    assert_eq!(t.key_reservations(&B), 2, "the oldest went");
    assert!(t.reserve(5), "again: no change");
    assert_eq!(t.key_reservations(&B), 2);
    assert!(t.reserve(3));
    assert_eq!(t.reservations(), 2);
    assert!(!t.reserve(1), "a third node finds the relay full");
    assert!(!t.is_reserved(&A));
    t.disconnect(3);
    assert!(t.reserve(1));
    // B is reached through its newest reservation.
    assert_eq!(t.open(1, &B, 1, 0, now).unwrap().b_client, 5);
}

#[test]
fn a_leg_follows_its_control_connection_to_a_new_address() {
    let now = Instant::now();
    let mut t = table(Limits::default());
    let s = active(&mut t, now);
    let (a, old_b, new_b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"), addr("10.0.0.2:2999"));
    assert_eq!(t.forward(new_b, s, 100, now), Verdict::Drop(DropReason::NotALeg), "before the move");
    assert!(t.move_client(2, new_b));
    assert!(!t.move_client(2, new_b), "unchanged");
    assert!(!t.move_client(99, new_b));
    assert_eq!(t.client_addr(2), Some(new_b));
    assert_eq!(t.forward(new_b, s, 100, now), Verdict::Forward { to: a });
    assert_eq!(t.forward(a, s, 100, now), Verdict::Forward { to: new_b });
    assert_eq!(t.forward(old_b, s, 100, now), Verdict::Drop(DropReason::NotALeg), "the old mapping is no leg now");
    assert_eq!(t.legs(s), Some((a, new_b)));
    // Sessions opened later start at the new address too.
    assert!(t.open(3, &B, 78, 0, now).is_ok());
    assert_eq!(t.legs(78), Some((addr("10.0.0.3:3000"), new_b)));
}

/// A flood of small frames (10x the limit, both legs) for 10 s: what passes
/// is within the limit plus the burst and twice the queue allowance.
#[test]
fn small_frames_cannot_pass_the_bandwidth_limit() {
    let t0 = Instant::now();
    let limit = 100_000u64;
    let limits = Limits { bandwidth_limit: Some(limit), ..Limits::default() };
    let slack = (limit as f64 * 0.05).max(4096.0) + limit as f64 * 2.0 * limits.max_queue_delay.as_secs_f64();
    let mut t = table(limits);
    let s = active(&mut t, t0);
    let (a, b) = (addr("10.0.0.1:1000"), addr("10.0.0.2:2000"));
    let len = SMALL_FRAME;
    let frames = 10 * limit * 10 / len as u64;
    let mut passed = 0u64;
    for i in 0..frames {
        let now = t0 + Duration::from_nanos(i * 10_000_000_000 / frames);
        match t.forward(if i % 2 == 0 { a } else { b }, s, len, now) {
            Verdict::Forward { .. } => passed += len as u64,
            Verdict::Delay { .. } => panic!("small frames are never queued"),
            Verdict::Drop(r) => assert_eq!(r, DropReason::OverLimit),
        }
    }
    let allowed = limit as f64 * 10.0 + slack;
    assert!(passed as f64 <= allowed, "{passed} > {allowed}");
    assert!(passed as f64 >= limit as f64 * 10.0 * 0.95, "the limit is used: {passed}");
}

#[test]
fn a_key_is_forgotten_once_gone_and_its_bucket_full() {
    let t0 = Instant::now();
    let mut t = table(Limits::default());
    assert!(t.reserve(2));
    t.open(1, &B, 1, 0, t0).unwrap();
    assert_eq!(t.keys(), 3);
    t.disconnect(1);
    // 60 opens a minute: one open is paid back in a second.
    t.sweep(t0 + Duration::from_millis(500));
    assert_eq!(t.keys(), 3, "A's recent open is remembered (a reconnect does not reset it)");
    t.sweep(t0 + Duration::from_secs(2));
    assert_eq!(t.keys(), 2);
}

#[test]
fn pings_are_answered_at_most_ten_a_second_per_client() {
    let t0 = Instant::now();
    let mut t = table(Limits::default());
    let answered = (0..1000).filter(|_| t.ping(1, t0)).count();
    assert_eq!(answered, PINGS_PER_SECOND as usize, "the burst");
    assert!(t.ping(2, t0), "another client has its own");
    assert!(!t.ping(1, t0 + Duration::from_millis(50)));
    assert!(t.ping(1, t0 + Duration::from_millis(150)), "one every 100 ms");
    // An honest client (twice a second) is always answered.
    assert!((1..100).all(|i| t.ping(3, t0 + Duration::from_millis(500 * i))));
    assert!(!t.ping(99, t0), "unknown client");
}
