//! Changes to a running lab (issue 19): a black hole at a site's router
//! with a spared host, a public address change (renumbering), and IPv6
//! (dual stack and IPv6-only sites behind a stateful firewall without NAT).
//! UDP sockets in real namespaces; every lab is torn down on drop (also
//! when an assertion fails).

mod common;

use macula_nat_lab::{lab, netns, Lab, LabSpec, SiteSpec};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A UDP socket bound to `ip:port` inside `host`'s namespace.
fn sock_at(lab: &Lab, host: &str, ip: IpAddr, port: u16) -> UdpSocket {
    let ns = lab.netns(host).unwrap();
    let s = netns::in_ns(&ns, move || Ok(UdpSocket::bind((ip, port))?)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

fn sock(lab: &Lab, host: &str, port: u16) -> UdpSocket {
    sock_at(lab, host, Ipv4Addr::UNSPECIFIED.into(), port)
}

/// Bound to the host's (first) global IPv6 address: an IPv4 socket on the
/// same port may exist (`[::]` would take both families).
fn sock6(lab: &Lab, host: &str, port: u16) -> UdpSocket {
    sock_at(lab, host, lab.host_addr6(host).unwrap().into(), port)
}

/// The next datagram within `ms`, if any.
fn recv(s: &UdpSocket, ms: u64) -> Option<(Vec<u8>, SocketAddr)> {
    let t0 = Instant::now();
    let mut buf = [0u8; 1500];
    while t0.elapsed() < Duration::from_millis(ms) {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            return Some((buf[..n].to_vec(), from));
        }
    }
    None
}

fn drain(s: &UdpSocket) {
    while recv(s, 30).is_some() {}
}

/// `s` sends to the echo socket `echo` (at `to`); the echo answers; returns
/// the source the echo saw, or None when either direction got nothing.
fn exchange(s: &UdpSocket, echo: &UdpSocket, to: SocketAddr) -> Option<SocketAddr> {
    drain(echo);
    drain(s);
    s.send_to(b"ping", to).unwrap();
    let (_, seen) = recv(echo, 1000)?;
    echo.send_to(b"pong", seen).unwrap();
    let (b, from) = recv(s, 1000)?;
    assert_eq!(b, b"pong");
    assert_eq!(from, to);
    Some(seen)
}

fn ep(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A black hole at a kernel and a userspace router: the direct path to a
/// peer goes dark in both directions while the spared relay stays
/// reachable; counted; lifting it restores the peer path.
#[test]
fn blackhole_spares_the_relay() {
    if !common::lab_ready(&[]) {
        return;
    }
    let mut spec = LabSpec::new("tbh");
    spec.relays = vec!["relay".into()];
    spec.public = vec!["peer".into()];
    spec.sites.push(SiteSpec::new("k", "kernel:full_cone").unwrap());
    spec.sites.push(SiteSpec::new("u", "user:ei-ei-pp").unwrap());
    let mut lab = Lab::up(spec).unwrap();
    let relay_ip = lab.host_addr("relay").unwrap();
    let peer_ip = lab.host_addr("peer").unwrap();
    let relay = sock(&lab, "relay", 5000);
    let peer = sock(&lab, "peer", 5000);
    for site in ["k", "u"] {
        let h = sock(&lab, site, 4000);
        let to_relay = ep(relay_ip, 5000);
        let to_peer = ep(peer_ip, 5000);
        let mapped = exchange(&h, &peer, to_peer).expect("peer path before the black hole");
        assert!(exchange(&h, &relay, to_relay).is_some(), "{site}: relay path before");
        lab.blackhole(site, true, &[relay_ip]).unwrap();
        assert_eq!(lab.site(site).unwrap().blackhole, Some(vec![relay_ip]));
        let t0 = Instant::now();
        assert!(exchange(&h, &relay, to_relay).is_some(), "{site}: the spared relay stays reachable");
        let relay_rtt = t0.elapsed();
        // Outbound to the peer: nothing arrives.
        drain(&peer);
        h.send_to(b"dark", to_peer).unwrap();
        assert!(recv(&peer, 500).is_none(), "{site}: outbound to the peer crossed the black hole");
        // Inbound from the peer to the (full cone / EI) mapping: nothing.
        peer.send_to(b"dark", mapped).unwrap();
        assert!(recv(&h, 500).is_none(), "{site}: inbound from the peer crossed the black hole");
        let st = lab.router_stats(site).unwrap();
        eprintln!("{site}: black hole dropped {} (relay rtt {relay_rtt:?})", st.dropped_blackhole);
        assert!(st.dropped_blackhole >= 2, "{site}: {st:?}");
        lab.blackhole(site, false, &[]).unwrap();
        assert_eq!(lab.site(site).unwrap().blackhole, None);
        assert_eq!(exchange(&h, &peer, to_peer), Some(mapped), "{site}: peer path after the black hole");
        // State file follows.
        assert!(lab::read_state("tbh").unwrap().sites[site].blackhole.is_none());
    }
}

/// A public address change at a kernel full cone and a userspace router,
/// on a flat and on a routed internet: afterwards a host's packets arrive
/// from the new address, the old one reaches nothing, the full cone's DNAT
/// follows, the description (state file) has the new address.
#[test]
fn renumber_kernel_and_userspace() {
    if !common::lab_ready(&[]) {
        return;
    }
    for routed in [false, true] {
        let name = if routed { "trnr" } else { "trnf" };
        let mut spec = LabSpec::new(name);
        spec.routed_internet = routed;
        spec.public = vec!["p1".into(), "p2".into()];
        spec.sites.push(SiteSpec::new("k", "kernel:full_cone").unwrap());
        spec.sites.push(SiteSpec::new("u", "user:ei-ei-rd").unwrap());
        let mut lab = Lab::up(spec).unwrap();
        let p1_ip = lab.host_addr("p1").unwrap();
        let p2_ip = lab.host_addr("p2").unwrap();
        let p1 = sock(&lab, "p1", 5000);
        let p2 = sock(&lab, "p2", 5000);
        for site in ["k", "u"] {
            let h = sock(&lab, site, 4000);
            let old = lab.site(site).unwrap().public_ip;
            let before = exchange(&h, &p1, ep(p1_ip, 5000)).expect("before");
            assert_eq!(before.ip(), IpAddr::V4(old));
            let new = lab.renumber(site).unwrap();
            assert_ne!(new, old);
            let after = exchange(&h, &p1, ep(p1_ip, 5000)).expect("after the renumbering");
            eprintln!("{name}/{site}: {before} -> {after}");
            assert_eq!(after.ip(), IpAddr::V4(new), "{site}: packets come from the new address");
            // The old address reaches nothing.
            drain(&h);
            p1.send_to(b"old", ep(old, before.port())).unwrap();
            assert!(recv(&h, 500).is_none(), "{site}: the old address still reaches the host");
            // Endpoint-independent filtering at the new address: another host gets in.
            p2.send_to(b"new", after).unwrap();
            let (_, from) = recv(&h, 1000).expect("unsolicited to the new mapping (EI filtering)");
            assert_eq!(from, ep(p2_ip, 5000));
            let st = lab::read_state(name).unwrap();
            assert_eq!(st.sites[site].public_ip, new);
            assert_eq!(st.sites[site].reflexive_ip, new);
            assert!(st.hosts[&format!("{site}-nat")].public_addrs.contains(&new));
            let addrs = lab.exec(&format!("{site}-nat"), &["ip", "-4", "-o", "addr"]).unwrap();
            let addrs = String::from_utf8_lossy(&addrs.stdout);
            assert!(!addrs.contains(&format!("{old}/")), "{site}: old address still configured:\n{addrs}");
            if site == "u" {
                assert_eq!(lab.router_stats(site).unwrap().counters["renumbers"], 1);
            }
        }
    }
}

/// Renumbering a carrier (the homes behind it are seen from its new
/// address) and a home behind it (a new address on the carrier's LAN).
#[test]
fn renumber_carrier_and_nested_site() {
    if !common::lab_ready(&[]) {
        return;
    }
    let spec: LabSpec = serde_json::from_str(
        r#"{"name":"trnc","routed_internet":true,"public":["p1"],
            "carriers":[{"name":"cg","nat":"user:ei-pd-rd"}],
            "sites":[{"name":"h","nat":"kernel:port_restricted_cone","upstream":"cg"}]}"#,
    )
    .unwrap();
    let mut lab = Lab::up(spec).unwrap();
    let p1_ip = lab.host_addr("p1").unwrap();
    let p1 = sock(&lab, "p1", 5000);
    let h = sock(&lab, "h", 4000);
    let old = lab.carrier("cg").unwrap().public_ip;
    assert_eq!(exchange(&h, &p1, ep(p1_ip, 5000)).unwrap().ip(), IpAddr::V4(old));
    let new = lab.renumber("cg").unwrap();
    assert_eq!(exchange(&h, &p1, ep(p1_ip, 5000)).unwrap().ip(), IpAddr::V4(new), "home seen from the carrier's new address");
    let st = lab::read_state("trnc").unwrap();
    assert_eq!((st.carriers["cg"].public_ip, st.sites["h"].reflexive_ip), (new, new));
    assert_eq!(st.retired_addrs, vec![old]);
    // The home router itself: a new address on the carrier LAN.
    let home_old = lab.site("h").unwrap().public_ip;
    let home_new = lab.renumber("h").unwrap();
    assert_ne!(home_new, home_old);
    assert_eq!(home_new.octets()[..3], [100, 64, 1], "{home_new}");
    assert_eq!(exchange(&h, &p1, ep(p1_ip, 5000)).unwrap().ip(), IpAddr::V4(new), "still through the carrier");
    assert_eq!(lab.site("h").unwrap().reflexive_ip, new);
}

/// The CLI: `blackhole` and `renumber` on a lab built by `up`.
#[test]
fn cli_blackhole_and_renumber() {
    if !common::lab_ready(&[]) {
        return;
    }
    let run = |args: &[&str]| {
        let o = std::process::Command::new(common::bin()).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let spec = r#"{"name":"tcli6","public":["pub"],"sites":[{"name":"k","nat":"kernel:port_restricted_cone"},{"name":"u","nat":"user:ei-pd-pp"}]}"#;
    let me = std::process::id().to_string();
    run(&["up", "--json", spec, "--owner", &me]);
    struct Down;
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = lab::down("tcli6");
        }
    }
    let _down = Down;
    for site in ["k", "u"] {
        let old = run(&["get", "tcli6", &format!("/sites/{site}/public_ip")]);
        let new = run(&["renumber", "tcli6", site]);
        assert_ne!(old, new);
        assert_eq!(run(&["get", "tcli6", &format!("/sites/{site}/public_ip")]), new);
        let pubip = run(&["get", "tcli6", "/hosts/pub/addrs/0"]);
        run(&["blackhole", "tcli6", site, "on", "--spare", &pubip]);
        assert_eq!(run(&["get", "tcli6", &format!("/sites/{site}/blackhole/0")]), pubip);
        let st: serde_json::Value = serde_json::from_str(&run(&["stats", "tcli6", site])).unwrap();
        assert!(st["dropped_blackhole"].is_u64(), "{st}");
        run(&["blackhole", "tcli6", site, "off"]);
    }
}

/// IPv6: dual-stack sites (kernel and userspace NAT44) and an IPv6-only
/// site, flat and routed internet. Over IPv6 the host is seen by its own
/// address (no NAT), over IPv4 by the NAT's; unsolicited IPv6 is filtered
/// by address and port until the host has sent; a black hole spares the
/// relay's IPv6 address too.
#[test]
fn ipv6_dual_stack_stateful_firewall() {
    if !common::lab_ready(&[]) {
        return;
    }
    for routed in [false, true] {
        let name = if routed { "t6r" } else { "t6f" };
        let mut spec = LabSpec::new(name);
        spec.ipv6 = true;
        spec.routed_internet = routed;
        spec.observers = vec!["obs".into()];
        spec.public = vec!["pub".into()];
        let mut d = SiteSpec::new("d", "kernel:port_restricted_cone").unwrap();
        d.ipv6 = true;
        let mut e = SiteSpec::new("e", "user:ei-pd-pp").unwrap();
        e.ipv6 = true;
        let mut o = SiteSpec::new("o", "kernel:port_restricted_cone").unwrap();
        o.ipv6_only = true;
        let mut n = SiteSpec::new("n", "none").unwrap();
        n.ipv6 = true;
        spec.sites.extend([d, e, o, n, SiteSpec::new("v4", "kernel:symmetric").unwrap()]);
        let mut lab = Lab::up(spec).unwrap();
        let pub4 = lab.host_addr("pub").unwrap();
        let pub6 = lab.host_addr6("pub").unwrap();
        let [obs6a, obs6b] = lab.info.observers6["obs"];
        assert!(lab.host_addr6("v4").is_err(), "an IPv4 site stays IPv4-only");
        assert!(lab.host_addr("o").is_err(), "an IPv6-only site has no IPv4 address");
        let echo4 = sock(&lab, "pub", 5000);
        let echo6 = sock6(&lab, "pub", 5000);
        let other6 = sock6(&lab, "pub", 5001);
        let obs6 = sock_at(&lab, "obs", obs6b.into(), 5000);
        let obs4 = sock_at(&lab, "obs", lab.info.observers["obs"][0].into(), 5000);
        for site in ["d", "e", "o"] {
            let si = lab.site(site).unwrap().clone();
            let a6 = si.host_addr6.unwrap();
            let h6 = sock6(&lab, site, 4000);
            let seen = exchange(&h6, &echo6, ep(pub6, 5000)).expect("IPv6 to the public host");
            assert_eq!(seen, ep(a6, 4000), "{site}: IPv6 is not translated");
            if site != "o" {
                let h4 = sock(&lab, site, 4000);
                let seen4 = exchange(&h4, &echo4, ep(pub4, 5000)).expect("IPv4 to the public host");
                assert_eq!(seen4.ip(), IpAddr::V4(si.public_ip), "{site}: IPv4 is NATed");
            } else {
                assert!(si.ipv6_only);
            }
            // Unsolicited: another port of the same host, another host, a
            // port the site host never sent from: all filtered.
            other6.send_to(b"x", ep(a6, 4000)).unwrap();
            obs6.send_to(b"x", ep(a6, 4000)).unwrap();
            let h6b = sock6(&lab, site, 4001);
            echo6.send_to(b"x", ep(a6, 4001)).unwrap();
            assert!(recv(&h6, 400).is_none(), "{site}: unsolicited IPv6 got in");
            assert!(recv(&h6b, 100).is_none(), "{site}: unsolicited IPv6 to a fresh port got in");
            // After the host sent, the reply gets in.
            assert_eq!(exchange(&h6b, &echo6, ep(pub6, 5000)), Some(ep(a6, 4001)), "{site}: reply after sending");
            let st = lab.router_stats(site).unwrap();
            eprintln!("{name}/{site}: out6 {} in6 {} filtered6 {}", st.counters["out6_packets"], st.counters["in6_packets"], st.counters["filtered6_packets"]);
            assert!(st.counters["filtered6_packets"] >= 3, "{site}: {st:?}");
            // Black hole: the relay-like public host stays reachable over
            // IPv6 (its IPv4 address spares its IPv6 one), the observer not.
            lab.blackhole(site, true, &[pub4]).unwrap();
            assert!(exchange(&h6, &echo6, ep(pub6, 5000)).is_some(), "{site}: spared host over IPv6");
            drain(&obs6);
            h6.send_to(b"dark", ep(obs6b, 5000)).unwrap();
            assert!(recv(&obs6, 400).is_none(), "{site}: IPv6 crossed the black hole");
            if site != "o" {
                let h4 = sock(&lab, site, 4002);
                h4.send_to(b"dark", ep(lab.info.observers["obs"][0], 5000)).unwrap();
                assert!(recv(&obs4, 400).is_none(), "{site}: IPv4 crossed the black hole");
            }
            assert!(lab.router_stats(site).unwrap().dropped_blackhole >= 1);
            lab.blackhole(site, false, &[]).unwrap();
            assert!(exchange(&h6, &obs6, ep(obs6b, 5000)).is_some(), "{site}: IPv6 after the black hole");
        }
        // A `none` site has an internet IPv6 address and no firewall.
        let hn = sock6(&lab, "n", 4000);
        assert_eq!(lab.host_addr6("n").unwrap(), lab.site("n").unwrap().host_addr6.unwrap());
        other6.send_to(b"open", ep(lab.host_addr6("n").unwrap(), 4000)).unwrap();
        assert_eq!(recv(&hn, 1000).expect("unsolicited IPv6 to a none site").1, ep(pub6, 5001));
        // Sites reach each other over IPv6 once both sent (a hole punch
        // through two address-and-port-dependent firewalls).
        let (dd, ee) = (lab.site("d").unwrap().host_addr6.unwrap(), lab.site("e").unwrap().host_addr6.unwrap());
        let hd = sock6(&lab, "d", 4100);
        let he = sock6(&lab, "e", 4100);
        hd.send_to(b"punch", ep(ee, 4100)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        he.send_to(b"punch", ep(dd, 4100)).unwrap();
        let (_, from) = recv(&hd, 1000).expect("e's punch reaches d");
        assert_eq!(from, ep(ee, 4100));
        hd.send_to(b"punch", ep(ee, 4100)).unwrap();
        assert_eq!(recv(&he, 1000).expect("d's second punch reaches e").1, ep(dd, 4100));
        let _ = obs6a;
    }
}
