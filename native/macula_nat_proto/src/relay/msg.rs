//! Control messages on a relay connection (client <-> relay). Each is one
//! message of the QUIC connection (the QUIC layer frames them); the first
//! message of the connection is the signalling `Hello` with the relay kind.
//! Integers big-endian; `node_id` = 32 bytes (ed25519 public key).
//!
//! ```text
//! Reserve  0x21                              client -> relay: make me
//!                                            reachable through you
//! Status   0x22 observed(addr) reserved(u8) load(u16 per-mille)
//!                                            relay -> client, after the Hello
//!                                            and after each Reserve
//! Open     0x23 to(node_id) tag(u32)         A -> relay: a session to B
//! Incoming 0x24 session(u64) from(node_id)   relay -> B
//! Accept   0x25 session(u64)                 B -> relay
//! Decline  0x26 session(u64)                 B -> relay
//! Opened   0x27 tag(u32) session(u64) peer(node_id)
//!                                            relay -> A
//! Refused  0x28 tag(u32) reason(u8)          relay -> A (reasons below)
//! Close    0x29 session(u64)                 either peer -> relay
//! Ended    0x2A session(u64) reason(u8)      relay -> both legs
//! Ping     0x2B nonce(u32)                   client -> relay, every second:
//! Pong     0x2C nonce(u32)                   relay -> client  a silent relay
//!                                            is found in seconds, not at the
//!                                            QUIC idle timeout
//! ```
//!
//! Unknown types and truncated messages are decoding errors; the receiver
//! drops the message and keeps the connection.

use crate::wire::{put_addr, Reader, WireError};
use std::net::SocketAddr;

pub use crate::id::NodeId;

/// Why a relay refused an `Open`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The target holds no reservation here (it cannot be reached).
    NoReservation,
    /// The relay is at its `max_sessions`.
    MaxSessions,
    /// Relaying is being switched off.
    Disabled,
    /// The target declined the session.
    Declined,
    /// A session to oneself.
    SelfSession,
    /// The opener has no usable control connection state.
    BadRequest,
    /// The opener's key holds its `max_sessions_per_key` sessions.
    TooManySessions,
    /// The opener's key has its `max_pending_per_key` sessions waiting.
    TooManyPending,
    /// The opener's key used its `max_opens_per_minute`.
    RateLimited,
}

impl Refusal {
    pub fn code(self) -> u8 {
        match self {
            Refusal::NoReservation => 1,
            Refusal::MaxSessions => 2,
            Refusal::Disabled => 3,
            Refusal::Declined => 4,
            Refusal::SelfSession => 5,
            Refusal::BadRequest => 6,
            Refusal::TooManySessions => 7,
            Refusal::TooManyPending => 8,
            Refusal::RateLimited => 9,
        }
    }

    pub fn from_code(c: u8) -> Option<Refusal> {
        Some(match c {
            1 => Refusal::NoReservation,
            2 => Refusal::MaxSessions,
            3 => Refusal::Disabled,
            4 => Refusal::Declined,
            5 => Refusal::SelfSession,
            6 => Refusal::BadRequest,
            7 => Refusal::TooManySessions,
            8 => Refusal::TooManyPending,
            9 => Refusal::RateLimited,
            _ => return None,
        })
    }

    /// Stable short name (the Erlang error atom).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NoReservation => "no_reservation",
            Refusal::MaxSessions => "max_sessions",
            Refusal::Disabled => "relay_disabled",
            Refusal::Declined => "declined",
            Refusal::SelfSession => "self_session",
            Refusal::BadRequest => "bad_request",
            Refusal::TooManySessions => "too_many_sessions",
            Refusal::TooManyPending => "too_many_pending",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// No frame for `session_timeout`.
    Inactive,
    /// A peer sent `Close`.
    Closed,
    /// A leg's control connection went away.
    PeerGone,
    /// The relay was disabled.
    Disabled,
}

impl EndReason {
    pub fn code(self) -> u8 {
        match self {
            EndReason::Inactive => 1,
            EndReason::Closed => 2,
            EndReason::PeerGone => 3,
            EndReason::Disabled => 4,
        }
    }

    pub fn from_code(c: u8) -> Option<EndReason> {
        Some(match c {
            1 => EndReason::Inactive,
            2 => EndReason::Closed,
            3 => EndReason::PeerGone,
            4 => EndReason::Disabled,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            EndReason::Inactive => "inactive",
            EndReason::Closed => "closed",
            EndReason::PeerGone => "peer_gone",
            EndReason::Disabled => "relay_disabled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayMsg {
    Reserve,
    Status { observed: SocketAddr, reserved: bool, load_permille: u16 },
    Open { to: NodeId, tag: u32 },
    Incoming { session: u64, from: NodeId },
    Accept { session: u64 },
    Decline { session: u64 },
    Opened { tag: u32, session: u64, peer: NodeId },
    Refused { tag: u32, reason: Refusal },
    Close { session: u64 },
    Ended { session: u64, reason: EndReason },
    Ping { nonce: u32 },
    Pong { nonce: u32 },
}

impl RelayMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48);
        match self {
            RelayMsg::Reserve => b.push(0x21),
            RelayMsg::Status { observed, reserved, load_permille } => {
                b.push(0x22);
                put_addr(&mut b, *observed);
                b.push(u8::from(*reserved));
                b.extend_from_slice(&load_permille.to_be_bytes());
            }
            RelayMsg::Open { to, tag } => {
                b.push(0x23);
                b.extend_from_slice(to.as_bytes());
                b.extend_from_slice(&tag.to_be_bytes());
            }
            RelayMsg::Incoming { session, from } => {
                b.push(0x24);
                b.extend_from_slice(&session.to_be_bytes());
                b.extend_from_slice(from.as_bytes());
            }
            RelayMsg::Accept { session } => {
                b.push(0x25);
                b.extend_from_slice(&session.to_be_bytes());
            }
            RelayMsg::Decline { session } => {
                b.push(0x26);
                b.extend_from_slice(&session.to_be_bytes());
            }
            RelayMsg::Opened { tag, session, peer } => {
                b.push(0x27);
                b.extend_from_slice(&tag.to_be_bytes());
                b.extend_from_slice(&session.to_be_bytes());
                b.extend_from_slice(peer.as_bytes());
            }
            RelayMsg::Refused { tag, reason } => {
                b.push(0x28);
                b.extend_from_slice(&tag.to_be_bytes());
                b.push(reason.code());
            }
            RelayMsg::Close { session } => {
                b.push(0x29);
                b.extend_from_slice(&session.to_be_bytes());
            }
            RelayMsg::Ended { session, reason } => {
                b.push(0x2A);
                b.extend_from_slice(&session.to_be_bytes());
                b.push(reason.code());
            }
            RelayMsg::Ping { nonce } => {
                b.push(0x2B);
                b.extend_from_slice(&nonce.to_be_bytes());
            }
            RelayMsg::Pong { nonce } => {
                b.push(0x2C);
                b.extend_from_slice(&nonce.to_be_bytes());
            }
        }
        b
    }

    pub fn decode(data: &[u8]) -> Result<RelayMsg, WireError> {
        let mut r = Reader::new(data);
        let m = match r.u8()? {
            0x21 => RelayMsg::Reserve,
            0x22 => {
                let observed = r.addr()?;
                let reserved = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::BadEnum),
                };
                RelayMsg::Status { observed, reserved, load_permille: r.u16()? }
            }
            0x23 => RelayMsg::Open { to: r.node_id()?, tag: r.u32()? },
            0x24 => RelayMsg::Incoming { session: r.u64()?, from: r.node_id()? },
            0x25 => RelayMsg::Accept { session: r.u64()? },
            0x26 => RelayMsg::Decline { session: r.u64()? },
            0x27 => RelayMsg::Opened { tag: r.u32()?, session: r.u64()?, peer: r.node_id()? },
            0x28 => {
                let tag = r.u32()?;
                RelayMsg::Refused { tag, reason: Refusal::from_code(r.u8()?).ok_or(WireError::BadEnum)? }
            }
            0x29 => RelayMsg::Close { session: r.u64()? },
            0x2A => {
                let session = r.u64()?;
                RelayMsg::Ended { session, reason: EndReason::from_code(r.u8()?).ok_or(WireError::BadEnum)? }
            }
            0x2B => RelayMsg::Ping { nonce: r.u32()? },
            0x2C => RelayMsg::Pong { nonce: r.u32()? },
            _ => return Err(WireError::BadEnum),
        };
        if !r.is_empty() {
            // Trailing bytes mean a peer speaks another version: refuse
            // rather than guess.
            return Err(WireError::BadEnum);
        }
        Ok(m)
    }
}
