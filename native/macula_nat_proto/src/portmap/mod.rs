//! Port mapping protocols, sans-IO: NAT-PMP (RFC 6886) and PCP (RFC 6887)
//! codecs, plus the timing decisions the runtime client follows
//! (retransmission, renewal at half the lifetime). UPnP IGD is HTTP/SOAP
//! and lives in the runtime crate (`igd-next`).

pub mod natpmp;
pub mod pcp;

use std::time::Duration;

/// The port NAT-PMP and PCP servers listen on (RFC 6886 §3, RFC 6887 §19.1).
pub const SERVER_PORT: u16 = 5351;

/// A port mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UPnP Internet Gateway Device (v1/v2): SSDP + SOAP.
    Upnp,
    /// NAT-PMP, RFC 6886.
    NatPmp,
    /// PCP, RFC 6887.
    Pcp,
}

impl Protocol {
    /// The order a client tries them in: PCP (the newest, carries the
    /// external address), NAT-PMP (its predecessor, same port), UPnP IGD.
    pub const ALL: [Protocol; 3] = [Protocol::Pcp, Protocol::NatPmp, Protocol::Upnp];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Upnp => "upnp",
            Protocol::NatPmp => "natpmp",
            Protocol::Pcp => "pcp",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "upnp" | "igd" | "upnp_igd" => Some(Protocol::Upnp),
            "natpmp" | "nat_pmp" | "nat-pmp" | "pmp" => Some(Protocol::NatPmp),
            "pcp" => Some(Protocol::Pcp),
            _ => None,
        }
    }
}

/// The lifetime a client asks for, seconds (RFC 6886 §3.3 recommends
/// 7200; PCP servers clamp to their own bounds, miniupnpd 120..86400).
pub const REQUESTED_LIFETIME_S: u32 = 7200;

/// When to renew a mapping granted for `lifetime_s`: at half of it (RFC 6886
/// §3.3, RFC 6887 §11.2.1), never sooner than 1 s.
pub fn renew_after(lifetime_s: u32) -> Duration {
    Duration::from_millis((lifetime_s as u64 * 1000 / 2).max(1000))
}

/// Retransmission schedule for a NAT-PMP/PCP request: the wait after
/// attempt `n` (0-based), doubling from 250 ms (RFC 6886 §3.1; RFC 6887
/// §8.1.1 starts at 3 s with jitter; a gateway on the LAN answers in
/// milliseconds, so we stay with NAT-PMP's schedule for both), `None` once
/// `attempts` were sent.
pub fn retransmit_wait(n: u32, attempts: u32) -> Option<Duration> {
    (n < attempts).then(|| Duration::from_millis(250u64 << n.min(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_is_half_the_lifetime() {
        assert_eq!(renew_after(7200), Duration::from_secs(3600));
        assert_eq!(renew_after(121), Duration::from_millis(60_500));
        assert_eq!(renew_after(0), Duration::from_secs(1));
        assert_eq!(renew_after(1), Duration::from_secs(1));
    }

    #[test]
    fn retransmission_doubles_then_stops() {
        let w: Vec<_> = (0..5).map(|n| retransmit_wait(n, 4)).collect();
        assert_eq!(w, vec![Some(Duration::from_millis(250)), Some(Duration::from_millis(500)), Some(Duration::from_secs(1)), Some(Duration::from_secs(2)), None]);
        assert_eq!(retransmit_wait(0, 0), None);
        assert!(retransmit_wait(60, 100).is_some());
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::parse(p.name()), Some(p));
        }
        assert_eq!(Protocol::parse("nat-pmp"), Some(Protocol::NatPmp));
        assert_eq!(Protocol::parse("igd"), Some(Protocol::Upnp));
        assert_eq!(Protocol::parse("ssh"), None);
    }
}
