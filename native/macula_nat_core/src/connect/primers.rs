//! TTL-limited primers before a punch (see `crate::punch::primer`): which ports,
//! from which sockets, and how long a primed responder waits.

use super::inner::Inner;
use crate::punch::birthday::SocketSet;
use macula_nat_proto::connect::{probe_ports, targets, upgradable};
use macula_nat_proto::signal::Profile;
use macula_nat_proto::strategy::{Side, Strategy};
use std::net::SocketAddr;
use std::time::Duration;

/// Sends TTL-limited primers (see [`crate::punch::primer`]) to the peer's punch
/// targets from the socket the punch will use (the session's fresh one, or
/// the node's), when the strategy punches and a primer TTL is known. Each
/// side does so once it knows the other's addresses and before the go, so
/// our NAT(s) map and permit them before the peer's first punch, which
/// leaves after the go, can arrive. `side` is ours (A = initiator).
///
/// Birthday probing: the easy side primes every port it will probe (see
/// [`prime_probes`]); the hard side primes from the sockets it opens after
/// the go ([`prime_hard`]), nothing here.
pub(super) async fn prime(inner: &Inner, side: Side, strategy: Strategy, fresh: Option<&SocketSet>, peer: &Profile, observed: SocketAddr) -> Primed {
    let Some(ttl) = inner.node.primer_ttl() else { return Primed::default() };
    match strategy {
        Strategy::BirthdayProbing { hard } if hard != side => prime_probes(inner, ttl, fresh, observed).await,
        s if upgradable(s) => {
            let socket = fresh.and_then(|f| f.indices().next());
            let node_socket = inner.node.socket().ok();
            // A peer's private candidates are reached on a shared LAN, not
            // through our NAT: no primer (it would only draw ICMP errors).
            // IPv6 has no NAT whose port a primer must claim first, and the
            // TTL was learnt over IPv4.
            for a in targets(peer, observed).into_iter().filter(|a| a.is_ipv4() && !crate::punch::primer::is_inside(a.ip())) {
                match (socket, fresh, &node_socket) {
                    (Some(i), Some(f), _) => f.prime(i, a, ttl),
                    (None, _, Some(s)) => crate::punch::primer::send(&**s, a, ttl),
                    _ => {}
                }
            }
            Primed::default()
        }
        _ => Primed::default(),
    }
}

/// What [`prime`] decided that the punch must follow.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Primed {
    /// The easy side of a birthday punch primed the ports this seed makes
    /// its machine probe ([`probe_ports`]): the machine's seed.
    pub(super) probe_seed: Option<u64>,
}

// Birthday probing behind plain routers: why both sides prime, and what.
//
// Linux conntrack, which a plain router's masquerade rides on: a UDP packet
// R:r -> NAT:P that matches no entry's reply tuple becomes a new entry of
// its own (R:r -> P, the router's own traffic). Nothing listens, so the
// router refuses it (an ICMP error), but the entry is confirmed and stays
// for the UDP timeout (30 s unreplied). A later outbound packet whose
// masquerade would map to P towards R:r needs the reply tuple R:r -> P,
// which is taken: it gets another public port, and the peer's
// port-dependent filter drops it. An outbound entry that exists first makes
// the peer's packet match its reply tuple instead (forwarded, or dropped
// by a filter: no entry either way). So for every tuple (our public port,
// the peer's endpoint) the punch needs, our outbound entry must exist
// before the peer's first packet on it reaches our NAT. The tuples of a
// birthday punch, hard side H (socket i mapped at public port h_i, a random
// one per socket), easy side E (one endpoint e):
//
// * H's side, (h_i, e) for every socket: E's packets on it are its probes
//   of port h_i (answers and triggered checks come after H's request got
//   through). Without a primer the mapping exists once socket i's first
//   punch packet left (paced at rate_pps, the last one `sockets / rate`
//   after the start); probes start later by schedule, but a probe that
//   overtakes costs that port. H primes from every socket, the node's
//   included, as soon as it opened them ([`prime_hard`], after the go and
//   before its start): every mapping then exists seconds before E's first
//   probe (`start_after` >= sockets / rate + RTT + 100 ms), whichever side
//   initiated; no timing is left to get right.
// * E's side, (e, H:q) for every port q E probes: H's packets, from its
//   start on, reach E's NAT from every h_i, and each h_i that E will probe
//   would be spoilt before E's probe leaves (E's probes come last by
//   design, so without primers every hit was spoilt: 0 of 9 in the lab).
//   E cannot know the h_i, but it knows the ports it will probe (a seeded
//   permutation: the seed is chosen here and handed to its machine) and
//   primes them all, in probe order, before the punch starts
//   ([`prime_probes`]): the initiator on the answer (before the go), the
//   responder before sending its answer. A primed responder starts
//   [`primer_lead`] after the go (the initiator's one-way time, plus
//   margin), so an initiator's primers have left before the responder's
//   first packet can arrive. A few hundred primers take milliseconds; a
//   hard packet that still overtook them spoils one tuple of hundreds (each
//   socket is a hit with probability ~1%), not the pair.
//
// H's packets on a primed tuple now pass E's NAT (the entry is E's own),
// so a hit can complete while H is still opening its mappings, before E
// probes. Primers are TTL-limited (the hop count learnt at join) and die at
// the router past our own NAT: they never reach the peer's NAT, where they
// would do the harm they prevent. Without a learnt TTL nothing is primed
// (ordinary behaviour); on an ordinary router (input dropped) the primers
// only create the entries the punch would create a little later.

/// Birthday probing, easy side: primers to every port of the hard side's
/// IP we will probe, from the socket we probe from (see the comment
/// above); the seed the machine must use.
pub(super) async fn prime_probes(inner: &Inner, ttl: u8, fresh: Option<&SocketSet>, observed: SocketAddr) -> Primed {
    let ip = observed.ip();
    if crate::punch::primer::is_inside(ip) {
        return Primed::default();
    }
    let seed: u64 = rand::random();
    let dsts = probe_ports(seed).map(|p| SocketAddr::new(ip, p));
    let sent = match fresh.and_then(|f| f.indices().next()).and_then(|i| fresh?.io(i)) {
        Some(io) => crate::punch::birthday::prime_each(&*io, dsts, ttl).await,
        None => match inner.node.socket() {
            Ok(s) => crate::punch::birthday::prime_each(&*s, dsts, ttl).await,
            Err(_) => return Primed::default(),
        },
    };
    tracing::debug!("birthday: primed {sent} probe ports of {ip} (ttl {ttl})");
    Primed { probe_seed: Some(seed) }
}

/// Birthday probing, hard side: a primer from the node socket and from every
/// extra socket to the easy side's endpoint (see the comment above).
pub(super) async fn prime_hard(inner: &Inner, set: &SocketSet, easy: SocketAddr) {
    let Some(ttl) = inner.node.primer_ttl().filter(|_| !crate::punch::primer::is_inside(easy.ip())) else { return };
    if let Ok(s) = inner.node.socket() {
        crate::punch::primer::send(&*s, easy, ttl);
    }
    let sent = set.prime_all(easy, ttl).await;
    tracing::debug!("birthday: primed {} sockets towards {easy} (ttl {ttl})", sent + 1);
}

/// How much later than the go a primed responder starts punching. The
/// initiator primes when the answer reaches it, together with the go, so
/// its primer may reach its own NAT only a little before the start, or
/// after it when the path from its host to its NAT is slow (a slow home
/// link); a responder punch arriving first would make that NAT confirm an
/// entry that moves the initiator's port. Our own NAT is primed already,
/// and the initiator's first punch gets through it whenever it arrives, so
/// waiting costs nothing when that punch wins, and otherwise at most this
/// lead: the initiator's one-way time to the rendezvous (its part of the
/// pair's round trip, which bounds its inside delay) and
/// [`PRIMER_SCHEDULING`].
pub(super) fn primer_lead(inner: &Inner, strategy: Strategy, pair_rtt: Duration, own_rtt: Duration) -> Duration {
    if inner.node.primer_ttl().is_none() {
        return Duration::ZERO;
    }
    let lead = pair_rtt.saturating_sub(own_rtt) / 2 + PRIMER_SCHEDULING;
    match strategy {
        // An easy initiator sends a few hundred primers (milliseconds on a
        // loaded host); the birthday schedule takes seconds, so a little
        // more lead costs nothing.
        Strategy::BirthdayProbing { .. } => lead + PRIMER_BIRTHDAY_SENDING,
        s if upgradable(s) => lead,
        _ => Duration::ZERO,
    }
}

/// Extra lead of a primed birthday responder (see [`primer_lead`]).
pub(super) const PRIMER_BIRTHDAY_SENDING: Duration = Duration::from_millis(20);

/// What the initiator's runtime may take between the answer's arrival and
/// its primer leaving, on a loaded host (with 2 ms, one of 100 lab tries
/// failed while both cores were busy; with 5 ms, 400 of 400 punched).
pub(super) const PRIMER_SCHEDULING: Duration = Duration::from_millis(5);
