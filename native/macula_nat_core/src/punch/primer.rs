//! TTL-limited primers: a packet that leaves our own NAT(s), so they create
//! the mapping and the filter permission towards a peer, and dies at the
//! next router, before it can reach the peer's NAT.
//!
//! Why: a plain Linux router (masquerade, no rule on its input chain) that
//! receives a peer's punch before its own host has sent anything to that
//! peer refuses it but confirms a conntrack entry (peer -> public port);
//! the host's own packet to the peer then cannot use its public port and
//! leaves from another one, which the peer's port-dependent filter drops.
//! Whether a pair punches then depends on which first packet wins a race.
//! With a primer sent before the punch starts, each side's outbound entry
//! exists before the other's first packet can arrive, in any order.
//!
//! How many hops pass our NAT(s) is learnt, not assumed ([`learn_hops`]): a
//! traceroute towards the rendezvous on a throwaway socket, reading the
//! ICMP time-exceeded errors from the socket's error queue (`IP_RECVERR`,
//! no privileges). The primer's TTL is the hop of the first router with a
//! globally routed address before the rendezvous: every hop before it is
//! inside (private, shared carrier-grade or benchmarking space), so our
//! outermost NAT is the hop just before it. When no such router answers
//! (the rendezvous is the next hop after our NAT, or routers keep silent),
//! no primer is sent: one that reached the peer's NAT would do the harm it
//! is meant to prevent. IPv4 only, as the rest of the node.

use crate::lock::lock;
use macula_nat_proto::stun::Message;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Hops tried (a home NAT behind a carrier-grade NAT behind a few more is
/// well within).
const MAX_HOPS: u8 = 8;

/// Whether an address is on the inside of a NAT as far as the hop count
/// goes: private (RFC 1918), carrier-grade shared (RFC 6598), link-local,
/// loopback, or benchmarking space (RFC 2544, which the NAT lab's LANs use).
fn inside(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
}

/// Whether `ip` is on the inside of some NAT (see [`inside`]).
pub fn is_inside(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => inside(v4),
        IpAddr::V6(_) => false,
    }
}

/// What one TTL's probe met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hop {
    /// A router dropped it (time exceeded), answering from this address.
    Router(Ipv4Addr),
    /// It reached the destination (an answer, or an unreachable from it).
    Destination,
}

/// The primer TTL from what each TTL met (`hops[k - 1]` for TTL `k`).
fn primer_ttl(hops: &[Option<Hop>]) -> Option<u8> {
    for (i, h) in hops.iter().enumerate() {
        match h {
            Some(Hop::Router(a)) if !inside(*a) => return Some(i as u8 + 1),
            Some(Hop::Router(_)) => continue,
            // The destination before any outside router, or a silent hop
            // (we cannot tell where it stands): no safe primer.
            Some(Hop::Destination) | None => return None,
        }
    }
    None
}

/// Whether more answers cannot change [`primer_ttl`]'s verdict.
fn decided(hops: &[Option<Hop>]) -> bool {
    for h in hops {
        match h {
            Some(Hop::Router(a)) if inside(*a) => continue,
            Some(_) => return true,
            None => return false,
        }
    }
    true
}

/// How long a learnt TTL is reused for the same route. Routers rate-limit
/// their ICMP errors (Linux: one a second per destination after a burst
/// of six), so a process whose nodes join often learns once, not each time.
const REMEMBER: Duration = Duration::from_secs(600);

/// TTLs learnt by this process, by (local address, destination). Only
/// successes are kept: a failed learning is tried again at the next join.
static LEARNT: std::sync::Mutex<Vec<(IpAddr, SocketAddr, u8, Instant)>> = std::sync::Mutex::new(Vec::new());

/// The primer TTL towards `dst` (the rendezvous) from `bind_ip`: learnt
/// within the last [`REMEMBER`], else learnt now ([`learn_hops`]). Blocking.
pub fn ttl_towards(bind_ip: IpAddr, dst: SocketAddr, budget: Duration) -> Option<u8> {
    let now = Instant::now();
    {
        let mut l = lock(&LEARNT);
        l.retain(|e| now.duration_since(e.3) < REMEMBER);
        if let Some(e) = l.iter().find(|e| e.0 == bind_ip && e.1 == dst) {
            return Some(e.2);
        }
    }
    let ttl = learn_hops(bind_ip, dst, budget)?;
    let mut l = lock(&LEARNT);
    // A handful of routes per process; bounded all the same.
    if l.len() < 64 {
        l.push((bind_ip, dst, ttl, now));
    }
    Some(ttl)
}

/// Learns the primer TTL towards `dst` (the rendezvous) from a throwaway
/// socket bound on `bind_ip`, within `budget`. Blocking: run it off the
/// async threads.
pub fn learn_hops(bind_ip: IpAddr, dst: SocketAddr, budget: Duration) -> Option<u8> {
    let (IpAddr::V4(bind), SocketAddr::V4(dst4)) = (bind_ip, dst) else { return None };
    let sock = UdpSocket::bind(SocketAddrV4::new(bind, 0)).ok()?;
    let fd = sock.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the right size.
    let r = unsafe {
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_RECVERR, &on as *const _ as *const libc::c_void, std::mem::size_of_val(&on) as u32)
    };
    if r != 0 {
        return None;
    }
    sock.set_nonblocking(true).ok()?;
    // One STUN Binding request per TTL; the transaction id carries the TTL
    // so answers and errors (which quote the datagram) say which it was.
    let probe = |ttl: u8| -> Option<()> {
        let mut tid = crate::txid::csprng();
        tid[0] = ttl;
        let payload = Message::binding_request(tid).encode();
        sock.set_ttl(u32::from(ttl)).ok()?;
        // An earlier probe's ICMP error, already back, is reported by this
        // send instead of sending (the error queue keeps it): send again.
        if sock.send_to(&payload, dst).is_err() && sock.send_to(&payload, dst).is_err() {
            return None;
        }
        Some(())
    };
    for ttl in 1..=MAX_HOPS {
        probe(ttl)?;
    }
    let mut hops: [Option<Hop>; MAX_HOPS as usize] = [None; MAX_HOPS as usize];
    let started = Instant::now();
    let deadline = started + budget;
    let mut resent = false;
    let mut reached: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // Routers rate-limit their ICMP errors (Linux: a burst of six, then
        // one a second per destination): a silent hop gets a second probe
        // halfway through the budget.
        let resend_at = started + budget / 2;
        if !resent && now >= resend_at {
            resent = true;
            for (i, _) in hops.iter().enumerate().filter(|(_, h)| h.is_none()) {
                let _ = probe(i as u8 + 1);
            }
            reached = None;
        }
        // Errors from the routers before the destination arrive before its
        // answer: a little grace after it for reordering, then the resend
        // (or the end, once resent).
        let until = match reached {
            Some(t) if resent => (t + Duration::from_millis(20)).min(deadline),
            Some(t) => (t + Duration::from_millis(20)).max(resend_at),
            None if resent => deadline,
            None => resend_at,
        };
        if decided(&hops) || (resent && now >= until) {
            break;
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN | libc::POLLERR, revents: 0 };
        let wait = until.saturating_duration_since(now).as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, wait) } <= 0 {
            continue;
        }
        while let Some((ttl, hop)) = read_error(fd) {
            if let Some(slot) = hops.get_mut(usize::from(ttl).wrapping_sub(1)) {
                *slot = Some(hop);
                if hop == Hop::Destination {
                    reached.get_or_insert(Instant::now());
                }
            }
        }
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from != dst {
                continue;
            }
            if let Ok(m) = Message::decode(&buf[..n]) {
                let ttl = m.transaction_id[0];
                if let Some(slot) = hops.get_mut(usize::from(ttl).wrapping_sub(1)) {
                    *slot = Some(Hop::Destination);
                    reached.get_or_insert(Instant::now());
                }
            }
        }
    }
    let ttl = primer_ttl(&hops);
    tracing::debug!("primer: towards {dst4}: hops {hops:?} -> ttl {ttl:?}");
    ttl
}

/// One entry of the socket's error queue: the TTL the quoted datagram was
/// sent with, and what it met.
fn read_error(fd: libc::c_int) -> Option<(u8, Hop)> {
    let mut data = [0u8; 1500];
    let mut ctrl = [0u64; 64];
    let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: zeroed msghdr, then every pointer set to a live buffer of the
    // stated length.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of_val(&from) as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&ctrl) as _;
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    let quoted = Message::decode(&data[..n as usize]).ok()?;
    let ttl = quoted.transaction_id[0];
    // SAFETY: the kernel filled `msg_control` with well-formed cmsgs.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_RECVERR {
            // SAFETY: an IP_RECVERR cmsg holds a sock_extended_err followed
            // by the offender's sockaddr_in.
            let ee = unsafe { &*(libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err) };
            if ee.ee_origin != libc::SO_EE_ORIGIN_ICMP {
                return None;
            }
            let off = unsafe { &*(libc::SO_EE_OFFENDER(ee) as *const libc::sockaddr_in) };
            let addr = Ipv4Addr::from(u32::from_be(off.sin_addr.s_addr));
            return Some(match ee.ee_type {
                // Time exceeded: a router on the way.
                11 => (ttl, Hop::Router(addr)),
                // Unreachable: from the destination itself (port closed) or
                // a router that cannot go on; either way the end of the line.
                _ => (ttl, Hop::Destination),
            });
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    None
}

/// Sends an empty datagram to `dst` from `sock` with the given TTL, for
/// this packet only (the socket's other packets, QUIC's included, keep
/// their TTL). Errors are ignored: a lost primer only leaves the race.
pub fn send(sock: &impl AsRawFd, dst: SocketAddr, ttl: u8) {
    let _ = try_send(sock, dst, ttl);
}

/// Like [`send`], saying whether it left: a full send buffer is
/// `WouldBlock` (never blocks), for callers that send many primers from
/// one socket and retry. IPv6 is `Unsupported`.
pub fn try_send(sock: &impl AsRawFd, dst: SocketAddr, ttl: u8) -> std::io::Result<()> {
    let SocketAddr::V4(d) = dst else { return Err(std::io::ErrorKind::Unsupported.into()) };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: d.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*d.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let mut ctrl = [0u64; 4];
    let val: libc::c_int = libc::c_int::from(ttl);
    // SAFETY: zeroed msghdr with a control buffer large enough for one
    // c_int cmsg (CMSG_SPACE(4) = 24 <= 32), filled before sending.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &to as *const _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of_val(&to) as u32;
        msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_TTL;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::copy_nonoverlapping(&val as *const libc::c_int as *const u8, libc::CMSG_DATA(c), std::mem::size_of::<libc::c_int>());
        if libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_DONTWAIT) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Option<Hop> {
        Some(Hop::Router(s.parse().unwrap()))
    }

    #[test]
    fn the_first_outside_router_sets_the_ttl() {
        // Home NAT, then the ISP's router.
        assert_eq!(primer_ttl(&[r("192.168.1.1"), r("203.0.113.1"), Some(Hop::Destination)]), Some(2));
        // Home NAT behind a carrier-grade NAT.
        assert_eq!(primer_ttl(&[r("192.168.1.1"), r("100.64.0.1"), r("198.51.100.7"), None]), Some(3));
        // The lab: a delay hop and a NAT on benchmarking space, then the
        // routed internet.
        assert_eq!(primer_ttl(&[r("198.18.3.3"), r("198.18.3.1"), r("203.0.113.1"), Some(Hop::Destination)]), Some(3));
    }

    #[test]
    fn no_primer_when_it_could_reach_a_peer_or_nothing_is_known() {
        // The destination right after our NAT (a flat segment): nothing
        // between us and a peer's NAT either.
        assert_eq!(primer_ttl(&[r("198.18.1.1"), Some(Hop::Destination)]), None);
        // A silent hop before any outside router.
        assert_eq!(primer_ttl(&[r("10.0.0.1"), None, r("203.0.113.1")]), None);
        assert_eq!(primer_ttl(&[]), None);
    }

    #[test]
    fn classification() {
        for a in ["10.1.2.3", "172.16.0.1", "192.168.0.1", "100.64.0.1", "100.127.255.254", "169.254.1.1", "198.18.0.1", "198.19.255.1"] {
            assert!(inside(a.parse().unwrap()), "{a}");
        }
        for a in ["203.0.113.1", "8.8.8.8", "100.128.0.1", "198.20.0.1", "172.32.0.1"] {
            assert!(!inside(a.parse().unwrap()), "{a}");
        }
    }
}
