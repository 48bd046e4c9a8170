//! Datagram and byte counters of the node socket, bumped by the receive
//! loop and by every sender on the socket (QUIC, relay data path, STUN).

use std::sync::atomic::AtomicU64;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) datagrams_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) datagrams_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) stun_answered: AtomicU64,
    pub(crate) stun_dropped: AtomicU64,
    /// Binding requests left unanswered by the responder's limits (rates,
    /// byte ledger) or because the socket would have blocked.
    pub(crate) stun_refused: AtomicU64,
}
