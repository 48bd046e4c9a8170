use super::*;
use crate::rng::XorShift;

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 32])
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 4433))
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// `n` relays registered (pinned), idle, not measured yet.
fn with(n: u8, t0: Instant) -> RelaySelect {
    let mut s = RelaySelect::new(SelectConfig::default());
    for k in 1..=n {
        s.upsert(id(k), addr(k), Some(0.0), true, t0);
    }
    s
}

fn current(s: &RelaySelect) -> Option<u8> {
    s.current().map(|c| c.node_id.as_bytes()[0])
}

fn order(s: &RelaySelect) -> Vec<u8> {
    s.best(usize::MAX).iter().map(|c| c.node_id.as_bytes()[0]).collect()
}

#[test]
fn score_adds_path_and_queueing_delay() {
    let cfg = SelectConfig::default();
    let t0 = Instant::now();
    let mut c = Candidate {
        node_id: id(1),
        addr: addr(1),
        srtt: Some(ms(10)),
        load: 0.0,
        refreshed_at: t0,
        pinned: false,
        failures: 0,
    };
    let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-3;
    assert!(close(c.score(&cfg), 30.0));
    c.load = 0.5;
    assert!(close(c.score(&cfg), 50.0));
    c.load = 0.9;
    assert!(close(c.score(&cfg), 210.0));
    c.load = 1.0;
    assert_eq!(c.score(&cfg), None, "a full relay is never eligible");
    c.load = 0.0;
    c.srtt = None;
    assert_eq!(c.score(&cfg), None, "unmeasured");
    c.srtt = Some(ms(10));
    c.failures = cfg.down_after;
    assert_eq!(c.score(&cfg), None, "down");
    assert!(!c.is_up(&cfg));
}

#[test]
fn load_weighs_against_latency() {
    // Near but nearly full loses to farther and idle: 10 + 200 vs 40 + 20.
    let t0 = Instant::now();
    let mut s = with(2, t0);
    s.upsert(id(1), addr(1), Some(0.9), false, t0);
    s.rtt_sample(&id(1), ms(10));
    s.rtt_sample(&id(2), ms(40));
    s.evaluate(t0);
    assert_eq!(current(&s), Some(2));
    assert_eq!(order(&s), vec![2, 1]);
}

#[test]
fn quantised_load() {
    assert_eq!(quantise_load(0.0), 0);
    assert_eq!(quantise_load(0.024), 0);
    assert_eq!(quantise_load(0.026), 50);
    assert_eq!(quantise_load(0.33), 350);
    assert_eq!(quantise_load(0.99), 1000);
    assert_eq!(quantise_load(1.0), 1000);
    assert_eq!(quantise_load(7.0), 1000);
    assert_eq!(quantise_load(-1.0), 0);
    assert_eq!(quantise_load(f32::NAN), 0);
    assert_eq!(quantise_load(f32::INFINITY), 1000);
    // Small moves inside one step publish nothing new.
    assert_eq!(quantise_load(0.33), quantise_load(0.37));
    assert_eq!(load_from_permille(350), 0.35);
    assert_eq!(load_from_permille(5000), 1.0);
    for p in (0..=1000).step_by(LOAD_STEP_PERMILLE as usize) {
        assert_eq!(quantise_load(load_from_permille(p as u16)), p as u16);
    }
}

#[test]
fn first_measured_is_chosen_at_once_then_the_best_without_waiting() {
    let t0 = Instant::now();
    let mut s = with(2, t0);
    assert_eq!(current(&s), None);
    assert!(s.best(5).is_empty(), "nothing measured, nothing eligible");
    // The slower relay answers first (the probes raced).
    s.rtt_sample(&id(2), ms(30));
    assert_eq!(current(&s), Some(2));
    s.rtt_sample(&id(1), ms(5));
    assert_eq!(current(&s), Some(2), "no switch between evaluations");
    // The first choice was provisional: the first evaluation fixes it.
    s.evaluate(t0);
    assert_eq!(current(&s), Some(1));
    assert_eq!(order(&s), vec![1, 2]);
}

/// Both measured, `a` current and settled (one evaluation done).
fn settled(a_ms: u64, b_ms: u64) -> (RelaySelect, Instant) {
    let t0 = Instant::now();
    let mut s = with(2, t0);
    s.rtt_sample(&id(1), ms(a_ms));
    s.rtt_sample(&id(2), ms(b_ms));
    s.evaluate(t0);
    assert_eq!(current(&s), Some(1));
    (s, t0)
}

/// Feeds the same sample to a relay until its SRTT is within 0.1 ms of it.
fn converge(s: &mut RelaySelect, n: u8, v: u64) {
    for _ in 0..100 {
        s.rtt_sample(&id(n), ms(v));
    }
}

#[test]
fn clearly_better_for_two_evaluations_switches() {
    let (mut s, t0) = settled(10, 12);
    // Relay 1 degrades: 10 -> 60 ms (score 80) vs relay 2 at 12 (score 32).
    converge(&mut s, 1, 60);
    assert_eq!(current(&s), Some(1));
    s.evaluate(t0);
    assert_eq!(current(&s), Some(1), "one evaluation is not enough");
    s.evaluate(t0);
    assert_eq!(current(&s), Some(2), "switched at the second");
    assert_eq!(order(&s), vec![2, 1]);
    s.evaluate(t0);
    assert_eq!(current(&s), Some(2));
}

#[test]
fn better_by_less_than_the_margin_never_switches() {
    // Score 1: 10 + 20 = 30; score 2: 6 + 20 = 26, 13% better.
    let (mut s, t0) = settled(10, 30);
    converge(&mut s, 2, 6);
    for _ in 0..100 {
        s.evaluate(t0);
    }
    assert_eq!(current(&s), Some(1));
    // The tail is still ordered by score.
    assert_eq!(order(&s), vec![1, 2]);
    // Beyond the margin it does switch: 23 < 30 * 0.8.
    converge(&mut s, 2, 3);
    s.evaluate(t0);
    s.evaluate(t0);
    assert_eq!(current(&s), Some(2));
}

#[test]
fn the_streak_must_be_consecutive() {
    let (mut s, t0) = settled(10, 40);
    for _ in 0..50 {
        converge(&mut s, 2, 1); // clearly better ...
        s.evaluate(t0);
        converge(&mut s, 2, 40); // ... then clearly worse again
        s.evaluate(t0);
    }
    assert_eq!(current(&s), Some(1));
}

#[test]
fn no_flapping_under_alternating_noise() {
    // Two relays equally far (20 ms), measured with anti-correlated noise:
    // every round one sample is 50% high and the other 50% low, and the
    // next round the reverse. Raw samples say "switch!" every round.
    let (mut s, t0) = settled(20, 20);
    let gen0 = s.generation();
    let mut switches = 0;
    let mut last = current(&s);
    for round in 0..1000 {
        let (a, b) = if round % 2 == 0 { (30, 10) } else { (10, 30) };
        s.rtt_sample(&id(1), ms(a));
        s.rtt_sample(&id(2), ms(b));
        s.evaluate(t0);
        if current(&s) != last {
            switches += 1;
            last = current(&s);
        }
    }
    assert_eq!(switches, 0);
    assert_eq!(s.generation(), gen0, "no change notifications either");
}

#[test]
fn no_flapping_under_random_noise() {
    // Same true latency, uniform +-40% noise on every sample, 10 seeds x
    // 1000 rounds.
    for seed in 0..10 {
        let (mut s, t0) = settled(20, 20);
        let mut rng = XorShift::seeded(seed);
        let mut noisy = |base: u64| -> Duration {
            let f = (rng.next() % 801) as f64 / 1000.0 + 0.6; // 0.6 ..= 1.4
            Duration::from_secs_f64(base as f64 * f / 1000.0)
        };
        let mut switches = 0;
        let mut last = current(&s);
        for _ in 0..1000 {
            let (a, b) = (noisy(20), noisy(20));
            s.rtt_sample(&id(1), a);
            s.rtt_sample(&id(2), b);
            s.evaluate(t0);
            if current(&s) != last {
                switches += 1;
                last = current(&s);
            }
        }
        assert_eq!(switches, 0, "seed {seed}");
    }
}

#[test]
fn a_current_relay_that_stops_answering_is_replaced_at_once() {
    let (mut s, t0) = settled(10, 30);
    s.probe_failed(&id(1));
    assert_eq!(current(&s), Some(1), "one lost probe is not down");
    s.rtt_sample(&id(1), ms(10));
    s.probe_failed(&id(1));
    assert_eq!(current(&s), Some(1), "failures must be consecutive");
    s.probe_failed(&id(1));
    // No evaluation needed.
    assert_eq!(current(&s), Some(2));
    assert_eq!(order(&s), vec![2]);
    // It answers again, clearly better than 2 (SRTT 11.9 ms: score 31.9
    // vs 50): eligible at once, but it takes the place back only through
    // the hysteresis.
    s.rtt_sample(&id(1), ms(25));
    assert_eq!(order(&s), vec![2, 1]);
    s.evaluate(t0);
    assert_eq!(current(&s), Some(2));
    s.evaluate(t0);
    assert_eq!(current(&s), Some(1));
}

#[test]
fn reported_failure_removal_and_full_load_replace_at_once() {
    let t0 = Instant::now();
    let mut s = with(3, t0);
    for (n, v) in [(1, 5), (2, 10), (3, 20)] {
        s.rtt_sample(&id(n), ms(v));
    }
    s.evaluate(t0);
    assert_eq!(current(&s), Some(1));
    s.mark_failed(&id(1));
    assert_eq!(current(&s), Some(2));
    assert!(!s.get(&id(1)).unwrap().is_up(s.config()));
    s.upsert(id(2), addr(2), Some(1.0), true, t0);
    assert_eq!(current(&s), Some(3), "a full relay is dropped from the choice");
    assert!(s.remove(&id(3)));
    assert!(!s.remove(&id(3)));
    assert_eq!(current(&s), None, "1 is down, 2 is full");
    assert!(s.best(3).is_empty());
    // 1 answers again: chosen at once, there is nothing else.
    s.rtt_sample(&id(1), ms(5));
    assert_eq!(current(&s), Some(1));
}

#[test]
fn unrefreshed_discovered_relays_expire_pinned_ones_do_not() {
    let t0 = Instant::now();
    let cfg = SelectConfig { expire_after: Duration::from_secs(30), ..SelectConfig::default() };
    let mut s = RelaySelect::new(cfg);
    s.upsert(id(1), addr(1), Some(0.1), true, t0);
    s.upsert(id(2), addr(2), Some(0.1), false, t0);
    s.upsert(id(3), addr(3), Some(0.1), false, t0);
    s.rtt_sample(&id(1), ms(50));
    s.rtt_sample(&id(2), ms(5));
    s.rtt_sample(&id(3), ms(6));
    s.evaluate(t0);
    assert_eq!(current(&s), Some(2));
    // 3 is refreshed at 20 s, 2 is not.
    s.upsert(id(3), addr(3), None, false, t0 + Duration::from_secs(20));
    s.evaluate(t0 + Duration::from_secs(29));
    assert_eq!(s.len(), 3);
    s.evaluate(t0 + Duration::from_secs(30));
    assert!(s.get(&id(2)).is_none(), "expired");
    assert_eq!(current(&s), Some(3), "the expired current is replaced at once");
    s.evaluate(t0 + Duration::from_secs(3600));
    assert_eq!(s.len(), 1, "only the pinned one is left");
    assert_eq!(current(&s), Some(1));
    // A refresh without a load keeps the known load.
    assert_eq!(s.get(&id(1)).unwrap().load, 0.1);
}

#[test]
fn a_new_endpoint_is_measured_afresh() {
    let (mut s, _) = settled(10, 30);
    s.upsert(id(1), addr(9), None, true, Instant::now());
    let c = s.get(&id(1)).unwrap();
    assert_eq!((c.addr, c.srtt), (addr(9), None));
    assert_eq!(current(&s), Some(2), "unmeasured is not eligible");
    s.upsert(id(1), addr(9), None, true, Instant::now());
    s.rtt_sample(&id(1), ms(7));
    assert_eq!(s.get(&id(1)).unwrap().srtt, Some(ms(7)));
}

#[test]
fn srtt_smoothing_follows_rfc6298() {
    let (mut s, _) = settled(80, 100);
    s.rtt_sample(&id(1), ms(160));
    assert_eq!(s.get(&id(1)).unwrap().srtt, Some(ms(90)));
    // Unknown ids are ignored.
    s.rtt_sample(&id(99), ms(1));
    s.probe_failed(&id(99));
    s.mark_failed(&id(99));
    assert_eq!(s.len(), 2);
}

#[test]
fn best_is_current_first_then_by_score_and_bounded() {
    let t0 = Instant::now();
    let mut s = with(4, t0);
    for (n, v) in [(1, 40), (2, 10), (3, 30), (4, 20)] {
        s.rtt_sample(&id(n), ms(v));
    }
    assert_eq!(current(&s), Some(1), "first answer, provisional");
    assert_eq!(order(&s), vec![1, 2, 4, 3]);
    s.evaluate(t0);
    assert_eq!(order(&s), vec![2, 4, 3, 1]);
    assert_eq!(s.best(2).iter().map(|c| c.node_id.as_bytes()[0]).collect::<Vec<_>>(), vec![2, 4]);
    assert!(s.best(0).is_empty());
    // Equal scores are ordered by node id, so every node agrees.
    let mut t = with(2, t0);
    t.rtt_sample(&id(2), ms(10));
    t.rtt_sample(&id(1), ms(10));
    t.evaluate(t0);
    assert_eq!(order(&t), vec![1, 2]);
}

#[test]
fn choose_for_prefers_the_targets_contacts_and_never_the_target() {
    let t0 = Instant::now();
    let mut s = with(3, t0);
    for (n, v) in [(1, 5), (2, 10), (3, 20)] {
        s.rtt_sample(&id(n), ms(v));
    }
    s.evaluate(t0);
    let pick = |s: &RelaySelect, t: Option<u8>, via: &[SocketAddr]| {
        s.choose_for(t.map(id).as_ref(), via).map(|c| c.node_id.as_bytes()[0])
    };
    assert_eq!(pick(&s, None, &[]), Some(1));
    assert_eq!(pick(&s, Some(9), &[addr(3)]), Some(3), "the target is reachable through 3");
    assert_eq!(pick(&s, Some(9), &[addr(3), addr(2)]), Some(2), "the better of its contacts");
    assert_eq!(pick(&s, Some(9), &[addr(77)]), Some(1), "unknown contacts: the best");
    assert_eq!(pick(&s, Some(1), &[]), Some(2), "not through the target itself");
    s.mark_failed(&id(3));
    assert_eq!(pick(&s, Some(9), &[addr(3)]), Some(1), "a down contact is not used");
    assert_eq!(pick(&RelaySelect::new(SelectConfig::default()), None, &[]), None);
}

#[test]
fn generation_moves_on_choice_and_eligibility_not_on_scores() {
    let (mut s, t0) = settled(10, 30);
    let g = s.generation();
    s.rtt_sample(&id(2), ms(28));
    s.upsert(id(2), addr(2), Some(0.1), true, t0);
    s.evaluate(t0);
    assert_eq!(s.generation(), g, "scores moved, nothing else");
    s.probe_failed(&id(2));
    s.probe_failed(&id(2));
    assert_eq!(s.generation(), g + 1, "2 left the eligible set");
    s.mark_failed(&id(1));
    assert_eq!(s.generation(), g + 2, "current gone");
    assert_eq!(current(&s), None);
}
