//! The responder (side B): answers an `Incoming` and acts on the go.

use crate::lock::{lock, read};
use super::error::ConnectError;
use super::inner::{control, Inner};
use super::opts::ConnectOpts;
use super::primers::{prime, primer_lead, Primed};
use super::profile::{fresh_socket, our_profile, session_base, settled_info};
use super::relayed::respond_upgrade;
use super::session::{deliver_late, Meeting, SessionGuard};
use super::strategies::act;
use crate::{relay, runtime, Connection};
use crate::quic::Method;
use macula_nat_proto::signal;
use macula_nat_proto::connect::{aimed_at_preserved_port, decide, peer_attempts, shares_public_ip, upgradable};
use macula_nat_proto::signal::{Msg, NodeId, Profile, SessionId};
use macula_nat_proto::strategy::{Dialer, Side, Strategy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The punch transmissions per path a responder uses: the initiator's,
/// within `peer_attempts`' cap.
pub(super) fn responder_attempts(attempts: u8) -> u32 {
    peer_attempts(attempts, ConnectOpts::default().max_punch_attempts)
}

/// A responder session counted against the caps (see
/// `SignalConfig::max_responder_sessions`), with its signalling channel
/// registered; gives its place back on drop.
pub(super) struct Responding {
    inner: Arc<Inner>,
    from: NodeId,
    session: SessionId,
    /// Taken by the session's guard, which unregisters it.
    rx: Option<tokio::sync::mpsc::UnboundedReceiver<Msg>>,
}

impl Responding {
    /// A place for a session `from` asked for, or `None` over a cap.
    pub(super) fn admit(inner: &Arc<Inner>, from: NodeId, session: SessionId) -> Option<Responding> {
        lock(&inner.responding).take(&from).ok()?;
        let rx = Some(SessionGuard::open(inner, session));
        Some(Responding { inner: inner.clone(), from, session, rx })
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        lock(&self.inner.responding).release(&self.from);
        if self.rx.is_some() {
            lock(&self.inner.sessions).remove(&self.session);
        }
    }
}

/// Tells an initiator we will not answer (over a cap), in the background:
/// the control loop never waits for a send.
pub(super) fn refuse(ctl: &Connection, to: NodeId, session: SessionId) {
    let ctl = ctl.clone();
    runtime::spawn(async move {
        let reject = Msg::Reject { peer: to, session, reason: signal::reject::BUSY }.encode();
        let _ = tokio::time::timeout(REFUSE_SEND_TIMEOUT, ctl.send(reject)).await;
    });
}

/// Bound on sending a refusal (a rendezvous that stopped reading).
const REFUSE_SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Extra time a responder session may take beyond its profile wait and
/// `responder_timeout` (measuring the allocation, priming, the answer's
/// send) before it is dropped whatever it waits for.
const RESPONDER_SLACK: Duration = Duration::from_secs(5);

/// Answers an `Incoming` and acts on the go; the whole session is bounded
/// (see [`RESPONDER_SLACK`]): nothing a peer sends or withholds keeps it,
/// its signalling channel or its place alive longer.
pub(super) async fn respond(mut admitted: Responding, session: SessionId, flags: u8, attempts: u8, peer: Profile, observed: SocketAddr) {
    let inner = admitted.inner.clone();
    let from = admitted.from;
    let Some(rx) = admitted.rx.take() else { return };
    let bound = {
        let cfg = read(&inner.cfg);
        cfg.responder_profile_wait + cfg.responder_timeout + RESPONDER_SLACK
    };
    if tokio::time::timeout(bound, respond_within(inner, from, session, rx, flags, attempts, peer, observed)).await.is_err() {
        tracing::debug!("signal: session {:02x?} responder dropped after {bound:?}", &session.as_bytes()[..4]);
    }
    drop(admitted);
}

#[allow(clippy::too_many_arguments)]
async fn respond_within(inner: Arc<Inner>, from: NodeId, session: SessionId, rx: tokio::sync::mpsc::UnboundedReceiver<Msg>, flags: u8, attempts: u8, peer: Profile, observed: SocketAddr) {
    let mut guard = SessionGuard::adopt(&inner, session, rx);
    // Asked before our first detection finished: answer with its result
    // (bounded; the initiator's connect timeout runs meanwhile).
    let wait = read(&inner.cfg).responder_profile_wait;
    let info = settled_info(&inner, wait).await;
    let Ok(ctl) = control(&inner) else { return };
    let (base, _spent) = session_base(&inner, &info).await;
    let mut me = our_profile(&inner, &info, None, base);
    let strategy = decide(&peer, &me, flags, shares_public_ip(&me, observed));
    tracing::debug!("signal: session {:02x?} responder strategy {}", &session.as_bytes()[..4], strategy.name());
    let upgrade = flags & signal::FLAG_UPGRADE != 0;
    let listening = matches!(strategy, Strategy::ConnectionReversal { dialer: Side::A });
    let fresh = if aimed_at_preserved_port(strategy, Side::B) && !upgrade { fresh_socket(&inner, &info, session, listening) } else { None };
    if fresh.is_some() {
        me = our_profile(&inner, &info, fresh.as_ref(), base);
    }
    // Before the answer, which lets the initiator's punches follow (an
    // upgrade too, when it will punch: see `respond_upgrade`).
    let primed = if !upgrade || upgradable(strategy) { prime(&inner, Side::B, strategy, fresh.as_ref(), &peer, observed).await } else { Primed::default() };
    // Before the answer: a relayed dial may follow it closely.
    let incoming = inner.dispatch.expect_session(session);
    if ctl.send(Msg::Answer { to: from, session, profile: me }.encode()).await.is_err() {
        return;
    }
    if upgrade {
        drop(incoming);
        respond_upgrade(inner.clone(), guard, from, strategy, peer, observed, responder_attempts(attempts)).await;
        return;
    }
    let timeout = read(&inner.cfg).responder_timeout;
    let run = async {
        if strategy.is_relay() {
            // Nothing to do but wait: the initiator dials through a relay
            // (if it has one of ours).
            return Ok((incoming.await.map_err(|_| ConnectError::Closed)?, Method::Relayed));
        }
        drop(incoming);
        let go = if matches!(strategy, Strategy::Direct { dialer: Dialer::B }) {
            // Nothing to time: dial now rather than a rendezvous round trip
            // later; the initiator takes the connection when its answer has
            // come (the dispatcher holds it until then).
            (Duration::ZERO, ctl.rtt() * 2)
        } else {
            let (wait, pair_rtt) = guard.go().await?;
            (wait + primer_lead(&inner, strategy, pair_rtt, ctl.rtt()), pair_rtt)
        };
        let m = Meeting::new(session, from, &peer, observed, go, responder_attempts(attempts));
        act(&inner, Side::B, strategy, m, fresh, primed).await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok((conn, method))) => {
            // A failed punch may have been followed by a relayed dial.
            let method = if relay::is_virtual(&conn.remote_address()) { Method::Relayed } else { method };
            conn.set_method(method);
            if method == Method::Relayed {
                {
                    let mut v = lock(&inner.relayed_in);
                    v.retain(|c| c.close_reason().is_none());
                    v.push(conn.clone());
                }
            }
            tracing::debug!("signal: session {:02x?} responder done ({}) from {}", &session.as_bytes()[..4], method.name(), conn.remote_address());
            super::failover::look_after_direct(&inner, &conn, from, &ConnectOpts::default());
            inner.dispatch.deliver(conn);
            if method != Method::Relayed {
                drop(guard);
                deliver_late(inner, session, timeout);
                return;
            }
        }
        Ok(Err(e)) => tracing::debug!("signal: session {:02x?} responder failed: {e}", &session.as_bytes()[..4]),
        Err(_) => tracing::debug!("signal: session {:02x?} responder timed out", &session.as_bytes()[..4]),
    }
    drop(guard);
}
