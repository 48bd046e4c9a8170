//! Why a connect failed ([`ConnectError`]).

use crate::quic::QuicError;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("hole punching failed")]
    PunchFailed,
    #[error("both peers have unpredictable ports (symmetric NATs) and relaying is not allowed")]
    SymmetricNat,
    #[error("a relay is needed but none is available")]
    NoRelay,
    #[error("the relay refused: {}", .0.name())]
    RelayRefused(macula_nat_proto::relay::msg::Refusal),
    #[error("timed out")]
    Timeout,
    #[error("peer not registered at the rendezvous")]
    UnknownPeer,
    #[error("peer rejected the connection (reason {0})")]
    Rejected(u8),
    #[error("no control connection to the rendezvous")]
    NoRendezvous,
    #[error("closed")]
    Closed,
    #[error("quic: {0}")]
    Quic(String),
}

impl ConnectError {
    /// Stable short name, for the Erlang error atom.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::PunchFailed => "punch_failed",
            ConnectError::SymmetricNat => "symmetric_nat",
            ConnectError::NoRelay => "no_relay",
            ConnectError::RelayRefused(r) => r.name(),
            ConnectError::Timeout => "timeout",
            ConnectError::UnknownPeer => "unknown_peer",
            ConnectError::Rejected(_) => "rejected",
            ConnectError::NoRendezvous => "no_rendezvous",
            ConnectError::Closed => "closed",
            ConnectError::Quic(_) => "quic",
        }
    }
}

impl From<QuicError> for ConnectError {
    fn from(e: QuicError) -> ConnectError {
        match e {
            QuicError::Closed => ConnectError::Closed,
            QuicError::TimedOut => ConnectError::Timeout,
            other => ConnectError::Quic(other.to_string()),
        }
    }
}
