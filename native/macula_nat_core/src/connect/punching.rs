//! Punching and dialling: the punch on the node socket (and extra
//! sockets), bounded dials and listens, the punched path made QUIC's.

use super::error::ConnectError;
use super::inner::Inner;
use super::session::{announce, dial, Meeting};
use crate::punch::driver as punch_driver;
use crate::Connection;
use crate::punch::birthday::{PathGuard, SocketSet};
use crate::punch::driver::Punched;
use crate::quic::Method;
use macula_nat_proto::connect::family::{happy_eyeballs_delay, happy_order};
use macula_nat_proto::connect::{dial_bound, targets};
use macula_nat_proto::punch::{PunchConfig, Role, Verify};
use macula_nat_proto::signal::{NodeId, SessionId};
use macula_nat_proto::strategy::Side;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Initiator of a punch: punches, and dials the most likely target at the
/// same moment instead of after the punch. When that prediction holds, the
/// peer's filter is open by the time the QUIC Initial arrives (the peer
/// started punching towards us at the go), so the connection is up one
/// round trip after the go instead of two. When the punch confirms the
/// same target first (the early Initial was dropped), a fresh dial races
/// the early one; when it confirms another target, that one is dialled.
/// A punch that fails ends the connect (a relay may take over) even if the
/// early dial is still waiting. From a fresh socket (`fresh` holds one),
/// the most likely target is routed through it from the start, so the
/// early dial leaves from there; the returned guard keeps the path socket
/// for the connection.
pub(super) async fn punch_and_dial(inner: &Arc<Inner>, m: Meeting<'_>, fresh: SocketSet) -> Result<(Connection, Option<PathGuard>), ConnectError> {
    let Meeting { session, peer_id, peer, observed, pair_rtt, .. } = m;
    let quic = inner.node.quic()?;
    let first = punch_targets(inner, peer, observed)[0];
    let rtt = Some(pair_rtt);
    // The fresh socket is IPv4: an IPv6 first target leaves from the node's.
    let mut early_path = fresh.share(1).filter(|_| first.is_ipv4()).map(|p| p.route(&quic, first));
    let punch = run_punch_from(inner, Side::A, m, fresh);
    let early = async {
        tokio::time::sleep(m.wait + EARLY_DIAL_LAG).await;
        quic.connect_rtt(first, peer_id, rtt).await
    };
    tokio::pin!(punch, early);
    let mut early_live = true;
    let (conn, guard) = loop {
        tokio::select! {
            r = &mut early, if early_live => match r {
                Ok(c) => break (c, early_path.take()),
                Err(e) => {
                    tracing::debug!("connect: early dial to {first}: {e}");
                    early_live = false;
                }
            },
            r = &mut punch => {
                let p = r?;
                let addr = p.success.remote_addr;
                if addr == first && early_live {
                    let again = quic.connect_rtt(addr, peer_id, rtt);
                    tokio::pin!(again);
                    let c = tokio::select! {
                        r = &mut early => match r { Ok(c) => c, Err(_) => again.await? },
                        r = &mut again => match r { Ok(c) => c, Err(_) => early.await? },
                    };
                    break (c, early_path.take());
                }
                // Another target, or the early dial failed: the punched path
                // (the early route goes first: one socket, one route).
                drop(early_path.take());
                let (addr, guard) = route_punched(inner, p)?;
                break (quic.connect_rtt(addr, peer_id, rtt).await?, guard);
            }
        }
    };
    Ok((announce(conn, session).await?, guard))
}

/// A dial bounded by [`dial_bound`]; a dial that times out is a failed
/// punch, so that `allow_relay` can take over.
pub(super) async fn dial_bounded(inner: &Inner, addr: SocketAddr, peer: NodeId, session: SessionId, pair_rtt: Duration) -> Result<Connection, ConnectError> {
    // A dual-stack peer the rendezvous saw over IPv6, dialled by an
    // IPv4-only node: no path of ours leads there; a relay may.
    if !inner.node.families().has(&addr) {
        return Err(ConnectError::PunchFailed);
    }
    match tokio::time::timeout(dial_bound(pair_rtt), dial(inner, addr, peer, session, Some(pair_rtt))).await {
        Ok(Err(ConnectError::Timeout)) | Err(_) => Err(ConnectError::PunchFailed),
        Ok(r) => r,
    }
}

/// The plain dialler's result. An initiator whose dial failed returns the
/// error (it may relay); a responder whose dial failed still waits for the
/// session's connection, which the initiator may then open through a relay.
pub(super) async fn plain_dial_outcome(
    side: Side,
    dialled: Result<Connection, ConnectError>,
    incoming: tokio::sync::oneshot::Receiver<Connection>,
) -> Result<(Connection, Method), ConnectError> {
    match (dialled, side) {
        (Ok(c), _) => Ok((c, Method::Direct)),
        (Err(e), Side::A) => Err(e),
        (Err(e), Side::B) => {
            tracing::debug!("signal: responder dial failed ({e}); waiting for a relayed connection");
            Ok((incoming.await.map_err(|_| ConnectError::Closed)?, Method::Relayed))
        }
    }
}

/// The plain listener's wait for the other side's dial. The initiator
/// gives up after [`dial_bound`] (and a little, for the dial to arrive) so
/// that it can relay; a responder waits as long as the session lives.
pub(super) async fn listen_bounded(side: Side, incoming: tokio::sync::oneshot::Receiver<Connection>, pair_rtt: Duration) -> Result<Connection, ConnectError> {
    match side {
        Side::A => match tokio::time::timeout(dial_bound(pair_rtt) + pair_rtt, incoming).await {
            Ok(r) => r.map_err(|_| ConnectError::Closed),
            Err(_) => Err(ConnectError::PunchFailed),
        },
        Side::B => incoming.await.map_err(|_| ConnectError::Closed),
    }
}

/// The early dial leaves just after the punch's first packets, which open
/// our own filter towards the peer first.
pub(super) const EARLY_DIAL_LAG: Duration = Duration::from_millis(2);

/// Runs the punch machine on the node socket after the go's wait: the
/// punched remote address.
pub(super) async fn run_punch(inner: &Arc<Inner>, side: Side, m: Meeting<'_>) -> Result<SocketAddr, ConnectError> {
    let p = run_punch_from(inner, side, m, SocketSet::empty()).await?;
    Ok(p.success.remote_addr)
}

/// Like [`run_punch`], from the session's fresh socket when `fresh` holds
/// one (then the punched path is that socket, to carry QUIC).
pub(super) async fn run_punch_from(inner: &Arc<Inner>, side: Side, m: Meeting<'_>, fresh: SocketSet) -> Result<Punched, ConnectError> {
    let Meeting { session, peer_id, peer, observed, wait, pair_rtt, max_attempts } = m;
    let reg = punch_driver::register(&inner.node, session);
    tokio::time::sleep(wait).await;
    let role = if side == Side::A { Role::Initiator } else { Role::Responder };
    let socket = fresh.indices().next().unwrap_or(0);
    // The fresh socket is IPv4; socket 0 (the node) sends on the socket of
    // the target's family.
    let tgts = punch_targets(inner, peer, observed).into_iter().map(|a| (if a.is_ipv4() { socket } else { 0 }, a)).collect();
    let mut cfg = PunchConfig::new(role, inner.node.node_id(), peer_id, session, tgts, pair_rtt);
    cfg.ipv4_lag = happy_eyeballs_delay(pair_rtt);
    cfg.max_attempts = max_attempts.max(1);
    cfg.seed = rand::random();
    cfg.txids = crate::txid::CSPRNG;
    // The rendezvous saw the peer there; whatever else it named gets one
    // request until it answers (`macula_nat_proto::punch::Verify`).
    cfg.verify = Some(Verify::known(vec![observed]));
    punch_driver::run_with(inner.node.clone(), reg, cfg, fresh).await.map_err(|_| ConnectError::PunchFailed)
}

/// A punch's targets (see `macula_nat_proto::connect::family`): of the
/// families this node has, IPv6 first; never empty (the observed address
/// stands in).
pub(super) fn punch_targets(inner: &Inner, peer: &macula_nat_proto::signal::Profile, observed: SocketAddr) -> Vec<SocketAddr> {
    let t = happy_order(targets(peer, observed), inner.node.families());
    if t.is_empty() {
        vec![observed]
    } else {
        t
    }
}

/// The punch's path socket, if it won on one, made the QUIC path to the
/// punched address.
pub(super) fn route_punched(inner: &Inner, p: Punched) -> Result<(SocketAddr, Option<PathGuard>), ConnectError> {
    let remote = p.success.remote_addr;
    let quic = inner.node.quic()?;
    Ok((remote, p.path.map(|path| path.route(&quic, remote))))
}
