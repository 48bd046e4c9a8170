//! The peer record a node advertises in the DHT, and its wire format.
//!
//! A record says what a peer's NAT does and where the peer can be reached
//! (reflexive endpoints, rendezvous or relay contacts). It is signed with
//! the node key; this module only defines the canonical bytes that are
//! signed (`signing_input`) and the framing, the runtime signs and verifies
//! (the sans-IO crate has no crypto dependency).
//!
//! Hand-written rather than serde + a format crate because the bytes that
//! are signed must be canonical forever: one field order, fixed widths, no
//! optional encodings, and it has to fit BEP 44's 1000-byte value limit.
//!
//! Layout (all integers big-endian):
//! ```text
//! record  = MAGIC(4) body_len(u16) body signature(64)
//! body    = node_id(32) seq(u64) issued_at(u64) ttl_s(u32)
//!           mapping(u8) filtering(u8) allocation(u8) confidence(u8) flags(u8)
//!           [public addr, if flags & HAS_PUBLIC] [port_delta i32, if flags & HAS_DELTA]
//!           detected_at(u64) n(u8) addr*n m(u8) addr*m
//! addr    = family(u8: 4 | 6) ip(4 | 16) port(u16)
//! ```

use crate::nat::{Allocation, Confidence, Filtering, Mapping};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC: [u8; 4] = *b"MNR1";
/// Domain separation: a node key signature over a record can never be
/// replayed as a signature over anything else the key signs.
pub const SIGNING_CONTEXT: &[u8] = b"macula-nat peer record v1\0";
pub const SIGNATURE_LEN: usize = 64;
/// Endpoints and rendezvous contacts kept per record; 16 + 16 IPv6 addresses
/// still fit BEP 44's 1000-byte limit.
pub const MAX_ADDRS: usize = 16;

const HAS_PUBLIC: u8 = 1;
const HAS_DELTA: u8 = 2;
const NO_NAT: u8 = 4;

/// What the cache holds for a peer and what a record carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub mapping: Mapping,
    pub filtering: Filtering,
    pub allocation: Allocation,
    pub confidence: Confidence,
    pub public_addr: Option<SocketAddr>,
    pub port_delta: Option<i32>,
    pub no_nat: bool,
    /// Unix seconds when the peer detected this profile.
    pub detected_at: u64,
    /// Reflexive (public) endpoints of the peer's one socket.
    pub endpoints: Vec<SocketAddr>,
    /// Rendezvous or relay nodes through which the peer can be reached.
    pub rendezvous: Vec<SocketAddr>,
}

/// The signed part of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordBody {
    pub node_id: [u8; 32],
    /// Strictly increasing per node; a lower one than already seen is a replay.
    pub seq: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Seconds after `issued_at` when the record stops being valid.
    pub ttl_s: u32,
    pub info: PeerInfo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    BadMagic,
    Truncated,
    TrailingBytes,
    BadEnum,
    BadAddress,
    TooManyAddrs,
}

impl RecordBody {
    pub fn expires_at(&self) -> u64 {
        self.issued_at.saturating_add(self.ttl_s as u64)
    }

    /// The body bytes as they appear on the wire (what gets signed, after
    /// `SIGNING_CONTEXT`).
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let i = &self.info;
        if i.endpoints.len() > MAX_ADDRS || i.rendezvous.len() > MAX_ADDRS {
            return Err(RecordError::TooManyAddrs);
        }
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&self.node_id);
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.issued_at.to_be_bytes());
        b.extend_from_slice(&self.ttl_s.to_be_bytes());
        b.push(mapping_code(i.mapping));
        b.push(filtering_code(i.filtering));
        b.push(allocation_code(i.allocation));
        b.push(confidence_code(i.confidence));
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
            put_addr(&mut b, a);
        }
        if let Some(d) = i.port_delta {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(&i.detected_at.to_be_bytes());
        for list in [&i.endpoints, &i.rendezvous] {
            b.push(list.len() as u8);
            for a in list {
                put_addr(&mut b, *a);
            }
        }
        Ok(b)
    }

    pub fn decode(bytes: &[u8]) -> Result<RecordBody, RecordError> {
        let mut r = Reader { b: bytes };
        let node_id: [u8; 32] = r.take(32)?.try_into().map_err(|_| RecordError::Truncated)?;
        let seq = r.u64()?;
        let issued_at = r.u64()?;
        let ttl_s = r.u32()?;
        let mapping = mapping_from(r.u8()?)?;
        let filtering = filtering_from(r.u8()?)?;
        let allocation = allocation_from(r.u8()?)?;
        let confidence = confidence_from(r.u8()?)?;
        let flags = r.u8()?;
        if flags & !(HAS_PUBLIC | HAS_DELTA | NO_NAT) != 0 {
            return Err(RecordError::BadEnum);
        }
        let public_addr = if flags & HAS_PUBLIC != 0 { Some(r.addr()?) } else { None };
        let port_delta = if flags & HAS_DELTA != 0 { Some(r.u32()? as i32) } else { None };
        let detected_at = r.u64()?;
        let endpoints = r.addrs()?;
        let rendezvous = r.addrs()?;
        if !r.b.is_empty() {
            return Err(RecordError::TrailingBytes);
        }
        Ok(RecordBody {
            node_id,
            seq,
            issued_at,
            ttl_s,
            info: PeerInfo {
                mapping,
                filtering,
                allocation,
                confidence,
                public_addr,
                port_delta,
                no_nat: flags & NO_NAT != 0,
                detected_at,
                endpoints,
                rendezvous,
            },
        })
    }
}

/// What the node key signs for a body.
pub fn signing_input(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(body);
    m
}

/// Frames an encoded body and its signature into a record.
pub fn frame(body: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(signature);
    out
}

/// Splits a record into (body bytes, signature) without trusting either.
pub fn unframe(record: &[u8]) -> Result<(&[u8], [u8; SIGNATURE_LEN]), RecordError> {
    if record.len() < 6 {
        return Err(RecordError::Truncated);
    }
    if record[..4] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let len = u16::from_be_bytes([record[4], record[5]]) as usize;
    let rest = &record[6..];
    if rest.len() < len + SIGNATURE_LEN {
        return Err(RecordError::Truncated);
    }
    if rest.len() > len + SIGNATURE_LEN {
        return Err(RecordError::TrailingBytes);
    }
    let sig: [u8; SIGNATURE_LEN] = rest[len..].try_into().map_err(|_| RecordError::Truncated)?;
    Ok((&rest[..len], sig))
}

/// Why a fetched record is not accepted, after its signature verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The body names another node than the one asked for.
    WrongNode,
    /// Past `issued_at + ttl_s`.
    Expired,
    /// Issued implausibly far in the future (clock skew allowance exceeded).
    FromTheFuture,
    /// Not newer than a record already accepted for this node.
    Replayed,
}

/// Clock skew tolerated between publisher and reader.
pub const MAX_SKEW_S: u64 = 300;

/// Acceptance rule for a verified body: right node, in its validity window,
/// and newer than `last_seq` (the highest seq accepted so far for the node).
pub fn check(body: &RecordBody, asked: &[u8; 32], now_s: u64, last_seq: Option<u64>) -> Result<(), Rejection> {
    if &body.node_id != asked {
        return Err(Rejection::WrongNode);
    }
    if body.issued_at > now_s.saturating_add(MAX_SKEW_S) {
        return Err(Rejection::FromTheFuture);
    }
    if body.expires_at() <= now_s {
        return Err(Rejection::Expired);
    }
    match last_seq {
        Some(last) if body.seq < last => Err(Rejection::Replayed),
        _ => Ok(()),
    }
}

fn put_addr(b: &mut Vec<u8>, a: SocketAddr) {
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

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.b.len() < n {
            return Err(RecordError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn addr(&mut self) -> Result<SocketAddr, RecordError> {
        let ip = match self.u8()? {
            4 => {
                let s = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return Err(RecordError::BadAddress),
        };
        let p = self.take(2)?;
        Ok(SocketAddr::new(ip, u16::from_be_bytes([p[0], p[1]])))
    }
    fn addrs(&mut self) -> Result<Vec<SocketAddr>, RecordError> {
        let n = self.u8()? as usize;
        if n > MAX_ADDRS {
            return Err(RecordError::TooManyAddrs);
        }
        (0..n).map(|_| self.addr()).collect()
    }
}

fn mapping_code(m: Mapping) -> u8 {
    match m {
        Mapping::Ei => 0,
        Mapping::Hd => 1,
        Mapping::Pd => 2,
    }
}
fn mapping_from(c: u8) -> Result<Mapping, RecordError> {
    Mapping::ALL.get(c as usize).copied().ok_or(RecordError::BadEnum)
}
fn filtering_code(f: Filtering) -> u8 {
    match f {
        Filtering::Ei => 0,
        Filtering::Hd => 1,
        Filtering::Pd => 2,
    }
}
fn filtering_from(c: u8) -> Result<Filtering, RecordError> {
    Filtering::ALL.get(c as usize).copied().ok_or(RecordError::BadEnum)
}
fn allocation_code(a: Allocation) -> u8 {
    match a {
        Allocation::Pp => 0,
        Allocation::Pc => 1,
        Allocation::Rd => 2,
    }
}
fn allocation_from(c: u8) -> Result<Allocation, RecordError> {
    Allocation::ALL.get(c as usize).copied().ok_or(RecordError::BadEnum)
}
fn confidence_code(c: Confidence) -> u8 {
    match c {
        Confidence::Low => 0,
        Confidence::Medium => 1,
        Confidence::High => 2,
    }
}
fn confidence_from(c: u8) -> Result<Confidence, RecordError> {
    [Confidence::Low, Confidence::Medium, Confidence::High].get(c as usize).copied().ok_or(RecordError::BadEnum)
}

#[cfg(test)]
mod tests;
