//! Sans-IO UDP hole punching (simultaneous open), in the style of
//! [`crate::detect`]: the runtime owns the sockets and the clock and drives a
//! [`Punch`] with datagrams and `Instant`s.
//!
//! # Driving it
//!
//! ```text
//! let mut p = Punch::new(cfg, now);            // when the "go" is sent/received
//! loop {
//!     while let Some(t) = p.poll_transmit(now) { send t.payload from socket t.socket to t.dst }
//!     if let Some(r) = p.poll_result() { break r }
//!     wait until p.poll_timeout() or a datagram arrives, then either
//!         p.handle_datagram(now, socket, from, &bytes)  // false: not ours, offer it elsewhere
//!     or  p.handle_timeout(now)
//! }
//! // keep feeding datagrams for a while (or use `answer_request`) so the
//! // peer, which may finish a little later, still gets answers.
//! ```
//!
//! # Wire format
//!
//! Punch packets are STUN Binding requests with a PUNCH-TOKEN attribute
//! ([`crate::stun::PunchToken`]: session id, sender NodeId, flags) and
//! FINGERPRINT, so the node's single socket demultiplexes them like any
//! STUN (ICE connectivity checks do the same, RFC 8445 §7.2). The answer is a
//! Binding success response with XOR-MAPPED-ADDRESS (where the request came
//! from: our reflexive address on that path) and the answerer's token.
//! Packets of another session are left to the caller (`false`, counted);
//! packets of our session from another sender are dropped (counted).
//!
//! # Timing in RTT terms
//!
//! Both sides must send at about the same moment, before either NAT's
//! filter drops the other's first packets for too long. Wall clocks of two
//! hosts cannot be compared, round trips can: the initiator sends the "go"
//! through the rendezvous and starts `rendezvous_rtt / 2` later, about when
//! the responder receives the go and starts at once. Retransmissions every
//! `retry_interval` cover the remaining skew.
//!
//! # Which path wins
//!
//! A path is (local socket, remote address). Every valid request is
//! answered, and a request on a path we have not yet confirmed triggers one
//! of ours on the same path at once (ICE's triggered check); a request or
//! answer from an address we did not aim at adds that path (a peer-reflexive
//! candidate: how a random-port peer's real port is learned).
//!
//! The initiator (ICE's controlling agent) takes the first path on which its
//! request was answered *and* the peer's request was seen: both directions
//! work and the peer is punching on it. It then nominates the path (a few
//! requests with the NOMINATE flag, and the flag on every later answer on
//! it). The responder takes the path the initiator nominated, once its own
//! request there was answered. So both sides end on the same 5-tuple even
//! when several paths work (several candidates, several sockets).
//!
//! # Birthday probing
//!
//! On the easy side, [`BirthdayProbe`] makes the machine probe distinct
//! random ports of the hard side's IP (seeded permutation, one attempt
//! each), starting once the hard side has had time to open its sockets. The
//! hard side needs nothing special: one target per socket, all aimed at the
//! easy side's endpoint. [`BirthdaySchedule`] configures both sides alike. Every request (probes included) respects
//! `rate_pps`; answers do not count against it, since each one answers a
//! request of the peer, which is rate-capped on its side.
//!
//! # Only where the peer really is
//!
//! A peer names most of our targets itself (predicted ports, candidates),
//! and a hostile one names a third party's. With [`Verify`] set (the
//! runtime always sets it), a path is *verified* when its address is one
//! the rendezvous saw the peer at ([`Verify::known`]) or once it answered
//! one of our requests (the answer echoes our transaction id and carries
//! the peer's token: the peer receives there). Until then the path gets at
//! most [`Verify::requests`] requests of its own plan, plus one triggered
//! check per request received from it (each answered 1:1); a verified path
//! gets its whole plan. That single request is what opens our own filter
//! for a predicted port, which is all a punch needs from us before the
//! peer's own packets arrive from there; birthday probes are one request
//! per port anyway.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::port_predictor::BirthdayPorts;
use crate::stun::{is_stun, Attribute, Class, Message, PunchToken, TransactionId, METHOD_BINDING};

mod birthday;
pub use birthday::{BirthdaySchedule, HARD_ATTEMPTS, STANDARD_TARGET};

/// A node's identity (32 bytes).
pub use crate::id::NodeId;
/// Punch session id, shared by both peers through the rendezvous.
pub use crate::id::SessionId;

/// Nominating requests the initiator sends on the winning path.
const NOMINATIONS: u32 = 3;
/// Answers waiting to be sent; beyond this, new ones are dropped (the peer
/// retransmits).
const MAX_QUEUED_ANSWERS: usize = 256;
/// Paths learned from the peer's packets (peer-reflexive), at most.
const MAX_PEER_REFLEXIVE: usize = 1024;
/// Extra requests an answered but not yet nominated responder path gets,
/// so a lost nomination is recovered by the initiator's flagged answers.
const RESPONDER_KEEPALIVES: u32 = 4;

/// Our part in the punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Asked for the connection, sent the go; decides the path.
    Initiator,
    /// Received the go; follows the initiator's nomination.
    Responder,
}

/// A datagram the runtime must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Index of the local socket to send from (the runtime's numbering;
    /// 0 is usually the node's primary socket).
    pub socket: usize,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// Birthday probing, easy side: probe random ports of the hard side's IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BirthdayProbe {
    /// Local socket the probes leave from.
    pub socket: usize,
    /// The hard side's public IP.
    pub peer_ip: IpAddr,
    /// Number of distinct ports to probe (see
    /// [`crate::port_predictor::plan_birthday`]).
    pub probes: u32,
    /// Delay after the start before probing, so that the hard side's
    /// mappings exist (its sockets / rate cap).
    pub start_after: Duration,
}

/// Punch parameters.
#[derive(Clone, Debug)]
pub struct PunchConfig {
    pub role: Role,
    pub our_id: NodeId,
    pub peer_id: NodeId,
    pub session: SessionId,
    /// `(local socket, remote address)` paths to punch, most likely first:
    /// the peer's reflexive address and/or predicted ports (see
    /// [`crate::port_predictor`]) crossed with the sockets we punch from.
    pub targets: Vec<(usize, SocketAddr)>,
    /// Round trip between the two peers through the rendezvous (go and its
    /// acknowledgement); the initiator starts half of it after the go.
    pub rendezvous_rtt: Duration,
    /// Time between transmissions of one path.
    pub retry_interval: Duration,
    /// Transmissions of one planned path.
    pub max_attempts: u32,
    /// Give up this long after the start.
    pub timeout: Duration,
    /// Requests per second, all paths together (at least 1).
    pub rate_pps: u32,
    pub birthday: Option<BirthdayProbe>,
    /// Seeds the birthday probe ports: give it real entropy.
    pub seed: u64,
    /// Where transaction ids come from: the runtime sets a CSPRNG (see
    /// [`crate::rng`]); the default, seeded from 0, is for tests.
    pub txids: crate::rng::Txids,
    /// Which addresses may get the whole plan before they answer (see the
    /// module docs); `None`: every target does (tests and simulations of
    /// the machine alone).
    pub verify: Option<Verify>,
    /// Happy eyeballs: when the targets hold both families, IPv4 paths
    /// start this long after IPv6 ones, so a working IPv6 path answers
    /// first and wins (see `connect::family`). Zero: all start together.
    pub ipv4_lag: Duration,
}

/// What a punch may send towards an address before it has answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verify {
    /// Where the peer is known to be (the rendezvous saw it there).
    pub known: Vec<SocketAddr>,
    /// Requests of its plan an unverified path gets.
    pub requests: u32,
}

/// Requests an unverified path gets before it answers: one opens our own
/// filter for the peer's packets; more would be sent at an address the
/// peer merely claims (84 bytes each).
pub const UNVERIFIED_REQUESTS: u32 = 1;

impl Verify {
    /// Only `known` is trusted; others get [`UNVERIFIED_REQUESTS`].
    pub fn known(known: Vec<SocketAddr>) -> Verify {
        Verify { known, requests: UNVERIFIED_REQUESTS }
    }
}

impl PunchConfig {
    /// Defaults derived from the rendezvous RTT: retry every half RTT (20 ms
    /// to 200 ms), 10 attempts per path, 200 requests per second, a timeout
    /// covering all attempts plus two RTTs of skew (at least 2 s).
    pub fn new(
        role: Role,
        our_id: NodeId,
        peer_id: NodeId,
        session: SessionId,
        targets: Vec<(usize, SocketAddr)>,
        rendezvous_rtt: Duration,
    ) -> PunchConfig {
        let retry_interval = (rendezvous_rtt / 2).clamp(Duration::from_millis(20), Duration::from_millis(200));
        let max_attempts = 10;
        let timeout = (retry_interval * (max_attempts + 4) + rendezvous_rtt * 2).max(Duration::from_secs(2));
        PunchConfig {
            role,
            our_id,
            peer_id,
            session,
            targets,
            rendezvous_rtt,
            retry_interval,
            max_attempts,
            timeout,
            rate_pps: 200,
            birthday: None,
            seed: 0,
            txids: crate::rng::Txids::seeded(0),
            verify: None,
            ipv4_lag: Duration::ZERO,
        }
    }

    /// Wait between creating the machine (go sent / go received) and the
    /// first punch packet.
    pub fn start_delay(&self) -> Duration {
        match self.role {
            Role::Initiator => self.rendezvous_rtt / 2,
            Role::Responder => Duration::ZERO,
        }
    }
}

/// A punched path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PunchSuccess {
    /// Our socket on the path.
    pub socket: usize,
    /// The peer's address on the path.
    pub remote_addr: SocketAddr,
    /// Our address as the peer sees it on this path (its XOR-MAPPED-ADDRESS).
    pub our_reflexive: SocketAddr,
    /// Round trip of the answered request on this path.
    pub rtt: Duration,
}

/// Why punching failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchError {
    /// No path was confirmed before the deadline.
    Timeout,
}

impl fmt::Display for PunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PunchError::Timeout => "hole punching timed out",
        })
    }
}

impl std::error::Error for PunchError {}

/// Counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PunchStats {
    /// Requests sent, probes and nominations included.
    pub requests_sent: u64,
    /// Birthday probes among them.
    pub probes_sent: u64,
    pub answers_sent: u64,
    /// Punch packets of another session (left to the caller).
    pub foreign_session: u64,
    /// Our session, but not sent by the peer (spoofed or reflected).
    pub bad_sender: u64,
    /// Answers to no request of ours.
    pub unknown_transaction: u64,
    /// Answers from another address than the one the request went to.
    pub asymmetric: u64,
    /// Paths learned from where the peer's packets came from.
    pub peer_reflexive: u64,
    /// Answers dropped because the queue was full.
    pub answers_dropped: u64,
    /// Planned requests not sent because their path had not answered
    /// (see [`Verify`]).
    pub unverified_withheld: u64,
}

#[derive(Clone, Debug)]
struct Path {
    socket: usize,
    remote: SocketAddr,
    attempts_left: u32,
    next_send: Option<Instant>,
    /// Listed in `Punch::active`.
    in_active: bool,
    /// Due as a triggered check: goes before ordinary retransmissions, which
    /// may be backed up behind the rate cap (a birthday hard side has
    /// hundreds of them).
    triggered: bool,
    last_sent: Option<Instant>,
    /// Our reflexive address and the RTT, once our request was answered.
    answered: Option<(SocketAddr, Duration)>,
    seen_request: bool,
    nominated: bool,
    /// Requests of the plan withheld until the path answers (see [`Verify`]).
    withheld: u32,
}

#[derive(Clone, Debug)]
struct Probing {
    socket: usize,
    ip: IpAddr,
    left: u32,
    ports: BirthdayPorts,
    at: Instant,
}

/// The hole-punch state machine. See the module docs.
#[derive(Debug)]
pub struct Punch {
    cfg: PunchConfig,
    deadline: Instant,
    txids: crate::rng::Txids,
    paths: Vec<Path>,
    /// Paths that may have a send scheduled (a superset, pruned lazily):
    /// birthday probing creates tens of thousands of one-shot paths, and
    /// scanning them all on every poll would be quadratic.
    active: Vec<usize>,
    /// Paths whose request was answered, in order: the win candidates.
    answered: Vec<usize>,
    /// Every transmission gets its own transaction id (as ICE checks do),
    /// so an answer names the transmission it answers: exact RTT even when
    /// early transmissions were dropped by the peer's NAT (Karn's problem).
    by_tid: HashMap<TransactionId, (usize, Instant)>,
    by_addr: HashMap<(usize, SocketAddr), usize>,
    answers: VecDeque<Transmit>,
    /// Latest `now` we were given: queued answers are due at it.
    last_now: Instant,
    /// Rate cap: no request before this.
    next_allowed: Option<Instant>,
    gap: Duration,
    probing: Option<Probing>,
    peer_reflexive: usize,
    /// Addresses that answered a request of ours (see [`Verify`]).
    verified: std::collections::HashSet<SocketAddr>,
    winner: Option<usize>,
    nominations_left: u32,
    next_nomination: Option<Instant>,
    result: Option<Result<PunchSuccess, PunchError>>,
    finished: bool,
    stats: PunchStats,
}

impl Punch {
    /// Start a punch at `now` (go sent for the initiator, go received for
    /// the responder).
    pub fn new(cfg: PunchConfig, now: Instant) -> Punch {
        let start = now + cfg.start_delay();
        let gap = Duration::from_secs(1) / cfg.rate_pps.max(1);
        let probing = cfg.birthday.map(|b| Probing {
            socket: b.socket,
            ip: b.peer_ip,
            left: b.probes,
            ports: BirthdayPorts::new(cfg.seed ^ 0x6269_7274_6864_6179),
            at: start + b.start_after,
        });
        let mut p = Punch {
            deadline: start + cfg.timeout,
            txids: cfg.txids,
            paths: Vec::new(),
            active: Vec::new(),
            answered: Vec::new(),
            by_tid: HashMap::new(),
            by_addr: HashMap::new(),
            answers: VecDeque::new(),
            last_now: now,
            next_allowed: None,
            gap,
            probing,
            peer_reflexive: 0,
            verified: std::collections::HashSet::new(),
            winner: None,
            nominations_left: 0,
            next_nomination: None,
            result: None,
            finished: false,
            stats: PunchStats::default(),
            cfg,
        };
        let attempts = p.cfg.max_attempts.max(1);
        let dual = p.cfg.targets.iter().any(|(_, a)| a.is_ipv6()) && p.cfg.targets.iter().any(|(_, a)| a.is_ipv4());
        for (socket, remote) in p.cfg.targets.clone() {
            let at = if dual && remote.is_ipv4() { start + p.cfg.ipv4_lag } else { start };
            p.add_path(socket, remote, Some(at), attempts);
        }
        p
    }

    /// Next datagram to send at `now`, if any. Answers first (they bypass
    /// the rate cap), then due requests.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.last_now = self.last_now.max(now);
        if let Some(t) = self.answers.pop_front() {
            self.stats.answers_sent += 1;
            return Some(t);
        }
        if self.next_allowed.is_some_and(|t| now < t) {
            return None;
        }
        if self.finished {
            return self.send_nomination(now);
        }
        self.prune();
        let due_where = |triggered: bool| {
            self.active
                .iter()
                .map(|&i| (i, &self.paths[i]))
                .filter(|(_, p)| p.triggered == triggered)
                .filter_map(|(i, p)| p.next_send.filter(|t| *t <= now).map(|t| (t, i)))
                .min()
        };
        if let Some((_, i)) = due_where(true) {
            return Some(self.send_request(i, now, 0));
        }
        let due = due_where(false);
        let probe_due = self.probing.as_ref().filter(|b| b.left > 0 && b.at <= now).map(|b| b.at);
        let idx = match (due, probe_due) {
            (Some((t, i)), Some(pt)) if t <= pt => i,
            (Some((_, i)), None) => i,
            (_, Some(_)) => self.new_probe(now)?,
            (None, None) => return None,
        };
        Some(self.send_request(idx, now, 0))
    }

    /// Feed a datagram received on local socket `socket` from `from`.
    /// Returns true if it belongs to this punch (consumed), false if the
    /// runtime should offer it to someone else (not STUN, not a punch
    /// packet, or another session). Never panics, whatever the bytes.
    pub fn handle_datagram(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]) -> bool {
        self.last_now = self.last_now.max(now);
        let Some((msg, tok)) = parse(data) else { return false };
        if tok.session != self.cfg.session {
            self.stats.foreign_session += 1;
            return false;
        }
        if tok.sender != self.cfg.peer_id {
            self.stats.bad_sender += 1;
            return true;
        }
        match msg.class {
            Class::Request => self.on_request(now, socket, from, &msg, tok),
            Class::SuccessResponse => self.on_answer(now, socket, from, &msg, tok),
            // Error responses and indications carry nothing we act on.
            _ => {}
        }
        true
    }

    /// Earliest instant at which [`Punch::poll_transmit`] or
    /// [`Punch::handle_timeout`] has something to do; `None` when finished
    /// with nothing left to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.answers.is_empty() {
            return Some(self.last_now);
        }
        let gate = |t: Instant| self.next_allowed.map_or(t, |g| g.max(t));
        if self.finished {
            return match (self.nominations_left, self.next_nomination) {
                (n, Some(t)) if n > 0 => Some(gate(t)),
                _ => None,
            };
        }
        let mut t = self.deadline;
        for &i in &self.active {
            if let Some(n) = self.paths[i].next_send {
                t = t.min(gate(n));
            }
        }
        if let Some(b) = self.probing.as_ref().filter(|b| b.left > 0) {
            t = t.min(gate(b.at));
        }
        Some(t)
    }

    /// Process timers due at `now` (the deadline).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if !self.finished && now >= self.deadline {
            self.finish(Err(PunchError::Timeout));
        }
    }

    /// The outcome, once: `Some` exactly one time, then `None`.
    pub fn poll_result(&mut self) -> Option<Result<PunchSuccess, PunchError>> {
        self.result.take()
    }

    /// True once an outcome was produced (taken or not). A finished machine
    /// still answers the peer's requests.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn stats(&self) -> PunchStats {
        self.stats
    }

    // ----------------------------------------------------------------------

    fn fresh_tid(&mut self) -> TransactionId {
        loop {
            let tid = self.txids.next();
            if !self.by_tid.contains_key(&tid) {
                return tid;
            }
        }
    }

    fn add_path(&mut self, socket: usize, remote: SocketAddr, next_send: Option<Instant>, attempts: u32) -> usize {
        if let Some(&i) = self.by_addr.get(&(socket, remote)) {
            return i;
        }
        let allowed = match &self.cfg.verify {
            Some(v) if !v.known.contains(&remote) && !self.verified.contains(&remote) => attempts.min(v.requests),
            _ => attempts,
        };
        self.stats.unverified_withheld += u64::from(attempts - allowed);
        self.paths.push(Path {
            socket,
            remote,
            attempts_left: allowed,
            withheld: attempts - allowed,
            next_send: None,
            in_active: false,
            triggered: false,
            last_sent: None,
            answered: None,
            seen_request: false,
            nominated: false,
        });
        let i = self.paths.len() - 1;
        self.by_addr.insert((socket, remote), i);
        if let Some(at) = next_send {
            self.schedule(i, at);
        }
        i
    }

    fn schedule(&mut self, i: usize, at: Instant) {
        let p = &mut self.paths[i];
        p.next_send = Some(at);
        if !p.in_active {
            p.in_active = true;
            self.active.push(i);
        }
    }

    fn prune(&mut self) {
        let paths = &mut self.paths;
        self.active.retain(|&i| {
            let keep = paths[i].next_send.is_some();
            paths[i].in_active = keep;
            keep
        });
    }

    /// A path to where the peer's packet came from, probed at once.
    fn add_peer_reflexive(&mut self, socket: usize, remote: SocketAddr, now: Instant) -> Option<usize> {
        if let Some(&i) = self.by_addr.get(&(socket, remote)) {
            return Some(i);
        }
        if self.peer_reflexive >= MAX_PEER_REFLEXIVE {
            return None;
        }
        self.peer_reflexive += 1;
        self.stats.peer_reflexive += 1;
        Some(self.add_path(socket, remote, Some(now), self.cfg.max_attempts.max(1)))
    }

    fn new_probe(&mut self, now: Instant) -> Option<usize> {
        let b = self.probing.as_mut()?;
        b.left = b.left.saturating_sub(1);
        let (socket, ip) = (b.socket, b.ip);
        // Skip ports we already punch (a planned or learned path).
        let port = loop {
            let Some(port) = b.ports.next() else {
                // Every port of the range was probed: nothing left to try.
                b.left = 0;
                return None;
            };
            if !self.by_addr.contains_key(&(socket, SocketAddr::new(ip, port))) {
                break port;
            }
        };
        self.stats.probes_sent += 1;
        // One attempt: another fresh port is worth more than a repeat.
        Some(self.add_path(socket, SocketAddr::new(ip, port), Some(now), 1))
    }

    fn token(&self, flags: u8) -> PunchToken {
        PunchToken { session: self.cfg.session, sender: self.cfg.our_id, flags }
    }

    fn send_request(&mut self, idx: usize, now: Instant, flags: u8) -> Transmit {
        let tok = self.token(flags);
        let retry = self.cfg.retry_interval;
        let tid = self.fresh_tid();
        self.by_tid.insert(tid, (idx, now));
        let p = &mut self.paths[idx];
        p.attempts_left = p.attempts_left.saturating_sub(1);
        p.last_sent = Some(now);
        p.triggered = false;
        p.next_send = (p.attempts_left > 0).then(|| now + retry);
        let payload = Message::binding_request(tid).with(Attribute::PunchToken(tok)).with_fingerprint().encode();
        let t = Transmit { socket: p.socket, dst: p.remote, payload };
        self.pace(now);
        self.stats.requests_sent += 1;
        t
    }

    /// Books the next request slot after a request sent at `now`. Slots
    /// follow a grid `gap` apart rather than `gap` after each send: a runtime
    /// timer that wakes a little late (1 ms ticks, a busy core) would
    /// otherwise lose that lateness on every request (measured in the lab:
    /// 130-160 of 200 requests per second). At most one gap of lateness is
    /// made up, so no one-second window holds more than `rate_pps + 1`.
    fn pace(&mut self, now: Instant) {
        let floor = now.checked_sub(self.gap).unwrap_or(now);
        let base = self.next_allowed.map_or(now, |t| t.max(floor));
        self.next_allowed = Some(base + self.gap);
    }

    fn send_nomination(&mut self, now: Instant) -> Option<Transmit> {
        let w = self.winner?;
        if self.nominations_left == 0 || self.next_nomination.map_or(true, |t| t > now) {
            return None;
        }
        self.nominations_left -= 1;
        self.next_nomination = (self.nominations_left > 0).then(|| now + self.cfg.retry_interval);
        let tok = self.token(PunchToken::NOMINATE);
        let tid = self.fresh_tid();
        self.by_tid.insert(tid, (w, now));
        let (socket, dst) = (self.paths[w].socket, self.paths[w].remote);
        let payload = Message::binding_request(tid).with(Attribute::PunchToken(tok)).with_fingerprint().encode();
        self.pace(now);
        self.stats.requests_sent += 1;
        Some(Transmit { socket, dst, payload })
    }

    fn on_request(&mut self, now: Instant, socket: usize, from: SocketAddr, msg: &Message, tok: PunchToken) {
        let on_winner = self.winner.is_some_and(|w| self.paths[w].socket == socket && self.paths[w].remote == from);
        let flags = if on_winner && self.cfg.role == Role::Initiator { PunchToken::NOMINATE } else { 0 };
        if self.answers.len() < MAX_QUEUED_ANSWERS {
            let payload = answer_bytes(msg.transaction_id, from, self.token(flags));
            self.answers.push_back(Transmit { socket, dst: from, payload });
        } else {
            self.stats.answers_dropped += 1;
        }
        if self.finished {
            return;
        }
        let Some(i) = self.add_peer_reflexive_or_existing(socket, from, now) else { return };
        let p = &mut self.paths[i];
        p.seen_request = true;
        if tok.nominate() && self.cfg.role == Role::Responder {
            p.nominated = true;
        }
        self.trigger(i, now);
        self.check_win(now);
    }

    /// Triggered check (RFC 8445 §7.3.1.4): the peer just showed it can
    /// reach us on this path, so probe it now rather than at the next retry
    /// (unless it is confirmed already or we just did).
    fn trigger(&mut self, i: usize, now: Instant) {
        let quarter = self.cfg.retry_interval / 4;
        let p = &mut self.paths[i];
        if p.answered.is_none() && p.last_sent.map_or(true, |t| now.saturating_duration_since(t) >= quarter) {
            p.attempts_left = p.attempts_left.max(1);
            p.triggered = true;
            self.schedule(i, now);
        }
    }

    fn add_peer_reflexive_or_existing(&mut self, socket: usize, from: SocketAddr, now: Instant) -> Option<usize> {
        match self.by_addr.get(&(socket, from)) {
            Some(&i) => Some(i),
            None => self.add_peer_reflexive(socket, from, now),
        }
    }

    fn on_answer(&mut self, now: Instant, socket: usize, from: SocketAddr, msg: &Message, tok: PunchToken) {
        let Some(&(i, sent_at)) = self.by_tid.get(&msg.transaction_id) else {
            self.stats.unknown_transaction += 1;
            return;
        };
        if self.finished {
            return;
        }
        if self.paths[i].socket != socket || self.paths[i].remote != from {
            // The peer reached us from another address than we aimed at:
            // a port we could not predict. Punch that one.
            self.stats.asymmetric += 1;
            if let Some(j) = self.add_peer_reflexive_or_existing(socket, from, now) {
                self.trigger(j, now);
            }
            return;
        }
        let Some(reflexive) = msg.mapped_address() else { return };
        let retry = self.cfg.retry_interval;
        let role = self.cfg.role;
        self.verify(from);
        if self.paths[i].answered.is_none() {
            self.paths[i].answered = Some((reflexive, now.saturating_duration_since(sent_at)));
            self.answered.push(i);
        }
        let p = &mut self.paths[i];
        if tok.nominate() && role == Role::Responder {
            p.nominated = true;
        }
        match role {
            // Confirmed; the peer's request will come (it triggers one when
            // it sees ours).
            Role::Initiator => p.next_send = None,
            // Keep asking until the initiator's choice arrives, flagged on
            // its answers, in case its nominating requests are lost.
            Role::Responder if !p.nominated => {
                p.attempts_left = p.attempts_left.max(RESPONDER_KEEPALIVES);
                if p.next_send.is_none() {
                    self.schedule(i, now + retry);
                }
            }
            Role::Responder => {}
        }
        self.check_win(now);
    }

    /// `addr` answered a request of ours: its paths get back what was
    /// withheld from their plan (scheduled at their next retry, or now).
    fn verify(&mut self, addr: SocketAddr) {
        if self.cfg.verify.is_none() || !self.verified.insert(addr) {
            return;
        }
        let now = self.last_now;
        let retry = self.cfg.retry_interval;
        let owed: Vec<usize> = (0..self.paths.len()).filter(|&j| self.paths[j].remote == addr && self.paths[j].withheld > 0).collect();
        for j in owed {
            let p = &mut self.paths[j];
            p.attempts_left += std::mem::take(&mut p.withheld);
            if p.answered.is_none() && p.next_send.is_none() {
                let at = p.last_sent.map_or(now, |t| t + retry).max(now);
                self.schedule(j, at);
            }
        }
    }

    fn check_win(&mut self, now: Instant) {
        let role = self.cfg.role;
        let win = self
            .answered
            .iter()
            .copied()
            .filter(|&i| match role {
                Role::Initiator => self.paths[i].seen_request,
                Role::Responder => self.paths[i].nominated,
            })
            .min();
        let Some(i) = win else { return };
        let p = &self.paths[i];
        let Some((our_reflexive, rtt)) = p.answered else { return };
        let success = PunchSuccess { socket: p.socket, remote_addr: p.remote, our_reflexive, rtt };
        self.winner = Some(i);
        if self.cfg.role == Role::Initiator {
            self.nominations_left = NOMINATIONS;
            self.next_nomination = Some(now);
        }
        self.finish(Ok(success));
    }

    fn finish(&mut self, r: Result<PunchSuccess, PunchError>) {
        self.finished = true;
        self.result = Some(r);
        for &i in &self.active {
            self.paths[i].next_send = None;
            self.paths[i].triggered = false;
        }
        self.prune();
        if let Some(b) = self.probing.as_mut() {
            b.left = 0;
        }
    }
}

/// A Binding message with FINGERPRINT and a PUNCH-TOKEN, or `None`.
fn parse(data: &[u8]) -> Option<(Message, PunchToken)> {
    if !is_stun(data) {
        return None;
    }
    let msg = Message::decode(data).ok()?;
    if msg.method != METHOD_BINDING || !msg.fingerprint {
        return None;
    }
    let tok = msg.punch_token()?;
    Some((msg, tok))
}

fn answer_bytes(tid: TransactionId, from: SocketAddr, tok: PunchToken) -> Vec<u8> {
    Message::new(Class::SuccessResponse, METHOD_BINDING, tid)
        .with(Attribute::XorMappedAddress(from))
        .with(Attribute::PunchToken(tok))
        .with_fingerprint()
        .encode()
}

/// The session a punch packet belongs to, for routing it to the right
/// [`Punch`] when several run on one socket. `None` for anything else.
pub fn session_of(data: &[u8]) -> Option<SessionId> {
    parse(data).map(|(_, t)| t.session)
}

/// The answer to a punch request of `peer_id` in `session`, without a
/// [`Punch`] (e.g. after it finished and was dropped: the peer may still be
/// confirming the path). `nominate` flags the answer as being on the chosen
/// path (initiator only). `None` if `data` is not such a request.
pub fn answer_request(
    data: &[u8],
    from: SocketAddr,
    session: &SessionId,
    our_id: &NodeId,
    peer_id: &NodeId,
    nominate: bool,
) -> Option<Vec<u8>> {
    let (msg, tok) = parse(data)?;
    if msg.class != Class::Request || tok.session != *session || tok.sender != *peer_id {
        return None;
    }
    let flags = if nominate { PunchToken::NOMINATE } else { 0 };
    Some(answer_bytes(msg.transaction_id, from, PunchToken { session: *session, sender: *our_id, flags }))
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
