//! IPv6 next to IPv4 (dual stack), sans-IO: which address families a
//! signalled profile says its node has ([`families`]), what that does to
//! the strategy ([`with_families`]), the order a punch tries a peer's
//! targets in ([`happy_order`]) and how long IPv4 waits behind IPv6
//! ([`happy_eyeballs_delay`]).
//!
//! A node with an IPv6 socket signals its global IPv6 addresses as host
//! candidates (at that socket's port) next to its IPv4 profile, so the
//! wire format is unchanged and an IPv4-only peer that knows nothing of
//! this still decodes them (`addr` carries a family). IPv6 needs no NAT
//! traversal: behind a stateful firewall (address- and port-dependent
//! filtering) the mapping is the address itself, and a simultaneous open
//! passes both firewalls. So two nodes that both have IPv6 punch (the
//! IPv6 candidates first, the IPv4 targets a short delay later: happy
//! eyeballs, RFC 8305), whatever their IPv4 NATs; two that share no family
//! relay.

use crate::signal::Profile;
use crate::strategy::Strategy;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Which families a node can send and receive on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    pub const V4: Families = Families { v4: true, v6: false };
    pub const V6: Families = Families { v4: false, v6: true };
    pub const DUAL: Families = Families { v4: true, v6: true };

    pub fn both(self, other: Families) -> Families {
        Families { v4: self.v4 && other.v4, v6: self.v6 && other.v6 }
    }

    pub fn none(self) -> bool {
        !self.v4 && !self.v6
    }

    pub fn has(self, a: &SocketAddr) -> bool {
        if a.is_ipv6() {
            self.v6
        } else {
            self.v4
        }
    }
}

/// An IPv6 address a peer may reach us at from anywhere: not loopback,
/// unspecified, multicast, link-local (fe80::/10), unique-local
/// (fc00::/7) or an IPv4 address in IPv6 form. (`Ipv6Addr::is_global` is
/// not stable; documentation space, 2001:db8::/32, counts as global here,
/// which the lab uses.)
pub fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xfe00) == 0xfc00
        || ip.to_ipv4_mapped().is_some()
        || s[..6] == [0; 6])
}

fn global(a: &SocketAddr) -> bool {
    match a.ip() {
        IpAddr::V6(v6) => is_global_v6(v6),
        IpAddr::V4(_) => false,
    }
}

/// The families the node that signalled `p` has: those of its public
/// address and candidates (a node offers IPv6 candidates only from an IPv6
/// socket: its global addresses, or the one it is bound to). A profile
/// naming no address at all is IPv4: what every node signalled before
/// IPv6.
pub fn families(p: &Profile) -> Families {
    let addrs = p.info.public_addr.iter().chain(&p.candidates);
    let mut f = Families::default();
    for a in addrs {
        match a.ip() {
            IpAddr::V4(_) => f.v4 = true,
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() && !v6.is_unspecified() => f.v6 = true,
            IpAddr::V6(_) => {}
        }
    }
    if f.none() {
        Families::V4
    } else {
        f
    }
}

/// The strategy once families are known, given the table's `s` for the
/// pair's IPv4 profiles: no family in common, relay; both have IPv6, punch
/// (a plain dial or a birthday probe would skip the IPv6 path, and the
/// table's relay for two symmetric NATs says nothing of IPv6), unless the
/// table already punches (its predicted IPv4 ports stay among the
/// targets). Both sides compute this from the same two profiles.
pub fn with_families(s: Strategy, a: &Profile, b: &Profile) -> Strategy {
    let common = families(a).both(families(b));
    if common.none() {
        return Strategy::Relay;
    }
    match s {
        Strategy::Direct { .. } | Strategy::ConnectionReversal { .. } | Strategy::BirthdayProbing { .. } | Strategy::Relay if common.v6 => {
            Strategy::SimplePunch
        }
        s => s,
    }
}

/// A punch's targets for a node with `ours`: those of a family we have,
/// IPv6 first (in their order), then IPv4 (in theirs). The first target is
/// the one the initiator dials early, so a working IPv6 path is the one
/// the connection comes up on.
pub fn happy_order(targets: Vec<SocketAddr>, ours: Families) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = targets.into_iter().filter(|t| ours.has(t)).partition(|t| t.is_ipv6());
    v6.into_iter().chain(v4).collect()
}

/// How long IPv4 paths wait behind IPv6 ones in a punch: about one round
/// trip between the peers, so IPv6 answers first when it works, within
/// RFC 8305's range (at least 50 ms for a fast LAN, at most 250 ms so a
/// dead IPv6 path costs little).
pub fn happy_eyeballs_delay(pair_rtt: Duration) -> Duration {
    pair_rtt.clamp(HAPPY_EYEBALLS_MIN, HAPPY_EYEBALLS_MAX)
}

pub const HAPPY_EYEBALLS_MIN: Duration = Duration::from_millis(50);
pub const HAPPY_EYEBALLS_MAX: Duration = Duration::from_millis(250);

/// Whether a peer's candidate is kept although the rendezvous did not see
/// the peer at its IP: a global IPv6 address (no NAT in front of it, and
/// the rendezvous saw the peer over IPv4 or at another of its addresses).
/// Like any claimed address it gets one punch request until it answers
/// (`punch::Verify`), so a hostile peer naming a third party's buys one
/// 84-byte request per candidate.
pub fn kept_claim(c: &SocketAddr) -> bool {
    global(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{decide, public_profile};
    use crate::signal::FLAG_RELAY_ONLY;
    use crate::strategy::{Dialer, Side};

    fn profile(public: Option<&str>, candidates: &[&str]) -> Profile {
        let mut info = public_profile();
        info.public_addr = public.map(|p| p.parse().unwrap());
        Profile { info, local_port: 0, answer_port: 0, alloc_base: 0, candidates: candidates.iter().map(|c| c.parse().unwrap()).collect(), relays: Vec::new() }
    }

    #[test]
    fn families_come_from_public_address_and_candidates() {
        assert_eq!(families(&profile(None, &[])), Families::V4);
        assert_eq!(families(&profile(Some("198.51.100.1:1"), &["10.0.0.2:1"])), Families::V4);
        assert_eq!(families(&profile(Some("198.51.100.1:1"), &["[2001:db8::2]:7"])), Families::DUAL);
        assert_eq!(families(&profile(Some("[2001:db8::2]:7"), &["[2001:db8::2]:7"])), Families::V6);
        // A node bound to IPv6 loopback has IPv6; a mapped address is IPv4.
        assert_eq!(families(&profile(None, &["[::1]:7"])), Families::V6);
        assert_eq!(families(&profile(None, &["[::ffff:192.0.2.1]:7"])), Families::V4);
        // Link-local, unique-local, loopback and mapped addresses are no
        // IPv6 a peer elsewhere reaches: not kept from a peer that did not
        // show up there.
        for a in ["[fe80::1]:7", "[fd00::1]:7", "[::1]:7", "[::ffff:192.0.2.1]:7"] {
            assert!(!kept_claim(&a.parse().unwrap()), "{a}");
        }
        assert!(kept_claim(&"[2001:db8::9]:7".parse().unwrap()));
        assert!(!kept_claim(&"203.0.113.9:7".parse().unwrap()));
    }

    #[test]
    fn no_common_family_relays_and_common_ipv6_punches() {
        let v4 = profile(Some("198.51.100.1:1"), &[]);
        let v6 = profile(Some("[2001:db8:1::2]:7"), &["[2001:db8:1::2]:7"]);
        let dual = profile(Some("198.51.100.2:1"), &["[2001:db8:2::2]:9"]);
        // Both public: the table dials directly; with IPv6 on both sides
        // they punch (which covers IPv4 too), across families they relay.
        assert_eq!(decide(&v4, &v4, 0, false), Strategy::Direct { dialer: Dialer::Either });
        assert_eq!(decide(&v4, &v6, 0, false), Strategy::Relay);
        assert_eq!(decide(&v6, &v4, 0, false), Strategy::Relay);
        assert_eq!(decide(&v6, &v6, 0, false), Strategy::SimplePunch);
        assert_eq!(decide(&dual, &v6, 0, false), Strategy::SimplePunch);
        assert_eq!(decide(&dual, &dual, 0, false), Strategy::SimplePunch);
        assert_eq!(decide(&dual, &v4, 0, false), Strategy::Direct { dialer: Dialer::Either });
        assert_eq!(decide(&dual, &dual, FLAG_RELAY_ONLY, false), Strategy::Relay);
        // A punching strategy keeps its predictions; the rest punch.
        assert_eq!(with_families(Strategy::PredictContiguity, &dual, &dual), Strategy::PredictContiguity);
        assert_eq!(with_families(Strategy::BirthdayProbing { hard: Side::A }, &dual, &dual), Strategy::SimplePunch);
        assert_eq!(with_families(Strategy::Relay, &dual, &dual), Strategy::SimplePunch);
        assert_eq!(with_families(Strategy::BirthdayProbing { hard: Side::A }, &dual, &v4), Strategy::BirthdayProbing { hard: Side::A });
    }

    #[test]
    fn ipv6_targets_go_first_and_missing_families_are_dropped() {
        let t: Vec<SocketAddr> = ["198.51.100.1:1", "[2001:db8::1]:2", "10.0.0.1:3", "[2001:db8::2]:4"].iter().map(|a| a.parse().unwrap()).collect();
        let order = |f| happy_order(t.clone(), f).iter().map(|a| a.port()).collect::<Vec<_>>();
        assert_eq!(order(Families::DUAL), vec![2, 4, 1, 3]);
        assert_eq!(order(Families::V4), vec![1, 3]);
        assert_eq!(order(Families::V6), vec![2, 4]);
    }

    #[test]
    fn ipv4_waits_about_a_round_trip_within_bounds() {
        assert_eq!(happy_eyeballs_delay(Duration::from_millis(1)), Duration::from_millis(50));
        assert_eq!(happy_eyeballs_delay(Duration::from_millis(120)), Duration::from_millis(120));
        assert_eq!(happy_eyeballs_delay(Duration::from_secs(2)), Duration::from_millis(250));
    }
}
