//! Relays at runtime: the server a node runs to forward others' QUIC
//! packets ([`server`]), the client side that reserves and opens sessions
//! ([`client`]), and the receive-loop hooks both use (`crate::socket::relay_plane`). The
//! decisions (messages, frames, limits, accounting) are
//! `macula_nat_proto::relay`'s.

pub(crate) mod client;
pub(crate) mod server;

pub use client::{RelayError, RelayLink, RelayPath, RelaySet};
pub use crate::socket::relay_plane::{is_virtual, virtual_addr, VirtualAddr};
pub use server::{RelayEvent, RelayServer, RelayStats, CLIENT_DROP_LIMIT, CLIENT_QUEUE, EVENT_QUEUE};
pub use macula_nat_proto::relay::table::Limits as RelayLimits;
