//! Relays, sans-IO: the control messages a relay and its clients exchange
//! ([`msg`]), the data frame that carries a peer's QUIC packets through the
//! relay ([`frame`]), and the relay's accounting ([`table`]: reservations,
//! sessions, limits, per-session token bucket, inactivity, byte counts).
//!
//! # Model
//!
//! A relay is an ordinary node. A client keeps a QUIC control connection to
//! it (authenticated both ways by node key, like every connection here). A
//! node that wants to be reachable through the relay *reserves* on that
//! connection; only reserved nodes can be the target of a session, so the
//! relay is no open proxy. A session joins two authenticated clients:
//!
//! ```text
//! A -> relay  Open { to: B, tag }
//! relay -> B  Incoming { session, from: A }      (B must hold a reservation)
//! B -> relay  Accept { session }
//! relay -> A  Opened { tag, session, peer: B }
//! ```
//!
//! From then on each side sends [`frame`]s — its end-to-end QUIC packets
//! behind a 9-byte header naming the session — from its node socket to the
//! relay's node socket. The relay checks that a frame comes from the
//! address of one leg's control connection and sends it unchanged to the
//! other leg. It never sees inside: the QUIC connection is end to end
//! between A and B.

// Control messages on the relay connection.
pub mod msg;
// The data frame: tag byte, session id, payload.
pub mod frame;
// Reservations, sessions, limits, token bucket, inactivity.
pub mod table;

#[cfg(test)]
mod tests;
