//! Building, describing, using and tearing down labs.

use crate::engine::{EngineConfig, EngineStats};
use crate::netns::{self, command_in, destroy_namespaces, ip_batch, sysctls};
use crate::spec::{KernelNat, LabSpec, NatKind, SiteSpec};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const STATE_DIR: &str = "/run/macula-lab";
/// Internet segment: flat L2 (a bridge in `ml-<lab>-inet`), or one router
/// there ([`crate::LabSpec::routed_internet`]).
/// The routed internet's own address (ICMP errors come from it).
pub const INET_ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INET_NET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);
pub const INET_PREFIX: u8 = 24;
const INET_FIRST_HOST: u8 = 10;
/// IPv6 internet (labs with `ipv6`): 2001:db8::/64; the routed
/// internet's router is 2001:db8::1.
pub const INET6_ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// `2001:db8:<a>:<b>::<n>` with `n`'s decimal digits read as hex, so
/// 203.0.113.12 maps to 2001:db8::12 and site 3's host to 2001:db8:1:3::2.
fn v6(a: u16, b: u32, n: u32) -> Ipv6Addr {
    let hex = |x: u32| u16::from_str_radix(&x.to_string(), 16).unwrap_or(0xffff);
    Ipv6Addr::new(0x2001, 0xdb8, a, hex(b), 0, 0, 0, hex(n))
}

/// The internet IPv6 address paired with an internet IPv4 address.
pub fn inet6_of(a: Ipv4Addr) -> Ipv6Addr {
    v6(0, 0, a.octets()[3] as u32)
}

pub(crate) fn in_inet6(a: &Ipv6Addr) -> bool {
    a.segments()[..4] == [0x2001, 0xdb8, 0, 0]
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Observer,
    Relay,
    Public,
    Site,
    /// A site's NAT router, or a kernel-NAT site's delay hop (see
    /// [`SiteInfo::delay_hop`]).
    Router,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostInfo {
    pub netns: String,
    pub role: Role,
    /// Every IPv4 address configured on the host.
    pub addrs: Vec<Ipv4Addr>,
    /// Addresses reachable from the internet segment (for a NATed site host: none;
    /// for a router: its public IP).
    pub public_addrs: Vec<Ipv4Addr>,
    /// Global IPv6 addresses (labs with `ipv6`): an internet host's, a
    /// site host's on its LAN /64, a router's LAN (`::1`) and WAN addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs6: Vec<Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteInfo {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    pub nat: String,
    /// Address the site host binds / sends from.
    pub host_addr: Ipv4Addr,
    /// Public IP of the site (NAT public IP, or host_addr for `none`).
    pub public_ip: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lan: Option<String>,
    /// Router's own WAN address (differs from public_ip for userspace engines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wan_addr: Option<Ipv4Addr>,
    /// Userspace engine in use (NAT or pass-through).
    pub engine: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_file: Option<PathBuf>,
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub loss: f64,
    /// Kernel-NAT site with delay/jitter/loss: the pass-through hop host
    /// (`<site>-dly`) that adds them; its engine is `engine_pid`, its counters
    /// `stats_file` (`engine` stays false: `stats` reports the nft counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_hop: Option<String>,
    /// The address the internet sees for this site: the outermost NAT's
    /// public IP (equals `public_ip` for a site on the internet; for a
    /// site behind a carrier or another site, `public_ip` is the router's
    /// address in that upstream's address space).
    #[serde(default = "unspecified")]
    pub reflexive_ip: Ipv4Addr,
    /// Carrier or site whose LAN the router's WAN is on (None: the internet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// More hosts on the site LAN ([`crate::SiteSpec::extra_hosts`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// IPv6 site ([`crate::SiteSpec::ipv6`]): the host's global address
    /// (not NATed: it is also what the internet sees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_addr6: Option<Ipv6Addr>,
    /// IPv6 site behind a router: its LAN /64 (`2001:db8:1:<i>::/64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan6: Option<String>,
    /// IPv6 site behind a router: the router's internet IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan_addr6: Option<Ipv6Addr>,
    /// IPv6-only site: `host_addr` is planned but not configured.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv6_only: bool,
    /// Black hole on ([`Lab::blackhole`]): the spared addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blackhole: Option<Vec<Ipv4Addr>>,
}

fn unspecified() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

/// JSON description of a running lab (also the state file content).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabInfo {
    pub lab: String,
    pub owner_pid: u32,
    #[serde(default)]
    pub owner_start: Option<u64>,
    pub state_file: PathBuf,
    pub internet: String,
    pub hosts: BTreeMap<String, HostInfo>,
    pub sites: BTreeMap<String, SiteInfo>,
    /// observer name -> [primary IP, alternate IP]
    pub observers: BTreeMap<String, [Ipv4Addr; 2]>,
    /// Labs with `ipv6`: observer name -> [primary, alternate] IPv6.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub observers6: BTreeMap<String, [Ipv6Addr; 2]>,
    /// Carrier-grade NATs by name, described like sites: `host` and
    /// `router` are the carrier's router, `host_addr` its LAN gateway
    /// (100.64.k.1), `lan` 100.64.k.0/24.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub carriers: BTreeMap<String, SiteInfo>,
    /// Public addresses given up by [`Lab::renumber`]: never handed out
    /// again in this lab (peers' neighbour caches may still name them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_addrs: Vec<Ipv4Addr>,
    pub namespaces: Vec<String>,
    pub spec: LabSpec,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct RouterStats {
    pub site: String,
    /// "kernel", "user", "passthrough" or "none"
    pub kind: String,
    pub packets_out: u64,
    pub packets_in: u64,
    pub dropped_filtered: u64,
    /// Packets dropped by a black hole ([`Lab::blackhole`]).
    #[serde(default)]
    pub dropped_blackhole: u64,
    /// Every raw counter (nft named counters or engine counters).
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// Process that owns the lab (reap removes the lab when it is gone).
    /// None = this process; Some(0) = nobody (only `down`/`reap --all` remove it).
    pub owner_pid: Option<u32>,
    /// Path of the `macula-lab` binary (runs the engines). Default: $MACULA_LAB_BIN,
    /// the current exe if it is macula-lab, then next to / above the current exe, then PATH.
    pub engine_bin: Option<PathBuf>,
}

pub struct Lab {
    pub info: LabInfo,
    children: Vec<Child>,
    keep: bool,
    down_done: bool,
}

pub fn ns_name(lab: &str, host: &str) -> String {
    format!("ml-{lab}-{host}")
}

pub fn state_file(lab: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{lab}.json"))
}

/// The runtime control file of a site's (or carrier's) engine.
pub(crate) fn engine_control_file(lab: &str, site: &str) -> PathBuf {
    lab_dir(lab).join(format!("{site}.control.json"))
}

pub(crate) fn lab_dir(lab: &str) -> PathBuf {
    Path::new(STATE_DIR).join(lab)
}

fn find_engine_bin(opt: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = opt {
        return Ok(p.clone());
    }
    if let Ok(p) = std::env::var("MACULA_LAB_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == "macula-lab") {
        return Ok(exe);
    }
    let mut dir = exe.parent();
    for _ in 0..3 {
        if let Some(d) = dir {
            let c = d.join("macula-lab");
            if c.is_file() {
                return Ok(c);
            }
            dir = d.parent();
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("macula-lab");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    bail!("cannot find the macula-lab binary (set MACULA_LAB_BIN)")
}

struct Addrs {
    next: u32,
}
impl Addrs {
    fn take(&mut self) -> Result<Ipv4Addr> {
        if self.next > 254 {
            bail!("internet segment 203.0.113.0/24 exhausted (too many hosts/sites)");
        }
        let a = Ipv4Addr::from(u32::from(INET_NET) + self.next);
        self.next += 1;
        Ok(a)
    }
}

/// Address of a kernel-NAT site's delay hop on the LAN side of the router
/// (host `.2`, router `.1`).
fn hop_addr(gw: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(gw) + 2)
}

fn site_lan(i: usize) -> Result<(Ipv4Addr, Ipv4Addr, Ipv4Addr)> {
    // 198.18.0.0/15: site i (1-based) gets 198.18.i.0/24, then 198.19.(i-256).0/24
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + ((i as u32) << 8);
    if i == 0 || i > 511 {
        bail!("too many sites");
    }
    Ok((Ipv4Addr::from(base), Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)))
}

/// Carrier k's LAN (1-based): 100.64.k.0/24, gateway 100.64.k.1.
fn carrier_lan(k: usize) -> Result<(Ipv4Addr, Ipv4Addr)> {
    if k == 0 || k > 255 {
        bail!("too many carriers");
    }
    let base = u32::from(Ipv4Addr::new(100, 64, k as u8, 0));
    Ok((Ipv4Addr::from(base), Ipv4Addr::from(base + 1)))
}

/// Addresses for downstream routers on a carrier's or a site's LAN.
struct LanPool {
    net: Ipv4Addr,
    gw: Ipv4Addr,
    next: u32,
}
impl LanPool {
    fn take(&mut self) -> Result<Ipv4Addr> {
        if self.next > 254 {
            bail!("LAN {}/24 exhausted (too many downstream sites)", self.net);
        }
        let a = Ipv4Addr::from(u32::from(self.net) + self.next);
        self.next += 1;
        Ok(a)
    }
}

/// First address of a site's extra hosts (198.18.i.10, .11, ...) and of the
/// routers of the sites downstream of it (198.18.i.100, ...).
const EXTRA_HOST_FIRST: u32 = 10;
const DOWNSTREAM_FIRST: u32 = 100;
const CARRIER_FIRST: u32 = 10;

/// Plan addresses (pure; no side effects).
fn plan(spec: &LabSpec, owner_pid: u32, owner_start: Option<u64>) -> Result<LabInfo> {
    spec.validate()?;
    let lab = &spec.name;
    let mut a = Addrs { next: INET_FIRST_HOST as u32 };
    let mut hosts = BTreeMap::new();
    let mut sites = BTreeMap::new();
    let mut carriers = BTreeMap::new();
    let mut observers = BTreeMap::new();
    let mut observers6 = BTreeMap::new();
    for o in &spec.observers {
        let ips = [a.take()?, a.take()?];
        observers.insert(o.clone(), ips);
        hosts.insert(
            o.clone(),
            HostInfo {
                netns: ns_name(lab, o),
                role: Role::Observer,
                addrs: ips.to_vec(),
                public_addrs: ips.to_vec(),
                addrs6: if spec.ipv6 { ips.iter().map(|a| inet6_of(*a)).collect() } else { vec![] },
                site: None,
                gateway: None,
            },
        );
        if spec.ipv6 {
            observers6.insert(o.clone(), [inet6_of(ips[0]), inet6_of(ips[1])]);
        }
    }
    for (list, role) in [(&spec.relays, Role::Relay), (&spec.public, Role::Public)] {
        for h in list {
            let ip = a.take()?;
            hosts.insert(
                h.clone(),
                HostInfo {
                    netns: ns_name(lab, h),
                    role: role.clone(),
                    addrs: vec![ip],
                    public_addrs: vec![ip],
                    addrs6: if spec.ipv6 { vec![inet6_of(ip)] } else { vec![] },
                    site: None,
                    gateway: None,
                },
            );
        }
    }
    // LANs that downstream routers can join: every carrier's, every site's.
    let mut pools: BTreeMap<String, LanPool> = BTreeMap::new();
    for (k, c) in spec.carriers.iter().enumerate() {
        let (net, gw) = carrier_lan(k + 1)?;
        pools.insert(c.name.clone(), LanPool { net, gw, next: CARRIER_FIRST });
    }
    for (idx, s) in spec.sites.iter().enumerate() {
        let (net, gw, _) = site_lan(idx + 1)?;
        pools.insert(s.name.clone(), LanPool { net, gw, next: DOWNSTREAM_FIRST });
    }
    for (idx, s) in spec.sites.iter().enumerate() {
        let (net, gw, haddr) = site_lan(idx + 1)?;
        let router = format!("{}-nat", s.name);
        let engine = matches!(s.nat, NatKind::User(_)) || (s.nat == NatKind::None && s.has_impairment());
        // The router's WAN side: the internet, or an upstream's LAN.
        let up_gw = s.upstream.as_ref().map(|u| pools[u].gw);
        let mut take = || match &s.upstream {
            Some(u) => pools.get_mut(u).unwrap().take(),
            None => a.take(),
        };
        let (host_addr, public_ip, wan_addr, has_router) = match s.nat {
            NatKind::None if !engine => {
                let ip = take()?;
                (ip, ip, None, false)
            }
            NatKind::None => {
                let w = take()?;
                let h = take()?;
                (h, h, Some(w), true)
            }
            NatKind::Kernel(_) => {
                let p = take()?;
                (haddr, p, Some(p), true)
            }
            NatKind::User(_) => {
                let w = take()?;
                let p = take()?;
                (haddr, p, Some(w), true)
            }
        };
        let natted = !matches!(s.nat, NatKind::None);
        // IPv6: a global /64 on the LAN behind the router's firewall, or
        // (no router) an internet address on the host.
        let lan6 = (s.has_ipv6() && has_router).then(|| v6(1, idx as u32 + 1, 0));
        let host_addr6 = match lan6 {
            Some(_) => Some(v6(1, idx as u32 + 1, 2)),
            None => s.has_ipv6().then(|| inet6_of(host_addr)),
        };
        let wan_addr6 = lan6.and(wan_addr).filter(|_| s.upstream.is_none()).map(inet6_of);
        let v4 = |a: Ipv4Addr| if s.ipv6_only { vec![] } else { vec![a] };
        hosts.insert(
            s.name.clone(),
            HostInfo {
                netns: ns_name(lab, &s.name),
                role: Role::Site,
                addrs: v4(host_addr),
                public_addrs: if natted { vec![] } else { v4(host_addr) },
                addrs6: host_addr6.into_iter().collect(),
                site: Some(s.name.clone()),
                gateway: if has_router { Some(gw) } else { None },
            },
        );
        for (j, x) in s.extra_hosts.iter().enumerate() {
            let addr = Ipv4Addr::from(u32::from(net) + EXTRA_HOST_FIRST + j as u32);
            hosts.insert(
                x.clone(),
                HostInfo {
                    netns: ns_name(lab, x),
                    role: Role::Site,
                    addrs: v4(addr),
                    public_addrs: vec![],
                    addrs6: lan6.map(|_| v6(1, idx as u32 + 1, EXTRA_HOST_FIRST + j as u32)).into_iter().collect(),
                    site: Some(s.name.clone()),
                    gateway: Some(gw),
                },
            );
        }
        if has_router {
            hosts.insert(
                router.clone(),
                HostInfo {
                    netns: ns_name(lab, &router),
                    role: Role::Router,
                    addrs: vec![gw, wan_addr.unwrap()],
                    public_addrs: if natted { vec![public_ip] } else { vec![wan_addr.unwrap()] },
                    addrs6: lan6.map(|_| v6(1, idx as u32 + 1, 1)).into_iter().chain(wan_addr6).collect(),
                    site: Some(s.name.clone()),
                    gateway: up_gw,
                },
            );
        }
        let hop = (matches!(s.nat, NatKind::Kernel(_)) && s.has_impairment()).then(|| format!("{}-dly", s.name));
        if let Some(hop) = &hop {
            hosts.insert(
                hop.clone(),
                HostInfo {
                    netns: ns_name(lab, hop),
                    role: Role::Router,
                    addrs: vec![hop_addr(gw)],
                    public_addrs: vec![],
                    addrs6: vec![],
                    site: Some(s.name.clone()),
                    gateway: Some(gw),
                },
            );
        }
        let stats_file = lab_dir(lab).join(format!("{}.stats.json", s.name));
        sites.insert(
            s.name.clone(),
            SiteInfo {
                host: s.name.clone(),
                router: has_router.then(|| router.clone()),
                nat: s.nat.to_string(),
                host_addr,
                public_ip,
                lan: has_router.then(|| format!("{net}/24")),
                wan_addr,
                engine,
                engine_pid: None,
                stats_file: (engine || hop.is_some()).then_some(stats_file),
                delay_ms: s.delay_ms,
                jitter_ms: s.jitter_ms,
                loss: s.loss,
                delay_hop: hop,
                reflexive_ip: public_ip,
                upstream: s.upstream.clone(),
                extra_hosts: s.extra_hosts.clone(),
                host_addr6,
                lan6: lan6.map(|n| format!("{n}/64")),
                wan_addr6,
                ipv6_only: s.ipv6_only,
                blackhole: None,
            },
        );
    }
    for c in &spec.carriers {
        let engine = matches!(c.nat, NatKind::User(_));
        let (net, gw) = (pools[&c.name].net, pools[&c.name].gw);
        let wan = a.take()?;
        let public_ip = if engine { a.take()? } else { wan };
        hosts.insert(
            c.name.clone(),
            HostInfo {
                netns: ns_name(lab, &c.name),
                role: Role::Router,
                addrs: vec![gw, wan],
                public_addrs: vec![public_ip],
                addrs6: vec![],
                site: None,
                gateway: None,
            },
        );
        carriers.insert(
            c.name.clone(),
            SiteInfo {
                host: c.name.clone(),
                router: Some(c.name.clone()),
                nat: c.nat.to_string(),
                host_addr: gw,
                public_ip,
                lan: Some(format!("{net}/24")),
                wan_addr: Some(wan),
                engine,
                engine_pid: None,
                stats_file: engine.then(|| lab_dir(lab).join(format!("{}.stats.json", c.name))),
                delay_ms: 0.0,
                jitter_ms: 0.0,
                loss: 0.0,
                delay_hop: None,
                reflexive_ip: public_ip,
                upstream: None,
                extra_hosts: vec![],
                host_addr6: None,
                lan6: None,
                wan_addr6: None,
                ipv6_only: false,
                blackhole: None,
            },
        );
    }
    update_reflexive(&mut sites, &carriers);
    let internet = ns_name(lab, "inet");
    let mut namespaces = vec![internet.clone()];
    namespaces.extend(hosts.values().map(|h| h.netns.clone()));
    Ok(LabInfo {
        lab: lab.clone(),
        owner_pid,
        owner_start,
        state_file: state_file(lab),
        internet,
        hosts,
        sites,
        observers,
        observers6,
        carriers,
        retired_addrs: vec![],
        namespaces,
        spec: spec.clone(),
    })
}

/// What the internet sees of each site: the outermost NAT's public address.
pub(crate) fn update_reflexive(sites: &mut BTreeMap<String, SiteInfo>, carriers: &BTreeMap<String, SiteInfo>) {
    let names: Vec<String> = sites.keys().cloned().collect();
    for n in names {
        let mut cur = n.clone();
        let reflexive = loop {
            let si = &sites[&cur];
            match &si.upstream {
                None => break si.public_ip,
                Some(u) if carriers.contains_key(u) => break carriers[u].public_ip,
                Some(u) => cur = u.clone(),
            }
        };
        sites.get_mut(&n).unwrap().reflexive_ip = reflexive;
    }
}

/// A router's LAN as a bridge `lan` (address `gw`/24) with one veth port
/// `m<n>` per member (namespace, interface name there).
fn build_bridge_lan(rns: &str, gw: Ipv4Addr, members: &[(String, &str)]) -> Result<()> {
    let mut l = vec![
        "link set lo up".to_string(),
        "link add lan type bridge".into(),
        format!("addr add {gw}/24 dev lan"),
        "link set lan up".into(),
    ];
    for (n, (ns, ifname)) in members.iter().enumerate() {
        l.push(format!("link add m{n} type veth peer name {ifname} netns {ns}"));
        l.push(format!("link set m{n} master lan"));
        l.push(format!("link set m{n} up"));
    }
    ip_batch(Some(rns), &l)?;
    // Frames bridged between members stay out of the router's netfilter
    // hooks (br_netfilter, when loaded, would put them through the NAT's
    // forward chain). Best effort: absent without br_netfilter.
    let _ = sysctls(rns, vec![("net.bridge.bridge-nf-call-iptables".into(), "0".into())]);
    Ok(())
}

/// Namespaces with a link to the internet segment (port `p<k>` there for
/// the k-th), with the name of their interface on it.
pub(crate) fn internet_ports(info: &LabInfo) -> Vec<(String, &'static str)> {
    let mut attached: Vec<(String, &'static str)> = vec![];
    for (name, h) in &info.hosts {
        match h.role {
            Role::Observer | Role::Relay | Role::Public => attached.push((name.clone(), "eth0")),
            // A delay hop's `wan` goes to its router, not the internet;
            // a nested router's `wan` to its upstream's LAN.
            Role::Router
                if !info.sites.values().any(|s| {
                    s.delay_hop.as_ref() == Some(name)
                        || (s.upstream.is_some() && s.router.as_ref() == Some(name))
                }) =>
            {
                attached.push((name.clone(), "wan"))
            }
            Role::Router => {}
            Role::Site => {
                if info.sites[h.site.as_ref().unwrap()].router.is_none() {
                    attached.push((name.clone(), "eth0"))
                }
            }
        }
    }
    attached
}

/// Routes a namespace's LAN egress and the WAN ingress for `routed` through
/// the engine's `tun0` (see the engine module docs).
fn wire_engine(ns: &str, routed: Ipv4Addr, host_route: Option<Ipv4Addr>) -> Result<()> {
    let mut l = vec![
        "link set tun0 up".to_string(),
        "route add default dev tun0 table 100".into(),
        format!("route add {routed}/32 dev tun0 table 101"),
        "rule add iif lan lookup 100 pref 100".into(),
        "rule add iif wan lookup 101 pref 101".into(),
    ];
    if let Some(h) = host_route {
        l.push(format!("route add {h}/32 dev lan"));
    }
    ip_batch(Some(ns), &l)?;
    sysctls(ns, vec![("net.ipv4.conf.tun0.rp_filter".into(), "0".into())])
}

/// The internet addresses reachable through `name`'s internet link: its own,
/// and for a site's router the site's public address(es) behind it.
fn inet_addrs_behind(info: &LabInfo, name: &str) -> Vec<Ipv4Addr> {
    let in_inet = |a: &Ipv4Addr| u32::from(*a) >> (32 - INET_PREFIX) == u32::from(INET_NET) >> (32 - INET_PREFIX);
    let h = &info.hosts[name];
    let mut v: Vec<Ipv4Addr> = h.addrs.iter().chain(&h.public_addrs).copied().filter(in_inet).collect();
    if let Some(s) = h.site.as_ref().and_then(|s| info.sites.get(s)) {
        v.extend([Some(s.public_ip), s.wan_addr, Some(s.host_addr)].into_iter().flatten().filter(in_inet));
    }
    v.sort();
    v.dedup();
    v
}

pub(crate) fn write_state(info: &LabInfo) -> Result<()> {
    std::fs::create_dir_all(STATE_DIR)?;
    let tmp = info.state_file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
    std::fs::rename(&tmp, &info.state_file)?;
    Ok(())
}

pub fn read_state(lab: &str) -> Result<LabInfo> {
    let p = state_file(lab);
    let b = std::fs::read(&p).with_context(|| format!("no lab {lab} ({})", p.display()))?;
    Ok(serde_json::from_slice(&b)?)
}

fn owner_alive(info: &LabInfo) -> bool {
    info.owner_pid == 0 || netns::proc_alive(info.owner_pid, info.owner_start)
}

/// The prerouting DNAT of a kernel cone (empty for the others): inbound to
/// `public` on a mapped port goes to `host`.
pub(crate) fn kernel_pre_rule(k: KernelNat, public: Ipv4Addr, host: Ipv4Addr) -> String {
    match k {
        KernelNat::FullCone => format!("iifname \"wan\" ip daddr {public} udp dport @mapped dnat to {host}"),
        KernelNat::RestrictedCone => {
            format!("iifname \"wan\" ip daddr {public} ip saddr . udp dport @contacted dnat to {host}")
        }
        _ => String::new(),
    }
}

fn kernel_ruleset(k: KernelNat, s: &SiteSpec, lan: &str, public: Ipv4Addr, host: Ipv4Addr) -> String {
    let t = s.binding_timeout();
    // A plain router counts unsolicited inbound but lets it reach its input
    // hook's end, where conntrack confirms the entry (and the stack answers
    // port unreachable): what masquerade-only routers do.
    let input_verdict = if s.plain_router { "" } else { "drop" };
    let pre = kernel_pre_rule(k, public, host);
    let (fwd_out, masq) = match k {
        KernelNat::FullCone => (
            "iifname \"lan\" oifname \"wan\" meta l4proto udp update @mapped { udp sport }".to_string(),
            "masquerade",
        ),
        KernelNat::RestrictedCone => (
            "iifname \"lan\" oifname \"wan\" meta l4proto udp update @contacted { ip daddr . udp sport }".to_string(),
            "masquerade",
        ),
        KernelNat::PortRestrictedCone => (String::new(), "masquerade"),
        KernelNat::Symmetric => (String::new(), "masquerade fully-random"),
    };
    format!(
        r#"table ip ml {{
  counter out_pkts {{ }}
  counter in_pkts {{ }}
  counter filtered {{ }}
  set mapped {{ type inet_service; flags dynamic,timeout; timeout {t}s; }}
  set contacted {{ type ipv4_addr . inet_service; flags dynamic,timeout; timeout {t}s; }}
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    {pre}
  }}
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" ip saddr {lan} {masq}
  }}
  chain forward_f {{
    type filter hook forward priority filter; policy drop;
    {fwd_out}
    iifname "lan" oifname "wan" counter name out_pkts accept
    iifname "wan" oifname "lan" ct state established,related counter name in_pkts accept
    iifname "wan" oifname "lan" ct status dnat counter name in_pkts accept
    iifname "wan" counter name filtered drop
  }}
  chain input_f {{
    type filter hook input priority filter; policy accept;
    iifname "wan" meta l4proto udp ct state new counter name filtered {input_verdict}
  }}
}}
"#
    )
}

impl Lab {
    pub fn up(spec: LabSpec) -> Result<Lab> {
        Lab::up_with(spec, UpOptions::default())
    }

    pub fn up_with(spec: LabSpec, opts: UpOptions) -> Result<Lab> {
        let owner = opts.owner_pid.unwrap_or(std::process::id());
        let owner_start = if owner == 0 { None } else { netns::proc_start_time(owner) };
        let info = plan(&spec, owner, owner_start)?;
        if state_file(&spec.name).exists() {
            let old = read_state(&spec.name)?;
            if owner_alive(&old) {
                bail!("lab {} already exists (owner pid {})", spec.name, old.owner_pid);
            }
            teardown(&old);
        }
        // leftovers with our prefix from a dead lab of the same name
        let stale: Vec<String> = netns::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&format!("ml-{}-", spec.name)))
            .collect();
        destroy_namespaces(&stale)?;
        write_state(&info)?; // first, so a concurrent reap sees an owned lab
        netns::neighbour_room(info.sites.len() + info.carriers.len());
        let mut lab = Lab { info, children: vec![], keep: false, down_done: false };
        let needs_engine = lab.info.sites.values().any(|s| s.engine || s.delay_hop.is_some())
            || lab.info.carriers.values().any(|c| c.engine);
        let bin = if needs_engine { Some(find_engine_bin(&opts.engine_bin)?) } else { None };
        if let Err(e) = lab.build(bin.as_deref()) {
            lab.teardown_now();
            return Err(e.context(format!("building lab {}", spec.name)));
        }
        write_state(&lab.info)?;
        Ok(lab)
    }

    fn build(&mut self, bin: Option<&Path>) -> Result<()> {
        let info = self.info.clone();
        let lab = &info.lab;
        std::fs::create_dir_all(lab_dir(lab))?;
        // 1. namespaces
        let lines: Vec<String> = info.namespaces.iter().map(|n| format!("netns add {n}")).collect();
        ip_batch(None, &lines)?;
        if info.spec.ipv6 {
            // No duplicate address detection: addresses (link-local ones
            // too) are usable at once instead of ~2 s later.
            for n in &info.namespaces {
                sysctls(
                    n,
                    vec![
                        ("net.ipv6.conf.all.accept_dad".into(), "0".into()),
                        ("net.ipv6.conf.default.accept_dad".into(), "0".into()),
                    ],
                )?;
            }
        }
        // 2. internet bridge (or router) + one veth per internet-attached namespace
        let routed = info.spec.routed_internet;
        let mut inet = vec!["link set lo up".to_string()];
        if routed {
            inet.push(format!("addr add {INET_ROUTER}/32 dev lo"));
        } else {
            inet.push("link add br0 type bridge".into());
            inet.push("link set br0 up".into());
        }
        let attached = internet_ports(&info);
        for (k, (name, ifname)) in attached.iter().enumerate() {
            let ns = &info.hosts[name].netns;
            inet.push(format!("link add p{k} type veth peer name {ifname} netns {ns}"));
            if routed {
                inet.push(format!("link set p{k} up"));
                // Every internet address behind this port; hosts keep their
                // /24 and reach each other through proxy ARP on the ports.
                for a in inet_addrs_behind(&info, name) {
                    inet.push(format!("route add {a}/32 dev p{k}"));
                }
            } else {
                inet.push(format!("link set p{k} master br0"));
                inet.push(format!("link set p{k} up"));
            }
        }
        ip_batch(Some(&info.internet), &inet)?;
        if routed {
            sysctls(
                &info.internet,
                vec![
                    ("net.ipv4.ip_forward".into(), "1".into()),
                    ("net.ipv4.conf.all.proxy_arp".into(), "1".into()),
                    ("net.ipv4.conf.default.proxy_arp".into(), "1".into()),
                    ("net.ipv4.conf.all.rp_filter".into(), "0".into()),
                    ("net.ipv4.conf.default.rp_filter".into(), "0".into()),
                    ("net.ipv4.conf.all.send_redirects".into(), "0".into()),
                    ("net.ipv4.conf.default.send_redirects".into(), "0".into()),
                ],
            )?;
            for (k, _) in attached.iter().enumerate() {
                sysctls(
                    &info.internet,
                    vec![
                        (format!("net.ipv4.conf.p{k}.proxy_arp"), "1".into()),
                        (format!("net.ipv4.conf.p{k}.rp_filter"), "0".into()),
                        (format!("net.ipv4.neigh.p{k}.proxy_delay"), "0".into()),
                    ],
                )?;
            }
        }
        // 3. internet hosts
        for h in info.hosts.values() {
            let mut l = vec!["link set lo up".to_string()];
            match h.role {
                Role::Observer | Role::Relay | Role::Public => {
                    for a in &h.addrs {
                        l.push(format!("addr add {a}/{INET_PREFIX} dev eth0"));
                    }
                    l.push("link set eth0 up".into());
                }
                Role::Site if info.sites[h.site.as_ref().unwrap()].router.is_none() => {
                    for a in &h.addrs {
                        l.push(format!("addr add {a}/{INET_PREFIX} dev eth0"));
                    }
                    l.push("link set eth0 up".into());
                }
                _ => continue,
            }
            ip_batch(Some(&h.netns), &l)?;
        }
        // 4. LANs of site routers and carriers: a veth to the site host, or
        // (extra hosts, downstream routers, carriers) a bridge `lan` with
        // one port per member. Every LAN first: a downstream router's `wan`
        // is made here, by its upstream.
        let downstream = |up: &str| -> Vec<String> {
            info.spec
                .sites
                .iter()
                .filter(|x| x.upstream.as_deref() == Some(up))
                .map(|x| info.sites[&x.name].router.clone().unwrap())
                .collect()
        };
        for (sname, s) in &info.sites {
            let Some(router) = &s.router else { continue };
            let rns = &info.hosts[router].netns;
            let gw = info.hosts[router].addrs[0];
            let below = downstream(sname);
            if s.extra_hosts.is_empty() && below.is_empty() {
                // The router's LAN link ends at the host, or at the delay hop.
                let lan_peer = match &s.delay_hop {
                    Some(h) => format!("wan netns {}", info.hosts[h].netns),
                    None => format!("eth0 netns {}", info.hosts[&s.host].netns),
                };
                ip_batch(
                    Some(rns),
                    &[
                        "link set lo up".into(),
                        format!("link add lan type veth peer name {lan_peer}"),
                        format!("addr add {gw}/24 dev lan"),
                        "link set lan up".into(),
                    ],
                )?;
            } else {
                let mut members: Vec<(String, &str)> = vec![(info.hosts[&s.host].netns.clone(), "eth0")];
                members.extend(s.extra_hosts.iter().map(|x| (info.hosts[x].netns.clone(), "eth0")));
                members.extend(below.iter().map(|r| (info.hosts[r].netns.clone(), "wan")));
                build_bridge_lan(rns, gw, &members)?;
            }
        }
        for (cname, c) in &info.carriers {
            let rns = &info.hosts[cname].netns;
            let members: Vec<(String, &str)> =
                downstream(cname).iter().map(|r| (info.hosts[r].netns.clone(), "wan")).collect();
            build_bridge_lan(rns, c.host_addr, &members)?;
        }
        // 5. carriers: WAN on the internet, NAT
        for (cname, c) in &info.carriers {
            let spec = info.spec.carriers.iter().find(|x| &x.name == cname).unwrap().as_site();
            let rns = info.hosts[cname].netns.clone();
            ip_batch(
                Some(&rns),
                &[format!("addr add {}/{INET_PREFIX} dev wan", c.wan_addr.unwrap()), "link set wan up".into()],
            )?;
            self.build_nat(bin, cname, c, &spec, &rns, true)?;
        }
        // 6. sites: WAN, hosts, NAT
        for (sname, s) in &info.sites {
            let Some(router) = &s.router else { continue };
            let spec = info.spec.sites.iter().find(|x| &x.name == sname).unwrap();
            let rns = info.hosts[router].netns.clone();
            let hns = info.hosts[&s.host].netns.clone();
            let gw = info.hosts[router].addrs[0];
            let wan = s.wan_addr.unwrap();
            let mut rl = vec![format!("addr add {wan}/{INET_PREFIX} dev wan"), "link set wan up".into()];
            if let Some(up_gw) = info.hosts[router].gateway {
                rl.push(format!("route add default via {up_gw} dev wan"));
            }
            ip_batch(Some(&rns), &rl)?;
            if let Some(hop) = &s.delay_hop {
                let hop_ns = info.hosts[hop].netns.clone();
                self.build_delay_hop(bin, sname, s, spec, hop, &hop_ns, &hns, gw)?;
            }
            let mut hl = vec!["link set lo up".to_string(), "link set eth0 up".into()];
            if spec.nat == NatKind::None {
                // public host address behind a pass-through engine
                hl.push(format!("addr add {}/32 dev eth0", s.host_addr));
                hl.push(format!("route add {gw}/32 dev eth0 scope link"));
                hl.push(format!("route add default via {gw} dev eth0 src {}", s.host_addr));
            } else if !spec.ipv6_only {
                hl.push(format!("addr add {}/24 dev eth0", s.host_addr));
                hl.push(format!("route add default via {gw}"));
            }
            ip_batch(Some(&hns), &hl)?;
            for x in &s.extra_hosts {
                let h = &info.hosts[x];
                let mut l = vec!["link set lo up".to_string(), "link set eth0 up".into()];
                if let Some(a) = h.addrs.first() {
                    l.push(format!("addr add {a}/24 dev eth0"));
                    l.push(format!("route add default via {gw}"));
                }
                ip_batch(Some(&h.netns), &l)?;
            }
            self.build_nat(bin, sname, s, spec, &rns, false)?;
        }
        if info.spec.ipv6 {
            self.build_ipv6()?;
        }
        Ok(())
    }

    /// A router's forwarding sysctls and its NAT: nftables rules (kernel)
    /// or a userspace engine wired to `tun0`.
    fn build_nat(
        &mut self,
        bin: Option<&Path>,
        name: &str,
        s: &SiteInfo,
        spec: &SiteSpec,
        rns: &str,
        carrier: bool,
    ) -> Result<()> {
        let mut sc: Vec<(String, String)> = vec![
            ("net.ipv4.ip_forward".into(), "1".into()),
            ("net.ipv4.conf.all.rp_filter".into(), "0".into()),
            ("net.ipv4.conf.default.rp_filter".into(), "0".into()),
            ("net.ipv4.conf.lan.rp_filter".into(), "0".into()),
            ("net.ipv4.conf.wan.rp_filter".into(), "0".into()),
            ("net.ipv4.conf.all.send_redirects".into(), "0".into()),
            ("net.ipv4.conf.default.send_redirects".into(), "0".into()),
        ];
        if s.engine {
            sc.push(("net.ipv4.conf.wan.proxy_arp".into(), "1".into()));
            sc.push(("net.ipv4.neigh.wan.proxy_delay".into(), "0".into()));
        }
        sysctls(rns, sc)?;
        let lan = s.lan.clone().unwrap();
        match spec.nat {
            NatKind::Kernel(k) => {
                let t = spec.binding_timeout().to_string();
                // per-netns conntrack timeouts (best effort)
                let _ = sysctls(
                    rns,
                    vec![
                        ("net.netfilter.nf_conntrack_udp_timeout".into(), t.clone()),
                        ("net.netfilter.nf_conntrack_udp_timeout_stream".into(), t),
                    ],
                );
                let rules = kernel_ruleset(k, spec, &lan, s.public_ip, s.host_addr);
                let (mut c, _f) = command_in(rns, &["nft".into(), "-f".into(), "-".into()])?;
                c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
                let mut ch = c.spawn()?;
                use std::io::Write;
                ch.stdin.take().unwrap().write_all(rules.as_bytes())?;
                let out = ch.wait_with_output()?;
                if !out.status.success() {
                    bail!("nft in {rns}: {}\n{rules}", String::from_utf8_lossy(&out.stderr));
                }
            }
            _ => {
                let bin = bin.ok_or_else(|| anyhow!("engine binary needed"))?;
                let pid = self.start_engine(bin, name, s, spec, rns)?;
                let si = if carrier { &mut self.info.carriers } else { &mut self.info.sites };
                si.get_mut(name).unwrap().engine_pid = Some(pid);
                // P (NAT) or the host's public address
                let host_route = (spec.nat == NatKind::None).then_some(s.host_addr);
                wire_engine(rns, s.public_ip, host_route)?;
            }
        }
        Ok(())
    }

    /// A pass-through engine between a kernel-NAT site's host and its router
    /// (`host eth0 -- lan [hop] wan -- lan router`), adding the site's
    /// delay/jitter/loss in both directions. The hop answers ARP for the
    /// router's address on `lan` and for the host's on `wan` (proxy ARP), so
    /// host and router keep their plain /24 LAN setup and the router's
    /// nftables rules see the host's packets exactly as without the hop.
    #[allow(clippy::too_many_arguments)]
    fn build_delay_hop(
        &mut self,
        bin: Option<&Path>,
        sname: &str,
        s: &SiteInfo,
        spec: &SiteSpec,
        hop: &str,
        ns: &str,
        hns: &str,
        gw: Ipv4Addr,
    ) -> Result<()> {
        let me = self.info.hosts[hop].addrs[0];
        ip_batch(
            Some(ns),
            &[
                "link set lo up".into(),
                format!("link add lan type veth peer name eth0 netns {hns}"),
                format!("addr add {me}/24 dev wan"),
                "link set lan up".into(),
                "link set wan up".into(),
                format!("route add {}/32 dev lan", s.host_addr),
                format!("route add default via {gw} dev wan"),
            ],
        )?;
        let mut sc: Vec<(String, String)> = vec![
            ("net.ipv4.ip_forward".into(), "1".into()),
            ("net.ipv4.conf.all.rp_filter".into(), "0".into()),
            ("net.ipv4.conf.default.rp_filter".into(), "0".into()),
            ("net.ipv4.conf.all.send_redirects".into(), "0".into()),
            ("net.ipv4.conf.default.send_redirects".into(), "0".into()),
        ];
        for dev in ["lan", "wan"] {
            sc.push((format!("net.ipv4.conf.{dev}.rp_filter"), "0".into()));
            sc.push((format!("net.ipv4.conf.{dev}.proxy_arp"), "1".into()));
            sc.push((format!("net.ipv4.neigh.{dev}.proxy_delay"), "0".into()));
        }
        sysctls(ns, sc)?;
        let bin = bin.ok_or_else(|| anyhow!("engine binary needed"))?;
        // Pass-through keyed on the host's own address: the NAT is behind us.
        let pass = SiteInfo { public_ip: s.host_addr, lan: None, ..s.clone() };
        let pid = self.start_engine(bin, sname, &pass, spec, ns)?;
        self.info.sites.get_mut(sname).unwrap().engine_pid = Some(pid);
        wire_engine(ns, s.host_addr, None)
    }

    fn start_engine(
        &mut self,
        bin: &Path,
        sname: &str,
        s: &SiteInfo,
        spec: &SiteSpec,
        rns: &str,
    ) -> Result<u32> {
        let dir = lab_dir(&self.info.lab);
        let ready = dir.join(format!("{sname}.ready"));
        let _ = std::fs::remove_file(&ready);
        let control = engine_control_file(&self.info.lab, sname);
        let _ = std::fs::remove_file(&control);
        let _ = std::fs::remove_file(control.with_extension("ack"));
        let (lan_net, lan_prefix) = match &s.lan {
            Some(l) => {
                let (a, p) = l.split_once('/').unwrap();
                (a.parse()?, p.parse()?)
            }
            None => (Ipv4Addr::UNSPECIFIED, 32),
        };
        let seed = self.info.spec.seed.unwrap_or(0x4d41_4355_4c41)
            ^ (sname.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
        let cfg = EngineConfig {
            tun: "tun0".into(),
            nat: match spec.nat {
                NatKind::User(_) => Some(spec.nat.to_string()),
                _ => None,
            },
            lan_net,
            lan_prefix,
            public_ip: s.public_ip,
            delay_ms: spec.delay_ms,
            jitter_ms: spec.jitter_ms,
            loss: spec.loss,
            binding_timeout_s: spec.binding_timeout(),
            hairpin: spec.hairpin,
            plain_router: spec.plain_router,
            seed,
            stats_file: s.stats_file.clone().unwrap(),
            ready_file: ready.clone(),
            control_file: Some(control),
        };
        let cfg_path = dir.join(format!("{sname}.engine.json"));
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
        let log = std::fs::File::create(dir.join(format!("{sname}.engine.log")))?;
        let argv = vec![
            bin.to_string_lossy().to_string(),
            "engine".into(),
            "--config".into(),
            cfg_path.to_string_lossy().to_string(),
        ];
        let (mut c, _f) = command_in(rns, &argv)?;
        c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = c.spawn().context("spawn engine")?;
        let pid = child.id();
        let t0 = Instant::now();
        while !ready.exists() {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "engine for {sname} exited ({st}): {}",
                    std::fs::read_to_string(dir.join(format!("{sname}.engine.log"))).unwrap_or_default()
                );
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("engine for {sname} not ready after 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.children.push(child);
        Ok(pid)
    }

    /// Attach to a lab created elsewhere (CLI); dropping it does not tear it down.
    pub fn attach(name: &str) -> Result<Lab> {
        Ok(Lab { info: read_state(name)?, children: vec![], keep: true, down_done: false })
    }

    /// Keep the lab running after this value is dropped (CLI `up`).
    pub fn detach(mut self) -> LabInfo {
        self.keep = true;
        self.children.clear(); // orphaned engines are reparented to init
        self.info.clone()
    }

    pub fn name(&self) -> &str {
        &self.info.lab
    }

    pub fn host(&self, host: &str) -> Result<&HostInfo> {
        self.info.hosts.get(host).ok_or_else(|| anyhow!("no host {host} in lab {}", self.info.lab))
    }

    pub fn site(&self, site: &str) -> Result<&SiteInfo> {
        self.info.sites.get(site).ok_or_else(|| anyhow!("no site {site} in lab {}", self.info.lab))
    }

    /// First address of a host (a site host's LAN or public address, an observer's primary).
    pub fn host_addr(&self, host: &str) -> Result<Ipv4Addr> {
        self.host(host)?.addrs.first().copied().ok_or_else(|| anyhow!("host {host} has no IPv4 address"))
    }

    /// First global IPv6 address of a host (labs with `ipv6`).
    pub fn host_addr6(&self, host: &str) -> Result<Ipv6Addr> {
        self.host(host)?.addrs6.first().copied().ok_or_else(|| anyhow!("host {host} has no IPv6 address"))
    }

    pub fn netns(&self, host: &str) -> Result<String> {
        Ok(self.host(host)?.netns.clone())
    }

    /// A std Command that runs `argv` inside `host`'s namespace. Keep the File alive until spawned.
    pub fn command(&self, host: &str, argv: &[String]) -> Result<(Command, std::fs::File)> {
        command_in(&self.host(host)?.netns, argv)
    }

    /// Run to completion and collect output.
    pub fn exec<S: AsRef<str>>(&self, host: &str, argv: &[S]) -> Result<Output> {
        self.exec_timeout(host, argv, Duration::from_secs(120))
    }

    pub fn exec_timeout<S: AsRef<str>>(&self, host: &str, argv: &[S], timeout: Duration) -> Result<Output> {
        let mut ch = self.spawn(host, argv)?;
        let t0 = Instant::now();
        // drain pipes on threads so a chatty child never blocks
        let mut so = ch.stdout.take().unwrap();
        let mut se = ch.stderr.take().unwrap();
        let to = std::thread::spawn(move || {
            let mut v = vec![];
            let _ = std::io::Read::read_to_end(&mut so, &mut v);
            v
        });
        let te = std::thread::spawn(move || {
            let mut v = vec![];
            let _ = std::io::Read::read_to_end(&mut se, &mut v);
            v
        });
        let status = loop {
            if let Some(s) = ch.try_wait()? {
                break s;
            }
            if t0.elapsed() > timeout {
                let _ = ch.kill();
                break ch.wait()?;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Output { status, stdout: to.join().unwrap(), stderr: te.join().unwrap() })
    }

    /// Start `argv` in `host` with piped stdout/stderr. Killed at teardown at the latest.
    pub fn spawn<S: AsRef<str>>(&self, host: &str, argv: &[S]) -> Result<Child> {
        let argv: Vec<String> = argv.iter().map(|s| s.as_ref().to_string()).collect();
        let (mut c, _f) = self.command(host, &argv)?;
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().with_context(|| format!("spawn {argv:?} in {host}"))
    }

    /// A carrier (see [`crate::spec::CarrierSpec`]), described like a site.
    pub fn carrier(&self, name: &str) -> Result<&SiteInfo> {
        self.info.carriers.get(name).ok_or_else(|| anyhow!("no carrier {name} in lab {}", self.info.lab))
    }

    /// A NAT rebinding at a userspace-engine site (or carrier): its router
    /// forgets every mapping, so each host's next packet leaves from a new
    /// public port.
    pub fn rebind(&self, site: &str) -> Result<()> {
        let s = self.site(site).or_else(|_| self.carrier(site))?;
        let pid = s.engine_pid.filter(|_| s.engine).ok_or_else(|| anyhow::anyhow!("site {site} has no userspace NAT engine"))?;
        // SAFETY: a plain signal to our own child process.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } != 0 {
            bail!("signal engine {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn router_stats(&self, site: &str) -> Result<RouterStats> {
        router_stats(&self.info, site)
    }

    pub fn down(mut self) -> Result<()> {
        self.teardown_now();
        Ok(())
    }

    fn teardown_now(&mut self) {
        if self.down_done {
            return;
        }
        self.down_done = true;
        for c in &mut self.children {
            let _ = c.kill();
        }
        teardown(&self.info);
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown_now();
        }
    }
}

/// Counters of a site's router, or of a carrier's.
pub fn router_stats(info: &LabInfo, site: &str) -> Result<RouterStats> {
    let s = info.sites.get(site).or_else(|| info.carriers.get(site)).ok_or_else(|| anyhow!("no site or carrier {site}"))?;
    let mut r = RouterStats { site: site.into(), ..Default::default() };
    if s.engine {
        r.kind = if s.nat == "none" { "passthrough".into() } else { "user".into() };
        let p = s.stats_file.as_ref().unwrap();
        let st: EngineStats = serde_json::from_slice(&std::fs::read(p)?)?;
        r.packets_out = st.packets_out;
        r.packets_in = st.packets_in;
        r.dropped_filtered = st.dropped_filtered + st.dropped_no_binding;
        r.dropped_blackhole = st.dropped_blackhole;
        if let serde_json::Value::Object(m) = serde_json::to_value(&st)? {
            for (k, v) in m {
                r.counters.insert(k, v.as_u64().unwrap_or(0));
            }
        }
        // IPv6 goes around the engine, through the router's nftables
        // (firewall, black hole): their counters too.
        if let (Some(router), true) = (&s.router, s.lan6.is_some()) {
            nft_counters(&info.hosts[router].netns, &mut r.counters)?;
            r.dropped_blackhole += r.counters.get("blackholed_packets").copied().unwrap_or(0);
        }
    } else if let Some(router) = &s.router {
        r.kind = "kernel".into();
        nft_counters(&info.hosts[router].netns, &mut r.counters)?;
        r.dropped_blackhole = r.counters.get("blackholed_packets").copied().unwrap_or(0);
        r.packets_out = r.counters.get("out_pkts_packets").copied().unwrap_or(0);
        r.packets_in = r.counters.get("in_pkts_packets").copied().unwrap_or(0);
        r.dropped_filtered = r.counters.get("filtered_packets").copied().unwrap_or(0);
    } else {
        r.kind = "none".into();
    }
    Ok(r)
}

/// Every named nft counter in namespace `ns` as `<name>_packets`, `<name>_bytes`.
fn nft_counters(ns: &str, into: &mut BTreeMap<String, u64>) -> Result<()> {
    let (mut c, _f) = command_in(ns, &["nft".into(), "-j".into(), "list".into(), "counters".into()])?;
    let out = c.output()?;
    if !out.status.success() {
        bail!("nft list counters: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("counter") {
            let name = c["name"].as_str().unwrap_or("").to_string();
            into.insert(format!("{name}_packets"), c["packets"].as_u64().unwrap_or(0));
            into.insert(format!("{name}_bytes"), c["bytes"].as_u64().unwrap_or(0));
        }
    }
    Ok(())
}

/// Kill everything in the lab's namespaces, delete them and the state.
pub fn teardown(info: &LabInfo) {
    for s in info.sites.values().chain(info.carriers.values()) {
        if let Some(pid) = s.engine_pid {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    let mut names = info.namespaces.clone();
    // anything else carrying the lab prefix
    let prefix = format!("ml-{}-", info.lab);
    for n in netns::list_netns() {
        if n.starts_with(&prefix) && !names.contains(&n) {
            names.push(n);
        }
    }
    let _ = destroy_namespaces(&names);
    if crate::engine::trace_mappings() {
        eprintln!("lab {}: engine logs kept in {} (MACULA_LAB_TRACE)", info.lab, lab_dir(&info.lab).display());
    } else {
        let _ = std::fs::remove_dir_all(lab_dir(&info.lab));
    }
    let _ = std::fs::remove_file(&info.state_file);
}

pub fn down(lab: &str) -> Result<()> {
    match read_state(lab) {
        Ok(info) => teardown(&info),
        Err(_) => {
            let prefix = format!("ml-{lab}-");
            let names: Vec<String> =
                netns::list_netns().into_iter().filter(|n| n.starts_with(&prefix)).collect();
            if names.is_empty() {
                bail!("no lab {lab}");
            }
            destroy_namespaces(&names)?;
        }
    }
    Ok(())
}

/// Labs known from state files.
pub fn list() -> Vec<LabInfo> {
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir(STATE_DIR) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Ok(b) = std::fs::read(&p) {
                    if let Ok(i) = serde_json::from_slice::<LabInfo>(&b) {
                        v.push(i);
                    }
                }
            }
        }
    }
    v
}

/// Labs whose state file this version cannot read (a newer or older lab
/// wrote it) but whose owner is alive: their namespaces are not stale.
fn unreadable_live_labs() -> Vec<String> {
    let mut v = vec![];
    for e in std::fs::read_dir(STATE_DIR).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension() != Some(std::ffi::OsStr::new("json")) {
            continue;
        }
        let Ok(b) = std::fs::read(&p) else { continue };
        if serde_json::from_slice::<LabInfo>(&b).is_ok() {
            continue;
        }
        let Ok(j) = serde_json::from_slice::<serde_json::Value>(&b) else { continue };
        let (Some(lab), Some(pid)) = (j["lab"].as_str(), j["owner_pid"].as_u64()) else { continue };
        if pid == 0 || netns::proc_alive(pid as u32, j["owner_start"].as_u64()) {
            v.push(lab.to_string());
        }
    }
    v
}

/// Remove labs whose owner is gone (or all with `all`), then stale `ml-*` namespaces
/// not claimed by a live lab. Returns the names of removed labs/namespaces.
pub fn reap(all: bool) -> Vec<String> {
    let mut removed = vec![];
    let mut live = vec![];
    for info in list() {
        if !all && owner_alive(&info) {
            live.push(info.lab.clone());
        } else {
            teardown(&info);
            removed.push(info.lab.clone());
        }
    }
    let candidates: Vec<String> =
        netns::list_netns().into_iter().filter(|n| n.starts_with("ml-")).collect();
    // A lab writes its state file before creating namespaces, so re-reading the
    // state files after listing namespaces sees every lab being built right now.
    if !all {
        live.extend(list().into_iter().filter(owner_alive).map(|i| i.lab));
        live.extend(unreadable_live_labs());
    }
    let stale: Vec<String> = candidates
        .into_iter()
        .filter(|n| {
            let lab = n[3..].split('-').next().unwrap_or("");
            !live.iter().any(|l| l == lab)
        })
        .collect();
    if !stale.is_empty() {
        let _ = destroy_namespaces(&stale);
        removed.extend(stale);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(json: &str) -> LabInfo {
        plan(&serde_json::from_str(json).unwrap(), 1, None).unwrap()
    }

    #[test]
    fn plan_without_new_fields_is_unchanged() {
        let i = planned(
            r#"{"name":"p","observers":["obs"],"public":["pub"],"sites":[{"name":"k","nat":"kernel:symmetric"},
               {"name":"u","nat":"user:ei-ei-pp"},{"name":"n","nat":"none"},{"name":"d","nat":"kernel:full_cone","delay_ms":3}]}"#,
        );
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(i.carriers.is_empty());
        assert_eq!(i.sites["k"].public_ip, ip("203.0.113.13"));
        assert_eq!(i.sites["u"].wan_addr, Some(ip("203.0.113.14")));
        assert_eq!(i.sites["u"].public_ip, ip("203.0.113.15"));
        assert_eq!(i.sites["n"].host_addr, ip("203.0.113.16"));
        assert_eq!(i.sites["d"].public_ip, ip("203.0.113.17"));
        assert_eq!(i.hosts["d-dly"].addrs, vec![ip("198.18.4.3")]);
        for s in i.sites.values() {
            assert_eq!(s.reflexive_ip, s.public_ip);
            assert!(s.upstream.is_none());
        }
        assert_eq!(i.hosts["k-nat"].gateway, None);
        let j = serde_json::to_string(&i).unwrap();
        assert!(!j.contains("carriers") && !j.contains("upstream") && !j.contains("extra_hosts"));
        // Nor any of the IPv6 / black hole / renumbering fields.
        for f in ["ipv6", "addrs6", "observers6", "lan6", "blackhole", "retired_addrs"] {
            assert!(!j.contains(f), "{f} in {j}");
        }
    }

    #[test]
    fn plan_ipv6() {
        let i = planned(
            r#"{"name":"p","ipv6":true,"observers":["obs"],"public":["pub"],"sites":[{"name":"k","nat":"kernel:symmetric","ipv6":true,"extra_hosts":["k2"]},
               {"name":"u","nat":"user:ei-ei-pp","ipv6_only":true},{"name":"n","nat":"none","ipv6":true},{"name":"v4","nat":"kernel:full_cone"}]}"#,
        );
        let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        // IPv4 plan unchanged by ipv6.
        assert_eq!(i.sites["k"].public_ip, "203.0.113.13".parse::<Ipv4Addr>().unwrap());
        assert_eq!(i.observers6["obs"], [ip6("2001:db8::10"), ip6("2001:db8::11")]);
        assert_eq!(i.hosts["pub"].addrs6, vec![ip6("2001:db8::12")]);
        assert_eq!(i.sites["k"].lan6.as_deref(), Some("2001:db8:1:1::/64"));
        assert_eq!(i.sites["k"].host_addr6, Some(ip6("2001:db8:1:1::2")));
        assert_eq!(i.sites["k"].wan_addr6, Some(ip6("2001:db8::13")));
        assert_eq!(i.hosts["k-nat"].addrs6, vec![ip6("2001:db8:1:1::1"), ip6("2001:db8::13")]);
        assert_eq!(i.hosts["k2"].addrs6, vec![ip6("2001:db8:1:1::10")]);
        assert!(i.hosts["u"].addrs.is_empty() && i.sites["u"].ipv6_only);
        assert_eq!(i.sites["u"].host_addr6, Some(ip6("2001:db8:1:2::2")));
        assert_eq!(i.sites["n"].host_addr6, Some(ip6("2001:db8::16")));
        assert!(i.sites["v4"].host_addr6.is_none() && i.hosts["v4-nat"].addrs6.is_empty());
        let bad = |j: &str| serde_json::from_str::<LabSpec>(j).unwrap().validate().unwrap_err().to_string();
        assert!(bad(r#"{"name":"x","sites":[{"name":"a","nat":"none","ipv6":true}]}"#).contains("ipv6 needs"));
        assert!(bad(r#"{"name":"x","ipv6":true,"sites":[{"name":"a","nat":"user:ei-ei-pp","ipv6":true,"delay_ms":5}]}"#)
            .contains("delay"));
    }

    #[test]
    fn plan_nested() {
        let i = planned(
            r#"{"name":"p","public":["pub"],"carriers":[{"name":"cg","nat":"user:ei-pd-rd"},{"name":"ck","nat":"kernel:symmetric"}],
               "sites":[{"name":"home","nat":"kernel:port_restricted_cone","extra_hosts":["tv","pc"]},
                        {"name":"ctr","nat":"kernel:port_restricted_cone","upstream":"home"},
                        {"name":"a","nat":"user:ei-pd-pp","upstream":"cg"},
                        {"name":"b","nat":"kernel:port_restricted_cone","upstream":"cg"},
                        {"name":"c","nat":"kernel:symmetric","upstream":"ck"},
                        {"name":"deep","nat":"user:ei-ei-pp","upstream":"b"}]}"#,
        );
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // internet: pub .10, home .11, then the carriers after the sites
        assert_eq!(i.sites["home"].public_ip, ip("203.0.113.11"));
        assert_eq!(i.carriers["cg"].wan_addr, Some(ip("203.0.113.12")));
        assert_eq!(i.carriers["cg"].public_ip, ip("203.0.113.13"));
        assert_eq!(i.carriers["ck"].public_ip, ip("203.0.113.14"));
        assert_eq!(i.carriers["cg"].host_addr, ip("100.64.1.1"));
        assert_eq!(i.carriers["ck"].lan.as_deref(), Some("100.64.2.0/24"));
        assert_eq!(i.hosts["tv"].addrs, vec![ip("198.18.1.10")]);
        assert_eq!(i.hosts["pc"].addrs, vec![ip("198.18.1.11")]);
        assert_eq!(i.hosts["pc"].gateway, Some(ip("198.18.1.1")));
        assert_eq!(i.sites["home"].extra_hosts, vec!["tv".to_string(), "pc".to_string()]);
        assert_eq!(i.sites["ctr"].public_ip, ip("198.18.1.100"));
        assert_eq!(i.hosts["ctr-nat"].gateway, Some(ip("198.18.1.1")));
        assert_eq!(i.sites["ctr"].reflexive_ip, ip("203.0.113.11"));
        assert_eq!(i.sites["a"].wan_addr, Some(ip("100.64.1.10")));
        assert_eq!(i.sites["a"].public_ip, ip("100.64.1.11"));
        assert_eq!(i.sites["b"].public_ip, ip("100.64.1.12"));
        assert_eq!(i.sites["a"].reflexive_ip, ip("203.0.113.13"));
        assert_eq!(i.sites["c"].public_ip, ip("100.64.2.10"));
        assert_eq!(i.sites["c"].reflexive_ip, ip("203.0.113.14"));
        assert_eq!(i.sites["deep"].wan_addr, Some(ip("198.18.4.100")));
        assert_eq!(i.sites["deep"].public_ip, ip("198.18.4.101"));
        assert_eq!(i.sites["deep"].reflexive_ip, ip("203.0.113.13"));
        assert!(i.namespaces.contains(&"ml-p-cg".to_string()) && i.namespaces.contains(&"ml-p-tv".to_string()));
        // The routed internet reaches the carriers' addresses, not the nested ones.
        assert_eq!(inet_addrs_behind(&i, "cg"), vec![ip("203.0.113.12"), ip("203.0.113.13")]);
        assert_eq!(inet_addrs_behind(&i, "a-nat"), Vec::<Ipv4Addr>::new());
    }
}
