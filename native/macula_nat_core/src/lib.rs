//! Runtime layer of macula_nat.
//!
//! This crate owns everything that does IO or keeps time: the tokio runtime,
//! the node's one UDP socket and the node identity. The decisions (STUN
//! codec, NAT classification, strategy) live in `macula_nat_proto`, which is
//! sans-IO; this crate feeds it bytes and timestamps. There are no Erlang
//! types here: the binding crate (`macula_nat_nif`) converts terms.
//!
//! Layers, each importing only those below it (no cycle; see
//! `scripts/rust_use_cycles.py` and `ARCHITECTURE.md`):
//!
//! * [`connect`], [`rendezvous`], [`relay`], [`relay_registry`],
//!   [`advertiser`], [`profile_cache`], [`dht`]: connecting peers and what
//!   it needs;
//! * [`punch`], [`detect`]: hole punching and NAT detection on the node;
//! * [`node`]: the facade, one identity and one socket with its QUIC
//!   endpoint;
//! * [`quic`]: quinn on the node socket;
//! * `socket`: the UDP socket, its buffers, counters and receive loop, the
//!   punch routes and the relay plane;
//! * [`identity`], [`runtime`], [`error`], `lock`: shared by all.

pub mod advertiser;
pub mod connect;
pub mod detect;
pub mod dht;
pub(crate) mod error;
pub mod fd_budget;
pub(crate) mod identity;
pub(crate) mod local_profile;
pub mod netchange;
pub(crate) mod lock;
pub(crate) mod node;
pub mod peer_record;
// Port mapping (PCP, NAT-PMP, UPnP IGD) of the node socket's port.
pub mod portmap;
pub mod profile_cache;
pub mod punch;
pub mod relay_registry;
pub mod quic;
pub mod relay;
pub(crate) mod socket;
pub(crate) mod rendezvous;
pub mod runtime;
pub mod stderr_trace;
pub mod txid;

pub use error::Error;
pub use identity::{Identity, NodeId};
pub use node::{Node, NodeConfig, NodeStats};
pub use quic::{CloseReason, Connection, QuicConfig, QuicEndpoint, QuicError};
pub use connect::{connect, connect_detailed, ConnectError, ConnectOpts, Connected, Method, Signal, SignalConfig};
pub use rendezvous::Rendezvous;
