//! NAT behaviours seen in the wild: port overloading by Linux conntrack
//! (extra hosts on a site LAN), carrier-grade NAT (double NAT, hairpinning
//! at the carrier), a Docker-style host on a home LAN, and TTL/traceroute
//! through nested NATs. Real namespaces; every lab is torn down on drop.

mod common;

use macula_nat_lab::spec::CarrierSpec;
use macula_nat_lab::{netns, Lab, LabSpec, SiteSpec};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A UDP socket bound to `port` inside `host`'s namespace (it stays there
/// when used from this thread).
fn sock(lab: &Lab, host: &str, port: u16) -> UdpSocket {
    let ns = lab.netns(host).unwrap();
    let s = netns::in_ns(&ns, move || Ok(UdpSocket::bind(("0.0.0.0", port))?)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    s
}

/// The next datagram within `ms` (its payload and source), if any.
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

/// Sends from `s` to the public echo socket `echo` at `to`, lets `echo`
/// answer with the source it saw, and returns that source (as the client
/// read it back). Panics when either direction fails.
fn reflexive(s: &UdpSocket, echo: &UdpSocket, to: SocketAddr) -> SocketAddr {
    s.send_to(b"who am i", to).unwrap();
    let (_, seen) = recv(echo, 2000).expect("echo server got nothing");
    echo.send_to(seen.to_string().as_bytes(), seen).unwrap();
    let (b, from) = recv(s, 2000).expect("no answer from the echo server");
    assert_eq!(from, to);
    let back: SocketAddr = String::from_utf8(b).unwrap().parse().unwrap();
    assert_eq!(back, seen);
    seen
}

fn ep(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

#[test]
fn port_overloading_kernel_conntrack() {
    if !common::lab_ready(&[]) {
        return;
    }
    let mut spec = LabSpec::new("tpovl");
    spec.public = vec!["p1".into(), "p2".into()];
    let mut s = SiteSpec::new("s", "kernel:port_restricted_cone").unwrap();
    s.plain_router = true;
    s.extra_hosts = vec!["s2".into()];
    spec.sites.push(s);
    let lab = Lab::up(spec).unwrap();
    let public = lab.site("s").unwrap().public_ip;
    assert_eq!(lab.host_addr("s2").unwrap(), Ipv4Addr::new(198, 18, 1, 10));
    let p1 = ep(lab.host_addr("p1").unwrap(), 5000);
    let p2 = ep(lab.host_addr("p2").unwrap(), 5000);
    let e1 = sock(&lab, "p1", 5000);
    let e2 = sock(&lab, "p2", 5000);
    let a = sock(&lab, "s", 4000);
    let b = sock(&lab, "s2", 4000);
    // Host 1 -> p1, host 2 -> p2: the tuples differ, both keep port 4000.
    let a_p1 = reflexive(&a, &e1, p1);
    let b_p2 = reflexive(&b, &e2, p2);
    // Host 2 -> p1: (public:4000 -> p1) is host 1's; another port.
    let b_p1 = reflexive(&b, &e1, p1);
    eprintln!("port overloading: s:4000 -> p1 seen as {a_p1}, s2:4000 -> p2 as {b_p2}, s2:4000 -> p1 as {b_p1}");
    assert_eq!(a_p1, ep(public, 4000));
    assert_eq!(b_p2, ep(public, 4000), "second host towards another destination shares the public port");
    assert_eq!(b_p1.ip(), std::net::IpAddr::V4(public));
    assert_ne!(b_p1.port(), 4000, "second host towards the same destination gets another port");
    // Both hosts still answered on the shared port: p2 -> public:4000 is host 2's.
    e2.send_to(b"again", ep(public, 4000)).unwrap();
    assert_eq!(recv(&b, 1000).map(|x| x.1), Some(p2));
    e1.send_to(b"again", ep(public, 4000)).unwrap();
    assert_eq!(recv(&a, 1000).map(|x| x.1), Some(p1));
}

#[test]
fn carrier_grade_nat_hairpin_and_across_carriers() {
    if !common::lab_ready(&[]) {
        return;
    }
    let mut spec = LabSpec::new("tcgn");
    spec.routed_internet = true;
    spec.public = vec!["pub".into()];
    let mut on = CarrierSpec::new("cgh", "user:ei-pd-rd").unwrap();
    on.hairpin = true;
    spec.carriers = vec![on, CarrierSpec::new("cgn", "user:ei-pd-rd").unwrap()];
    // Behind cgh (hairpin on): a kernel home and an engine home; behind cgn
    // (hairpin off) two kernel homes.
    for (name, nat, up) in [
        ("ha", "kernel:port_restricted_cone", "cgh"),
        ("hb", "user:ei-pd-pp", "cgh"),
        ("na", "kernel:port_restricted_cone", "cgn"),
        ("nb", "kernel:port_restricted_cone", "cgn"),
    ] {
        let mut s = SiteSpec::new(name, nat).unwrap();
        s.upstream = Some(up.into());
        spec.sites.push(s);
    }
    let lab = Lab::up(spec).unwrap();
    let cgh = lab.carrier("cgh").unwrap().public_ip;
    let cgn = lab.carrier("cgn").unwrap().public_ip;
    assert_eq!(lab.site("ha").unwrap().reflexive_ip, cgh);
    assert_eq!(lab.site("nb").unwrap().reflexive_ip, cgn);
    assert_eq!(lab.host("cgh").unwrap().addrs[0], Ipv4Addr::new(100, 64, 1, 1));
    assert_eq!(lab.site("ha").unwrap().wan_addr, Some(Ipv4Addr::new(100, 64, 1, 10)));
    let to = ep(lab.host_addr("pub").unwrap(), 5000);
    let echo = sock(&lab, "pub", 5000);
    let socks: Vec<(&str, UdpSocket)> = ["ha", "hb", "na", "nb"].into_iter().map(|h| (h, sock(&lab, h, 4000))).collect();
    let mut mapped = std::collections::BTreeMap::new();
    for (h, s) in &socks {
        let m = reflexive(s, &echo, to);
        eprintln!("carrier: {h} is seen on the internet as {m}");
        assert_eq!(m.ip(), std::net::IpAddr::V4(lab.site(h).unwrap().reflexive_ip));
        mapped.insert(*h, m);
    }
    let s = |h: &str| &socks.iter().find(|x| x.0 == h).unwrap().1;
    // A hole punch through both layers, between two homes of one carrier:
    // B opens its mappings towards A's public endpoint, then A sends to B's.
    let punch = |a: &str, b: &str| -> Option<SocketAddr> {
        s(b).send_to(b"open", mapped[a]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        while recv(s(a), 50).is_some() {} // the opener may or may not get through
        s(a).send_to(b"hello", mapped[b]).unwrap();
        recv(s(b), 1000).map(|x| x.1)
    };
    let got = punch("ha", "hb");
    eprintln!("carrier hairpin on: ha -> hb's {} arrives from {got:?}", mapped["hb"]);
    assert_eq!(got, Some(mapped["ha"]), "hairpin at the carrier: B sees A's carrier public endpoint");
    let st = stats_when(&lab, "cgh", "hairpinned");
    assert_eq!(st.kind, "user");
    assert!(st.counters["hairpinned"] >= 1, "{st:?}");
    let got = punch("na", "nb");
    eprintln!("carrier hairpin off: na -> nb's {} arrives from {got:?}", mapped["nb"]);
    assert_eq!(got, None, "no hairpin at the carrier: the path through its public address fails");
    let st = stats_when(&lab, "cgn", "dropped_hairpin");
    assert!(st.counters["dropped_hairpin"] >= 1, "{st:?}");
    // Homes behind different carriers: through both carriers and the internet.
    let got = punch("ha", "nb");
    eprintln!("across carriers: ha -> nb's {} arrives from {got:?}", mapped["nb"]);
    assert_eq!(got, Some(mapped["ha"]));
    s("nb").send_to(b"back", mapped["ha"]).unwrap();
    assert_eq!(recv(s("ha"), 1000).map(|x| x.1), Some(mapped["nb"]));
    // A carrier can be rebound like a site's engine.
    lab.rebind("cgh").unwrap();
}

/// A router's counters once `counter` is non-zero (engines write theirs
/// every 100 ms), or after a second.
fn stats_when(lab: &Lab, router: &str, counter: &str) -> macula_nat_lab::RouterStats {
    let t0 = Instant::now();
    loop {
        let st = lab.router_stats(router).unwrap();
        if st.counters.get(counter).copied().unwrap_or(0) > 0 || t0.elapsed() > Duration::from_secs(1) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the TTL-`k` probe met: a router (time exceeded, from this address)
/// or the destination.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Hop {
    Router(Ipv4Addr),
    Destination,
}

/// A UDP traceroute from `host` to `dst` (one socket per TTL, errors read
/// from the IP_RECVERR queue as the primer does).
fn traceroute(lab: &Lab, host: &str, dst: SocketAddr, max: u8) -> Vec<Option<Hop>> {
    let mut hops = vec![];
    for ttl in 1..=max {
        let s = sock(lab, host, 0);
        let on: libc::c_int = 1;
        // SAFETY: valid socket, c_int option.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of_val(&on) as u32,
            )
        };
        assert_eq!(r, 0);
        s.set_ttl(ttl as u32).unwrap();
        s.set_nonblocking(true).unwrap();
        s.send_to(b"probe", dst).unwrap();
        let t0 = Instant::now();
        let mut hop = None;
        while hop.is_none() && t0.elapsed() < Duration::from_millis(1500) {
            hop = read_error(s.as_raw_fd());
            let mut b = [0u8; 100];
            if hop.is_none() && s.recv_from(&mut b).is_ok() {
                hop = Some(Hop::Destination);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let done = hop == Some(Hop::Destination);
        hops.push(hop);
        if done {
            break;
        }
    }
    hops
}

fn read_error(fd: libc::c_int) -> Option<Hop> {
    let mut data = [0u8; 1500];
    let mut ctrl = [0u64; 64];
    let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: every pointer is a live buffer of the stated length.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of_val(&from) as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&ctrl) as _;
    if unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) } < 0 {
        return None;
    }
    // SAFETY: the kernel filled msg_control with well-formed cmsgs.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_RECVERR {
            let ee = unsafe { &*(libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err) };
            let off = unsafe { &*(libc::SO_EE_OFFENDER(ee) as *const libc::sockaddr_in) };
            let addr = Ipv4Addr::from(u32::from_be(off.sin_addr.s_addr));
            return Some(if ee.ee_type == 11 { Hop::Router(addr) } else { Hop::Destination });
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    None
}

/// Inside a NAT as far as the primer goes (macula_nat_core::punch::primer):
/// private, RFC 6598 shared, link-local, loopback, 198.18.0.0/15.
fn inside(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private() || ip.is_loopback() || ip.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64) || (o[0] == 198 && (o[1] & 0xfe) == 18)
}

/// The primer's TTL: the hop of the first router with a globally routed address.
fn primer_ttl(hops: &[Option<Hop>]) -> Option<u8> {
    for (i, h) in hops.iter().enumerate() {
        match h {
            Some(Hop::Router(a)) if !inside(*a) => return Some(i as u8 + 1),
            Some(Hop::Router(_)) => continue,
            _ => return None,
        }
    }
    None
}

#[test]
fn docker_style_host_and_hops_through_nested_nats() {
    if !common::lab_ready(&[]) {
        return;
    }
    let mut spec = LabSpec::new("tdock");
    spec.routed_internet = true;
    spec.public = vec!["pub".into()];
    spec.carriers = vec![CarrierSpec::new("cg", "user:ei-pd-rd").unwrap()];
    let mut home = SiteSpec::new("home", "kernel:port_restricted_cone").unwrap();
    home.plain_router = true;
    let mut ctr = SiteSpec::new("ctr", "kernel:port_restricted_cone").unwrap();
    ctr.plain_router = true;
    ctr.upstream = Some("home".into());
    let mut cs = SiteSpec::new("cs", "kernel:port_restricted_cone").unwrap();
    cs.upstream = Some("cg".into());
    let mut cu = SiteSpec::new("cu", "user:ei-pd-pp").unwrap();
    cu.upstream = Some("cg".into());
    spec.sites = vec![home, ctr, cs, cu];
    let lab = Lab::up(spec).unwrap();
    let home_ip = lab.site("home").unwrap().public_ip;
    let ctr_info = lab.site("ctr").unwrap();
    assert_eq!(ctr_info.public_ip, Ipv4Addr::new(198, 18, 1, 100), "Docker host's address on the home LAN");
    assert_eq!(ctr_info.reflexive_ip, home_ip);
    let to = ep(lab.host_addr("pub").unwrap(), 5000);
    let echo = sock(&lab, "pub", 5000);
    let seen = reflexive(&sock(&lab, "ctr", 4000), &echo, to);
    eprintln!("docker: container ctr is seen as {seen} (home router {home_ip})");
    assert_eq!(seen.ip(), std::net::IpAddr::V4(home_ip));
    // A process on the Docker host itself.
    let seen = reflexive(&sock(&lab, "ctr-nat", 4001), &echo, to);
    assert_eq!(seen.ip(), std::net::IpAddr::V4(home_ip));
    let o = lab.exec("ctr-nat", &["ip", "-4", "-o", "addr"]).unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("198.18.1.100"));
    // Traceroutes (to a closed port: the destination answers unreachable).
    let dst = ep(lab.host_addr("pub").unwrap(), 5999);
    let r = Hop::Router;
    let inet = r(Ipv4Addr::new(203, 0, 113, 1));
    for (host, want_hops, want_ttl) in [
        ("home", vec![r(Ipv4Addr::new(198, 18, 1, 1)), inet], 2),
        ("cs", vec![r(Ipv4Addr::new(198, 18, 3, 1)), r(Ipv4Addr::new(100, 64, 1, 1)), inet], 3),
        ("cu", vec![r(Ipv4Addr::new(198, 18, 4, 1)), r(Ipv4Addr::new(100, 64, 1, 1)), inet], 3),
        ("ctr", vec![r(Ipv4Addr::new(198, 18, 2, 1)), r(Ipv4Addr::new(198, 18, 1, 1)), inet], 3),
    ] {
        let hops = traceroute(&lab, host, dst, 6);
        let ttl = primer_ttl(&hops);
        eprintln!("traceroute from {host}: {hops:?} -> primer ttl {ttl:?}");
        let mut want: Vec<Option<Hop>> = want_hops.into_iter().map(Some).collect();
        want.push(Some(Hop::Destination));
        assert_eq!(hops, want, "{host}");
        assert_eq!(ttl, Some(want_ttl), "{host}");
    }
}
