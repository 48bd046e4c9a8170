use super::*;

/// A live, idle path: one keep-alive datagram a second each way.
fn idle(at_ms: u64) -> Sample {
    let k = at_ms / 1000;
    Sample { at_ms, srtt_us: 20_000, min_rtt_us: 19_000, sent_packets: k, datagrams_in: k, datagrams_out: k, ..Sample::default() }
}

fn run(m: &mut Monitor, samples: impl IntoIterator<Item = Sample>) -> Vec<(u64, Event)> {
    samples.into_iter().filter_map(|s| m.on_sample(s).map(|e| (s.at_ms, e))).collect()
}

#[test]
fn an_idle_live_path_is_never_degraded() {
    let mut m = Monitor::new();
    assert!(run(&mut m, (0..240).map(|i| idle(i * 250))).is_empty());
    let r = m.report();
    assert_eq!(r.degraded, None);
    assert!(r.silent_ms < 1000);
    assert_eq!(r.jitter_us, 0);
}

#[test]
fn a_black_hole_is_silent_within_three_seconds_and_recovers_on_the_next_datagram() {
    let mut m = Monitor::new();
    run(&mut m, (0..40).map(|i| idle(i * 250)));
    // Black hole at 10 s: datagrams_in stops at 10.
    let frozen = |at_ms| Sample { datagrams_in: 10, ..idle(at_ms) };
    let ev = run(&mut m, (41..80).map(|i| frozen(i * 250)));
    let (at, e) = ev[0];
    assert!(matches!(e, Event::Degraded(Degraded::Silent { .. })), "{e:?}");
    assert!(at - 10_000 <= 3_000, "detected {} ms after the last datagram", at - 10_000);
    assert_eq!(ev.len(), 1, "one event per episode: {ev:?}");
    assert!(matches!(m.report().degraded, Some(Degraded::Silent { for_ms }) if for_ms >= SILENT_AFTER.as_millis() as u64));
    // The block lifts: the next datagram recovers it.
    let back = Sample { datagrams_in: 11, ..idle(80 * 250) };
    assert_eq!(m.on_sample(back), Some(Event::Recovered));
    assert_eq!(m.report().degraded, None);
}

#[test]
fn loss_needs_enough_packets_and_recovers_below_half_the_threshold() {
    let mut m = Monitor::new();
    // 5 packets sent, 2 lost: too few for a verdict.
    let s = |at_ms, sent, lost, rx| Sample { at_ms, sent_packets: sent, lost_packets: lost, datagrams_in: rx, srtt_us: 10_000, ..Sample::default() };
    assert_eq!(run(&mut m, [s(0, 0, 0, 0), s(250, 5, 2, 1)]), vec![]);
    // 200 sent, 40 lost in the window (20 %): lossy.
    let ev = run(&mut m, [s(500, 200, 40, 2)]);
    assert_eq!(ev, vec![(500, Event::Degraded(Degraded::Lossy { permille: 200 }))]);
    // Loss at 6 % over the window: above half the threshold, still lossy,
    // no new event.
    let ev = run(&mut m, (1..=20).map(|i| s(500 + i * 250, 200 + i * 100, 40 + i * 6, 2 + i)));
    assert!(ev.is_empty(), "{ev:?}");
    assert!(matches!(m.degraded(), Some(Degraded::Lossy { .. })));
    // Clean for a whole window: recovered, once.
    let base = 200 + 20 * 100;
    let ev = run(&mut m, (1..=24).map(|i| s(5500 + i * 250, base + i * 100, 160, 22 + i)));
    assert_eq!(ev.iter().filter(|(_, e)| *e == Event::Recovered).count(), 1, "{ev:?}");
    assert_eq!(m.degraded(), None);
}

#[test]
fn jitter_follows_the_rtt_spread_and_old_samples_are_ignored() {
    let mut m = Monitor::new();
    // RTT alternating 20 / 30 ms: |D| = 10 ms each step; J converges to 10 ms.
    run(&mut m, (0..200u64).map(|i| Sample { srtt_us: if i % 2 == 0 { 20_000 } else { 30_000 }, ..idle(i * 250) }));
    let j = m.report().jitter_us;
    assert!((9_000..=10_000).contains(&j), "jitter {j} us");
    let before = m.report();
    assert_eq!(m.on_sample(idle(10)), None);
    assert_eq!(m.report(), before);
}

#[test]
fn the_loss_window_is_bounded() {
    let mut m = Monitor::new();
    run(&mut m, (0..100_000).map(|i| idle(i * 250)));
    assert!(m.window.len() <= (LOSS_WINDOW.as_millis() / SAMPLE_EVERY.as_millis()) as usize + 2, "{}", m.window.len());
}
