//! This host's own addresses, offered to peers as host candidates (ICE's
//! host candidates, iroh's local addresses).
//!
//! Why: two nodes behind one NAT reach each other through its public
//! address only if it hairpins, and most home routers and every plain
//! Linux masquerade do not; on their shared LAN they reach each other
//! directly. A node bound to the unspecified address does not know which
//! of its addresses a peer can reach, so it offers them all (up to a
//! bound); a peer uses such inside addresses only when both sides share a
//! public address (see `connector::targets`), so a peer's claims never
//! aim our punches into other networks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// At most this many host candidates (a Docker host has a bridge per
/// network; the first few are the ones a LAN peer can reach).
pub const MAX_HOST_CANDIDATES: usize = 4;

/// IPv4 addresses of the interfaces that are up, loopback and link-local
/// left out, in the kernel's order.
pub fn interface_ipv4s() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; each
    // entry's address pointer is null or points to a sockaddr of the
    // family it names.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as libc::c_uint == 0 {
                continue;
            }
            if (*ifa.ifa_addr).sa_family as libc::c_int != libc::AF_INET {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            if !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified() && !out.contains(&ip) {
                out.push(ip);
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Host candidates for a socket bound to `bound`, reached at `port` (the
/// port the punch runs on): the bound address itself, or for the
/// unspecified IPv4 address every interface address (bounded).
pub fn host_candidates(bound: SocketAddr, port: u16) -> Vec<SocketAddr> {
    match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => interface_ipv4s()
            .into_iter()
            .take(MAX_HOST_CANDIDATES)
            .map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
            .collect(),
        IpAddr::V6(v6) if v6.is_unspecified() => Vec::new(),
        ip => vec![SocketAddr::new(ip, port)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_address_is_its_own_candidate() {
        let b: SocketAddr = "198.18.1.2:4433".parse().unwrap();
        assert_eq!(host_candidates(b, 5000), vec!["198.18.1.2:5000".parse::<SocketAddr>().unwrap()]);
        assert!(host_candidates("[::]:1".parse().unwrap(), 1).is_empty());
    }

    #[test]
    fn the_unspecified_address_offers_the_interfaces() {
        let c = host_candidates("0.0.0.0:0".parse().unwrap(), 4433);
        assert!(c.len() <= MAX_HOST_CANDIDATES);
        for a in &c {
            assert_eq!(a.port(), 4433);
            assert!(!a.ip().is_loopback());
        }
        // Every address the kernel lists as up is one of ours: bindable.
        for a in c {
            std::net::UdpSocket::bind(SocketAddr::new(a.ip(), 0)).expect("an own address");
        }
    }
}
