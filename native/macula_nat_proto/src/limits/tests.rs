use super::conn_caps::{ConnCaps, ConnLimits, Refusal};
use super::fd_budget::{default_limit, FdBudget};
use super::term_size::{check, compressed_size, TermCheck};
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn per_ip_cap_refuses_only_that_ip() {
    let mut c = ConnCaps::new(ConnLimits { total: 10, per_ip: 2 });
    assert_eq!(c.admit(ip("10.0.0.1")), Ok(()));
    assert_eq!(c.admit(ip("10.0.0.1")), Ok(()));
    assert_eq!(c.admit(ip("10.0.0.1")), Err(Refusal::PerIp));
    assert_eq!(c.admit(ip("10.0.0.2")), Ok(()));
    assert_eq!(c.total(), 3);
    assert_eq!(c.from_ip(ip("10.0.0.1")), 2);
}

/// IPv6 counts per /64: a host's many addresses share its cap; another
/// /64 has its own; a mapped IPv4 address is that IPv4 address.
#[test]
fn ipv6_sources_count_per_slash_64() {
    let mut c = ConnCaps::new(ConnLimits { total: 10, per_ip: 2 });
    assert_eq!(c.admit(ip("2001:db8:1:2::a")), Ok(()));
    assert_eq!(c.admit(ip("2001:db8:1:2:ffff::1")), Ok(()));
    assert_eq!(c.admit(ip("2001:db8:1:2::b")), Err(Refusal::PerIp));
    assert_eq!(c.admit(ip("2001:db8:1:3::a")), Ok(()));
    assert_eq!(c.from_ip(ip("2001:db8:1:2::99")), 2);
    c.release(ip("2001:db8:1:2::a"));
    assert_eq!(c.admit(ip("2001:db8:1:2::c")), Ok(()));
    assert_eq!(c.admit(ip("::ffff:10.0.0.1")), Ok(()));
    assert_eq!(c.from_ip(ip("10.0.0.1")), 1);
    assert_eq!(super::host_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
}

#[test]
fn total_cap_refuses_everyone_until_one_leaves() {
    let mut c = ConnCaps::new(ConnLimits { total: 3, per_ip: 3 });
    for k in 1..=3 {
        assert_eq!(c.admit(ip(&format!("10.0.0.{k}"))), Ok(()));
    }
    assert_eq!(c.admit(ip("10.0.0.9")), Err(Refusal::Total));
    c.release(ip("10.0.0.2"));
    assert_eq!(c.admit(ip("10.0.0.9")), Ok(()));
}

#[test]
fn release_forgets_an_ip_with_no_connection_and_ignores_unknown_ones() {
    let mut c = ConnCaps::new(ConnLimits { total: 4, per_ip: 1 });
    c.admit(ip("::1")).unwrap();
    c.release(ip("::1"));
    c.release(ip("::1"));
    c.release(ip("10.9.9.9"));
    assert_eq!(c.total(), 0);
    assert_eq!(c.from_ip(ip("::1")), 0);
    assert_eq!(c.admit(ip("::1")), Ok(()));
}

#[test]
fn default_caps_are_documented_values() {
    assert_eq!(ConnLimits::default(), ConnLimits { total: 1024, per_ip: 32 });
}

#[test]
fn fd_budget_grants_up_to_what_is_free_and_nothing_below_the_minimum() {
    let mut b = FdBudget::new(600);
    assert_eq!(b.take(511, 16), 511);
    assert_eq!(b.take(511, 16), 89);
    assert_eq!(b.take(511, 16), 0);
    assert_eq!(b.take(1, 1), 0);
    b.give_back(511);
    assert_eq!(b.used(), 89);
    assert_eq!(b.take(1, 1), 1);
    assert_eq!(b.take(0, 0), 0);
}

#[test]
fn fd_budget_with_fewer_free_than_the_minimum_grants_none() {
    let mut b = FdBudget::new(20);
    assert_eq!(b.take(10, 1), 10);
    assert_eq!(b.take(511, 16), 0);
    assert_eq!(b.take(511, 10), 10);
    assert_eq!(b.used(), 20);
}

#[test]
fn lowering_the_limit_stops_new_grants_and_giving_back_never_underflows() {
    let mut b = FdBudget::new(100);
    assert_eq!(b.take(80, 1), 80);
    b.set_limit(50);
    assert_eq!(b.take(1, 1), 0);
    b.give_back(40);
    assert_eq!(b.take(20, 1), 10);
    b.give_back(1000);
    assert_eq!(b.used(), 0);
    assert_eq!(b.limit(), 50);
}

#[test]
fn default_fd_budget_is_a_quarter_of_the_limit_at_most_4096() {
    assert_eq!(default_limit(1024), 256);
    assert_eq!(default_limit(65536), 4096);
    assert_eq!(default_limit(1 << 20), 4096);
    assert_eq!(default_limit(3), 0);
}

#[test]
fn compressed_term_declared_size_is_read_before_inflating() {
    // term_to_binary(binary:copy(<<0>>, 1000), [compressed]) starts so.
    let bomb = [131, 80, 0xff, 0xff, 0xff, 0xff, 0x78, 0x9c];
    assert_eq!(compressed_size(&bomb), Some(u32::MAX as u64));
    assert_eq!(check(&bomb, 8 << 20), TermCheck::TooLarge { declared: u32::MAX as u64 });
    let small = [131, 80, 0, 0, 0x03, 0xe8, 0x78, 0x9c];
    assert_eq!(check(&small, 1000), TermCheck::Fits);
    assert_eq!(check(&small, 999), TermCheck::TooLarge { declared: 1000 });
}

#[test]
fn anything_but_a_compressed_term_fits() {
    assert_eq!(compressed_size(&[131, 80, 0, 0, 1]), None);
    assert_eq!(compressed_size(&[131, 109, 0, 0, 0, 1, 7]), None);
    assert_eq!(compressed_size(&[]), None);
    assert_eq!(check(&[132, 80, 255, 255, 255, 255], 0), TermCheck::Fits);
    assert_eq!(check(b"raw bytes", 0), TermCheck::Fits);
}
