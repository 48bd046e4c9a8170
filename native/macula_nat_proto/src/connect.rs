//! What a connect does with the two profiles, sans-IO: where to aim at a
//! peer ([`targets`]), which strategy a session uses ([`decide`], over
//! `strategy::choose`), which side is aimed at a preserved port, how long
//! a dial may take ([`dial_bound`]), whether a failed session gets a
//! second one ([`may_retry`]), which ports a birthday easy side probes
//! ([`probe_ports`]). The runtime (`macula_nat_core::connect`) acts on
//! these; its files name the step, this one the rule.

use crate::nat::{Allocation, Confidence, Filtering, Mapping, NatType};
use crate::port_predictor::{contiguity_window, BirthdayPorts};
use crate::punch::BirthdaySchedule;
use crate::record::PeerInfo;
use crate::signal::{self, Profile};
use crate::strategy::{self, Aim, PeerNat, Side, Strategy};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub fn peer_nat(p: &PeerInfo) -> PeerNat {
    PeerNat {
        nat: NatType { mapping: p.mapping, allocation: p.allocation, filtering: p.filtering },
        public: p.no_nat,
        port_delta: p.port_delta,
    }
}

/// Ports to try beyond the last observed one for a contiguous allocator.
pub const CONTIGUITY_WINDOW: usize = 8;

/// Where to aim at a peer with `profile`, seen by the rendezvous at
/// `observed`: most likely first. A contiguous peer is aimed past its
/// measured latest allocation when it sent one, else past `observed`.
pub fn targets(profile: &Profile, observed: SocketAddr) -> Vec<SocketAddr> {
    let mut v = Vec::new();
    let ip = observed.ip();
    match strategy::aim(&peer_nat(&profile.info)) {
        Aim::Reflexive => v.push(observed),
        Aim::Preserved => {
            v.push(SocketAddr::new(ip, profile.local_port));
            v.push(observed);
        }
        Aim::Contiguous(d) => {
            let base = if profile.alloc_base != 0 { profile.alloc_base } else { observed.port() };
            v.extend(contiguity_window(base, d, CONTIGUITY_WINDOW).into_iter().map(|p| SocketAddr::new(ip, p)));
            v.push(observed);
        }
        Aim::Unpredictable => v.push(observed),
    }
    for c in &profile.candidates {
        if !v.contains(c) {
            v.push(*c);
        }
    }
    v.dedup();
    v
}

/// Whether the peer (seen by the rendezvous at `peer_observed`) and we
/// share a public address.
/// Loopback (nodes of one host, as in tests) is not a NAT.
pub fn shares_public_ip(me: &Profile, peer_observed: SocketAddr) -> bool {
    !peer_observed.ip().is_loopback() && me.info.public_addr.is_some_and(|a| a.ip() == peer_observed.ip())
}

/// The strategy for initiator `a` and responder `b`.
///
/// Two nodes seen at the same public address are behind one NAT: what the
/// table assumes (each reaches the other through the other's NAT) holds
/// only if that NAT hairpins, which most home routers and every plain
/// masquerade do not, while on a shared LAN they reach each other directly.
/// So they punch, each towards the other's public endpoint and host
/// candidates at once, whatever their NAT types (both sides see the same
/// two addresses, so both decide alike); a miss falls back to the relay.
///
/// Families come next (see [`family::with_families`]): none in common
/// relays, IPv6 on both sides punches.
pub fn decide(a: &Profile, b: &Profile, flags: u8, shared_public_ip: bool) -> Strategy {
    if flags & signal::FLAG_RELAY_ONLY != 0 {
        return Strategy::Relay;
    }
    if family::families(a).both(family::families(b)).none() {
        return Strategy::Relay;
    }
    if shared_public_ip {
        return Strategy::SimplePunch;
    }
    let s = strategy::choose(&peer_nat(&a.info), &peer_nat(&b.info));
    let no_direct = flags & (signal::FLAG_NO_DIRECT | signal::FLAG_UPGRADE) != 0;
    if no_direct && matches!(s, Strategy::Direct { .. } | Strategy::ConnectionReversal { .. }) {
        return Strategy::SimplePunch;
    }
    family::with_families(s, a, b)
}

/// Whether a failed `strategy`, `elapsed` into a connect of `timeout`, gets
/// a second session: a prediction can miss by chance (a preserved port
/// already taken on the NAT, a contiguous port taken by another host
/// between observation and punch) and a new session predicts afresh, from a
/// new fresh socket. Only when a second try as long as the first and a
/// relay after it still fit in the timeout; birthday probing already
/// retries within its schedule, a plain direct dial has nothing to predict.
pub fn may_retry(strategy: Strategy, elapsed: Duration, timeout: Duration) -> bool {
    let predicted = matches!(strategy, Strategy::PredictPreservation | Strategy::PredictContiguity | Strategy::ConnectionReversal { .. });
    predicted && elapsed * 2 + RELAY_BUDGET <= timeout
}

/// Time kept for a relayed connection after a failed second session.
pub const RELAY_BUDGET: Duration = Duration::from_secs(1);

/// Strategies an upgrade can use: the punching ones on the node socket.
pub fn upgradable(s: Strategy) -> bool {
    matches!(s, Strategy::SimplePunch | Strategy::PredictPreservation | Strategy::PredictContiguity)
}

/// The initiator's `max_punch_attempts` as `Connect` carries it (0: the
/// responder's default).
pub fn wire_attempts(n: u32) -> u8 {
    n.clamp(1, u8::MAX as u32) as u8
}

/// Punch transmissions per path a responder makes for a `Connect` that
/// asks for `wire` (0: `default`): never more than [`MAX_PEER_ATTEMPTS`],
/// whatever the initiator asked (255 would be 255 requests per verified
/// path for one message).
pub fn peer_attempts(wire: u8, default: u32) -> u32 {
    match wire {
        0 => default,
        n => u32::from(n),
    }
    .clamp(1, MAX_PEER_ATTEMPTS)
}

/// See [`peer_attempts`]: the default is 10, a lossy path is covered by 30.
pub const MAX_PEER_ATTEMPTS: u32 = 30;

/// How long a plain dial (direct, connection reversal) may take before the
/// connect falls back to a relay: the handshake needs one round trip, and a
/// lost first Initial is resent after about three (see `connect_rtt`). It
/// was 4 s for a while, for dials on a loaded lab host that later proved to
/// be the lab's ARP table overflowing; at 2 s the BEAM lab (73 VMs on 2
/// cores) and 3040 matrix tries of direct and reversal pairs all connected
/// directly, and a failed dial now leaves room for a second session and a
/// relay within the default 10 s timeout.
pub fn dial_bound(pair_rtt: Duration) -> Duration {
    (pair_rtt * 20).max(Duration::from_secs(2))
}

/// Whether a side with `info` can be predicted only through a fresh socket
/// (HD/PD mapping with port preservation: see [`crate::birthday`]).
pub fn needs_fresh_socket(info: &PeerInfo) -> bool {
    strategy::aim(&peer_nat(info)) == Aim::Preserved
}

/// Whether `side` is addressed at its preserved port in `strategy`.
pub fn aimed_at_preserved_port(strategy: Strategy, side: Side) -> bool {
    match strategy {
        Strategy::PredictPreservation | Strategy::PredictContiguity => true,
        Strategy::ConnectionReversal { dialer } => dialer != side,
        Strategy::BirthdayProbing { hard } => hard != side,
        Strategy::Direct { .. } | Strategy::SimplePunch | Strategy::Relay => false,
    }
}

/// Where the answer of a PD-mapping listener we dial may come from, so that
/// our filter admits it: its contiguity window (PC) or its answer socket
/// (PP). `tg` are its targets, `to` the one we dial.
pub fn answer_ports(peer: &Profile, tg: &[SocketAddr], to: SocketAddr) -> Vec<SocketAddr> {
    match strategy::aim(&peer_nat(&peer.info)) {
        Aim::Contiguous(_) => tg.iter().skip(1).filter(|t| t.ip() == to.ip()).copied().collect(),
        Aim::Preserved if peer.answer_port != 0 => vec![SocketAddr::new(to.ip(), peer.answer_port)],
        _ => Vec::new(),
    }
}

/// The salt the punch machine puts on its seed for the easy side's probe
/// ports (`macula_nat_proto::punch`, `Punch::new`; checked by a test here).
pub const PROBE_PORTS_SALT: u64 = 0x6269_7274_6864_6179;

/// The hard side's ports a birthday easy side whose machine has `seed`
/// probes, in its order (the first [`BirthdaySchedule`]'s probes; the
/// plan does not depend on the round trip).
pub fn probe_ports(seed: u64) -> impl Iterator<Item = u16> {
    let n = BirthdaySchedule::standard(Duration::ZERO).map_or(0, |s| s.plan.probes as usize);
    BirthdayPorts::new(seed ^ PROBE_PORTS_SALT).take(n)
}

/// A profile for a host with a public address and no filtering.
pub fn public_profile() -> PeerInfo {
    profile_of(NatType { mapping: Mapping::Ei, allocation: Allocation::Pp, filtering: Filtering::Ei }, None, true)
}

/// A profile for a host behind a NAT of type `nat`.
pub fn profile_of(nat: NatType, port_delta: Option<i32>, no_nat: bool) -> PeerInfo {
    PeerInfo {
        mapping: nat.mapping,
        filtering: nat.filtering,
        allocation: nat.allocation,
        confidence: Confidence::High,
        public_addr: None,
        port_delta,
        no_nat,
        detected_at: 0,
        endpoints: Vec::new(),
        rendezvous: Vec::new(),
    }
}

/// The rule for a peer's candidates (what `keep_reachable_candidates`
/// applies): a candidate is kept when it is at the IP the rendezvous saw
/// the peer at (another port of the peer's own address), or, for an inside
/// (private, shared, link-local) one, when the peer shares our public
/// address (`ours`, as the rendezvous saw us): only then can it be on a LAN
/// we are on; a global IPv6 one is kept too ([`family::kept_claim`]: no
/// NAT, and the rendezvous may have seen the peer over IPv4). Any other
/// address is a mere claim (a hostile peer's would aim
/// our punches at a third party) and is dropped. Even a kept candidate is
/// punched with a budget until it answers (`punch::Verify`). `is_inside`
/// classifies an IP.
pub fn keep_reachable(candidates: &mut Vec<SocketAddr>, ours: Option<IpAddr>, peer_observed: SocketAddr, is_inside: impl Fn(IpAddr) -> bool) {
    let same_nat = ours == Some(peer_observed.ip());
    candidates.retain(|c| c.ip() == peer_observed.ip() || (same_nat && is_inside(c.ip())) || family::kept_claim(c));
}

pub mod family;

#[cfg(test)]
mod tests;
