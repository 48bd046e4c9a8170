//! Signalling message formats: what peers and a rendezvous say to each other
//! over their control connections, and the first message of a connection
//! made by `macula_nat_core::connect`.
//!
//! Every message is one `macula_nat_core::Connection` message (the QUIC layer frames
//! them). Hand-written codec, no serde: the formats are small, fixed and
//! must stay readable from other languages. All integers big-endian.
//!
//! ```text
//! addr     = family(u8: 4 | 6) ip(4 | 16) port(u16)
//! node_id  = 32 bytes (ed25519 public key)
//! session  = 16 random bytes, chosen by the initiator
//! profile  = mapping(u8) filtering(u8) allocation(u8) confidence(u8) flags(u8)
//!            [public addr, if flags & 1] [port_delta i32, if flags & 2]
//!            detected_at(u64) local_port(u16) answer_port(u16) alloc_base(u16)
//!            n(u8) addr*n (candidates)
//!            m(u8) (node_id addr)*m (relays holding our reservation, m <= 4)
//!            flags & 4: no NAT (public host); other flag bits are refused
//!            mapping/filtering: 0 EI, 1 HD, 2 PD; allocation: 0 PP, 1 PC, 2 RD;
//!            confidence: 0 low, 1 medium, 2 high
//!            local_port: the port to aim at when the NAT preserves ports
//!            (the session's fresh socket, else the node socket);
//!            answer_port: a PD-mapping, port-preserving side's second fresh
//!            socket, from which it answers a connection-reversal dial (the
//!            dialer opens its filter for it first); 0: none
//!            alloc_base: a port-contiguous side's latest NAT allocation,
//!            measured for this session (see `alloc_probe`): peers aim one
//!            delta past it; 0: not measured, aim past the observed address
//!            (addr and the profile up to detected_at are macula_nat_proto::wire,
//!            shared with the signed peer record)
//!
//! Hello      0x01 "MNS1" kind(u8)            first message of a connection
//!                 kind 1: control connection (peer -> rendezvous)
//!                 kind 2: session connection, followed by session(16)
//!                 kind 3: relay connection (client -> relay; then the
//!                 relay messages of macula_nat_proto::relay::msg)
//! Registered 0x02 observed(addr)             rendezvous -> peer, after Hello:
//!                                            the peer's address as seen by the
//!                                            rendezvous (its reflexive address);
//!                                            a peer sends Hello(Control) again
//!                                            on its control connection after
//!                                            each NAT detection and gets a
//!                                            fresh Registered
//! Connect    0x03 to(node_id) session flags(u8) attempts(u8) profile
//!                                            initiator -> rendezvous
//!                                            flags & 1: no direct strategies
//!                                            flags & 2: upgrade: punch for the
//!                                            relayed connection of this pair
//!                                            (no new connection is dialled)
//!                                            flags & 4: relay only
//!                                            attempts: punch transmissions
//!                                            per path for both sides
//!                                            (0: the responder's default)
//! Incoming   0x04 from(node_id) session flags(u8) attempts(u8) profile observed(addr)
//!                                            rendezvous -> responder; observed
//!                                            = the initiator's address as seen
//!                                            by the rendezvous
//! Answer     0x05 to(node_id) session profile
//!                                            responder -> rendezvous
//! Answered   0x06 from(node_id) session profile observed(addr)
//!                                            rendezvous -> initiator
//! Go         0x07 session wait_us(u32) own_rtt_us(u32) peer_rtt_us(u32)
//!                                            rendezvous -> both, right after
//!                                            Answered: start in wait_us
//! Unknown    0x08 session                    rendezvous -> initiator: the
//!                                            target is not registered
//! Reject     0x09 peer(node_id) session reason(u8)
//!                                            responder -> rendezvous (peer =
//!                                            initiator), relayed to the
//!                                            initiator with peer = responder
//! Ping       0x0A nonce(u32)                 peer -> its home rendezvous,
//!                                            every second (liveness)
//! Pong       0x0B nonce(u32)                 rendezvous -> peer, the answer
//! ```
//!
//! Timing ("Go"): the rendezvous measures the RTT of each control
//! connection (quinn's smoothed RTT) and sends Go to both peers at once,
//! telling each to wait `(max_rtt - own_rtt) / 2`. A Go reaches a peer
//! `own_rtt / 2` after it left, so both start `max_rtt / 2` after the
//! rendezvous sent them: no wall clocks are compared.
//!
//! Unknown message types and truncated messages are decoding errors; a
//! peer that sends one has its message dropped (the connection stays).

use crate::record::PeerInfo;
use crate::wire::{self, put_addr, WireError};
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::id::{NodeId, SessionId};

pub const MAGIC: [u8; 4] = *b"MNS1";
/// Candidates kept per profile.
pub const MAX_CANDIDATES: usize = 16;
/// Relays kept per profile.
pub const MAX_RELAYS: usize = 4;

/// Connect flag: the initiator asked for no Direct / ConnectionReversal
/// (`ConnectOpts::prefer_direct == false`): the pair punches instead.
pub const FLAG_NO_DIRECT: u8 = 1;
/// Connect flag: an upgrade attempt for the pair's relayed connection:
/// both sides punch, nobody dials; the initiator moves the connection onto
/// the punched path.
pub const FLAG_UPGRADE: u8 = 2;
/// Connect flag: go through a relay whatever the NAT types
/// (`macula_relay_node:request_relay/2`).
pub const FLAG_RELAY_ONLY: u8 = 4;

/// Reject reasons.
pub mod reject {
    /// The responder is shutting down or not accepting.
    pub const BUSY: u8 = 1;
    /// The responder could not parse or use the request.
    pub const BAD_REQUEST: u8 = 2;
}

/// What a peer tells the other about itself: its NAT profile (a
/// [`PeerInfo`]), the local port of its node socket (for port
/// preservation) and its candidate addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub info: PeerInfo,
    pub local_port: u16,
    /// The session's answer socket's port (0: none): see the module docs
    /// and `strategy`'s split path.
    pub answer_port: u16,
    /// A port-contiguous side's latest NAT allocation (0: not measured):
    /// see the module docs.
    pub alloc_base: u16,
    pub candidates: Vec<SocketAddr>,
    /// Relays the peer holds a reservation at (it can be reached through
    /// them), best first.
    pub relays: Vec<(NodeId, SocketAddr)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloKind {
    Control,
    /// A relay client's control connection (see `macula_nat_proto::relay`).
    Relay,
    Session(SessionId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Hello(HelloKind),
    Registered { observed: SocketAddr },
    Connect { to: NodeId, session: SessionId, flags: u8, attempts: u8, profile: Profile },
    Incoming { from: NodeId, session: SessionId, flags: u8, attempts: u8, profile: Profile, observed: SocketAddr },
    Answer { to: NodeId, session: SessionId, profile: Profile },
    Answered { from: NodeId, session: SessionId, profile: Profile, observed: SocketAddr },
    Go { session: SessionId, wait: Duration, own_rtt: Duration, peer_rtt: Duration },
    Unknown { session: SessionId },
    Reject { peer: NodeId, session: SessionId, reason: u8 },
    Ping { nonce: u32 },
    Pong { nonce: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    UnknownType(u8),
    BadValue,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated message"),
            DecodeError::UnknownType(t) => write!(f, "unknown message type {t}"),
            DecodeError::BadValue => write!(f, "bad field value"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Msg {
    /// The session a message is about, if any.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Msg::Hello(HelloKind::Session(s)) => Some(*s),
            Msg::Hello(_) | Msg::Registered { .. } | Msg::Ping { .. } | Msg::Pong { .. } => None,
            Msg::Connect { session, .. }
            | Msg::Incoming { session, .. }
            | Msg::Answer { session, .. }
            | Msg::Answered { session, .. }
            | Msg::Go { session, .. }
            | Msg::Unknown { session }
            | Msg::Reject { session, .. } => Some(*session),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        match self {
            Msg::Hello(k) => {
                b.push(0x01);
                b.extend_from_slice(&MAGIC);
                match k {
                    HelloKind::Control => b.push(1),
                    HelloKind::Relay => b.push(3),
                    HelloKind::Session(s) => {
                        b.push(2);
                        b.extend_from_slice(s.as_bytes());
                    }
                }
            }
            Msg::Registered { observed } => {
                b.push(0x02);
                put_addr(&mut b, *observed);
            }
            Msg::Connect { to, session, flags, attempts, profile } => {
                b.push(0x03);
                b.extend_from_slice(to.as_bytes());
                b.extend_from_slice(session.as_bytes());
                b.push(*flags);
                b.push(*attempts);
                put_profile(&mut b, profile);
            }
            Msg::Incoming { from, session, flags, attempts, profile, observed } => {
                b.push(0x04);
                b.extend_from_slice(from.as_bytes());
                b.extend_from_slice(session.as_bytes());
                b.push(*flags);
                b.push(*attempts);
                put_profile(&mut b, profile);
                put_addr(&mut b, *observed);
            }
            Msg::Answer { to, session, profile } => {
                b.push(0x05);
                b.extend_from_slice(to.as_bytes());
                b.extend_from_slice(session.as_bytes());
                put_profile(&mut b, profile);
            }
            Msg::Answered { from, session, profile, observed } => {
                b.push(0x06);
                b.extend_from_slice(from.as_bytes());
                b.extend_from_slice(session.as_bytes());
                put_profile(&mut b, profile);
                put_addr(&mut b, *observed);
            }
            Msg::Go { session, wait, own_rtt, peer_rtt } => {
                b.push(0x07);
                b.extend_from_slice(session.as_bytes());
                for d in [wait, own_rtt, peer_rtt] {
                    b.extend_from_slice(&micros(*d).to_be_bytes());
                }
            }
            Msg::Unknown { session } => {
                b.push(0x08);
                b.extend_from_slice(session.as_bytes());
            }
            Msg::Reject { peer, session, reason } => {
                b.push(0x09);
                b.extend_from_slice(peer.as_bytes());
                b.extend_from_slice(session.as_bytes());
                b.push(*reason);
            }
            Msg::Ping { nonce } => {
                b.push(0x0A);
                b.extend_from_slice(&nonce.to_be_bytes());
            }
            Msg::Pong { nonce } => {
                b.push(0x0B);
                b.extend_from_slice(&nonce.to_be_bytes());
            }
        }
        b
    }

    pub fn decode(data: &[u8]) -> Result<Msg, DecodeError> {
        let mut r = Reader(wire::Reader::new(data));
        let t = r.u8()?;
        let m = match t {
            0x01 => {
                if r.take(4)? != MAGIC {
                    return Err(DecodeError::BadValue);
                }
                match r.u8()? {
                    1 => Msg::Hello(HelloKind::Control),
                    2 => Msg::Hello(HelloKind::Session(r.session_id()?)),
                    3 => Msg::Hello(HelloKind::Relay),
                    _ => return Err(DecodeError::BadValue),
                }
            }
            0x02 => Msg::Registered { observed: r.addr()? },
            0x03 => Msg::Connect { to: r.node_id()?, session: r.session_id()?, flags: r.u8()?, attempts: r.u8()?, profile: r.profile()? },
            0x04 => Msg::Incoming {
                from: r.node_id()?,
                session: r.session_id()?,
                flags: r.u8()?,
                attempts: r.u8()?,
                profile: r.profile()?,
                observed: r.addr()?,
            },
            0x05 => Msg::Answer { to: r.node_id()?, session: r.session_id()?, profile: r.profile()? },
            0x06 => Msg::Answered { from: r.node_id()?, session: r.session_id()?, profile: r.profile()?, observed: r.addr()? },
            0x07 => Msg::Go {
                session: r.session_id()?,
                wait: Duration::from_micros(r.u32()? as u64),
                own_rtt: Duration::from_micros(r.u32()? as u64),
                peer_rtt: Duration::from_micros(r.u32()? as u64),
            },
            0x08 => Msg::Unknown { session: r.session_id()? },
            0x09 => Msg::Reject { peer: r.node_id()?, session: r.session_id()?, reason: r.u8()? },
            0x0A => Msg::Ping { nonce: r.u32()? },
            0x0B => Msg::Pong { nonce: r.u32()? },
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(m)
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

fn put_profile(b: &mut Vec<u8>, p: &Profile) {
    wire::put_nat_head(b, &p.info);
    b.extend_from_slice(&p.local_port.to_be_bytes());
    b.extend_from_slice(&p.answer_port.to_be_bytes());
    b.extend_from_slice(&p.alloc_base.to_be_bytes());
    let n = p.candidates.len().min(MAX_CANDIDATES);
    b.push(n as u8);
    for a in &p.candidates[..n] {
        put_addr(b, *a);
    }
    let n = p.relays.len().min(MAX_RELAYS);
    b.push(n as u8);
    for (id, a) in &p.relays[..n] {
        b.extend_from_slice(id.as_bytes());
        put_addr(b, *a);
    }
}

/// The signalling reader: the shared wire reader plus the profile.
struct Reader<'a>(wire::Reader<'a>);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        Ok(self.0.take(n)?)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.0.u8()?)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.0.u32()?)
    }
    fn node_id(&mut self) -> Result<NodeId, DecodeError> {
        Ok(self.0.node_id()?)
    }
    fn session_id(&mut self) -> Result<SessionId, DecodeError> {
        Ok(self.0.session_id()?)
    }
    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        Ok(self.0.addr()?)
    }
    fn profile(&mut self) -> Result<Profile, DecodeError> {
        let info = self.0.nat_head()?;
        let local_port = self.0.u16()?;
        let answer_port = self.0.u16()?;
        let alloc_base = self.0.u16()?;
        let n = self.u8()? as usize;
        if n > MAX_CANDIDATES {
            return Err(DecodeError::BadValue);
        }
        let candidates = (0..n).map(|_| self.addr()).collect::<Result<Vec<_>, _>>()?;
        let n = self.u8()? as usize;
        if n > MAX_RELAYS {
            return Err(DecodeError::BadValue);
        }
        let relays = (0..n).map(|_| Ok((self.node_id()?, self.addr()?))).collect::<Result<Vec<_>, DecodeError>>()?;
        Ok(Profile { info, local_port, answer_port, alloc_base, candidates, relays })
    }
}

impl From<WireError> for DecodeError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => DecodeError::Truncated,
            WireError::BadEnum | WireError::BadAddress => DecodeError::BadValue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Allocation, Confidence, Filtering, Mapping};

    fn profile() -> Profile {
        Profile {
            info: PeerInfo {
                mapping: Mapping::Pd,
                filtering: Filtering::Hd,
                allocation: Allocation::Pc,
                confidence: Confidence::High,
                public_addr: Some("203.0.113.5:4000".parse().unwrap()),
                port_delta: Some(-2),
                no_nat: false,
                detected_at: 1_700_000_000,
                endpoints: Vec::new(),
                rendezvous: Vec::new(),
            },
            local_port: 5555,
            answer_port: 5556,
            alloc_base: 20911,
            candidates: vec!["198.18.1.2:5555".parse().unwrap(), "[2001:db8::1]:7".parse().unwrap()],
            relays: vec![(NodeId::from_bytes([9; 32]), "198.51.100.9:4433".parse().unwrap())],
        }
    }

    #[test]
    fn every_message_round_trips() {
        let id = NodeId::from_bytes([7u8; 32]);
        let s = SessionId::from_bytes([9u8; 16]);
        let obs: SocketAddr = "203.0.113.9:1234".parse().unwrap();
        let ms = [
            Msg::Hello(HelloKind::Control),
            Msg::Hello(HelloKind::Relay),
            Msg::Hello(HelloKind::Session(s)),
            Msg::Registered { observed: obs },
            Msg::Connect { to: id, session: s, flags: FLAG_NO_DIRECT, attempts: 25, profile: profile() },
            Msg::Incoming { from: id, session: s, flags: 0, attempts: 0, profile: profile(), observed: obs },
            Msg::Answer { to: id, session: s, profile: profile() },
            Msg::Answered { from: id, session: s, profile: profile(), observed: obs },
            Msg::Go {
                session: s,
                wait: Duration::from_micros(1500),
                own_rtt: Duration::from_micros(3000),
                peer_rtt: Duration::from_micros(6000),
            },
            Msg::Unknown { session: s },
            Msg::Reject { peer: id, session: s, reason: reject::BUSY },
            Msg::Ping { nonce: 0xDEAD_BEEF },
            Msg::Pong { nonce: 7 },
        ];
        for m in ms {
            let enc = m.encode();
            assert_eq!(Msg::decode(&enc).unwrap(), m);
            // Every strict prefix is refused, never misread.
            for n in 0..enc.len() {
                assert!(Msg::decode(&enc[..n]).is_err(), "{m:?} prefix {n}");
            }
        }
        assert_eq!(Msg::decode(&[0x7f]), Err(DecodeError::UnknownType(0x7f)));
        assert_eq!(Msg::decode(b"\x01XXXX\x01"), Err(DecodeError::BadValue));
    }
}
