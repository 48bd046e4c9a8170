//! Relays across real NATs. Each test builds its own lab: a public host
//! with the rendezvous, one or two relay hosts each running a
//! `macula-relay` process (so it can be SIGKILLed and its events read), and
//! two sites behind kernel NATs whose nodes run in this process (their
//! sockets are opened inside the site namespaces, so every packet crosses
//! the NAT routers). B reserves at the relays; A connects to B.
//!
//! Covered: symmetric (random-allocating) NATs on both sides talk through a
//! relay, and the relay's session events carry the bytes the peers sent;
//! no reservation means unreachable; `max_sessions` refuses clearly; the
//! bandwidth limit holds within 5 % over 10 s; SIGKILL of the relay moves
//! the connection to the second relay with nothing lost; a relayed pair
//! whose direct path opens up moves to it with 10,000 sequenced messages
//! arriving once and in order.

mod common;
use macula_nat_core::connect::profile_of;
use macula_nat_core::relay::{self, RelayError, RelayLink};
use macula_nat_core::{connect_detailed, runtime, Connection, ConnectOpts, Identity, Method, Node, NodeConfig, NodeId, Rendezvous, Signal, SignalConfig};
use macula_nat_lab::{Lab, LabSpec, SiteSpec};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::record::PeerInfo;
use macula_nat_proto::relay::msg::Refusal;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const RELAY_PORT: u16 = 4500;

/// The tests share two cores with everything else on the machine: one lab
/// at a time keeps the bandwidth figure about the relay, not the scheduler.
static SERIAL: Mutex<()> = Mutex::new(());

fn ready() -> bool {
    common::ready(env!("CARGO_BIN_EXE_macula-relay"))
}

fn symmetric() -> PeerInfo {
    profile_of(NatType { mapping: Mapping::Pd, filtering: Filtering::Pd, allocation: Allocation::Rd }, None, false)
}

fn port_restricted() -> PeerInfo {
    profile_of(NatType { mapping: Mapping::Ei, filtering: Filtering::Pd, allocation: Allocation::Pp }, None, false)
}

use common::field;

fn num(line: &str, key: &str) -> u64 {
    field(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number {key} in {line}"))
}


fn unhex(s: &str) -> NodeId {
    NodeId::from_hex(s).expect("hex node id")
}

/// A `macula-relay` process on a relay host, and its event lines.
struct RelayProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    id: NodeId,
    addr: SocketAddr,
}

impl RelayProc {
    fn start(lab: &Lab, host: &str, extra: &[&str]) -> RelayProc {
        let addr = SocketAddr::new(IpAddr::V4(lab.host_addr(host).unwrap()), RELAY_PORT);
        let bind = addr.to_string();
        let mut argv = vec![env!("CARGO_BIN_EXE_macula-relay"), "--bind", &bind];
        argv.extend_from_slice(extra);
        let mut child = lab.spawn(host, &argv).expect("spawn macula-relay");
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        // Never let a full stderr pipe stall the relay.
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("macula-relay: {l}");
            }
        });
        let mut r = RelayProc { child, lines, id: NodeId::default(), addr };
        let line = r.next("ready", Duration::from_secs(10));
        r.id = unhex(&field(&line, "node_id").unwrap());
        r
    }

    fn contact(&self) -> (NodeId, SocketAddr) {
        (self.id, self.addr)
    }

    /// The next line of `event`, skipping others.
    fn next(&mut self, event: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if field(&l, "event").as_deref() == Some(event) => return l,
                Ok(_) => continue,
                Err(e) => panic!("relay at {}: no {event} event within {within:?} ({e})", self.addr),
            }
        }
    }

    /// For async tests: blocks only the test's own thread (the one in
    /// `block_on`), never the runtime's workers, which carry the traffic.
    async fn next_async(&mut self, event: &str, within: Duration) -> String {
        self.next(event, within)
    }

    /// SIGKILL: no goodbye to anyone, as when the relay's machine dies.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node whose socket lives in `host`'s namespace.
fn node_in(lab: &Lab, host: &str) -> Arc<Node> {
    let ns = lab.netns(host).unwrap();
    macula_nat_lab::netns::in_ns(&ns, || Ok(Node::open(NodeConfig::default(), Identity::generate())?)).expect("node in the lab")
}

/// Fields drop in order: nodes first (their sockets pin the namespaces),
/// then the relay processes, then the lab.
struct World {
    a: Signal,
    b: Signal,
    rdv: Rendezvous,
    relays: Vec<RelayProc>,
    lab: Lab,
}

impl Drop for World {
    fn drop(&mut self) {
        for s in [&self.a, &self.b] {
            s.close();
            s.node().close();
        }
        self.rdv.stop();
        self.rdv.node().close();
    }
}

/// A lab `name` with sites `a` and `b` behind the kernel NATs given, a
/// rendezvous and one relay per entry of `relays` (its extra arguments).
/// With `reserve`, B reserves at every relay.
async fn world(name: &str, na: (&str, PeerInfo), nb: (&str, PeerInfo), relays: &[&[&str]], reserve: bool) -> World {
    let mut spec = LabSpec::new(name);
    spec.public.push("rdv".into());
    for i in 0..relays.len() {
        spec.relays.push(format!("r{}", i + 1));
    }
    spec.sites.push(SiteSpec::new("a", na.0).unwrap());
    spec.sites.push(SiteSpec::new("b", nb.0).unwrap());
    let lab = Lab::up(spec).expect("lab up");
    let relays: Vec<RelayProc> = relays.iter().enumerate().map(|(i, extra)| RelayProc::start(&lab, &format!("r{}", i + 1), extra)).collect();
    let rn = node_in(&lab, "rdv");
    let rdv = Rendezvous::serve(rn.clone()).unwrap();
    let rdv_addr = SocketAddr::new(IpAddr::V4(lab.host_addr("rdv").unwrap()), rn.local_addr().unwrap().port());
    let a = Signal::join_with(node_in(&lab, "a"), rdv_addr, rn.node_id(), SignalConfig::new(na.1)).await.expect("A joins");
    let b = Signal::join_with(node_in(&lab, "b"), rdv_addr, rn.node_id(), SignalConfig::new(nb.1)).await.expect("B joins");
    // The rendezvous saw each node at its NAT's public IP: traffic crosses the NATs.
    for (s, site) in [(&a, "a"), (&b, "b")] {
        let seen = s.observed_addr().expect("observed address");
        assert_eq!(seen.ip(), IpAddr::V4(lab.site(site).unwrap().public_ip), "{site} seen at {seen}");
    }
    if reserve {
        b.set_relays(relays.iter().map(|r| r.contact()).collect());
        wait_until(|| b.reserved_relays().len() == relays.len(), "B reserved at every relay").await;
    }
    World { a, b, rdv, relays, lab }
}

async fn wait_until(f: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect_relayed(w: &World, opts: ConnectOpts) -> (Connection, Connection) {
    let c = tokio::time::timeout(Duration::from_secs(30), connect_detailed(&w.a, w.b.node().node_id(), opts))
        .await
        .expect("connect in time")
        .expect("connect");
    eprintln!("connected: strategy {} method {} in {:?}", c.strategy.name(), c.method.name(), c.elapsed);
    assert_eq!(c.method, Method::Relayed);
    assert_eq!(c.conn.method(), Method::Relayed);
    assert!(relay::is_virtual(&c.conn.remote_address()));
    let on_b = tokio::time::timeout(Duration::from_secs(10), w.b.accept()).await.expect("B accepts in time").expect("B accepts");
    assert_eq!(on_b.peer_id(), w.a.node().node_id());
    assert_eq!(on_b.method(), Method::Relayed);
    (c.conn, on_b)
}

fn relay_opts() -> ConnectOpts {
    ConnectOpts { allow_relay: true, timeout: Duration::from_secs(20), ..ConnectOpts::default() }
}

fn sym() -> (&'static str, PeerInfo) {
    ("kernel:symmetric", symmetric())
}

#[test]
fn symmetric_nats_talk_through_a_relay_whose_events_count_their_bytes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    runtime::handle().block_on(async {
        let mut w = world("rlbytes", sym(), sym(), &[&[]], true).await;
        let (on_a, on_b) = connect_relayed(&w, relay_opts()).await;
        let (a_id, b_id) = (w.a.node().node_id().to_hex(), w.b.node().node_id().to_hex());
        let started = w.relays[0].next_async("started", Duration::from_secs(10)).await;
        assert_eq!((field(&started, "a").unwrap(), field(&started, "b").unwrap()), (a_id.clone(), b_id.clone()), "{started}");
        let session = num(&started, "session");
        let (to_b, to_a) = (vec![7u8; 50_000], vec![9u8; 20_000]);
        for _ in 0..20 {
            on_a.send(to_b.clone()).await.unwrap();
            assert_eq!(on_b.recv().await.unwrap(), to_b);
            on_b.send(to_a.clone()).await.unwrap();
            assert_eq!(on_a.recv().await.unwrap(), to_a);
        }
        let app = 20 * (to_b.len() + to_a.len()) as u64;
        let sent = w.a.node().relayed_bytes_out() + w.b.node().relayed_bytes_out();
        on_a.close("done");
        let ended = w.relays[0].next_async("ended", Duration::from_secs(10)).await;
        eprintln!("relay: {ended}; peers put {sent} bytes into the session before the close, the application {app}");
        assert_eq!(num(&ended, "session"), session);
        assert_eq!((field(&ended, "a").unwrap(), field(&ended, "b").unwrap()), (a_id, b_id));
        let bytes = num(&ended, "bytes");
        assert!(bytes >= app, "relay counted {bytes} < the application's {app}");
        // What the peers put into the session is what the relay counted;
        // the close packets (after `sent` was read) are the only difference.
        let total = w.a.node().relayed_bytes_out() + w.b.node().relayed_bytes_out();
        assert!(bytes <= total, "relay counted {bytes} > the {total} the peers sent");
        assert!(bytes + 4 * 1500 >= sent, "relay counted {bytes}, peers sent {sent}");
        // Both NATs carried it: each site's router forwarded at least what
        // its node sent into the session out, and what the other sent in
        // (bytes: with GSO a counted packet may hold many datagrams).
        let (a_out, b_out) = (w.a.node().relayed_bytes_out(), w.b.node().relayed_bytes_out());
        for (site, out, inb) in [("a", a_out, b_out), ("b", b_out, a_out)] {
            let st = w.lab.router_stats(site).unwrap();
            let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
            assert!(c("out_pkts_bytes") >= out && c("in_pkts_bytes") >= inb, "{site}'s NAT: {st:?}, sent {out}, received {inb}");
        }
    });
}

#[test]
fn a_node_without_a_reservation_cannot_be_reached() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    runtime::handle().block_on(async {
        let w = world("rlnores", sym(), sym(), &[&[]], false).await;
        let (id, addr) = w.relays[0].contact();
        // B is connected to the relay but holds no reservation.
        let link_b = RelayLink::connect(w.b.node(), addr, id).await.unwrap();
        let link_a = RelayLink::connect(w.a.node(), addr, id).await.unwrap();
        let e = link_a.open(w.b.node().node_id(), relay::virtual_addr()).await.unwrap_err();
        assert!(matches!(e, RelayError::Refused(Refusal::NoReservation)), "{e}");
        assert_eq!(e.kind(), "no_reservation");
        // The connector finds no relay for B (it advertises none).
        let e = connect_detailed(&w.a, w.b.node().node_id(), relay_opts()).await.unwrap_err();
        assert_eq!(e.kind(), "no_relay", "{e}");
        let only = ConnectOpts { relay_only: true, ..relay_opts() };
        let e = connect_detailed(&w.a, w.b.node().node_id(), only).await.unwrap_err();
        assert_eq!(e.kind(), "no_relay", "{e}");
        // Once B reserves, the same open goes through.
        link_b.reserve().await.unwrap();
        link_a.open(w.b.node().node_id(), relay::virtual_addr()).await.expect("open after the reservation");
    });
}

#[test]
fn max_sessions_refuses_the_next_session_clearly() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    runtime::handle().block_on(async {
        let mut w = world("rlmax", sym(), sym(), &[&["--max-sessions", "1"]], true).await;
        let (on_a, on_b) = connect_relayed(&w, relay_opts()).await;
        w.relays[0].next_async("started", Duration::from_secs(10)).await;
        let only = ConnectOpts { relay_only: true, ..relay_opts() };
        let e = connect_detailed(&w.a, w.b.node().node_id(), only).await.unwrap_err();
        assert_eq!(e.kind(), "max_sessions", "{e}");
        assert!(e.to_string().contains("max_sessions"), "{e}");
        // A plain connect just finds no relay available.
        let e = connect_detailed(&w.a, w.b.node().node_id(), relay_opts()).await.unwrap_err();
        assert_eq!(e.kind(), "no_relay", "{e}");
        // The first session is unharmed.
        on_a.send(b"still here".to_vec()).await.unwrap();
        assert_eq!(on_b.recv().await.unwrap(), b"still here");
    });
}

/// 2 MB/s per session through the NATs; a sender that wants more for 10 s
/// gets the limit within 5 %, measured as what the relay forwarded.
#[test]
fn the_bandwidth_limit_holds_within_five_percent_over_ten_seconds() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let limit = 2_000_000u64;
    runtime::handle().block_on(async {
        let bw = limit.to_string();
        let mut w = world("rlbw", sym(), sym(), &[&["--bandwidth", &bw, "--stats-ms", "250"]], true).await;
        let (on_a, on_b) = connect_relayed(&w, relay_opts()).await;
        let sender = runtime::spawn(async move {
            let m = vec![1u8; 64 * 1024];
            while on_a.send(m.clone()).await.is_ok() {}
        });
        let reader = runtime::spawn(async move { while on_b.recv().await.is_some() {} });
        // 2 s for the flow to settle, then 10 s measured by the relay's clock.
        let first = num(&w.relays[0].next_async("stats", Duration::from_secs(5)).await, "t_ms");
        let mut s0 = w.relays[0].next_async("stats", Duration::from_secs(5)).await;
        while num(&s0, "t_ms") < first + 2000 {
            s0 = w.relays[0].next_async("stats", Duration::from_secs(5)).await;
        }
        let mut s1 = s0.clone();
        while num(&s1, "t_ms") < num(&s0, "t_ms") + 10_000 {
            s1 = w.relays[0].next_async("stats", Duration::from_secs(5)).await;
        }
        let secs = (num(&s1, "t_ms") - num(&s0, "t_ms")) as f64 / 1000.0;
        let rate = (num(&s1, "bytes") - num(&s0, "bytes")) as f64 / secs;
        eprintln!(
            "relayed {rate:.0} B/s over {secs:.2} s with a limit of {limit} B/s ({:+.2} %); dropped over the limit: {}",
            (rate / limit as f64 - 1.0) * 100.0,
            num(&s1, "dropped_over_limit")
        );
        assert!((rate - limit as f64).abs() <= 0.05 * limit as f64, "rate {rate:.0} B/s vs limit {limit}");
        sender.abort();
        reader.abort();
    });
}

/// `n` numbered messages from `from` to `to`, a pause of `pace` every 10th.
/// At 90 % the sender waits for `switched` (set by the test when the path
/// changed), so messages are always sent before and after the switch. The
/// receiver checks that each arrives once and in order.
struct Stream {
    sent: Arc<AtomicU32>,
    switched: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn sequenced(from: Connection, to: Connection, n: u32, pace: Duration) -> Stream {
    let sent = Arc::new(AtomicU32::new(0));
    let switched = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sent, switched) = (sent.clone(), switched.clone());
        runtime::spawn(async move {
            for i in 0..n {
                if i == n / 10 * 9 {
                    let t = Instant::now();
                    while !switched.load(Ordering::Acquire) {
                        assert!(t.elapsed() < Duration::from_secs(90), "no switch while holding the last 10 %");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                from.send(i.to_be_bytes().to_vec()).await.expect("send");
                sent.store(i + 1, Ordering::Release);
                if i % 10 == 0 {
                    tokio::time::sleep(pace).await;
                }
            }
            from
        })
    };
    let task = runtime::spawn(async move {
        for i in 0..n {
            let m = tokio::time::timeout(Duration::from_secs(30), to.recv()).await.expect("message in time").expect("connection open");
            assert_eq!(m, i.to_be_bytes().to_vec(), "message {i} out of order or lost");
        }
        assert!(tokio::time::timeout(Duration::from_millis(300), to.recv()).await.is_err(), "a message arrived twice");
        sender.await.expect("sender");
    });
    Stream { sent, switched, task }
}

#[test]
fn killing_the_relay_process_moves_the_connection_to_the_second_relay_without_loss() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    runtime::handle().block_on(async {
        let mut w = world("rlkill", sym(), sym(), &[&[], &[]], true).await;
        let (on_a, on_b) = connect_relayed(&w, relay_opts()).await;
        w.relays[0].next_async("started", Duration::from_secs(10)).await;
        let n = 5000;
        let s = sequenced(on_a.clone(), on_b.clone(), n, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_secs(1)).await;
        w.relays[0].kill();
        let killed_at = (Instant::now(), s.sent.load(Ordering::Acquire));
        let started = w.relays[1].next_async("started", Duration::from_secs(30)).await;
        s.switched.store(true, Ordering::Release);
        assert_eq!(field(&started, "a").unwrap(), w.a.node().node_id().to_hex(), "{started}");
        eprintln!(
            "relay 1 killed after message {}; relay 2 carries the connection {:?} later, after message {}",
            killed_at.1,
            killed_at.0.elapsed(),
            s.sent.load(Ordering::Acquire)
        );
        tokio::time::timeout(Duration::from_secs(120), s.task).await.expect("stream done in time").expect("stream intact");
        assert_eq!(on_a.method(), Method::Relayed);
        assert!(on_a.close_reason().is_none() && on_b.close_reason().is_none());
        on_b.send(b"after".to_vec()).await.unwrap();
        assert_eq!(on_a.recv().await.unwrap(), b"after");
    });
}

/// Drops, in `site`'s router, all traffic to and from `peer_ip` (the
/// other site's public IP) before conntrack sees it; nothing else.
fn block(lab: &Lab, site: &str, peer_ip: IpAddr) {
    let router = lab.site(site).unwrap().router.clone().unwrap();
    let ip = peer_ip.to_string();
    let cmds: [&[&str]; 5] = [
        &["nft", "add", "table", "ip", "mlblock"],
        &["nft", "add", "counter", "ip", "mlblock", "blocked"],
        &["nft", "add chain ip mlblock pre { type filter hook prerouting priority -300 ; policy accept ; }"],
        &["nft", "add", "rule", "ip", "mlblock", "pre", "ip", "daddr", &ip, "counter", "name", "blocked", "drop"],
        &["nft", "add", "rule", "ip", "mlblock", "pre", "ip", "saddr", &ip, "counter", "name", "blocked", "drop"],
    ];
    for c in cmds {
        let out = lab.exec(&router, c).unwrap();
        assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn unblock(lab: &Lab, site: &str) {
    let router = lab.site(site).unwrap().router.clone().unwrap();
    let out = lab.exec(&router, &["nft", "delete", "table", "ip", "mlblock"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_relayed_pair_that_becomes_punchable_upgrades_without_losing_a_message() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    runtime::handle().block_on(async {
        let prc = || ("kernel:port_restricted_cone", port_restricted());
        let mut w = world("rlupgrade", prc(), prc(), &[&[]], true).await;
        let b_pub = IpAddr::V4(w.lab.site("b").unwrap().public_ip);
        let a_pub = IpAddr::V4(w.lab.site("a").unwrap().public_ip);
        block(&w.lab, "a", b_pub);
        // The punch the table picks for the pair fails, so the connection
        // falls back to the relay.
        let opts = ConnectOpts { upgrade_interval: Some(Duration::from_secs(1)), ..relay_opts() };
        let (on_a, on_b) = connect_relayed(&w, opts).await;
        w.relays[0].next_async("started", Duration::from_secs(10)).await;
        let blocked = w.lab.router_stats("a").unwrap().counters.get("blocked_packets").copied().unwrap_or(0);
        assert!(blocked > 0, "the direct path was tried and blocked");
        let mut watch = on_a.watch_method();
        // 10,000 numbered messages, ~1,000 per second, across the switch.
        let s = sequenced(on_a.clone(), on_b.clone(), 10_000, Duration::from_millis(10));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(on_a.method(), Method::Relayed, "no upgrade while blocked");
        unblock(&w.lab, "a");
        let opened = (Instant::now(), s.sent.load(Ordering::Acquire));
        tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|m| *m == Method::Punched))
            .await
            .expect("punched within 60 s of the path opening")
            .unwrap();
        let at = s.sent.load(Ordering::Acquire);
        s.switched.store(true, Ordering::Release);
        eprintln!(
            "direct path opened after message {} ({blocked} packets blocked before); punched {:?} later, after message {at}",
            opened.1,
            opened.0.elapsed()
        );
        assert!(at > 0 && at < 10_000, "the switch happened while messages were flowing ({at})");
        tokio::time::timeout(Duration::from_secs(120), s.task).await.expect("stream done in time").expect("stream intact");
        wait_until(|| on_b.method() == Method::Punched, "the responder sees the punched path").await;
        // B's QUIC now talks straight to A's NAT.
        assert!(!relay::is_virtual(&on_b.remote_address()));
        assert_eq!(on_b.remote_address().ip(), a_pub);
        // The relay session is closed once the path moved.
        let ended = w.relays[0].next_async("ended", Duration::from_secs(15)).await;
        eprintln!("relay: {ended}");
        on_b.send(b"after".to_vec()).await.unwrap();
        assert_eq!(on_a.recv().await.unwrap(), b"after");
        on_a.send(b"and back".to_vec()).await.unwrap();
        assert_eq!(on_b.recv().await.unwrap(), b"and back");
    });
}
