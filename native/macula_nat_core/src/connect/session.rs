//! Session matching: a session's signalling channel ([`SessionGuard`]),
//! what both sides know at the go ([`Meeting`]), the first message of a
//! session's connection ([`announce`]) and connections that arrive late.

use crate::lock::lock;
use super::error::ConnectError;
use super::inner::Inner;
use super::profile::keep_reachable_candidates;
use crate::{relay, runtime, Connection};
use crate::quic::dispatch::Dispatch;
use crate::quic::Method;
use macula_nat_proto::signal::{HelloKind, Msg, NodeId, Profile, SessionId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What both sides of a session know once the answer and the go are in:
/// who and where the peer is, when to start and the pair's round trip.
#[derive(Clone, Copy)]
pub(super) struct Meeting<'a> {
    pub(super) session: SessionId,
    pub(super) peer_id: NodeId,
    pub(super) peer: &'a Profile,
    /// The peer's address as the rendezvous saw it.
    pub(super) observed: SocketAddr,
    /// The go's wait before starting.
    pub(super) wait: Duration,
    pub(super) pair_rtt: Duration,
    /// Punch transmissions per path.
    pub(super) max_attempts: u32,
}

impl<'a> Meeting<'a> {
    pub(super) fn new(session: SessionId, peer_id: NodeId, peer: &'a Profile, observed: SocketAddr, (wait, pair_rtt): (Duration, Duration), max_attempts: u32) -> Self {
        Meeting { session, peer_id, peer, observed, wait, pair_rtt, max_attempts }
    }
}

/// Registers a session's signalling channel; unregisters on drop.
pub(super) struct SessionGuard<'a> {
    pub(super) inner: &'a Inner,
    pub(super) session: SessionId,
    pub(super) rx: mpsc::UnboundedReceiver<Msg>,
}

impl<'a> SessionGuard<'a> {
    pub(super) fn new(inner: &'a Inner, session: SessionId) -> SessionGuard<'a> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&inner.sessions).insert(session, tx);
        SessionGuard { inner, session, rx }
    }

    /// A guard for a channel [`open`](SessionGuard::open) registered
    /// earlier (the control loop does, before the responder's task starts,
    /// so that a `Reject` right behind the `Incoming` finds it).
    pub(super) fn adopt(inner: &'a Inner, session: SessionId, rx: mpsc::UnboundedReceiver<Msg>) -> SessionGuard<'a> {
        SessionGuard { inner, session, rx }
    }

    /// Registers a session's channel without a guard yet (see [`adopt`](SessionGuard::adopt)).
    pub(super) fn open(inner: &Inner, session: SessionId) -> mpsc::UnboundedReceiver<Msg> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&inner.sessions).insert(session, tx);
        rx
    }
}

impl SessionGuard<'_> {
    /// The responder's answer: its profile and observed address. Ends
    /// with `NoRendezvous` when our control connection to the rendezvous is
    /// lost meanwhile (a crashed rendezvous found silent): no answer can
    /// come, and the connect may go on through another one.
    pub(super) async fn answer(&mut self) -> Result<(Profile, SocketAddr), ConnectError> {
        let mut control = self.inner.control.subscribe();
        loop {
            let got = tokio::select! {
                m = self.rx.recv() => m,
                _ = control.wait_for(|c| c.as_ref().is_none_or(|c| c.close_reason().is_some())) => None,
            };
            match got {
                Some(Msg::Answered { mut profile, observed, .. }) => {
                    keep_reachable_candidates(self.inner, &mut profile, observed);
                    return Ok((profile, observed));
                }
                Some(Msg::Unknown { .. }) => return Err(ConnectError::UnknownPeer),
                Some(Msg::Reject { reason, .. }) => return Err(ConnectError::Rejected(reason)),
                Some(_) => continue,
                None => return Err(ConnectError::NoRendezvous),
            }
        }
    }

    /// The go: the wait before starting, and the pair's round trip.
    pub(super) async fn go(&mut self) -> Result<(Duration, Duration), ConnectError> {
        loop {
            match self.rx.recv().await {
                Some(Msg::Go { wait, own_rtt, peer_rtt, .. }) => return Ok((wait, own_rtt + peer_rtt)),
                // The peer gave up (an upgrade's initiator after its
                // Connect): no go will come.
                Some(Msg::Reject { reason, .. }) => return Err(ConnectError::Rejected(reason)),
                Some(_) => continue,
                None => return Err(ConnectError::NoRendezvous),
            }
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.sessions).remove(&self.session);
        self.inner.dispatch.forget_session(&self.session);
    }
}

/// The initiator gave up on a plain dial or listen and relayed, while the
/// responder's direct connection of the session may still arrive late (a
/// slow dial on a loaded host): it is closed rather than left open unused,
/// so the responder's application sees it end. A responder keeps listening
/// for the session ([`deliver_late`]) and gets the relayed one.
pub(super) fn refuse_late(inner: &Arc<Inner>, session: SessionId) {
    on_late(inner, session, LATE_WINDOW, |_, c| c.close("superseded by a relayed connection"));
}

/// A responder whose session ended with a direct connection (its own dial,
/// or the initiator's) still takes a relayed connection of the session for
/// a while: the initiator may have given up on that direct path just before
/// it opened, and relayed instead. Without this the relayed connection, and
/// what the initiator sends on it, would be lost.
pub(super) fn deliver_late(inner: Arc<Inner>, session: SessionId, timeout: Duration) {
    on_late(&inner, session, timeout.min(LATE_WINDOW), |d, c| {
        c.set_method(if relay::is_virtual(&c.remote_address()) { Method::Relayed } else { Method::Direct });
        d.deliver(c);
    });
}

/// Waits up to `window` for another connection of a finished `session`
/// and hands it to `f`; then stops taking the session's connections.
pub(super) fn on_late(inner: &Inner, session: SessionId, window: Duration, f: impl FnOnce(&Dispatch, Connection) + Send + 'static) {
    let late = inner.dispatch.expect_session(session);
    let dispatch = Arc::downgrade(&inner.dispatch);
    runtime::spawn(async move {
        let got = tokio::time::timeout(window, late).await;
        let Some(d) = dispatch.upgrade() else { return };
        if let Ok(Ok(c)) = got {
            f(&d, c);
        }
        d.forget_session(&session);
    });
}

/// How long a session's late connection is still taken (see
/// [`deliver_late`], [`refuse_late`]): longer than a relayed dial takes.
pub(super) const LATE_WINDOW: Duration = Duration::from_secs(15);

/// Dials `addr` for `session` and announces the session. `rtt`: the
/// expected round trip, when known (see [`crate::quic::QuicEndpoint::connect_rtt`]).
pub(super) async fn dial(inner: &Inner, addr: SocketAddr, peer: NodeId, session: SessionId, rtt: Option<Duration>) -> Result<Connection, ConnectError> {
    let conn = inner.node.quic()?.connect_rtt(addr, peer, rtt).await?;
    announce(conn, session).await
}

/// The first message of a session connection, which hands it to the
/// session on the other side. Only the connection that is kept says it: a
/// losing one of two racing dials is dropped unannounced.
pub(super) async fn announce(conn: Connection, session: SessionId) -> Result<Connection, ConnectError> {
    conn.send(Msg::Hello(HelloKind::Session(session)).encode()).await?;
    Ok(conn)
}
