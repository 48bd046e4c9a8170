use super::*;
use std::collections::HashSet;

fn hint(mapping: Mapping, allocation: Allocation, observed: &[u16], delta: Option<i32>, local: Option<u16>) -> PortHint {
    PortHint { mapping, allocation, observed: observed.to_vec(), port_delta: delta, local_port: local }
}

fn opts(count: usize) -> PredictOpts {
    PredictOpts { count, seed: 7 }
}

#[test]
fn wrap_port_wraps_both_ways_and_is_identity_inside() {
    assert_eq!(wrap_port(1024), 1024);
    assert_eq!(wrap_port(65535), 65535);
    assert_eq!(wrap_port(65536), 1024);
    assert_eq!(wrap_port(65537), 1025);
    assert_eq!(wrap_port(1023), 65535);
    assert_eq!(wrap_port(0), 65535 - 1023);
    assert_eq!(wrap_port(-1), 65535 - 1024);
    assert_eq!(wrap_port(i64::from(PORT_MIN) + 3 * i64::from(PORT_RANGE) + 5), 1029);
    assert_eq!(wrap_port(i64::MIN / 2).clamp(PORT_MIN, PORT_MAX), wrap_port(i64::MIN / 2));
    for p in PORT_MIN..=PORT_MAX {
        assert_eq!(wrap_port(i64::from(p)), p);
    }
}

#[test]
fn port_distance_is_shortest_signed_way_round() {
    assert_eq!(port_distance(2000, 2003), 3);
    assert_eq!(port_distance(2003, 2000), -3);
    assert_eq!(port_distance(65535, 1024), 1);
    assert_eq!(port_distance(1024, 65535), -1);
    assert_eq!(port_distance(65534, 1025), 3);
    assert_eq!(port_distance(5000, 5000), 0);
}

#[test]
fn contiguity_window_counts_up_from_last() {
    assert_eq!(contiguity_window(40000, 1, 4), vec![40001, 40002, 40003, 40004]);
    assert_eq!(contiguity_window(40000, 2, 3), vec![40002, 40004, 40006]);
    assert_eq!(contiguity_window(40000, 1, 0), Vec::<u16>::new());
}

#[test]
fn contiguity_window_wraps_65535_to_1024() {
    assert_eq!(contiguity_window(65534, 1, 4), vec![65535, 1024, 1025, 1026]);
    assert_eq!(contiguity_window(65535, 3, 2), vec![1026, 1029]);
}

#[test]
fn contiguity_window_negative_delta_wraps_1024_to_65535() {
    assert_eq!(contiguity_window(1026, -1, 4), vec![1025, 1024, 65535, 65534]);
    assert_eq!(contiguity_window(40000, -2, 3), vec![39998, 39996, 39994]);
}

#[test]
fn contiguity_window_degenerate_deltas_and_bounds() {
    assert!(contiguity_window(40000, 0, 5).is_empty());
    assert!(contiguity_window(40000, PORT_RANGE as i32, 5).is_empty());
    assert!(contiguity_window(40000, -(PORT_RANGE as i32), 5).is_empty());
    // delta larger than the range behaves as its remainder
    assert_eq!(contiguity_window(40000, PORT_RANGE as i32 + 1, 2), vec![40001, 40002]);
    // a last port below the range still yields in-range candidates
    let w = contiguity_window(80, 1, 3);
    assert!(w.iter().all(|p| *p >= PORT_MIN));
    // extreme deltas do not overflow
    for d in [i32::MIN, i32::MAX, i32::MIN + 1] {
        let w = contiguity_window(PORT_MAX, d, 10);
        assert!(w.iter().all(|p| *p >= PORT_MIN));
    }
}

#[test]
fn contiguity_window_never_repeats_even_for_a_huge_window() {
    // delta 1: every port once, then stop
    let w = contiguity_window(1024, 1, 100_000);
    assert_eq!(w.len(), PORT_RANGE as usize);
    assert_eq!(w.iter().collect::<HashSet<_>>().len(), w.len());
    // delta sharing a factor with the range: shorter cycle, no repeats
    let w = contiguity_window(1024, 2, 100_000);
    assert_eq!(w.len(), PORT_RANGE as usize / 2);
    assert_eq!(w.iter().collect::<HashSet<_>>().len(), w.len());
    let w = contiguity_window(1024, 1024, 100_000);
    assert_eq!(w.len(), 63);
}

#[test]
fn infer_delta_from_observations() {
    assert_eq!(infer_delta(&[40000, 40002, 40004, 40006]), Some(2));
    assert_eq!(infer_delta(&[40006, 40004, 40002]), Some(-2));
    // one stolen port in between does not hide the delta
    assert_eq!(infer_delta(&[40000, 40001, 40003, 40004]), Some(1));
    // across the wrap
    assert_eq!(infer_delta(&[65534, 65535, 1024, 1025]), Some(1));
    assert_eq!(infer_delta(&[1025, 1024, 65535]), Some(-1));
    assert_eq!(infer_delta(&[40000]), None);
    assert_eq!(infer_delta(&[]), None);
    assert_eq!(infer_delta(&[40000, 40000]), None);
    // no majority
    assert_eq!(infer_delta(&[1000 + 24, 5000, 20000, 21, 9]), None);
}

#[test]
fn predict_ei_mapping_is_the_reflexive_port_whatever_the_allocation() {
    for a in Allocation::ALL {
        let h = hint(Mapping::Ei, a, &[30000, 31000], Some(1), Some(5000));
        assert_eq!(predict(&h, &opts(8)), vec![31000], "{a:?}");
    }
    let h = hint(Mapping::Ei, Allocation::Rd, &[], None, None);
    assert!(predict(&h, &opts(8)).is_empty());
}

#[test]
fn predict_preservation_is_the_local_port() {
    for m in [Mapping::Hd, Mapping::Pd] {
        let h = hint(m, Allocation::Pp, &[5000, 23456], None, Some(40000));
        assert_eq!(predict(&h, &opts(8)), vec![40000]);
        // without the local port, the first (preserved) mapping shows it
        let h = hint(m, Allocation::Pp, &[5000, 23456], None, None);
        assert_eq!(predict(&h, &opts(8)), vec![5000]);
        let h = hint(m, Allocation::Pp, &[], None, None);
        assert!(predict(&h, &opts(8)).is_empty());
    }
}

#[test]
fn predict_contiguity_uses_delta_or_infers_it() {
    let h = hint(Mapping::Pd, Allocation::Pc, &[40000], Some(3), None);
    assert_eq!(predict(&h, &opts(3)), vec![40003, 40006, 40009]);
    let h = hint(Mapping::Hd, Allocation::Pc, &[40000, 39999, 39998], None, None);
    assert_eq!(predict(&h, &opts(3)), vec![39997, 39996, 39995]);
    let h = hint(Mapping::Pd, Allocation::Pc, &[65535], Some(1), None);
    assert_eq!(predict(&h, &opts(2)), vec![1024, 1025]);
    // nothing to base the window on
    let h = hint(Mapping::Pd, Allocation::Pc, &[], Some(1), None);
    assert!(predict(&h, &opts(3)).is_empty());
    let h = hint(Mapping::Pd, Allocation::Pc, &[40000], None, None);
    assert!(predict(&h, &opts(3)).is_empty());
}

#[test]
fn predict_random_is_a_distinct_in_range_birthday_set() {
    let h = hint(Mapping::Pd, Allocation::Rd, &[40000], None, None);
    let p = predict(&h, &PredictOpts { count: 500, seed: 1 });
    assert_eq!(p.len(), 500);
    assert_eq!(p.iter().collect::<HashSet<_>>().len(), 500);
    assert!(p.iter().all(|x| *x >= PORT_MIN));
    assert_eq!(p, predict(&h, &PredictOpts { count: 500, seed: 1 }), "deterministic per seed");
    assert_ne!(p, predict(&h, &PredictOpts { count: 500, seed: 2 }));
}

#[test]
fn predict_count_zero_is_empty() {
    for m in Mapping::ALL {
        for a in Allocation::ALL {
            assert!(predict(&hint(m, a, &[40000], Some(1), Some(5000)), &opts(0)).is_empty());
        }
    }
}

#[test]
fn birthday_ports_is_a_permutation_of_the_range_for_any_seed() {
    for seed in [0u64, 1, 42, u64::MAX, 0xDEAD_BEEF] {
        let all: Vec<u16> = BirthdayPorts::new(seed).collect();
        assert_eq!(all.len(), PORT_RANGE as usize, "seed {seed}");
        let set: HashSet<u16> = all.iter().copied().collect();
        assert_eq!(set.len(), PORT_RANGE as usize, "seed {seed}");
        assert!(all.iter().all(|p| *p >= PORT_MIN));
    }
    assert_eq!(birthday_ports(3, 100_000).len(), PORT_RANGE as usize);
}

#[test]
fn birthday_ports_spread_over_the_range() {
    // 1000 probes should touch every eighth of the range
    let p = birthday_ports(9, 1000);
    let mut buckets = [0u32; 8];
    for x in p {
        buckets[usize::from(x - PORT_MIN) * 8 / PORT_RANGE as usize] += 1;
    }
    assert!(buckets.iter().all(|b| (60..=190).contains(b)), "{buckets:?}");
}

#[test]
fn hit_probability_exact_values_and_edges() {
    let n = PORT_RANGE;
    assert_eq!(birthday_hit_probability(0, 100, n), 0.0);
    assert_eq!(birthday_hit_probability(100, 0, n), 0.0);
    assert_eq!(birthday_hit_probability(1, 1, 0), 0.0);
    assert!((birthday_hit_probability(1, 1, n) - 1.0 / f64::from(n)).abs() < 1e-12);
    // one socket, m probes: m / N
    assert!((birthday_hit_probability(1, 1000, n) - 1000.0 / f64::from(n)).abs() < 1e-9);
    // pigeonhole
    assert_eq!(birthday_hit_probability(n / 2, n / 2 + 1, n), 1.0);
    assert_eq!(birthday_hit_probability(n, 1, n), 1.0);
    assert_eq!(birthday_hit_probability(u32::MAX, u32::MAX, n), 1.0);
    // symmetric in n and m
    let a = birthday_hit_probability(300, 700, n);
    let b = birthday_hit_probability(700, 300, n);
    assert!((a - b).abs() < 1e-9);
    // close to the exponential approximation
    let approx = 1.0 - (-(300.0 * 700.0) / f64::from(n)).exp();
    assert!((a - approx).abs() < 0.01, "{a} vs {approx}");
}

#[test]
fn hit_probability_grows_with_both_counts() {
    let mut last = 0.0;
    for m in (0..2000).step_by(50) {
        let p = birthday_hit_probability(256, m, PORT_RANGE);
        assert!(p >= last);
        last = p;
    }
    let mut last = 0.0;
    for n in (0..2000).step_by(50) {
        let p = birthday_hit_probability(n, 256, PORT_RANGE);
        assert!(p >= last);
        last = p;
    }
}

#[test]
fn plan_reaches_the_target_with_balanced_counts() {
    let limits = BirthdayLimits { max_sockets: 1000, rate_pps: 1000, max_duration: Duration::from_secs(60) };
    let p = plan_birthday(0.95, &limits).unwrap();
    assert!(p.probability >= 0.95);
    assert!((400..=480).contains(&p.sockets), "{p:?}");
    assert!((400..=480).contains(&p.probes), "{p:?}");
    // minimal: one probe fewer misses the target
    assert!(birthday_hit_probability(p.sockets, p.probes - 1, PORT_RANGE) < 0.95);
    assert_eq!(p.duration, Duration::from_micros(u64::from(p.sockets + p.probes) * 1000));
}

#[test]
fn plan_respects_the_socket_cap_by_probing_more() {
    let limits = BirthdayLimits { max_sockets: 128, rate_pps: 1000, max_duration: Duration::from_secs(60) };
    let p = plan_birthday(0.95, &limits).unwrap();
    assert_eq!(p.sockets, 128);
    assert!(p.probes > 1000, "{p:?}");
    assert!(p.probability >= 0.95);
}

#[test]
fn plan_respects_the_rate_cap_or_gives_up() {
    // 100 pps for 5 s = 500 packets: not enough for 0.95 (needs ~880)
    let limits = BirthdayLimits { max_sockets: 1000, rate_pps: 100, max_duration: Duration::from_secs(5) };
    assert_eq!(plan_birthday(0.95, &limits), None);
    // but enough for 0.5 (n * m ~ 44700, about 212 + 212)
    let p = plan_birthday(0.5, &limits).unwrap();
    assert!(p.sockets + p.probes <= 500 && p.probability >= 0.5, "{p:?}");
    assert!(p.duration <= limits.max_duration);
}

#[test]
fn plan_rejects_nonsense() {
    let l = BirthdayLimits::default();
    for t in [0.0, -1.0, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(plan_birthday(t, &l), None, "{t}");
    }
    assert_eq!(plan_birthday(0.9, &BirthdayLimits { max_sockets: 0, ..l }), None);
    assert_eq!(plan_birthday(0.9, &BirthdayLimits { rate_pps: 0, ..l }), None);
    // certainty is possible but costs the pigeonhole
    let big = BirthdayLimits { max_sockets: 70_000, rate_pps: 1_000_000, max_duration: Duration::from_secs(1) };
    let p = plan_birthday(1.0, &big).unwrap();
    assert_eq!(p.probability, 1.0);
}
