//! Signalling client and `connect`: rendezvous, strategy, punch, QUIC.
//!
//! # Flow
//!
//! 1. [`Signal::join`] dials the rendezvous from the node's socket, says
//!    `Hello(Control)` and learns its observed (reflexive) address. The
//!    control connection is kept (QUIC keep-alive holds the NAT mapping)
//!    and re-dialled when lost.
//! 2. [`connect`] (side A, the initiator) sends `Connect` with its profile;
//!    B's signal receives `Incoming` and answers automatically with its own
//!    profile; the rendezvous relays `Answered` to A and sends `Go` to both.
//!    "Its profile" is read when the message is sent: the node's last
//!    detected one ([`crate::local_profile`], published by every detection),
//!    else the signal's configured one. While the node's first detection is
//!    under way, a connect waits for it (within its timeout) and so does a
//!    responder before it answers (at most `responder_profile_wait`).
//! 3. Both compute `strategy::choose(A, B)` from the two profiles (the
//!    same inputs on both sides, so the same answer) and act on `Go`, after
//!    the wait it carries:
//!    * `Direct { dialer }`: the dialer (A for `Either`) QUIC-connects to the
//!      other's observed address.
//!    * `ConnectionReversal { dialer }`: the other side ("listener") sends a
//!      few STUN packets towards the dialer's observed address (opening its
//!      filter for the dialer's IP); the dialer then connects to the
//!      listener's aimed address.
//!    * `SimplePunch` / `PredictPreservation` / `PredictContiguity`: both
//!      run the punch machine on their node socket (targets from
//!      [`targets`]); A then QUIC-connects to the punched address.
//!    * `BirthdayProbing { hard }`: the hard side punches from the node
//!      socket and a few hundred extra sockets ([`crate::birthday`]) towards
//!      the easy side's endpoint, the easy side probes random ports of the
//!      hard side's IP; A then QUIC-connects to the punched address, over
//!      the winning extra socket when the hard side's path is one.
//!    * `Relay`: with `allow_relay`, through a relay (below); otherwise
//!      `SymmetricNat` when both sides have unpredictable ports, else
//!      `NoRelay`.
//!
//!    A punch that fails falls back to the relay too when `allow_relay`;
//!    a failed prediction (preservation, contiguity, connection reversal)
//!    first gets one more session, predicted afresh, when that and a relay
//!    still fit in the connect's timeout ([`may_retry`]).
//! 4. Whoever dials sends `Hello(Session(id))` first; the other side's
//!    dispatcher hands that connection to the session. The initiator gets it
//!    from `connect`; on the responder it is queued for [`Signal::accept`]
//!    (together with unsolicited incoming connections), so the application
//!    on B receives every connection its peers made to it there.
//!
//! Methods reported: `Direct` for Direct and ConnectionReversal (a plain
//! dial, no punching), `Punched` for the punching strategies, `Relayed`.
//!
//! # Relays
//!
//! Each node keeps reservations at the relays it is given
//! ([`Signal::set_relays`], a [`RelaySet`]) and advertises the live ones in
//! its profile. A relayed connect: the initiator opens a session to the
//! responder at one of the responder's relays, and dials the responder's
//! node key through it (the QUIC connection stays end to end; its remote
//! address is a virtual one that the relay session routes). The initiator
//! then looks after the connection:
//! * relay lost (its link dies): the session is opened again at the
//!   responder's next relay and the virtual address re-routed there; QUIC
//!   resends what was in flight; the responder's QUIC sees its peer migrate.
//! * upgrade: every `upgrade_interval` (doubling to 30 s) it runs a punch
//!   session with the responder (`Connect` with `FLAG_UPGRADE`: both punch,
//!   nobody dials). On success the virtual address is routed to the punched
//!   address and that address aliased back to it, so QUIC carries on
//!   without seeing a change; nothing is lost or reordered (one QUIC
//!   stream). The method becomes `Punched` on both sides (the responder
//!   sees its QUIC peer migrate to a real address).

use crate::alloc_probe::{AllocTracker, Basis, Spent};
use crate::dispatch::Dispatch;
use crate::local_profile::ProfileState;
use crate::birthday::{PathGuard, SocketSet};
use crate::punch_driver::{self, Punched};
use crate::relay::{self, RelayLink, RelayPath, RelaySet};
use crate::quic::QuicError;
use crate::signal::{self, HelloKind, Msg, NodeId, Profile, SessionId};
use crate::{runtime, Connection, Node};
use macula_nat_proto::nat::{Allocation, Confidence, Filtering, Mapping};
use macula_nat_proto::port_predictor::contiguity_window;
use macula_nat_proto::punch::{BirthdaySchedule, PunchConfig, Role};
use macula_nat_proto::record::PeerInfo;
use macula_nat_proto::strategy::{self, Aim, Dialer, PeerNat, Side, Strategy};
use macula_nat_proto::nat::NatType;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use crate::quic::Method;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("hole punching failed")]
    PunchFailed,
    #[error("both peers have unpredictable ports (symmetric NATs) and relaying is not allowed")]
    SymmetricNat,
    #[error("a relay is needed but none is available")]
    NoRelay,
    #[error("the relay refused: {}", .0.name())]
    RelayRefused(macula_nat_proto::relay::msg::Refusal),
    #[error("timed out")]
    Timeout,
    #[error("peer not registered at the rendezvous")]
    UnknownPeer,
    #[error("peer rejected the connection (reason {0})")]
    Rejected(u8),
    #[error("no control connection to the rendezvous")]
    NoRendezvous,
    #[error("closed")]
    Closed,
    #[error("quic: {0}")]
    Quic(String),
}

impl ConnectError {
    /// Stable short name, for the Erlang error atom.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::PunchFailed => "punch_failed",
            ConnectError::SymmetricNat => "symmetric_nat",
            ConnectError::NoRelay => "no_relay",
            ConnectError::RelayRefused(r) => r.name(),
            ConnectError::Timeout => "timeout",
            ConnectError::UnknownPeer => "unknown_peer",
            ConnectError::Rejected(_) => "rejected",
            ConnectError::NoRendezvous => "no_rendezvous",
            ConnectError::Closed => "closed",
            ConnectError::Quic(_) => "quic",
        }
    }
}

impl From<QuicError> for ConnectError {
    fn from(e: QuicError) -> ConnectError {
        match e {
            QuicError::Closed => ConnectError::Closed,
            QuicError::TimedOut => ConnectError::Timeout,
            other => ConnectError::Quic(other.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConnectOpts {
    /// Bound on the whole connect (signalling, punching, QUIC handshake).
    pub timeout: Duration,
    /// Transmissions per punched path.
    pub max_punch_attempts: u32,
    /// Whether a relayed connection is acceptable (when punching is
    /// impossible or fails).
    pub allow_relay: bool,
    /// Use Direct / ConnectionReversal when the table says so (default).
    /// `false` makes the pair punch instead (tests, or a peer that lies
    /// about being reachable).
    pub prefer_direct: bool,
    /// Go through a relay whatever the NAT types.
    pub relay_only: bool,
    /// First wait before a relayed connection tries to upgrade to a punched
    /// path (then doubling up to 30 s); `None`: stay relayed.
    pub upgrade_interval: Option<Duration>,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts {
            timeout: Duration::from_secs(10),
            max_punch_attempts: 10,
            allow_relay: false,
            prefer_direct: true,
            relay_only: false,
            upgrade_interval: Some(Duration::from_secs(2)),
        }
    }
}

/// A successful connect, with details.
#[derive(Debug)]
pub struct Connected {
    pub conn: Connection,
    pub method: Method,
    pub strategy: Strategy,
    pub elapsed: Duration,
}

/// Signalling settings.
#[derive(Clone, Debug)]
pub struct SignalConfig {
    /// This node's NAT profile while its node has none published
    /// ([`Node::local_profile`]: detections publish there, and a published
    /// profile wins). `public_addr` is ignored: the rendezvous'
    /// observation is used.
    pub profile: PeerInfo,
    /// Extra candidate addresses to advertise (e.g. LAN addresses).
    pub candidates: Vec<SocketAddr>,
    /// Bound on dialling the rendezvous and registering.
    pub join_timeout: Duration,
    /// Wait between reconnection attempts (doubles up to 8x).
    pub reconnect_backoff: Duration,
    /// How long a responder waits for the session to complete.
    pub responder_timeout: Duration,
    /// How long a responder waits for this node's first detection before
    /// it answers (the detection's own deadline usually ends it sooner).
    pub responder_profile_wait: Duration,
    /// Learn the primer TTL at join and send TTL-limited primers before
    /// punching (see [`crate::primer`]). Default `true`; off only to measure
    /// what they are worth.
    pub primers: bool,
}

impl SignalConfig {
    pub fn new(profile: PeerInfo) -> SignalConfig {
        SignalConfig {
            profile,
            candidates: Vec::new(),
            join_timeout: Duration::from_secs(5),
            reconnect_backoff: Duration::from_millis(250),
            responder_timeout: Duration::from_secs(15),
            responder_profile_wait: Duration::from_secs(5),
            primers: true,
        }
    }
}

/// A profile for a host with a public address and no filtering.
pub fn public_profile() -> PeerInfo {
    profile_of(NatType { mapping: Mapping::Ei, allocation: Allocation::Pp, filtering: Filtering::Ei }, None, true)
}

/// A profile for a host behind a NAT of type `nat`.
pub fn profile_of(nat: NatType, port_delta: Option<i32>, no_nat: bool) -> PeerInfo {
    PeerInfo {
        mapping: nat.mapping,
        filtering: nat.filtering,
        allocation: nat.allocation,
        confidence: Confidence::High,
        public_addr: None,
        port_delta,
        no_nat,
        detected_at: 0,
        endpoints: Vec::new(),
        rendezvous: Vec::new(),
    }
}

/// Signalling messages of one session, routed from the control loop.
type SessionTx = mpsc::UnboundedSender<Msg>;

struct Inner {
    node: Arc<Node>,
    rendezvous: SocketAddr,
    rendezvous_id: NodeId,
    cfg: RwLock<SignalConfig>,
    control: watch::Sender<Option<Connection>>,
    observed: Mutex<Option<SocketAddr>>,
    sessions: Mutex<HashMap<SessionId, SessionTx>>,
    dispatch: Arc<Dispatch>,
    relays: Arc<RelaySet>,
    /// Where our NAT's port counter is, when it allocates contiguously.
    alloc: Arc<AllocTracker>,
    /// Relayed connections where we were the responder, for the upgrade
    /// (their method changes when the initiator moves them).
    relayed_in: Mutex<Vec<Connection>>,
}

/// A node's membership at a rendezvous. Dropping it (or `close`) leaves.
pub struct Signal {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
    /// Follows the node's published profile (see [`follow_profile`]).
    follow: JoinHandle<()>,
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.close();
    }
}

impl Signal {
    /// Joins the rendezvous at `rendezvous_addr` (whose node key must be
    /// `rendezvous_id`) with a public, unfiltered profile. Use
    /// [`Signal::join_with`] to give the node's detected profile.
    pub async fn join(node: Arc<Node>, rendezvous_addr: SocketAddr, rendezvous_id: NodeId) -> Result<Signal, ConnectError> {
        Self::join_with(node, rendezvous_addr, rendezvous_id, SignalConfig::new(public_profile())).await
    }

    pub async fn join_with(
        node: Arc<Node>,
        rendezvous_addr: SocketAddr,
        rendezvous_id: NodeId,
        cfg: SignalConfig,
    ) -> Result<Signal, ConnectError> {
        let dispatch = node.dispatch()?;
        let relays = RelaySet::new(&node);
        let (control, _) = watch::channel(None);
        let alloc = AllocTracker::new(&node, rendezvous_addr);
        let inner = Arc::new(Inner {
            node,
            rendezvous: rendezvous_addr,
            rendezvous_id,
            cfg: RwLock::new(cfg),
            control,
            observed: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            dispatch,
            relays,
            alloc,
            relayed_in: Mutex::new(Vec::new()),
        });
        // Watched from before the registration: a detection that finishes
        // while we register is followed too.
        let profiles = inner.node.local_profile().subscribe();
        // Learnt while we register: a session right after the join
        // primes too (see `crate::primer`); about one round trip.
        let primers = inner.cfg.read().map(|c| c.primers).unwrap_or(true);
        let learn = async {
            if primers {
                learn_primer_ttl(&inner.node, rendezvous_addr).await;
            }
        };
        let (conn, ()) = tokio::join!(register(&inner), learn);
        let conn = conn?;
        if let Some(basis) = contiguity_basis(&inner, &current_info(&inner)) {
            // Measured now, ready for the first session.
            inner.alloc.clone().refresh(basis, conn.rtt());
        }
        let task = runtime::spawn(control_loop(Arc::downgrade(&inner), conn));
        let follow = runtime::spawn(follow_profile(Arc::downgrade(&inner), profiles));
        Ok(Signal { inner, task, follow })
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.inner.node
    }

    /// Our address as the rendezvous sees it.
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        *self.inner.observed.lock().ok()?
    }

    /// Whether the control connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.control.borrow().as_ref().is_some_and(|c| c.close_reason().is_none())
    }

    /// Replaces the configured profile: the one advertised while the node
    /// has none published (a node whose detections publish to
    /// [`Node::local_profile`] needs no call here; tests use it to give a
    /// profile by hand to a node that detects none).
    pub fn set_profile(&self, profile: PeerInfo) {
        if let Ok(mut c) = self.inner.cfg.write() {
            c.profile = profile;
        }
    }

    /// The next incoming connection: sessions where this node was the
    /// responder, and unsolicited connections. `None` once the node closed.
    pub async fn accept(&self) -> Option<Connection> {
        self.inner.dispatch.accept().await
    }

    /// The relays to hold reservations at, best first (e.g. from the relay
    /// registry). The live ones are advertised to peers.
    pub fn set_relays(&self, relays: Vec<(NodeId, SocketAddr)>) {
        self.inner.relays.set_wanted(relays);
    }

    /// Relays we hold a live reservation at.
    pub fn reserved_relays(&self) -> Vec<(NodeId, SocketAddr)> {
        self.inner.relays.reserved()
    }

    /// Leaves the rendezvous (closes the control connection).
    pub fn close(&self) {
        self.task.abort();
        self.follow.abort();
        self.inner.relays.close();
        if let Some(c) = self.inner.control.borrow().as_ref() {
            c.close("signal closed");
        }
    }
}

/// How long the join waits for the primer TTL (a route of a few hops
/// answers within a round trip to the rendezvous).
const PRIMER_LEARN_BUDGET: Duration = Duration::from_millis(1000);

/// Learns the primer TTL towards the rendezvous into the node (see
/// [`crate::primer`]); a node that cannot learn one sends none.
async fn learn_primer_ttl(node: &Arc<Node>, rendezvous: SocketAddr) {
    let Ok(bound) = node.local_addr() else { return };
    let learn = move || tokio::task::spawn_blocking(move || crate::primer::ttl_towards(bound.ip(), rendezvous, PRIMER_LEARN_BUDGET));
    let got = learn().await.ok().flatten();
    node.set_primer_ttl(got);
    if got.is_some() {
        return;
    }
    // Routers whose ICMP budget was spent, or a route still settling: a few
    // more tries in the background, spaced past the routers' rate limit.
    let weak = Arc::downgrade(node);
    runtime::spawn(async move {
        for after in [2, 10, 30] {
            tokio::time::sleep(Duration::from_secs(after)).await;
            let got = learn().await.ok().flatten();
            let Some(node) = weak.upgrade() else { return };
            if got.is_some() {
                node.set_primer_ttl(got);
                return;
            }
        }
    });
}

async fn register(inner: &Arc<Inner>) -> Result<Connection, ConnectError> {
    let join_timeout = inner.cfg.read().map(|c| c.join_timeout).unwrap_or(Duration::from_secs(5));
    let go = async {
        let quic = inner.node.quic()?;
        let conn = quic.connect(inner.rendezvous, inner.rendezvous_id).await?;
        conn.send(Msg::Hello(HelloKind::Control).encode()).await?;
        loop {
            let Some(m) = conn.recv().await else { return Err(ConnectError::NoRendezvous) };
            if let Ok(Msg::Registered { observed }) = Msg::decode(&m) {
                if let Ok(mut o) = inner.observed.lock() {
                    *o = Some(observed);
                }
                inner.control.send_replace(Some(conn.clone()));
                return Ok(conn);
            }
        }
    };
    tokio::time::timeout(join_timeout, go).await.unwrap_or(Err(ConnectError::Timeout))
}

/// Receives on the control connection; re-registers when it is lost.
async fn control_loop(weak: std::sync::Weak<Inner>, mut conn: Connection) {
    loop {
        while let Some(bytes) = conn.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            match Msg::decode(&bytes) {
                Ok(Msg::Incoming { from, session, flags, attempts, mut profile, observed }) => {
                    keep_reachable_candidates(&inner, &mut profile, observed);
                    runtime::spawn(respond(inner, from, session, flags, attempts, profile, observed));
                }
                Ok(Msg::Registered { observed }) => {
                    // The answer to a registration refresh (see
                    // `follow_profile`): where the rendezvous sees us now.
                    let moved = inner.observed.lock().ok().map(|mut o| o.replace(observed) != Some(observed)).unwrap_or(false);
                    if moved {
                        tracing::debug!("signal: the rendezvous now sees us at {observed}");
                    }
                    if let Some(basis) = contiguity_basis(&inner, &current_info(&inner)) {
                        inner.alloc.clone().refresh(basis, conn.rtt());
                    }
                }
                Ok(m) => {
                    let Some(s) = m.session() else { continue };
                    let tx = inner.sessions.lock().ok().and_then(|m| m.get(&s).cloned());
                    if let Some(tx) = tx {
                        let _ = tx.send(m);
                    }
                }
                Err(e) => tracing::debug!("signal: bad message from rendezvous: {e}"),
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        inner.control.send_replace(None);
        let base = inner.cfg.read().map(|c| c.reconnect_backoff).unwrap_or(Duration::from_millis(250));
        let mut backoff = base;
        conn = loop {
            if inner.node.is_closed() {
                return;
            }
            match register(&inner).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::debug!("signal: reconnect to rendezvous failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(base * 8);
                }
            }
        };
    }
}

fn control(inner: &Inner) -> Result<Connection, ConnectError> {
    inner.control.borrow().clone().ok_or(ConnectError::NoRendezvous)
}

/// Follows the node's published profile for as long as the signal lives:
/// after every detection (first, periodic, forced, network change) the
/// registration is refreshed. The rendezvous keeps no profile of ours, only
/// the control connection and the address it sees it at (profile and
/// candidates travel in each session's `Connect` / `Answer`, read when
/// sent), so a refresh is a repeated `Hello(Control)`: the rendezvous
/// answers `Registered` with the address it sees now, which becomes our
/// reflexive address (and, behind a contiguous allocator, the basis of the
/// next measurement of its counter).
async fn follow_profile(weak: std::sync::Weak<Inner>, mut profiles: watch::Receiver<ProfileState>) {
    while profiles.changed().await.is_ok() {
        if !matches!(*profiles.borrow_and_update(), ProfileState::Known(_)) {
            continue;
        }
        let Some(inner) = weak.upgrade() else { return };
        if let Ok(ctl) = control(&inner) {
            if let Err(e) = ctl.send(Msg::Hello(HelloKind::Control).encode()).await {
                tracing::debug!("signal: registration refresh failed: {e}");
            }
        }
    }
}

/// This node's NAT profile now: the one its detections published on the
/// node, else the signal's configured one.
fn current_info(inner: &Inner) -> PeerInfo {
    let info = inner
        .node
        .local_profile()
        .get()
        .unwrap_or_else(|| inner.cfg.read().map(|c| c.profile.clone()).unwrap_or_else(|p| p.into_inner().profile.clone()));
    // As the rendezvous sees the socket (a port-overloading router can
    // show it another port than the observers saw): the whole session
    // decides from this, so fresh sockets and targets agree with what the
    // peer is told.
    let local_port = inner.node.local_addr().ok().map(|a| a.port());
    info.as_seen_by_rendezvous(inner.observed.lock().ok().and_then(|o| *o), local_port)
}

/// Waits (at most `max`) for the node's first detection when one is under
/// way, so that a session started right after the node did signals the
/// detected profile rather than the configured guess.
async fn settled_info(inner: &Inner, max: Duration) -> PeerInfo {
    let t0 = Instant::now();
    let pending = matches!(inner.node.local_profile().state(), ProfileState::Pending { .. });
    let info = inner.node.local_profile().settled(max).await;
    if pending {
        tracing::debug!("signal: waited {:?} for the first detection ({})", t0.elapsed(), if info.is_some() { "detected" } else { "none" });
    }
    current_info(inner)
}

/// When peers predict our ports by contiguity: what our NAT's latest
/// allocation is measured against (see [`crate::alloc_probe`]).
fn contiguity_basis(inner: &Inner, info: &PeerInfo) -> Option<Basis> {
    let Aim::Contiguous(delta) = strategy::aim(&peer_nat(info)) else { return None };
    let observed = inner.observed.lock().ok().and_then(|o| *o)?;
    Some(Basis { observed, delta })
}

/// For a session about to make mappings: our NAT's latest allocation when
/// peers predict our ports by contiguity (0 otherwise, or when it could
/// not be measured), and the hold that measures it again after the
/// session. See [`crate::alloc_probe`].
async fn session_base(inner: &Arc<Inner>, info: &PeerInfo) -> (u16, Option<Spent>) {
    let Some(basis) = contiguity_basis(inner, info) else { return (0, None) };
    let rtt = control(inner).map(|c| c.rtt()).unwrap_or(Duration::from_millis(100));
    let (base, spent) = inner.alloc.take(basis, rtt).await;
    (base, Some(spent))
}

/// What we tell a peer in a session: `info` is our NAT profile as the
/// session read it once ([`current_info`]); `fresh`: the session's fresh
/// socket, whose port peers aim at instead of the node socket's (see
/// [`fresh_socket`]); `alloc_base`: see [`session_base`]. Candidates,
/// reflexive address and relays are read now.
fn our_profile(inner: &Inner, info: &PeerInfo, fresh: Option<&SocketSet>, alloc_base: u16) -> Profile {
    let mut candidates = inner.cfg.read().map(|c| c.candidates.clone()).unwrap_or_default();
    let local = inner.node.local_addr().ok();
    let info = info.as_seen_by_rendezvous(inner.observed.lock().ok().and_then(|o| *o), local.map(|l| l.port()));
    let local_port = fresh.and_then(|f| f.port(1)).or(local.map(|l| l.port())).unwrap_or(0);
    // Our own addresses at the port the punch runs on: a peer behind the
    // same NAT reaches us there (see `crate::local_addrs`).
    for c in local.map(|l| crate::local_addrs::host_candidates(l, local_port)).unwrap_or_default() {
        if !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    candidates.truncate(signal::MAX_CANDIDATES);
    let answer_port = fresh.and_then(|f| f.port(ANSWER_SOCKET)).unwrap_or(0);
    Profile { info, local_port, answer_port, alloc_base, candidates, relays: inner.relays.reserved() }
}

fn peer_nat(p: &PeerInfo) -> PeerNat {
    PeerNat {
        nat: NatType { mapping: p.mapping, allocation: p.allocation, filtering: p.filtering },
        public: p.no_nat,
        port_delta: p.port_delta,
    }
}

/// Ports to try beyond the last observed one for a contiguous allocator.
const CONTIGUITY_WINDOW: usize = 8;

/// Where to aim at a peer with `profile`, seen by the rendezvous at
/// `observed`: most likely first. A contiguous peer is aimed past its
/// measured latest allocation when it sent one, else past `observed`.
pub fn targets(profile: &Profile, observed: SocketAddr) -> Vec<SocketAddr> {
    let mut v = Vec::new();
    let ip = observed.ip();
    match strategy::aim(&peer_nat(&profile.info)) {
        Aim::Reflexive => v.push(observed),
        Aim::Preserved => {
            v.push(SocketAddr::new(ip, profile.local_port));
            v.push(observed);
        }
        Aim::Contiguous(d) => {
            let base = if profile.alloc_base != 0 { profile.alloc_base } else { observed.port() };
            v.extend(contiguity_window(base, d, CONTIGUITY_WINDOW).into_iter().map(|p| SocketAddr::new(ip, p)));
            v.push(observed);
        }
        Aim::Unpredictable => v.push(observed),
    }
    for c in &profile.candidates {
        if !v.contains(c) {
            v.push(*c);
        }
    }
    v.dedup();
    v
}

/// Whether the peer (seen by the rendezvous at `peer_observed`) and we
/// share a public address.
/// Loopback (nodes of one host, as in tests) is not a NAT.
fn shares_public_ip(me: &Profile, peer_observed: SocketAddr) -> bool {
    !peer_observed.ip().is_loopback() && me.info.public_addr.is_some_and(|a| a.ip() == peer_observed.ip())
}

/// Drops a peer's inside (private, shared, link-local) candidates unless
/// it shares our public address: only then can they be on a LAN we are
/// on, and a peer's mere claims never aim our punches into other
/// networks. Public candidates stay (a node bound to a public address).
fn keep_reachable_candidates(inner: &Inner, peer: &mut Profile, peer_observed: SocketAddr) {
    let ours = inner.observed.lock().ok().and_then(|o| *o).map(|a| a.ip());
    let same_nat = ours == Some(peer_observed.ip());
    peer.candidates.retain(|c| same_nat || !crate::primer::is_inside(c.ip()));
}

/// The strategy for initiator `a` and responder `b`.
///
/// Two nodes seen at the same public address are behind one NAT: what the
/// table assumes (each reaches the other through the other's NAT) holds
/// only if that NAT hairpins, which most home routers and every plain
/// masquerade do not, while on a shared LAN they reach each other directly.
/// So they punch, each towards the other's public endpoint and host
/// candidates at once, whatever their NAT types (both sides see the same
/// two addresses, so both decide alike); a miss falls back to the relay.
fn decide(a: &Profile, b: &Profile, flags: u8, shared_public_ip: bool) -> Strategy {
    if flags & signal::FLAG_RELAY_ONLY != 0 {
        return Strategy::Relay;
    }
    if shared_public_ip {
        return Strategy::SimplePunch;
    }
    let s = strategy::choose(&peer_nat(&a.info), &peer_nat(&b.info));
    let no_direct = flags & (signal::FLAG_NO_DIRECT | signal::FLAG_UPGRADE) != 0;
    if no_direct && matches!(s, Strategy::Direct { .. } | Strategy::ConnectionReversal { .. }) {
        return Strategy::SimplePunch;
    }
    s
}

/// What both sides of a session know once the answer and the go are in:
/// who and where the peer is, when to start and the pair's round trip.
#[derive(Clone, Copy)]
struct Meeting<'a> {
    session: SessionId,
    peer_id: NodeId,
    peer: &'a Profile,
    /// The peer's address as the rendezvous saw it.
    observed: SocketAddr,
    /// The go's wait before starting.
    wait: Duration,
    pair_rtt: Duration,
    /// Punch transmissions per path.
    max_attempts: u32,
}

impl<'a> Meeting<'a> {
    fn new(session: SessionId, peer_id: NodeId, peer: &'a Profile, observed: SocketAddr, (wait, pair_rtt): (Duration, Duration), max_attempts: u32) -> Self {
        Meeting { session, peer_id, peer, observed, wait, pair_rtt, max_attempts }
    }
}

/// Registers a session's signalling channel; unregisters on drop.
struct SessionGuard<'a> {
    inner: &'a Inner,
    session: SessionId,
    rx: mpsc::UnboundedReceiver<Msg>,
}

impl<'a> SessionGuard<'a> {
    fn new(inner: &'a Inner, session: SessionId) -> SessionGuard<'a> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut m) = inner.sessions.lock() {
            m.insert(session, tx);
        }
        SessionGuard { inner, session, rx }
    }
}

impl SessionGuard<'_> {
    /// The responder's answer: its profile and observed address.
    async fn answer(&mut self) -> Result<(Profile, SocketAddr), ConnectError> {
        loop {
            match self.rx.recv().await {
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
    async fn go(&mut self) -> Result<(Duration, Duration), ConnectError> {
        loop {
            match self.rx.recv().await {
                Some(Msg::Go { wait, own_rtt, peer_rtt, .. }) => return Ok((wait, own_rtt + peer_rtt)),
                Some(_) => continue,
                None => return Err(ConnectError::NoRendezvous),
            }
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.inner.sessions.lock() {
            m.remove(&self.session);
        }
        self.inner.dispatch.forget_session(&self.session);
    }
}

/// Connects to `target` through the signal's rendezvous.
pub async fn connect(signal: &Signal, target: NodeId, opts: ConnectOpts) -> Result<(Connection, Method), ConnectError> {
    connect_detailed(signal, target, opts).await.map(|c| (c.conn, c.method))
}

/// Like [`connect`], also saying which strategy was used and how long it took.
pub async fn connect_detailed(signal: &Signal, target: NodeId, opts: ConnectOpts) -> Result<Connected, ConnectError> {
    let started = Instant::now();
    let timeout = opts.timeout;
    let r = tokio::time::timeout(timeout, initiate(&signal.inner, target, &opts)).await;
    match r {
        Ok(Ok((conn, method, strategy))) => {
            tracing::debug!("signal: connected to {} ({}, {})", conn.remote_address(), method.name(), strategy.name());
            conn.set_method(method);
            Ok(Connected { conn, method, strategy, elapsed: started.elapsed() })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// One connect, in one session; a prediction that failed by chance gets
/// one more session (see [`may_retry`]) before the relay.
async fn initiate(inner: &Arc<Inner>, target: NodeId, opts: &ConnectOpts) -> Result<(Connection, Method, Strategy), ConnectError> {
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

/// Whether a failed `strategy`, `elapsed` into a connect of `timeout`, gets
/// a second session: a prediction can miss by chance (a preserved port
/// already taken on the NAT, a contiguous port taken by another host
/// between observation and punch) and a new session predicts afresh, from a
/// new fresh socket. Only when a second try as long as the first and a
/// relay after it still fit in the timeout; birthday probing already
/// retries within its schedule, a plain direct dial has nothing to predict.
fn may_retry(strategy: Strategy, elapsed: Duration, timeout: Duration) -> bool {
    let predicted = matches!(strategy, Strategy::PredictPreservation | Strategy::PredictContiguity | Strategy::ConnectionReversal { .. });
    predicted && elapsed * 2 + RELAY_BUDGET <= timeout
}

/// Time kept for a relayed connection after a failed second session.
const RELAY_BUDGET: Duration = Duration::from_secs(1);

/// Which session of a connect [`initiate_once`] runs.
#[derive(Clone, Copy)]
enum Attempt {
    /// The first, of a connect that started at `started`: a failed
    /// prediction may get a second session.
    First { started: Instant },
    /// The second: a failure goes to the relay (or is the answer).
    Second,
}

/// `Ok(None)`: try again in a new session (only after [`Attempt::First`]).
async fn initiate_once(inner: &Arc<Inner>, target: NodeId, opts: &ConnectOpts, attempt: Attempt) -> Result<Option<(Connection, Method, Strategy)>, ConnectError> {
    let session: SessionId = rand::random();
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
    tracing::debug!("signal: session {:02x?} initiator strategy {}", &session[..4], strategy.name());
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
fn relay_error(e: ConnectError, opts: &ConnectOpts) -> ConnectError {
    match e {
        ConnectError::RelayRefused(_) if !opts.relay_only => ConnectError::NoRelay,
        other => other,
    }
}

/// Connects to `target` through one of its relays, dialling its node key
/// over the relay session, and starts looking after the connection.
async fn via_relay(inner: &Arc<Inner>, target: NodeId, session: SessionId, peer: &Profile, opts: &ConnectOpts) -> Result<Connection, ConnectError> {
    let virt = relay::virtual_addr();
    let (link, path) = open_relay_path(inner, target, &peer.relays, virt, None).await?;
    let conn = match dial(inner, virt, target, session, None).await {
        Ok(c) => c,
        Err(e) => {
            if let Ok(q) = inner.node.quic() {
                q.clear_route(virt);
            }
            link.close_session(path.session);
            return Err(e);
        }
    };
    conn.set_method(Method::Relayed);
    runtime::spawn(look_after_relayed(Arc::downgrade(inner), conn.clone(), target, peer.relays.clone(), link, path, opts.clone()));
    Ok(conn)
}

/// A session to `target` at the first of `relays` (skipping `except`) that
/// takes it, routed at `virt`.
async fn open_relay_path(
    inner: &Inner,
    target: NodeId,
    relays: &[(NodeId, SocketAddr)],
    virt: SocketAddr,
    except: Option<NodeId>,
) -> Result<(RelayLink, RelayPath), ConnectError> {
    let mut refused = None;
    for (id, addr) in relays.iter().filter(|(id, _)| Some(*id) != except) {
        match inner.relays.link_to(*id, *addr).await {
            Ok(link) => match link.open(target, virt).await {
                Ok(path) => return Ok((link, path)),
                Err(e) => {
                    tracing::debug!("relay {addr}: open failed: {e}");
                    if let relay::RelayError::Refused(r) = e {
                        refused = Some(r);
                    }
                }
            },
            Err(e) => tracing::debug!("relay {addr}: unreachable: {e}"),
        }
    }
    Err(refused.map_or(ConnectError::NoRelay, ConnectError::RelayRefused))
}

/// Initiator side of a relayed connection, until it closes: moves it to
/// another relay when its relay dies, and to a punched path when one opens.
async fn look_after_relayed(
    weak: std::sync::Weak<Inner>,
    conn: Connection,
    target: NodeId,
    relays: Vec<(NodeId, SocketAddr)>,
    mut link: RelayLink,
    mut path: RelayPath,
    opts: ConnectOpts,
) {
    let virt = path.virtual_addr;
    let cap = Duration::from_secs(30);
    let mut backoff = opts.upgrade_interval;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    let mut next_try = backoff.map_or_else(far, |d| tokio::time::Instant::now() + d);
    let punched = loop {
        tokio::select! {
            _ = conn.closed() => {
                link.close_session(path.session);
                if let Some(inner) = weak.upgrade() {
                    if let Ok(q) = inner.node.quic() { q.clear_route(virt); }
                }
                return;
            }
            _ = link.closed() => {
                let Some(inner) = weak.upgrade() else { return };
                let dead = path.relay;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                let mut moved = None;
                while moved.is_none() && tokio::time::Instant::now() < deadline && conn.close_reason().is_none() {
                    match open_relay_path(&inner, target, &relays, virt, Some(dead)).await {
                        Ok(lp) => moved = Some(lp),
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                match moved {
                    Some((l, p)) => {
                        tracing::debug!("relayed connection moved to relay {}", p.relay_addr);
                        link = l;
                        path = p;
                    }
                    None => {
                        tracing::debug!("relayed connection: no other relay; closing");
                        conn.close("relay lost");
                        return;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_try) => {
                let Some(inner) = weak.upgrade() else { return };
                match upgrade_once(&inner, target, &opts).await {
                    Ok(real) if !inner.node.relay_plane().has_alias(&real) => break (inner, real),
                    Ok(_) => tracing::debug!("upgrade: punched address already in use by another connection"),
                    Err(e) => tracing::debug!("upgrade attempt failed: {e}"),
                }
                backoff = backoff.map(|b| (b * 2).min(cap));
                next_try = backoff.map_or_else(far, |d| tokio::time::Instant::now() + d);
            }
        }
    };
    let (inner, real) = punched;
    inner.node.relay_plane().set_alias(real, Some(virt));
    if let Ok(q) = inner.node.quic() {
        q.route_to(virt, real);
    }
    conn.set_method(Method::Punched);
    tracing::debug!("relayed connection upgraded to the punched path {real}");
    drop(inner);
    // The peer may still send through the relay until its QUIC follows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    link.close_session(path.session);
    conn.closed().await;
    if let Some(inner) = weak.upgrade() {
        inner.node.relay_plane().set_alias(real, None);
        if let Ok(q) = inner.node.quic() {
            q.clear_route(virt);
        }
    }
}

/// One upgrade attempt: a punch session with `target` through the
/// rendezvous; the punched address, or why not.
async fn upgrade_once(inner: &Arc<Inner>, target: NodeId, opts: &ConnectOpts) -> Result<SocketAddr, ConnectError> {
    let session: SessionId = rand::random();
    let mut guard = SessionGuard::new(inner, session);
    let ctl = control(inner)?;
    let info = current_info(inner);
    let (base, _spent) = session_base(inner, &info).await;
    let me = our_profile(inner, &info, None, base);
    let flags = signal::FLAG_UPGRADE;
    let attempts = wire_attempts(opts.max_punch_attempts);
    ctl.send(Msg::Connect { to: target, session, flags, attempts, profile: me.clone() }.encode()).await?;
    let run = async {
        let (peer, observed) = guard.answer().await?;
        let strategy = decide(&me, &peer, flags, shares_public_ip(&me, observed));
        if !upgradable(strategy) {
            return Err(ConnectError::PunchFailed);
        }
        // Behind a plain router an upgrade races as the first punch did:
        // primed alike (the responder primes before its answer and starts
        // `primer_lead` after the go).
        prime(inner, Side::A, strategy, None, &peer, observed).await;
        let go = guard.go().await?;
        let ok = run_punch(inner, Side::A, Meeting::new(session, target, &peer, observed, go, opts.max_punch_attempts)).await?;
        Ok(ok)
    };
    tokio::time::timeout(opts.timeout, run).await.unwrap_or(Err(ConnectError::Timeout))
}

/// Strategies an upgrade can use: the punching ones on the node socket.
fn upgradable(s: Strategy) -> bool {
    matches!(s, Strategy::SimplePunch | Strategy::PredictPreservation | Strategy::PredictContiguity)
}

/// Responder side of an upgrade: punch, then watch our relayed connections
/// with `from` for the move to a real address.
async fn respond_upgrade(
    inner: Arc<Inner>,
    mut guard: SessionGuard<'_>,
    from: NodeId,
    strategy: Strategy,
    peer: Profile,
    observed: SocketAddr,
    attempts: u32,
) {
    if !upgradable(strategy) {
        return;
    }
    let Ok((wait, pair_rtt)) = guard.go().await else { return };
    let own_rtt = control(&inner).map(|c| c.rtt()).unwrap_or_default();
    let go = (wait + primer_lead(&inner, strategy, pair_rtt, own_rtt), pair_rtt);
    if let Err(e) = run_punch(&inner, Side::B, Meeting::new(guard.session, from, &peer, observed, go, attempts)).await {
        tracing::debug!("upgrade (responder) punch: {e}");
    }
    let conns: Vec<Connection> = inner
        .relayed_in
        .lock()
        .map(|mut v| {
            v.retain(|c| c.close_reason().is_none());
            v.iter().filter(|c| c.peer_id() == from).cloned().collect()
        })
        .unwrap_or_default();
    for c in conns {
        runtime::spawn(async move {
            // The initiator moves first; our QUIC follows at its next packet.
            for _ in 0..100 {
                if !relay::is_virtual(&c.remote_address()) {
                    c.set_method(Method::Punched);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

/// Responder side of a session, run by the control loop on `Incoming`.
/// The initiator's `max_punch_attempts` as `Connect` carries it (0: the
/// responder's default).
fn wire_attempts(n: u32) -> u8 {
    n.clamp(1, u8::MAX as u32) as u8
}

/// The punch transmissions per path a responder uses: the initiator's.
fn responder_attempts(attempts: u8) -> u32 {
    match attempts {
        0 => ConnectOpts::default().max_punch_attempts,
        n => n as u32,
    }
}

#[allow(clippy::too_many_arguments)]
async fn respond(inner: Arc<Inner>, from: NodeId, session: SessionId, flags: u8, attempts: u8, peer: Profile, observed: SocketAddr) {
    let mut guard = SessionGuard::new(&inner, session);
    // Asked before our first detection finished: answer with its result
    // (bounded; the initiator's connect timeout runs meanwhile).
    let wait = inner.cfg.read().map(|c| c.responder_profile_wait).unwrap_or(Duration::from_secs(5));
    let info = settled_info(&inner, wait).await;
    let Ok(ctl) = control(&inner) else { return };
    let (base, _spent) = session_base(&inner, &info).await;
    let mut me = our_profile(&inner, &info, None, base);
    let strategy = decide(&peer, &me, flags, shares_public_ip(&me, observed));
    tracing::debug!("signal: session {:02x?} responder strategy {}", &session[..4], strategy.name());
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
    let timeout = inner.cfg.read().map(|c| c.responder_timeout).unwrap_or(Duration::from_secs(15));
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
                if let Ok(mut v) = inner.relayed_in.lock() {
                    v.retain(|c| c.close_reason().is_none());
                    v.push(conn.clone());
                }
            }
            tracing::debug!("signal: session {:02x?} responder done ({}) from {}", &session[..4], method.name(), conn.remote_address());
            inner.dispatch.deliver(conn);
            if method != Method::Relayed {
                drop(guard);
                deliver_late(inner, session, timeout);
                return;
            }
        }
        Ok(Err(e)) => tracing::debug!("signal: session {:02x?} responder failed: {e}", &session[..4]),
        Err(_) => tracing::debug!("signal: session {:02x?} responder timed out", &session[..4]),
    }
    drop(guard);
}

/// The initiator gave up on a plain dial or listen and relayed, while the
/// responder's direct connection of the session may still arrive late (a
/// slow dial on a loaded host): it is closed rather than left open unused,
/// so the responder's application sees it end. A responder keeps listening
/// for the session ([`deliver_late`]) and gets the relayed one.
fn refuse_late(inner: &Arc<Inner>, session: SessionId) {
    on_late(inner, session, LATE_WINDOW, |_, c| c.close("superseded by a relayed connection"));
}

/// A responder whose session ended with a direct connection (its own dial,
/// or the initiator's) still takes a relayed connection of the session for
/// a while: the initiator may have given up on that direct path just before
/// it opened, and relayed instead. Without this the relayed connection, and
/// what the initiator sends on it, would be lost.
fn deliver_late(inner: Arc<Inner>, session: SessionId, timeout: Duration) {
    on_late(&inner, session, timeout.min(LATE_WINDOW), |d, c| {
        c.set_method(if relay::is_virtual(&c.remote_address()) { Method::Relayed } else { Method::Direct });
        d.deliver(c);
    });
}

/// Waits up to `window` for another connection of a finished `session`
/// and hands it to `f`; then stops taking the session's connections.
fn on_late(inner: &Inner, session: SessionId, window: Duration, f: impl FnOnce(&Dispatch, Connection) + Send + 'static) {
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
const LATE_WINDOW: Duration = Duration::from_secs(15);

/// Dials `addr` for `session` and announces the session. `rtt`: the
/// expected round trip, when known (see [`crate::quic::QuicEndpoint::connect_rtt`]).
async fn dial(inner: &Inner, addr: SocketAddr, peer: NodeId, session: SessionId, rtt: Option<Duration>) -> Result<Connection, ConnectError> {
    let conn = inner.node.quic()?.connect_rtt(addr, peer, rtt).await?;
    announce(conn, session).await
}

/// The first message of a session connection, which hands it to the
/// session on the other side. Only the connection that is kept says it: a
/// losing one of two racing dials is dropped unannounced.
async fn announce(conn: Connection, session: SessionId) -> Result<Connection, ConnectError> {
    conn.send(Msg::Hello(HelloKind::Session(session)).encode()).await?;
    Ok(conn)
}

/// Initiator of a punch: punches, and dials the most likely target at the
/// same moment instead of after the punch. When that prediction holds, the
/// peer's filter is open by the time the QUIC Initial arrives (the peer
/// started punching towards us at the go), so the connection is up one
/// round trip after the go instead of two. When the punch confirms the
/// same target first (the early Initial was dropped), a fresh dial races
/// the early one; when it confirms another target, that one is dialled.
/// A punch that fails ends the connect (a relay may take over) even if the
/// early dial is still waiting. From a fresh socket (`fresh` holds one),
/// the most likely target is routed through it from the start, so the
/// early dial leaves from there; the returned guard keeps the path socket
/// for the connection.
async fn punch_and_dial(inner: &Arc<Inner>, m: Meeting<'_>, fresh: SocketSet) -> Result<(Connection, Option<PathGuard>), ConnectError> {
    let Meeting { session, peer_id, peer, observed, pair_rtt, .. } = m;
    let quic = inner.node.quic()?;
    let first = targets(peer, observed)[0];
    let rtt = Some(pair_rtt);
    let mut early_path = fresh.share(1).map(|p| p.route(&quic, first));
    let punch = run_punch_from(inner, Side::A, m, fresh);
    let early = async {
        tokio::time::sleep(m.wait + EARLY_DIAL_LAG).await;
        quic.connect_rtt(first, peer_id, rtt).await
    };
    tokio::pin!(punch, early);
    let mut early_live = true;
    let (conn, guard) = loop {
        tokio::select! {
            r = &mut early, if early_live => match r {
                Ok(c) => break (c, early_path.take()),
                Err(e) => {
                    tracing::debug!("connect: early dial to {first}: {e}");
                    early_live = false;
                }
            },
            r = &mut punch => {
                let p = r?;
                let addr = p.success.remote_addr;
                if addr == first && early_live {
                    let again = quic.connect_rtt(addr, peer_id, rtt);
                    tokio::pin!(again);
                    let c = tokio::select! {
                        r = &mut early => match r { Ok(c) => c, Err(_) => again.await? },
                        r = &mut again => match r { Ok(c) => c, Err(_) => early.await? },
                    };
                    break (c, early_path.take());
                }
                // Another target, or the early dial failed: the punched path
                // (the early route goes first: one socket, one route).
                drop(early_path.take());
                let (addr, guard) = route_punched(inner, p)?;
                break (quic.connect_rtt(addr, peer_id, rtt).await?, guard);
            }
        }
    };
    Ok((announce(conn, session).await?, guard))
}

/// How long a plain dial (direct, connection reversal) may take before the
/// connect falls back to a relay: the handshake needs one round trip, and a
/// lost first Initial is resent after about three (see `connect_rtt`). It
/// was 4 s for a while, for dials on a loaded lab host that later proved to
/// be the lab's ARP table overflowing; at 2 s the BEAM lab (73 VMs on 2
/// cores) and 3040 matrix tries of direct and reversal pairs all connected
/// directly, and a failed dial now leaves room for a second session and a
/// relay within the default 10 s timeout.
fn dial_bound(pair_rtt: Duration) -> Duration {
    (pair_rtt * 20).max(Duration::from_secs(2))
}

/// A dial bounded by [`dial_bound`]; a dial that times out is a failed
/// punch, so that `allow_relay` can take over.
async fn dial_bounded(inner: &Inner, addr: SocketAddr, peer: NodeId, session: SessionId, pair_rtt: Duration) -> Result<Connection, ConnectError> {
    match tokio::time::timeout(dial_bound(pair_rtt), dial(inner, addr, peer, session, Some(pair_rtt))).await {
        Ok(Err(ConnectError::Timeout)) | Err(_) => Err(ConnectError::PunchFailed),
        Ok(r) => r,
    }
}

/// The plain dialler's result. An initiator whose dial failed returns the
/// error (it may relay); a responder whose dial failed still waits for the
/// session's connection, which the initiator may then open through a relay.
async fn plain_dial_outcome(
    side: Side,
    dialled: Result<Connection, ConnectError>,
    incoming: tokio::sync::oneshot::Receiver<Connection>,
) -> Result<(Connection, Method), ConnectError> {
    match (dialled, side) {
        (Ok(c), _) => Ok((c, Method::Direct)),
        (Err(e), Side::A) => Err(e),
        (Err(e), Side::B) => {
            tracing::debug!("signal: responder dial failed ({e}); waiting for a relayed connection");
            Ok((incoming.await.map_err(|_| ConnectError::Closed)?, Method::Relayed))
        }
    }
}

/// The plain listener's wait for the other side's dial. The initiator
/// gives up after [`dial_bound`] (and a little, for the dial to arrive) so
/// that it can relay; a responder waits as long as the session lives.
async fn listen_bounded(side: Side, incoming: tokio::sync::oneshot::Receiver<Connection>, pair_rtt: Duration) -> Result<Connection, ConnectError> {
    match side {
        Side::A => match tokio::time::timeout(dial_bound(pair_rtt) + pair_rtt, incoming).await {
            Ok(r) => r.map_err(|_| ConnectError::Closed),
            Err(_) => Err(ConnectError::PunchFailed),
        },
        Side::B => incoming.await.map_err(|_| ConnectError::Closed),
    }
}

/// The early dial leaves just after the punch's first packets, which open
/// our own filter towards the peer first.
const EARLY_DIAL_LAG: Duration = Duration::from_millis(2);

/// Runs the punch machine on the node socket after the go's wait: the
/// punched remote address.
async fn run_punch(inner: &Arc<Inner>, side: Side, m: Meeting<'_>) -> Result<SocketAddr, ConnectError> {
    let p = run_punch_from(inner, side, m, SocketSet::empty()).await?;
    Ok(p.success.remote_addr)
}

/// Like [`run_punch`], from the session's fresh socket when `fresh` holds
/// one (then the punched path is that socket, to carry QUIC).
async fn run_punch_from(inner: &Arc<Inner>, side: Side, m: Meeting<'_>, fresh: SocketSet) -> Result<Punched, ConnectError> {
    let Meeting { session, peer_id, peer, observed, wait, pair_rtt, max_attempts } = m;
    let reg = punch_driver::register(&inner.node, session);
    tokio::time::sleep(wait).await;
    let role = if side == Side::A { Role::Initiator } else { Role::Responder };
    let socket = fresh.indices().next().unwrap_or(0);
    let tgts = targets(peer, observed).into_iter().map(|a| (socket, a)).collect();
    let mut cfg = PunchConfig::new(role, inner.node.node_id(), peer_id, session, tgts, pair_rtt);
    cfg.max_attempts = max_attempts.max(1);
    cfg.seed = rand::random();
    punch_driver::run_with(inner.node.clone(), reg, cfg, fresh).await.map_err(|_| ConnectError::PunchFailed)
}

/// Sends TTL-limited primers (see [`crate::primer`]) to the peer's punch
/// targets from the socket the punch will use (the session's fresh one, or
/// the node's), when the strategy punches and a primer TTL is known. Each
/// side does so once it knows the other's addresses and before the go, so
/// our NAT(s) map and permit them before the peer's first punch, which
/// leaves after the go, can arrive. `side` is ours (A = initiator).
///
/// Birthday probing: the easy side primes every port it will probe (see
/// [`prime_probes`]); the hard side primes from the sockets it opens after
/// the go ([`prime_hard`]), nothing here.
async fn prime(inner: &Inner, side: Side, strategy: Strategy, fresh: Option<&SocketSet>, peer: &Profile, observed: SocketAddr) -> Primed {
    let Some(ttl) = inner.node.primer_ttl() else { return Primed::default() };
    match strategy {
        Strategy::BirthdayProbing { hard } if hard != side => prime_probes(inner, ttl, fresh, observed).await,
        s if upgradable(s) => {
            let socket = fresh.and_then(|f| f.indices().next());
            let node_socket = inner.node.socket().ok();
            // A peer's private candidates are reached on a shared LAN, not
            // through our NAT: no primer (it would only draw ICMP errors).
            for a in targets(peer, observed).into_iter().filter(|a| !crate::primer::is_inside(a.ip())) {
                match (socket, fresh, &node_socket) {
                    (Some(i), Some(f), _) => f.prime(i, a, ttl),
                    (None, _, Some(s)) => crate::primer::send(&**s, a, ttl),
                    _ => {}
                }
            }
            Primed::default()
        }
        _ => Primed::default(),
    }
}

/// What [`prime`] decided that the punch must follow.
#[derive(Clone, Copy, Debug, Default)]
struct Primed {
    /// The easy side of a birthday punch primed the ports this seed makes
    /// its machine probe ([`probe_ports`]): the machine's seed.
    probe_seed: Option<u64>,
}

/// The salt the punch machine puts on its seed for the easy side's probe
/// ports (`macula_nat_proto::punch`, `Punch::new`; checked by a test here).
const PROBE_PORTS_SALT: u64 = 0x6269_7274_6864_6179;

/// The hard side's ports a birthday easy side whose machine has `seed`
/// probes, in its order (the first [`BirthdaySchedule`]'s probes; the
/// plan does not depend on the round trip).
fn probe_ports(seed: u64) -> impl Iterator<Item = u16> {
    let n = BirthdaySchedule::standard(Duration::ZERO).map_or(0, |s| s.plan.probes as usize);
    macula_nat_proto::port_predictor::BirthdayPorts::new(seed ^ PROBE_PORTS_SALT).take(n)
}

// Birthday probing behind plain routers: why both sides prime, and what.
//
// Linux conntrack, which a plain router's masquerade rides on: a UDP packet
// R:r -> NAT:P that matches no entry's reply tuple becomes a new entry of
// its own (R:r -> P, the router's own traffic). Nothing listens, so the
// router refuses it (an ICMP error), but the entry is confirmed and stays
// for the UDP timeout (30 s unreplied). A later outbound packet whose
// masquerade would map to P towards R:r needs the reply tuple R:r -> P,
// which is taken: it gets another public port, and the peer's
// port-dependent filter drops it. An outbound entry that exists first makes
// the peer's packet match its reply tuple instead (forwarded, or dropped
// by a filter: no entry either way). So for every tuple (our public port,
// the peer's endpoint) the punch needs, our outbound entry must exist
// before the peer's first packet on it reaches our NAT. The tuples of a
// birthday punch, hard side H (socket i mapped at public port h_i, a random
// one per socket), easy side E (one endpoint e):
//
// * H's side, (h_i, e) for every socket: E's packets on it are its probes
//   of port h_i (answers and triggered checks come after H's request got
//   through). Without a primer the mapping exists once socket i's first
//   punch packet left (paced at rate_pps, the last one `sockets / rate`
//   after the start); probes start later by schedule, but a probe that
//   overtakes costs that port. H primes from every socket, the node's
//   included, as soon as it opened them ([`prime_hard`], after the go and
//   before its start): every mapping then exists seconds before E's first
//   probe (`start_after` >= sockets / rate + RTT + 100 ms), whichever side
//   initiated; no timing is left to get right.
// * E's side, (e, H:q) for every port q E probes: H's packets, from its
//   start on, reach E's NAT from every h_i, and each h_i that E will probe
//   would be spoilt before E's probe leaves (E's probes come last by
//   design, so without primers every hit was spoilt: 0 of 9 in the lab).
//   E cannot know the h_i, but it knows the ports it will probe (a seeded
//   permutation: the seed is chosen here and handed to its machine) and
//   primes them all, in probe order, before the punch starts
//   ([`prime_probes`]): the initiator on the answer (before the go), the
//   responder before sending its answer. A primed responder starts
//   [`primer_lead`] after the go (the initiator's one-way time, plus
//   margin), so an initiator's primers have left before the responder's
//   first packet can arrive. A few hundred primers take milliseconds; a
//   hard packet that still overtook them spoils one tuple of hundreds (each
//   socket is a hit with probability ~1%), not the pair.
//
// H's packets on a primed tuple now pass E's NAT (the entry is E's own),
// so a hit can complete while H is still opening its mappings, before E
// probes. Primers are TTL-limited (the hop count learnt at join) and die at
// the router past our own NAT: they never reach the peer's NAT, where they
// would do the harm they prevent. Without a learnt TTL nothing is primed
// (ordinary behaviour); on an ordinary router (input dropped) the primers
// only create the entries the punch would create a little later.

/// Birthday probing, easy side: primers to every port of the hard side's
/// IP we will probe, from the socket we probe from (see the comment
/// above); the seed the machine must use.
async fn prime_probes(inner: &Inner, ttl: u8, fresh: Option<&SocketSet>, observed: SocketAddr) -> Primed {
    let ip = observed.ip();
    if crate::primer::is_inside(ip) {
        return Primed::default();
    }
    let seed: u64 = rand::random();
    let dsts = probe_ports(seed).map(|p| SocketAddr::new(ip, p));
    let sent = match fresh.and_then(|f| f.indices().next()).and_then(|i| fresh?.io(i)) {
        Some(io) => crate::birthday::prime_each(&*io, dsts, ttl).await,
        None => match inner.node.socket() {
            Ok(s) => crate::birthday::prime_each(&*s, dsts, ttl).await,
            Err(_) => return Primed::default(),
        },
    };
    tracing::debug!("birthday: primed {sent} probe ports of {ip} (ttl {ttl})");
    Primed { probe_seed: Some(seed) }
}

/// Birthday probing, hard side: a primer from the node socket and from every
/// extra socket to the easy side's endpoint (see the comment above).
async fn prime_hard(inner: &Inner, set: &SocketSet, easy: SocketAddr) {
    let Some(ttl) = inner.node.primer_ttl().filter(|_| !crate::primer::is_inside(easy.ip())) else { return };
    if let Ok(s) = inner.node.socket() {
        crate::primer::send(&*s, easy, ttl);
    }
    let sent = set.prime_all(easy, ttl).await;
    tracing::debug!("birthday: primed {} sockets towards {easy} (ttl {ttl})", sent + 1);
}

/// How much later than the go a primed responder starts punching. The
/// initiator primes when the answer reaches it, together with the go, so
/// its primer may reach its own NAT only a little before the start, or
/// after it when the path from its host to its NAT is slow (a slow home
/// link); a responder punch arriving first would make that NAT confirm an
/// entry that moves the initiator's port. Our own NAT is primed already,
/// and the initiator's first punch gets through it whenever it arrives, so
/// waiting costs nothing when that punch wins, and otherwise at most this
/// lead: the initiator's one-way time to the rendezvous (its part of the
/// pair's round trip, which bounds its inside delay) and
/// [`PRIMER_SCHEDULING`].
fn primer_lead(inner: &Inner, strategy: Strategy, pair_rtt: Duration, own_rtt: Duration) -> Duration {
    if inner.node.primer_ttl().is_none() {
        return Duration::ZERO;
    }
    let lead = pair_rtt.saturating_sub(own_rtt) / 2 + PRIMER_SCHEDULING;
    match strategy {
        // An easy initiator sends a few hundred primers (milliseconds on a
        // loaded host); the birthday schedule takes seconds, so a little
        // more lead costs nothing.
        Strategy::BirthdayProbing { .. } => lead + PRIMER_BIRTHDAY_SENDING,
        s if upgradable(s) => lead,
        _ => Duration::ZERO,
    }
}

/// Extra lead of a primed birthday responder (see [`primer_lead`]).
const PRIMER_BIRTHDAY_SENDING: Duration = Duration::from_millis(20);

/// What the initiator's runtime may take between the answer's arrival and
/// its primer leaving, on a loaded host (with 2 ms, one of 100 lab tries
/// failed while both cores were busy; with 5 ms, 400 of 400 punched).
const PRIMER_SCHEDULING: Duration = Duration::from_millis(5);

/// The punch's path socket, if it won on one, made the QUIC path to the
/// punched address.
fn route_punched(inner: &Inner, p: Punched) -> Result<(SocketAddr, Option<PathGuard>), ConnectError> {
    let remote = p.success.remote_addr;
    let quic = inner.node.quic()?;
    Ok((remote, p.path.map(|path| path.route(&quic, remote))))
}

/// Whether a side with `info` can be predicted only through a fresh socket
/// (HD/PD mapping with port preservation: see [`crate::birthday`]).
fn needs_fresh_socket(info: &PeerInfo) -> bool {
    strategy::aim(&peer_nat(info)) == Aim::Preserved
}

/// Whether `side` is addressed at its preserved port in `strategy`.
fn aimed_at_preserved_port(strategy: Strategy, side: Side) -> bool {
    match strategy {
        Strategy::PredictPreservation | Strategy::PredictContiguity => true,
        Strategy::ConnectionReversal { dialer } => dialer != side,
        Strategy::BirthdayProbing { hard } => hard != side,
        Strategy::Direct { .. } | Strategy::SimplePunch | Strategy::Relay => false,
    }
}

/// The fresh set's socket a PD-mapping listener answers a connection
/// reversal from (the split path, see `strategy`); socket 1 is the one
/// peers aim at.
const ANSWER_SOCKET: usize = 2;

/// The session's fresh socket, when our profile needs one, plus the answer
/// socket when we may listen in a connection reversal (`may_listen`) with
/// PD mapping.
fn fresh_socket(inner: &Inner, info: &PeerInfo, session: SessionId, may_listen: bool) -> Option<SocketSet> {
    let (preserved, pd) = (needs_fresh_socket(info), info.mapping == Mapping::Pd);
    if !preserved {
        return None;
    }
    let ip = inner.node.local_addr().ok()?.ip();
    let set = SocketSet::open(ip, if pd && may_listen { ANSWER_SOCKET } else { 1 }, session);
    (!set.is_empty()).then_some(set)
}

/// Where the answer of a PD-mapping listener we dial may come from, so that
/// our filter admits it: its contiguity window (PC) or its answer socket
/// (PP). `tg` are its targets, `to` the one we dial.
fn answer_ports(peer: &Profile, tg: &[SocketAddr], to: SocketAddr) -> Vec<SocketAddr> {
    match strategy::aim(&peer_nat(&peer.info)) {
        Aim::Contiguous(_) => tg.iter().skip(1).filter(|t| t.ip() == to.ip()).copied().collect(),
        Aim::Preserved if peer.answer_port != 0 => vec![SocketAddr::new(to.ip(), peer.answer_port)],
        _ => Vec::new(),
    }
}

/// Acts on the go: `side` is our side in `strategy` (A = initiator).
async fn act(inner: &Arc<Inner>, side: Side, strategy: Strategy, m: Meeting<'_>, fresh: Option<SocketSet>, primed: Primed) -> Result<(Connection, Method), ConnectError> {
    let Meeting { session, peer_id, peer, observed, wait, pair_rtt, .. } = m;
    // Register for the session connection before anything can arrive.
    let incoming = inner.dispatch.expect_session(session);
    let dialer_is_us = |d: Side| d == side;
    match strategy {
        Strategy::Direct { dialer } => {
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
        Strategy::ConnectionReversal { dialer } => {
            tokio::time::sleep(wait).await;
            if dialer_is_us(dialer) {
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
                        Ok(c) => crate::birthday::after_close(c, move || plane.end_follow(to)),
                        Err(_) => plane.end_follow(to),
                    }
                }
                plain_dial_outcome(side, dialled, incoming).await
            } else {
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
        }
        Strategy::SimplePunch | Strategy::PredictPreservation | Strategy::PredictContiguity => {
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
                    let first = targets(peer, observed)[0];
                    // From a fresh socket: take the initiator's early dial
                    // in from where we expect it, before our punch decides.
                    let mut early_path = fresh.share(1).map(|p| p.route(&quic, first));
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
        Strategy::BirthdayProbing { hard } => {
            birthday(inner, side, hard, m, incoming, fresh, primed).await
        }
        // Handled before the go by the callers.
        Strategy::Relay => Err(ConnectError::NoRelay),
    }
}

/// Birthday probing (see [`crate::birthday`] and
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
async fn birthday(
    inner: &Arc<Inner>,
    side: Side,
    hard: Side,
    m: Meeting<'_>,
    incoming: tokio::sync::oneshot::Receiver<Connection>,
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
    let extra = if side == hard {
        // The easy side's one endpoint: its reflexive address (EI mapping) or
        // preserved port, first in `targets`.
        let easy = targets(peer, observed).first().copied().unwrap_or(observed);
        let ip = inner.node.local_addr().map_err(|_| ConnectError::Closed)?.ip();
        // The node socket is one of the schedule's sockets.
        let set = SocketSet::open(ip, sched.sockets().saturating_sub(1), session);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_behind_one_public_address_punch_whatever_their_types() {
        // Two symmetric NATs: the table says relay; behind the same one
        // (same public IP) they punch (LAN candidates, or a hairpin).
        let mut a = contiguous_peer(0);
        a.info.allocation = Allocation::Rd;
        a.info.public_addr = Some("203.0.113.9:4000".parse().unwrap());
        let b = a.clone();
        assert_eq!(decide(&a, &b, 0, false), Strategy::Relay);
        assert!(shares_public_ip(&a, "203.0.113.9:5000".parse().unwrap()));
        assert!(!shares_public_ip(&a, "203.0.113.10:4000".parse().unwrap()));
        assert_eq!(decide(&a, &b, 0, true), Strategy::SimplePunch);
        assert_eq!(decide(&a, &b, signal::FLAG_RELAY_ONLY, true), Strategy::Relay);
        // Nodes of one host (loopback) are not behind a NAT.
        a.info.public_addr = Some("127.0.0.1:4000".parse().unwrap());
        assert!(!shares_public_ip(&a, "127.0.0.1:5000".parse().unwrap()));
    }

    fn contiguous_peer(alloc_base: u16) -> Profile {
        let info = PeerInfo {
            mapping: Mapping::Pd,
            filtering: Filtering::Pd,
            allocation: Allocation::Pc,
            confidence: Confidence::High,
            public_addr: None,
            port_delta: Some(2),
            no_nat: false,
            detected_at: 0,
            endpoints: Vec::new(),
            rendezvous: Vec::new(),
        };
        Profile { info, local_port: 5000, answer_port: 0, alloc_base, candidates: Vec::new(), relays: Vec::new() }
    }

    #[test]
    fn a_contiguous_peer_is_aimed_past_its_latest_allocation() {
        let observed: SocketAddr = "203.0.113.9:20910".parse().unwrap();
        let at = |p: u16| SocketAddr::new(observed.ip(), p);
        // Measured for the session: past it, the observed address last.
        let t = targets(&contiguous_peer(20944), observed);
        let want: Vec<_> = (1..=CONTIGUITY_WINDOW as u16).map(|k| at(20944 + 2 * k)).chain([observed]).collect();
        assert_eq!(t, want);
        // Not measured: past the observed mapping.
        let t = targets(&contiguous_peer(0), observed);
        assert_eq!(t[0], at(20912));
        assert_eq!(t.len(), CONTIGUITY_WINDOW + 1);
        // The window wraps at the top of the port range.
        let t = targets(&contiguous_peer(65534), observed);
        assert_eq!(&t[..2], &[at(1024), at(1026)]);
    }

    /// The easy side primes the ports its machine will probe: the same
    /// ports in the same order, from the same seed.
    #[test]
    fn primed_probe_ports_are_the_machines_probes() {
        use macula_nat_proto::punch::Punch;
        let seed = 0x1234_5678_9abc_def0;
        let ip: std::net::IpAddr = "203.0.113.40".parse().unwrap();
        let sched = BirthdaySchedule::standard(Duration::from_millis(50)).unwrap();
        let mut cfg = PunchConfig::new(Role::Responder, [1; 32], [2; 32], [3; 16], Vec::new(), Duration::from_millis(50));
        cfg.seed = seed;
        sched.configure_easy(&mut cfg, 0, ip);
        let t0 = Instant::now();
        let mut p = Punch::new(cfg, t0);
        let gap = Duration::from_secs(1) / sched.rate_pps;
        let mut probed = Vec::new();
        let mut t = t0 + sched.start_after;
        while probed.len() < sched.plan.probes as usize && t < t0 + sched.timeout {
            while let Some(tx) = p.poll_transmit(t) {
                assert_eq!(tx.dst.ip(), ip);
                probed.push(tx.dst.port());
            }
            t += gap;
        }
        let primed: Vec<u16> = probe_ports(seed).collect();
        assert_eq!(primed.len(), sched.plan.probes as usize);
        assert_eq!(probed, primed);
    }

    #[test]
    fn a_second_session_only_for_predictions_that_fit_the_timeout() {
        let t = Duration::from_secs(10);
        let punch_timeout = Duration::from_millis(2300);
        assert!(may_retry(Strategy::PredictContiguity, punch_timeout, t));
        assert!(may_retry(Strategy::PredictPreservation, punch_timeout, t));
        assert!(may_retry(Strategy::ConnectionReversal { dialer: Side::A }, punch_timeout, t));
        // A reversal whose plain-dial bound ran out after 4.3 s just fits
        // twice plus a relay into 10 s; a slower one only into a longer
        // timeout.
        let cr = Strategy::ConnectionReversal { dialer: Side::B };
        assert!(may_retry(cr, Duration::from_millis(4300), t));
        assert!(!may_retry(cr, Duration::from_millis(4600), t));
        assert!(may_retry(cr, Duration::from_millis(4600), Duration::from_secs(15)));
        // The edge: exactly twice plus the relay budget fits.
        assert!(may_retry(Strategy::PredictContiguity, (t - RELAY_BUDGET) / 2, t));
        assert!(!may_retry(Strategy::PredictContiguity, (t - RELAY_BUDGET) / 2 + Duration::from_millis(1), t));
        // Nothing predicted: a new session would not do better.
        for s in [Strategy::Direct { dialer: Dialer::A }, Strategy::SimplePunch, Strategy::BirthdayProbing { hard: Side::A }, Strategy::Relay] {
            assert!(!may_retry(s, Duration::ZERO, t), "{s}");
        }
    }
}
