use super::*;

#[test]
fn caps_hold_per_key_and_in_total() {
    let mut c: Caps<u8> = Caps::new(2, 3);
    assert_eq!(c.take(&1), Ok(()));
    assert_eq!(c.take(&1), Ok(()));
    assert_eq!(c.take(&1), Err(Over::Peer));
    assert_eq!(c.take(&2), Ok(()));
    assert_eq!(c.take(&3), Err(Over::Total));
    assert_eq!((c.held_by(&1), c.held()), (2, 3));
    c.release(&1);
    assert_eq!(c.take(&3), Ok(()));
    c.release(&9); // holds none: nothing changes
    assert_eq!(c.held(), 3);
    for k in [1, 2, 3] {
        while c.held_by(&k) > 0 {
            c.release(&k);
        }
    }
    assert_eq!(c.held(), 0);
    assert!(c.held.is_empty(), "a key holding nothing is forgotten");
}

#[test]
fn rate_allows_a_burst_then_the_average() {
    let t0 = Instant::now();
    let mut r = Rate::new(10, 5, t0);
    assert_eq!((0..20).filter(|_| r.allow(t0)).count(), 5);
    // one second later: ten more, never more than the burst
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!((0..20).filter(|_| r.allow(t1)).count(), 5);
    let t2 = t1 + Duration::from_millis(300);
    assert_eq!((0..20).filter(|_| r.allow(t2)).count(), 3);
    // a clock that goes backwards gives nothing
    assert!(!r.allow(t0));
    // over a long run: the average
    let mut t = t2;
    let mut n = 0;
    for _ in 0..1000 {
        t += Duration::from_millis(10);
        n += usize::from(r.allow(t));
    }
    assert!((99..=101).contains(&n), "{n} in 10 s at 10/s");
}

#[test]
fn expiry_pops_in_order_only_when_due() {
    let t0 = Instant::now();
    let mut e = Expiry::new(Duration::from_secs(30));
    e.push(1u8, t0);
    e.push(2, t0 + Duration::from_secs(10));
    assert_eq!(e.pop_expired(t0 + Duration::from_secs(29)), None);
    assert_eq!(e.pop_expired(t0 + Duration::from_secs(30)), Some((t0, 1)));
    assert_eq!(e.pop_expired(t0 + Duration::from_secs(30)), None);
    assert_eq!(e.pop_expired(t0 + Duration::from_secs(40)).map(|x| x.1), Some(2));
    assert!(e.is_empty());
}
