//! Our profile for a session: the node's published NAT profile or the
//! configured one, the session's allocation basis, candidates, the fresh
//! socket a preserved port needs; and what we keep of a peer's candidates.

use super::inner::{control, Inner};
use crate::detect::alloc_probe::{Basis, Spent};
use crate::punch::birthday::SocketSet;
use crate::local_profile::ProfileState;
use crate::lock::{lock, read};
use macula_nat_proto::{signal, strategy};
use macula_nat_proto::connect::{keep_reachable, needs_fresh_socket, peer_nat};
use macula_nat_proto::nat::Mapping;
use macula_nat_proto::record::PeerInfo;
use macula_nat_proto::signal::{Profile, SessionId};
use macula_nat_proto::strategy::Aim;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// This node's NAT profile now: the one its detections published on the
/// node, else the signal's configured one.
pub(super) fn current_info(inner: &Inner) -> PeerInfo {
    let info = inner
        .node
        .local_profile()
        .get()
        .unwrap_or_else(|| read(&inner.cfg).profile.clone());
    // As the rendezvous sees the socket (a port-overloading router can
    // show it another port than the observers saw): the whole session
    // decides from this, so fresh sockets and targets agree with what the
    // peer is told.
    let local_port = inner.node.local_addr().ok().map(|a| a.port());
    // A port mapping makes us open at the mapped address (`crate::portmap`).
    crate::portmap::signalled(&inner.node, info.as_seen_by_rendezvous(*lock(&inner.observed), local_port))
}

/// Waits (at most `max`) for the node's first detection when one is under
/// way, so that a session started right after the node did signals the
/// detected profile rather than the configured guess.
pub(super) async fn settled_info(inner: &Inner, max: Duration) -> PeerInfo {
    let t0 = Instant::now();
    let pending = matches!(inner.node.local_profile().state(), ProfileState::Pending { .. });
    let info = inner.node.local_profile().settled(max).await;
    if pending {
        tracing::debug!("signal: waited {:?} for the first detection ({})", t0.elapsed(), if info.is_some() { "detected" } else { "none" });
    }
    current_info(inner)
}

/// When peers predict our ports by contiguity: what our NAT's latest
/// allocation is measured against (see [`crate::detect::alloc_probe`]).
pub(super) fn contiguity_basis(inner: &Inner, info: &PeerInfo) -> Option<Basis> {
    let Aim::Contiguous(delta) = strategy::aim(&peer_nat(info)) else { return None };
    let observed = (*lock(&inner.observed))?;
    Some(Basis { observed, delta })
}

/// For a session about to make mappings: our NAT's latest allocation when
/// peers predict our ports by contiguity (0 otherwise, or when it could
/// not be measured), and the hold that measures it again after the
/// session. See [`crate::detect::alloc_probe`].
pub(super) async fn session_base(inner: &Arc<Inner>, info: &PeerInfo) -> (u16, Option<Spent>) {
    let Some(basis) = contiguity_basis(inner, info) else { return (0, None) };
    let rtt = control(inner).map(|c| c.rtt()).unwrap_or(Duration::from_millis(100));
    let (base, spent) = inner.alloc.take(basis, rtt).await;
    (base, Some(spent))
}

/// What we tell a peer in a session: `info` is our NAT profile as the
/// session read it once ([`current_info`]); `fresh`: the session's fresh
/// socket, whose port peers aim at instead of the node socket's (see
/// [`fresh_socket`]); `alloc_base`: see [`session_base`]. Candidates,
/// reflexive address and relays are read now.
pub(super) fn our_profile(inner: &Inner, info: &PeerInfo, fresh: Option<&SocketSet>, alloc_base: u16) -> Profile {
    let mut candidates = read(&inner.cfg).candidates.clone();
    let local = inner.node.local_addr().ok();
    let info = crate::portmap::signalled(&inner.node, info.as_seen_by_rendezvous(*lock(&inner.observed), local.map(|l| l.port())));
    let local_port = fresh.and_then(|f| f.port(1)).or(local.map(|l| l.port())).unwrap_or(0);
    // Our own addresses at the port the punch runs on: a peer behind the
    // same NAT reaches us there (see `crate::socket::local_addrs`).
    // A dual-stack node's IPv6 addresses, at its IPv6 socket's port: no
    // NAT in front of them (see `macula_nat_proto::connect::family`).
    let six = inner.node.local_addr6().ok().flatten().filter(|_| local.is_some_and(|l| l.is_ipv4()));
    let hosts = local.map(|l| crate::socket::local_addrs::host_candidates(l, local_port)).unwrap_or_default();
    // Its IPv6 public address when detection found another (NPTv6, NAT66).
    let public6 = six.and_then(|_| inner.node.public6());
    for c in hosts.into_iter().chain(public6).chain(six.map(|s| crate::socket::local_addrs::host_candidates(s, s.port())).unwrap_or_default()) {
        if !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    candidates.truncate(signal::MAX_CANDIDATES);
    let answer_port = fresh.and_then(|f| f.port(ANSWER_SOCKET)).unwrap_or(0);
    Profile { info, local_port, answer_port, alloc_base, candidates, relays: inner.relays.reserved() }
}

/// Drops a peer's inside (private, shared, link-local) candidates unless
/// it shares our public address: only then can they be on a LAN we are
/// on, and a peer's mere claims never aim our punches into other
/// networks. Public candidates stay (a node bound to a public address).
pub(super) fn keep_reachable_candidates(inner: &Inner, peer: &mut Profile, peer_observed: SocketAddr) {
    let ours = lock(&inner.observed).map(|a| a.ip());
    keep_reachable(&mut peer.candidates, ours, peer_observed, crate::punch::primer::is_inside);
}

/// The fresh set's socket a PD-mapping listener answers a connection
/// reversal from (the split path, see `strategy`); socket 1 is the one
/// peers aim at.
pub(super) const ANSWER_SOCKET: usize = 2;

/// The session's fresh socket, when our profile needs one, plus the answer
/// socket when we may listen in a connection reversal (`may_listen`) with
/// PD mapping.
pub(super) fn fresh_socket(inner: &Inner, info: &PeerInfo, session: SessionId, may_listen: bool) -> Option<SocketSet> {
    let (preserved, pd) = (needs_fresh_socket(info), info.mapping == Mapping::Pd);
    if !preserved {
        return None;
    }
    let ip = inner.node.local_addr().ok()?.ip();
    let set = SocketSet::open(ip, if pd && may_listen { ANSWER_SOCKET } else { 1 }, session);
    (!set.is_empty()).then_some(set)
}
