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
//! record  = magic(4) body_len(u16) body signature(64)
//! magic   = "MNR1" (body v1) | "MNR2" (body v2)
//! body v1 = node_id(32) seq(u64) issued_at(u64) ttl_s(u32)
//!           mapping(u8) filtering(u8) allocation(u8) confidence(u8) flags(u8)
//!           [public addr, if flags & HAS_PUBLIC] [port_delta i32, if flags & HAS_DELTA]
//!           detected_at(u64) n(u8) addr*n m(u8) addr*m
//! body v2 = body v1 ext(u8) [load_permille(u16) addr, if ext & RELAYS]
//!           [n(u8) contact*n, if ext & RENDEZVOUS] [m(u8) contact*m, if ext & RESERVED]
//!           ext & RELAYS (1): "I relay", at `addr`, this loaded (0..=1000);
//!           ext & RENDEZVOUS (2): rendezvous I am joined at, with their
//!           node keys (what a peer needs to signal me through them);
//!           ext & RESERVED (4): relays holding my reservation;
//!           1 <= n, m <= MAX_CONTACTS; other ext bits, ext = 0, an empty
//!           list under its bit and load > 1000 are refused
//! contact = node_id(32) addr
//! addr    = family(u8: 4 | 6) ip(4 | 16) port(u16)
//! ```
//!
//! A framed record is at most [`MAX_RECORD`] bytes (BEP 44's value limit);
//! [`RecordBody::fit`] trims what a node says about itself to fit.
//!
//! Versions: a record is written as v1 whenever it carries nothing v1
//! cannot say (no relay advertisement), so every body has exactly one
//! encoding and nodes that only know v1 keep reading non-relay records.
//! Each version has its own signing context, so a signature over a v2 body
//! can never be passed off as one over a v1 body or the reverse.

use crate::id::NodeId;
use crate::wire::{self, Reader, WireError};

pub use crate::peer_info::PeerInfo;
use std::net::SocketAddr;

pub const MAGIC: [u8; 4] = *b"MNR1";
pub const MAGIC_V2: [u8; 4] = *b"MNR2";
/// Domain separation: a node key signature over a record can never be
/// replayed as a signature over anything else the key signs.
pub const SIGNING_CONTEXT: &[u8] = b"macula-nat peer record v1\0";
pub const SIGNING_CONTEXT_V2: &[u8] = b"macula-nat peer record v2\0";
/// `ext` bit of a v2 body: the node serves as a relay.
const RELAYS: u8 = 1;
/// `ext` bit: the rendezvous the node is joined at, with their keys.
const RENDEZVOUS: u8 = 2;
/// `ext` bit: the relays holding the node's reservation.
const RESERVED: u8 = 4;
/// Rendezvous (and, separately, reserving relays) a record names with
/// their keys: each is a place a reader may dial, so a record cannot make
/// a reader try more than this many (see `crate::reach`).
pub const MAX_CONTACTS: usize = 4;
/// Largest framed record: BEP 44's value limit.
pub const MAX_RECORD: usize = 1000;
pub const SIGNATURE_LEN: usize = 64;
/// Endpoints and rendezvous contacts kept per record; 16 + 16 IPv6 addresses
/// still fit BEP 44's 1000-byte limit.
pub const MAX_ADDRS: usize = 16;

/// Body layout, named by the record's magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    fn magic(self) -> [u8; 4] {
        match self {
            Version::V1 => MAGIC,
            Version::V2 => MAGIC_V2,
        }
    }

    fn signing_context(self) -> &'static [u8] {
        match self {
            Version::V1 => SIGNING_CONTEXT,
            Version::V2 => SIGNING_CONTEXT_V2,
        }
    }
}

/// A relay's advertisement of itself (record v2): where it relays and how
/// loaded it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAd {
    pub addr: SocketAddr,
    /// 0 (idle) ..= 1000 (full).
    pub load_permille: u16,
}

/// The signed part of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordBody {
    pub node_id: NodeId,
    /// Strictly increasing per node; a lower one than already seen is a replay.
    pub seq: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Seconds after `issued_at` when the record stops being valid.
    pub ttl_s: u32,
    pub info: PeerInfo,
    /// Present when the node serves as a relay (makes the body v2).
    pub relay: Option<RelayAd>,
    /// Where to signal the node and which relays reach it (v2 when any).
    pub contacts: Contacts,
}

/// A rendezvous or relay named with its node key (dialling one needs both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Contact {
    pub node_id: NodeId,
    pub addr: SocketAddr,
}

/// The places a record says its node is reachable through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contacts {
    /// Rendezvous the node is joined at, preferred first (at most
    /// [`MAX_CONTACTS`]).
    pub rendezvous: Vec<Contact>,
    /// Relays holding its reservation, best first (at most [`MAX_CONTACTS`]).
    pub reserved: Vec<Contact>,
}

impl Contacts {
    pub fn is_empty(&self) -> bool {
        self.rendezvous.is_empty() && self.reserved.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    BadMagic,
    Truncated,
    TrailingBytes,
    BadEnum,
    BadAddress,
    TooManyAddrs,
    /// A relay load above 1000 per mille.
    BadLoad,
    /// The framed record would exceed [`MAX_RECORD`] bytes.
    TooLarge,
}

impl RecordBody {
    pub fn expires_at(&self) -> u64 {
        self.issued_at.saturating_add(self.ttl_s as u64)
    }

    /// The layout this body is written in: the oldest that can say it.
    pub fn version(&self) -> Version {
        if self.relay.is_some() || !self.contacts.is_empty() {
            Version::V2
        } else {
            Version::V1
        }
    }

    /// The body bytes as they appear on the wire, in `self.version()`'s
    /// layout (what gets signed, after that version's signing context).
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let i = &self.info;
        if i.endpoints.len() > MAX_ADDRS || i.rendezvous.len() > MAX_ADDRS {
            return Err(RecordError::TooManyAddrs);
        }
        if self.relay.is_some_and(|r| r.load_permille > 1000) {
            return Err(RecordError::BadLoad);
        }
        let c = &self.contacts;
        if c.rendezvous.len() > MAX_CONTACTS || c.reserved.len() > MAX_CONTACTS {
            return Err(RecordError::TooManyAddrs);
        }
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(self.node_id.as_bytes());
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
        if self.version() == Version::V2 {
            let ext = [(self.relay.is_some(), RELAYS), (!c.rendezvous.is_empty(), RENDEZVOUS), (!c.reserved.is_empty(), RESERVED)]
                .iter()
                .filter(|(on, _)| *on)
                .fold(0, |e, (_, bit)| e | bit);
            b.push(ext);
        }
        if let Some(relay) = self.relay {
            b.extend_from_slice(&relay.load_permille.to_be_bytes());
            wire::put_addr(&mut b, relay.addr);
        }
        for list in [&c.rendezvous, &c.reserved] {
            if !list.is_empty() {
                b.push(list.len() as u8);
                for k in list {
                    b.extend_from_slice(k.node_id.as_bytes());
                    wire::put_addr(&mut b, k.addr);
                }
            }
        }
        if framed_len(b.len()) > MAX_RECORD {
            return Err(RecordError::TooLarge);
        }
        Ok(b)
    }

    /// Trims what the body says until its record fits [`MAX_RECORD`]:
    /// reserved relays beyond the first go first, then endpoints and bare
    /// rendezvous beyond the first of each, then rendezvous contacts beyond
    /// the first (the last of each list first, as lists are best first).
    /// Lists over their caps are cut to them.
    pub fn fit(&mut self) {
        self.info.endpoints.truncate(MAX_ADDRS);
        self.info.rendezvous.truncate(MAX_ADDRS);
        self.contacts.rendezvous.truncate(MAX_CONTACTS);
        self.contacts.reserved.truncate(MAX_CONTACTS);
        while matches!(self.encode(), Err(RecordError::TooLarge)) {
            let i = &mut self.info;
            let c = &mut self.contacts;
            if c.reserved.len() > 1 {
                c.reserved.pop();
            } else if i.endpoints.len() > 1 && i.endpoints.len() >= i.rendezvous.len() {
                i.endpoints.pop();
            } else if i.rendezvous.len() > 1 {
                i.rendezvous.pop();
            } else if c.rendezvous.len() > 1 {
                c.rendezvous.pop();
            } else {
                // Cannot happen with the caps above (a body with one of each
                // is far below the limit); stop rather than spin.
                return;
            }
        }
    }

    /// Decodes a body written in `version`'s layout.
    pub fn decode(version: Version, bytes: &[u8]) -> Result<RecordBody, RecordError> {
        // What decodes must encode again (the same bytes, the same bound).
        if framed_len(bytes.len()) > MAX_RECORD {
            return Err(RecordError::TooLarge);
        }
        let mut r = Reader::new(bytes);
        let node_id = r.node_id()?;
        let seq = r.u64()?;
        let issued_at = r.u64()?;
        let ttl_s = r.u32()?;
        let mut info = r.nat_head()?;
        info.endpoints = addrs(&mut r)?;
        info.rendezvous = addrs(&mut r)?;
        let (relay, contacts) = match version {
            Version::V1 => (None, Contacts::default()),
            Version::V2 => extension(&mut r)?,
        };
        if !r.is_empty() {
            return Err(RecordError::TrailingBytes);
        }
        Ok(RecordBody { node_id, seq, issued_at, ttl_s, info, relay, contacts })
    }
}

/// A framed record's length for a body of `body_len` bytes.
pub fn framed_len(body_len: usize) -> usize {
    6 + body_len + SIGNATURE_LEN
}

/// The v2 extension. A v2 body always says something v1 cannot (see the
/// module doc), so `ext` must be non-zero with known bits only, and each
/// list under its bit non-empty.
fn extension(r: &mut Reader) -> Result<(Option<RelayAd>, Contacts), RecordError> {
    let ext = r.u8()?;
    if ext == 0 || ext & !(RELAYS | RENDEZVOUS | RESERVED) != 0 {
        return Err(RecordError::BadEnum);
    }
    let relay = if ext & RELAYS != 0 { Some(relay_ad(r)?) } else { None };
    let mut contacts = Contacts::default();
    if ext & RENDEZVOUS != 0 {
        contacts.rendezvous = contact_list(r)?;
    }
    if ext & RESERVED != 0 {
        contacts.reserved = contact_list(r)?;
    }
    Ok((relay, contacts))
}

fn contact_list(r: &mut Reader) -> Result<Vec<Contact>, RecordError> {
    let n = r.u8()? as usize;
    if n == 0 {
        return Err(RecordError::BadEnum);
    }
    if n > MAX_CONTACTS {
        return Err(RecordError::TooManyAddrs);
    }
    (0..n).map(|_| Ok(Contact { node_id: r.node_id()?, addr: r.addr()? })).collect()
}

fn relay_ad(r: &mut Reader) -> Result<RelayAd, RecordError> {
    let load_permille = r.u16()?;
    if load_permille > 1000 {
        return Err(RecordError::BadLoad);
    }
    Ok(RelayAd { load_permille, addr: r.addr()? })
}

/// What the node key signs for a body of `version`.
pub fn signing_input(version: Version, body: &[u8]) -> Vec<u8> {
    let ctx = version.signing_context();
    let mut m = Vec::with_capacity(ctx.len() + body.len());
    m.extend_from_slice(ctx);
    m.extend_from_slice(body);
    m
}

/// Frames an encoded body of `version` and its signature into a record.
pub fn frame(version: Version, body: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(&version.magic());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(signature);
    out
}

/// Splits a record into (version, body bytes, signature) without trusting
/// any of them.
pub fn unframe(record: &[u8]) -> Result<(Version, &[u8], [u8; SIGNATURE_LEN]), RecordError> {
    if record.len() < 6 {
        return Err(RecordError::Truncated);
    }
    let version = match &record[..4] {
        m if m == MAGIC => Version::V1,
        m if m == MAGIC_V2 => Version::V2,
        _ => return Err(RecordError::BadMagic),
    };
    let len = u16::from_be_bytes([record[4], record[5]]) as usize;
    let rest = &record[6..];
    if rest.len() < len + SIGNATURE_LEN {
        return Err(RecordError::Truncated);
    }
    if rest.len() > len + SIGNATURE_LEN {
        return Err(RecordError::TrailingBytes);
    }
    let sig: [u8; SIGNATURE_LEN] = rest[len..].try_into().map_err(|_| RecordError::Truncated)?;
    Ok((version, &rest[..len], sig))
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
pub fn check(body: &RecordBody, asked: &NodeId, now_s: u64, last_seq: Option<u64>) -> Result<(), Rejection> {
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
