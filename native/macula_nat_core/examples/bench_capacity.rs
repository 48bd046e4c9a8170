//! Capacity of one rendezvous and one relay, measured on this machine.
//! Run through `bench/capacity.sh`, which writes `bench/capacity.md`.
//!
//! bench_capacity --bin DIR [--nodes N] [--idle-secs S] [--rates R,R,...]
//!                [--step-secs S] [--relay] [--cross K] [--swarm M]
//!                [--no-home-ping]
//!
//! One process (this one) holds N node identities, each its own ed25519
//! key and its own UDP socket (a `Node`), joined with `Signal::join_with`:
//! the code every node joins with, so the rendezvous sees N distinct peers
//! dialling, registering and keeping their control connections alive as
//! real nodes do. The servers are `macula-node` processes of their own
//! (rendezvous R1; relay; a second rendezvous R2) so their memory and CPU
//! are read alone from `/proc/<pid>`, their packets from their metrics.
//!
//! Nodes bind 127.1.x.y, four per address: a rendezvous sees many source
//! IPs as on the Internet, a few nodes behind each (a NAT with a few
//! hosts), so the per-IP connection cap (32) stays at its default and
//! only the total (1024) is raised, as an operator must.
//!
//! Phases, each printing a markdown table on stdout (progress on stderr):
//! 1. join N nodes to R1; R1's RSS before and after, the join time; then
//!    an idle window: R1's CPU and datagrams in/out per second.
//! 2. Connect throughput: Connects through R1 at rising offered rates
//!    (initiators round-robin over the nodes, so each stays far below the
//!    rendezvous' 50 Connects/s per peer); per rate sessions/s, latency.
//! 3. `--cross K`: time to first message, cross-rendezvous (target joined
//!    at R2, its signed record in a private mainline swarm, cold cache)
//!    next to same-rendezvous, alternating, K of each.
//! 4. `--relay`: the nodes reserve at one relay, in steps up to all of
//!    them; per step its RSS per reservation, idle CPU and packets, and
//!    relayed connects at that load. Last, as its top step may overload
//!    the machine.

use macula_nat_core::advertiser::Advertiser;
use macula_nat_core::connect::public_profile;
use macula_nat_core::dht::mainline::{MainlineConfig, MainlineDht};
use macula_nat_core::dht::DhtBackend;
use macula_nat_core::profile_cache::{CacheConfig, ProfileCache};
use macula_nat_core::{connect_detailed, runtime, ConnectOpts, Identity, Node, NodeConfig, Signal, SignalConfig};
use macula_nat_proto::record::{Contact, Contacts, PeerInfo};
use macula_nat_proto::signal::NodeId;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

struct Args {
    bin: PathBuf,
    nodes: usize,
    idle: u64,
    rates: Vec<u32>,
    step: u64,
    relay: bool,
    cross: usize,
    swarm: usize,
    /// Nodes do not ping their rendezvous (`SignalConfig::ping_every`
    /// None): what the pings cost, against a run with them.
    no_ping: bool,
}

fn usage() -> ! {
    eprintln!("usage: bench_capacity --bin DIR [--nodes N] [--idle-secs S] [--rates R,R] [--step-secs S] [--relay] [--cross K] [--swarm M] [--no-home-ping]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args { bin: PathBuf::new(), nodes: 1000, idle: 30, rates: vec![], step: 4, relay: false, cross: 0, swarm: 20, no_ping: false };
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        if f == "--relay" {
            a.relay = true;
            continue;
        }
        if f == "--no-home-ping" {
            a.no_ping = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| usage());
        let n = || v.parse::<u64>().unwrap_or_else(|_| usage());
        match f.as_str() {
            "--bin" => a.bin = v.clone().into(),
            "--nodes" => a.nodes = n() as usize,
            "--idle-secs" => a.idle = n(),
            "--step-secs" => a.step = n(),
            "--cross" => a.cross = n() as usize,
            "--swarm" => a.swarm = n() as usize,
            "--rates" => a.rates = v.split(',').map(|r| r.parse().unwrap_or_else(|_| usage())).collect(),
            _ => usage(),
        }
    }
    if a.bin.as_os_str().is_empty() {
        usage()
    }
    a
}

fn progress(msg: std::fmt::Arguments<'_>) {
    eprintln!("bench_capacity: {msg}");
}
macro_rules! say { ($($t:tt)*) => { progress(format_args!($($t)*)) } }

// ---- a server process and what /proc and its metrics say about it ----

struct Server {
    child: Child,
    pid: u32,
    id: NodeId,
    addr: SocketAddr,
    metrics: SocketAddr,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of `"key":"..."` or `"key":N` in a JSON line (flat, ours).
fn json_field(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[at..].trim_start_matches('"');
    let end = rest.find(['"', ',', '}'])?;
    Some(rest[..end].to_string())
}

/// A `macula-node` running a rendezvous or a relay on 127.0.0.1, its
/// connection limit raised to `max_connections` (the default 1024 would
/// refuse the 1025th joined node).
fn spawn_server(bin: &PathBuf, name: &str, rendezvous: bool, relay: bool, max_connections: usize) -> Server {
    let dir = std::env::temp_dir().join(format!("bench_capacity.{}.{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "log_level = \"error\"\nidentity_key = \"{}\"\n[node]\nlisten = \"127.0.0.1:0\"\nrendezvous = {rendezvous}\nrelay = {relay}\n\
             max_connections = {max_connections}\n[relay]\nmax_sessions = 1000\nmax_reservations = {max_connections}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("node.key").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin.join("macula-node"));
    die_with_us(&mut cmd);
    let mut child = cmd
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("spawn {}", bin.join("macula-node").display()), e));
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // It prints nothing more; the reader may go.
    let get = |k| json_field(&line, k).unwrap_or_else(|| fail("ready line", &line));
    Server {
        pid: get("pid").parse().unwrap(),
        id: NodeId::from_hex(&get("node_id")).unwrap(),
        addr: get("node").parse().unwrap(),
        metrics: get("metrics").parse().unwrap(),
        child,
        _dir: TempDir(dir),
    }
}

/// A server dies with this process, however it ends (a killed benchmark
/// leaves no rendezvous behind).
fn die_with_us(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("bench_capacity: {what}: {e}");
    std::process::exit(1)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf reads a constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // Fields 14 and 15 of stat; f[0] is field 3.
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) + t(12)) as f64 / clk_tck()
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The server's metrics, by `name{labels}`.
fn metrics(s: &Server) -> HashMap<String, f64> {
    let mut text = String::new();
    if let Ok(mut c) = std::net::TcpStream::connect(s.metrics) {
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let _ = c.read_to_string(&mut text);
    }
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

fn datagrams(s: &Server) -> (f64, f64) {
    let m = metrics(s);
    let g = |d: &str| m.get(&format!("macula_node_socket_datagrams_total{{direction=\"{d}\"}}")).copied().unwrap_or(0.0);
    (g("in"), g("out"))
}

fn gauge(s: &Server, name: &str) -> f64 {
    metrics(s).get(name).copied().unwrap_or(0.0)
}

/// What a server does over `secs` of idle: CPU %, datagrams/s in and out.
async fn idle_window(s: &Server, secs: u64) -> (f64, f64, f64) {
    let (c0, (i0, o0), t0) = (cpu_secs(s.pid), datagrams(s), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (c1, (i1, o1)) = (cpu_secs(s.pid), datagrams(s));
    let dt = t0.elapsed().as_secs_f64();
    ((c1 - c0) / dt * 100.0, (i1 - i0) / dt, (o1 - o0) / dt)
}

/// Nearest-rank percentile, ms.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

// ---- the nodes ----

/// Four nodes per source address, 127.1.0.1 upwards.
fn bind_of(i: usize) -> SocketAddr {
    let k = i / 4;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 1 + (k / 62_500) as u8, ((k / 250) % 250) as u8, (k % 250 + 1) as u8)), 0)
}

/// Set once from `--no-home-ping`.
static NO_PING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn signal_cfg() -> SignalConfig {
    let mut c = SignalConfig::new(public_profile());
    if NO_PING.load(std::sync::atomic::Ordering::Relaxed) {
        c.ping_every = None;
    }
    // The primer TTL probe is the node's own business (ICMP towards its
    // rendezvous, none of the rendezvous' work); 10,000 of them at once on
    // one host only measure the kernel's ICMP rate limit.
    c.primers = false;
    c.join_timeout = Duration::from_secs(30);
    c
}

/// First messages received by any of our nodes: (from, when).
type Firsts = mpsc::UnboundedSender<(NodeId, Instant)>;

/// Takes the node's incoming connections; notes when each one's first
/// message arrives.
fn serve_accepts(s: Arc<Signal>, firsts: Firsts) {
    runtime::spawn(async move {
        while let Some(c) = s.accept().await {
            let firsts = firsts.clone();
            runtime::spawn(async move {
                if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(30), c.recv()).await {
                    let _ = firsts.send((c.peer_id(), Instant::now()));
                    // Held until the initiator closes it.
                    let _ = tokio::time::timeout(Duration::from_secs(30), c.closed()).await;
                }
            });
        }
    });
}

/// Joins one node; a refused join is tried again after 250 ms (a node's
/// own reconnect backoff), twice at most. Returns the tries it took.
async fn join_one(i: usize, rv: (SocketAddr, NodeId), cfg: SignalConfig) -> Result<(Signal, Duration, u32), String> {
    let node = Node::open(NodeConfig { bind: bind_of(i) }, Identity::generate()).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut tries = 1;
    loop {
        match Signal::join_with(node.clone(), rv.0, rv.1, cfg.clone()).await {
            Ok(s) => return Ok((s, t.elapsed(), tries)),
            Err(e) if tries == 3 => return Err(e.to_string()),
            Err(e) => {
                if tries == 1 {
                    say!("join refused ({e}); trying again");
                }
                tries += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Joins `n` nodes to the rendezvous, at most `parallel` joining at once.
async fn join_all(first: usize, n: usize, rv: &Server, firsts: &Firsts, parallel: usize) -> (Vec<Arc<Signal>>, Vec<Duration>, usize, usize) {
    let sem = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for i in first..first + n {
        let sem = sem.clone();
        let target = (rv.addr, rv.id);
        tasks.push(runtime::spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            join_one(i, target, signal_cfg()).await
        }));
    }
    let (mut ok, mut lat, mut failed, mut retried) = (Vec::with_capacity(n), Vec::with_capacity(n), 0, 0);
    // A rendezvous that cannot keep up makes its nodes rejoin over and
    // over: what has not joined by then counts as failed.
    let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
    for mut t in tasks {
        let Ok(r) = tokio::time::timeout_at(deadline, &mut t).await else {
            t.abort();
            failed += 1;
            continue;
        };
        match r.unwrap() {
            Ok((s, d, tries)) => {
                retried += (tries > 1) as usize;
                let s = Arc::new(s);
                serve_accepts(s.clone(), firsts.clone());
                ok.push(s);
                lat.push(d);
            }
            Err(e) => {
                if failed < 5 {
                    say!("join failed: {e}");
                }
                failed += 1;
            }
        }
    }
    lat.sort();
    (ok, lat, failed, retried)
}

/// Nodes joining at once: a rendezvous restart or a fleet starting, as a
/// burst.
const JOINING: usize = 256;
/// How long all of them may take to join.
const JOIN_DEADLINE: Duration = Duration::from_secs(120);

// ---- phases ----

async fn phase_join(a: &Args, rv: &Server, firsts: &Firsts) -> Vec<Arc<Signal>> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = rss_kib(rv.pid);
    let me0 = rss_kib(std::process::id());
    say!("joining {} nodes", a.nodes);
    let t = Instant::now();
    let (signals, lat, failed, retried) = join_all(0, a.nodes, rv, firsts, JOINING).await;
    let join_secs = t.elapsed().as_secs_f64();
    let peers = gauge(rv, "macula_node_rendezvous_peers");
    let regs = gauge(rv, "macula_node_rendezvous_registrations_total");
    say!("joined {} in {join_secs:.1} s ({failed} failed), rendezvous counts {peers}; settling 5 s", signals.len());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss1 = rss_kib(rv.pid);
    say!("idle window {} s", a.idle);
    let (cpu, pin, pout) = idle_window(rv, a.idle).await;
    let rss2 = rss_kib(rv.pid);
    let (peers2, regs2) = (gauge(rv, "macula_node_rendezvous_peers"), gauge(rv, "macula_node_rendezvous_registrations_total"));
    let n = signals.len().max(1) as f64;
    let me1 = rss_kib(std::process::id());
    let ping = if a.no_ping { "nodes not pinging it (`ping_every` None)" } else { "nodes pinging it every second (the default `ping_every`)" };
    println!("### One rendezvous, {} joined nodes, {ping}\n", a.nodes);
    println!("| joined (rendezvous' peers after the join / after idle) | registrations at the rendezvous after the join / after idle | joins refused once and retried / failed or not joined in {} s | join time, all | join latency p50 / p95 | rendezvous RSS before / joined / after idle | RSS per joined node | idle CPU ({} s) | idle datagrams/s in / out | per node per s in / out | load process RSS per node |", JOIN_DEADLINE.as_secs(), a.idle);
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} ({peers} / {peers2}) | {regs} / {regs2} | {retried} / {failed} | {join_secs:.1} s ({:.0} joins/s) | {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} MiB | {:.1} KiB | {cpu:.1} % of one core | {pin:.0} / {pout:.0} | {:.3} / {:.3} | {:.0} KiB |",
        signals.len(),
        n / join_secs,
        pct(&lat, 50.0),
        pct(&lat, 95.0),
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        rss2 as f64 / 1024.0,
        (rss2 as f64 - rss0 as f64) / n,
        pin / n,
        pout / n,
        (me1 as f64 - me0 as f64) / n,
    );
    println!();
    signals
}

async fn phase_throughput(a: &Args, rv: &Server, signals: &[Arc<Signal>]) {
    if a.rates.is_empty() || signals.len() < 4 {
        return;
    }
    println!("### Connect throughput through the rendezvous ({} joined nodes)\n", signals.len());
    println!("| offered Connects/s | sessions | failed | handled sessions/s | connect latency p50 / p95 / max | rendezvous CPU | load process CPU |");
    println!("|---|---|---|---|---|---|---|");
    let n = signals.len();
    let mut next = 0usize;
    let mut base_p50 = None::<f64>;
    let mut doubled_at = None::<u32>;
    let me = std::process::id();
    for &rate in &a.rates {
        let count = (rate as u64 * a.step) as usize;
        let every = Duration::from_secs_f64(1.0 / rate as f64);
        let (c0, m0, t0) = (cpu_secs(rv.pid), cpu_secs(me), tokio::time::Instant::now());
        let mut tasks = Vec::with_capacity(count);
        for k in 0..count {
            tokio::time::sleep_until(t0 + every * k as u32).await;
            let (i, j) = (next % n, (next + n / 2) % n);
            next += 1;
            let (from, to) = (signals[i].clone(), signals[j].node().node_id());
            tasks.push(runtime::spawn(async move {
                let r = connect_detailed(&from, to, ConnectOpts::default()).await;
                let done = tokio::time::Instant::now();
                match r {
                    Ok(c) => {
                        c.conn.close("bench done");
                        Ok((c.elapsed, done))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }));
        }
        let (mut lat, mut failed, mut last) = (Vec::new(), 0, t0);
        let mut errors: HashMap<String, usize> = HashMap::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok((d, done)) => {
                    lat.push(d);
                    last = last.max(done);
                }
                Err(e) => {
                    failed += 1;
                    *errors.entry(e).or_default() += 1;
                }
            }
        }
        let wall = (last - t0).as_secs_f64().max(a.step as f64);
        let (c1, m1) = (cpu_secs(rv.pid), cpu_secs(me));
        lat.sort();
        let p50 = pct(&lat, 50.0);
        let base = *base_p50.get_or_insert(p50);
        if doubled_at.is_none() && p50 >= 2.0 * base {
            doubled_at = Some(rate);
        }
        let errs = if errors.is_empty() { String::new() } else { format!(" ({errors:?})") };
        println!(
            "| {rate} | {} | {failed}{errs} | {:.0} | {p50:.1} / {:.1} / {:.1} ms | {:.0} % | {:.0} % |",
            lat.len(),
            lat.len() as f64 / wall,
            pct(&lat, 95.0),
            pct(&lat, 100.0),
            (c1 - c0) / wall * 100.0,
            (m1 - m0) / wall * 100.0,
        );
        say!("rate {rate}: {} ok, {failed} failed, p50 {p50:.1} ms", lat.len());
        // Let the closed connections drain before the next rate.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!();
    match doubled_at {
        Some(r) => println!("p50 latency doubled (vs the lowest rate, {:.1} ms) at {r} offered Connects/s.\n", base_p50.unwrap_or(0.0)),
        None => println!("p50 latency did not double (vs the lowest rate, {:.1} ms) up to the highest rate offered.\n", base_p50.unwrap_or(0.0)),
    }
}

/// Relayed connects between reserved nodes: time to first message.
async fn relayed_connects(signals: &[Arc<Signal>], count: usize, firsts_rx: &mut mpsc::UnboundedReceiver<(NodeId, Instant)>) -> (Vec<Duration>, usize) {
    let (mut lat, mut failed) = (Vec::new(), 0);
    let opts = ConnectOpts { relay_only: true, allow_relay: true, upgrade_interval: None, ..ConnectOpts::default() };
    let k = signals.len();
    for i in 0..count {
        let (from, to) = (&signals[(7 * i + 1) % k], &signals[(7 * i + 1 + k / 3) % k]);
        let t = Instant::now();
        match connect_detailed(from, to.node().node_id(), opts.clone()).await {
            Ok(c) => {
                let _ = c.conn.send(b"first".to_vec()).await;
                match wait_first(firsts_rx, from.node().node_id()).await {
                    Some(at) => lat.push(at - t),
                    None => failed += 1,
                }
                c.conn.close("bench done");
            }
            Err(e) => {
                failed += 1;
                say!("relayed connect failed: {e}");
            }
        }
    }
    lat.sort();
    (lat, failed)
}

/// Reservation counts the relay is taken through, up to every node.
const RELAY_STEPS: [usize; 4] = [1000, 2500, 5000, 10_000];

/// One relay, reservations added in steps; at each step its RSS, idle CPU
/// and datagrams (over `RELAY_IDLE`) and relayed connects among the
/// reserved nodes. A step whose reservations do not all hold within
/// `RESERVE_WAIT` is the last.
async fn phase_relay(a: &Args, signals: &[Arc<Signal>], firsts_rx: &mut mpsc::UnboundedReceiver<(NodeId, Instant)>) {
    const RELAY_IDLE: u64 = 10;
    const RESERVE_WAIT: Duration = Duration::from_secs(30);
    let relay = spawn_server(&a.bin, "relay", false, true, signals.len() + 1024);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = rss_kib(relay.pid);
    println!("### One relay, reservations in steps ({} nodes joined at the rendezvous)\n", signals.len());
    println!("Relay RSS with no client: {:.1} MiB. Idle windows of {RELAY_IDLE} s; relayed connects: 10 per step, `relay_only`, time from `connect` to the first message at the target.\n", rss0 as f64 / 1024.0);
    println!("| reservations wanted | held (clients) | time to add the step | relay RSS | RSS per reservation | idle CPU | load process CPU | idle datagrams/s in / out | per reservation per s in / out | relayed connect p50 / p95 (failed) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut done = 0;
    for want in RELAY_STEPS.into_iter().filter(|w| *w <= signals.len()) {
        say!("reserving up to {want} at the relay");
        let t = Instant::now();
        // In batches of 500: 10,000 handshakes at once would only measure
        // timeouts.
        let mut held = 0.0;
        let mut ok = true;
        while done < want {
            let upto = (done + 500).min(want);
            for s in &signals[done..upto] {
                s.set_relays(vec![(relay.id, relay.addr)]);
            }
            done = upto;
            let deadline = Instant::now() + RESERVE_WAIT;
            loop {
                held = gauge(&relay, "macula_node_relay_reservations");
                if held >= done as f64 {
                    break;
                }
                if Instant::now() > deadline {
                    ok = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if !ok {
                break;
            }
        }
        let took = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (me0, t0) = (cpu_secs(std::process::id()), Instant::now());
        let (cpu, pin, pout) = idle_window(&relay, RELAY_IDLE).await;
        let me_cpu = (cpu_secs(std::process::id()) - me0) / t0.elapsed().as_secs_f64() * 100.0;
        let held_after = gauge(&relay, "macula_node_relay_reservations");
        let clients = gauge(&relay, "macula_node_relay_clients");
        let rss = rss_kib(relay.pid);
        let n = held_after.max(1.0);
        let (lat, failed) = if ok { relayed_connects(&signals[..done], 10, firsts_rx).await } else { (vec![], 0) };
        println!(
            "| {want} | {held_after} ({clients}) | {took:.1} s{} | {:.1} MiB | {:.1} KiB | {cpu:.1} % of one core | {me_cpu:.0} % | {pin:.0} / {pout:.0} | {:.2} / {:.2} | {:.1} / {:.1} ms ({failed}) |",
            if ok { "" } else { ", not all held" },
            rss as f64 / 1024.0,
            (rss as f64 - rss0 as f64) / n,
            pin / n,
            pout / n,
            pct(&lat, 50.0),
            pct(&lat, 95.0),
        );
        say!("{held} reservations held after {took:.1} s; idle CPU {cpu:.1} %");
        if !ok {
            println!("\nStopped: {want} reservations did not all hold within {} s of their batch.", RESERVE_WAIT.as_secs());
            break;
        }
    }
    println!();
    for s in signals {
        s.set_relays(vec![]);
    }
    drop(relay);
}

/// When the first message from `from` reached its target.
async fn wait_first(rx: &mut mpsc::UnboundedReceiver<(NodeId, Instant)>, from: NodeId) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((id, at))) if id == from => return Some(at),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

struct Swarm {
    child: Child,
    _stdin: ChildStdin,
    bootstrap: Vec<String>,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_swarm(bin: &PathBuf, n: usize) -> Swarm {
    let mut cmd = Command::new(bin.join("macula-dht-swarm"));
    die_with_us(&mut cmd);
    let mut child = cmd
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| fail("spawn macula-dht-swarm", e));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let bootstrap = line.trim().strip_prefix("bootstrap ").unwrap_or_else(|| fail("swarm", &line)).split(',').map(String::from).collect();
    Swarm { _stdin: child.stdin.take().unwrap(), child, bootstrap }
}

async fn dht_client(bootstrap: Vec<String>) -> Arc<dyn DhtBackend> {
    let dht = MainlineDht::start(MainlineConfig { bootstrap, ..MainlineConfig::default() }).await.unwrap_or_else(|e| fail("dht client", e));
    if !dht.bootstrapped().await {
        fail("dht client", "did not bootstrap");
    }
    Arc::new(dht)
}

async fn phase_cross(a: &Args, r1: &Server, signals: &[Arc<Signal>], firsts: &Firsts, firsts_rx: &mut mpsc::UnboundedReceiver<(NodeId, Instant)>) {
    let k = a.cross;
    let swarm = spawn_swarm(&a.bin, a.swarm);
    let r2 = spawn_server(&a.bin, "r2", true, false, 4096);
    let (writer, reader) = (dht_client(swarm.bootstrap[..2].to_vec()).await, dht_client(swarm.bootstrap[2..4].to_vec()).await);
    say!("joining and publishing {k} targets at R2");
    let base = signals.len() + 1000;
    let (targets, _, failed, _) = join_all(base, k, &r2, firsts, 64).await;
    if failed > 0 {
        say!("{failed} targets could not join R2; going on with {}", targets.len());
    }
    let r2c = Contact { node_id: r2.id, addr: r2.addr };
    // One at a time, as each node publishes its own (a put is a lookup
    // plus stores; fifty at once through one client only time out).
    let mut keep = Vec::new();
    for t in &targets {
        let adv = Advertiser::new(t.node().identity().clone(), writer.clone(), Duration::from_secs(3600));
        adv.set_contacts(Contacts { rendezvous: vec![r2c], reserved: vec![] });
        let info = PeerInfo { endpoints: vec![t.node().local_addr().unwrap()], ..public_profile() };
        match adv.publish(info).await {
            Ok(_) => keep.push(adv),
            Err(e) => say!("publish failed: {e}"),
        }
    }
    // Initiators: fresh nodes at R1, each with its own empty cache.
    let (inits, _, failed, _) = join_all(base + k, 2 * k, r1, firsts, 64).await;
    if failed > 0 || inits.len() < 2 * targets.len() || targets.is_empty() {
        say!("{failed} initiators could not join R1: no cross-rendezvous figures");
        return;
    }
    let k = targets.len();
    let n = signals.len();
    let (mut cross, mut same, mut errors) = (Vec::new(), Vec::new(), 0);
    for i in 0..k {
        for kind in [0, 1] {
            let from = &inits[2 * i + kind];
            let to = if kind == 0 { targets[i].node().node_id() } else { signals[(13 * i + 5) % n].node().node_id() };
            from.set_directory(Some(ProfileCache::new(CacheConfig::default(), reader.clone())));
            let t = Instant::now();
            match connect_detailed(from, to, ConnectOpts::default()).await {
                Ok(c) => {
                    let _ = c.conn.send(b"first".to_vec()).await;
                    match wait_first(firsts_rx, from.node().node_id()).await {
                        Some(at) => [&mut cross, &mut same][kind].push(at - t),
                        None => errors += 1,
                    }
                    c.conn.close("bench done");
                }
                Err(e) => {
                    errors += 1;
                    say!("connect failed ({}): {e}", ["cross", "same"][kind]);
                }
            }
        }
    }
    cross.sort();
    same.sort();
    println!("### Time to first message: cross-rendezvous vs same-rendezvous\n");
    println!("| connect | n | p50 | p95 | min | max |");
    println!("|---|---|---|---|---|---|");
    for (name, v) in [("cross-rendezvous (R1 `Unknown`, DHT lookup, cold cache, guest join at R2, session)", &cross), ("same rendezvous (R1)", &same)] {
        println!("| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |", v.len(), pct(v, 50.0), pct(v, 95.0), pct(v, 0.0), pct(v, 100.0));
    }
    println!("\n{errors} failed. Private mainline swarm of {} nodes; targets published by one DHT client, looked up by another.\n", a.swarm);
    drop(keep);
    drop(inits);
    drop(targets);
}

fn main() {
    let a = parse_args();
    NO_PING.store(a.no_ping, std::sync::atomic::Ordering::Relaxed);
    say!("RLIMIT_NOFILE {}", macula_nat_core::fd_budget::nofile_soft_limit());
    let r1 = spawn_server(&a.bin, "r1", true, false, a.nodes + 2048);
    runtime::handle().block_on(async {
        let (firsts, mut firsts_rx) = mpsc::unbounded_channel();
        let signals = phase_join(&a, &r1, &firsts).await;
        phase_throughput(&a, &r1, &signals).await;
        while firsts_rx.try_recv().is_ok() {}
        if a.cross > 0 {
            phase_cross(&a, &r1, &signals, &firsts, &mut firsts_rx).await;
        }
        // Last: its top step may overload this machine.
        if a.relay {
            while firsts_rx.try_recv().is_ok() {}
            phase_relay(&a, &signals, &mut firsts_rx).await;
        }
        for s in &signals {
            s.close();
        }
    });
    drop(r1);
}
