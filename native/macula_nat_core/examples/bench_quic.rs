//! QUIC message throughput on loopback, side by side in one run:
//!
//! * plain: quinn on its own UDP socket (quinn's stock socket code),
//! * node:  quinn on the node's shared socket (our AsyncUdpSocket, receive
//!   demultiplexed by the node loop),
//!
//! both with the same TLS, transport settings and message framing
//! (`Connection`), so the difference is the socket path alone. For each
//! message size the two run alternately for several rounds; the table shows
//! the median round. Usage: `bench_quic [seconds_per_run] [rounds] [plain|node]`
//! (the last argument runs one path only, for profiling).
//!
//! One cell, for a driver that interleaves its own runs (bench/connection_throughput.sh):
//! `bench_quic --mode plain|node --size BYTES --secs S` warms up for 300 ms,
//! runs one cell and prints one line on stdout:
//! `cell mode=plain size=65536 msgs=N bytes=B secs=T msgs_per_s=X mib_per_s=Y mib_per_cpu_s=Z`.

use bytes::Bytes;
use macula_nat_core::{runtime, Connection, Identity, Node, NodeConfig, QuicConfig, QuicEndpoint};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Node,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain quinn (own socket)",
            Mode::Node => "node socket (STUN demux)",
        }
    }
}

struct Pair {
    tx: Connection,
    rx: Connection,
    // Kept alive for the run.
    _endpoints: (QuicEndpoint, QuicEndpoint),
    nodes: Option<(Arc<Node>, Arc<Node>)>,
}

async fn pair(mode: Mode) -> Pair {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let (ia, ib) = (Identity::generate(), Identity::generate());
    let (qa, qb, nodes) = match mode {
        Mode::Plain => (
            QuicEndpoint::standalone(&ia, loopback, QuicConfig::default()).unwrap(),
            QuicEndpoint::standalone(&ib, loopback, QuicConfig::default()).unwrap(),
            None,
        ),
        Mode::Node => {
            let a = Node::open(NodeConfig { bind: loopback }, ia).unwrap();
            let b = Node::open(NodeConfig { bind: loopback }, ib).unwrap();
            (a.quic().unwrap(), b.quic().unwrap(), Some((a, b)))
        }
    };
    let b_addr = qb.local_addr().unwrap();
    let accept = {
        let qb = qb.clone();
        runtime::spawn(async move { qb.accept().await })
    };
    let tx = qa.connect(b_addr, qb.node_id()).await.unwrap();
    let rx = accept.await.unwrap().unwrap();
    Pair { tx, rx, _endpoints: (qa, qb), nodes }
}

struct Sample {
    msgs: u64,
    bytes: u64,
    secs: f64,
    msgs_per_s: f64,
    mib_per_s: f64,
    /// MiB moved per second of CPU used by the whole process (sender,
    /// receiver, both endpoints): less sensitive than MiB/s to other load
    /// on a shared machine.
    mib_per_cpu_s: f64,
}

/// CPU seconds (user + system) used by this process so far, from
/// /proc/self/stat (clock ticks, 100 per second on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let f: Vec<f64> = after_comm.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Sends `size`-byte messages for `dur`, then waits until the receiver has
/// acknowledged all of them; rates are over that whole time.
async fn run(mode: Mode, size: usize, dur: Duration) -> Sample {
    let p = pair(mode).await;
    let receiver = {
        let rx = p.rx.clone();
        runtime::spawn(async move {
            let (mut n, mut bytes) = (0u64, 0u64);
            while let Some(m) = rx.recv().await {
                n += 1;
                bytes += m.len() as u64;
            }
            (n, bytes)
        })
    };
    let msg = Bytes::from(vec![0xA5u8; size]);
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        p.tx.send(msg.clone()).await.unwrap();
        sent += 1;
    }
    p.tx.finish().await.unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let (n, bytes) = receiver.await.unwrap();
    let cpu = (cpu_seconds() - cpu_start).max(0.01);
    assert_eq!(n, sent, "every message arrived");
    p.tx.close("done");
    if let Some((a, b)) = &p.nodes {
        let (sa, sb) = (a.stats(), b.stats());
        if sa.quic_dropped + sb.quic_dropped > 0 {
            eprintln!("  (datagrams dropped before QUIC: sender {}, receiver {})", sa.quic_dropped, sb.quic_dropped);
        }
    }
    let mib = bytes as f64 / (1 << 20) as f64;
    Sample {
        msgs: n,
        bytes,
        secs: elapsed,
        msgs_per_s: n as f64 / elapsed,
        mib_per_s: mib / elapsed,
        mib_per_cpu_s: mib / cpu,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `--mode plain|node --size BYTES --secs S`: one cell, one line.
fn single_cell(args: &[String]) {
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let mode = match flag("--mode").map(String::as_str) {
        Some("plain") => Mode::Plain,
        Some("node") => Mode::Node,
        other => panic!("--mode plain|node, got {other:?}"),
    };
    let size: usize = flag("--size").and_then(|a| a.parse().ok()).expect("--size BYTES");
    let secs: f64 = flag("--secs").and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let s = runtime::handle().block_on(async {
        run(mode, 1 << 10, Duration::from_millis(300)).await;
        run(mode, size, Duration::from_secs_f64(secs)).await
    });
    println!(
        "cell mode={} size={size} msgs={} bytes={} secs={:.6} msgs_per_s={:.1} mib_per_s={:.3} mib_per_cpu_s={:.3}",
        if mode == Mode::Plain { "plain" } else { "node" },
        s.msgs,
        s.bytes,
        s.secs,
        s.msgs_per_s,
        s.mib_per_s,
        s.mib_per_cpu_s
    );
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.iter().any(|a| a.starts_with("--")) {
        return single_cell(&all);
    }
    let mut args = all.into_iter();
    let secs: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let dur = Duration::from_secs_f64(secs);
    let sizes = [1usize << 10, 64 << 10];
    let only = args.next();
    let modes = [Mode::Plain, Mode::Node];
    let wanted = |m: Mode| match only.as_deref() {
        Some("plain") => m == Mode::Plain,
        Some("node") => m == Mode::Node,
        _ => true,
    };

    runtime::handle().block_on(async {
        // Warm-up: first connections pay for lazy statics and page faults.
        for mode in modes.into_iter().filter(|&m| wanted(m)) {
            run(mode, 1 << 10, Duration::from_millis(300)).await;
        }
        let mut rows = Vec::new();
        for size in sizes {
            let mut per_mode: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![(vec![], vec![], vec![]); modes.len()];
            for round in 0..rounds {
                // Alternate which mode goes first, so drift in machine load
                // does not favour one.
                let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
                for m in order.into_iter().filter(|&m| wanted(modes[m])) {
                    let s = run(modes[m], size, dur).await;
                    eprintln!(
                        "{:>6} B  {:<26} round {}: {:>10.0} msg/s {:>9.1} MiB/s {:>7.1} MiB/CPU-s",
                        size,
                        modes[m].name(),
                        round + 1,
                        s.msgs_per_s,
                        s.mib_per_s,
                        s.mib_per_cpu_s
                    );
                    per_mode[m].0.push(s.msgs_per_s);
                    per_mode[m].1.push(s.mib_per_s);
                    per_mode[m].2.push(s.mib_per_cpu_s);
                }
            }
            if per_mode.iter().any(|(m, _, _)| m.is_empty()) {
                continue;
            }
            let plain_mib = median(per_mode[0].1.clone());
            let plain_eff = median(per_mode[0].2.clone());
            for (m, (msgs, mibs, effs)) in per_mode.into_iter().enumerate() {
                let (lo, hi) = mibs.iter().fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
                let (mib, eff) = (median(mibs), median(effs));
                rows.push(format!(
                    "| {} KiB | {} | {:.0} | {:.1} | {:.1}–{:.1} | {:.0}% | {:.1} | {:.0}% |",
                    size >> 10,
                    modes[m].name(),
                    median(msgs),
                    mib,
                    lo,
                    hi,
                    100.0 * mib / plain_mib,
                    eff,
                    100.0 * eff / plain_eff
                ));
            }
        }
        println!("| message | socket path | messages/s | MiB/s | MiB/s range | vs plain | MiB per CPU-s | vs plain |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
        println!();
        println!("Median of {rounds} rounds of {secs} s per cell; the two paths alternate within each round.");
        println!("MiB per CPU-s: data moved per second of CPU used by the whole process (user + system).");
    });
}
