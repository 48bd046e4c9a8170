//! A relay's accounting: who is connected, who is reachable (reserved),
//! which sessions exist, and what happens to each data frame.
//!
//! Pure: the runtime passes `Instant`s and ids in and acts on the answers
//! (send a message, forward or delay a frame, fire a callback).
//!
//! Limits (every one a bound on what a peer can make the relay hold or
//! send; libp2p's circuit relay v2 caps the same things):
//! * `max_sessions` counts pending and active sessions: an `Open` beyond it
//!   is refused with [`Refusal::MaxSessions`] before the target hears of it.
//! * Per node key (what one authenticated peer can take of those slots, so
//!   that a few keys cannot hold them all): `max_sessions_per_key` sessions
//!   it opened (pending and active, [`Refusal::TooManySessions`]),
//!   `max_pending_per_key` of them not yet accepted
//!   ([`Refusal::TooManyPending`]), `max_opens_per_minute` opens (a token
//!   bucket of that many, refilled over a minute, [`Refusal::RateLimited`]).
//!   Counted for the opener only: a target cannot refuse to be opened to,
//!   so counting it would let anyone exhaust a victim's share.
//! * `max_reservations` reserved nodes in all; `max_reservations_per_key`
//!   reserving control connections of one key, beyond which that key's
//!   oldest reservation is dropped (the newest wins, as a reconnecting node
//!   needs).
//! * Pings: [`PINGS_PER_SECOND`] per control connection are answered, the
//!   rest are not (the runtime counts them as dropped).
//! * `pending_timeout`: a session not accepted within it is refused
//!   ([`Refusal::Declined`]); an honest target accepts within one round trip.
//! * `bandwidth_limit` (bytes per second per session, both directions
//!   together) is a token bucket used as a *shaper*: a frame beyond the
//!   tokens is delayed by the time the bucket needs to cover it, up to
//!   `max_queue_delay`, and dropped beyond that. Policing alone (dropping
//!   at once) would hold the limit too, but a congestion-controlled QUIC
//!   flow then oscillates well under it; a short queue lets it settle at
//!   the limit. The bucket's burst is 50 ms of the rate (at least 4 KiB).
//!   Frames of at most [`SMALL_FRAME`] payload bytes (QUIC acknowledgements
//!   of the other direction) skip the queue: they leave at once while the
//!   bucket's debt is within twice `max_queue_delay` (the second half is
//!   theirs alone, so a saturated direction does not starve the
//!   acknowledgements of the other, which made the flow collapse under its
//!   own queue), and are dropped beyond it. Every frame is charged, so over
//!   any window of T seconds at most `burst + rate * (T + 2 *
//!   max_queue_delay)` bytes pass, whatever the frame sizes.
//! * `session_timeout`: a session with no frame in either direction for
//!   that long ends ([`EndReason::Inactive`]).
//!
//! Legs follow their control connection: the runtime reports the
//! connection's current remote address ([`RelayTable::move_client`]) after
//! QUIC migrated it (a NAT rebinding), and the leg's frames are expected
//! from, and sent to, the new address.
//!
//! Per-key state lives while the key has a control connection, and after
//! its last one left until its opens bucket is full again (at most a
//! minute): [`RelayTable::sweep`] forgets it then.

use super::msg::{EndReason, NodeId, Refusal};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The runtime's handle for one control connection.
pub type ClientId = u64;
pub use crate::id::RelaySessionId;

/// Payload size up to which a frame skips the shaper's queue (it is still
/// charged, and dropped when the debt is beyond its share).
pub const SMALL_FRAME: usize = 128;

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_sessions: usize,
    /// Bytes per second per session; `None` = unlimited.
    pub bandwidth_limit: Option<u64>,
    pub session_timeout: Duration,
    /// Longest a frame may wait in the shaper before it is dropped instead.
    pub max_queue_delay: Duration,
    /// A session not accepted within this is refused.
    pub pending_timeout: Duration,
    /// Sessions one key opened that may exist at once (pending and active).
    pub max_sessions_per_key: usize,
    /// Sessions one key opened that may wait for their target at once.
    pub max_pending_per_key: usize,
    /// Opens one key may make per minute (a bucket of that many).
    pub max_opens_per_minute: u32,
    /// Reserved nodes in all.
    pub max_reservations: usize,
    /// Reserving control connections of one key.
    pub max_reservations_per_key: usize,
}

impl Default for Limits {
    /// 100 sessions, no bandwidth limit, 30 min inactivity (the developer
    /// guide's example value), 100 ms of queue; per key 16 sessions, 4 of
    /// them pending, 60 opens a minute, 2 reservations; 4 s to accept
    /// (under the opener's 5 s wait, so it hears a refusal, not a timeout);
    /// 1,000 reservations.
    fn default() -> Self {
        Limits {
            max_sessions: 100,
            bandwidth_limit: None,
            session_timeout: Duration::from_secs(1800),
            max_queue_delay: Duration::from_millis(100),
            pending_timeout: Duration::from_secs(4),
            max_sessions_per_key: 16,
            max_pending_per_key: 4,
            max_opens_per_minute: 60,
            max_reservations: 1000,
            max_reservations_per_key: 2,
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
    pings: CountRate,
}

/// What one node key holds, across its control connections.
#[derive(Clone, Debug)]
struct KeyState {
    clients: usize,
    /// Sessions it opened, pending and active.
    sessions: usize,
    /// Of those, not yet accepted.
    pending: usize,
    /// Its reserving connections, oldest first.
    reserved: Vec<ClientId>,
    opens: CountRate,
}

/// Pings a client may send per second (and its burst): an honest client
/// pings twice a second; the Pongs of the rest are not sent (a client
/// cannot make the relay write faster than this on its behalf).
pub const PINGS_PER_SECOND: u32 = 10;

const MINUTE: Duration = Duration::from_secs(60);

/// A count per period: a bucket of `cap` tokens, refilled at `cap` per
/// `period` (opens per minute, pings per second).
#[derive(Clone, Debug, PartialEq)]
pub struct CountRate {
    cap: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl CountRate {
    pub fn new(cap: u32, period: Duration, now: Instant) -> CountRate {
        let cap = f64::from(cap);
        CountRate { cap, per_sec: cap / period.as_secs_f64().max(1e-9), tokens: cap, last: now }
    }

    /// Takes one: `false` when the bucket is empty (nothing taken).
    pub fn allow(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Whether the bucket is full (the history no longer matters).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.cap
    }

    /// A new rate of `cap` per `period` (tokens kept, up to the new cap).
    pub fn set(&mut self, cap: u32, period: Duration) {
        self.cap = f64::from(cap);
        self.per_sec = self.cap / period.as_secs_f64().max(1e-9);
        self.tokens = self.tokens.min(self.cap);
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.per_sec).min(self.cap);
    }
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

    /// Charges `len` bytes to send at once (the debt delays later frames),
    /// unless the debt would then take longer than `max_debt` to pay off:
    /// `false`, nothing charged.
    pub fn charge(&mut self, now: Instant, len: usize, max_debt: Duration) -> bool {
        self.refill(now);
        let after = self.tokens - len as f64;
        if after < 0.0 && -after / self.rate > max_debt.as_secs_f64() {
            return false;
        }
        self.tokens = after;
        true
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
    keys: HashMap<NodeId, KeyState>,
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
            keys: HashMap::new(),
            disabled: false,
            dropped: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// An authenticated control connection of `node`, seen at `addr` (its
    /// data frames must come from there). `now` starts the key's opens
    /// bucket if it is new.
    pub fn connect(&mut self, client: ClientId, node: NodeId, addr: SocketAddr, now: Instant) {
        let pings = CountRate::new(PINGS_PER_SECOND, Duration::from_secs(1), now);
        if self.clients.insert(client, Client { node, addr, reserved: false, sessions: HashSet::new(), pings }).is_some() {
            return;
        }
        let per_minute = self.limits.max_opens_per_minute;
        let k = self.keys.entry(node).or_insert_with(|| KeyState {
            clients: 0,
            sessions: 0,
            pending: 0,
            reserved: Vec::new(),
            opens: CountRate::new(per_minute, MINUTE, now),
        });
        k.clients += 1;
    }

    /// The client's control connection now comes from `addr` (QUIC
    /// migrated it after a NAT rebinding): its sessions' frames are expected
    /// from and sent to `addr`. `false` if unknown or unchanged.
    pub fn move_client(&mut self, client: ClientId, addr: SocketAddr) -> bool {
        let Some(c) = self.clients.get_mut(&client) else { return false };
        if c.addr == addr {
            return false;
        }
        c.addr = addr;
        for id in &c.sessions {
            if let Some(s) = self.sessions.get_mut(id) {
                if s.a_client == client {
                    s.a_addr = addr;
                }
                if s.b_client == client {
                    s.b_addr = addr;
                }
            }
        }
        true
    }

    /// Whether the client's Ping may be answered (`PINGS_PER_SECOND`).
    pub fn ping(&mut self, client: ClientId, now: Instant) -> bool {
        self.clients.get_mut(&client).is_some_and(|c| c.pings.allow(now))
    }

    /// Where the client's frames are expected from.
    pub fn client_addr(&self, client: ClientId) -> Option<SocketAddr> {
        self.clients.get(&client).map(|c| c.addr)
    }

    /// Makes the client's node reachable. `false` for an unknown client,
    /// while disabled, or when `max_reservations` other nodes hold one. Past
    /// `max_reservations_per_key`, the key's oldest reservation goes.
    pub fn reserve(&mut self, client: ClientId) -> bool {
        if self.disabled {
            return false;
        }
        let Some(c) = self.clients.get(&client) else { return false };
        let node = c.node;
        if c.reserved {
            self.reachable.insert(node, client);
            return true;
        }
        if !self.reachable.contains_key(&node) && self.reachable.len() >= self.limits.max_reservations {
            return false;
        }
        let per_key = self.limits.max_reservations_per_key.max(1);
        let evicted: Vec<ClientId> = match self.keys.get_mut(&node) {
            Some(k) => {
                k.reserved.push(client);
                let over = k.reserved.len().saturating_sub(per_key);
                k.reserved.drain(..over).collect()
            }
            None => Vec::new(),
        };
        for old in evicted {
            if let Some(o) = self.clients.get_mut(&old) {
                o.reserved = false;
            }
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.reserved = true;
        }
        self.reachable.insert(node, client);
        true
    }

    /// Reserving control connections of `node`.
    pub fn key_reservations(&self, node: &NodeId) -> usize {
        self.keys.get(node).map_or(0, |k| k.reserved.len())
    }

    /// Sessions `node` opened that exist now (pending and active).
    pub fn key_sessions(&self, node: &NodeId) -> usize {
        self.keys.get(node).map_or(0, |k| k.sessions)
    }

    /// Node keys the table keeps state for.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    pub fn is_reserved(&self, node: &NodeId) -> bool {
        self.reachable.contains_key(node)
    }

    /// Whether this client holds its node's reservation.
    pub fn client_reserved(&self, client: ClientId) -> bool {
        self.clients.get(&client).is_some_and(|c| self.reachable.get(&c.node) == Some(&client))
    }

    /// The control connection went away: its reservation and sessions end.
    pub fn disconnect(&mut self, client: ClientId) -> Vec<Ended> {
        let Some(c) = self.clients.remove(&client) else { return Vec::new() };
        if self.reachable.get(&c.node) == Some(&client) {
            self.reachable.remove(&c.node);
        }
        if let Some(k) = self.keys.get_mut(&c.node) {
            k.clients = k.clients.saturating_sub(1);
            k.reserved.retain(|r| *r != client);
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
        if self.sessions.contains_key(&session) {
            return Err(Refusal::BadRequest);
        }
        let Some(b) = self.clients.get(&b_client) else { return Err(Refusal::NoReservation) };
        let Some(k) = self.keys.get_mut(&a.node) else { return Err(Refusal::BadRequest) };
        // The key's own shares first: a key at its cap is told so even when
        // the relay is full, and a refused open still costs a token (a key
        // cannot probe for free).
        if !k.opens.allow(now) {
            return Err(Refusal::RateLimited);
        }
        if k.sessions >= self.limits.max_sessions_per_key {
            return Err(Refusal::TooManySessions);
        }
        if k.pending >= self.limits.max_pending_per_key {
            return Err(Refusal::TooManyPending);
        }
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(Refusal::MaxSessions);
        }
        k.sessions += 1;
        k.pending += 1;
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
        if let Some(k) = self.keys.get_mut(&s.a) {
            k.pending = k.pending.saturating_sub(1);
        }
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
                            Some(b) if len <= SMALL_FRAME => b.charge(now, len, 2 * max_wait).then_some(Duration::ZERO),
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
        let pending_timeout = self.limits.pending_timeout;
        self.keys.retain(|_, k| k.clients > 0 || k.sessions > 0 || !k.opens.is_full(now));
        // Active: idle since the last frame; pending: since the open.
        let due: Vec<RelaySessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                let (since, limit) = if s.active { (s.last, timeout) } else { (s.since, pending_timeout) };
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
        for k in self.keys.values_mut() {
            k.reserved.clear();
        }
        let ids: Vec<RelaySessionId> = self.sessions.keys().copied().collect();
        ids.into_iter().filter_map(|id| self.end(id, EndReason::Disabled)).collect()
    }

    /// Relays again, with `limits` (the keys' opens buckets take the new
    /// rate at once).
    pub fn enable(&mut self, limits: Limits) {
        self.disabled = false;
        for k in self.keys.values_mut() {
            k.opens.set(limits.max_opens_per_minute, MINUTE);
        }
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
        if let Some(k) = self.keys.get_mut(&s.a) {
            k.sessions = k.sessions.saturating_sub(1);
            if !s.active {
                k.pending = k.pending.saturating_sub(1);
            }
        }
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
