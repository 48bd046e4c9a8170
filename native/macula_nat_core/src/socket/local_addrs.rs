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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// At most this many host candidates (a Docker host has a bridge per
/// network; the first few are the ones a LAN peer can reach).
pub const MAX_HOST_CANDIDATES: usize = 4;

/// IPv4 addresses of the interfaces that are up, loopback and link-local
/// left out, in the kernel's order.
pub fn interface_ipv4s() -> Vec<Ipv4Addr> {
    interface_ips()
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified() => Some(v4),
            _ => None,
        })
        .collect()
}

/// Global IPv6 addresses of the interfaces that are up (see
/// `macula_nat_proto::connect::family::is_global_v6`), in the kernel's
/// order: behind a stateful firewall without NAT these are the node's
/// public addresses.
pub fn interface_ipv6s() -> Vec<Ipv6Addr> {
    interface_ips()
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(v6) if macula_nat_proto::connect::family::is_global_v6(v6) => Some(v6),
            _ => None,
        })
        .collect()
}

/// Addresses of the interfaces that are up, both families, no duplicates.
fn interface_ips() -> Vec<IpAddr> {
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
            let ip = match (*ifa.ifa_addr).sa_family as libc::c_int {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            };
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Host candidates for a socket bound to `bound`, reached at `port` (the
/// port the punch runs on): the bound address itself, or for the
/// unspecified address every interface address of its family (bounded;
/// IPv6: the global ones, a node's public addresses when no NAT is in
/// front of it).
pub fn host_candidates(bound: SocketAddr, port: u16) -> Vec<SocketAddr> {
    match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => interface_ipv4s()
            .into_iter()
            .take(MAX_HOST_CANDIDATES)
            .map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
            .collect(),
        IpAddr::V6(v6) if v6.is_unspecified() => interface_ipv6s()
            .into_iter()
            .take(MAX_HOST_CANDIDATES)
            .map(|ip| SocketAddr::new(IpAddr::V6(ip), port))
            .collect(),
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
        for c in host_candidates("[::]:1".parse().unwrap(), 1) {
            assert!(c.is_ipv6() && c.port() == 1, "{c}");
        }
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
