//! The initiator (side A) of a connect through one rendezvous: its
//! sessions (a second one for a failed prediction) and the relay fallback.

use super::error::ConnectError;
use super::inner::{control, Inner};
use super::opts::ConnectOpts;
use super::primers::prime;
use super::profile::{current_info, fresh_socket, our_profile, session_base, settled_info, ANSWER_SOCKET};
use super::relayed::via_relay;
use super::session::{refuse_late, Meeting, SessionGuard};
use super::strategies::act;
use crate::Connection;
use crate::quic::Method;
use macula_nat_proto::{signal, strategy};
use macula_nat_proto::connect::{aimed_at_preserved_port, decide, may_retry, peer_nat, shares_public_ip, wire_attempts};
use macula_nat_proto::signal::{Msg, NodeId, Profile, SessionId};
use macula_nat_proto::strategy::{Aim, Side, Strategy};
use std::sync::Arc;
use std::time::Instant;

/// One connect, in one session; a prediction that failed by chance gets
/// one more session (see [`may_retry`]) before the relay.
pub(super) async fn initiate(inner: &Arc<Inner>, target: NodeId, opts: &ConnectOpts) -> Result<(Connection, Method, Strategy), ConnectError> {
    let started = Instant::now();
    // A connect right after the node started: its first detection may
    // still be under way (bounded by the connect's timeout, around us).
    settled_info(inner, opts.timeout).await;
    if let Some(done) = initiate_once(inner, target, opts, Attempt::First { started }).await? {
        return Ok(done);
    }
    tracing::debug!("signal: prediction failed after {:?}; once more in a new session", started.elapsed());
    initiate_once(inner, target, opts, Attempt::Second).await?.ok_or(ConnectError::PunchFailed)
}

/// Which session of a connect [`initiate_once`] runs.
#[derive(Clone, Copy)]
pub(super) enum Attempt {
    /// The first, of a connect that started at `started`: a failed
    /// prediction may get a second session.
    First { started: Instant },
    /// The second: a failure goes to the relay (or is the answer).
    Second,
}

/// `Ok(None)`: try again in a new session (only after [`Attempt::First`]).
pub(super) async fn initiate_once(inner: &Arc<Inner>, target: NodeId, opts: &ConnectOpts, attempt: Attempt) -> Result<Option<(Connection, Method, Strategy)>, ConnectError> {
    let session = SessionId::random();
    let mut guard = SessionGuard::new(inner, session);
    let ctl = control(inner)?;
    let info = current_info(inner);
    let mut fresh = fresh_socket(inner, &info, session, true);
    let (base, _spent) = session_base(inner, &info).await;
    let me = our_profile(inner, &info, fresh.as_ref(), base);
    let mut flags = if opts.prefer_direct { 0 } else { signal::FLAG_NO_DIRECT };
    if opts.relay_only {
        flags |= signal::FLAG_RELAY_ONLY;
    }
    let attempts = wire_attempts(opts.max_punch_attempts);
    ctl.send(Msg::Connect { to: target, session, flags, attempts, profile: me.clone() }.encode()).await?;
    let (peer, observed) = guard.answer().await?;
    let strategy = decide(&me, &peer, flags, shares_public_ip(&me, observed));
    tracing::debug!("signal: session {:02x?} initiator strategy {}", &session.as_bytes()[..4], strategy.name());
    if !matches!(strategy, Strategy::ConnectionReversal { dialer: Side::B }) {
        // Not listening: no answer socket.
        drop(fresh.as_mut().and_then(|f| f.take(ANSWER_SOCKET)));
    }
    let fresh = fresh.filter(|_| aimed_at_preserved_port(strategy, Side::A));
    let relay_ok = opts.allow_relay || opts.relay_only;
    // Relay-only pairs don't wait for the go.
    if strategy.is_relay() {
        if !relay_ok {
            let hard = |p: &Profile| strategy::aim(&peer_nat(&p.info)) == Aim::Unpredictable;
            return Err(if hard(&me) && hard(&peer) { ConnectError::SymmetricNat } else { ConnectError::NoRelay });
        }
        let conn = via_relay(inner, target, session, &peer, opts).await.map_err(|e| relay_error(e, opts))?;
        return Ok(Some((conn, Method::Relayed, strategy)));
    }
    let primed = prime(inner, Side::A, strategy, fresh.as_ref(), &peer, observed).await;
    let go = guard.go().await?;
    let m = Meeting::new(session, target, &peer, observed, go, opts.max_punch_attempts);
    let r = act(inner, Side::A, strategy, m, fresh, primed).await;
    let (conn, method) = match r {
        Err(ConnectError::PunchFailed) if matches!(attempt, Attempt::First { started } if may_retry(strategy, started.elapsed(), opts.timeout)) => {
            drop(guard);
            refuse_late(inner, session);
            return Ok(None);
        }
        Err(ConnectError::PunchFailed) if relay_ok => {
            // The responder still waits for the session's connection.
            let conn = via_relay(inner, target, session, &peer, opts).await.map_err(|e| relay_error(e, opts))?;
            drop(guard);
            refuse_late(inner, session);
            return Ok(Some((conn, Method::Relayed, strategy)));
        }
        other => other?,
    };
    drop(guard);
    Ok(Some((conn, method, strategy)))
}

/// A relay's refusal is `NoRelay` for a connect (no relay was available)
/// and itself for an explicit relay request, which wants to know why.
pub(super) fn relay_error(e: ConnectError, opts: &ConnectOpts) -> ConnectError {
    match e {
        ConnectError::RelayRefused(_) if !opts.relay_only => ConnectError::NoRelay,
        other => other,
    }
}
