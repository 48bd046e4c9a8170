//! Acting on the go: one function per strategy arm.

use super::error::ConnectError;
use super::inner::Inner;
use super::primers::{prime_hard, Primed};
use super::profile::ANSWER_SOCKET;
use super::punching::{dial_bounded, listen_bounded, plain_dial_outcome, punch_and_dial, punch_targets, route_punched, run_punch_from};
use super::session::{dial, Meeting};
use crate::punch::driver as punch_driver;
use crate::Connection;
use crate::punch::birthday::SocketSet;
use crate::quic::Method;
use macula_nat_proto::strategy;
use macula_nat_proto::connect::{answer_ports, dial_bound, peer_nat, targets};
use macula_nat_proto::punch::{BirthdaySchedule, PunchConfig, Role, Verify};
use macula_nat_proto::strategy::{Dialer, Side, Strategy};
use std::sync::Arc;
use std::time::Duration;

/// Acts on the go: `side` is our side in `strategy` (A = initiator); one
/// function per arm below.
pub(super) async fn act(inner: &Arc<Inner>, side: Side, strategy: Strategy, m: Meeting<'_>, fresh: Option<SocketSet>, primed: Primed) -> Result<(Connection, Method), ConnectError> {
    // Register for the session connection before anything can arrive.
    let incoming = inner.dispatch.expect_session(m.session);
    match strategy {
        Strategy::Direct { dialer } => direct(inner, side, dialer, m, incoming).await,
        Strategy::ConnectionReversal { dialer } => {
            tokio::time::sleep(m.wait).await;
            if dialer == side {
                reversal_dialer(inner, side, m, incoming).await
            } else {
                reversal_listener(inner, side, m, incoming, fresh).await
            }
        }
        Strategy::SimplePunch | Strategy::PredictPreservation | Strategy::PredictContiguity => punch(inner, side, m, incoming, fresh).await,
        Strategy::BirthdayProbing { hard } => birthday(inner, side, hard, m, incoming, fresh, primed).await,
        // Handled before the go by the callers.
        Strategy::Relay => Err(ConnectError::NoRelay),
    }
}

/// The session connection the dispatcher hands over when the peer dials.
type Incoming = tokio::sync::oneshot::Receiver<Connection>;

/// `Direct`: the dialer (A for `Either`) dials the other's observed
/// address; the other listens.
async fn direct(inner: &Arc<Inner>, side: Side, dialer: Dialer, m: Meeting<'_>, incoming: Incoming) -> Result<(Connection, Method), ConnectError> {
    let Meeting { session, peer_id, peer, observed, pair_rtt, .. } = m;
    // An open peer's own public address when it names another port at the
    // observed IP: a port mapping (`crate::portmap`) whose external port
    // is not the one its socket's traffic leaves from.
    let open_at = peer.info.public_addr.filter(|a| a.ip() == observed.ip() && peer.info.filtering == macula_nat_proto::nat::Filtering::Ei);
    let observed = open_at.unwrap_or(observed);
    let us = match dialer {
        Dialer::Either => side == Side::A,
        Dialer::A => side == Side::A,
        Dialer::B => side == Side::B,
    };
    if us {
        let dialled = dial_bounded(inner, observed, peer_id, session, pair_rtt).await;
        plain_dial_outcome(side, dialled, incoming).await
    } else {
        Ok((listen_bounded(side, incoming, pair_rtt).await?, Method::Direct))
    }
}

/// `ConnectionReversal`, the dialer: dials the listener's aimed address
/// once the listener's opening packets left.
async fn reversal_dialer(inner: &Arc<Inner>, side: Side, m: Meeting<'_>, incoming: Incoming) -> Result<(Connection, Method), ConnectError> {
    let Meeting { session, peer_id, peer, observed, pair_rtt, .. } = m;
    // Let the listener's opening packets leave first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let tg = targets(peer, observed);
    let to = tg[0];
    // A listener with PD mapping answers from a new mapping: its
    // next port when contiguous, the answer socket's preserved
    // port when it has one, any port otherwise (our filter
    // admits its IP). So does a random one (we dial its
    // rendezvous mapping). Our filter must admit it: we send
    // there first from the socket that dials (twice: a lost
    // opening packet would cost the pair its direct path). Its
    // answer becomes an alias of the dialled address.
    let follow = strategy::answers_from_new_port(&peer_nat(&peer.info)) && inner.node.relay_plane().expect_follow(to);
    if follow {
        let open = macula_nat_proto::stun::Message::binding_request(rand::random()).encode();
        let ports = answer_ports(peer, &tg, to);
        for t in ports.iter().chain(&ports) {
            let _ = inner.node.send_to(&open, *t).await;
        }
    }
    let dialled = dial_bounded(inner, to, peer_id, session, pair_rtt).await;
    if follow {
        let plane = inner.node.relay_plane().clone();
        match &dialled {
            Ok(c) => crate::punch::birthday::after_close(c, move || plane.end_follow(to)),
            Err(_) => plane.end_follow(to),
        }
    }
    plain_dial_outcome(side, dialled, incoming).await
}

/// `ConnectionReversal`, the listener: opens its filter towards the dialer
/// (from its fresh socket when its preserved port is the one aimed at) and
/// waits for the dial.
async fn reversal_listener(inner: &Arc<Inner>, side: Side, m: Meeting<'_>, incoming: Incoming, fresh: Option<SocketSet>) -> Result<(Connection, Method), ConnectError> {
    let Meeting { observed, pair_rtt, .. } = m;
    let open = macula_nat_proto::stun::Message::binding_request(rand::random()).encode();
    let Some(mut fresh) = fresh else {
        for _ in 0..3 {
            let _ = inner.node.send_to(&open, observed).await;
        }
        return Ok((listen_bounded(side, incoming, pair_rtt).await?, Method::Direct));
    };
    // Our preserved port is the fresh socket's: open from there,
    // and let it carry QUIC to whichever port the dialer's
    // connection comes from; with PD mapping answer from the
    // answer socket (its first packet: the answer keeps its
    // advertised port).
    for _ in 0..3 {
        let _ = fresh.send(1, &open, observed).await;
    }
    let answer = fresh.take(ANSWER_SOCKET);
    let path = fresh.keep_only(Some(1)).ok_or(ConnectError::Closed)?;
    let quic = inner.node.quic()?;
    let route = path.route_first(&quic, answer);
    tokio::pin!(route, incoming);
    let wait = async {
        tokio::select! {
            guard = &mut route => {
                let conn = (&mut incoming).await.map_err(|_| ConnectError::Closed)?;
                guard.hold_while(&conn);
                Ok((conn, Method::Direct))
            }
            // Not through the path: the initiator's relayed
            // connection after its dial failed.
            c = &mut incoming => Ok((c.map_err(|_| ConnectError::Closed)?, Method::Relayed)),
        }
    };
    match side {
        Side::A => tokio::time::timeout(dial_bound(pair_rtt) + pair_rtt, wait).await.unwrap_or(Err(ConnectError::PunchFailed)),
        Side::B => wait.await,
    }
}

/// `SimplePunch`, `PredictPreservation`, `PredictContiguity`: both punch;
/// the initiator dials the punched address, the responder takes the
/// connection that arrives.
async fn punch(inner: &Arc<Inner>, side: Side, m: Meeting<'_>, incoming: Incoming, fresh: Option<SocketSet>) -> Result<(Connection, Method), ConnectError> {
    let Meeting { peer, observed, .. } = m;
    let fresh = fresh.unwrap_or_else(SocketSet::empty);
    let (conn, guard) = match side {
        Side::A => {
            drop(incoming);
            punch_and_dial(inner, m, fresh).await?
        }
        Side::B => {
            // The initiator decides: its dial may come before our
            // machine saw a nomination (it dials early), or even if
            // it never sees one (bounded by the responder timeout).
            let quic = inner.node.quic()?;
            let first = punch_targets(inner, peer, observed)[0];
            // From a fresh socket (IPv4): take the initiator's early dial
            // in from where we expect it, before our punch decides.
            let mut early_path = fresh.share(1).filter(|_| first.is_ipv4()).map(|p| p.route(&quic, first));
            let punch = run_punch_from(inner, side, m, fresh);
            tokio::pin!(punch, incoming);
            tokio::select! {
                c = &mut incoming => (c.map_err(|_| ConnectError::Closed)?, early_path.take()),
                r = &mut punch => {
                    let guard = match r {
                        Ok(p) if p.success.remote_addr != first && p.path.is_some() => {
                            drop(early_path.take());
                            route_punched(inner, p)?.1
                        }
                        Ok(_) => early_path.take(),
                        Err(e) => {
                            tracing::debug!("signal: responder punch: {e}");
                            early_path.take()
                        }
                    };
                    ((&mut incoming).await.map_err(|_| ConnectError::Closed)?, guard)
                }
            }
        }
    };
    if let Some(g) = guard {
        g.hold_while(&conn);
    }
    Ok((conn, Method::Punched))
}

/// Birthday probing (see [`crate::punch::birthday`] and
/// [`macula_nat_proto::punch::BirthdaySchedule`]): the hard side punches from
/// the node socket plus the schedule's extra sockets towards the easy side's
/// endpoint; the easy side probes random ports of the hard side's IP from
/// the node socket. As for the other punches, the initiator dials the
/// punched address. `max_punch_attempts` does not apply: the schedule fixes
/// the attempts (one per probe) so that both sides agree without signalling.
/// The easy side probes from the node socket, which is its one known
/// endpoint when it has EI mapping; an HD-mapping, port-preserving easy side
/// (HD-PP-PD) would need a fresh socket whose port it advertises, so against
/// a PD-mapping hard side it fails (as PredictPreservation does for such
/// sides).
pub(super) async fn birthday(
    inner: &Arc<Inner>,
    side: Side,
    hard: Side,
    m: Meeting<'_>,
    incoming: Incoming,
    fresh: Option<SocketSet>,
    primed: Primed,
) -> Result<(Connection, Method), ConnectError> {
    let Meeting { session, peer_id, peer, observed, wait, pair_rtt, .. } = m;
    let sched = BirthdaySchedule::standard(pair_rtt).ok_or(ConnectError::PunchFailed)?;
    let reg = punch_driver::register(&inner.node, session);
    let role = if side == Side::A { Role::Initiator } else { Role::Responder };
    let mut cfg = PunchConfig::new(role, inner.node.node_id(), peer_id, session, Vec::new(), pair_rtt);
    // A primed easy side probes the ports it primed: their seed.
    cfg.seed = primed.probe_seed.unwrap_or_else(rand::random);
    cfg.txids = crate::txid::CSPRNG;
    // Probes are one request per port of the peer's observed IP anyway;
    // the hard side's sockets aim at the easy side's endpoint, which only
    // the rendezvous' observation vouches for.
    cfg.verify = Some(Verify::known(vec![observed]));
    let extra = if side == hard {
        // The easy side's one endpoint: its reflexive address (EI mapping) or
        // preserved port, first in `targets`.
        let easy = targets(peer, observed).first().copied().unwrap_or(observed);
        let ip = inner.node.local_addr().map_err(|_| ConnectError::Closed)?.ip();
        // The node socket is one of the schedule's sockets. Fewer than a
        // quarter of them would make a hit unlikely: then the fd budget
        // refuses and the connect falls back (relay) at once.
        let want = sched.sockets().saturating_sub(1);
        let set = SocketSet::open_at_least(ip, want, want / 4, session);
        if set.is_empty() && want > 0 {
            tracing::debug!("signal: birthday hard side: fd budget exhausted");
            return Err(ConnectError::PunchFailed);
        }
        prime_hard(inner, &set, easy).await;
        sched.configure_hard(&mut cfg, std::iter::once(0).chain(set.indices()), easy);
        set
    } else {
        // An easy side with a preserved port probes from its fresh socket.
        let set = fresh.unwrap_or_else(SocketSet::empty);
        sched.configure_easy(&mut cfg, set.indices().next().unwrap_or(0), observed.ip());
        set
    };
    tokio::time::sleep(wait).await;
    let punched = punch_driver::run_with(inner.node.clone(), reg, cfg, extra).await;
    // A path on an extra socket carries the QUIC connection from before the
    // first packet of the handshake until the connection ends.
    let (conn, guard) = match side {
        Side::A => {
            drop(incoming);
            let (remote, guard) = route_punched(inner, punched.map_err(|_| ConnectError::PunchFailed)?)?;
            (dial(inner, remote, peer_id, session, Some(pair_rtt)).await?, guard)
        }
        Side::B => {
            // As in the other punches, the initiator decides.
            let guard = match punched {
                Ok(p) => route_punched(inner, p)?.1,
                Err(e) => {
                    tracing::debug!("signal: responder birthday punch: {e}");
                    None
                }
            };
            (incoming.await.map_err(|_| ConnectError::Closed)?, guard)
        }
    };
    if let Some(g) = guard {
        g.hold_while(&conn);
    }
    Ok((conn, Method::Punched))
}
