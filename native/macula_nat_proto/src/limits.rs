//! Bounds on what a peer can make a node hold: the decisions only (pure
//! counters), applied by the runtime.
//!
//! * [`caps`]: how many of a thing each peer and all peers may hold,
//!   how often one peer may ask, and when held things expire;
//! * [`conn_caps`]: incoming QUIC connections in total and per source IP;
//! * [`fd_budget`]: file descriptors for sockets beyond the node socket
//!   (birthday probing, fresh sockets, detection probes);
//! * [`term_size`]: the size an Erlang external term will take once
//!   decoded, read from its header before anything is inflated.

pub mod caps;
pub mod conn_caps;

use std::net::{IpAddr, Ipv6Addr};

/// What per-source limits count by: an IPv4 address (also when written in
/// IPv6 form, `::ffff:a.b.c.d`), or an IPv6 /64. A host picks its IPv6
/// addresses within its /64 freely (privacy addresses, one per connection
/// if it likes), so a cap per IPv6 address would hold no one; a /64 is one
/// site's LAN, as an IPv4 address is one site behind its NAT.
pub fn host_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}
pub mod fd_budget;
pub mod term_size;

#[cfg(test)]
mod tests;
