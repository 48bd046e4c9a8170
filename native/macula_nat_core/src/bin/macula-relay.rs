//! Runs a relay node as its own process, so lab tests and benchmarks can
//! kill it (SIGKILL, no goodbye) and read its memory and CPU from /proc.
//! Prints JSON lines on stdout.
//!
//! ```text
//! macula-relay [--bind IP:PORT] [--max-sessions N] [--bandwidth BYTES_PER_S]
//!              [--session-timeout-ms N] [--max-queue-delay-ms N] [--stats-ms N]
//!     {"event":"ready","node_id":HEX,"addr":"IP:PORT","pid":N}
//!     {"event":"started","session":N,"a":HEX,"b":HEX}
//!     {"event":"ended","session":N,"a":HEX,"b":HEX,"bytes":N,"reason":NAME}
//!     {"event":"stats","t_ms":N,"sessions":N,"reservations":N,"clients":N,
//!      "frames":N,"bytes":N,"dropped_over_limit":N,"dropped_not_a_leg":N,
//!      "dropped_unknown":N}                      every --stats-ms, if given
//! ```
//!
//! `a` is the node that opened the session, `b` its target; `bytes` are the
//! payload bytes the relay forwarded in both directions (the byte count the
//! `on_session_end` callback reports). `t_ms` is monotonic milliseconds since
//! start, so rates can be computed from two stats lines.

use macula_nat_core::relay::{RelayEvent, RelayLimits, RelayServer};
use macula_nat_core::{runtime, Identity, Node, NodeConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::process::exit;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn usage() -> ! {
    eprintln!(
        "usage: macula-relay [--bind IP:PORT] [--max-sessions N] [--bandwidth BYTES_PER_S] \
         [--session-timeout-ms N] [--max-queue-delay-ms N] [--stats-ms N]"
    );
    exit(2)
}


/// One line per event, flushed at once: the reader is usually a test
/// waiting for exactly that line.
fn emit(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let mut bind: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let mut limits = RelayLimits::default();
    let mut stats_every: Option<Duration> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        let num = || v.parse::<u64>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--bind" => bind = v.parse().unwrap_or_else(|_| usage()),
            "--max-sessions" => limits.max_sessions = num() as usize,
            "--bandwidth" => limits.bandwidth_limit = Some(num()),
            "--session-timeout-ms" => limits.session_timeout = Duration::from_millis(num()),
            "--max-queue-delay-ms" => limits.max_queue_delay = Duration::from_millis(num()),
            "--stats-ms" => stats_every = Some(Duration::from_millis(num().max(1))),
            _ => usage(),
        }
    }
    let node = Node::open(NodeConfig { bind }, Identity::generate()).unwrap_or_else(|e| {
        eprintln!("macula-relay: {e}");
        exit(1)
    });
    let started = Instant::now();
    runtime::handle().block_on(async move {
        let (tx, mut events) = mpsc::channel(macula_nat_core::relay::EVENT_QUEUE);
        let server = RelayServer::start(&node, limits, tx).unwrap_or_else(|e| {
            eprintln!("macula-relay: {e}");
            exit(1)
        });
        emit(format!(
            "{{\"event\":\"ready\",\"node_id\":\"{}\",\"addr\":\"{}\",\"pid\":{}}}",
            node.node_id().to_hex(),
            node.local_addr().unwrap(),
            std::process::id()
        ));
        let far = Duration::from_secs(86_400);
        let mut tick = tokio::time::interval(stats_every.unwrap_or(far));
        tick.tick().await;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(RelayEvent::Started { session, a, b }) => {
                        emit(format!("{{\"event\":\"started\",\"session\":{session},\"a\":\"{}\",\"b\":\"{}\"}}", a.to_hex(), b.to_hex()));
                    }
                    Some(RelayEvent::Ended { session, a, b, bytes, reason }) => emit(format!(
                        "{{\"event\":\"ended\",\"session\":{session},\"a\":\"{}\",\"b\":\"{}\",\"bytes\":{bytes},\"reason\":\"{}\"}}",
                        a.to_hex(),
                        b.to_hex(),
                        reason.name()
                    )),
                    None => return,
                },
                _ = tick.tick(), if stats_every.is_some() => {
                    let s = server.stats();
                    emit(format!(
                        "{{\"event\":\"stats\",\"t_ms\":{},\"sessions\":{},\"reservations\":{},\"clients\":{},\"frames\":{},\"bytes\":{},\"dropped_over_limit\":{},\"dropped_not_a_leg\":{},\"dropped_unknown\":{}}}",
                        started.elapsed().as_millis(),
                        s.sessions,
                        s.reservations,
                        s.clients,
                        s.frames_forwarded,
                        s.bytes_forwarded,
                        s.dropped_over_limit,
                        s.dropped_not_a_leg,
                        s.dropped_unknown
                    ));
                }
            }
        }
    });
}
