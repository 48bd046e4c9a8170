//! NAT behaviour vocabulary shared by the whole project.
//!
//! Mapping and filtering follow RFC 4787 / RFC 5780 (endpoint-independent,
//! address-dependent, address-and-port-dependent). Allocation follows the
//! NATCracker classification (Roberts et al.): port preservation, port
//! contiguity, random. Mapping x allocation x filtering gives the 27
//! NATCracker types that the traversal strategy table is keyed on.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// How the NAT reuses a public mapping for one local socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mapping {
    /// Endpoint-independent: one public address for all destinations.
    Ei,
    /// Host (address)-dependent: a new mapping per destination IP.
    Hd,
    /// Port (address-and-port)-dependent: a new mapping per destination IP:port.
    Pd,
}

/// Which inbound packets the NAT lets through to a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Filtering {
    /// Anyone may send to the mapping.
    Ei,
    /// Only IPs the mapping has sent to.
    Hd,
    /// Only IP:ports the mapping has sent to.
    Pd,
}

/// How the NAT picks the public port of a new mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Allocation {
    /// Port preservation: public port == local port.
    Pp,
    /// Port contiguity: each new mapping is the previous one plus a delta.
    Pc,
    /// Random.
    Rd,
}

/// How much the detection trusts its own verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Confidence {
    Low,
    Medium,
    High,
}

impl Mapping {
    pub const ALL: [Mapping; 3] = [Mapping::Ei, Mapping::Hd, Mapping::Pd];
}
impl Filtering {
    pub const ALL: [Filtering; 3] = [Filtering::Ei, Filtering::Hd, Filtering::Pd];
}
impl Allocation {
    pub const ALL: [Allocation; 3] = [Allocation::Pp, Allocation::Pc, Allocation::Rd];
}

/// One of the 27 NATCracker NAT types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatType {
    pub mapping: Mapping,
    pub allocation: Allocation,
    pub filtering: Filtering,
}

impl NatType {
    /// All 27 combinations, mapping-major, in a stable order.
    pub fn all() -> impl Iterator<Item = NatType> {
        Mapping::ALL.into_iter().flat_map(|mapping| {
            Allocation::ALL.into_iter().flat_map(move |allocation| {
                Filtering::ALL.into_iter().map(move |filtering| NatType { mapping, allocation, filtering })
            })
        })
    }
}

impl fmt::Display for NatType {
    /// NATCracker notation, e.g. `EI-PP-PD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = match self.mapping {
            Mapping::Ei => "EI",
            Mapping::Hd => "HD",
            Mapping::Pd => "PD",
        };
        let a = match self.allocation {
            Allocation::Pp => "PP",
            Allocation::Pc => "PC",
            Allocation::Rd => "RD",
        };
        let fl = match self.filtering {
            Filtering::Ei => "EI",
            Filtering::Hd => "HD",
            Filtering::Pd => "PD",
        };
        write!(f, "{m}-{a}-{fl}")
    }
}

/// What detection learned about the NAT in front of one local socket.
///
/// Deliberately carries no timestamp: the sans-IO layer has no clock. The
/// runtime stores `detected_at` next to it (e.g. for the cache policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatProfile {
    pub mapping: Mapping,
    pub filtering: Filtering,
    pub allocation: Allocation,
    /// Server-reflexive address of the primary socket as seen by the first
    /// RFC 5780 observer (or the first observer that answered).
    pub public_addr: SocketAddr,
    /// Port delta between consecutive fresh mappings, when `allocation == Pc`.
    pub port_delta: Option<i32>,
    pub confidence: Confidence,
    /// Not measured by detection (needs minutes of idle time); the runtime
    /// fills it from keepalive experience.
    pub mapping_lifetime: Option<Duration>,
    /// Not measured by detection yet.
    pub hairpin: Option<bool>,
    /// The public address equals the local address: no NAT (filtering is
    /// still measured because a firewall can filter).
    pub no_nat: bool,
}

impl NatProfile {
    pub fn nat_type(&self) -> NatType {
        NatType { mapping: self.mapping, allocation: self.allocation, filtering: self.filtering }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn there_are_27_distinct_types() {
        let all: Vec<_> = NatType::all().collect();
        assert_eq!(all.len(), 27);
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 27);
        let names: HashSet<String> = all.iter().map(|t| t.to_string()).collect();
        assert_eq!(names.len(), 27);
        assert_eq!(all[0].to_string(), "EI-PP-EI");
        assert_eq!(all[26].to_string(), "PD-RD-PD");
    }

    #[test]
    fn confidence_orders_low_to_high() {
        assert!(Confidence::Low < Confidence::Medium && Confidence::Medium < Confidence::High);
    }

    #[test]
    fn profile_reports_its_type() {
        let p = NatProfile {
            mapping: Mapping::Hd,
            filtering: Filtering::Pd,
            allocation: Allocation::Pc,
            public_addr: "192.0.2.1:4000".parse().unwrap(),
            port_delta: Some(2),
            confidence: Confidence::High,
            mapping_lifetime: None,
            hairpin: None,
            no_nat: false,
        };
        assert_eq!(p.nat_type().to_string(), "HD-PC-PD");
    }
}
