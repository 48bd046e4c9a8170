//! Sans-IO core of macula_nat.
//!
//! Nothing in this crate touches a socket, a clock or a thread: every
//! decision takes its inputs (bytes, observations, `Instant`s) as arguments
//! so it can be tested exhaustively and fuzzed. The runtime crate
//! (`macula_nat_core`) owns the IO and calls into this one.
//!
//! NAT detection is split as: [`stun`] (wire format) -> [`observer`] (what a
//! STUN/RFC 5780 server answers) and [`detect`] (the client state machine
//! that classifies the NAT into the [`nat`] vocabulary); [`observations`]
//! refines the public address from what peers report later.
//!
//! Connecting two peers is split as: [`strategy`] (which technique, from
//! both NAT types) -> [`port_predictor`] (which ports to aim at, birthday
//! numbers) -> [`punch`] (the state machine that punches the paths), and
//! [`relay`] when no path can be punched.

// The shared identifiers: NodeId, SessionId, RelaySessionId.
pub mod id;
// STUN codec (RFC 8489 + RFC 5780 attributes) and the `is_stun` demux check.
pub mod stun;
// Seeded xorshift generator (replayable choices, tests) and the source of
// STUN transaction ids (a CSPRNG handed in by the runtime).
pub mod rng;
// NAT behaviour vocabulary: mapping, filtering, allocation, the 27
// NATCracker types and the detected `NatProfile`.
pub mod nat;
// Sans-IO RFC 5780 observer (STUN server) logic.
pub mod observer;
// What the STUN responder may send to an unverified address: per-IP byte
// ledger, per-IP and global rate limits.
pub mod reply_budget;
// Sans-IO NAT detection state machine (`Detection`).
pub mod detect;
// Peer-reported reflexive addresses with a distinct-peer quorum.
pub mod observations;
// A peer's NAT profile and addresses, as cached, recorded and signalled.
pub mod peer_info;
// Signed peer record advertised in the DHT: canonical body, framing, acceptance.
pub mod record;
// Byte-level pieces shared by the record and signalling formats.
pub mod wire;
// Cache policy: per-entry TTL, stale-while-revalidate, LRU bound.
pub mod cache;
// Connection strategy for a pair of NAT types (NATCracker combination table).
pub mod strategy;
// Port prediction (preservation, contiguity windows) and birthday-probing math.
pub mod port_predictor;
// Sans-IO hole-punch state machine (`Punch`) over STUN with PUNCH-TOKEN.
pub mod punch;
// Relays: control messages, the data frame, reservations/sessions/limits.
pub mod relay;
// Signalling messages between peers and a rendezvous (codec).
pub mod signal;
// Port mapping codecs: NAT-PMP (RFC 6886), PCP (RFC 6887), renewal timing.
pub mod portmap;
// What a connect does with the two profiles: targets, the session's
// strategy, dial bounds, retries.
pub mod connect;
// Reaching a node by id: which rendezvous of its record to signal
// through, in what order, when to give up; the guest connections' bounds.
pub mod reach;
// A node's home rendezvous (joined, several at once): which are live,
// what the record names, when a silent one is dead, rejoin backoff.
pub mod homes;
// Relay choice: score from latency and load, hysteresis, expiry.
pub mod relay_select;
pub mod quality;
// When a moved reflexive address counts as a network change (debounce).
pub mod netchange;
// Bounds against hostile peers: caps per peer and in total, event rates,
// expiry, connection caps, the fd budget, decoded term sizes (pure state).
pub mod limits;
// Message framing on a connection's stream: version byte, length-prefixed
// messages, the size limit checked on the header.
pub mod frame;
