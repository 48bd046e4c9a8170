//! NAT detection at runtime: [`detector`] runs the sans-IO detection
//! (`macula_nat_proto::detect`) on the node socket against STUN observers,
//! [`observer_server`] is such an observer (RFC 5780, two addresses),
//! [`alloc_probe`] measures where a contiguous NAT's port counter is for a
//! session, [`stun_rtt`] times a STUN round trip (relay choice), and
//! [`lifetime`] measures how long the NAT keeps an idle mapping.

pub(crate) mod alloc_probe;
pub mod detector;
mod hairpin;
pub mod lifetime;
pub mod observer_server;
pub(crate) mod stun_rtt;
