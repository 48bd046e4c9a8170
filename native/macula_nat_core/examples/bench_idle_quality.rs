//! What monitoring costs an idle connection, side by side in one run:
//! N idle connections between two nodes on loopback (one process), for
//! each of
//!
//! * `control`: the control connections' keep-alive (5 s), not monitored,
//! * `app`: the application connections' keep-alive (1 s), not monitored,
//! * `app+monitor`: as `app`, each sampled 4x/s by its quality monitor
//!   (what every application connection costs now),
//!
//! the bytes and datagrams per second per connection (both nodes' sockets,
//! both directions) and the CPU the process spends per 1,000 connections.
//! Usage: `bench_idle_quality [connections] [seconds]` (1000, 20); prints a
//! Markdown table.

use macula_nat_core::{runtime, Connection, Identity, Node, NodeConfig};
use std::time::{Duration, Instant};

fn cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

struct Row {
    case: &'static str,
    bytes_per_s: f64,
    datagrams_per_s: f64,
    cpu_pct_per_1000: f64,
}

async fn run(case: &'static str, n: usize, secs: u64) -> Row {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let a = Node::open(NodeConfig { bind: loopback }, Identity::generate()).unwrap();
    let b = Node::open(NodeConfig { bind: loopback }, Identity::generate()).unwrap();
    let (qa, qb) = (a.quic().unwrap(), b.quic().unwrap());
    let b_addr = b.local_addr().unwrap();
    let accepted = {
        let qb = qb.clone();
        runtime::spawn(async move {
            let mut v = Vec::with_capacity(n);
            while v.len() < n {
                match qb.accept().await {
                    Some(c) => v.push(c),
                    None => break,
                }
            }
            v
        })
    };
    let mut conns: Vec<Connection> = Vec::with_capacity(n);
    for _ in 0..n {
        let c = match case {
            "control" => qa.connect(b_addr, b.node_id()).await,
            _ => qa.connect_rtt(b_addr, b.node_id(), None).await,
        }
        .expect("dial");
        if case == "app+monitor" {
            c.monitor_quality();
        }
        conns.push(c);
    }
    let theirs = accepted.await.unwrap();
    if case == "app+monitor" {
        // Accepted application connections are monitored too (the NIF
        // monitors every connection it adopts).
        theirs.iter().for_each(Connection::monitor_quality);
    }
    // Settle: handshakes and their acknowledgements.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sa, sb, cpu0, t0) = (a.stats(), b.stats(), cpu_s(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (ea, eb, cpu1, dt) = (a.stats(), b.stats(), cpu_s(), t0.elapsed().as_secs_f64());
    let bytes = (ea.bytes_out - sa.bytes_out) + (eb.bytes_out - sb.bytes_out);
    let dgrams = (ea.datagrams_out - sa.datagrams_out) + (eb.datagrams_out - sb.datagrams_out);
    drop(conns);
    drop(theirs);
    a.close();
    b.close();
    Row {
        case,
        bytes_per_s: bytes as f64 / dt / n as f64,
        datagrams_per_s: dgrams as f64 / dt / n as f64,
        cpu_pct_per_1000: (cpu1 - cpu0) / dt * 100.0 * 1000.0 / n as f64,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let mut rows = Vec::new();
    for case in ["control", "app", "app+monitor"] {
        rows.push(runtime::handle().block_on(run(case, n, secs)));
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("| case | keep-alive | monitored | bytes/s per connection (both ways, UDP payload) | datagrams/s per connection | CPU per 1,000 connections (% of one core) |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let (ka, mon) = match r.case {
            "control" => ("5 s", "no"),
            "app" => ("1 s", "no"),
            _ => ("1 s", "yes (4 samples/s)"),
        };
        println!("| {} | {ka} | {mon} | {:.1} | {:.2} | {:.2} |", r.case, r.bytes_per_s, r.datagrams_per_s, r.cpu_pct_per_1000);
    }
}
