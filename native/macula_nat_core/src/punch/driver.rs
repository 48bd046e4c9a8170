//! Runs a [`Punch`] (the sans-IO hole-punch machine of `macula_nat_proto`)
//! on the node's socket, and for birthday probing's hard side also on extra
//! sockets ([`crate::punch::birthday`], the one exception to one socket per node).
//!
//! Routing: punch packets are STUN Binding requests/responses carrying a
//! PUNCH-TOKEN. The node's receive loop asks `crate::socket::punch_routes` first: a STUN
//! datagram whose token names a registered session goes to that session's
//! channel (requests included: the machine answers them itself, with its
//! token). Datagrams of unknown sessions fall through to the ordinary STUN
//! handling (a request gets a plain answer, which the peer's machine
//! ignores).
//!
//! A session is registered before the "go" wait, so packets of a peer that
//! starts a little earlier are queued, and stays registered for
//! [`LINGER`] after the machine finished, so the peer, which may finish a
//! little later, still gets answers.

use crate::punch::birthday::{PathSocket, SocketSet};
use crate::socket::punch_routes::Registration;
use crate::Node;
use macula_nat_proto::punch::{Punch, PunchConfig, PunchError, PunchSuccess, SessionId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a finished machine keeps answering the peer.
pub const LINGER: Duration = Duration::from_secs(3);
/// Starts receiving the session's punch packets on `node` (queued until
/// [`run`] starts the machine).
pub fn register(node: &Node, session: SessionId) -> Registration {
    node.punch_routes().register(session)
}

/// A punched path; `path` is set when it runs over one of the extra
/// sockets, which then must carry QUIC for it (see [`crate::punch::birthday`]).
pub struct Punched {
    pub success: PunchSuccess,
    pub path: Option<PathSocket>,
}

/// Like [`run`], also over `extra` (socket indices `1..`, birthday probing's
/// hard side). Once there is an outcome, every extra socket except the
/// winning one is closed; the lingering machine answers on the node socket
/// and on the winner while that stays open.
pub async fn run_with(node: Arc<Node>, mut reg: Registration, cfg: PunchConfig, mut extra: SocketSet) -> Result<Punched, PunchError> {
    // The start delay is the initiator's RTT/2 wait, which the rendezvous
    // "go" timing replaces: start at once.
    let now = Instant::now();
    let t0 = now.checked_sub(cfg.start_delay()).unwrap_or(now);
    // The failure diagnostic costs nothing unless it will be shown.
    let diagnose = tracing::enabled!(tracing::Level::DEBUG);
    let targets: Vec<SocketAddr> = if diagnose { cfg.targets.iter().map(|t| t.1).collect() } else { Vec::new() };
    let mut p = Punch::new(cfg, t0);
    let mut heard = Heard { on: diagnose, from: Vec::new() };
    let result = loop {
        if let Some(r) = drive(&node, &extra, &mut p).await {
            break r;
        }
        let wake = p.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_millis(50));
        tokio::select! {
            d = reg.rx.recv() => match d {
                Some((from, data)) => { heard.note(from); p.handle_datagram(Instant::now(), 0, from, &data); }
                None => break Err(PunchError::Timeout),
            },
            (k, from, data) = extra.recv() => { heard.note(from); p.handle_datagram(Instant::now(), k, from, &data); }
            _ = tokio::time::sleep_until(wake.into()) => p.handle_timeout(Instant::now()),
        }
    };
    if let (Err(e), true) = (&result, diagnose) {
        tracing::debug!("punch failed ({e}): aimed at {targets:?}, heard from {:?}", heard.from);
    }
    let path = extra.keep_only(result.as_ref().ok().map(|s| s.socket));
    crate::runtime::spawn(async move {
        let end = tokio::time::Instant::now() + LINGER;
        loop {
            let _ = drive(&node, &extra, &mut p).await;
            let wake = p.poll_timeout().map(tokio::time::Instant::from).unwrap_or(end).min(end);
            tokio::select! {
                d = reg.rx.recv() => match d {
                    Some((from, data)) => { p.handle_datagram(Instant::now(), 0, from, &data); }
                    None => return,
                },
                (k, from, data) = extra.recv() => { p.handle_datagram(Instant::now(), k, from, &data); }
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= end { return; }
                    p.handle_timeout(Instant::now());
                }
            }
        }
    });
    result.map(|success| Punched { success, path })
}

/// Where a session's punch packets came from, for the failure diagnostic
/// (bounded: a birthday hard side hears at most a few addresses).
struct Heard {
    on: bool,
    from: Vec<(SocketAddr, u32)>,
}

impl Heard {
    fn note(&mut self, from: SocketAddr) {
        if !self.on {
            return;
        }
        if let Some((_, n)) = self.from.iter_mut().find(|(a, _)| *a == from) {
            *n += 1;
        } else if self.from.len() < 16 {
            self.from.push((from, 1));
        }
    }
}

/// Sends what is due; returns the outcome once there is one.
async fn drive(node: &Node, extra: &SocketSet, p: &mut Punch) -> Option<Result<PunchSuccess, PunchError>> {
    while let Some(t) = p.poll_transmit(Instant::now()) {
        let sent = if t.socket == 0 {
            node.send_to(&t.payload, t.dst).await.map_err(|e| e.to_string())
        } else {
            extra.send(t.socket, &t.payload, t.dst).await.map_err(|e| e.to_string())
        };
        if let Err(e) = sent {
            tracing::debug!("punch send from socket {} to {} failed: {e}", t.socket, t.dst);
        }
    }
    p.poll_result()
}
