//! A relay's accounting: who is connected, who is reachable (reserved),
//! which sessions exist, and what happens to each data frame.
//!
//! Pure: the runtime passes `Instant`s and ids in and acts on the answers
//! (send a message, forward or delay a frame, fire a callback).
//!
//! Limits:
//! * `max_sessions` counts pending and active sessions: an `Open` beyond it
//!   is refused with [`Refusal::MaxSessions`] before the target hears of it.
//! * `bandwidth_limit` (bytes per second per session, both directions
//!   together) is a token bucket used as a *shaper*: a frame beyond the
//!   tokens is delayed by the time the bucket needs to cover it, up to
//!   `max_queue_delay`, and dropped beyond that. Policing alone (dropping
//!   at once) would hold the limit too, but a congestion-controlled QUIC
//!   flow then oscillates well under it; a short queue lets it settle at
//!   the limit. The bucket's burst is 50 ms of the rate (at least 4 KiB),
//!   so over any window of T seconds at most `burst + rate * T` bytes pass.
//!   Frames of at most [`SMALL_FRAME`] payload bytes (QUIC acknowledgements
//!   of the other direction) are charged but never delayed or dropped: the
//!   charge lands on the bulk frames after them, so the byte limit still
//!   holds, while a saturated direction does not starve the acknowledgements
//!   of the other (which made the flow collapse under its own queue).
//! * `session_timeout`: a session with no frame in either direction for
//!   that long ends ([`EndReason::Inactive`]).

use super::msg::{EndReason, NodeId, Refusal};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The runtime's handle for one control connection.
pub type ClientId = u64;
pub use crate::id::RelaySessionId;

/// Payload size up to which a frame is charged but never held back.
pub const SMALL_FRAME: usize = 128;

/// A pending session not accepted within this is dropped.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_sessions: usize,
    /// Bytes per second per session; `None` = unlimited.
    pub bandwidth_limit: Option<u64>,
    pub session_timeout: Duration,
    /// Longest a frame may wait in the shaper before it is dropped instead.
    pub max_queue_delay: Duration,
}

impl Default for Limits {
    /// 100 sessions, no bandwidth limit, 30 min inactivity (the developer
    /// guide's example value), 100 ms of queue.
    fn default() -> Self {
        Limits {
            max_sessions: 100,
            bandwidth_limit: None,
            session_timeout: Duration::from_secs(1800),
            max_queue_delay: Duration::from_millis(100),
        }
    }
}

/// What to do with a data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward { to: SocketAddr },
    /// Send to `to` after `after` (the shaper's queue).
    Delay { to: SocketAddr, after: Duration },
    Drop(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    UnknownSession,
    /// The sender is not one of the session's legs (spoofed, or stale).
    NotALeg,
    /// The target has not accepted yet.
    NotActive,
    /// Over the bandwidth limit by more than the queue allows.
    OverLimit,
}

/// A session that ended, for the `on_session_end` callback and the `Ended`
/// messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub session: RelaySessionId,
    pub a: NodeId,
    pub b: NodeId,
    pub a_client: ClientId,
    pub b_client: ClientId,
    /// Payload bytes forwarded, both directions.
    pub bytes: u64,
    pub reason: EndReason,
    /// Whether it had been accepted (only those had a start callback).
    pub was_active: bool,
    /// The opener's tag, to refuse a still-pending `Open`.
    pub tag: u32,
}

/// A session the target accepted: answer `Opened` to the opener, fire the
/// start callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub session: RelaySessionId,
    pub a: NodeId,
    pub b: NodeId,
    pub a_client: ClientId,
    pub tag: u32,
}

/// An `Open` that may go ahead: tell `b_client` about `session`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub session: RelaySessionId,
    pub b_client: ClientId,
}

#[derive(Clone, Debug)]
struct Client {
    node: NodeId,
    addr: SocketAddr,
    reserved: bool,
    sessions: HashSet<RelaySessionId>,
}

#[derive(Clone, Debug)]
struct Session {
    a_client: ClientId,
    b_client: ClientId,
    a: NodeId,
    b: NodeId,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    tag: u32,
    active: bool,
    bytes: u64,
    since: Instant,
    last: Instant,
    bucket: Option<TokenBucket>,
}

/// Bytes-per-second bucket whose tokens may go negative down to the queue
/// allowance: a negative balance is the queue, drained at `rate`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1) as f64;
        let burst = (rate * 0.05).max(4096.0);
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    /// Takes `len` bytes: `Some(wait)` (zero = now) or `None` when waiting
    /// would exceed `max_wait` (nothing is taken then).
    pub fn take(&mut self, now: Instant, len: usize, max_wait: Duration) -> Option<Duration> {
        self.refill(now);
        let after = self.tokens - len as f64;
        if after >= 0.0 {
            self.tokens = after;
            return Some(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64(-after / self.rate);
        if wait > max_wait {
            return None;
        }
        self.tokens = after;
        Some(wait)
    }

    /// Charges `len` bytes without waiting (the debt delays later frames).
    pub fn charge(&mut self, now: Instant, len: usize) {
        self.refill(now);
        self.tokens -= len as f64;
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }
}

/// The relay's state. Session ids come from the caller (random, so a frame
/// cannot name someone else's session by counting).
#[derive(Debug)]
pub struct RelayTable {
    limits: Limits,
    clients: HashMap<ClientId, Client>,
    /// Reserved node -> its (latest) reserving connection.
    reachable: HashMap<NodeId, ClientId>,
    sessions: HashMap<RelaySessionId, Session>,
    disabled: bool,
    dropped: HashMap<DropReason, u64>,
}

impl RelayTable {
    pub fn new(limits: Limits) -> RelayTable {
        RelayTable {
            limits,
            clients: HashMap::new(),
            reachable: HashMap::new(),
            sessions: HashMap::new(),
            disabled: false,
            dropped: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// An authenticated control connection of `node`, seen at `addr` (its
    /// data frames must come from there).
    pub fn connect(&mut self, client: ClientId, node: NodeId, addr: SocketAddr) {
        self.clients.insert(client, Client { node, addr, reserved: false, sessions: HashSet::new() });
    }

    /// Makes the client's node reachable. `false` for an unknown client or
    /// while disabled.
    pub fn reserve(&mut self, client: ClientId) -> bool {
        if self.disabled {
            return false;
        }
        let Some(c) = self.clients.get_mut(&client) else { return false };
        c.reserved = true;
        self.reachable.insert(c.node, client);
        true
    }

    pub fn is_reserved(&self, node: &NodeId) -> bool {
        self.reachable.contains_key(node)
    }

    /// The control connection went away: its reservation and sessions end.
    pub fn disconnect(&mut self, client: ClientId) -> Vec<Ended> {
        let Some(c) = self.clients.remove(&client) else { return Vec::new() };
        if self.reachable.get(&c.node) == Some(&client) {
            self.reachable.remove(&c.node);
        }
        c.sessions.iter().filter_map(|s| self.end(*s, EndReason::PeerGone)).collect()
    }

    /// `client` asks for a session to `to`.
    pub fn open(&mut self, client: ClientId, to: &NodeId, session: RelaySessionId, tag: u32, now: Instant) -> Result<Pending, Refusal> {
        if self.disabled {
            return Err(Refusal::Disabled);
        }
        let Some(a) = self.clients.get(&client) else { return Err(Refusal::BadRequest) };
        if &a.node == to {
            return Err(Refusal::SelfSession);
        }
        let Some(&b_client) = self.reachable.get(to) else { return Err(Refusal::NoReservation) };
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(Refusal::MaxSessions);
        }
        if self.sessions.contains_key(&session) {
            return Err(Refusal::BadRequest);
        }
        let Some(b) = self.clients.get(&b_client) else { return Err(Refusal::NoReservation) };
        let s = Session {
            a_client: client,
            b_client,
            a: a.node,
            b: b.node,
            a_addr: a.addr,
            b_addr: b.addr,
            tag,
            active: false,
            bytes: 0,
            since: now,
            last: now,
            bucket: self.limits.bandwidth_limit.map(|r| TokenBucket::new(r, now)),
        };
        self.sessions.insert(session, s);
        for c in [client, b_client] {
            if let Some(c) = self.clients.get_mut(&c) {
                c.sessions.insert(session);
            }
        }
        Ok(Pending { session, b_client })
    }

    /// The target accepts: the session becomes active.
    pub fn accept(&mut self, client: ClientId, session: RelaySessionId, now: Instant) -> Option<Started> {
        let s = self.sessions.get_mut(&session).filter(|s| s.b_client == client && !s.active)?;
        s.active = true;
        s.last = now;
        Some(Started { session, a: s.a, b: s.b, a_client: s.a_client, tag: s.tag })
    }

    /// The target declines: `(opener, tag)` to refuse.
    pub fn decline(&mut self, client: ClientId, session: RelaySessionId) -> Option<(ClientId, u32)> {
        let s = self.sessions.get(&session).filter(|s| s.b_client == client && !s.active)?;
        let r = (s.a_client, s.tag);
        self.end(session, EndReason::Closed);
        Some(r)
    }

    /// A leg closes the session.
    pub fn close(&mut self, client: ClientId, session: RelaySessionId) -> Option<Ended> {
        let s = self.sessions.get(&session)?;
        if s.a_client != client && s.b_client != client {
            return None;
        }
        self.end(session, EndReason::Closed)
    }

    /// A data frame of `session` with `len` payload bytes arrived from `from`.
    pub fn forward(&mut self, from: SocketAddr, session: RelaySessionId, len: usize, now: Instant) -> Verdict {
        let max_wait = self.limits.max_queue_delay;
        let v = match self.sessions.get_mut(&session) {
            None => Verdict::Drop(DropReason::UnknownSession),
            Some(s) => {
                let to = if from == s.a_addr {
                    Some(s.b_addr)
                } else if from == s.b_addr {
                    Some(s.a_addr)
                } else {
                    None
                };
                match to {
                    None => Verdict::Drop(DropReason::NotALeg),
                    Some(_) if !s.active => Verdict::Drop(DropReason::NotActive),
                    Some(to) => {
                        let wait = match s.bucket.as_mut() {
                            None => Some(Duration::ZERO),
                            Some(b) if len <= SMALL_FRAME => {
                                b.charge(now, len);
                                Some(Duration::ZERO)
                            }
                            Some(b) => b.take(now, len, max_wait),
                        };
                        match wait {
                            None => Verdict::Drop(DropReason::OverLimit),
                            Some(w) => {
                                s.bytes += len as u64;
                                s.last = now;
                                if w.is_zero() {
                                    Verdict::Forward { to }
                                } else {
                                    Verdict::Delay { to, after: w }
                                }
                            }
                        }
                    }
                }
            }
        };
        if let Verdict::Drop(r) = v {
            *self.dropped.entry(r).or_default() += 1;
        }
        v
    }

    /// Ends inactive sessions and forgets pending ones never accepted.
    pub fn sweep(&mut self, now: Instant) -> Vec<Ended> {
        let timeout = self.limits.session_timeout;
        // Active: idle since the last frame; pending: since the open.
        let due: Vec<RelaySessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                let (since, limit) = if s.active { (s.last, timeout) } else { (s.since, PENDING_TIMEOUT) };
                now.saturating_duration_since(since) >= limit
            })
            .map(|(id, _)| *id)
            .collect();
        due.into_iter().filter_map(|id| self.end(id, EndReason::Inactive)).collect()
    }

    /// Refuses new sessions and reservations, ends every session and drops
    /// the reservations.
    pub fn disable(&mut self) -> Vec<Ended> {
        self.disabled = true;
        self.reachable.clear();
        for c in self.clients.values_mut() {
            c.reserved = false;
        }
        let ids: Vec<RelaySessionId> = self.sessions.keys().copied().collect();
        ids.into_iter().filter_map(|id| self.end(id, EndReason::Disabled)).collect()
    }

    pub fn enable(&mut self, limits: Limits) {
        self.disabled = false;
        self.limits = limits;
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// Sessions (pending and active) per `max_sessions`, in per-mille.
    pub fn load_permille(&self) -> u16 {
        let max = self.limits.max_sessions.max(1);
        ((self.sessions.len().min(max) * 1000) / max) as u16
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn reservations(&self) -> usize {
        self.reachable.len()
    }

    pub fn session_bytes(&self, session: RelaySessionId) -> Option<u64> {
        self.sessions.get(&session).map(|s| s.bytes)
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }

    /// The addresses of a session's legs `(a, b)`.
    pub fn legs(&self, session: RelaySessionId) -> Option<(SocketAddr, SocketAddr)> {
        self.sessions.get(&session).map(|s| (s.a_addr, s.b_addr))
    }

    fn end(&mut self, session: RelaySessionId, reason: EndReason) -> Option<Ended> {
        let s = self.sessions.remove(&session)?;
        for c in [s.a_client, s.b_client] {
            if let Some(c) = self.clients.get_mut(&c) {
                c.sessions.remove(&session);
            }
        }
        Some(Ended {
            session,
            a: s.a,
            b: s.b,
            a_client: s.a_client,
            b_client: s.b_client,
            bytes: s.bytes,
            reason,
            was_active: s.active,
            tag: s.tag,
        })
    }
}
