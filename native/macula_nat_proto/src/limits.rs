//! Bounds on what a peer can make a node hold: the decisions only (pure
//! counters), applied by the runtime.
//!
//! * [`caps`]: how many of a thing each peer and all peers may hold,
//!   how often one peer may ask, and when held things expire;
//! * [`conn_caps`]: incoming QUIC connections in total and per source IP;
//! * [`fd_budget`]: file descriptors for sockets beyond the node socket
//!   (birthday probing, fresh sockets, detection probes);
//! * [`term_size`]: the size an Erlang external term will take once
//!   decoded, read from its header before anything is inflated.

pub mod caps;
pub mod conn_caps;
pub mod fd_budget;
pub mod term_size;

#[cfg(test)]
mod tests;
