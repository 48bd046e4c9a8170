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
use crate::relay;
use crate::quic::Method;
use macula_nat_proto::signal;
use macula_nat_proto::connect::{aimed_at_preserved_port, decide, shares_public_ip, upgradable};
use macula_nat_proto::signal::{Msg, NodeId, Profile, SessionId};
use macula_nat_proto::strategy::{Dialer, Side, Strategy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The punch transmissions per path a responder uses: the initiator's.
pub(super) fn responder_attempts(attempts: u8) -> u32 {
    match attempts {
        0 => ConnectOpts::default().max_punch_attempts,
        n => n as u32,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn respond(inner: Arc<Inner>, from: NodeId, session: SessionId, flags: u8, attempts: u8, peer: Profile, observed: SocketAddr) {
    let mut guard = SessionGuard::new(&inner, session);
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
