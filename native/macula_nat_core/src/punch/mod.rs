//! Hole punching at runtime: [`driver`] runs the sans-IO punch machine
//! (`macula_nat_proto::punch`) on the node socket (its packets come from
//! `crate::socket::punch_routes`), [`birthday`] opens the extra sockets of
//! birthday probing's hard side and carries QUIC over the winning one, and
//! [`primer`] learns the TTL and sends the TTL-limited primers that open our
//! own NAT before a peer's packets arrive.

pub(crate) mod birthday;
pub(crate) mod driver;
pub mod primer;
