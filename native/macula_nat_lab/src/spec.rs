//! Lab specification (JSON-able) and NAT kind parsing.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Whole lab: an "internet" segment with observers, relays and public hosts,
/// plus sites (one host behind one NAT router each).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    /// Lab name: `[a-z0-9_]{1,16}`; namespaces are `ml-<name>-<host>`.
    pub name: String,
    /// Observer hosts (two internet IPs each, for RFC 5780 servers).
    #[serde(default)]
    pub observers: Vec<String>,
    /// Relay hosts (one internet IP each).
    #[serde(default)]
    pub relays: Vec<String>,
    /// Plain public hosts (one internet IP each).
    #[serde(default)]
    pub public: Vec<String>,
    /// Sites: a host behind a NAT router (or not NATed at all).
    #[serde(default)]
    pub sites: Vec<SiteSpec>,
    /// Seed for the userspace engines' random numbers (port allocation, loss, jitter).
    #[serde(default)]
    pub seed: Option<u64>,
    /// The internet segment is a router (one hop, as an ISP's is) instead
    /// of a flat bridge: a packet from one site to another crosses a router
    /// between their NATs, so a TTL-limited packet can leave its own NAT
    /// and die before the peer's.
    #[serde(default)]
    pub routed_internet: bool,
    /// Carrier-grade NATs (RFC 6598 shared space 100.64.0.0/10): carrier k
    /// (1-based) is a router on the internet with the LAN 100.64.k.0/24;
    /// sites name it in [`SiteSpec::upstream`] to sit behind it (double NAT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carriers: Vec<CarrierSpec>,
    /// IPv6 as well: the internet segment (2001:db8::/64) and its observers,
    /// relays and public hosts get global IPv6 addresses, and sites with
    /// [`SiteSpec::ipv6`] a global /64 behind a stateful firewall (no NAT).
    /// Off (the default): nothing IPv6 is configured, as before.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ipv6: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A carrier-grade NAT between some sites' routers and the internet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierSpec {
    /// Carrier name; its router namespace is `ml-<lab>-<name>`.
    pub name: String,
    /// `user:<mapping>-<filtering>-<allocation>` (typical CGNAT: `user:ei-pd-rd`),
    /// or `kernel:port_restricted_cone` / `kernel:symmetric`.
    pub nat: NatKind,
    /// Hairpinning between the carrier's customers (userspace engine only).
    #[serde(default)]
    pub hairpin: bool,
    /// See [`SiteSpec::plain_router`].
    #[serde(default)]
    pub plain_router: bool,
    /// Binding (mapping) idle timeout; default 120 s.
    #[serde(default)]
    pub binding_timeout_s: Option<u64>,
}

impl CarrierSpec {
    pub fn new(name: &str, nat: &str) -> Result<CarrierSpec> {
        Ok(CarrierSpec {
            name: name.into(),
            nat: nat.parse()?,
            hairpin: false,
            plain_router: false,
            binding_timeout_s: None,
        })
    }
    /// The carrier's router as a site router (what its NAT is built from).
    pub fn as_site(&self) -> SiteSpec {
        SiteSpec {
            name: self.name.clone(),
            nat: self.nat,
            hairpin: self.hairpin,
            plain_router: self.plain_router,
            binding_timeout_s: self.binding_timeout_s,
            ..SiteSpec::new(&self.name, "none").unwrap()
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Site name; the site host is called `<name>`, its router `<name>-nat`.
    pub name: String,
    /// `none`, `kernel:<full_cone|restricted_cone|port_restricted_cone|symmetric>`,
    /// `user:<mapping>-<filtering>-<allocation>[:delta=N]`.
    #[serde(default)]
    pub nat: NatKind,
    /// One-way delay added in each direction by the userspace engine (for
    /// kernel NATs: by a pass-through engine hop between host and router).
    #[serde(default)]
    pub delay_ms: f64,
    /// Uniform jitter (+/- jitter_ms) on top of delay_ms.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Loss probability in each direction, 0..1.
    #[serde(default)]
    pub loss: f64,
    /// Binding (mapping) idle timeout; default 120 s.
    #[serde(default)]
    pub binding_timeout_s: Option<u64>,
    /// Hairpinning (userspace engine only).
    #[serde(default)]
    pub hairpin: bool,
    /// A plain router: masquerade/snat and no rule on its input chain (DIY
    /// routers, Docker hosts, VPSs whose INPUT policy is accept). An
    /// unsolicited inbound packet it refuses still leaves a confirmed
    /// conntrack entry (remote -> public port), so a later outbound packet
    /// from that public port to that remote leaves from another port.
    /// Kernel NATs: the input chain's drop rule is left out. Userspace
    /// engine: the same conntrack behaviour is modelled.
    #[serde(default)]
    pub plain_router: bool,
    /// More hosts on the site's LAN (198.18.i.10, .11, ...), each its own
    /// namespace, behind the same router (port overloading on kernel NATs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Where the site's router WAN is: the internet (None), a carrier's LAN
    /// (carrier name: double NAT), or another site's LAN (site name: a
    /// Docker-style host on a home LAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Dual stack (needs [`LabSpec::ipv6`]): the site LAN also gets a global
    /// IPv6 /64 (2001:db8:1:<i>::/64), routed without NAT through a stateful
    /// firewall on the router (outbound allowed, inbound only
    /// established/related: address-and-port-dependent filtering), next
    /// to the IPv4 NAT. A `none` site's host gets an internet IPv6 address.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ipv6: bool,
    /// IPv6-only site (implies `ipv6`): the site's hosts get no IPv4
    /// address or route (the router keeps its IPv4 NAT, serving nobody).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ipv6_only: bool,
}

impl SiteSpec {
    pub fn new(name: &str, nat: &str) -> Result<SiteSpec> {
        Ok(SiteSpec {
            name: name.to_string(),
            nat: nat.parse()?,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            loss: 0.0,
            binding_timeout_s: None,
            hairpin: false,
            plain_router: false,
            extra_hosts: vec![],
            upstream: None,
            ipv6: false,
            ipv6_only: false,
        })
    }
    /// The site's hosts have global IPv6 addresses.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6 || self.ipv6_only
    }
    pub fn has_impairment(&self) -> bool {
        self.delay_ms > 0.0 || self.jitter_ms > 0.0 || self.loss > 0.0
    }
    pub fn binding_timeout(&self) -> u64 {
        self.binding_timeout_s.unwrap_or(120)
    }
}

impl LabSpec {
    pub fn new(name: &str) -> LabSpec {
        LabSpec {
            name: name.into(),
            observers: vec![],
            relays: vec![],
            public: vec![],
            sites: vec![],
            seed: None,
            routed_internet: false,
            carriers: vec![],
            ipv6: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_name("lab name", &self.name)?;
        let mut seen = std::collections::BTreeSet::new();
        let all = self
            .observers
            .iter()
            .chain(&self.relays)
            .chain(&self.public)
            .chain(self.sites.iter().map(|s| &s.name))
            .chain(self.sites.iter().flat_map(|s| &s.extra_hosts))
            .chain(self.carriers.iter().map(|c| &c.name));
        for h in all {
            check_name("host name", h)?;
            if h == "inet" {
                bail!("host name 'inet' is reserved");
            }
            if !seen.insert(h.clone()) {
                bail!("duplicate host name {h}");
            }
        }
        for s in &self.sites {
            if !(0.0..=1.0).contains(&s.loss) {
                bail!("site {}: loss must be within 0..1", s.name);
            }
            if s.delay_ms < 0.0 || s.jitter_ms < 0.0 {
                bail!("site {}: delay/jitter must be >= 0", s.name);
            }
            if let NatKind::Kernel(_) = s.nat {
                // Delay/jitter/loss on a kernel NAT come from a pass-through
                // engine hop in front of it (no netem on this kernel).
                if s.hairpin {
                    bail!("site {}: hairpin is only implemented by the userspace engine", s.name);
                }
            }
            if s.has_ipv6() {
                if !self.ipv6 {
                    bail!("site {}: ipv6 needs \"ipv6\": true on the lab", s.name);
                }
                if s.has_impairment() {
                    bail!("site {}: ipv6 on a site with delay/jitter/loss is not supported (they are IPv4-only)", s.name);
                }
                if s.upstream.is_some() {
                    bail!("site {}: ipv6 on a nested site (upstream) is not supported", s.name);
                }
            }
        }
        self.validate_nesting()
    }

    /// Extra hosts, carriers and upstreams (see [`SiteSpec::upstream`]).
    fn validate_nesting(&self) -> Result<()> {
        for c in &self.carriers {
            match c.nat {
                NatKind::User(_) => {}
                NatKind::Kernel(KernelNat::PortRestrictedCone | KernelNat::Symmetric) => {
                    if c.hairpin {
                        bail!("carrier {}: hairpin is only implemented by the userspace engine", c.name);
                    }
                }
                NatKind::Kernel(k) => bail!(
                    "carrier {}: kernel:{} is refused for carriers (its dnat targets a single host); \
                     use a user:* engine or kernel:port_restricted_cone|symmetric",
                    c.name,
                    k.as_str()
                ),
                NatKind::None => bail!("carrier {}: a carrier needs a NAT (user:* or kernel:*)", c.name),
            }
        }
        if self.carriers.len() > 255 {
            bail!("too many carriers (at most 255)");
        }
        let site = |n: &str| self.sites.iter().find(|s| s.name == n);
        let is_carrier = |n: &str| self.carriers.iter().any(|c| c.name == n);
        // What a site's LAN must allow when it has members other than its host.
        let multi_member = |s: &SiteSpec, what: &str| -> Result<()> {
            match s.nat {
                NatKind::None => bail!("site {}: {what} needs a NAT router (nat none has no LAN)", s.name),
                NatKind::Kernel(k @ (KernelNat::FullCone | KernelNat::RestrictedCone)) => bail!(
                    "site {}: {what} refused on a kernel:{} router (its dnat targets the single site host)",
                    s.name,
                    k.as_str()
                ),
                NatKind::Kernel(_) if s.has_impairment() => bail!(
                    "site {}: {what} refused on a kernel NAT with delay/jitter/loss (the delay hop serves the single site host)",
                    s.name
                ),
                _ => Ok(()),
            }
        };
        for s in &self.sites {
            if !s.extra_hosts.is_empty() {
                multi_member(s, "extra_hosts")?;
                if s.extra_hosts.len() > 90 {
                    bail!("site {}: at most 90 extra hosts", s.name);
                }
            }
            let Some(up) = &s.upstream else { continue };
            if s.nat == NatKind::None {
                bail!("site {}: upstream needs a NAT router (nat none is on the internet itself)", s.name);
            }
            if up == &s.name {
                bail!("site {}: upstream is the site itself", s.name);
            }
            if is_carrier(up) {
                continue;
            }
            let Some(u) = site(up) else {
                bail!("site {}: unknown upstream {up:?} (neither a carrier nor a site)", s.name);
            };
            multi_member(u, &format!("downstream site {}", s.name))?;
            // Follow the chain: it must end at the internet or a carrier.
            let mut seen = vec![s.name.as_str()];
            let mut cur = u;
            loop {
                if seen.contains(&cur.name.as_str()) {
                    bail!("site {}: upstream cycle {} -> {}", s.name, seen.join(" -> "), cur.name);
                }
                seen.push(&cur.name);
                match &cur.upstream {
                    Some(n) => match site(n) {
                        Some(next) => cur = next,
                        None => break,
                    },
                    None => break,
                }
            }
        }
        Ok(())
    }
}

fn check_name(what: &str, n: &str) -> Result<()> {
    if n.is_empty()
        || n.len() > 16
        || !n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("{what} {n:?} must match [a-z0-9_]{{1,16}}");
    }
    Ok(())
}

/// Mapping or filtering dependency (NATCracker vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dep {
    /// Endpoint independent.
    Ei,
    /// Host (address) dependent.
    Hd,
    /// Port (address-and-port) dependent.
    Pd,
}

/// Port allocation policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alloc {
    /// Port preservation (keep the internal port when free).
    Pp,
    /// Port contiguity (previous allocation + delta).
    Pc,
    /// Random.
    Rd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserNat {
    pub mapping: Dep,
    pub filtering: Dep,
    pub allocation: Alloc,
    /// Contiguity delta for `Alloc::Pc` (default 1).
    pub delta: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelNat {
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
}

impl KernelNat {
    pub const ALL: [KernelNat; 4] = [
        KernelNat::FullCone,
        KernelNat::RestrictedCone,
        KernelNat::PortRestrictedCone,
        KernelNat::Symmetric,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            KernelNat::FullCone => "full_cone",
            KernelNat::RestrictedCone => "restricted_cone",
            KernelNat::PortRestrictedCone => "port_restricted_cone",
            KernelNat::Symmetric => "symmetric",
        }
    }
    /// (mapping, filtering) as RFC 4787 would classify it.
    pub fn behaviour(self) -> (Dep, Dep) {
        match self {
            KernelNat::FullCone => (Dep::Ei, Dep::Ei),
            KernelNat::RestrictedCone => (Dep::Ei, Dep::Hd),
            KernelNat::PortRestrictedCone => (Dep::Ei, Dep::Pd),
            KernelNat::Symmetric => (Dep::Pd, Dep::Pd),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum NatKind {
    #[default]
    None,
    Kernel(KernelNat),
    User(UserNat),
}

impl NatKind {
    /// All 27 userspace types, PC with the given delta.
    pub fn all_user(delta: u16) -> Vec<NatKind> {
        let deps = [Dep::Ei, Dep::Hd, Dep::Pd];
        let allocs = [Alloc::Pp, Alloc::Pc, Alloc::Rd];
        let mut v = vec![];
        for m in deps {
            for f in deps {
                for a in allocs {
                    v.push(NatKind::User(UserNat {
                        mapping: m,
                        filtering: f,
                        allocation: a,
                        delta: if a == Alloc::Pc { delta } else { 1 },
                    }));
                }
            }
        }
        v
    }
}

impl Dep {
    pub fn as_str(self) -> &'static str {
        match self {
            Dep::Ei => "ei",
            Dep::Hd => "hd",
            Dep::Pd => "pd",
        }
    }
    fn parse(s: &str) -> Result<Dep> {
        Ok(match s {
            "ei" => Dep::Ei,
            "hd" | "ad" => Dep::Hd,
            "pd" | "apd" => Dep::Pd,
            _ => bail!("unknown dependency {s:?} (ei|hd|pd)"),
        })
    }
}

impl Alloc {
    pub fn as_str(self) -> &'static str {
        match self {
            Alloc::Pp => "pp",
            Alloc::Pc => "pc",
            Alloc::Rd => "rd",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatKind::None => write!(f, "none"),
            NatKind::Kernel(k) => write!(f, "kernel:{}", k.as_str()),
            NatKind::User(u) => {
                write!(
                    f,
                    "user:{}-{}-{}",
                    u.mapping.as_str(),
                    u.filtering.as_str(),
                    u.allocation.as_str()
                )?;
                if u.allocation == Alloc::Pc && u.delta != 1 {
                    write!(f, ":delta={}", u.delta)?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for NatKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<NatKind> {
        let s = s.trim().to_ascii_lowercase();
        if s == "none" {
            return Ok(NatKind::None);
        }
        if let Some(k) = s.strip_prefix("kernel:") {
            let k = match k {
                "full_cone" => KernelNat::FullCone,
                "restricted_cone" => KernelNat::RestrictedCone,
                "port_restricted_cone" => KernelNat::PortRestrictedCone,
                "symmetric" => KernelNat::Symmetric,
                _ => bail!("unknown kernel nat {k:?}"),
            };
            return Ok(NatKind::Kernel(k));
        }
        if let Some(u) = s.strip_prefix("user:") {
            let (main, opts) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            let parts: Vec<&str> = main.split('-').collect();
            if parts.len() != 3 {
                bail!("user nat must be user:<mapping>-<filtering>-<allocation>, got {s:?}");
            }
            let allocation = match parts[2] {
                "pp" => Alloc::Pp,
                "pc" => Alloc::Pc,
                "rd" => Alloc::Rd,
                a => bail!("unknown allocation {a:?} (pp|pc|rd)"),
            };
            let mut delta = 1u16;
            if let Some(o) = opts {
                for kv in o.split(',') {
                    match kv.split_once('=') {
                        Some(("delta", v)) => {
                            delta = v.parse().context("delta")?;
                            if delta == 0 {
                                bail!("delta must be >= 1");
                            }
                        }
                        _ => bail!("unknown user nat option {kv:?}"),
                    }
                }
            }
            return Ok(NatKind::User(UserNat {
                mapping: Dep::parse(parts[0])?,
                filtering: Dep::parse(parts[1])?,
                allocation,
                delta,
            }));
        }
        bail!("unknown nat kind {s:?}")
    }
}

impl Serialize for NatKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for NatKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<NatKind, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parse_roundtrip() {
        for k in NatKind::all_user(2) {
            let s = k.to_string();
            assert_eq!(s.parse::<NatKind>().unwrap(), k, "{s}");
        }
        for k in KernelNat::ALL {
            let n = NatKind::Kernel(k);
            assert_eq!(n.to_string().parse::<NatKind>().unwrap(), n);
        }
        let k: NatKind = "user:pd-hd-pc:delta=2".parse().unwrap();
        assert_eq!(
            k,
            NatKind::User(UserNat {
                mapping: Dep::Pd,
                filtering: Dep::Hd,
                allocation: Alloc::Pc,
                delta: 2
            })
        );
        assert!("user:xx-ei-pp".parse::<NatKind>().is_err());
        let spec: LabSpec = serde_json::from_str(
            r#"{"name":"t1","observers":["obs"],"sites":[{"name":"a","nat":"kernel:symmetric"}]}"#,
        )
        .unwrap();
        spec.validate().unwrap();
    }

    fn lab(json: &str) -> Result<LabSpec> {
        Ok(serde_json::from_str(json)?)
    }

    fn refused(json: &str, needle: &str) {
        let e = lab(json).and_then(|s| s.validate()).expect_err(json).to_string();
        assert!(e.contains(needle), "{json}: {e}");
    }

    #[test]
    fn nesting_validation() {
        // Accepted: extra hosts on a port-restricted router, a Docker-style
        // host, a carrier chain site -> site -> carrier.
        lab(r#"{"name":"ok","carriers":[{"name":"cg","nat":"user:ei-pd-rd","hairpin":true}],
            "sites":[{"name":"home","nat":"kernel:port_restricted_cone","plain_router":true,"extra_hosts":["tv"],"upstream":"cg"},
                     {"name":"ctr","nat":"kernel:port_restricted_cone","plain_router":true,"upstream":"home"},
                     {"name":"u","nat":"user:ei-ei-pp","extra_hosts":["u2","u3"]}]}"#)
        .unwrap()
        .validate()
        .unwrap();
        // Old specs have none of the new fields, and serialize without them.
        let old = lab(r#"{"name":"o","sites":[{"name":"a","nat":"kernel:symmetric"}]}"#).unwrap();
        let j = serde_json::to_string(&old).unwrap();
        assert!(!j.contains("carriers") && !j.contains("extra_hosts") && !j.contains("upstream"), "{j}");
        refused(r#"{"name":"x","sites":[{"name":"a","nat":"kernel:symmetric","upstream":"nope"}]}"#, "unknown upstream");
        refused(r#"{"name":"x","sites":[{"name":"a","nat":"kernel:symmetric","upstream":"a"}]}"#, "itself");
        refused(
            r#"{"name":"x","sites":[{"name":"a","nat":"user:ei-ei-pp","upstream":"b"},{"name":"b","nat":"user:ei-ei-pp","upstream":"c"},
                {"name":"c","nat":"user:ei-ei-pp","upstream":"a"}]}"#,
            "cycle",
        );
        refused(r#"{"name":"x","carriers":[{"name":"c","nat":"kernel:full_cone"}]}"#, "refused for carriers");
        refused(r#"{"name":"x","carriers":[{"name":"c","nat":"kernel:restricted_cone"}]}"#, "refused for carriers");
        refused(r#"{"name":"x","carriers":[{"name":"c","nat":"none"}]}"#, "needs a NAT");
        refused(r#"{"name":"x","carriers":[{"name":"c","nat":"kernel:symmetric","hairpin":true}]}"#, "hairpin");
        refused(r#"{"name":"x","sites":[{"name":"a","nat":"kernel:full_cone","extra_hosts":["b"]}]}"#, "single site host");
        refused(r#"{"name":"x","sites":[{"name":"a","nat":"kernel:restricted_cone","extra_hosts":["b"]}]}"#, "single site host");
        refused(
            r#"{"name":"x","sites":[{"name":"a","nat":"kernel:port_restricted_cone","delay_ms":5,"extra_hosts":["b"]}]}"#,
            "delay",
        );
        refused(r#"{"name":"x","sites":[{"name":"a","nat":"none","extra_hosts":["b"]}]}"#, "needs a NAT router");
        refused(
            r#"{"name":"x","sites":[{"name":"a","nat":"kernel:full_cone"},{"name":"b","nat":"kernel:symmetric","upstream":"a"}]}"#,
            "single site host",
        );
        refused(r#"{"name":"x","sites":[{"name":"a","nat":"none","upstream":"b"},{"name":"b","nat":"kernel:symmetric"}]}"#, "upstream needs");
        refused(r#"{"name":"x","sites":[{"name":"a","nat":"kernel:symmetric","extra_hosts":["a"]}]}"#, "duplicate");
        refused(r#"{"name":"x","carriers":[{"name":"a","nat":"user:ei-pd-rd"}],"sites":[{"name":"a","nat":"kernel:symmetric"}]}"#, "duplicate");
    }
}
