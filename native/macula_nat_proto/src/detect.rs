//! Sans-IO NAT behaviour detection (RFC 5780 tests plus NATCracker
//! allocation), in the style of `quinn-proto`: the runtime owns sockets and
//! timers and drives a [`Detection`] with datagrams and `Instant`s.
//!
//! # Driving it
//!
//! ```text
//! let mut d = Detection::new(cfg, local_addr_of_primary_socket, now, txids);
//! for n in 0..d.probe_sockets_needed() {      // open extra UDP sockets
//!     d.set_probe_local_addr(n, probe_socket[n].local_addr());
//! }
//! loop {
//!     while let Some(t) = d.poll_transmit(now) { send t.payload on t.socket to t.dst }
//!     if let Some(r) = d.poll_result() { break r }
//!     wait until d.poll_timeout() or a datagram arrives, then either
//!         d.handle_datagram(socket, from, &bytes, now)   // STUN on any of our sockets
//!     or  d.handle_timeout(now)
//! }
//! ```
//!
//! # Schedule (why it is fast and why it is correct)
//!
//! * t=0: Binding (test I) from the primary socket to every observer, and
//!   the two filtering tests (CHANGE-REQUEST ip+port, port only) from the
//!   filter socket (see below) to the designated *filtering observer*
//!   (observer 1 if there are two or more, else observer 0).
//! * t=1 RTT (first test I answer): one Binding from each probe socket to a
//!   live observer (not earlier: a fresh socket's first mapping is the only
//!   one that shows port preservation, it must not go to a dead observer),
//!   and, once test I answered with OTHER-ADDRESS, tests II/III (and IV,
//!   the crossed primary-IP/alternate-port address, which both corroborates
//!   the mapping verdict and adds a fresh mapping to the allocation series)
//!   to the *mapping observer*.
//! * Mapping and filtering tests must not meet on one socket: once it has
//!   sent to the alternate IP (test II) or the alternate IP:port (test III)
//!   of an observer, that observer's changed-address answers pass an
//!   address-dependent filter; and a changed-address answer that the NAT
//!   refuses can still leave conntrack state on a plain Linux router (no
//!   rule on its input chain) that makes a later test towards the same
//!   address leave from another public port. So by default the filtering
//!   tests run on a fresh socket of their own ([`DetectConfig::filter_socket`])
//!   concurrently with tests II-IV (about 2 RTT, bounded by the filtering
//!   wait). Without it, tests II-IV never go to the observer used for
//!   filtering while filtering is undecided: with two observers both still
//!   run concurrently; with one, tests II-IV wait until filtering is decided.
//! * A mapping seen at one public address from two remote IPs is endpoint
//!   independent even if a third destination saw another port: no HD or PD
//!   NAT does that, a conntrack clash on a Linux router does; such a verdict
//!   has medium confidence.
//! * Across detections on one socket the runtime passes what earlier runs
//!   sent to ([`DetectConfig::opened`]): a filter permission those left
//!   could explain an answer, so such answers are not evidence (silence
//!   still is), the verdict may be only a conservative bound
//!   ([`Detection::filtering_measured`]), and mappings they created are
//!   left out of the allocation series.
//! * "No answer" to a filtering test is decided after
//!   `max(3 * best RTT, min_wait)` with retransmissions every quarter of it.
//!   Probes that are expected to answer use RFC 8489 retransmission (RTO
//!   doubling, at most `max_transmits`) and are given up after twice that;
//!   tests II-IV and the allocation probes four times that while none of
//!   their group has answered, since without them the verdict is a guess.
//!   Silence to a filtering test counts only once the observer has
//!   answered a plain request sent during the wait (a stalled observer).
//! * All mapping probes leave from [`SocketId::Primary`]: the socket that
//!   will later punch and carry QUIC is the one measured. Probe sockets only
//!   measure the allocation policy across fresh mappings, the filter socket
//!   only the NAT's filtering.
//!
//! # Allocation
//!
//! Once the mapping behaviour is known we know which sends created a fresh
//! mapping (per socket for EI, per socket and destination IP for HD, per
//! socket and destination for PD). Ordered by first transmission they give a
//! series of public ports: PP if the first mapping of every socket kept its
//! local port, PC if consecutive mappings differ by a constant delta
//! (normalised over mappings whose answer was lost), RD otherwise. For PD
//! mapping the primary socket alone yields several fresh mappings; for EI/HD
//! the probe sockets provide them. Probe sockets are requested up front
//! because waiting for the mapping verdict would cost a round trip.
//!
//! Servers without RFC 5780 support (no OTHER-ADDRESS) degrade gracefully:
//! mapping is decided by comparing what different observers saw (equal =>
//! EI, else conservatively PD), filtering is unknown and reported as PD, and
//! confidence is Low.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::nat::{Allocation, Confidence, Filtering, Mapping, NatProfile};
use crate::stun::{Attribute, Class, Message, TransactionId, METHOD_BINDING};

/// Which of the runtime's sockets a datagram leaves from / arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketId {
    /// The node's one long-lived UDP socket (later punches and carries QUIC).
    Primary,
    /// Extra ephemeral socket `n` (0-based), see
    /// [`Detection::probe_sockets_needed`].
    Probe(usize),
    /// A fresh socket that carries only the filtering tests (and their
    /// control requests), see [`DetectConfig::filter_socket`].
    Filter,
}

/// A datagram the runtime must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub socket: SocketId,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// Why detection produced no profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectError {
    /// No observer answered before the deadline.
    Timeout,
    /// The configuration listed no observers.
    NoObservers,
}

impl fmt::Display for DetectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DetectError::Timeout => "no observer answered",
            DetectError::NoObservers => "no observers configured",
        })
    }
}

impl std::error::Error for DetectError {}

/// How many times the usual answer wait tests II-IV (and the allocation
/// probes) get while none of them has answered. Under load (a starved
/// observer or runtime) all can miss the usual wait; four times it costs a
/// broken alternate address about 1.2 s more at the 200 ms floor.
const PATIENCE: u32 = 4;

/// Detection parameters.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// Primary addresses of the observers. Observer 0 is preferred for the
    /// mapping tests, observer 1 (if any) for the filtering tests.
    pub observers: Vec<SocketAddr>,
    /// Hard deadline for the whole detection. Must exceed the filtering
    /// wait plus two round trips (`max(3 RTT, min_wait) + 2 RTT`), else a
    /// partial verdict with lower confidence is returned at the deadline.
    pub timeout: Duration,
    /// Initial retransmission timeout (doubles on each retransmission).
    pub rto: Duration,
    /// Maximum transmissions of one request (RFC 8489 `Rc`).
    pub max_transmits: u32,
    /// Floor of the "no answer" wait, whatever the measured RTT.
    pub min_wait: Duration,
    /// Number of extra probe sockets requested for allocation detection.
    pub allocation_probes: usize,
    /// Destinations the primary socket sent to before this detection,
    /// recently enough that the NAT may still hold filter permissions for
    /// them: typically an earlier detection's tests II-IV (see
    /// [`Detection::primary_destinations`]). Such a permission lets a
    /// filtering test's answer through whatever the NAT's filtering, so an
    /// answer it could explain is not counted as evidence.
    pub opened: Vec<SocketAddr>,
    /// Run the filtering tests from a fresh socket of their own
    /// ([`SocketId::Filter`], opened by the runtime for this detection)
    /// instead of the primary one. On a single socket no order of the tests
    /// is clean: filtering first, a refused changed-address answer makes a
    /// plain Linux router (no rule on its input chain) confirm an inbound
    /// conntrack entry for (alternate address -> public port), so test III
    /// towards that alternate address leaves from another public port and an
    /// endpoint-independent mapping reads as per-destination; mapping first,
    /// tests II-IV open the filter the filtering tests measure. On its own
    /// socket the filter only ever sent to the observer's primary address,
    /// exactly the permission the tests assume, and the primary socket never
    /// receives an answer it did not ask for. Filtering is a property of the
    /// NAT, not of one mapping, so measuring it on a sibling mapping is the
    /// same measurement. Default `true`.
    pub filter_socket: bool,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            observers: Vec::new(),
            timeout: Duration::from_secs(2),
            rto: Duration::from_millis(100),
            max_transmits: 7,
            min_wait: Duration::from_millis(200),
            allocation_probes: 3,
            opened: Vec::new(),
            filter_socket: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TestI { obs: usize },
    MapII,
    MapIII,
    MapIV,
    FiltIpPort,
    FiltPort,
    /// A plain request to the filtering observer during the filtering wait:
    /// its answer shows the observer (and the path) were answering then.
    FiltControl,
    Alloc { slot: usize, obs: usize },
}

impl Kind {
    fn is_filter(self) -> bool {
        matches!(self, Kind::FiltIpPort | Kind::FiltPort)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Answer {
    mapped: SocketAddr,
    other: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Pending,
    Answered(Answer),
    /// Error response, or an answer that proves the test cannot work
    /// (e.g. a CHANGE-REQUEST answered from the unchanged address).
    Failed,
    GaveUp,
}

#[derive(Clone, Debug)]
struct Probe {
    kind: Kind,
    socket: SocketId,
    dst: SocketAddr,
    tid: TransactionId,
    payload: Vec<u8>,
    first_sent: Option<Instant>,
    next_send: Option<Instant>,
    sends: u32,
    rto: Duration,
    state: State,
    answered_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct FiltRun {
    obs: usize,
    ipport: usize,
    port: usize,
    started: Instant,
}

#[derive(Clone, Copy, Debug)]
struct MapRun {
    obs: usize,
    ii: usize,
    iii: usize,
    iv: usize,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    local: Option<SocketAddr>,
    abandoned: bool,
    probes: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Obs {
    Pending,
    Alive { mapped: SocketAddr, other: Option<SocketAddr> },
    Dead,
}

/// The detection state machine. See the module docs for the call sequence.
#[derive(Debug)]
pub struct Detection {
    cfg: DetectConfig,
    local: SocketAddr,
    start: Instant,
    txids: crate::rng::Txids,
    probes: Vec<Probe>,
    /// `(socket, dst)` pairs in order of their first transmission: the order
    /// in which the NAT created mappings.
    first_sends: Vec<(SocketId, SocketAddr)>,
    best_rtt: Option<Duration>,
    test_i: Vec<usize>,
    filt: Option<FiltRun>,
    filt_tried: Vec<usize>,
    /// `Some(None)` = filtering cannot be measured with these observers.
    filtering: Option<Option<Filtering>>,
    /// The strictest filtering consistent with the evidence of a filtering
    /// run that `cfg.opened` made ambiguous; used if no clean run follows.
    filt_bound: Option<Filtering>,
    map: Option<MapRun>,
    slots: Vec<Slot>,
    /// Local address of the filter socket, if the runtime told it.
    filter_local: Option<SocketAddr>,
    result: Option<Result<NatProfile, DetectError>>,
    finished: bool,
}

impl Detection {
    /// Start a detection for the primary socket bound to `local` (pass the
    /// concrete interface address, not 0.0.0.0, or `no_nat` cannot be
    /// recognised). Transaction ids come from `txids`: a CSPRNG on a real
    /// network (see [`crate::rng`]), a seed in simulations.
    pub fn new(cfg: DetectConfig, local: SocketAddr, now: Instant, txids: crate::rng::Txids) -> Detection {
        let mut d = Detection {
            slots: vec![Slot::default(); cfg.allocation_probes],
            cfg,
            local,
            start: now,
            txids,
            probes: Vec::new(),
            first_sends: Vec::new(),
            best_rtt: None,
            test_i: Vec::new(),
            filt: None,
            filt_tried: Vec::new(),
            filtering: None,
            filt_bound: None,
            map: None,
            filter_local: None,
            result: None,
            finished: false,
        };
        if d.cfg.observers.is_empty() {
            d.result = Some(Err(DetectError::NoObservers));
            d.finished = true;
            return d;
        }
        for i in 0..d.cfg.observers.len() {
            let dst = d.cfg.observers[i];
            let p = d.add_probe(Kind::TestI { obs: i }, SocketId::Primary, dst, None, now);
            d.test_i.push(p);
        }
        // Speculative: the filtering observer is the second one if there is
        // one (so mapping tests can run concurrently on the first), else the
        // only one. If it turns out not to support RFC 5780 we move on.
        let f = usize::from(d.cfg.observers.len() > 1);
        d.start_filtering(f, now);
        d
    }

    /// How many extra probe sockets the runtime should open (once, up
    /// front). Their local addresses go to [`Detection::set_probe_local_addr`].
    pub fn probe_sockets_needed(&self) -> usize {
        self.slots.len()
    }

    /// Tell the local address of probe socket `n`. Ignored for an unknown
    /// `n`, a second call for the same `n`, or after the slot was abandoned.
    pub fn set_probe_local_addr(&mut self, n: usize, addr: SocketAddr) {
        if self.finished {
            return;
        }
        let Some(slot) = self.slots.get(n) else { return };
        if slot.local.is_some() || slot.abandoned {
            return;
        }
        self.slots[n].local = Some(addr);
        // The probe itself is created by `step_alloc` once an observer is
        // known to be alive: a fresh socket's first mapping is the only one
        // that shows port preservation, so it must not be wasted on an
        // observer that may be dead. This is off the critical path (mapping
        // tests II-IV start at the same moment).
        if let Some(obs) = self.preferred_alive() {
            let start = self.start;
            self.add_alloc_probe(n, obs, start);
        }
    }

    /// Tell the local address of the filter socket
    /// ([`DetectConfig::filter_socket`]); its first mapping then also shows
    /// whether the NAT preserves ports.
    pub fn set_filter_local_addr(&mut self, addr: SocketAddr) {
        self.filter_local = Some(addr);
    }

    fn add_alloc_probe(&mut self, slot: usize, obs: usize, now: Instant) {
        let dst = self.cfg.observers[obs];
        let p = self.add_probe(Kind::Alloc { slot, obs }, SocketId::Probe(slot), dst, None, now);
        self.slots[slot].probes.push(p);
    }

    /// Next datagram to send, if any is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.finished {
            return None;
        }
        let idx = self
            .probes
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == State::Pending)
            .filter_map(|(i, p)| p.next_send.filter(|t| *t <= now).map(|t| (t, i)))
            .min()?
            .1;
        let interval = self.filter_interval();
        let max = self.cfg.max_transmits.max(1);
        let p = &mut self.probes[idx];
        if p.first_sent.is_none() {
            p.first_sent = Some(now);
        }
        p.sends += 1;
        p.next_send = if p.sends >= max || p.kind == Kind::FiltControl {
            // Each control is sent once: its own send time is what counts.
            None
        } else if p.kind.is_filter() {
            Some(now + interval)
        } else {
            let t = now + p.rto;
            p.rto = p.rto.saturating_mul(2);
            Some(t)
        };
        let t = Transmit { socket: p.socket, dst: p.dst, payload: p.payload.clone() };
        if !self.first_sends.contains(&(t.socket, t.dst)) {
            self.first_sends.push((t.socket, t.dst));
        }
        Some(t)
    }

    /// Feed a datagram received on one of our sockets. Returns true if it was
    /// a response to one of our requests (consumed), false otherwise (the
    /// runtime may hand it to someone else).
    pub fn handle_datagram(&mut self, socket: SocketId, from: SocketAddr, data: &[u8], now: Instant) -> bool {
        if self.finished {
            return false;
        }
        let Ok(msg) = Message::decode(data) else { return false };
        if msg.method != METHOD_BINDING || !matches!(msg.class, Class::SuccessResponse | Class::ErrorResponse) {
            return false;
        }
        let Some(idx) = self.probes.iter().position(|p| p.tid == msg.transaction_id && p.socket == socket) else {
            return false;
        };
        let p = &self.probes[idx];
        if p.state == State::GaveUp && p.kind.is_filter() && matches!(classify(p, &msg, from), State::Answered(_)) {
            self.late_filter_answer(idx);
            return true;
        }
        if p.state != State::Pending {
            return true; // duplicate or late answer: ours, but nothing new
        }
        if let Some(sent) = p.first_sent {
            // Measured from the first transmission: with retransmissions this
            // over-estimates, which only makes the waits more patient.
            let rtt = now.saturating_duration_since(sent);
            self.best_rtt = Some(self.best_rtt.map_or(rtt, |b| b.min(rtt)));
        }
        let state = classify(p, &msg, from);
        let p = &mut self.probes[idx];
        p.state = state;
        p.next_send = None;
        p.answered_at = Some(now);
        self.advance(now);
        true
    }

    /// Earliest instant at which [`Detection::handle_timeout`] (or
    /// [`Detection::poll_transmit`]) has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let mut t = self.start + self.cfg.timeout;
        let mut consider = |x: Instant| t = t.min(x);
        for p in self.probes.iter().filter(|p| p.state == State::Pending) {
            if let Some(n) = p.next_send {
                consider(n);
            }
        }
        let firsts = self.first_answers();
        for i in 0..self.probes.len() {
            if let Some(g) = self.give_up_at(i, &firsts) {
                consider(g);
            }
        }
        if let Some(c) = self.filter_control_timer() {
            consider(c);
        }
        if let Some(s) = self.settle() {
            // A capable observer's silence is decided on the control timer
            // (above); a pending one is resolved by its test I timer.
            if self.slots.iter().any(|sl| sl.local.is_none() && !sl.abandoned) {
                consider(self.start + s);
            }
        }
        Some(t)
    }

    /// Process timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The verdict, once: `Some` exactly one time, then `None`.
    pub fn poll_result(&mut self) -> Option<Result<NatProfile, DetectError>> {
        self.result.take()
    }

    /// True once a result has been produced (taken or not).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    // ----------------------------------------------------------------------

    fn add_probe(
        &mut self,
        kind: Kind,
        socket: SocketId,
        dst: SocketAddr,
        change: Option<(bool, bool)>,
        now: Instant,
    ) -> usize {
        let tid = self.txids.next();
        let mut msg = Message::binding_request(tid);
        if let Some((change_ip, change_port)) = change {
            msg = msg.with(Attribute::ChangeRequest { change_ip, change_port });
        }
        self.probes.push(Probe {
            kind,
            socket,
            dst,
            tid,
            // Sized so that a responder which answers no more than it
            // received (ours, see `reply_budget`) still answers in full.
            payload: msg.with_fingerprint().sized_for_answer().encode(),
            first_sent: None,
            next_send: Some(now),
            sends: 0,
            rto: self.cfg.rto,
            state: State::Pending,
            answered_at: None,
        });
        self.probes.len() - 1
    }

    fn cancel(&mut self, idx: usize) {
        let p = &mut self.probes[idx];
        if p.state == State::Pending {
            p.state = State::GaveUp;
        }
        p.next_send = None;
    }

    /// Wait after which silence to a filtering test means "filtered".
    fn settle(&self) -> Option<Duration> {
        self.best_rtt.map(|r| (r * 3).max(self.cfg.min_wait))
    }

    /// Wait after which a request that should be answered is given up.
    fn answer_wait(&self) -> Option<Duration> {
        self.settle().map(|s| s * 2)
    }

    /// When a pending request that should be answered is given up (filter
    /// tests are decided by their silence instead). Without any answer to
    /// tests II-IV the mapping would be a guess (PD), and without any to the
    /// allocation probes the allocation (RD), so each group gets
    /// [`PATIENCE`] times longer before that guess; once one of a group has
    /// answered, the others get the usual wait or a settle time after it.
    fn give_up_at(&self, i: usize, firsts: &[Option<Instant>; 3]) -> Option<Instant> {
        let p = &self.probes[i];
        if p.state != State::Pending || p.kind.is_filter() {
            return None;
        }
        let w = self.answer_wait()?;
        let sent = p.first_sent?;
        let g = patience_group(p.kind);
        if g == 0 {
            return Some(sent + w);
        }
        Some(match firsts[g] {
            None => sent + w * PATIENCE,
            // The others of a late burst come within the settle time.
            Some(at) => (sent + w).max(at + self.settle()?),
        })
    }

    /// When each [`patience_group`] was first answered.
    fn first_answers(&self) -> [Option<Instant>; 3] {
        let mut firsts: [Option<Instant>; 3] = [None; 3];
        for p in &self.probes {
            if let Some(a) = p.answered_at {
                let f = &mut firsts[patience_group(p.kind)];
                *f = Some(f.map_or(a, |x| x.min(a)));
            }
        }
        firsts
    }

    /// Silence to the filtering tests means something only if the observer
    /// was answering at the time: a stalled observer, NAT or runtime holds
    /// answers past any fixed wait (seen with 73 VMs starting on 2 cores).
    /// So from a quarter of the wait on (the second round of filter tests),
    /// a plain request goes to the same observer every filter interval, and
    /// silence is decided only once one of those has been answered for a
    /// quarter of the wait (the changed-address answers leave the observer
    /// with it). On a live path this costs nothing: with the wait at 3 RTT
    /// or more, that is 5/6 of it at the latest.
    fn observer_answered_lately(&self, run: FiltRun, settle: Duration, now: Instant) -> bool {
        self.observer_heard(run).is_some_and(|a| now >= a + settle / 4)
    }

    /// The control requests of a filtering run. All were sent a quarter
    /// into its wait or later: the wait only shrinks (with the best RTT).
    fn filter_controls(&self, run: FiltRun) -> impl Iterator<Item = &Probe> + '_ {
        let dst = self.cfg.observers[run.obs];
        self.probes.iter().filter(move |p| p.kind == Kind::FiltControl && p.dst == dst)
    }

    /// When the observer first answered a control request.
    fn observer_heard(&self, run: FiltRun) -> Option<Instant> {
        self.filter_controls(run).filter_map(|p| p.answered_at).min()
    }

    /// When the next control request is due; `None` while one is queued.
    fn next_filter_control(&self, run: FiltRun, settle: Duration) -> Option<Instant> {
        let mut last = None;
        for p in self.filter_controls(run) {
            last = last.max(Some(p.first_sent?));
        }
        Some(last.map_or(run.started + settle / 4, |l| l + self.filter_interval()))
    }

    /// Queues the next control request of
    /// [`Detection::observer_answered_lately`] if it is due.
    fn send_filter_control(&mut self, run: FiltRun, settle: Duration, now: Instant) {
        if self.next_filter_control(run, settle).is_some_and(|t| now >= t) {
            let dst = self.cfg.observers[run.obs];
            let sock = self.filter_sock();
            self.add_probe(Kind::FiltControl, sock, dst, None, now);
        }
    }

    /// When [`Detection::send_filter_control`] and the silence decision
    /// want to look again.
    fn filter_control_timer(&self) -> Option<Instant> {
        let run = self.filt.filter(|r| self.filtering.is_none() && self.capable(r.obs))?;
        let s = self.settle()?;
        let heard = self.observer_heard(run).map(|a| (a + s / 4).max(run.started + s));
        [heard, self.next_filter_control(run, s)].into_iter().flatten().min()
    }

    fn filter_interval(&self) -> Duration {
        (self.settle().unwrap_or(self.cfg.min_wait) / 4).max(Duration::from_millis(10))
    }

    fn obs(&self, i: usize) -> Obs {
        match self.probes[self.test_i[i]].state {
            State::Pending => Obs::Pending,
            State::Answered(a) => Obs::Alive { mapped: a.mapped, other: a.other },
            State::Failed | State::GaveUp => Obs::Dead,
        }
    }

    fn capable(&self, i: usize) -> bool {
        matches!(self.obs(i), Obs::Alive { other: Some(_), .. })
    }

    /// Whether an answer to filtering test II (from the alternate IP and
    /// port) and to test III (from the primary IP, alternate port) would
    /// prove anything, given the permissions earlier sends may have left:
    /// any earlier send to the alternate IP admits II through an
    /// address-dependent filter, and one to the primary IP's alternate port
    /// (test IV) admits III through a port-dependent one.
    /// This run's own earlier sends count too: they matter for an answer
    /// that arrives after tests II-IV went to the same observer.
    fn filt_evidence(&self, run: FiltRun) -> (bool, bool) {
        let Obs::Alive { other: Some(alt), .. } = self.obs(run.obs) else { return (true, true) };
        let crossed = SocketAddr::new(self.cfg.observers[run.obs].ip(), alt.port());
        // Only the filter tests' own socket matters; earlier detections'
        // sends only ever left from the primary one.
        let sock = self.filter_sock();
        let opened = if sock == SocketId::Primary { &self.cfg.opened[..] } else { &[] };
        let own = self.first_sends.iter().filter(move |(s, _)| *s == sock).map(|&(_, d)| d);
        let mut sent = opened.iter().copied().chain(own);
        let (mut ii, mut iii) = (true, true);
        for d in &mut sent {
            ii &= d.ip() != alt.ip();
            iii &= d != crossed;
        }
        (ii, iii)
    }

    /// A filtering verdict from silence is provisional: an answer that got
    /// through the filter, however late, proves it lets that source in (a
    /// stalled observer or runtime can hold answers past the wait). While
    /// the detection runs, such an answer makes the verdict laxer.
    fn late_filter_answer(&mut self, idx: usize) {
        let Some(run) = self.filt.filter(|r| r.ipport == idx || r.port == idx) else { return };
        let (ii_counts, iii_counts) = self.filt_evidence(run);
        let laxer = if idx == run.ipport && ii_counts {
            Filtering::Ei
        } else if idx == run.port && iii_counts {
            Filtering::Hd
        } else {
            return;
        };
        if let Some(Some(f)) = self.filtering {
            if laxer < f {
                self.filtering = Some(Some(laxer));
                self.filt_bound = None;
            }
        }
    }

    /// Whether the filtering verdict rests on clean evidence; `false` when
    /// it is only a conservative bound (earlier permissions, see
    /// [`DetectConfig::opened`]) or unknown.
    pub fn filtering_measured(&self) -> bool {
        matches!(self.filtering, Some(Some(_))) && self.filt_bound.is_none()
    }

    /// Where the primary socket sent in this detection (repeats included).
    fn primary_sends(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.first_sends.iter().filter(|(s, _)| *s == SocketId::Primary).map(|&(_, d)| d)
    }

    /// Every destination the primary socket sent to in this detection, for
    /// the next one's [`DetectConfig::opened`].
    pub fn primary_destinations(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.primary_sends().collect();
        v.sort();
        v.dedup();
        v
    }

    /// The socket the filtering tests leave from.
    fn filter_sock(&self) -> SocketId {
        if self.cfg.filter_socket {
            SocketId::Filter
        } else {
            SocketId::Primary
        }
    }

    fn preferred_alive(&self) -> Option<usize> {
        (0..self.test_i.len()).find(|&i| matches!(self.obs(i), Obs::Alive { .. }))
    }

    fn start_filtering(&mut self, obs: usize, now: Instant) {
        let dst = self.cfg.observers[obs];
        let sock = self.filter_sock();
        let ipport = self.add_probe(Kind::FiltIpPort, sock, dst, Some((true, true)), now);
        let port = self.add_probe(Kind::FiltPort, sock, dst, Some((false, true)), now);
        self.filt = Some(FiltRun { obs, ipport, port, started: now });
    }

    fn advance(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if now >= self.start + self.cfg.timeout {
            self.finish();
            return;
        }
        let firsts = self.first_answers();
        for i in 0..self.probes.len() {
            if self.give_up_at(i, &firsts).is_some_and(|t| now >= t) {
                self.cancel(i);
            }
        }
        let n = self.test_i.len();
        if (0..n).all(|i| self.obs(i) == Obs::Dead) {
            self.finish();
            return;
        }
        self.step_filtering(now);
        self.step_mapping(now);
        self.step_alloc(now);
        if self.complete() {
            self.finish();
        }
    }

    fn step_filtering(&mut self, now: Instant) {
        if self.filtering.is_some() {
            return;
        }
        if let Some(run) = self.filt {
            let a = self.probes[run.ipport].state;
            let b = self.probes[run.port].state;
            let (ii_counts, iii_counts) = self.filt_evidence(run);
            if matches!(a, State::Answered(_)) && ii_counts {
                self.filtering = Some(Some(Filtering::Ei));
                self.filt_bound = None;
                self.cancel(run.ipport);
                self.cancel(run.port);
                return;
            }
            let obs = self.obs(run.obs);
            let invalid = matches!(obs, Obs::Dead | Obs::Alive { other: None, .. })
                || a == State::Failed
                || b == State::Failed;
            if invalid {
                self.cancel(run.ipport);
                self.cancel(run.port);
                self.filt_tried.push(run.obs);
                self.filt = None;
            } else if let (true, Some(s)) = (self.capable(run.obs), self.settle()) {
                self.send_filter_control(run, s, now);
                if now >= run.started + s && self.observer_answered_lately(run, s, now) {
                    self.cancel(run.ipport);
                    self.cancel(run.port);
                    // An earlier permission can only let more through, so
                    // silence is evidence even when answers are not.
                    let ii = matches!(a, State::Answered(_));
                    let iii = matches!(b, State::Answered(_));
                    match (ii, iii, iii_counts) {
                        (_, false, _) => self.filtering = Some(Some(Filtering::Pd)),
                        (false, true, true) => self.filtering = Some(Some(Filtering::Hd)),
                        // Ambiguous: EI or HD, or anything but EI, or
                        // anything. Another observer may settle it.
                        (ii, true, iii_counts) => {
                            let bound = if ii && iii_counts { Filtering::Hd } else { Filtering::Pd };
                            self.filt_bound.get_or_insert(bound);
                            self.filt_tried.push(run.obs);
                            self.filt = None;
                        }
                    }
                    if self.filtering.is_some() {
                        self.filt_bound = None;
                        return;
                    }
                }
            }
        }
        if self.filt.is_none() {
            let map_obs = self.map.map(|m| m.obs);
            // On its own socket filtering may share the mapping observer.
            let shared = self.cfg.filter_socket;
            let cands: Vec<usize> = (0..self.test_i.len())
                .filter(|&i| self.capable(i) && !self.filt_tried.contains(&i) && (shared || map_obs != Some(i)))
                .collect();
            // Leave the first capable observer to the mapping tests if we can.
            let pick = if map_obs.is_none() && cands.len() >= 2 { Some(cands[1]) } else { cands.first().copied() };
            match pick {
                Some(c) => self.start_filtering(c, now),
                None => {
                    if (0..self.test_i.len()).all(|i| self.obs(i) != Obs::Pending) {
                        self.filtering = Some(self.filt_bound);
                    }
                }
            }
        }
    }

    fn step_mapping(&mut self, now: Instant) {
        if self.map.is_some() {
            return;
        }
        let cands: Vec<usize> = (0..self.test_i.len()).filter(|&i| self.capable(i)).collect();
        // On its own socket the filtering run cannot be contaminated by the
        // mapping tests, nor contaminate them: both start at once.
        let choice = if self.filtering.is_some() || self.cfg.filter_socket {
            cands.first().copied()
        } else {
            match self.filt {
                // Concurrent only on a different observer, and only once the
                // filtering observer is confirmed capable (else filtering may
                // have to fall back to the mapping observer, uncontaminated).
                Some(run) if self.capable(run.obs) => cands.iter().copied().find(|&c| c != run.obs),
                _ => None,
            }
        };
        let Some(m) = choice else { return };
        let Obs::Alive { other: Some(other), .. } = self.obs(m) else { return };
        let primary = self.cfg.observers[m];
        let ii = self.add_probe(Kind::MapII, SocketId::Primary, SocketAddr::new(other.ip(), primary.port()), None, now);
        let iii = self.add_probe(Kind::MapIII, SocketId::Primary, other, None, now);
        let iv = self.add_probe(Kind::MapIV, SocketId::Primary, SocketAddr::new(primary.ip(), other.port()), None, now);
        self.map = Some(MapRun { obs: m, ii, iii, iv });
    }

    fn step_alloc(&mut self, now: Instant) {
        let settle = self.settle();
        for n in 0..self.slots.len() {
            let slot = &self.slots[n];
            if slot.local.is_none() {
                if settle.is_some_and(|s| now >= self.start + s) {
                    self.slots[n].abandoned = true;
                }
                continue;
            }
            let Some(&last) = slot.probes.last() else {
                if let Some(obs) = self.preferred_alive() {
                    self.add_alloc_probe(n, obs, now);
                }
                continue;
            };
            // Re-aim a probe whose observer died after answering test I, once.
            let p = &self.probes[last];
            if let (false, Kind::Alloc { obs, .. }) = (matches!(p.state, State::Answered(_)), p.kind) {
                if self.obs(obs) == Obs::Dead && slot.probes.len() < 2 {
                    if let Some(alive) = self.preferred_alive() {
                        self.cancel(last);
                        self.add_alloc_probe(n, alive, now);
                    }
                }
            }
        }
    }

    fn resolved(&self, idx: usize) -> bool {
        self.probes[idx].state != State::Pending
    }

    fn complete(&self) -> bool {
        if self.filtering.is_none() || self.test_i.iter().any(|&p| !self.resolved(p)) {
            return false;
        }
        let mapping_done = match self.map {
            Some(m) => [m.ii, m.iii, m.iv].iter().all(|&p| self.resolved(p)),
            None => !(0..self.test_i.len()).any(|i| self.capable(i)),
        };
        let alloc_done = self
            .slots
            .iter()
            .all(|s| s.abandoned || s.probes.last().is_some_and(|&p| self.resolved(p)));
        mapping_done && alloc_done
    }

    fn answer(&self, idx: usize) -> Option<Answer> {
        match self.probes[idx].state {
            State::Answered(a) => Some(a),
            _ => None,
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        self.result = Some(self.verdict());
        for p in &mut self.probes {
            p.next_send = None;
        }
    }

    fn verdict(&self) -> Result<NatProfile, DetectError> {
        let alive: Vec<(usize, SocketAddr)> = (0..self.test_i.len())
            .filter_map(|i| match self.obs(i) {
                Obs::Alive { mapped, .. } => Some((i, mapped)),
                _ => None,
            })
            .collect();
        let Some(&(_, first_mapped)) = alive.first() else { return Err(DetectError::Timeout) };
        let public_addr = self.map.and_then(|m| self.answer(self.test_i[m.obs])).map_or(first_mapped, |a| a.mapped);
        let no_nat = !self.local.ip().is_unspecified() && public_addr == self.local;
        let mut confidence = Confidence::High;
        let mut lower = |c: Confidence| confidence = confidence.min(c);

        let mapping = if no_nat {
            Mapping::Ei
        } else {
            match self.map.and_then(|m| self.mapping_from_tests(m)) {
                Some((m, c)) => {
                    lower(c);
                    m
                }
                None => {
                    // No usable RFC 5780 observer (or its tests were lost):
                    // compare what distinct observers saw.
                    lower(if self.map.is_some() { Confidence::Medium } else { Confidence::Low });
                    let distinct_ip = alive.iter().any(|&(i, _)| self.cfg.observers[i].ip() != self.cfg.observers[alive[0].0].ip());
                    if distinct_ip && alive.iter().all(|&(_, m)| m == first_mapped) {
                        Mapping::Ei
                    } else {
                        Mapping::Pd
                    }
                }
            }
        };
        if mapping == Mapping::Ei && alive.iter().any(|&(_, m)| m != public_addr) {
            // Observers disagree about an "endpoint-independent" mapping.
            lower(Confidence::Medium);
        }
        if self.filt_bound.is_some() {
            lower(Confidence::Medium);
        }
        let filtering = match self.filtering {
            Some(Some(f)) => f,
            _ => {
                lower(Confidence::Low);
                Filtering::Pd
            }
        };
        let (allocation, port_delta) = if no_nat {
            (Allocation::Pp, None)
        } else {
            let (a, d, c) = self.allocation(mapping);
            lower(c);
            (a, d)
        };
        Ok(NatProfile {
            mapping,
            filtering,
            allocation,
            public_addr,
            port_delta,
            confidence,
            mapping_lifetime: None,
            hairpin: None,
            no_nat,
        })
    }

    /// Mapping behaviour from tests I-IV against one observer. RFC 5780
    /// only needs I-III; using the crossed address (IV) as well lets one lost
    /// test be compensated: a mapping is EI if every destination saw the same
    /// address, PD if two destinations on the same IP saw different ones, HD
    /// if only destinations on different IPs did.
    fn mapping_from_tests(&self, m: MapRun) -> Option<(Mapping, Confidence)> {
        let known: Vec<(SocketAddr, SocketAddr)> = [self.test_i[m.obs], m.ii, m.iii, m.iv]
            .iter()
            .filter_map(|&p| self.answer(p).map(|a| (self.probes[p].dst, a.mapped)))
            .collect();
        let mut same_ip_differs = false;
        let mut same_ip_pair = false;
        let mut cross_ip_differs = false;
        let mut cross_ip_pair = false;
        let mut cross_ip_equal = false;
        for (i, a) in known.iter().enumerate() {
            for b in &known[i + 1..] {
                if a.0.ip() == b.0.ip() {
                    same_ip_pair = true;
                    same_ip_differs |= a.1 != b.1;
                } else {
                    cross_ip_pair = true;
                    cross_ip_differs |= a.1 != b.1;
                    cross_ip_equal |= a.1 == b.1;
                }
            }
        }
        let all_four = known.len() == 4;
        let c = |sure: bool| if sure && all_four { Confidence::High } else { Confidence::Medium };
        if cross_ip_equal && (same_ip_differs || cross_ip_differs) {
            // No clean NAT does this: HD and PD mappings never carry one
            // public address to two remote IPs. An endpoint-independent
            // mapping that had to leave from another port towards one
            // destination does: a Linux router that confirmed an inbound
            // conntrack entry for (that destination -> public port) from a
            // packet it refused, or another host's connection holding the
            // tuple (port overloading). Punching reuses the mapping towards
            // new peers, so it is EI, but not beyond doubt.
            Some((Mapping::Ei, Confidence::Medium))
        } else if same_ip_differs {
            Some((Mapping::Pd, c(true)))
        } else if cross_ip_differs {
            // Not EI; HD only if a same-IP pair showed reuse, else assume PD.
            Some(if same_ip_pair { (Mapping::Hd, c(true)) } else { (Mapping::Pd, Confidence::Medium) })
        } else if cross_ip_pair {
            Some((Mapping::Ei, c(true)))
        } else {
            None
        }
    }

    fn local_port(&self, s: SocketId) -> Option<u16> {
        match s {
            SocketId::Primary => Some(self.local.port()),
            SocketId::Probe(n) => self.slots.get(n).and_then(|sl| sl.local).map(|a| a.port()),
            SocketId::Filter => self.filter_local.map(|a| a.port()),
        }
    }

    /// Allocation verdict from the fresh mappings we created (see module doc).
    fn allocation(&self, mapping: Mapping) -> (Allocation, Option<i32>, Confidence) {
        type Key = (SocketId, Option<IpAddr>, Option<u16>);
        let key = |s: SocketId, d: SocketAddr| -> Key {
            match mapping {
                Mapping::Ei => (s, None, None),
                Mapping::Hd => (s, Some(d.ip()), None),
                Mapping::Pd => (s, Some(d.ip()), Some(d.port())),
            }
        };
        let mut keys: Vec<Key> = Vec::new();
        for &(s, d) in &self.first_sends {
            let k = key(s, d);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        // A mapping an earlier detection created (`cfg.opened`) is reused,
        // not allocated now: it says nothing about the order of this run's
        // allocations, though a preserved first port still shows.
        let stale = |k: &Key| k.0 == SocketId::Primary && self.cfg.opened.iter().any(|&o| key(SocketId::Primary, o) == *k);
        let port_of = |k: &Key| {
            self.probes.iter().find_map(|p| match p.state {
                State::Answered(a) if key(p.socket, p.dst) == *k => Some(a.mapped.port()),
                _ => None,
            })
        };
        // (rank among this run's fresh mappings, socket, public port)
        let mut series: Vec<(usize, SocketId, u16)> = Vec::new();
        for (rank, k) in keys.iter().filter(|k| !stale(k)).enumerate() {
            if let Some(port) = port_of(k) {
                series.push((rank, k.0, port));
            }
        }
        // PP: the first mapping of every socket kept its local port. Later
        // mappings of the same socket (PD) cannot all have it. A socket whose
        // first mapping was never answered tells nothing either way.
        let mut checks = Vec::new();
        let mut seen: Vec<SocketId> = Vec::new();
        for k in &keys {
            if seen.contains(&k.0) {
                continue;
            }
            seen.push(k.0);
            // The filter socket's mapping counts for the series above, and
            // here only if the runtime told its local port.
            if let (Some(port), Some(local)) = (port_of(k), self.local_port(k.0)) {
                checks.push(local == port);
            }
        }
        let kept = checks.iter().filter(|&&c| c).count();
        if !checks.is_empty() && kept == checks.len() {
            let c = if checks.len() >= 2 { Confidence::High } else { Confidence::Medium };
            return (Allocation::Pp, None, c);
        }
        // A preserving NAT gives a socket another port when another
        // binding already holds its local port (a long-lived one, or one
        // an earlier process left); any other allocation keeps a random
        // local port only by chance (1 in ~64,000). So most sockets' first
        // mappings keeping their port, two at least, is preservation.
        if kept >= 2 && kept * 3 >= checks.len() * 2 {
            return (Allocation::Pp, None, Confidence::Medium);
        }
        // PC: constant delta between consecutive fresh mappings.
        let deltas: Vec<Option<i32>> = series
            .windows(2)
            .map(|w| {
                let gap = (w[1].0 - w[0].0) as i32;
                let diff = i32::from(w[1].2) - i32::from(w[0].2);
                (gap > 0 && diff % gap == 0 && diff != 0).then(|| diff / gap)
            })
            .collect();
        if deltas.len() < 2 {
            // One delta (or none) cannot tell contiguity from chance.
            return (Allocation::Rd, None, if deltas.is_empty() { Confidence::Low } else { Confidence::Medium });
        }
        let mut best: Option<(i32, usize)> = None;
        for d in deltas.iter().flatten() {
            let count = deltas.iter().filter(|x| **x == Some(*d)).count();
            if best.map_or(true, |(_, c)| count > c) {
                best = Some((*d, count));
            }
        }
        match best {
            Some((d, c)) if c == deltas.len() => (Allocation::Pc, Some(d), Confidence::High),
            // Another host behind the same NAT can steal a port in between.
            Some((d, c)) if c >= 2 && c * 3 >= deltas.len() * 2 => (Allocation::Pc, Some(d), Confidence::Medium),
            _ => {
                if let Some(d) = clustered_delta(&series, best.map(|b| b.0)) {
                    return (Allocation::Pc, Some(d), Confidence::Medium);
                }
                // A socket that kept its random local port is a 1 in
                // ~64,000 chance under random allocation: not beyond doubt.
                let sure = deltas.len() >= 3 && kept == 0;
                (Allocation::Rd, None, if sure { Confidence::High } else { Confidence::Medium })
            }
        }
    }
}

/// Most fresh mappings were not one delta apart, yet their ports lie close
/// together: contiguous allocation with several ports taken in between
/// (other sockets of ours, other hosts behind the NAT) or probes reaching
/// the NAT in another order than sent (a loaded host). Random allocation
/// does not put three or more ports within a few dozen of ~64,000 (for four
/// ports within 128, about 1 in 10^8). The delta: the most common one seen
/// between consecutive mappings, else the smallest gap between the sorted
/// ports, signed as the series moved.
fn clustered_delta(series: &[(usize, SocketId, u16)], most_common: Option<i32>) -> Option<i32> {
    const SPREAD_PER_PORT: usize = 32;
    let mut ports: Vec<u16> = series.iter().map(|s| s.2).collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.len() < 3 {
        return None;
    }
    let span = usize::from(ports[ports.len() - 1] - ports[0]);
    if span > SPREAD_PER_PORT * ports.len() {
        return None;
    }
    if let Some(d) = most_common {
        return Some(d);
    }
    let step = ports.windows(2).map(|w| w[1] - w[0]).min()?;
    let (first, last) = (series.first()?.2, series.last()?.2);
    Some(if last >= first { i32::from(step) } else { -i32::from(step) })
}

/// Requests that wait [`PATIENCE`] times longer while none of their group
/// has answered: 1 tests II-IV, 2 the allocation probes; 0 the others.
fn patience_group(k: Kind) -> usize {
    match k {
        Kind::MapII | Kind::MapIII | Kind::MapIV => 1,
        Kind::Alloc { .. } => 2,
        _ => 0,
    }
}

/// Decide what a response means for the probe it answers.
fn classify(p: &Probe, msg: &Message, from: SocketAddr) -> State {
    if msg.class == Class::ErrorResponse {
        return State::Failed;
    }
    let Some(mapped) = msg.mapped_address() else { return State::Failed };
    // A filtering answer only counts if it really came from the changed
    // address; a server that ignored CHANGE-REQUEST proves nothing.
    let valid = match p.kind {
        Kind::FiltIpPort => from.ip() != p.dst.ip() && from.port() != p.dst.port(),
        Kind::FiltPort => from.ip() == p.dst.ip() && from.port() != p.dst.port(),
        _ => true,
    };
    if !valid {
        return State::Failed;
    }
    // OTHER-ADDRESS steers where tests II-IV go; only accept one that is a
    // plausible alternate (same family, other IP, other port) so a bogus
    // server cannot aim our probes at its own primary or mix families.
    let other = msg.other_address().filter(|o| {
        o.is_ipv4() == p.dst.is_ipv4() && o.ip() != p.dst.ip() && o.port() != p.dst.port() && o.port() != 0
    });
    State::Answered(Answer { mapped, other })
}

// Visible to the crate's tests: punch tests put two of its NATs face to face.
pub mod lifetime;
mod memory;
pub use memory::DetectMemory;

#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;
