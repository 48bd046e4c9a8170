//! macula-node: a public node for operators. Runs, in one process, the
//! RFC 5780 STUN observer (two addresses), a rendezvous and a relay (both on
//! the node's one UDP socket), configured by a TOML file, logging to
//! stderr, with Prometheus metrics over HTTP on a local address.
//!
//! ```text
//! macula-node --config PATH [--check]
//!     {"event":"ready","node_id":HEX,"node":"IP:PORT","node6":"[IP6]:PORT"|null,"rendezvous":BOOL,"relay":BOOL,
//!      "observer":{"primary":"IP:PORT","alternate":"IP:PORT"|null}|null,
//!      "metrics":"IP:PORT"|null,"pid":N}
//! ```
//!
//! The ready line is the only stdout output (addresses as bound: port 0 in
//! the config picks one). `--check` reads the config, prints it back as the
//! node would run it, and exits (0: valid). The config format is in
//! `public_node::config`, the metrics in `metrics_text` below.

#[path = "../public_node/mod.rs"]
mod public_node;

use macula_nat_core::detect::observer_server::ObserverServer;
use macula_nat_core::relay::{RelayEvent, RelayServer};
use macula_nat_core::{runtime, Identity, Node, NodeConfig, Rendezvous};
use public_node::config::{Config, LogLevel};
use public_node::metrics::{self, with_zeros, Exposition};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::exit;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

fn log(level: LogLevel, msg: std::fmt::Arguments<'_>) {
    if level as u8 <= LEVEL.load(Ordering::Relaxed) {
        eprintln!("macula-node {}: {msg}", level.name());
    }
}

macro_rules! info { ($($t:tt)*) => { log(LogLevel::Info, format_args!($($t)*)) } }
macro_rules! error { ($($t:tt)*) => { log(LogLevel::Error, format_args!($($t)*)) } }

fn usage() -> ! {
    eprintln!("usage: macula-node --config PATH [--check]");
    exit(2)
}


fn die(what: &str, e: impl std::fmt::Display) -> ! {
    error!("{what}: {e}");
    exit(1)
}

/// Relay session counts the events tell (the server keeps only the live
/// ones).
#[derive(Default)]
struct SessionCounts {
    started: u64,
    ended: HashMap<&'static str, u64>,
    ended_bytes: u64,
}

/// What the metrics read.
struct Roles {
    node: Arc<Node>,
    observer: Option<ObserverServer>,
    rendezvous: Option<Rendezvous>,
    relay: Option<RelayServer>,
    sessions: Mutex<SessionCounts>,
    started: Instant,
}

const REFUSALS: [&str; 6] = ["no_reservation", "max_sessions", "relay_disabled", "declined", "self_session", "bad_request"];
const END_REASONS: [&str; 4] = ["inactive", "closed", "peer_gone", "relay_disabled"];

/// Metric families (all prefixed `macula_node_`).
fn metrics_text(r: &Roles) -> String {
    let mut e = Exposition::default();
    let id = r.node.node_id().to_hex();
    e.gauge_labelled("macula_node_info", "This node (value 1), by node id and version.", &[("node_id", &id), ("version", env!("CARGO_PKG_VERSION"))], 1.0);
    e.gauge("macula_node_uptime_seconds", "Seconds since start.", r.started.elapsed().as_secs_f64());
    if let Some(o) = &r.observer {
        let (answered, dropped) = o.stats.snapshot();
        e.counter("macula_node_stun_answers_total", "STUN Binding requests the observer answered (all four of its sockets).", answered);
        e.counter_by("macula_node_stun_dropped_total", "Datagrams the observer dropped unanswered, by reason.", "reason", &with_zeros(&[], &dropped));
    }
    let ns = r.node.stats();
    e.counter_by("macula_node_socket_datagrams_total", "Datagrams on the node socket (QUIC, relay frames, STUN).", "direction", &[("in", ns.datagrams_in), ("out", ns.datagrams_out)]);
    e.counter_by("macula_node_socket_bytes_total", "Bytes on the node socket.", "direction", &[("in", ns.bytes_in), ("out", ns.bytes_out)]);
    e.counter("macula_node_socket_stun_answers_total", "STUN Binding requests answered on the node socket.", ns.stun_answered);
    e.counter_by("macula_node_socket_dropped_total", "Datagrams dropped on the node socket: malformed STUN, or QUIC not keeping up.", "kind", &[("stun", ns.stun_dropped), ("quic", ns.quic_dropped)]);
    e.counter("macula_node_socket_stun_refused_total", "STUN Binding requests the node socket left unanswered: over the responder's rate limits or byte ledger, or the socket would block.", ns.stun_refused);
    if let Some(rv) = &r.rendezvous {
        let s = rv.stats();
        e.gauge("macula_node_rendezvous_peers", "Peers registered at the rendezvous now.", rv.peers().len() as f64);
        e.counter("macula_node_rendezvous_registrations_total", "Control connections registered (reconnects count again).", s.registrations);
        e.counter_by(
            "macula_node_rendezvous_messages_total",
            "Signalling the rendezvous passed on (connect, answer, reject) or answered unknown.",
            "kind",
            &[("connect", s.connects), ("answer", s.answers), ("reject", s.rejects), ("unknown_target", s.unknown_targets)],
        );
    }
    if let Some(rl) = &r.relay {
        let s = rl.stats();
        let c = r.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<(&str, u64)> = c.ended.iter().map(|(k, v)| (*k, *v)).collect();
        e.gauge("macula_node_relay_sessions", "Relay sessions active now.", s.sessions as f64);
        e.gauge("macula_node_relay_reservations", "Nodes holding a reservation now.", s.reservations as f64);
        e.gauge("macula_node_relay_clients", "Relay control connections now.", s.clients as f64);
        e.gauge("macula_node_relay_max_sessions", "The configured session limit.", rl.limits().max_sessions as f64);
        e.counter("macula_node_relay_sessions_started_total", "Relay sessions started.", c.started);
        e.counter_by("macula_node_relay_sessions_ended_total", "Relay sessions ended, by reason.", "reason", &with_zeros(&END_REASONS, &ended));
        e.counter_by("macula_node_relay_refusals_total", "Relay sessions refused, by reason.", "reason", &with_zeros(&REFUSALS, &rl.refusals()));
        e.counter("macula_node_relay_frames_total", "Data frames forwarded.", s.frames_forwarded);
        e.counter("macula_node_relay_bytes_total", "Payload bytes forwarded (both directions, all sessions).", s.bytes_forwarded);
        e.counter(
            "macula_node_relay_ended_sessions_bytes_total",
            "Payload bytes of the sessions that ended (what on_session_end reports).",
            c.ended_bytes,
        );
        e.counter_by(
            "macula_node_relay_dropped_total",
            "Data frames dropped, by reason.",
            "reason",
            &[("over_limit", s.dropped_over_limit), ("not_a_leg", s.dropped_not_a_leg), ("unknown_session", s.dropped_unknown)],
        );
    }
    e.finish()
}

fn json_addr(a: Option<SocketAddr>) -> String {
    a.map_or("null".into(), |a| format!("\"{a}\""))
}

fn main() {
    let mut path: Option<PathBuf> = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => path = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--check" => check = true,
            _ => usage(),
        }
    }
    let cfg = Config::load(&path.unwrap_or_else(|| usage())).unwrap_or_else(|e| die("config", e));
    if check {
        println!("{cfg:#?}\nrelay limits: {:?}\nconnection limits: {:?}", cfg.relay.limits(), cfg.node.quic_config().conn_limits);
        return;
    }
    LEVEL.store(cfg.log_level as u8, Ordering::Relaxed);
    // The core's own events (tracing) go to stderr through its subscriber,
    // which takes info, debug and trace.
    if cfg.log_level >= LogLevel::Info {
        std::env::set_var("MACULA_TRACE", cfg.log_level.name());
        macula_nat_core::stderr_trace::init_from_env();
    }
    let identity = Identity::load_or_create(&cfg.identity_key).unwrap_or_else(|e| die(&format!("identity key {}", cfg.identity_key.display()), e));
    let observer = cfg.observer.as_ref().map(|o| {
        let software = o.software.clone().or_else(|| Some(format!("macula-node {}", env!("CARGO_PKG_VERSION"))));
        ObserverServer::start(o.primary, o.alternate, software).unwrap_or_else(|e| die("observer", e))
    });
    let node = Node::open_dual(NodeConfig { bind: cfg.node.listen }, cfg.node.listen6, identity).unwrap_or_else(|e| die("node socket", e));
    // Before the rendezvous or relay creates the QUIC endpoint.
    node.set_quic_config(cfg.node.quic_config());
    let node_addr = node.local_addr().unwrap_or_else(|e| die("node socket", e));
    let node6 = cfg.node.listen6.and_then(|_| node.local_addr6().ok().flatten());
    let started = Instant::now();
    runtime::handle().block_on(async move {
        let rendezvous = cfg.node.rendezvous.then(|| Rendezvous::serve(node.clone()).unwrap_or_else(|e| die("rendezvous", e)));
        let (tx, mut events) = mpsc::channel(macula_nat_core::relay::EVENT_QUEUE);
        let limits = cfg.relay.limits();
        let relay = cfg.node.relay.then(|| RelayServer::start(&node, limits.clone(), tx).unwrap_or_else(|e| die("relay", e)));
        let roles = Arc::new(Roles { node: node.clone(), observer, rendezvous, relay, sessions: Mutex::default(), started });
        let metrics_addr = match &cfg.metrics {
            Some(m) => {
                let l = tokio::net::TcpListener::bind(m.listen).await.unwrap_or_else(|e| die(&format!("metrics {}", m.listen), e));
                let a = l.local_addr().ok();
                let r = roles.clone();
                runtime::spawn(metrics::serve(l, Arc::new(move || metrics_text(&r))));
                a
            }
            None => None,
        };
        let observer_json = match &roles.observer {
            Some(o) => format!("{{\"primary\":\"{}\",\"alternate\":{}}}", o.primary(), json_addr(o.alternate())),
            None => "null".into(),
        };
        let id = node.node_id().to_hex();
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{{\"event\":\"ready\",\"node_id\":\"{id}\",\"node\":\"{node_addr}\",\"node6\":{},\"rendezvous\":{},\"relay\":{},\"observer\":{observer_json},\"metrics\":{},\"pid\":{}}}",
                json_addr(node6),
                roles.rendezvous.is_some(),
                roles.relay.is_some(),
                json_addr(metrics_addr),
                std::process::id()
            );
            let _ = out.flush();
        }
        info!(
            "node {id} on {node_addr} (rendezvous {}, relay {}), observer {}, metrics {}",
            roles.rendezvous.is_some(),
            roles.relay.as_ref().map_or("off".to_string(), |_| format!("{limits:?}")),
            observer_json,
            json_addr(metrics_addr)
        );
        while let Some(ev) = events.recv().await {
            let mut c = roles.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match ev {
                RelayEvent::Started { session, a, b } => {
                    c.started += 1;
                    info!("relay session {session} started: {} -> {}", a.to_hex(), b.to_hex());
                }
                RelayEvent::Ended { session, a, b, bytes, reason } => {
                    *c.ended.entry(reason.name()).or_insert(0) += 1;
                    c.ended_bytes += bytes;
                    info!("relay session {session} ended ({}): {} -> {}, {bytes} bytes", reason.name(), a.to_hex(), b.to_hex());
                }
            }
        }
        // No relay (its sender dropped): serve until killed.
        std::future::pending::<()>().await
    });
}
