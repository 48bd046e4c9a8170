//! Caps on incoming connections, in total and per source IP.
//!
//! Why per IP and not per address: one host has 64k source ports, so a cap
//! per (IP, port) would not hold a single attacker. Why not per /24: honest
//! nodes behind one carrier-grade NAT share an IP already; a wider prefix
//! would let one attacker lock out a whole provider's customers. IPv6
//! counts per /64 ([`super::host_key`]): one host has 2^64 addresses there,
//! and a /64 is one site, as an IPv4 address behind a NAT is.

use std::collections::HashMap;
use std::net::IpAddr;

/// The caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Incoming connections (handshaking or established) at once.
    pub total: usize,
    /// Of those, from one source IP.
    pub per_ip: usize,
}

impl Default for ConnLimits {
    /// 1024 in total: a rendezvous or relay serves hundreds of nodes, each
    /// with one control connection, and every connection may hold its
    /// receive windows; 32 per IP: a host (or a NAT with a few hosts
    /// behind it) has a control connection plus a handful of sessions,
    /// while one address alone can take at most 1/32 of the total.
    fn default() -> Self {
        ConnLimits { total: 1024, per_ip: 32 }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

/// Connections counted per source IP.
#[derive(Debug, Default)]
pub struct ConnCaps {
    limits: ConnLimits,
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl ConnCaps {
    pub fn new(limits: ConnLimits) -> ConnCaps {
        ConnCaps { limits, total: 0, by_ip: HashMap::new() }
    }

    /// Counts a new connection from `ip`, or says which cap it hits. Every
    /// `Ok` must be matched by one [`ConnCaps::release`].
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = super::host_key(ip);
        if self.total >= self.limits.total {
            return Err(Refusal::Total);
        }
        let n = self.by_ip.entry(ip).or_insert(0);
        if *n >= self.limits.per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// A connection from `ip` ended. The map never keeps an IP with no
    /// connection, so it is bounded by `limits.total`.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = super::host_key(ip);
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.by_ip.get(&super::host_key(ip)).copied().unwrap_or(0)
    }

    pub fn limits(&self) -> ConnLimits {
        self.limits
    }
}
