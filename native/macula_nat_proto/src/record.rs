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
use crate::wire::{self, Reader, WireError};
use std::net::SocketAddr;

pub const MAGIC: [u8; 4] = *b"MNR1";
/// Domain separation: a node key signature over a record can never be
/// replayed as a signature over anything else the key signs.
pub const SIGNING_CONTEXT: &[u8] = b"macula-nat peer record v1\0";
pub const SIGNATURE_LEN: usize = 64;
/// Endpoints and rendezvous contacts kept per record; 16 + 16 IPv6 addresses
/// still fit BEP 44's 1000-byte limit.
pub const MAX_ADDRS: usize = 16;

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
        wire::put_nat_head(&mut b, i);
        for list in [&i.endpoints, &i.rendezvous] {
            b.push(list.len() as u8);
            for a in list {
                wire::put_addr(&mut b, *a);
            }
        }
        Ok(b)
    }

    pub fn decode(bytes: &[u8]) -> Result<RecordBody, RecordError> {
        let mut r = Reader::new(bytes);
        let node_id: [u8; 32] = r.array()?;
        let seq = r.u64()?;
        let issued_at = r.u64()?;
        let ttl_s = r.u32()?;
        let mut info = r.nat_head()?;
        info.endpoints = addrs(&mut r)?;
        info.rendezvous = addrs(&mut r)?;
        if !r.is_empty() {
            return Err(RecordError::TrailingBytes);
        }
        Ok(RecordBody { node_id, seq, issued_at, ttl_s, info })
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

fn addrs(r: &mut Reader) -> Result<Vec<SocketAddr>, RecordError> {
    let n = r.u8()? as usize;
    if n > MAX_ADDRS {
        return Err(RecordError::TooManyAddrs);
    }
    (0..n).map(|_| r.addr().map_err(RecordError::from)).collect()
}

impl From<WireError> for RecordError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => RecordError::Truncated,
            WireError::BadEnum => RecordError::BadEnum,
            WireError::BadAddress => RecordError::BadAddress,
        }
    }
}

#[cfg(test)]
mod tests;
