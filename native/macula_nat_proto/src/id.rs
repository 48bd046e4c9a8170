//! The identifiers every layer shares, declared once.
//!
//! * [`NodeId`]: a node's ed25519 public key, the name peers dial, sign
//!   records with and authenticate QUIC by.
//! * [`SessionId`]: a connect session, 16 random bytes chosen by the
//!   initiator; it names the signalling session, the punch (its
//!   PUNCH-TOKEN) and the session's first QUIC message.
//! * [`RelaySessionId`]: a relay session, the number a relay gives the
//!   session it joins and every data frame carries (not a connect session).

/// A node's ed25519 public key.
pub type NodeId = [u8; 32];
/// A connect session (signalling, punch, the session's connection).
pub type SessionId = [u8; 16];
/// A relay session, as the relay numbers it in its frames.
pub type RelaySessionId = u64;
