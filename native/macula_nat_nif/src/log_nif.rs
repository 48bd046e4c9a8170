//! The core's `tracing` events, forwarded to Erlang's `logger`.
//!
//! * Each event is attributed to the Erlang module whose calls cause it
//!   (`route`: `connect::*` → `macula_nat_connector`, detection →
//!   `macula_nat_detector`, …), so `logger:set_module_level/2` on that
//!   module decides whether it is logged.
//! * `macula_nat_log` (Erlang) pushes the effective level of every mapped
//!   module here (`log_attach/2`, `log_levels/1`). A callsite whose level is
//!   off for its module gets `Interest::never` and the interest caches are
//!   rebuilt when levels change, so a disabled `debug!` costs one relaxed
//!   load and a branch: nothing is formatted.
//! * Enabled events are formatted here and pushed into a bounded channel
//!   (`try_send`: the emitting thread never waits). A forwarder thread (not
//!   a scheduler thread: `enif_send` from a scheduler would need the
//!   caller's env) sends them to the registered process in batches of at
//!   most [`BATCH`], one batch in flight until Erlang acks it
//!   (`log_ack/0`). So the process's mailbox holds at most one batch, the
//!   channel at most [`CAPACITY`] events, and what a burst adds beyond that
//!   is counted and reported with the next batch (one warning).

use crate::{atoms, guard};
use rustler::{Atom, Encoder, Env, LocalPid, OwnedEnv, Term};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing::level_filters::LevelFilter;

/// Events waiting for the forwarder; a burst beyond this is dropped.
const CAPACITY: usize = 1024;
/// Events per message to Erlang.
const BATCH: usize = 128;

/// The Erlang modules events are attributed to; index = `Route as usize`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Node = 0,
    Detector,
    Coordinator,
    Connector,
    RelayNode,
    RelayRegistry,
    Cache,
}
const ROUTES: usize = 7;

fn route_atom(r: Route) -> Atom {
    match r {
        Route::Node => atoms::macula_nat_node(),
        Route::Detector => atoms::macula_nat_detector(),
        Route::Coordinator => atoms::macula_nat_coordinator(),
        Route::Connector => atoms::macula_nat_connector(),
        Route::RelayNode => atoms::macula_relay_node(),
        Route::RelayRegistry => atoms::macula_relay_registry(),
        Route::Cache => atoms::macula_nat_cache(),
    }
}

fn route_of_atom(a: Atom) -> Option<Route> {
    [Route::Node, Route::Detector, Route::Coordinator, Route::Connector, Route::RelayNode, Route::RelayRegistry, Route::Cache]
        .into_iter()
        .find(|r| route_atom(*r) == a)
}

/// Which Erlang module an event of `target` (a Rust module path) belongs
/// to; `None` for targets outside this library (quinn, rustls, …), which
/// are never forwarded. The first matching prefix wins (whole path
/// segments: `relay` does not match `relay_registry`).
fn route(target: &str) -> Option<Route> {
    let rest = target
        .strip_prefix("macula_nat_core")
        .or_else(|| target.strip_prefix("macula_nat_proto"))
        .or_else(|| target.strip_prefix("macula_nat_nif"))?;
    if !(rest.is_empty() || rest.starts_with("::")) {
        return None;
    }
    let rest = rest.trim_start_matches("::");
    const TABLE: &[(&str, Route)] = &[
        // The signalling client: joining, the control connection, refreshes.
        ("connect::membership", Route::Coordinator),
        ("connect::homes", Route::Coordinator),
        ("connect", Route::Connector),
        ("punch", Route::Connector),
        ("detect", Route::Detector),
        ("local_profile", Route::Detector),
        ("rendezvous", Route::Coordinator),
        ("signal", Route::Coordinator),
        ("relay_registry", Route::RelayRegistry),
        // Reservations at relays are made by the coordinator's signal.
        ("relay::client", Route::Coordinator),
        ("relay", Route::RelayNode),
        ("profile_cache", Route::Cache),
        ("advertiser", Route::Cache),
        ("dht", Route::Cache),
    ];
    for (prefix, r) in TABLE {
        if let Some(after) = rest.strip_prefix(prefix) {
            if after.is_empty() || after.starts_with("::") {
                return Some(*r);
            }
        }
    }
    Some(Route::Node)
}

/// 0 off, 1 error, 2 warning, 3 info, 4 debug (tracing's trace included).
fn rank(l: &Level) -> u8 {
    match *l {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        _ => 4,
    }
}

fn level_atom(l: &Level) -> Atom {
    match *l {
        Level::ERROR => atoms::error(),
        Level::WARN => atoms::warning(),
        Level::INFO => atoms::info(),
        _ => atoms::debug(),
    }
}

static LEVELS: [AtomicU8; ROUTES] = [const { AtomicU8::new(0) }; ROUTES];
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn enabled_for(m: &Metadata<'_>) -> bool {
    match route(m.target()) {
        Some(r) => rank(m.level()) <= LEVELS[r as usize].load(Ordering::Relaxed),
        None => false,
    }
}

fn max_rank() -> u8 {
    LEVELS.iter().map(|l| l.load(Ordering::Relaxed)).max().unwrap_or(0)
}

/// One formatted event on its way to Erlang.
struct Line {
    route: Route,
    level: Level,
    target: &'static str,
    file: Option<&'static str>,
    line: Option<u32>,
    text: String,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

struct Bridge {
    tx: SyncSender<Line>,
    next_span: AtomicU64,
}

impl Subscriber for Bridge {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        // Re-asked for every callsite when levels change (see `apply`).
        if enabled_for(m) {
            Interest::always()
        } else {
            Interest::never()
        }
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match max_rank() {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            _ => LevelFilter::TRACE,
        })
    }
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        enabled_for(m)
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let m = e.metadata();
        let Some(route) = route(m.target()) else { return };
        if rank(m.level()) > LEVELS[route as usize].load(Ordering::Relaxed) {
            return;
        }
        let mut fields = Fields(String::new());
        e.record(&mut fields);
        let line = Line { route, level: *m.level(), target: m.target(), file: m.file(), line: m.line(), text: fields.0 };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Where batches go, and whether one is waiting for its ack.
struct Target {
    pid: Option<LocalPid>,
    in_flight: bool,
}

static TARGET: Mutex<Target> = Mutex::new(Target { pid: None, in_flight: false });
static ACKED: Condvar = Condvar::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the subscriber and starts the forwarder, once per VM. False
/// when another global subscriber was there first.
fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        let (tx, rx) = sync_channel(CAPACITY);
        if tracing::subscriber::set_global_default(Bridge { tx, next_span: AtomicU64::new(1) }).is_err() {
            return false;
        }
        std::thread::Builder::new().name("macula_nat_log".into()).spawn(move || forward(rx)).is_ok()
    })
}

fn lock() -> std::sync::MutexGuard<'static, Target> {
    TARGET.lock().unwrap_or_else(|p| p.into_inner())
}

fn forward(rx: Receiver<Line>) {
    let mut env = OwnedEnv::new();
    let mut batch: Vec<Line> = Vec::with_capacity(BATCH);
    loop {
        // One batch in flight: wait for its ack (or a new process).
        let pid = {
            let mut t = lock();
            while t.in_flight {
                t = ACKED.wait_timeout(t, Duration::from_secs(1)).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
            }
            t.pid
        };
        if batch.is_empty() {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(l) => batch.push(l),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        let dropped = DROPPED.load(Ordering::Relaxed);
        if batch.is_empty() && dropped == 0 {
            continue;
        }
        let Some(pid) = pid else {
            // Nobody to log to (the process is restarting): keep the
            // batch until it is back, the channel bounds the rest.
            if batch.len() >= BATCH {
                DROPPED.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        DROPPED.fetch_sub(dropped, Ordering::Relaxed);
        lock().in_flight = true;
        let lines = std::mem::take(&mut batch);
        let sent = env.send_and_clear(&pid, |env| {
            let items: Vec<Term> = lines.iter().map(|l| encode_line(env, l)).collect();
            (atoms::macula_nat_log(), items, dropped).encode(env)
        });
        if sent.is_err() {
            // The process is gone; a new one attaches with its own pid.
            let mut t = lock();
            if t.pid == Some(pid) {
                t.pid = None;
            }
            t.in_flight = false;
            DROPPED.fetch_add(dropped + lines.len() as u64, Ordering::Relaxed);
        }
    }
}

fn encode_line<'a>(env: Env<'a>, l: &Line) -> Term<'a> {
    let file = l.file.unwrap_or("").encode(env);
    (route_atom(l.route), level_atom(&l.level), l.target, file, l.line.unwrap_or(0), l.text.as_str()).encode(env)
}

/// Sets the levels (`[{Module, Rank}]`, unknown modules ignored, missing
/// ones off) and rebuilds the callsites' interest when anything changed.
fn apply(levels: &[(Atom, u8)]) {
    let mut new = [0u8; ROUTES];
    for (a, r) in levels {
        if let Some(route) = route_of_atom(*a) {
            new[route as usize] = (*r).min(4);
        }
    }
    let mut changed = false;
    for (i, v) in new.iter().enumerate() {
        if LEVELS[i].swap(*v, Ordering::Relaxed) != *v {
            changed = true;
        }
    }
    if changed {
        tracing::callsite::rebuild_interest_cache();
    }
}

/// `log_attach(Pid, Levels)`: `Pid` receives
/// `{macula_nat_log, [{Module, Level, Target, File, Line, Text}], Dropped}`
/// and answers each with `log_ack/0`. `ok`, or `{error, already_set}` when
/// another tracing subscriber owns this VM's process.
#[rustler::nif]
fn log_attach<'a>(env: Env<'a>, pid: LocalPid, levels: Vec<(Atom, u8)>) -> Term<'a> {
    guard::guard(env, || {
        if !install() {
            return (atoms::error(), atoms::already_set()).encode(env);
        }
        {
            let mut t = lock();
            t.pid = Some(pid);
            t.in_flight = false;
        }
        ACKED.notify_all();
        apply(&levels);
        atoms::ok().encode(env)
    })
}

/// `log_detach(Pid)`: everything off, when `Pid` is still the target.
#[rustler::nif]
fn log_detach<'a>(env: Env<'a>, pid: LocalPid) -> Term<'a> {
    guard::guard(env, || {
        let mut t = lock();
        if t.pid == Some(pid) {
            t.pid = None;
            t.in_flight = false;
            drop(t);
            ACKED.notify_all();
            apply(&[]);
        }
        atoms::ok().encode(env)
    })
}

#[rustler::nif]
fn log_levels<'a>(env: Env<'a>, levels: Vec<(Atom, u8)>) -> Term<'a> {
    guard::guard(env, || {
        apply(&levels);
        atoms::ok().encode(env)
    })
}

/// The batch was logged: the next may come.
#[rustler::nif]
fn log_ack<'a>(env: Env<'a>) -> Term<'a> {
    guard::guard(env, || {
        lock().in_flight = false;
        ACKED.notify_all();
        atoms::ok().encode(env)
    })
}

/// `log_burst(N)`: `N` debug events under the connector's target, from
/// the calling (scheduler) thread: tests of the rate limit and of the cost
/// of disabled events.
#[rustler::nif]
fn log_burst<'a>(env: Env<'a>, n: u32) -> Term<'a> {
    guard::guard(env, || {
        for i in 0..n {
            tracing::debug!(target: "macula_nat_core::connect::burst", "burst event {i} of {n}");
        }
        atoms::ok().encode(env)
    })
}
