//! Connections as resources owned by a process.
//!
//! Each connection has one reader task that turns the peer's messages into
//! `{macula_connection, Conn, {message, Term}}` for the owner, in order,
//! tells it `{macula_connection, Conn, {method_changed, Method}}` when the
//! path changes (a relayed connection that got punched), and ends with
//! `{macula_connection, Conn, {closed, Reason}}`. Sends go through
//! one writer task per connection (a queue), so two `send/2` calls from one
//! process arrive in the order they were made. The owner is monitored: when
//! it dies the connection closes.
//!
//! Terms are decoded with the VM's safe decoder: a message that would
//! create atoms unknown on this node arrives as `{unsafe_message, Binary}`.
//!
//! # Flow control (issue 18)
//!
//! The reader takes a message off the QUIC stream only when it may hand it
//! on (it reads one ahead, no more). While it holds one, quinn stops
//! reading the stream, its stream/connection receive windows fill, and the
//! peer's writes (then its `send/2`) wait: QUIC flow control is the
//! back-pressure, nothing is buffered here. Who may receive is the owner's
//! mode, as in `gen_tcp`:
//!
//! - `{active, true}` (the default): delivered to the mailbox within a
//!   window of [`WINDOW_MSGS`] messages and [`WINDOW_BYTES`] bytes not yet
//!   known to be consumed. A NIF cannot see a mailbox, so at half a window
//!   the reader asks the `macula_connection_flow` process (Erlang) to look:
//!   it reads `process_info(Owner, message_queue_len)` and answers with
//!   `conn_credit/3`; at most that many of our latest deliveries can still
//!   be queued, the older ones are confirmed. With a full window the
//!   reader waits and the helper polls (backing off to 64 ms) until the
//!   owner is down to half a window. One O(1) look per ~500 messages while
//!   the owner keeps up; nothing per message. (Credit returned by the
//!   owner itself would need the owner's cooperation, which the guide's
//!   plain `receive` loops do not give.)
//! - `{active, once}`, `{active, N}` (a counter, `passive` when it runs
//!   out), `{active, false}` with `recv`: exactly what the owner asked for.
//!
//! The reader is the only sender of the owner's connection messages (data,
//! `passive`, `method_changed`, `closed`): NIFs only change the state under
//! the lock and wake it, so `passive` always follows the last message of
//! its batch and `closed` comes last.

use crate::node_nif::NodeRes;
use crate::{atoms, convert, guard, reply};
use macula_nat_core::quic::{CloseReason, Connection};
use macula_nat_core::{Method, Node};
use rustler::env::SavedTerm;
use rustler::{Atom, Binary, Encoder, Env, LocalPid, Monitor, OwnedEnv, ResourceArc, Term};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};

mod flow_atoms {
    rustler::atoms! {
        passive,
        once,
        not_passive,
        wait,
        check,
        macula_connection_flow,
    }
}

type SendJob = (Vec<u8>, Option<oneshot::Sender<Result<(), String>>>);

/// Bytes that may wait ahead of the stream before `send/2` waits for the
/// writer: below it a send answers `ok` at once (queued, in order), which
/// took 1 KiB sends from ~20k to ~160k per second; above it the caller
/// waits, so a fast sender cannot grow the queue without bound.
const HIGH_WATER: usize = 4 << 20;

/// `{active, true}`: messages the owner's mailbox may hold from this
/// connection before the reader waits for it to drain.
pub const WINDOW_MSGS: usize = 1000;
/// `{active, true}`: wire bytes of those messages (one message larger than
/// this still passes, alone).
pub const WINDOW_BYTES: usize = 4 << 20;
/// A window in use is confirmed again by polling at most this often.
const HELPER_RETRY: Duration = Duration::from_millis(50);
/// Safety net: a check the helper never answered (it restarted) is asked
/// again after this.
const CHECK_AGAIN: Duration = Duration::from_secs(1);

/// Who may receive the next message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// `{active, true}`: the owner, within the window.
    Active,
    /// `{active, once}`: the owner, one message, then `Passive`.
    Once,
    /// `{active, N}`: the owner, N more messages, then `passive`.
    Count(i32),
    /// `{active, false}`: only `recv` callers.
    Passive,
}

/// `true | false | once | N` (N in -32768..32767): the mode; `None` for
/// anything else.
pub fn decode_mode(t: Term) -> Option<Mode> {
    if let Ok(b) = t.decode::<bool>() {
        return Some(if b { Mode::Active } else { Mode::Passive });
    }
    if let Ok(a) = t.decode::<Atom>() {
        return (a == flow_atoms::once()).then_some(Mode::Once);
    }
    match t.decode::<i64>() {
        Ok(n) if (-32768..=32767).contains(&n) => Some(Mode::Count(n as i32)),
        _ => None,
    }
}

/// A `recv` waiting for the next message.
struct Recv {
    id: u64,
    pid: LocalPid,
    env: OwnedEnv,
    reference: SavedTerm,
}

struct Flow {
    owner: LocalPid,
    monitor: Option<Monitor>,
    mode: Mode,
    /// `{active, N}` ran out (or was set to N <= 0): the reader owes the
    /// owner a `passive` message.
    passive_notice: bool,
    /// `Active`: sizes of the messages delivered to the owner and not yet
    /// known to be consumed, oldest first.
    unconfirmed: VecDeque<usize>,
    unconfirmed_bytes: usize,
    /// `Active` and the window is full: the reader waits for the helper.
    blocked: bool,
    /// The check the helper is working on (0: none); a newer one makes an
    /// older one's polls stop.
    check_token: u64,
    next_token: u64,
    /// Deliveries since the last check was asked: an owner that is behind
    /// (checks that confirm little) is looked at every quarter window, not
    /// after every message past half.
    since_check: usize,
    since_check_bytes: usize,
    recvs: VecDeque<Recv>,
    next_recv: u64,
    /// The reader is done: `recv` answers `{error, closed}` at once.
    ended: bool,
    /// `{quality, Interval}`: the owner gets reports and path events.
    quality_every: Option<Duration>,
}

impl Flow {
    fn window_open(&self) -> bool {
        let n = self.unconfirmed.len();
        n == 0 || (n < WINDOW_MSGS && self.unconfirmed_bytes < WINDOW_BYTES)
    }

    /// Hysteresis: a full window opens again only at half, so a slow owner
    /// costs one poll per half window, not one per message.
    fn below_low_water(&self) -> bool {
        let n = self.unconfirmed.len();
        n == 0 || (n <= WINDOW_MSGS / 2 && self.unconfirmed_bytes <= WINDOW_BYTES / 2)
    }

    fn new_token(&mut self) -> u64 {
        self.since_check = 0;
        self.since_check_bytes = 0;
        self.next_token += 1;
        self.check_token = self.next_token;
        self.check_token
    }

    /// A new owner's mailbox holds nothing of ours.
    fn reset_window(&mut self) {
        self.unconfirmed.clear();
        self.unconfirmed_bytes = 0;
        self.blocked = false;
        self.check_token = 0;
        self.since_check = 0;
        self.since_check_bytes = 0;
    }

    /// `queue_len` messages are in the owner's mailbox: at most that many
    /// of our latest deliveries are still there.
    fn confirm(&mut self, queue_len: usize) {
        while self.unconfirmed.len() > queue_len {
            if let Some(b) = self.unconfirmed.pop_front() {
                self.unconfirmed_bytes -= b;
            }
        }
    }
}

pub struct ConnRes {
    conn: Connection,
    /// To tell which relay a relayed connection goes through.
    node: Weak<Node>,
    flow: Mutex<Flow>,
    /// Wakes the reader after a change to `flow`.
    wake: Notify,
    writer: mpsc::UnboundedSender<SendJob>,
    queued: Arc<AtomicUsize>,
}

impl ConnRes {
    fn owner(&self) -> Option<LocalPid> {
        self.flow.lock().ok().map(|f| f.owner)
    }

    /// What `get_info/2` and `stats/1` answer from.
    pub(crate) fn info_map<'a>(&self, env: Env<'a>) -> Term<'a> {
        let c = &self.conn;
        let method = c.method();
        let remote = c.remote_address().to_string();
        let mut pairs = vec![
            (atoms::closed().encode(env), c.close_reason().is_some().encode(env)),
            (atoms::connection_method().encode(env), method_atom(method).encode(env)),
            (atoms::peer().encode(env), convert::binary(env, &c.peer_id())),
            (atoms::remote_address().encode(env), convert::binary(env, remote.as_bytes())),
            (atoms::rtt_ms().encode(env), (c.rtt().as_micros() as f64 / 1000.0).encode(env)),
        ];
        pairs.extend(crate::quality_nif::quality_pairs(env, c, &self.node));
        Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| atoms::error().encode(env))
    }

    /// Starts (`Some`) or stops quality reports to the owner.
    pub(crate) fn set_quality(&self, every: Option<Duration>) {
        if let Ok(mut f) = self.flow.lock() {
            f.quality_every = every;
        }
        self.wake.notify_one();
    }
}

#[rustler::resource_impl]
impl rustler::Resource for ConnRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, _mon: Monitor) {
        // Only the current owner's death closes: a monitor of a former
        // owner may still fire after `controlling_process`.
        let current = self.owner();
        if current.map(|c| c == pid).unwrap_or(true) {
            self.conn.close("owner exited");
        }
    }
}

pub fn method_atom(m: Method) -> Atom {
    match m {
        Method::Direct => atoms::direct(),
        Method::Punched => atoms::punched(),
        Method::Relayed => atoms::relayed(),
    }
}

fn close_reason<'a>(env: Env<'a>, r: &CloseReason) -> Term<'a> {
    match r {
        CloseReason::Local { .. } => atoms::normal().encode(env),
        CloseReason::Peer { reason, .. } => (atoms::peer_closed(), convert::binary(env, reason.as_bytes())).encode(env),
        CloseReason::NodeClosed => atoms::node_closed().encode(env),
        CloseReason::TimedOut => atoms::timeout().encode(env),
        CloseReason::Reset => atoms::reset().encode(env),
        CloseReason::Failed(m) => (atoms::failed(), convert::binary(env, m.as_bytes())).encode(env),
        CloseReason::TooLarge { len, max } => (atoms::too_large(), *len, *max).encode(env),
    }
}

/// Wraps a fresh connection of `node` in a resource owned by `owner`,
/// starts its reader and writer, in the default mode (`{active, true}`).
/// Its method is the connection's own (set by the connector). Callable
/// from runtime threads.
pub fn adopt(conn: Connection, node: &Arc<Node>, owner: LocalPid) -> Option<ResourceArc<ConnRes>> {
    adopt_in(conn, node, owner, Mode::Active)
}

/// As [`adopt`], starting in `mode` (no message can slip past it).
pub fn adopt_in(conn: Connection, node: &Arc<Node>, owner: LocalPid, mode: Mode) -> Option<ResourceArc<ConnRes>> {
    let (tx, rx) = mpsc::unbounded_channel();
    // Subscribed before anyone can change it, so no change goes unreported.
    let methods = conn.watch_method();
    let (mode, passive_notice) = match mode {
        Mode::Count(n) if n <= 0 => (Mode::Passive, true),
        m => (m, false),
    };
    let res = ResourceArc::new(ConnRes {
        conn: conn.clone(),
        node: Arc::downgrade(node),
        flow: Mutex::new(Flow {
            owner,
            monitor: None,
            mode,
            passive_notice,
            unconfirmed: VecDeque::new(),
            unconfirmed_bytes: 0,
            blocked: false,
            check_token: 0,
            next_token: 0,
            since_check: 0,
            since_check_bytes: 0,
            recvs: VecDeque::new(),
            next_recv: 0,
            ended: false,
            quality_every: None,
        }),
        wake: Notify::new(),
        writer: tx,
        queued: Arc::new(AtomicUsize::new(0)),
    });
    let Some(mon) = res.monitor(None, &owner) else {
        // The owner is already gone.
        conn.close("owner exited");
        return None;
    };
    if let Ok(mut f) = res.flow.lock() {
        f.monitor = Some(mon);
    }
    // Every application connection is monitored (4 samples a second, no
    // packet): black holes are noticed whether or not anyone subscribed.
    conn.monitor_quality();
    macula_nat_core::runtime::spawn(writer(conn, rx, res.queued.clone()));
    macula_nat_core::runtime::spawn(reader(res.clone(), methods));
    Some(res)
}

async fn writer(conn: Connection, mut rx: mpsc::UnboundedReceiver<SendJob>, queued: Arc<AtomicUsize>) {
    while let Some((bytes, done)) = rx.recv().await {
        let len = bytes.len();
        let r = conn.send(bytes).await.map_err(|e| e.kind().to_string());
        queued.fetch_sub(len, Ordering::AcqRel);
        let failed = r.is_err();
        if let Some(done) = done {
            let _ = done.send(r);
        }
        if failed {
            // Later sends answer {error, closed} at once.
            rx.close();
        }
    }
}

/// What the reader does next, decided under the lock.
enum Step {
    /// Nothing held: read the next message off the stream.
    Read,
    /// Nothing held and the stream ended.
    Finish,
    /// Send `passive` to the owner.
    Notice(LocalPid),
    /// Deliver the held message to the owner; `Some(token)`: then ask the
    /// helper to look at the owner's mailbox.
    Owner(LocalPid, Option<u64>),
    /// Answer a `recv` with the held message.
    Recv(Recv),
    /// Hold the message until something changes. `Some(token)`: ask the
    /// helper; `true`: the window is full (the check is retried after a
    /// while, in case the helper lost it).
    Wait(Option<(LocalPid, u64)>, bool),
}

fn decide(f: &mut Flow, held: Option<usize>, ended: bool) -> Step {
    if f.passive_notice {
        f.passive_notice = false;
        return Step::Notice(f.owner);
    }
    let Some(len) = held else {
        return if ended { Step::Finish } else { Step::Read };
    };
    if let Some(r) = f.recvs.pop_front() {
        return Step::Recv(r);
    }
    match f.mode {
        Mode::Passive => Step::Wait(None, false),
        Mode::Once => {
            f.mode = Mode::Passive;
            Step::Owner(f.owner, None)
        }
        Mode::Count(n) => {
            if n <= 1 {
                f.mode = Mode::Passive;
                f.passive_notice = true;
            } else {
                f.mode = Mode::Count(n - 1);
            }
            Step::Owner(f.owner, None)
        }
        Mode::Active if f.window_open() => {
            f.blocked = false;
            f.unconfirmed.push_back(len);
            f.unconfirmed_bytes += len;
            f.since_check += 1;
            f.since_check_bytes += len;
            // Ask ahead, at half a window, so an owner that keeps up never
            // sees the reader stop.
            let half = f.unconfirmed.len() >= WINDOW_MSGS / 2 || f.unconfirmed_bytes >= WINDOW_BYTES / 2;
            let due = f.since_check >= WINDOW_MSGS / 4 || f.since_check_bytes >= WINDOW_BYTES / 4;
            let check = (half && due && f.check_token == 0).then(|| f.new_token());
            Step::Owner(f.owner, check)
        }
        Mode::Active => {
            f.blocked = true;
            let check = (f.check_token == 0).then(|| (f.owner, f.new_token()));
            Step::Wait(check, true)
        }
    }
}

fn encode_payload<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, Term<'a>> {
    match env.binary_to_term(bytes) {
        Some((t, n)) if n == bytes.len() => Ok(t),
        _ => Err(convert::binary(env, bytes)),
    }
}

/// A message the VM may decode: a compressed term declaring more than the
/// connection's message limit once inflated (the VM would allocate all of
/// it first) closes the connection instead, with `{too_large, Declared,
/// Limit}`, and is dropped unread.
fn admit(conn: &Connection, bytes: Vec<u8>) -> Option<Vec<u8>> {
    use macula_nat_proto::limits::term_size::{check, TermCheck};
    let max = conn.max_frame() as u64;
    match check(&bytes, max) {
        TermCheck::Fits => Some(bytes),
        TermCheck::TooLarge { declared } => {
            conn.refuse_too_large(declared, max);
            None
        }
    }
}

/// Asks the `macula_connection_flow` process to look at `owner`'s mailbox;
/// false when it is not running.
fn ask_check(env: &mut OwnedEnv, res: &ResourceArc<ConnRes>, owner: LocalPid, token: u64) -> bool {
    let helper = env.run(|e| e.whereis_pid(flow_atoms::macula_connection_flow()));
    env.clear();
    let Some(helper) = helper else {
        return false;
    };
    let r = res.clone();
    env.send_and_clear(&helper, move |e| {
        (flow_atoms::macula_connection_flow(), flow_atoms::check(), r, owner, token).encode(e)
    })
    .is_ok()
}

async fn reader(res: ResourceArc<ConnRes>, mut methods: watch::Receiver<Method>) {
    let mut env = OwnedEnv::new();
    let mut reported = *methods.borrow_and_update();
    let mut watching = true;
    let mut held: Option<Vec<u8>> = None;
    let mut ended = false;
    let mut quality = res.conn.watch_quality();
    let mut quality_every: Option<Duration> = None;
    let mut quality_tick: Option<tokio::time::Interval> = None;
    loop {
        let step = match res.flow.lock() {
            Ok(mut f) => decide(&mut f, held.as_ref().map(Vec::len), ended),
            Err(_) => break,
        };
        match step {
            Step::Finish => break,
            Step::Notice(owner) => {
                let r = res.clone();
                let _ = env.send_and_clear(&owner, move |env| {
                    (atoms::macula_connection(), r, flow_atoms::passive()).encode(env)
                });
            }
            Step::Owner(owner, check) => {
                let bytes = held.take().unwrap_or_default();
                let r = res.clone();
                let _ = env.send_and_clear(&owner, move |env| {
                    let payload = match encode_payload(env, &bytes) {
                        Ok(t) => (atoms::message(), t).encode(env),
                        Err(b) => (atoms::unsafe_message(), b).encode(env),
                    };
                    (atoms::macula_connection(), r, payload).encode(env)
                });
                if let Some(token) = check {
                    if !ask_check(&mut env, &res, owner, token) {
                        forget_check(&res, token);
                    }
                }
            }
            Step::Recv(Recv { pid, env: mut renv, reference, .. }) => {
                let bytes = held.take().unwrap_or_default();
                let _ = renv.send_and_clear(&pid, move |env| {
                    let reply = match encode_payload(env, &bytes) {
                        Ok(t) => (atoms::ok(), t).encode(env),
                        Err(b) => (atoms::error(), (atoms::unsafe_message(), b)).encode(env),
                    };
                    (atoms::macula_nat_reply(), reference.load(env), reply).encode(env)
                });
            }
            Step::Read | Step::Wait(..) => {
                let reading = matches!(step, Step::Read);
                let every = res.flow.lock().ok().and_then(|f| f.quality_every);
                if every != quality_every {
                    quality_every = every;
                    quality_tick = every.map(|e| tokio::time::interval_at(tokio::time::Instant::now() + e, e));
                    quality.mark_unchanged();
                }
                let mut pause = Duration::from_secs(3600);
                if let Step::Wait(check, full) = step {
                    if full {
                        pause = CHECK_AGAIN;
                    }
                    if let Some((owner, token)) = check {
                        if !ask_check(&mut env, &res, owner, token) {
                            forget_check(&res, token);
                            pause = HELPER_RETRY;
                        }
                    }
                }
                tokio::select! {
                    biased;
                    _ = res.wake.notified() => {}
                    // `recv` is cancel-safe (its state lives in the
                    // connection), so losing a race drops nothing.
                    m = res.conn.recv(), if reading => match m {
                        Some(bytes) => match admit(&res.conn, bytes) {
                            Some(bytes) => held = Some(bytes),
                            None => ended = true,
                        },
                        None => ended = true,
                    },
                    changed = methods.changed(), if watching => match changed {
                        Ok(()) => {
                            let m = *methods.borrow_and_update();
                            if m != reported {
                                reported = m;
                                if let Some(owner) = res.owner() {
                                    let r = res.clone();
                                    let _ = env.send_and_clear(&owner, move |env| {
                                        (atoms::macula_connection(), r, (atoms::method_changed(), method_atom(m)))
                                            .encode(env)
                                    });
                                }
                            }
                        }
                        Err(_) => watching = false,
                    },
                    _ = async { quality_tick.as_mut().expect("guarded").tick().await }, if quality_tick.is_some() => {
                        if let Some(owner) = res.owner() {
                            let r = res.clone();
                            let _ = env.send_and_clear(&owner, move |env| {
                                let map = r.info_map(env);
                                crate::quality_nif::report(env, r.encode(env), map)
                            });
                        }
                    }
                    changed = quality.changed(), if quality_every.is_some() => {
                        if changed.is_ok() {
                            let d = *quality.borrow_and_update();
                            if let Some(owner) = res.owner() {
                                let r = res.clone();
                                let _ = env.send_and_clear(&owner, move |env| crate::quality_nif::event(env, r.encode(env), d));
                            }
                        } else {
                            quality_every = None;
                            quality_tick = None;
                        }
                    },
                    _ = tokio::time::sleep(pause), if !reading => {
                        // A full window whose check got no answer (or no
                        // helper yet): ask again.
                        if let Ok(mut f) = res.flow.lock() {
                            if f.blocked {
                                f.check_token = 0;
                            }
                        }
                    }
                }
            }
        }
    }
    let reason = res.conn.closed().await;
    let (owner, recvs) = match res.flow.lock() {
        Ok(mut f) => {
            f.ended = true;
            (Some(f.owner), std::mem::take(&mut f.recvs))
        }
        Err(_) => (None, VecDeque::new()),
    };
    for Recv { pid, env: mut renv, reference, .. } in recvs {
        let _ = renv.send_and_clear(&pid, move |env| {
            (atoms::macula_nat_reply(), reference.load(env), (atoms::error(), atoms::closed())).encode(env)
        });
    }
    if let Some(o) = owner {
        let r = res.clone();
        let _ = env.send_and_clear(&o, move |env| {
            (atoms::macula_connection(), r, (atoms::closed(), close_reason(env, &reason))).encode(env)
        });
    }
}

/// The helper was not there: the check is asked again later.
fn forget_check(res: &ResourceArc<ConnRes>, token: u64) {
    if let Ok(mut f) = res.flow.lock() {
        if f.check_token == token {
            f.check_token = 0;
        }
    }
}

/// `conn_open(Ref, Node, {Ip, Port}, PeerId, Active) -> {ok, Pending}`: a
/// direct QUIC dial by address; replies `{ok, Conn}` owned by the caller,
/// starting in mode `Active` (`true | false | once | N`).
#[rustler::nif]
fn conn_open<'a>(
    env: Env<'a>,
    reference: Term<'a>,
    node: ResourceArc<NodeRes>,
    addr: Term<'a>,
    peer: Term<'a>,
    active: Term<'a>,
) -> Term<'a> {
    guard::guard(env, || {
        let Some(mode) = decode_mode(active) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let Some(addr) = convert::decode_addr(addr) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let Some(peer) = convert::decode_node_id(peer) else {
            return (atoms::error(), atoms::bad_node_id()).encode(env);
        };
        let owner = env.pid();
        let node = node.node.clone();
        reply::spawn_reply(env, reference, async move {
            let ep = match node.quic() {
                Ok(ep) => ep,
                Err(e) => return quic_error(e.kind()),
            };
            match ep.connect_rtt(addr, peer, None).await {
                Ok(conn) => adopted_in(conn, &node, owner, mode),
                Err(e) => quic_error(e.kind()),
            }
        })
    })
}

/// `conn_accept(Ref, Node, Active) -> {ok, Pending}`; replies `{ok, Conn}`
/// for the next incoming connection, owned by the caller, in mode `Active`.
#[rustler::nif]
fn conn_accept<'a>(env: Env<'a>, reference: Term<'a>, node: ResourceArc<NodeRes>, active: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(mode) = decode_mode(active) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let owner = env.pid();
        let node = node.node.clone();
        reply::spawn_reply(env, reference, async move {
            if let Err(e) = node.quic() {
                return quic_error(e.kind());
            }
            match node.accept().await {
                Some(conn) => adopted_in(conn, &node, owner, mode),
                None => quic_error("closed"),
            }
        })
    })
}

/// `{ok, Conn}` for a connection now owned by `owner`, starting in `mode`;
/// `{error, closed}` when the owner is already gone.
pub fn adopted_in(conn: Connection, node: &Arc<Node>, owner: LocalPid, mode: Mode) -> reply::Encode {
    match adopt_in(conn, node, owner, mode) {
        Some(res) => reply::ok_with(res),
        None => quic_error("closed"),
    }
}

fn quic_error(kind: &'static str) -> reply::Encode {
    reply::encode_with(move |env| {
        let reason = match kind {
            "closed" => atoms::closed().encode(env),
            "timed_out" | "timeout" => atoms::timeout().encode(env),
            "peer_id_mismatch" => atoms::peer_id_mismatch().encode(env),
            other => (atoms::quic(), convert::binary(env, other.as_bytes())).encode(env),
        };
        (atoms::error(), reason).encode(env)
    })
}

/// `conn_send(Ref, Conn, Binary) -> ok | {ok, Pending} | {error, _}`: `ok`
/// at once while the connection's queue is short, else `{ok, Pending}` and
/// a reply `ok` once the message is in the connection's stream, in call
/// order.
#[rustler::nif]
fn conn_send<'a>(env: Env<'a>, reference: Term<'a>, res: ResourceArc<ConnRes>, bin: Binary<'a>) -> Term<'a> {
    guard::guard(env, || {
        let len = bin.len();
        if len > res.conn.max_frame() {
            return (atoms::error(), atoms::too_large()).encode(env);
        }
        if res.conn.close_reason().is_some() {
            return (atoms::error(), atoms::closed()).encode(env);
        }
        if res.queued.fetch_add(len, Ordering::AcqRel) + len <= HIGH_WATER {
            if res.writer.send((bin.as_slice().to_vec(), None)).is_err() {
                res.queued.fetch_sub(len, Ordering::AcqRel);
                return (atoms::error(), atoms::closed()).encode(env);
            }
            return atoms::ok().encode(env);
        }
        let (tx, rx) = oneshot::channel();
        if res.writer.send((bin.as_slice().to_vec(), Some(tx))).is_err() {
            res.queued.fetch_sub(len, Ordering::AcqRel);
            return (atoms::error(), atoms::closed()).encode(env);
        }
        reply::spawn_reply(env, reference, async move {
            match rx.await {
                Ok(Ok(())) => reply::encode_with(|env| atoms::ok().encode(env)),
                Ok(Err(kind)) if kind == "frame_too_large" => {
                    reply::encode_with(|env| (atoms::error(), atoms::too_large()).encode(env))
                }
                _ => reply::encode_with(|env| (atoms::error(), atoms::closed()).encode(env)),
            }
        })
    })
}

/// `conn_info(Conn) -> #{connection_method, peer, remote_address, rtt_ms,
/// closed, relay, ...}` with the quality keys of `quality_nif`; `relay` is
/// the NodeId of the relay a relayed connection goes through now,
/// `undefined` otherwise.
#[rustler::nif]
fn conn_info<'a>(env: Env<'a>, res: ResourceArc<ConnRes>) -> Term<'a> {
    guard::guard(env, || res.info_map(env))
}

#[rustler::nif]
fn conn_close<'a>(env: Env<'a>, res: ResourceArc<ConnRes>) -> Term<'a> {
    guard::guard(env, || {
        res.conn.close("closed by application");
        atoms::ok().encode(env)
    })
}

/// `conn_set_owner(Conn, Pid) -> ok | {error, not_owner | closed}`: only
/// the current owner may hand the connection over. The mode goes with the
/// connection; the new owner's mailbox holds nothing of ours, so its
/// `{active, true}` window starts empty (what the old owner still has
/// queued stays there, as with `gen_tcp`).
#[rustler::nif]
fn conn_set_owner<'a>(env: Env<'a>, res: ResourceArc<ConnRes>, pid: LocalPid) -> Term<'a> {
    guard::guard(env, || {
        let Ok(mut f) = res.flow.lock() else {
            return (atoms::error(), atoms::internal()).encode(env);
        };
        if f.owner != env.pid() {
            return (atoms::error(), atoms::not_owner()).encode(env);
        }
        let Some(mon) = res.monitor(Some(env), &pid) else {
            return (atoms::error(), atoms::closed()).encode(env);
        };
        if let Some(old) = f.monitor.take() {
            res.demonitor(Some(env), &old);
        }
        f.owner = pid;
        f.monitor = Some(mon);
        f.reset_window();
        drop(f);
        res.wake.notify_one();
        atoms::ok().encode(env)
    })
}

/// `conn_setopts(Conn, Active) -> ok | {error, badarg | closed}`, `Active`
/// `true | false | once | N`. N adds to a running `{active, N}` counter
/// (as `inet:setopts/2`); a counter over 32767 is `badarg`, one at 0 or
/// below makes the connection passive and sends `passive`.
#[rustler::nif]
fn conn_setopts<'a>(env: Env<'a>, res: ResourceArc<ConnRes>, active: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(mode) = decode_mode(active) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let Ok(mut f) = res.flow.lock() else {
            return (atoms::error(), atoms::internal()).encode(env);
        };
        if f.ended {
            return (atoms::error(), atoms::closed()).encode(env);
        }
        match mode {
            Mode::Count(n) => {
                let now = match f.mode {
                    Mode::Count(c) => c as i64,
                    _ => 0,
                };
                let sum = now + n as i64;
                if sum > 32767 {
                    return (atoms::error(), atoms::badarg()).encode(env);
                }
                if sum <= 0 {
                    f.mode = Mode::Passive;
                    f.passive_notice = true;
                } else {
                    f.mode = Mode::Count(sum as i32);
                }
            }
            m => f.mode = m,
        }
        if f.mode != Mode::Active {
            f.blocked = false;
        }
        drop(f);
        res.wake.notify_one();
        atoms::ok().encode(env)
    })
}

/// `conn_recv(Ref, Conn) -> {wait, Id} | {error, not_passive | not_owner |
/// closed}`: the next message comes as `{macula_nat_reply, Ref, {ok, Term}
/// | {error, {unsafe_message, Binary}} | {error, closed}}`; owner only, in
/// passive mode. `conn_recv_cancel(Conn, Id)` withdraws it.
#[rustler::nif]
fn conn_recv<'a>(env: Env<'a>, reference: Term<'a>, res: ResourceArc<ConnRes>) -> Term<'a> {
    guard::guard(env, || {
        let owned = OwnedEnv::new();
        let saved = owned.save(reference);
        let Ok(mut f) = res.flow.lock() else {
            return (atoms::error(), atoms::internal()).encode(env);
        };
        if f.ended {
            return (atoms::error(), atoms::closed()).encode(env);
        }
        if f.owner != env.pid() {
            return (atoms::error(), atoms::not_owner()).encode(env);
        }
        if f.mode != Mode::Passive {
            return (atoms::error(), flow_atoms::not_passive()).encode(env);
        }
        f.next_recv += 1;
        let id = f.next_recv;
        f.recvs.push_back(Recv { id, pid: env.pid(), env: owned, reference: saved });
        drop(f);
        res.wake.notify_one();
        (flow_atoms::wait(), id).encode(env)
    })
}

/// `conn_recv_cancel(Conn, Id) -> ok | sent`: `ok` when the `recv` was
/// withdrawn (no reply will come), `sent` when its reply is on its way.
#[rustler::nif]
fn conn_recv_cancel<'a>(env: Env<'a>, res: ResourceArc<ConnRes>, id: u64) -> Term<'a> {
    guard::guard(env, || {
        let Ok(mut f) = res.flow.lock() else {
            return atoms::sent().encode(env);
        };
        match f.recvs.iter().position(|r| r.id == id) {
            Some(i) => {
                f.recvs.remove(i);
                atoms::ok().encode(env)
            }
            None => atoms::sent().encode(env),
        }
    })
}

/// `conn_credit(Conn, Token, QueueLen) -> ok | wait`, from
/// `macula_connection_flow`: the owner's mailbox holds `QueueLen`
/// messages. `wait`: the window is still full, look again later; `ok`:
/// done (window open again, or the check is stale).
#[rustler::nif]
fn conn_credit<'a>(env: Env<'a>, res: ResourceArc<ConnRes>, token: u64, queue_len: u64) -> Term<'a> {
    guard::guard(env, || {
        let Ok(mut f) = res.flow.lock() else {
            return atoms::ok().encode(env);
        };
        if f.check_token != token || f.ended {
            return atoms::ok().encode(env);
        }
        f.confirm(queue_len.min(usize::MAX as u64) as usize);
        if f.mode == Mode::Active && f.blocked && !f.below_low_water() {
            return flow_atoms::wait().encode(env);
        }
        f.check_token = 0;
        f.blocked = false;
        drop(f);
        res.wake.notify_one();
        atoms::ok().encode(env)
    })
}

/// `conn_quality(Conn, IntervalMs | false) -> ok | {error, badarg}`: the
/// owner gets `{quality, Map}` every `IntervalMs` (at least 100) and the
/// degraded/recovered events, until `false`.
#[rustler::nif]
fn conn_quality<'a>(env: Env<'a>, res: ResourceArc<ConnRes>, interval: Term<'a>) -> Term<'a> {
    guard::guard(env, || match crate::quality_nif::decode_interval(interval) {
        Ok(every) => {
            res.set_quality(every);
            atoms::ok().encode(env)
        }
        Err(()) => (atoms::error(), atoms::badarg()).encode(env),
    })
}
