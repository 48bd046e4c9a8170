use super::*;

const S: Duration = Duration::from_secs(1);

fn policy() -> CachePolicy {
    CachePolicy { grace: 60 * S, retry: S }
}

fn cache(cap: usize) -> (LruTtl<u32, &'static str>, Instant) {
    (LruTtl::new(cap, policy()), Instant::now())
}

#[test]
fn miss_then_fresh_hit() {
    let (mut c, t) = cache(4);
    assert_eq!(c.get(&1, t), Lookup::Miss);
    assert_eq!(c.put(1, "a", 300 * S, t), None);
    assert_eq!(c.get(&1, t + 299 * S), Lookup::Fresh("a"));
    let s = c.stats();
    assert_eq!((s.size, s.hits, s.misses, s.stale_hits, s.evictions), (1, 1, 1, 0, 0));
}

#[test]
fn ttl_boundary_then_stale_then_gone() {
    let (mut c, t) = cache(4);
    c.put(1, "a", 10 * S, t);
    assert_eq!(c.get(&1, t + 10 * S - Duration::from_nanos(1)), Lookup::Fresh("a"));
    assert_eq!(c.get(&1, t + 10 * S), Lookup::Stale { value: "a", refresh: true });
    assert_eq!(c.get(&1, t + 69 * S), Lookup::Stale { value: "a", refresh: false });
    assert_eq!(c.get(&1, t + 70 * S), Lookup::Miss);
    assert!(c.is_empty());
    let s = c.stats();
    assert_eq!((s.hits, s.stale_hits, s.misses, s.expirations), (1, 2, 1, 1));
}

#[test]
fn exactly_one_refresh_per_round_however_many_readers() {
    let (mut c, t) = cache(4);
    c.put(1, "a", S, t);
    let orders = (0..100).filter(|_| matches!(c.get(&1, t + 2 * S), Lookup::Stale { refresh: true, .. })).count();
    assert_eq!(orders, 1);
    // The refresh lands: fresh again, and the next stale round orders one
    // refresh again.
    c.put(1, "b", S, t + 3 * S);
    assert_eq!(c.get(&1, t + 3 * S), Lookup::Fresh("b"));
    let orders = (0..100).filter(|_| matches!(c.get(&1, t + 5 * S), Lookup::Stale { refresh: true, .. })).count();
    assert_eq!(orders, 1);
}

#[test]
fn failed_refresh_is_retried_after_the_retry_delay_only() {
    let (mut c, t) = cache(4);
    c.put(1, "a", S, t);
    assert!(matches!(c.get(&1, t + 2 * S), Lookup::Stale { refresh: true, .. }));
    c.refresh_failed(&1, t + 2 * S);
    assert!(matches!(c.get(&1, t + 2 * S + S / 2), Lookup::Stale { refresh: false, .. }));
    assert!(matches!(c.get(&1, t + 3 * S), Lookup::Stale { refresh: true, .. }));
    assert!(matches!(c.get(&1, t + 3 * S), Lookup::Stale { refresh: false, .. }));
    // refresh_failed for an absent key is harmless.
    c.refresh_failed(&9, t);
}

#[test]
fn lru_evicts_least_recently_used_at_the_bound() {
    let (mut c, t) = cache(3);
    c.put(1, "a", 300 * S, t);
    c.put(2, "b", 300 * S, t);
    c.put(3, "c", 300 * S, t);
    assert_eq!(c.get(&1, t), Lookup::Fresh("a")); // 2 is now the oldest
    assert_eq!(c.put(4, "d", 300 * S, t), Some(2));
    assert_eq!(c.len(), 3);
    assert_eq!(c.get(&2, t), Lookup::Miss);
    assert_eq!(c.keys_mru(), vec![4, 1, 3]);
    assert_eq!(c.stats().evictions, 1);
}

#[test]
fn updating_an_existing_key_never_evicts() {
    let (mut c, t) = cache(2);
    c.put(1, "a", S, t);
    c.put(2, "b", S, t);
    for i in 0..10 {
        assert_eq!(c.put(1, if i % 2 == 0 { "x" } else { "y" }, 300 * S, t), None);
    }
    assert_eq!(c.len(), 2);
    assert_eq!(c.stats().evictions, 0);
    assert_eq!(c.get(&2, t), Lookup::Fresh("b"));
}

#[test]
fn put_resets_ttl_and_refresh_state() {
    let (mut c, t) = cache(2);
    c.put(1, "a", S, t);
    assert!(matches!(c.get(&1, t + 2 * S), Lookup::Stale { refresh: true, .. }));
    c.put(1, "b", 10 * S, t + 2 * S);
    assert_eq!(c.get(&1, t + 11 * S), Lookup::Fresh("b"));
    assert!(matches!(c.get(&1, t + 12 * S), Lookup::Stale { refresh: true, .. }));
}

#[test]
fn a_dead_tail_is_dropped_as_expiry_not_eviction() {
    let (mut c, t) = cache(2);
    c.put(1, "a", S, t);
    c.put(2, "b", 300 * S, t);
    assert_eq!(c.put(3, "c", 300 * S, t + 100 * S), Some(1));
    let s = c.stats();
    assert_eq!((s.evictions, s.expirations), (0, 1));
}

#[test]
fn invalidate_and_peek() {
    let (mut c, t) = cache(2);
    c.put(1, "a", S, t);
    assert_eq!(c.peek(&1, t), Some((&"a", true)));
    assert_eq!(c.peek(&1, t + 2 * S), Some((&"a", false)));
    assert_eq!(c.peek(&1, t + 61 * S), None);
    assert!(c.invalidate(&1));
    assert!(!c.invalidate(&1));
    assert_eq!(c.get(&1, t), Lookup::Miss);
    // peek does not count.
    assert_eq!(c.stats().hits, 0);
}

#[test]
fn sweep_in_bounded_steps_drops_only_dead_entries() {
    let (mut c, t) = cache(100);
    for k in 0..100 {
        c.put(k, "v", if k % 2 == 0 { S } else { 1000 * S }, t);
    }
    let now = t + 100 * S;
    let mut from = 0;
    let mut dropped = 0;
    let mut rounds = 0;
    loop {
        let (d, next) = c.sweep(now, from, 7);
        dropped += d;
        rounds += 1;
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(dropped, 50);
    assert_eq!(rounds, 15);
    assert_eq!(c.len(), 50);
    assert_eq!(c.stats().expirations, 50);
    assert!((0..100).filter(|k| k % 2 == 1).all(|k| c.peek(&k, now).is_some()));
}

#[test]
fn capacity_is_at_least_one() {
    let (mut c, t) = (LruTtl::<u32, u32>::new(0, policy()), Instant::now());
    assert_eq!(c.capacity(), 1);
    c.put(1, 1, S, t);
    assert_eq!(c.put(2, 2, S, t), Some(1));
}

/// Model check: random operations against an obviously-correct reference
/// (a Vec in recency order), with time moving forward.
#[test]
fn matches_a_reference_model_under_random_operations() {
    struct Model {
        cap: usize,
        items: Vec<(u32, u32, Instant)>, // most recent first
    }
    let grace = policy().grace;
    let mut gen = crate::rng::XorShift(0x9e3779b97f4a7c15);
    let mut rnd = move |n: u64| gen.next() % n;
    for cap in [1usize, 2, 3, 8] {
        let t0 = Instant::now();
        let mut now = t0;
        let mut c: LruTtl<u32, u32> = LruTtl::new(cap, policy());
        let mut m = Model { cap, items: vec![] };
        for step in 0..20_000u32 {
            now += Duration::from_millis(rnd(5_000));
            let key = rnd(12) as u32;
            match rnd(4) {
                0 | 1 => {
                    let got = c.get(&key, now);
                    let pos = m.items.iter().position(|(k, _, _)| *k == key);
                    let want = match pos {
                        None => None,
                        Some(p) => {
                            let (k, v, exp) = m.items[p];
                            if now >= exp + grace {
                                m.items.remove(p);
                                None
                            } else {
                                m.items.remove(p);
                                m.items.insert(0, (k, v, exp));
                                Some((v, now < exp))
                            }
                        }
                    };
                    match (got, want) {
                        (Lookup::Miss, None) => {}
                        (Lookup::Fresh(a), Some((b, true))) => assert_eq!(a, b),
                        (Lookup::Stale { value, .. }, Some((b, false))) => assert_eq!(value, b),
                        (g, w) => panic!("step {step}: got {g:?}, model {w:?}"),
                    }
                }
                2 => {
                    let ttl = Duration::from_millis(rnd(60_000));
                    let evicted = c.put(key, step, ttl, now);
                    if let Some(p) = m.items.iter().position(|(k, _, _)| *k == key) {
                        m.items.remove(p);
                        assert_eq!(evicted, None);
                    } else if m.items.len() >= m.cap {
                        let (k, _, _) = m.items.pop().unwrap();
                        assert_eq!(evicted, Some(k), "step {step}");
                    } else {
                        assert_eq!(evicted, None);
                    }
                    m.items.insert(0, (key, step, now + ttl));
                }
                _ => {
                    let was = m.items.iter().position(|(k, _, _)| *k == key).map(|p| m.items.remove(p)).is_some();
                    assert_eq!(c.invalidate(&key), was);
                }
            }
            assert_eq!(c.keys_mru(), m.items.iter().map(|(k, _, _)| *k).collect::<Vec<_>>(), "step {step}");
            assert!(c.len() <= cap);
        }
    }
}

#[test]
fn evict_lru_on_demand() {
    let (mut c, t) = cache(4);
    assert_eq!(c.evict_lru(t), None);
    c.put(1, "a", S, t);
    c.put(2, "b", 300 * S, t);
    assert!(c.contains(&1));
    // 1 is past TTL + grace at t+100s: an expiry; 2 is live: an eviction.
    assert_eq!(c.evict_lru(t + 100 * S), Some(1));
    assert_eq!(c.evict_lru(t + 100 * S), Some(2));
    let s = c.stats();
    assert_eq!((s.size, s.expirations, s.evictions), (0, 1, 1));
    assert!(!c.contains(&1));
}
