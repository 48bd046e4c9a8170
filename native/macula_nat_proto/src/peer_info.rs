//! What is known about a peer's NAT and addresses ([`PeerInfo`]): what the
//! profile cache holds, what a peer record and a signalling profile carry
//! (both encode it with `crate::wire`).

use crate::nat::{Allocation, Confidence, Filtering, Mapping};
use std::net::SocketAddr;

/// What the cache holds for a peer and what a record carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub mapping: Mapping,
    pub filtering: Filtering,
    pub allocation: Allocation,
    pub confidence: Confidence,
    pub public_addr: Option<SocketAddr>,
    pub port_delta: Option<i32>,
    pub no_nat: bool,
    /// Unix seconds when the peer detected this profile.
    pub detected_at: u64,
    /// Reflexive (public) endpoints of the peer's one socket.
    pub endpoints: Vec<SocketAddr>,
    /// Rendezvous or relay nodes through which the peer can be reached.
    pub rendezvous: Vec<SocketAddr>,
}

impl PeerInfo {
    /// This profile as signalled once the rendezvous has seen the socket
    /// (bound to `local_port`) at `observed`: the public address becomes
    /// the rendezvous' view, and an endpoint-independent mapping whose port
    /// is contested is reported address dependent (HD), with medium
    /// confidence. Contested: the rendezvous sees another port than the
    /// detector did at the same IP, or a port-preserving NAT did not keep
    /// the socket's own port (another binding holds it). Why: behind a
    /// router that overloads ports (Linux masquerade: two hosts on one
    /// local port) a socket keeps one public port towards some
    /// destinations and gets others elsewhere, chosen by whichever of its
    /// connections the router finds first, so a peer told "endpoint
    /// independent" punches a port that is not ours towards it (BEAM lab
    /// matrix: 13 of 20 such tries relayed). HD is what the evidence shows
    /// (another port towards another IP) and, with the NAT's allocation,
    /// makes the strategies aim at a fresh socket's preserved port, which
    /// nobody shares: prediction against addressable peers, birthday
    /// probing (as the easy side) against random ones.
    pub fn as_seen_by_rendezvous(&self, observed: Option<SocketAddr>, local_port: Option<u16>) -> PeerInfo {
        let mut info = self.clone();
        if let Some(seen) = observed {
            let moved = self.public_addr.is_some_and(|d| d.ip() == seen.ip() && d.port() != seen.port());
            let taken = self.allocation == Allocation::Pp && local_port.is_some_and(|p| p != 0 && p != seen.port());
            if self.mapping == Mapping::Ei && !self.no_nat && (moved || taken) {
                info.mapping = Mapping::Hd;
                info.confidence = info.confidence.min(Confidence::Medium);
            }
        }
        info.public_addr = observed;
        info
    }
}
