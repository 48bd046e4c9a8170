//! DHT backends for profile advertisement.
//!
//! A backend stores one opaque value per node key: the node's signed peer
//! record (`macula_nat_proto::record`). Backends never judge a value; the
//! caller verifies the record's signature against the NodeId it asked for,
//! so a lying or buggy backend can only make a lookup fail, never poison a
//! cache. All work is async and runs on the crate's runtime, so no caller
//! (and no BEAM scheduler) ever waits on the network.

use crate::identity::{Identity, NodeId};
use std::future::Future;
use std::pin::Pin;

pub mod mainline;
pub mod deferred;
pub mod memory;
pub mod swarm;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtError {
    #[error("dht timeout")]
    Timeout,
    #[error("value too large: {0} bytes")]
    TooLarge(usize),
    /// The backend has stopped (its owner went away, or it was shut down).
    #[error("dht backend closed")]
    Closed,
    #[error("dht backend: {0}")]
    Backend(String),
}

impl DhtError {
    /// Short stable name, used as the Erlang error atom.
    pub fn kind(&self) -> &'static str {
        match self {
            DhtError::Timeout => "timeout",
            DhtError::TooLarge(_) => "too_large",
            DhtError::Closed => "closed",
            DhtError::Backend(_) => "backend",
        }
    }
}

/// Largest value any backend must accept: BEP 44 caps `v` at 1000 bytes,
/// so records are kept under that for every backend alike.
pub const MAX_VALUE: usize = 1000;

pub trait DhtBackend: Send + Sync + 'static {
    /// Stores `value` under `signer`'s NodeId, replacing any value with a
    /// lower `seq`. Backends that sign themselves (mainline's BEP 44) use
    /// the key; the others ignore it.
    fn put(&self, signer: &Identity, seq: u64, value: Vec<u8>) -> BoxFuture<Result<(), DhtError>>;

    /// The most recent value stored under `node_id`, if any.
    fn get(&self, node_id: NodeId) -> BoxFuture<Result<Option<Vec<u8>>, DhtError>>;

    /// Name for logs and stats (`memory`, `mainline`, `erlang`).
    fn name(&self) -> &'static str;

    /// Releases what the backend holds (sockets, threads); later calls
    /// answer `Closed`. Backends with nothing to release keep the default.
    fn close(&self) {}
}
