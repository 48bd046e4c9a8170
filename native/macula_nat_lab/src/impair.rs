//! Changes to a running lab (issue 19): black holes, public address changes
//! (renumbering), and the IPv6 part of a lab with `ipv6` (global addresses
//! on the internet, sites' /64s behind stateful firewalls without NAT).

use crate::engine::EngineControl;
use crate::lab::{
    engine_control_file, in_inet6, internet_ports, kernel_pre_rule, write_state, Lab, LabInfo, SiteInfo,
    INET6_ROUTER, INET_NET, INET_PREFIX,
};
use crate::netns::{command_in, ip_batch, sysctls};
use crate::spec::{KernelNat, NatKind};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// nft table of a router's black hole (both families; see [`Lab::blackhole`]).
const BLACKHOLE_TABLE: &str = "inet mlbh";

/// Runs an nft script in namespace `ns`.
pub(crate) fn nft(ns: &str, script: &str) -> Result<()> {
    let (mut c, _f) = command_in(ns, &["nft".into(), "-f".into(), "-".into()])?;
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut ch = c.spawn()?;
    use std::io::Write;
    ch.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = ch.wait_with_output()?;
    if !out.status.success() {
        bail!("nft in {ns}: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The stateful IPv6 firewall of a site router: no NAT; outbound allowed,
/// inbound only established/related (address-and-port-dependent filtering,
/// RFC 6092 style, without even an ICMPv6 echo exception).
fn fw6_ruleset() -> String {
    r#"table ip6 fw6 {
  counter out6 { }
  counter in6 { }
  counter filtered6 { }
  chain forward_f {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" counter name out6 accept
    iifname "wan" oifname "lan" ct state established,related counter name in6 accept
    iifname "wan" counter name filtered6 drop
  }
}
"#
    .to_string()
}

fn nft_set(addrs: &[String]) -> String {
    format!("{{ {} }}", addrs.join(", "))
}

impl Lab {
    /// A site (or carrier) by name, and whether it is a carrier.
    fn site_or_carrier(&self, name: &str) -> Result<(SiteInfo, bool)> {
        if let Some(s) = self.info.sites.get(name) {
            return Ok((s.clone(), false));
        }
        if let Some(c) = self.info.carriers.get(name) {
            return Ok((c.clone(), true));
        }
        bail!("no site or carrier {name} in lab {}", self.info.lab)
    }

    /// Writes an engine's control state and signals it (SIGUSR2); waits
    /// until the engine acknowledged it.
    fn control_engine(&self, name: &str, s: &SiteInfo, blackhole: Option<&[Ipv4Addr]>) -> Result<()> {
        let pid = s.engine_pid.ok_or_else(|| anyhow!("{name}: engine not running"))?;
        let path = engine_control_file(&self.info.lab, name);
        let generation = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
        let c = EngineControl {
            generation,
            blackhole: blackhole.is_some(),
            spare: blackhole.map(|s| s.to_vec()).unwrap_or_default(),
            public_ip: Some(s.public_ip),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&c)?)?;
        std::fs::rename(&tmp, &path)?;
        let ack = path.with_extension("ack");
        // SAFETY: a plain signal to the lab's engine process.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR2) } != 0 {
            bail!("signal engine {pid}: {}", std::io::Error::last_os_error());
        }
        let t0 = Instant::now();
        loop {
            let done = std::fs::read_to_string(&ack).ok().and_then(|a| a.trim().parse::<u64>().ok()).is_some_and(|g| g >= generation);
            if done {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("engine of {name} (pid {pid}) did not apply its control file within 5 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The IPv6 addresses of the hosts that own one of `spare` (an
    /// internet host, a router by its public address, a site host).
    fn spare6(&self, spare: &[Ipv4Addr]) -> Vec<Ipv6Addr> {
        let mut v = BTreeSet::new();
        for h in self.info.hosts.values() {
            if h.addrs.iter().chain(&h.public_addrs).any(|a| spare.contains(a)) {
                v.extend(h.addrs6.iter().copied());
            }
        }
        for s in self.info.sites.values() {
            if spare.contains(&s.public_ip) || spare.contains(&s.host_addr) {
                v.extend(s.host_addr6);
            }
        }
        v.into_iter().collect()
    }

    /// Black hole at a site's (or carrier's) router: with `on`, every packet
    /// to or from the site's hosts is silently dropped, except to/from the
    /// `spare` addresses (and the IPv6 addresses of the hosts owning them);
    /// off restores forwarding. Kernel routers: an nftables forward chain
    /// (table `inet mlbh`, counter `blackholed`) added/flushed; userspace
    /// engines: their control file and SIGUSR2 (counter
    /// `dropped_blackhole`), plus the nftables chain for IPv6 (which goes
    /// around the engine). Either way `RouterStats::dropped_blackhole`.
    pub fn blackhole(&mut self, site: &str, on: bool, spare: &[Ipv4Addr]) -> Result<()> {
        let (s, carrier) = self.site_or_carrier(site)?;
        let router = s.router.clone().ok_or_else(|| anyhow!("site {site} has no router (nat none)"))?;
        let rns = self.info.hosts[&router].netns.clone();
        if s.delay_hop.is_none() && s.engine {
            self.control_engine(site, &s, on.then_some(spare))?;
        }
        // nftables: the kernel NAT's IPv4 and every router's IPv6.
        let v4 = !s.engine;
        let v6 = s.lan6.is_some();
        if v4 || v6 {
            let mut script = format!(
                "table {BLACKHOLE_TABLE} {{\n  counter blackholed {{ }}\n  chain bh_forward {{ type filter hook forward priority -10; policy accept; }}\n}}\nflush chain {BLACKHOLE_TABLE} bh_forward\n"
            );
            if on {
                let mut rule = |fam: &str, field: &str, out: bool, spared: Vec<String>| {
                    let (i, o) = if out { ("lan", "wan") } else { ("wan", "lan") };
                    let m = if spared.is_empty() {
                        format!("meta nfproto {}", if fam == "ip" { "ipv4" } else { "ipv6" })
                    } else {
                        format!("{fam} {field} != {}", nft_set(&spared))
                    };
                    script.push_str(&format!(
                        "add rule {BLACKHOLE_TABLE} bh_forward iifname \"{i}\" oifname \"{o}\" {m} counter name blackholed drop\n"
                    ));
                };
                let s4: Vec<String> = spare.iter().map(|a| a.to_string()).collect();
                let s6: Vec<String> = self.spare6(spare).iter().map(|a| a.to_string()).collect();
                if v4 {
                    rule("ip", "daddr", true, s4.clone());
                    rule("ip", "saddr", false, s4);
                }
                if v6 {
                    rule("ip6", "daddr", true, s6.clone());
                    rule("ip6", "saddr", false, s6);
                }
            }
            nft(&rns, &script)?;
        }
        let si = if carrier { self.info.carriers.get_mut(site) } else { self.info.sites.get_mut(site) }.unwrap();
        si.blackhole = on.then(|| spare.to_vec());
        write_state(&self.info)
    }

    /// A public address change (an ISP renumbering the site): the site's
    /// (or carrier's) router gets a new public IPv4 address from its pool
    /// (the internet's 203.0.113.0/24, or its upstream's LAN), the old one
    /// is removed, the routed internet's /32 routes follow, and every
    /// mapping is forgotten. Kernel routers: the WAN address is replaced
    /// (masquerade drops its conntrack entries with the old address), the
    /// cones' DNAT rule and sets are redone. Userspace engines: the NAT
    /// address (not the router's own WAN address) changes through the
    /// engine's control file. On a routed internet, packets from the old
    /// address are dropped from then on (the ISP's ingress filter).
    /// Updates `public_ip` / `reflexive_ip` (of
    /// nested sites too) and the state file. Returns the new address.
    pub fn renumber(&mut self, site: &str) -> Result<Ipv4Addr> {
        let (s, carrier) = self.site_or_carrier(site)?;
        let router = s.router.clone().ok_or_else(|| anyhow!("site {site} has no router (nat none)"))?;
        if s.nat == "none" {
            bail!("site {site} has no NAT (a pass-through router): nothing to renumber");
        }
        let rns = self.info.hosts[&router].netns.clone();
        let old = s.public_ip;
        // The pool: the internet, or the upstream's LAN.
        let (net, first, prefix) = match &s.upstream {
            None => (INET_NET, 10u32, INET_PREFIX),
            Some(u) => {
                let up = self.info.carriers.get(u).or_else(|| self.info.sites.get(u)).unwrap();
                let net: Ipv4Addr = up.lan.as_ref().unwrap().split('/').next().unwrap().parse()?;
                (net, if self.info.carriers.contains_key(u) { 10 } else { 100 }, 24)
            }
        };
        let used = used_addrs(&self.info);
        let new = (first..=254)
            .map(|n| Ipv4Addr::from(u32::from(net) + n))
            .find(|a| !used.contains(a) && *a != old)
            .ok_or_else(|| anyhow!("no free address left in {net}/{prefix}"))?;
        let gw = self.info.hosts[&router].gateway;
        if s.engine {
            ip_batch(
                Some(&rns),
                &[format!("route del {old}/32 dev tun0 table 101"), format!("route add {new}/32 dev tun0 table 101")],
            )?;
            let mut s2 = s.clone();
            s2.public_ip = new;
            self.control_engine(site, &s2, s.blackhole.as_deref())?;
        } else {
            // The new address's rules first, then the address: a reply to
            // the new address never meets the old rules (on a plain router
            // it would reach the input hook, and the conntrack entry
            // confirmed there makes the host's next packet to that peer
            // leave from another port).
            let k = match s.nat.parse::<NatKind>()? {
                NatKind::Kernel(k) => k,
                other => bail!("site {site}: unexpected nat {other}"),
            };
            let mut script = "flush set ip ml mapped\nflush set ip ml contacted\n".to_string();
            if matches!(k, KernelNat::FullCone | KernelNat::RestrictedCone) {
                script.push_str("flush chain ip ml pre\n");
                script.push_str(&format!("add rule ip ml pre {}\n", kernel_pre_rule(k, new, s.host_addr)));
            }
            nft(&rns, &script)?;
            let mut l = vec![format!("addr del {old}/{prefix} dev wan"), format!("addr add {new}/{prefix} dev wan")];
            if let Some(g) = gw {
                l.push(format!("route replace default via {g} dev wan"));
            }
            ip_batch(Some(&rns), &l)?;
        }
        // The routed internet reaches the new address through the same port.
        if self.info.spec.routed_internet && s.upstream.is_none() {
            let k = internet_ports(&self.info)
                .iter()
                .position(|(n, _)| n == &router)
                .ok_or_else(|| anyhow!("{router} is not on the internet"))?;
            ip_batch(
                Some(&self.info.internet),
                &[format!("route del {old}/32 dev p{k}"), format!("route add {new}/32 dev p{k}")],
            )?;
            // The ISP no longer routes the old address either way (BCP 38
            // ingress filtering): replies of flows a kernel router had
            // DNATed (a cone's inbound mappings, which masquerade does not
            // flush) would otherwise still leave with it as their source.
            nft(
                &self.info.internet,
                &format!(
                    "table ip mlgone {{\n  set gone {{ type ipv4_addr; }}\n  chain from_gone {{ type filter hook forward priority filter; policy accept; }}\n}}\n\
                     flush chain ip mlgone from_gone\nadd rule ip mlgone from_gone ip saddr @gone counter drop\nadd element ip mlgone gone {{ {old} }}\n"
                ),
            )?;
        }
        // Forget the old address's neighbour entries on the internet side.
        let _ = ip_batch(Some(&self.info.internet), &[format!("neigh flush to {old}")]);
        // The description.
        let h = self.info.hosts.get_mut(&router).unwrap();
        for a in h.addrs.iter_mut().chain(h.public_addrs.iter_mut()) {
            if *a == old {
                *a = new;
            }
        }
        let si = if carrier { self.info.carriers.get_mut(site) } else { self.info.sites.get_mut(site) }.unwrap();
        si.public_ip = new;
        if si.wan_addr == Some(old) {
            si.wan_addr = Some(new);
        }
        let carriers = self.info.carriers.clone();
        crate::lab::update_reflexive(&mut self.info.sites, &carriers);
        if carrier {
            // A carrier's reflexive address is its own public one.
            self.info.carriers.get_mut(site).unwrap().reflexive_ip = new;
        }
        self.info.retired_addrs.push(old);
        write_state(&self.info)?;
        Ok(new)
    }

    /// The IPv6 part of a lab with `ipv6` (after its IPv4 build).
    ///
    /// Flat internet: every internet host's v6 address is on-link
    /// (2001:db8::/64), and each IPv6 site's /64 is routed via its router's
    /// WAN address in every other internet namespace. Routed internet:
    /// hosts have their address as /128 and a default route via the
    /// router's link-local `fe80::1` on each port (their own is `fe80::2`);
    /// the router has /128 routes to hosts and the sites' /64s.
    pub(crate) fn build_ipv6(&self) -> Result<()> {
        let info = &self.info;
        let routed = info.spec.routed_internet;
        let ports = internet_ports(info);
        let mut inet: Vec<String> = vec![];
        if routed {
            inet.push(format!("addr add {INET6_ROUTER}/128 dev lo"));
        }
        // (namespace, interface, site /64 and router WAN address)
        let mut on_inet: Vec<(String, &str)> = vec![];
        let mut site_nets: Vec<(String, String, Ipv6Addr)> = vec![];
        for (k, (name, ifname)) in ports.iter().enumerate() {
            let h = &info.hosts[name];
            let v6s: Vec<Ipv6Addr> = h.addrs6.iter().copied().filter(in_inet6).collect();
            if v6s.is_empty() {
                continue;
            }
            let mut l = vec![];
            for a in &v6s {
                if routed {
                    l.push(format!("addr add {a}/128 dev {ifname} nodad"));
                    inet.push(format!("route add {a}/128 dev p{k}"));
                } else {
                    l.push(format!("addr add {a}/64 dev {ifname} nodad"));
                }
            }
            if routed {
                l.push(format!("addr add fe80::2/64 dev {ifname} nodad"));
                l.push(format!("route add ::/0 via fe80::1 dev {ifname}"));
                inet.push(format!("addr add fe80::1/64 dev p{k} nodad"));
            }
            ip_batch(Some(&h.netns), &l)?;
            if let Some(s) = h.site.as_ref().and_then(|s| info.sites.get(s)).filter(|s| s.router.as_ref() == Some(name)) {
                if let Some(lan6) = &s.lan6 {
                    if routed {
                        inet.push(format!("route add {lan6} via fe80::2 dev p{k}"));
                    }
                    site_nets.push((name.clone(), lan6.clone(), s.wan_addr6.unwrap()));
                }
            }
            on_inet.push((h.netns.clone(), ifname));
        }
        if routed {
            ip_batch(Some(&info.internet), &inet)?;
            sysctls(&info.internet, vec![("net.ipv6.conf.all.forwarding".into(), "1".into())])?;
        } else {
            // Flat: routes to each site's /64 via its router, everywhere else.
            for (ns, ifname) in &on_inet {
                let l: Vec<String> = site_nets
                    .iter()
                    .filter(|(r, _, _)| &info.hosts[r].netns != ns)
                    .map(|(_, net, via)| format!("route add {net} via {via} dev {ifname}"))
                    .collect();
                ip_batch(Some(ns), &l)?;
            }
        }
        // Site LANs: router ::1 with the firewall, hosts ::2, ::10, ...
        for s in info.sites.values() {
            let (Some(router), Some(_)) = (&s.router, &s.lan6) else { continue };
            let r = &info.hosts[router];
            let gw6 = r.addrs6[0];
            ip_batch(Some(&r.netns), &[format!("addr add {gw6}/64 dev lan nodad")])?;
            sysctls(&r.netns, vec![("net.ipv6.conf.all.forwarding".into(), "1".into())])?;
            nft(&r.netns, &fw6_ruleset())?;
            for h in std::iter::once(&s.host).chain(&s.extra_hosts) {
                let h = &info.hosts[h];
                ip_batch(
                    Some(&h.netns),
                    &[format!("addr add {}/64 dev eth0 nodad", h.addrs6[0]), format!("route add ::/0 via {gw6} dev eth0")],
                )
                .with_context(|| format!("IPv6 of {}", h.netns))?;
            }
        }
        Ok(())
    }
}

/// Every IPv4 address the lab uses (hosts, routers, NAT public addresses).
fn used_addrs(info: &LabInfo) -> BTreeSet<Ipv4Addr> {
    let mut v = BTreeSet::new();
    for h in info.hosts.values() {
        v.extend(h.addrs.iter().chain(&h.public_addrs).copied());
    }
    for s in info.sites.values().chain(info.carriers.values()) {
        v.extend([Some(s.public_ip), s.wan_addr, Some(s.host_addr)].into_iter().flatten());
    }
    v.extend(info.retired_addrs.iter().copied());
    v
}
