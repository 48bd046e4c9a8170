//! Relayed connections: opening a relay path, looking after it (relay
//! lost, upgrade to a punched path) and the responder side of an upgrade.

use super::error::ConnectError;
use super::inner::{control, Inner};
use super::opts::ConnectOpts;
use super::primers::{prime, primer_lead};
use super::profile::{current_info, our_profile, session_base};
use super::punching::run_punch;
use super::session::{dial, Meeting, SessionGuard};
use crate::lock::lock;
use crate::{relay, runtime, Connection};
use crate::quic::Method;
use crate::relay::{RelayLink, RelayPath, VirtualAddr};
use macula_nat_proto::signal;
use macula_nat_proto::connect::{decide, shares_public_ip, upgradable, wire_attempts};
use macula_nat_proto::signal::{Msg, NodeId, Profile, SessionId};
use macula_nat_proto::strategy::{Side, Strategy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Connects to `target` through one of its relays, dialling its node key
/// over the relay session, and starts looking after the connection.
pub(super) async fn via_relay(inner: &Arc<Inner>, target: NodeId, session: SessionId, peer: &Profile, opts: &ConnectOpts) -> Result<Connection, ConnectError> {
    let virt = VirtualAddr::fresh().addr();
    let (link, path) = open_relay_path(inner, target, &peer.relays, virt, None).await?;
    let conn = match dial(inner, virt, target, session, None).await {
        Ok(c) => c,
        Err(e) => {
            if let Ok(q) = inner.node.quic() {
                q.clear_route(virt);
            }
            link.close_session(path.session);
            return Err(e);
        }
    };
    conn.set_method(Method::Relayed);
    runtime::spawn(look_after_relayed(Arc::downgrade(inner), conn.clone(), target, peer.relays.clone(), link, path, opts.clone()));
    Ok(conn)
}

/// A session to `target` at the first of `relays` (skipping `except`) that
/// takes it, routed at `virt`.
pub(super) async fn open_relay_path(
    inner: &Inner,
    target: NodeId,
    relays: &[(NodeId, SocketAddr)],
    virt: SocketAddr,
    except: Option<NodeId>,
) -> Result<(RelayLink, RelayPath), ConnectError> {
    let mut refused = None;
    let candidates: Vec<(NodeId, SocketAddr)> = relays.iter().filter(|(id, _)| Some(*id) != except).copied().collect();
    // A relay that died a moment ago may still be in the target's list (its
    // idle link is judged dead only after 7.5 s) or hold a link of ours
    // that looks alive: while others remain, each gets `QUICK_TRY`; those
    // that ran out of it get their full time afterwards, so a slow but
    // live relay is still used when nothing else answered. Seen in the
    // operators lab: a relayed connect waited 5 s on a just-killed relay.
    let mut slow = Vec::new();
    for (i, (id, addr)) in candidates.iter().enumerate() {
        let quick = (i + 1 < candidates.len()).then_some(QUICK_TRY);
        match try_relay(inner, target, virt, *id, *addr, quick).await {
            Ok(found) => return Ok(found),
            Err(Tried::Refused(r)) => refused = Some(r),
            Err(Tried::TooSlow) => slow.push((*id, *addr)),
            Err(Tried::Failed) => {}
        }
    }
    for (id, addr) in slow {
        match try_relay(inner, target, virt, id, addr, None).await {
            Ok(found) => return Ok(found),
            Err(Tried::Refused(r)) => refused = Some(r),
            Err(_) => {}
        }
    }
    Err(refused.map_or(ConnectError::NoRelay, ConnectError::RelayRefused))
}

/// How long a relay gets while others remain to be tried: a link and an
/// `Open` take a few round trips to a live one.
const QUICK_TRY: Duration = Duration::from_millis(1500);

enum Tried {
    Refused(macula_nat_proto::relay::msg::Refusal),
    /// It did not answer within the quick try.
    TooSlow,
    Failed,
}

/// A session to `target` at one relay; `quick`: the time it gets (its
/// link's and its `Open`'s full timeouts when `None`).
async fn try_relay(
    inner: &Inner,
    target: NodeId,
    virt: SocketAddr,
    id: NodeId,
    addr: SocketAddr,
    quick: Option<Duration>,
) -> Result<(RelayLink, RelayPath), Tried> {
    let started = tokio::time::Instant::now();
    let link = match quick {
        // Dropping a link being made is clean: the set keeps only made ones.
        Some(q) => match tokio::time::timeout(q, inner.relays.link_to(id, addr)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!("relay {addr}: no link within {q:?}; trying the next");
                return Err(Tried::TooSlow);
            }
        },
        None => inner.relays.link_to(id, addr).await,
    };
    let link = link.map_err(|e| {
        tracing::debug!("relay {addr}: unreachable: {e}");
        Tried::Failed
    })?;
    let opened = match quick {
        Some(q) => link.open_within(target, virt, q.saturating_sub(started.elapsed()).max(Duration::from_millis(100))).await,
        None => link.open(target, virt).await,
    };
    match opened {
        Ok(path) => Ok((link, path)),
        Err(relay::RelayError::Timeout) if quick.is_some() => {
            tracing::debug!("relay {addr}: no answer to open within the quick try; trying the next");
            Err(Tried::TooSlow)
        }
        Err(e) => {
            tracing::debug!("relay {addr}: open failed: {e}");
            match e {
                relay::RelayError::Refused(r) => Err(Tried::Refused(r)),
                _ => Err(Tried::Failed),
            }
        }
    }
}

/// Initiator side of a relayed connection, until it closes: moves it to
/// another relay when its relay dies, and to a punched path when one opens.
pub(super) async fn look_after_relayed(
    weak: std::sync::Weak<Inner>,
    conn: Connection,
    target: NodeId,
    relays: Vec<(NodeId, SocketAddr)>,
    mut link: RelayLink,
    mut path: RelayPath,
    opts: ConnectOpts,
) {
    let virt = path.virtual_addr;
    let cap = Duration::from_secs(30);
    let mut backoff = opts.upgrade_interval;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    let mut next_try = backoff.map_or_else(far, |d| tokio::time::Instant::now() + d);
    let punched = loop {
        tokio::select! {
            _ = conn.closed() => {
                link.close_session(path.session);
                if let Some(inner) = weak.upgrade() {
                    if let Ok(q) = inner.node.quic() { q.clear_route(virt); }
                }
                return;
            }
            _ = link.closed() => {
                let Some(inner) = weak.upgrade() else { return };
                let dead = path.relay;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                let mut moved = None;
                while moved.is_none() && tokio::time::Instant::now() < deadline && conn.close_reason().is_none() {
                    match open_relay_path(&inner, target, &relays, virt, Some(dead)).await {
                        Ok(lp) => moved = Some(lp),
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                match moved {
                    Some((l, p)) => {
                        tracing::debug!("relayed connection moved to relay {}", p.relay_addr);
                        link = l;
                        path = p;
                    }
                    None => {
                        tracing::debug!("relayed connection: no other relay; closing");
                        conn.close("relay lost");
                        return;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_try) => {
                let Some(inner) = weak.upgrade() else { return };
                match upgrade_once(&inner, target, &opts).await {
                    Ok(real) if !inner.node.relay_plane().has_alias(&real) => break (inner, real),
                    Ok(_) => tracing::debug!("upgrade: punched address already in use by another connection"),
                    Err(e) => tracing::debug!("upgrade attempt failed: {e}"),
                }
                backoff = backoff.map(|b| (b * 2).min(cap));
                next_try = backoff.map_or_else(far, |d| tokio::time::Instant::now() + d);
            }
        }
    };
    let (inner, real) = punched;
    inner.node.relay_plane().set_alias(real, Some(virt));
    if let Ok(q) = inner.node.quic() {
        q.route_to(virt, real);
    }
    conn.set_method(Method::Punched);
    tracing::debug!("relayed connection upgraded to the punched path {real}");
    drop(inner);
    // The peer may still send through the relay until its QUIC follows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    link.close_session(path.session);
    conn.closed().await;
    if let Some(inner) = weak.upgrade() {
        inner.node.relay_plane().set_alias(real, None);
        if let Ok(q) = inner.node.quic() {
            q.clear_route(virt);
        }
    }
}

/// One upgrade attempt: a punch session with `target` through the
/// rendezvous; the punched address, or why not.
pub(super) async fn upgrade_once(inner: &Arc<Inner>, target: NodeId, opts: &ConnectOpts) -> Result<SocketAddr, ConnectError> {
    let session = SessionId::random();
    let mut guard = SessionGuard::new(inner, session);
    let ctl = control(inner)?;
    let info = current_info(inner);
    let (base, _spent) = session_base(inner, &info).await;
    let me = our_profile(inner, &info, None, base);
    let flags = signal::FLAG_UPGRADE;
    let attempts = wire_attempts(opts.max_punch_attempts);
    ctl.send(Msg::Connect { to: target, session, flags, attempts, profile: me.clone() }.encode()).await?;
    let run = async {
        let (peer, observed) = guard.answer().await?;
        let strategy = decide(&me, &peer, flags, shares_public_ip(&me, observed));
        if !upgradable(strategy) {
            return Err(ConnectError::PunchFailed);
        }
        // Behind a plain router an upgrade races as the first punch did:
        // primed alike (the responder primes before its answer and starts
        // `primer_lead` after the go).
        prime(inner, Side::A, strategy, None, &peer, observed).await;
        let go = guard.go().await?;
        let ok = run_punch(inner, Side::A, Meeting::new(session, target, &peer, observed, go, opts.max_punch_attempts)).await?;
        Ok(ok)
    };
    tokio::time::timeout(opts.timeout, run).await.unwrap_or(Err(ConnectError::Timeout))
}

/// Responder side of an upgrade: punch, then watch our relayed connections
/// with `from` for the move to a real address.
pub(super) async fn respond_upgrade(
    inner: Arc<Inner>,
    mut guard: SessionGuard<'_>,
    from: NodeId,
    strategy: Strategy,
    peer: Profile,
    observed: SocketAddr,
    attempts: u32,
) {
    if !upgradable(strategy) {
        return;
    }
    // A go that never comes (the initiator rejected after its Connect, or
    // a rendezvous that lost the session) must not hold the session.
    let bound = crate::lock::read(&inner.cfg).responder_timeout;
    let Ok(Ok((wait, pair_rtt))) = tokio::time::timeout(bound, guard.go()).await else { return };
    let own_rtt = control(&inner).map(|c| c.rtt()).unwrap_or_default();
    let go = (wait + primer_lead(&inner, strategy, pair_rtt, own_rtt), pair_rtt);
    if let Err(e) = run_punch(&inner, Side::B, Meeting::new(guard.session, from, &peer, observed, go, attempts)).await {
        tracing::debug!("upgrade (responder) punch: {e}");
    }
    let conns: Vec<Connection> = {
        let mut v = lock(&inner.relayed_in);
        v.retain(|c| c.close_reason().is_none());
        v.iter().filter(|c| c.peer_id() == from).cloned().collect()
    };
    for c in conns {
        runtime::spawn(async move {
            // The initiator moves first; our QUIC follows at its next packet.
            for _ in 0..100 {
                if !relay::is_virtual(&c.remote_address()) {
                    c.set_method(Method::Punched);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}
