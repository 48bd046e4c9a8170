use super::sim::*;
use super::*;
use crate::nat::NatType;

fn probe_locals(seed: u64) -> Vec<SocketAddr> {
    // Random-looking, distinct ephemeral ports, like a real OS would give.
    let mut r = XorShift(seed | 1);
    (0..3).map(|i| SocketAddr::new("10.0.0.2".parse().unwrap(), 30_000 + (r.next() % 9000) as u16 + i * 10_000)).collect()
}

fn two_observers() -> Vec<crate::observer::Observer> {
    vec![full_observer("198.51.100.1", "198.51.100.2"), full_observer("192.0.2.10", "192.0.2.20")]
}

fn one_observer() -> Vec<crate::observer::Observer> {
    vec![full_observer("198.51.100.1", "198.51.100.2")]
}

struct Case {
    ty: Option<NatType>,
    delta: i32,
    observers: Vec<crate::observer::Observer>,
    one_way_ms: u64,
    loss_permille: u64,
    seed: u64,
}

fn run_case(c: Case) -> (Run, SimNat) {
    let nat = SimNat::new(c.ty, c.delta, c.seed);
    let mut world = World::new(nat, c.observers, c.one_way_ms, c.loss_permille, c.seed);
    let t0 = Instant::now();
    let local: SocketAddr = PRIMARY_LOCAL.parse().unwrap();
    let mut det = Detection::new(world.config(), local, t0, c.seed);
    let run = world.run(&mut det, &probe_locals(c.seed), t0);
    (run, world.nat)
}

/// What the profile should say for a NAT type, and whether it does.
fn check(ty: NatType, delta: i32, p: &NatProfile, nat: &SimNat) -> Result<(), String> {
    let want_delta = (ty.allocation == Allocation::Pc).then_some(delta);
    let got = (p.mapping, p.allocation, p.filtering, p.port_delta, p.no_nat);
    let want = (ty.mapping, ty.allocation, ty.filtering, want_delta, false);
    if got != want {
        return Err(format!("{ty}: got {got:?} want {want:?} ({:?})", p.confidence));
    }
    if p.public_addr.ip() != nat.public_ip {
        return Err(format!("{ty}: public addr {}", p.public_addr));
    }
    Ok(())
}

fn sweep(observers: fn() -> Vec<crate::observer::Observer>, loss_permille: u64, seed: u64) -> Vec<(NatType, Run, Result<(), String>)> {
    NatType::all()
        .enumerate()
        .map(|(i, ty)| {
            let delta = [1, 2, -1][i % 3];
            let (run, nat) = run_case(Case {
                ty: Some(ty),
                delta,
                observers: observers(),
                one_way_ms: 50,
                loss_permille,
                seed: seed + i as u64 * 7919,
            });
            let verdict = match &run.result {
                Ok(p) => check(ty, delta, p, &nat),
                Err(e) => Err(format!("{ty}: {e}")),
            };
            (ty, run, verdict)
        })
        .collect()
}

fn assert_all_right(results: &[(NatType, Run, Result<(), String>)]) {
    let wrong: Vec<_> = results.iter().filter_map(|(_, _, v)| v.clone().err()).collect();
    assert!(wrong.is_empty(), "wrong verdicts: {wrong:#?}");
}

#[test]
fn all_27_types_two_observers_no_loss_high_confidence_under_a_second() {
    let results = sweep(two_observers, 0, 1);
    assert_all_right(&results);
    for (ty, run, _) in &results {
        let p = run.result.as_ref().unwrap();
        assert_eq!(p.confidence, Confidence::High, "{ty}");
        // 100 ms RTT: <= 3 RTT + filtering wait (300 ms), and < 1 s.
        assert!(run.elapsed <= Duration::from_millis(600), "{ty}: {:?}", run.elapsed);
    }
}

#[test]
fn all_27_types_one_observer_no_loss_high_confidence_under_a_second() {
    let results = sweep(one_observer, 0, 2);
    assert_all_right(&results);
    for (ty, run, _) in &results {
        let p = run.result.as_ref().unwrap();
        assert_eq!(p.confidence, Confidence::High, "{ty}");
        // Sequential: test I, filtering wait, tests II-IV.
        assert!(run.elapsed <= Duration::from_millis(600), "{ty}: {:?}", run.elapsed);
    }
}

#[test]
fn all_27_types_two_observers_5pct_loss() {
    for seed in [11, 12, 13] {
        let results = sweep(two_observers, 50, seed);
        assert_all_right(&results);
        for (ty, run, _) in &results {
            assert!(run.elapsed < Duration::from_secs(2), "{ty}: {:?}", run.elapsed);
        }
    }
}

#[test]
fn all_27_types_one_observer_5pct_loss() {
    for seed in [21, 22, 23] {
        let results = sweep(one_observer, 50, seed);
        assert_all_right(&results);
    }
}
