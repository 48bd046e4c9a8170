//! Runs a rendezvous, a listening node or a connecting node, for the lab
//! tests (inside lab hosts) and for operators. Prints JSON lines.
//!
//! ```text
//! macula-connect rendezvous [--bind IP:PORT] [--serve-relay]
//!     {"event":"ready","node_id":HEX,"addr":"IP:PORT"}      --serve-relay: it relays too
//! macula-connect listen --rendezvous IP:PORT --rendezvous-id HEX [--nat SPEC] [--bind IP:PORT]
//!     {"event":"joined","node_id":HEX,"observed":"IP:PORT","primer_ttl":N|null}
//!     {"event":"accepted","peer":HEX,"remote":"IP:PORT"}   per connection; echoes its messages
//!     {"event":"netchange","old":"IP:PORT","new":"IP:PORT","t_ns":..}   our public address moved
//!                                                          (the rendezvous says so; stream prints it too)
//! macula-connect connect TARGET_HEX --rendezvous IP:PORT --rendezvous-id HEX [--nat SPEC]
//!                [--timeout-ms N] [--no-direct] [--allow-relay] [--bind IP:PORT]
//!     one line: {"ok":true,"method":..,"strategy":..,"connect_ms":..,"echo_ms":..,"node_id":..,"remote":..}
//!            or {"ok":false,"error":KIND,"message":..,"connect_ms":..,"node_id":..}
//! macula-connect stream TARGET_HEX --rendezvous IP:PORT --rendezvous-id HEX [--nat SPEC]
//!                [--count N] [--interval-ms MS] [--gap-ms MS]
//!     connects, sends N (10000) sequenced messages one every MS (1) ms to
//!     the listener, which echoes them, and checks each comes back once and
//!     in order: {"event":"connected",...} then one line
//!     {"ok":..,"sent":..,"echoed":..,"out_of_order":..,"max_gap_ms":..,"ms":..,"remote":..,"method":..}
//!     and, while it runs, a line per change of the path's quality
//!     (`macula_nat_proto::quality`): {"event":"path","degraded":"silent"|"lossy"|false,"t_ns":..}
//!     and per change of its method (failover to a relay and back):
//!     {"event":"method","method":"direct"|"punched"|"relayed","t_ns":..}
//!     and after a gap of 500 ms (`--gap-ms`) or more between two echoes:
//!     {"event":"gap","ms":..,"t_ns":..}
//! macula-connect agent --rendezvous IP:PORT --rendezvous-id HEX [--nat SPEC] [--bind IP:PORT]
//!                [--timeout-ms N] [--no-direct] [--allow-relay]
//!     a long-running node for benchmarks, driven by lines on stdin:
//!     fresh                 close the current node, open one on a new socket
//!                           (fresh NAT mappings) and join the rendezvous
//!         {"event":"joined","node_id":HEX,"observed":"IP:PORT"} | {"event":"join_failed","error":KIND,"message":..}
//!     connect HEX TRY       connect to HEX, then send the message "TRY"
//!         {"event":"connected","try":TRY,"t0_ns":..,"method":..,"strategy":..,"connect_ms":..}
//!         | {"event":"failed","try":TRY,"t0_ns":..,"error":KIND,"message":..,"connect_ms":..}
//!     and, for the first message of every accepted connection:
//!         {"event":"message","try":TRY,"t_ns":..,"peer":HEX}
//!     t0_ns (before the connect call) and t_ns (message received) are
//!     CLOCK_MONOTONIC, which every network namespace of the host shares, so
//!     t_ns of B minus t0_ns of A is A's time to first message at B.
//! ```
//!
//! `--no-primer` (listen, connect, agent): send no TTL-limited primers
//! before punching (see `macula_nat_core::punch::primer`; for comparisons).
//!
//! `--relay IP:PORT --relay-id HEX` (listen, connect, agent): hold a
//! reservation at that relay (waited for, up to 5 s, before "joined" / the
//! connect), so peers that cannot punch can reach this node relayed; with
//! `--allow-relay` this node's connects fall back to a relay too.
//!
//! `--bind6 IP:PORT` (rendezvous, listen, connect, stream): a second
//! socket for IPv6, a dual-stack node (`Node::open_dual`); the rendezvous'
//! "ready" line then has "addr6". `--bind [::]:0` alone is an IPv6-only
//! node.
//!
//! SPEC is this node's NAT type as `none` (public host) or
//! `MAPPING-FILTERING-ALLOCATION[:delta=N]` with each in ei|hd|pd / pp|pc|rd,
//! e.g. `ei-pd-pp` or `pd-pd-pc:delta=2` (no detection is run).

use macula_nat_core::connect::{profile_of, public_profile};
use macula_nat_core::{connect_detailed, runtime, ConnectOpts, Identity, Node, NodeConfig, Rendezvous, Signal, SignalConfig};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::record::PeerInfo;
use macula_nat_core::relay::{RelayLimits, RelayServer};
use macula_nat_core::{Connection, NodeId};
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::process::exit;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!("usage: macula-connect rendezvous|listen|agent|connect TARGET_HEX [--rendezvous IP:PORT --rendezvous-id HEX] [--nat SPEC] [--bind IP:PORT] [--timeout-ms N] [--no-direct] [--allow-relay] [--relay IP:PORT --relay-id HEX] [--serve-relay] [--no-primer] [--bind6 IP:PORT]");
    exit(2)
}



fn parse_nat(s: &str) -> Option<PeerInfo> {
    if s == "none" {
        return Some(public_profile());
    }
    let (t, delta) = match s.split_once(":delta=") {
        Some((t, d)) => (t, Some(d.parse().ok()?)),
        None => (s, None),
    };
    let mut it = t.split('-');
    let m = match it.next()? {
        "ei" => Mapping::Ei,
        "hd" => Mapping::Hd,
        "pd" => Mapping::Pd,
        _ => return None,
    };
    let f = match it.next()? {
        "ei" => Filtering::Ei,
        "hd" => Filtering::Hd,
        "pd" => Filtering::Pd,
        _ => return None,
    };
    let a = match it.next()? {
        "pp" => Allocation::Pp,
        "pc" => Allocation::Pc,
        "rd" => Allocation::Rd,
        _ => return None,
    };
    Some(profile_of(NatType { mapping: m, filtering: f, allocation: a }, delta, false))
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// CLOCK_MONOTONIC in ns: comparable between processes on one host, unlike
/// `Instant`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One joined node of the agent; dropping it leaves the rendezvous and
/// releases the socket.
struct Joined {
    node: Arc<Node>,
    signal: Arc<Signal>,
    /// Connections kept open until the next `fresh`, so nothing in flight is
    /// cut off.
    conns: Arc<Mutex<Vec<Connection>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.signal.close();
        self.node.close();
    }
}

/// A relay to reserve at: (node id, address).
type RelayAt = Option<(NodeId, SocketAddr)>;

/// Asks for a reservation at `relay` and waits (bounded) until it holds.
async fn reserve(signal: &Signal, relay: RelayAt) -> usize {
    let Some((id, addr)) = relay else { return 0 };
    signal.set_relays(vec![(id, addr)]);
    let until = Instant::now() + Duration::from_secs(5);
    while signal.reserved_relays().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal.reserved_relays().len()
}

async fn agent_join(bind: SocketAddr, rdv: SocketAddr, rdv_id: NodeId, nat: &PeerInfo, relay: RelayAt) -> Option<Joined> {
    let node = match Node::open(NodeConfig { bind }, Identity::generate()) {
        Ok(n) => n,
        Err(e) => {
            println!("{{\"event\":\"join_failed\",\"error\":\"open\",\"message\":{}}}", json_str(&e.to_string()));
            return None;
        }
    };
    let signal = match Signal::join_with(node.clone(), rdv, rdv_id, signal_config(nat.clone())).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            println!("{{\"event\":\"join_failed\",\"error\":\"{}\",\"message\":{}}}", e.kind(), json_str(&e.to_string()));
            node.close();
            return None;
        }
    };
    let conns = Arc::new(Mutex::new(Vec::new()));
    let (sig, held) = (signal.clone(), conns.clone());
    let acceptor = runtime::spawn(async move {
        while let Some(c) = sig.accept().await {
            let held = held.clone();
            runtime::spawn(async move {
                match c.recv().await {
                    Some(m) => {
                        let t = monotonic_ns();
                        let body = String::from_utf8_lossy(&m).into_owned();
                        println!("{{\"event\":\"message\",\"try\":{},\"t_ns\":{t},\"peer\":\"{}\"}}", json_str(&body), c.peer_id().to_hex());
                    }
                    // Says why an accepted connection never brought its
                    // message (the benchmark counts it as no_message).
                    None => eprintln!("accepted connection from {} ended before a message: {:?} ({})", c.peer_id().to_hex(), c.close_reason(), c.stats_line()),
                }
                if let Ok(mut h) = held.lock() {
                    h.push(c);
                }
            });
        }
    });
    let relays = reserve(&signal, relay).await;
    let observed = signal.observed_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("{{\"event\":\"joined\",\"node_id\":\"{}\",\"observed\":\"{observed}\",\"relays\":{relays}}}", node.node_id().to_hex());
    Some(Joined { node, signal, conns, acceptor })
}

async fn agent_connect(signal: Arc<Signal>, conns: Arc<Mutex<Vec<Connection>>>, target: NodeId, tag: String, opts: ConnectOpts) {
    let t0 = monotonic_ns();
    let started = Instant::now();
    let r = connect_detailed(&signal, target, opts).await;
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    match r {
        Ok(c) => {
            let sent = c.conn.send(tag.clone().into_bytes()).await;
            println!(
                "{{\"event\":\"connected\",\"try\":{},\"t0_ns\":{t0},\"method\":\"{}\",\"strategy\":\"{}\",\"connect_ms\":{connect_ms:.1},\"sent\":{}}}",
                json_str(&tag),
                c.method.name(),
                c.strategy.name(),
                sent.is_ok()
            );
            if let Ok(mut h) = conns.lock() {
                h.push(c.conn);
            }
        }
        Err(e) => println!(
            "{{\"event\":\"failed\",\"try\":{},\"t0_ns\":{t0},\"error\":\"{}\",\"message\":{},\"connect_ms\":{connect_ms:.1}}}",
            json_str(&tag),
            e.kind(),
            json_str(&e.to_string())
        ),
    }
}

/// The `agent` mode: commands from stdin (see the module docs).
async fn agent(bind: SocketAddr, rdv: SocketAddr, rdv_id: NodeId, nat: PeerInfo, relay: RelayAt, opts: ConnectOpts) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // Blocking stdin on its own thread: the runtime has only two workers.
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut current: Option<Joined> = None;
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["fresh"] => {
                // Leave before joining again: one node per agent at a time.
                drop(current.take());
                current = agent_join(bind, rdv, rdv_id, &nat, relay).await;
            }
            ["connect", target, tag] => match (NodeId::from_hex(target), &current) {
                (Some(t), Some(j)) => {
                    runtime::spawn(agent_connect(j.signal.clone(), j.conns.clone(), t, tag.to_string(), opts.clone()));
                }
                _ => println!("{{\"event\":\"failed\",\"try\":{},\"t0_ns\":0,\"error\":\"bad_command\",\"message\":{},\"connect_ms\":0}}", json_str(tag), json_str(&line)),
            },
            ["quit"] => break,
            _ => eprintln!("macula-connect agent: unknown command {line:?}"),
        }
    }
    drop(current);
}

/// `stream`: sends `count` sequenced messages, one every `pace`, to the
/// listener (which echoes them) and checks every echo arrives once and in
/// order; prints the outcome. Exit code 0 when all came back in order.
async fn run_stream(conn: Connection, count: u64, pace: Duration, gap_report: Duration) -> i32 {
    let t0 = Instant::now();
    conn.monitor_quality();
    let mut quality = conn.watch_quality();
    let mut methods = conn.watch_method();
    let method_watcher = runtime::spawn(async move {
        while methods.changed().await.is_ok() {
            let m = *methods.borrow_and_update();
            println!("{{\"event\":\"method\",\"method\":\"{}\",\"t_ns\":{}}}", m.name(), monotonic_ns());
        }
    });
    let watcher = runtime::spawn(async move {
        while quality.changed().await.is_ok() {
            let d = match *quality.borrow_and_update() {
                None => "false".to_string(),
                Some(macula_nat_proto::quality::Degraded::Silent { .. }) => "\"silent\"".into(),
                Some(macula_nat_proto::quality::Degraded::Lossy { .. }) => "\"lossy\"".into(),
            };
            println!("{{\"event\":\"path\",\"degraded\":{d},\"t_ns\":{}}}", monotonic_ns());
        }
    });
    let sender = {
        let conn = conn.clone();
        runtime::spawn(async move {
            let mut tick = tokio::time::interval(pace.max(Duration::from_micros(100)));
            for seq in 0..count {
                tick.tick().await;
                if conn.send(seq.to_be_bytes().to_vec()).await.is_err() {
                    return seq;
                }
            }
            count
        })
    };
    let (mut next, mut disorder, mut max_gap) = (0u64, 0u64, Duration::ZERO);
    let mut last = Instant::now();
    let deadline = t0 + pace * count as u32 + Duration::from_secs(30);
    while next < count {
        let got = tokio::time::timeout_at(deadline.into(), conn.recv()).await;
        let Ok(Some(m)) = got else { break };
        let seq = m.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        if seq != Some(next) {
            disorder += 1;
        }
        next = seq.map_or(next + 1, |s| s + 1);
        let gap = last.elapsed();
        max_gap = max_gap.max(gap);
        if gap >= gap_report {
            println!("{{\"event\":\"gap\",\"ms\":{:.1},\"t_ns\":{}}}", gap.as_secs_f64() * 1000.0, monotonic_ns());
        }
        last = Instant::now();
    }
    let sent = sender.await.unwrap_or(0);
    watcher.abort();
    method_watcher.abort();
    let ok = sent == count && next == count && disorder == 0;
    println!(
        "{{\"ok\":{ok},\"sent\":{sent},\"echoed\":{next},\"out_of_order\":{disorder},\"max_gap_ms\":{:.1},\"ms\":{:.1},\"remote\":\"{}\",\"method\":\"{}\"}}",
        max_gap.as_secs_f64() * 1000.0,
        t0.elapsed().as_secs_f64() * 1000.0,
        conn.remote_address(),
        conn.method().name()
    );
    if ok {
        0
    } else {
        4
    }
}

/// Prints each change of our public address the rendezvous reports
/// (`macula_nat_core::netchange`): `{"event":"netchange","old":..,"new":..,"t_ns":..}`.
fn print_netchanges(node: &std::sync::Arc<Node>) {
    let mut rx = node.reflexive().subscribe();
    runtime::spawn(async move {
        while rx.changed().await.is_ok() {
            let c = *rx.borrow_and_update();
            if let Some(c) = c {
                println!("{{\"event\":\"netchange\",\"old\":\"{}\",\"new\":\"{}\",\"t_ns\":{}}}", c.old, c.new, monotonic_ns());
            }
        }
    });
}

/// `--no-primer`: no TTL-limited primers (to measure what they are worth).
static NO_PRIMER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn signal_config(nat: PeerInfo) -> SignalConfig {
    let mut cfg = SignalConfig::new(nat);
    cfg.primers = !NO_PRIMER.load(std::sync::atomic::Ordering::Relaxed);
    cfg
}

fn main() {
    macula_nat_core::stderr_trace::init_from_env();
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let mut target = None;
    if mode == "connect" || mode == "stream" {
        target = Some(NodeId::from_hex(&args.next().unwrap_or_else(|| usage())).unwrap_or_else(|| usage()));
    }
    let mut bind: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let mut bind6: Option<SocketAddr> = None;
    let mut rdv: Option<SocketAddr> = None;
    let mut rdv_id = None;
    let mut nat = public_profile();
    let mut opts = ConnectOpts::default();
    let (mut relay_addr, mut relay_id, mut serve_relay) = (None, None, false);
    // stream: (messages, pacing in ms, gaps reported from, in ms)
    let mut stream: (u64, u64, u64) = (10_000, 1, 500);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-direct" => opts.prefer_direct = false,
            "--allow-relay" => opts.allow_relay = true,
            "--serve-relay" => serve_relay = true,
            "--no-primer" => NO_PRIMER.store(true, std::sync::atomic::Ordering::Relaxed),
            _ => {
                let v = args.next().unwrap_or_else(|| usage());
                match a.as_str() {
                    "--bind" => bind = v.parse().unwrap_or_else(|_| usage()),
                    "--bind6" => bind6 = Some(v.parse().unwrap_or_else(|_| usage())),
                    "--rendezvous" => rdv = Some(v.parse().unwrap_or_else(|_| usage())),
                    "--rendezvous-id" => rdv_id = Some(NodeId::from_hex(&v).unwrap_or_else(|| usage())),
                    "--nat" => nat = parse_nat(&v).unwrap_or_else(|| usage()),
                    "--timeout-ms" => opts.timeout = Duration::from_millis(v.parse().unwrap_or_else(|_| usage())),
                    "--relay" => relay_addr = Some(v.parse().unwrap_or_else(|_| usage())),
                    "--relay-id" => relay_id = Some(NodeId::from_hex(&v).unwrap_or_else(|| usage())),
                    "--count" => stream.0 = v.parse().unwrap_or_else(|_| usage()),
                    "--interval-ms" => stream.1 = v.parse().unwrap_or_else(|_| usage()),
                    "--gap-ms" => stream.2 = v.parse().unwrap_or_else(|_| usage()),
                    _ => usage(),
                }
            }
        }
    }
    let relay: RelayAt = match (relay_id, relay_addr) {
        (Some(id), Some(addr)) => Some((id, addr)),
        (None, None) => None,
        _ => usage(),
    };
    if mode == "agent" {
        let (Some(rdv), Some(rdv_id)) = (rdv, rdv_id) else { usage() };
        runtime::handle().block_on(agent(bind, rdv, rdv_id, nat, relay, opts));
        return;
    }
    let node = Node::open_dual(NodeConfig { bind }, bind6, Identity::generate()).unwrap_or_else(|e| {
        eprintln!("macula-connect: {e}");
        exit(1)
    });
    let id = node.node_id().to_hex();
    runtime::handle().block_on(async move {
        if mode == "rendezvous" {
            let _r = Rendezvous::serve(node.clone()).unwrap_or_else(|e| {
                eprintln!("macula-connect: {e}");
                exit(1)
            });
            // Session events are not reported: kept unread (the channel is
            // bounded, later ones are dropped and counted).
            let (events, _unread) = tokio::sync::mpsc::channel(macula_nat_core::relay::EVENT_QUEUE);
            let _relay = serve_relay.then(|| {
                RelayServer::start(&node, RelayLimits::default(), events).unwrap_or_else(|e| {
                    eprintln!("macula-connect: relay: {e}");
                    exit(1)
                })
            });
            let addr6 = node.local_addr6().ok().flatten().map_or("null".to_string(), |a| format!("\"{a}\""));
            println!("{{\"event\":\"ready\",\"node_id\":\"{id}\",\"addr\":\"{}\",\"addr6\":{addr6}}}", node.local_addr().unwrap());
            std::future::pending::<()>().await;
        }
        let (Some(rdv), Some(rdv_id)) = (rdv, rdv_id) else { usage() };
        let signal = match Signal::join_with(node.clone(), rdv, rdv_id, signal_config(nat)).await {
            Ok(s) => s,
            Err(e) => {
                println!("{{\"ok\":false,\"event\":\"join\",\"error\":\"{}\",\"message\":{},\"node_id\":\"{id}\"}}", e.kind(), json_str(&e.to_string()));
                exit(3)
            }
        };
        reserve(&signal, relay).await;
        print_netchanges(&node);
        let observed = signal.observed_addr().map(|a| a.to_string()).unwrap_or_default();
        match (mode.as_str(), target) {
            ("listen", _) => {
                let ttl = node.primer_ttl().map_or("null".to_string(), |t| t.to_string());
                println!("{{\"event\":\"joined\",\"node_id\":\"{id}\",\"observed\":\"{observed}\",\"primer_ttl\":{ttl}}}");
                while let Some(c) = signal.accept().await {
                    println!("{{\"event\":\"accepted\",\"peer\":\"{}\",\"remote\":\"{}\"}}", c.peer_id().to_hex(), c.remote_address());
                    runtime::spawn(async move {
                        while let Some(m) = c.recv().await {
                            if c.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
            ("stream", Some(target)) => {
                let t = Instant::now();
                let c = match connect_detailed(&signal, target, opts).await {
                    Ok(c) => c,
                    Err(e) => {
                        println!("{{\"ok\":false,\"error\":\"{}\",\"message\":{}}}", e.kind(), json_str(&e.to_string()));
                        exit(2)
                    }
                };
                println!(
                    "{{\"event\":\"connected\",\"method\":\"{}\",\"connect_ms\":{:.1},\"remote\":\"{}\"}}",
                    c.method.name(),
                    t.elapsed().as_secs_f64() * 1000.0,
                    c.conn.remote_address()
                );
                exit(run_stream(c.conn, stream.0, Duration::from_millis(stream.1), Duration::from_millis(stream.2)).await)
            }
            ("connect", Some(target)) => {
                let t = Instant::now();
                match connect_detailed(&signal, target, opts).await {
                    Ok(c) => {
                        let connect_ms = t.elapsed().as_secs_f64() * 1000.0;
                        let t2 = Instant::now();
                        let msg = format!("hello from {id}").into_bytes();
                        let echoed = async {
                            c.conn.send(msg.clone()).await.ok()?;
                            c.conn.recv().await
                        };
                        let echo = tokio::time::timeout(Duration::from_secs(5), echoed).await.ok().flatten();
                        let ok = echo.as_deref() == Some(&msg[..]);
                        println!(
                            "{{\"ok\":{ok},\"method\":\"{}\",\"strategy\":\"{}\",\"connect_ms\":{connect_ms:.1},\"echo_ms\":{:.1},\"node_id\":\"{id}\",\"observed\":\"{observed}\",\"remote\":\"{}\"}}",
                            c.method.name(),
                            c.strategy.name(),
                            t2.elapsed().as_secs_f64() * 1000.0,
                            c.conn.remote_address()
                        );
                        let _ = c.conn.finish().await;
                        exit(if ok { 0 } else { 4 })
                    }
                    Err(e) => {
                        println!(
                            "{{\"ok\":false,\"error\":\"{}\",\"message\":{},\"connect_ms\":{:.1},\"node_id\":\"{id}\",\"observed\":\"{observed}\"}}",
                            e.kind(),
                            json_str(&e.to_string()),
                            t.elapsed().as_secs_f64() * 1000.0
                        );
                        exit(5)
                    }
                }
            }
            _ => usage(),
        }
    });
}
