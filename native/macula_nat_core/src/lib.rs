//! Runtime layer of macula_nat.
//!
//! This crate owns everything that does IO or keeps time: the tokio runtime,
//! the node's one UDP socket and the node identity. The decisions (STUN
//! codec, NAT classification, strategy) live in `macula_nat_proto`, which is
//! sans-IO; this crate feeds it bytes and timestamps. There are no Erlang
//! types here: the binding crate (`macula_nat_nif`) converts terms.

pub mod advertiser;
pub mod alloc_probe;
pub mod birthday;
pub mod connect;
pub(crate) mod dispatch;
pub mod detector;
pub mod dht;
pub mod error;
pub mod identity;
pub mod local_addrs;
pub mod local_ports;
pub mod local_profile;
pub(crate) mod lock;
pub mod primer;
pub mod node;
pub mod observer_server;
pub mod peer_record;
pub mod profile_cache;
pub mod punch_driver;
pub mod relay_registry;
pub mod quic;
pub mod relay;
pub(crate) mod socket;
pub mod rendezvous;
pub mod runtime;
pub mod stderr_trace;
pub mod stun_rtt;

pub use error::Error;
pub use identity::{Identity, NodeId};
pub use node::{Node, NodeConfig, NodeStats};
pub use quic::{CloseReason, Connection, QuicConfig, QuicEndpoint, QuicError};
pub use connect::{connect, connect_detailed, ConnectError, ConnectOpts, Connected, Method, Signal, SignalConfig};
pub use rendezvous::Rendezvous;
