//! Byte-level pieces shared by the project's hand-written wire formats (the
//! signed peer record and the signalling messages): big-endian integers,
//! socket addresses, and the NAT description every format carries.
//!
//! ```text
//! addr      = family(u8: 4 | 6) ip(4 | 16) port(u16)
//! nat_head  = mapping(u8) filtering(u8) allocation(u8) confidence(u8) flags(u8)
//!             [public addr, if flags & 1] [port_delta i32, if flags & 2]
//!             detected_at(u64)
//!             flags & 4: no NAT; other flag bits are refused
//!             mapping/filtering: 0 EI, 1 HD, 2 PD; allocation: 0 PP, 1 PC, 2 RD;
//!             confidence: 0 low, 1 medium, 2 high
//! ```

use crate::id::{NodeId, SessionId};
use crate::nat::{Allocation, Confidence, Filtering, Mapping};
use crate::peer_info::PeerInfo;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    /// An enum code or flag bit that is not defined.
    BadEnum,
    /// An address family other than 4 or 6.
    BadAddress,
}

const HAS_PUBLIC: u8 = 1;
const HAS_DELTA: u8 = 2;
const NO_NAT: u8 = 4;

pub fn put_addr(b: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            b.push(4);
            b.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            b.push(6);
            b.extend_from_slice(&ip.octets());
        }
    }
    b.extend_from_slice(&a.port().to_be_bytes());
}

/// Writes `nat_head` for `i` (not its endpoint lists, which each format
/// frames its own way).
pub fn put_nat_head(b: &mut Vec<u8>, i: &PeerInfo) {
    // The codes are the declaration order of the enums, the same order as
    // their `ALL` arrays that `nat_head` decodes with.
    b.push(i.mapping as u8);
    b.push(i.filtering as u8);
    b.push(i.allocation as u8);
    b.push(i.confidence as u8);
    let mut flags = 0;
    if i.public_addr.is_some() {
        flags |= HAS_PUBLIC;
    }
    if i.port_delta.is_some() {
        flags |= HAS_DELTA;
    }
    if i.no_nat {
        flags |= NO_NAT;
    }
    b.push(flags);
    if let Some(a) = i.public_addr {
        put_addr(b, a);
    }
    if let Some(d) = i.port_delta {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(&i.detected_at.to_be_bytes());
}

/// Reads fields off the front of a byte slice.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated);
        }
        let (h, t) = self.rest.split_at(n);
        self.rest = t;
        Ok(h)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn node_id(&mut self) -> Result<NodeId, WireError> {
        Ok(NodeId::from_bytes(self.array()?))
    }

    pub fn session_id(&mut self) -> Result<SessionId, WireError> {
        Ok(SessionId::from_bytes(self.array()?))
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(WireError::BadAddress),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// Reads `nat_head`; the endpoint lists of the result are empty.
    pub fn nat_head(&mut self) -> Result<PeerInfo, WireError> {
        let mapping = Mapping::ALL.get(self.u8()? as usize).copied().ok_or(WireError::BadEnum)?;
        let filtering = Filtering::ALL.get(self.u8()? as usize).copied().ok_or(WireError::BadEnum)?;
        let allocation = Allocation::ALL.get(self.u8()? as usize).copied().ok_or(WireError::BadEnum)?;
        let confidence = [Confidence::Low, Confidence::Medium, Confidence::High]
            .get(self.u8()? as usize)
            .copied()
            .ok_or(WireError::BadEnum)?;
        let flags = self.u8()?;
        if flags & !(HAS_PUBLIC | HAS_DELTA | NO_NAT) != 0 {
            return Err(WireError::BadEnum);
        }
        let public_addr = if flags & HAS_PUBLIC != 0 { Some(self.addr()?) } else { None };
        let port_delta = if flags & HAS_DELTA != 0 { Some(self.u32()? as i32) } else { None };
        Ok(PeerInfo {
            mapping,
            filtering,
            allocation,
            confidence,
            public_addr,
            port_delta,
            no_nat: flags & NO_NAT != 0,
            detected_at: self.u64()?,
            endpoints: Vec::new(),
            rendezvous: Vec::new(),
        })
    }
}
