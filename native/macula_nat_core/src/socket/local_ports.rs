//! Local UDP ports this process closed recently, and binding around them.
//!
//! A NAT keeps a mapping for minutes after the socket that made it closed
//! (RFC 4787 asks for at least 2, recommends 5). A new socket that the
//! kernel hands the same local port is, to the NAT, the same internal
//! endpoint: a port-preserving NAT finds the port taken by the old mapping
//! and gives the new socket's first mapping another one (a fresh socket's
//! advertised port is then wrong), and a STUN probe meant to make a new
//! mapping finds the old one (the measured counter is stale). In the lab
//! matrix, where a host goes through hundreds of sockets a minute, that was
//! the cause of most first sessions that missed (10 in 2400 preservation and
//! reversal tries). Sockets whose first mapping must be new bind around the
//! ports this process closed within [`GUARD`]; other processes on the host
//! are out of sight, which leaves the second session for those.

use crate::lock::lock;
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a closed port is avoided: RFC 4787's recommended mapping
/// lifetime.
pub const GUARD: Duration = Duration::from_secs(300);

/// Binds tried before settling for a recently closed port (the ephemeral
/// range has ~28 000 ports; a busy node closes a few hundred in `GUARD`).
const TRIES: usize = 16;

#[derive(Default)]
struct Closed {
    at: HashMap<u16, Instant>,
    /// Size at which expired entries are dropped next: twice what the last
    /// pass kept (at least 4096), so a birthday hard side closing hundreds
    /// of sockets does not scan the map on every close.
    prune_at: usize,
}

static CLOSED: Lazy<Mutex<Closed>> = Lazy::new(Default::default);

/// Records that a socket on local `port` is closing.
pub fn released(port: u16) {
    if port == 0 {
        return;
    }
    let mut c = lock(&CLOSED);
    let now = Instant::now();
    if c.at.len() >= c.prune_at.max(4096) {
        c.at.retain(|_, at| now.duration_since(*at) < GUARD);
        c.prune_at = c.at.len() * 2;
    }
    c.at.insert(port, now);
}

fn recently_closed(port: u16) -> bool {
    lock(&CLOSED).at.get(&port).is_some_and(|at| at.elapsed() < GUARD)
}

/// Records its socket's port as closed when dropped: kept next to a socket
/// from [`bind_fresh`] (or any socket whose port should count).
pub struct Lease(u16);

impl Lease {
    pub fn of(port: u16) -> Lease {
        Lease(port)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        released(self.0);
    }
}

/// A UDP socket on `ip` and a kernel-chosen port this process has not
/// closed within [`GUARD`] (or, after [`TRIES`] binds that all were, the
/// last of them).
pub fn bind_fresh(ip: IpAddr) -> std::io::Result<UdpSocket> {
    // Rejected sockets stay open until the end, so the kernel cannot
    // hand their ports out again meanwhile.
    let mut rejected = Vec::new();
    loop {
        let s = bind(SocketAddr::new(ip, 0))?;
        let port = s.local_addr()?.port();
        if !recently_closed(port) || rejected.len() + 1 >= TRIES {
            return Ok(s);
        }
        rejected.push(s);
    }
}

/// A UDP socket bound to `addr`; an IPv6 one takes IPv6 only
/// (`IPV6_V6ONLY`): a node has one socket per family, and an IPv6 socket
/// on `::` would otherwise also take IPv4 datagrams for its port (Linux's
/// default `bindv6only = 0`), in the mapped form no other part expects.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    if addr.is_ipv4() {
        return UdpSocket::bind(addr);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh socket we own (closed by `UdpSocket`'s drop from the
    // moment it is wrapped); the option value is a c_int, as
    // setsockopt(IPV6_V6ONLY) wants.
    let s = unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = UdpSocket::from_raw_fd(fd);
        let on: libc::c_int = 1;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &on as *const _ as *const libc::c_void, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        s
    };
    let sa = socket_addr_v6(addr);
    // SAFETY: `sa` is a valid sockaddr_in6 of the size given.
    let r = unsafe { libc::bind(std::os::fd::AsRawFd::as_raw_fd(&s), &sa as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s)
}

fn socket_addr_v6(addr: SocketAddr) -> libc::sockaddr_in6 {
    let SocketAddr::V6(a) = addr else { unreachable!("an IPv6 address") };
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = a.port().to_be();
    sa.sin6_addr.s6_addr = a.ip().octets();
    sa.sin6_flowinfo = a.flowinfo();
    sa.sin6_scope_id = a.scope_id();
    sa
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_ipv6_socket_takes_ipv6_only() {
        let Ok(s) = super::bind("[::]:0".parse().unwrap()) else {
            eprintln!("SKIPPED: no IPv6 on this host");
            return;
        };
        let port = s.local_addr().unwrap().port();
        // The same port is free for IPv4: the IPv6 socket does not hold it.
        std::net::UdpSocket::bind(("0.0.0.0", port)).expect("IPv4 port free next to a v6-only socket");
    }

    use super::*;

    #[test]
    fn a_fresh_bind_avoids_ports_closed_recently() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // Eight sockets closed just now: the kernel would hand their ports
        // out again sooner or later.
        let taken: Vec<u16> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        for p in &taken {
            released(*p);
        }
        for _ in 0..200 {
            let s = bind_fresh(ip).unwrap();
            assert!(!taken.contains(&s.local_addr().unwrap().port()));
        }
    }

    #[test]
    fn a_closed_port_is_avoided_only_for_the_guard() {
        // Ports below the ephemeral range: no other test binds them.
        released(7);
        assert!(recently_closed(7));
        CLOSED.lock().unwrap().at.insert(8, Instant::now() - GUARD - Duration::from_millis(1));
        assert!(!recently_closed(8));
        assert!(!recently_closed(9));
        released(0);
        assert!(!recently_closed(0));
    }
}
