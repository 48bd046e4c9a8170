//! Relay benchmark, in one NAT lab run (public hosts, no NAT in the way, so
//! the numbers are about the relays): nodes on hosts `n1` and `n2` (in this
//! process, sockets in the hosts' namespaces), our relay (`macula-relay`
//! process) on host `relay`, coturn's `turnserver` on host `turn`.
//!
//! 1. Single-session throughput, the same QUIC connection (our node, TLS,
//!    transport settings and framing) A -> B three ways, interleaved per
//!    round: direct; through our relay (A opened a session at the relay
//!    where B holds a reservation; frames of 9 bytes + QUIC packet); through
//!    coturn (A allocated on coturn and bound a channel to B; ChannelData of
//!    4 bytes + QUIC packet from A, plain UDP from coturn's relayed address
//!    to B and back). Each packet crosses the relay once either way.
//! 2. `sessions` concurrent QUIC connections through each relay, idle
//!    (keep-alives only) and with light traffic (every connection echoes one
//!    1 KiB message per second), with the relay process' RSS and CPU from
//!    /proc. A fresh relay process for each relay.
//!
//! Usage: `bench_relay [secs_per_cell] [rounds] [sessions] [window_secs]`;
//! with `BENCH_RELAY_ONLY=direct|relay|turn`, only that path's throughput
//! cells, with `BENCH_RELAY_ONLY=sessions` only our relay's sessions (for
//! profiling).
//! Markdown on stdout, every round on stderr. Needs root, coturn and the
//! `macula-relay` / `macula-lab` binaries next to `examples/`.

mod proc_stat;
mod turn;

use bytes::Bytes;
use macula_nat_core::relay::{virtual_addr, RelayLink};
use macula_nat_core::{runtime, Connection, Identity, Node, NodeConfig};
use macula_nat_lab::{Lab, LabSpec};
use proc_stat::{cpu_seconds, rss_kib};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use turn::TurnClient;

const RELAY_PORT: u16 = 4500;
const TURN_PORT: u16 = 3478;
const GROUPS: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Direct,
    Relay,
    Turn,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct QUIC",
            Path::Relay => "QUIC via our relay",
            Path::Turn => "QUIC via coturn (TURN)",
        }
    }
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().join(name)
}

/// A server process in the lab: its pid, address and (ours) id, and the
/// last stats line it printed.
struct Server {
    child: Child,
    addr: SocketAddr,
    id: macula_nat_core::NodeId,
    stats: Arc<Mutex<String>>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ours(lab: &Lab, extra: &[&str]) -> Server {
        let addr = SocketAddr::new(IpAddr::V4(lab.host_addr("relay").unwrap()), RELAY_PORT);
        let bind = addr.to_string();
        let relay = bin("macula-relay");
        let mut argv = vec![relay.to_str().unwrap(), "--bind", &bind];
        argv.extend_from_slice(extra);
        let mut child = lab.spawn("relay", &argv).expect("macula-relay");
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let last = stats.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if l.contains("\"ready\"") {
                    let _ = tx.send(l);
                } else if l.contains("\"stats\"") {
                    *last.lock().unwrap() = l;
                }
            }
        });
        drain(child.stderr.take().unwrap());
        let ready = rx.recv_timeout(Duration::from_secs(10)).expect("relay ready");
        let id = macula_nat_core::NodeId::from_hex(&field(&ready, "node_id")).expect("hex node id");
        Server { child, addr, id, stats }
    }

    fn coturn(lab: &Lab) -> Server {
        let ip = lab.host_addr("turn").unwrap().to_string();
        let argv = [
            "turnserver", "-n", "--no-auth", "-L", &ip, "-E", &ip, "--listening-port", "3478", "--no-tcp", "--no-tls", "--no-dtls",
            "--no-tcp-relay", "--no-cli", "--log-file", "stdout", "--min-port", "20000", "--max-port", "60000",
        ];
        let mut child = lab.spawn("turn", &argv).expect("turnserver (apt-get install coturn)");
        drain(child.stdout.take().unwrap());
        drain(child.stderr.take().unwrap());
        let addr = SocketAddr::new(IpAddr::V4(lab.host_addr("turn").unwrap()), TURN_PORT);
        Server { child, addr, id: Default::default(), stats: Arc::new(Mutex::new(String::new())) }
    }

    /// Frames forwarded so far (our relay, from its last stats line).
    fn frames(&self) -> u64 {
        let l = self.stats.lock().unwrap().clone();
        if l.is_empty() {
            0
        } else {
            field(&l, "frames").parse().unwrap_or(0)
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(r: impl std::io::Read + Send + 'static) {
    std::thread::spawn(move || for _ in BufReader::new(r).lines().map_while(Result::ok) {});
}

fn field(line: &str, key: &str) -> String {
    let pat = format!("\"{key}\":");
    let rest = &line[line.find(&pat).unwrap_or_else(|| panic!("{key} in {line}")) + pat.len()..];
    let rest = rest.trim_start_matches('"');
    rest[..rest.find(['"', ',', '}']).unwrap()].to_string()
}

/// A node (or plain UDP socket) whose socket lives in `host`'s namespace.
fn in_host<T: Send + 'static>(lab: &Lab, host: &str, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> T {
    macula_nat_lab::netns::in_ns(&lab.netns(host).unwrap(), move || Ok(f()?)).expect("socket in the lab")
}

fn node_in(lab: &Lab, host: &str) -> Arc<Node> {
    in_host(lab, host, || Node::open(NodeConfig::default(), Identity::generate()).map_err(std::io::Error::other))
}

fn udp_in(lab: &Lab, host: &str) -> tokio::net::UdpSocket {
    let s = in_host(lab, host, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_nonblocking(true)?;
        Ok(s)
    });
    tokio::net::UdpSocket::from_std(s).unwrap()
}

struct Env {
    lab: Lab,
    relay: Option<Server>,
    turn: Option<Server>,
}

/// One end: a node on `host`, with a link to our relay when the path
/// needs one (reserved on the target side).
struct End {
    host: &'static str,
    node: Arc<Node>,
    link: Option<RelayLink>,
}

impl End {
    async fn new(env: &Env, host: &'static str, path: Path, target: bool) -> End {
        let node = node_in(&env.lab, host);
        let link = if path == Path::Relay {
            let r = env.relay.as_ref().unwrap();
            let l = RelayLink::connect(&node, r.addr, r.id).await.expect("relay link");
            if target {
                l.reserve().await.expect("reservation");
            }
            Some(l)
        } else {
            None
        };
        End { host, node, link }
    }

    fn real_addr(&self, env: &Env) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(env.lab.host_addr(self.host).unwrap()), self.node.local_addr().unwrap().port())
    }

    fn close(&self) {
        if let Some(l) = &self.link {
            l.close();
        }
        self.node.close();
    }
}

/// A's side of one QUIC connection to B over `path`, and the TURN
/// allocation carrying it (if any).
struct Dialled {
    conn: Connection,
    turn: Option<(TurnClient, tokio::task::JoinHandle<()>)>,
}

impl Dialled {
    async fn close(self) {
        self.conn.close("done");
        if let Some((tc, pump)) = self.turn {
            pump.abort();
            tc.release().await;
        }
    }
}

async fn dial(env: &Env, path: Path, a: &End, b: &End) -> Dialled {
    let (b_id, qa) = (b.node.node_id(), a.node.quic().unwrap());
    match path {
        Path::Direct => Dialled { conn: qa.connect(b.real_addr(env), b_id).await.expect("direct dial"), turn: None },
        Path::Relay => {
            let virt = virtual_addr().addr();
            a.link.as_ref().unwrap().open(b_id, virt).await.expect("relay session");
            Dialled { conn: qa.connect(virt, b_id).await.expect("dial through the relay"), turn: None }
        }
        Path::Turn => {
            let server = env.turn.as_ref().unwrap().addr;
            let sock = udp_in(&env.lab, a.host);
            let tc = TurnClient::allocate(sock, server).await.expect("TURN allocation");
            tc.bind(turn::FIRST_CHANNEL, b.real_addr(env)).await.expect("TURN channel");
            let virt = virtual_addr().addr();
            let pump = tc.carry(turn::FIRST_CHANNEL, &qa, virt);
            let conn = qa.connect(virt, b_id).await.expect("dial through coturn");
            Dialled { conn, turn: Some((tc, pump)) }
        }
    }
}

struct Cell {
    mib_per_s: f64,
    /// CPU seconds per GiB moved: this process (both nodes), the relay.
    bench_cpu_per_gib: f64,
    relay_cpu_per_gib: f64,
}

/// Sends `size`-byte messages A -> B for `dur`, then waits until B has
/// them all; the rate is over that whole time (as in bench_quic).
async fn cell(env: &Env, path: Path, size: usize, dur: Duration) -> Cell {
    let b = End::new(env, "n2", path, true).await;
    let a = End::new(env, "n1", path, false).await;
    let qb = b.node.quic().unwrap();
    let accept = runtime::spawn(async move { qb.accept().await });
    let d = dial(env, path, &a, &b).await;
    let rx = accept.await.unwrap().expect("B accepts");
    // The path really is the one named.
    match (&d.turn, path) {
        (Some((tc, _)), _) => assert_eq!(rx.remote_address(), tc.relayed, "B sees coturn's relayed address"),
        (None, Path::Relay) => assert!(macula_nat_core::relay::is_virtual(&rx.remote_address())),
        (None, _) => assert_eq!(rx.remote_address(), a.real_addr(env)),
    }
    let receiver = runtime::spawn(async move {
        let mut bytes = 0u64;
        while let Some(m) = rx.recv().await {
            bytes += m.len() as u64;
        }
        bytes
    });
    let server_pid = match path {
        Path::Direct => None,
        Path::Relay => env.relay.as_ref().map(|s| s.pid()),
        Path::Turn => env.turn.as_ref().map(|s| s.pid()),
    };
    let msg = Bytes::from(vec![0xA5u8; size]);
    let (cpu0, srv0) = (cpu_seconds(None), server_pid.map_or(0.0, |p| cpu_seconds(Some(p))));
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur {
        d.conn.send(msg.clone()).await.unwrap();
        sent += size as u64;
    }
    d.conn.finish().await.unwrap();
    let bytes = receiver.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let (cpu1, srv1) = (cpu_seconds(None), server_pid.map_or(0.0, |p| cpu_seconds(Some(p))));
    assert_eq!(bytes, sent, "every message arrived");
    d.close().await;
    a.close();
    b.close();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Cell { mib_per_s: bytes as f64 / (1 << 20) as f64 / secs, bench_cpu_per_gib: (cpu1 - cpu0) / gib, relay_cpu_per_gib: (srv1 - srv0) / gib }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Resource use of a relay process over one window.
struct Window {
    rss_mib: f64,
    cpu_pct: f64,
    /// Datagrams in + out at the target nodes per second: every relayed
    /// packet arrives at or leaves from one of them once.
    pkts_per_s: f64,
    /// Our relay's own count of forwarded frames per second.
    frames_per_s: Option<f64>,
}

async fn window(srv: &Server, targets: &[End], secs: f64, ours: bool) -> Window {
    let pkts = || targets.iter().map(|t| t.node.stats()).map(|s| s.datagrams_in + s.datagrams_out).sum::<u64>();
    let (c0, p0, f0) = (cpu_seconds(Some(srv.pid())), pkts(), srv.frames());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    // Let the relay's next stats line (every 500 ms) cover the window.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dt = t0.elapsed().as_secs_f64();
    if ours {
        eprintln!("  relay stats: {}", srv.stats.lock().unwrap());
    }
    Window {
        rss_mib: rss_kib(srv.pid()) as f64 / 1024.0,
        cpu_pct: 100.0 * (cpu_seconds(Some(srv.pid())) - c0) / dt,
        pkts_per_s: (pkts() - p0) as f64 / dt,
        frames_per_s: ours.then(|| (srv.frames() - f0) as f64 / dt),
    }
}

struct SessionsReport {
    fresh_rss_mib: f64,
    setup_secs: f64,
    idle: Window,
    light: Window,
}

/// `n` QUIC connections from GROUPS nodes on n1 to GROUPS nodes on n2
/// through a fresh relay process of `path`.
async fn sessions(env: &mut Env, path: Path, n: usize, secs: f64) -> SessionsReport {
    // A fresh process, so its memory is about these sessions.
    match path {
        Path::Relay => {
            env.relay = None;
            let max = (n + 100).to_string();
            env.relay = Some(Server::ours(&env.lab, &["--max-sessions", &max, "--stats-ms", "500"]));
        }
        _ => {
            env.turn = None;
            env.turn = Some(Server::coturn(&env.lab));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let srv_pid = if path == Path::Relay { env.relay.as_ref().unwrap().pid() } else { env.turn.as_ref().unwrap().pid() };
    let fresh_rss_mib = rss_kib(srv_pid) as f64 / 1024.0;
    let env = &*env;
    let mut targets = Vec::new();
    let mut openers = Vec::new();
    for _ in 0..GROUPS {
        targets.push(End::new(env, "n2", path, true).await);
        openers.push(End::new(env, "n1", path, false).await);
    }
    // Targets echo every message on every connection.
    let mut echoes = Vec::new();
    for t in &targets {
        let q = t.node.quic().unwrap();
        echoes.push(runtime::spawn(async move {
            while let Some(c) = q.accept().await {
                runtime::spawn(async move {
                    while let Some(m) = c.recv().await {
                        if c.send(m).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }));
    }
    let t0 = Instant::now();
    let mut dialled = Vec::with_capacity(n);
    // One after the other: a few ms each, and no handshake times out on
    // two busy cores.
    for k in 0..n {
        dialled.push(dial(env, path, &openers[k % GROUPS], &targets[(k / GROUPS) % GROUPS]).await);
    }
    let setup_secs = t0.elapsed().as_secs_f64();
    let srv = if path == Path::Relay { env.relay.as_ref().unwrap() } else { env.turn.as_ref().unwrap() };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = window(srv, &targets, secs, path == Path::Relay).await;
    // Light traffic: each connection sends 1 KiB every second (spread over
    // the second) and reads the echo.
    let conns: Vec<Connection> = dialled.iter().map(|d| d.conn.clone()).collect();
    let talkers: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            runtime::spawn(async move {
                tokio::time::sleep(Duration::from_millis((k * 1000 / n) as u64)).await;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let m = Bytes::from(vec![0x5Au8; 1024]);
                loop {
                    tick.tick().await;
                    if c.send(m.clone()).await.is_err() || c.recv().await.is_none() {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let light = window(srv, &targets, secs, path == Path::Relay).await;
    for t in talkers {
        t.abort();
    }
    for e in echoes {
        e.abort();
    }
    let open = dialled.iter().filter(|d| d.conn.close_reason().is_none()).count();
    assert_eq!(open, n, "every connection stayed open");
    for d in dialled {
        d.close().await;
    }
    for e in openers.iter().chain(&targets) {
        e.close();
    }
    SessionsReport { fresh_rss_mib, setup_secs, idle, light }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (secs, rounds, n, win) = (arg(0, 3.0), arg(1, 5.0) as usize, arg(2, 1000.0) as usize, arg(3, 10.0));
    std::env::set_var("MACULA_LAB_BIN", bin("macula-lab"));
    macula_nat_lab::reap(false);
    let mut spec = LabSpec::new("rlbench");
    spec.relays.push("relay".into());
    for h in ["turn", "n1", "n2"] {
        spec.public.push(h.into());
    }
    let lab = Lab::up(spec).expect("lab up");
    let relay = Server::ours(&lab, &["--stats-ms", "500"]);
    let turn = Server::coturn(&lab);
    let mut env = Env { lab, relay: Some(relay), turn: Some(turn) };
    std::thread::sleep(Duration::from_secs(1));
    let paths = [Path::Direct, Path::Relay, Path::Turn];
    let size = 64 << 10;
    // For profiling: `BENCH_RELAY_ONLY=direct|relay|turn` runs that path's
    // throughput cells only.
    if let Ok(only) = std::env::var("BENCH_RELAY_ONLY") {
        if only == "sessions" {
            runtime::handle().block_on(async {
                for _ in 0..rounds {
                    let r = sessions(&mut env, Path::Relay, n, win).await;
                    eprintln!("idle {:.0} pkts/s ({:?} frames), light {:.0} pkts/s ({:?} frames)", r.idle.pkts_per_s, r.idle.frames_per_s, r.light.pkts_per_s, r.light.frames_per_s);
                }
            });
            return;
        }
        let p = *paths.iter().find(|p| format!("{p:?}").eq_ignore_ascii_case(&only)).expect("direct|relay|turn");
        eprintln!("relay pid {} turn pid {} bench pid {}", env.relay.as_ref().unwrap().pid(), env.turn.as_ref().unwrap().pid(), std::process::id());
        runtime::handle().block_on(async {
            for round in 0..rounds {
                let c = cell(&env, p, size, Duration::from_secs_f64(secs)).await;
                eprintln!("round {} {:<24} {:>8.1} MiB/s  bench {:>5.2} CPU-s/GiB  relay {:>5.2} CPU-s/GiB", round + 1, p.name(), c.mib_per_s, c.bench_cpu_per_gib, c.relay_cpu_per_gib);
            }
        });
        return;
    }
    runtime::handle().block_on(async {
        for p in paths {
            cell(&env, p, 1024, Duration::from_millis(300)).await;
        }
        let mut per: Vec<Vec<Cell>> = paths.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            // Rotate the order so drifting machine load favours no path.
            for k in 0..paths.len() {
                let i = (k + round) % paths.len();
                let c = cell(&env, paths[i], size, Duration::from_secs_f64(secs)).await;
                eprintln!(
                    "round {} {:<24} {:>8.1} MiB/s  bench {:>5.2} CPU-s/GiB  relay {:>5.2} CPU-s/GiB",
                    round + 1,
                    paths[i].name(),
                    c.mib_per_s,
                    c.bench_cpu_per_gib,
                    c.relay_cpu_per_gib
                );
                per[i].push(c);
            }
        }
        let direct = median(per[0].iter().map(|c| c.mib_per_s).collect());
        println!("## Single-session throughput (64 KiB messages, A -> B, {secs} s per cell, median of {rounds} rounds)\n");
        println!("| path | MiB/s | range | vs direct | nodes' CPU-s per GiB | relay process CPU-s per GiB |");
        println!("|---|---|---|---|---|---|");
        for (i, p) in paths.iter().enumerate() {
            let v: Vec<f64> = per[i].iter().map(|c| c.mib_per_s).collect();
            let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
            let mib = median(v);
            let relay_cpu = if *p == Path::Direct { "-".to_string() } else { format!("{:.2}", median(per[i].iter().map(|c| c.relay_cpu_per_gib).collect())) };
            println!(
                "| {} | {mib:.1} | {lo:.1}–{hi:.1} | {:.0}% | {:.2} | {relay_cpu} |",
                p.name(),
                100.0 * mib / direct,
                median(per[i].iter().map(|c| c.bench_cpu_per_gib).collect())
            );
        }
        let ours = median(per[1].iter().map(|c| c.mib_per_s).collect());
        println!(
            "\nTarget (relayed >= 50 % of direct): {} ({:.0} %).\n",
            if ours >= 0.5 * direct { "met" } else { "NOT met" },
            100.0 * ours / direct
        );
        let mut reports = Vec::new();
        for p in [Path::Relay, Path::Turn] {
            let r = sessions(&mut env, p, n, win).await;
            eprintln!("{n} sessions via {}: set up in {:.1} s", p.name(), r.setup_secs);
            reports.push((p, r));
        }
        println!("## {n} concurrent sessions ({GROUPS} nodes on each side, one QUIC connection per session, {win} s windows)\n");
        println!("| relay | fresh process RSS MiB | set-up s | idle: RSS MiB | idle: CPU % | idle: packets/s | light: RSS MiB | light: CPU % | light: packets/s |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for (p, r) in &reports {
            let pk = |w: &Window| match w.frames_per_s {
                Some(f) => format!("{:.0} ({f:.0} frames)", w.pkts_per_s),
                None => format!("{:.0}", w.pkts_per_s),
            };
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} |",
                if *p == Path::Relay { "ours (macula-relay)" } else { "coturn turnserver" },
                r.fresh_rss_mib,
                r.setup_secs,
                r.idle.rss_mib,
                r.idle.cpu_pct,
                pk(&r.idle),
                r.light.rss_mib,
                r.light.cpu_pct,
                pk(&r.light)
            );
        }
    });
    drop(env);
}
