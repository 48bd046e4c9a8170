use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn unlimited_rates() -> ReplyLimits {
    ReplyLimits { per_ip_rate: 1_000_000, per_ip_burst: 1_000_000, global_rate: 1_000_000, global_burst: 1_000_000, ..ReplyLimits::default() }
}

/// Answers as a responder would: as large as it wants (`want`) when the
/// budget allows, else the largest that fits if at least `min` does.
fn serve(b: &mut ReplyBudget, from: IpAddr, req: usize, want: usize, min: usize, now: Instant) -> usize {
    match b.admit(from, req, now) {
        Ok(budget) if budget >= min => {
            let n = want.min(budget);
            b.spent(from, n);
            n
        }
        Ok(_) => {
            b.refused_by_ledger();
            0
        }
        Err(_) => 0,
    }
}

#[test]
fn sent_never_exceeds_received_plus_the_allowance() {
    let t0 = Instant::now();
    let mut b = ReplyBudget::new(unlimited_rates(), t0);
    let victim = ip("192.0.2.7");
    let (mut got, mut sent) = (0usize, 0usize);
    // Bare 20-byte requests wanting 96-byte answers (at least 32).
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_micros(i * 100);
        got += serve(&mut b, victim, 20, 96, 32, now);
        sent += 20;
        assert!(got <= sent + 1024, "after {i}: {got} > {sent} + 1024");
    }
    // Once the allowance is spent, a bare request earns an answer only
    // every other time (two requests' bytes pay for one small answer).
    assert!(b.refused().ledger > 4000, "{:?}", b.refused());
    // Requests as large as the answer are always answered in full.
    let before = b.refused().ledger;
    for i in 0..100u64 {
        assert_eq!(serve(&mut b, victim, 128, 96, 32, t0 + Duration::from_secs(1) + Duration::from_millis(i)), 96);
    }
    assert_eq!(b.refused().ledger, before);
}

#[test]
fn credit_is_capped() {
    let t0 = Instant::now();
    let mut b = ReplyBudget::new(unlimited_rates(), t0);
    let a = ip("192.0.2.8");
    // Bank with 1,000 large requests answered small...
    for _ in 0..1000 {
        serve(&mut b, a, 1000, 40, 32, t0);
    }
    // ...then the credit left is the cap (less the last answer), not
    // 1,000 x 960 bytes.
    assert_eq!(b.admit(a, 0, t0), Ok(8192 - 40));
}

#[test]
fn per_ip_rate_limit() {
    let t0 = Instant::now();
    let l = ReplyLimits { per_ip_rate: 10, per_ip_burst: 20, ..ReplyLimits::default() };
    let mut b = ReplyBudget::new(l, t0);
    let a = ip("192.0.2.9");
    let ok = (0..100).filter(|_| b.admit(a, 128, t0).is_ok()).count();
    assert_eq!(ok, 20, "the burst");
    assert_eq!(b.refused().per_ip_rate, 80);
    // Another IP is not affected.
    assert!(b.admit(ip("192.0.2.10"), 128, t0).is_ok());
    // One second later: 10 more.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!((0..100).filter(|_| b.admit(a, 128, t1).is_ok()).count(), 10);
}

#[test]
fn global_rate_limit_is_checked_before_the_table() {
    let t0 = Instant::now();
    let l = ReplyLimits { global_rate: 100, global_burst: 50, ..ReplyLimits::default() };
    let mut b = ReplyBudget::new(l, t0);
    let ok = (0..1000u32).filter(|i| b.admit(IpAddr::from((0xC633_6400u32 + i).to_be_bytes()), 128, t0).is_ok()).count();
    assert_eq!(ok, 50);
    assert_eq!(b.refused().global_rate, 950);
    assert_eq!(b.len(), 50, "refused requests leave no entry");
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!((0..100).filter(|_| b.admit(ip("198.51.100.1"), 128, t1).is_ok()).count(), 10);
}

#[test]
fn table_is_bounded_and_evicts_the_oldest() {
    let t0 = Instant::now();
    let l = ReplyLimits { table: 100, ..unlimited_rates() };
    let mut b = ReplyBudget::new(l, t0);
    for i in 0..1000u32 {
        b.admit(IpAddr::from((0x0A00_0000u32 + i).to_be_bytes()), 20, t0).unwrap();
        assert!(b.len() <= 100);
    }
    assert_eq!(b.len(), 100);
    assert!(b.entries.contains_key(&IpAddr::from((0x0A00_0000u32 + 999).to_be_bytes())));
    assert!(!b.entries.contains_key(&IpAddr::from(0x0A00_0000u32.to_be_bytes())));
    assert_eq!(b.order.len(), b.entries.len());
}

#[test]
fn idle_entries_are_forgotten() {
    let t0 = Instant::now();
    let mut b = ReplyBudget::new(unlimited_rates(), t0);
    let a = ip("192.0.2.11");
    b.admit(a, 20, t0).unwrap();
    b.spent(a, 1044);
    assert_eq!(b.admit(a, 0, t0), Ok(0));
    // Still remembered (no new allowance) just before the idle time...
    assert_eq!(b.admit(a, 0, t0 + Duration::from_secs(599)), Ok(0));
    // ...and forgotten after it: a fresh allowance from the pool.
    let later = t0 + Duration::from_secs(599 + 601);
    b.admit(ip("192.0.2.12"), 0, later).unwrap();
    assert!(!b.entries.contains_key(&a));
    assert_eq!(b.admit(a, 0, later), Ok(1024));
}

/// Churning the table (spoofed sources, evictions) hands out new
/// allowances only from the global pool: in total, destinations receive at
/// most `pool_burst + pool_rate * t` more than they sent.
#[test]
fn churn_draws_allowances_from_the_pool() {
    let t0 = Instant::now();
    let l = ReplyLimits { table: 16, ..unlimited_rates() };
    let mut b = ReplyBudget::new(l.clone(), t0);
    let (mut got, mut sent) = (0usize, 0usize);
    let secs = 10u64;
    for i in 0..100_000u64 {
        let now = t0 + Duration::from_micros(i * 100);
        let from = IpAddr::from((0x0A00_0000u32 + (i % 1000) as u32).to_be_bytes());
        got += serve(&mut b, from, 20, 96, 32, now);
        sent += 20;
    }
    let slack = l.pool_burst as usize + l.pool_rate as usize * secs as usize;
    assert!(got <= sent + slack, "{got} > {sent} + {slack}");
    // The pool's burst alone pays 64 full allowances.
    assert!(got >= 64 * 96, "the pool was used: {got}");
}

#[test]
fn reasons_are_distinct() {
    let mut r: Vec<_> = [Refused::GlobalRate, Refused::PerIpRate, Refused::Ledger].iter().map(|r| r.reason()).collect();
    r.sort();
    r.dedup();
    assert_eq!(r.len(), 3);
}

/// Spoofed sources spread over a victim's IPv6 /64 draw on one ledger:
/// what is sent to the /64 stays within what came from it plus one
/// allowance.
#[test]
fn an_ipv6_slash_64_is_one_ledger() {
    let t0 = Instant::now();
    let mut b = ReplyBudget::new(unlimited_rates(), t0);
    let (mut got, mut sent) = (0usize, 0usize);
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_micros(i * 100);
        let from = ip(&format!("2001:db8:7:7::{:x}", i + 1));
        got += serve(&mut b, from, 20, 96, 32, now);
        sent += 20;
        assert!(got <= sent + 1024, "after {i}: {got} > {sent} + 1024");
    }
    assert_eq!(b.len(), 1);
}
