//! macula-node on loopback: one process runs the RFC 5780 observer
//! (127.0.0.1 and 127.0.0.2), the rendezvous and the relay from a TOML
//! config. A STUN binding against the observer, two nodes joining its
//! rendezvous and connecting (direct, then relay-only through it, then one
//! relay-only connect over its session limit), and its metrics over HTTP
//! counting each of these. The identity key file is created 0600 and
//! gives the same node id after a restart.

use macula_nat_core::connect::public_profile;
use macula_nat_core::{connect_detailed, runtime, ConnectOpts, Identity, Method, Node, NodeConfig, NodeId, Signal, SignalConfig};
use macula_nat_proto::stun::{Class, Message};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Running {
    child: Child,
    node_id: NodeId,
    node: SocketAddr,
    primary: SocketAddr,
    alternate: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unhex(s: &str) -> NodeId {
    NodeId::from_hex(s).expect("hex node id")
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("macula-node-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("macula-node.toml");
    let text = format!(
        r#"log_level = "warn"
identity_key = "{}"

[observer]
primary = "127.0.0.1:0"
alternate = "127.0.0.2:0"

[node]
listen = "127.0.0.1:0"

[relay]
max_sessions = 1
session_timeout_secs = 60

[metrics]
listen = "127.0.0.1:0"
"#,
        dir.join("keys/node.key").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_macula-node"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    assert_eq!(v["event"], "ready", "{line}");
    assert_eq!(v["rendezvous"], true);
    assert_eq!(v["relay"], true);
    let addr = |x: &serde_json::Value| x.as_str().unwrap().parse::<SocketAddr>().unwrap();
    Running {
        child,
        node_id: unhex(v["node_id"].as_str().unwrap()),
        node: addr(&v["node"]),
        primary: addr(&v["observer"]["primary"]),
        alternate: addr(&v["observer"]["alternate"]),
        metrics: addr(&v["metrics"]),
    }
}

/// (status line, body) of a GET.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    if status.contains("200") {
        assert!(head.contains("Content-Type: text/plain; version=0.0.4") || path != "/metrics", "{head}");
        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(len, body.len());
    }
    (status, body.to_string())
}

/// The value of one sample (`name` or `name{labels}`, exactly as printed).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn metrics(r: &Running) -> String {
    let (status, body) = get(r.metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

async fn wait_until(f: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node() -> Arc<Node> {
    Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap()
}

#[test]
fn one_process_observes_introduces_relays_and_counts() {
    let dir = tempdir();
    let config = write_config(&dir);
    let r = start(&config);

    // The key file: created, 0600, and it is the node's identity.
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("keys/node.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let seed: [u8; 32] = std::fs::read(&key).unwrap().try_into().unwrap();
    assert_eq!(Identity::from_seed(seed).node_id(), r.node_id);

    // Metrics before anything happened.
    let m = metrics(&r);
    assert_eq!(sample(&m, "macula_node_stun_answers_total"), 0.0);
    assert_eq!(sample(&m, "macula_node_rendezvous_peers"), 0.0);
    assert_eq!(sample(&m, "macula_node_relay_sessions"), 0.0);
    assert_eq!(sample(&m, "macula_node_relay_refusals_total{reason=\"max_sessions\"}"), 0.0);
    assert!(m.contains(&format!("macula_node_info{{node_id=\"{}\"", r.node_id.to_hex())));
    assert_eq!(get(r.metrics, "/nothing").0, "HTTP/1.1 404 Not Found");

    // A STUN binding against the observer: mapped address, and the other
    // address on 127.0.0.2.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    client.send_to(&Message::binding_request([7; 12]).with_fingerprint().encode(), r.primary).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(from, r.primary);
    let resp = Message::decode(&buf[..n]).unwrap();
    assert_eq!(resp.class, Class::SuccessResponse);
    assert_eq!(resp.mapped_address(), Some(client.local_addr().unwrap()));
    assert_eq!(resp.other_address(), Some(r.alternate));
    client.send_to(b"not stun at all", r.primary).unwrap();

    let (node_id, node_addr) = (r.node_id, r.node);
    runtime::handle().block_on(async move {
        // Two nodes join its rendezvous; B reserves at its relay.
        let cfg = || SignalConfig::new(public_profile());
        let a = Signal::join_with(node(), node_addr, node_id, cfg()).await.unwrap();
        let b = Signal::join_with(node(), node_addr, node_id, cfg()).await.unwrap();
        assert_eq!(a.observed_addr(), Some(a.node().local_addr().unwrap()));
        b.set_relays(vec![(node_id, node_addr)]);
        wait_until(|| b.reserved_relays().len() == 1, "B reserved at macula-node").await;

        // Connect through its rendezvous (public profiles: direct).
        let c = connect_detailed(&a, b.node().node_id(), ConnectOpts::default()).await.unwrap();
        assert_eq!(c.method, Method::Direct);
        let on_b = tokio::time::timeout(Duration::from_secs(5), b.accept()).await.unwrap().unwrap();
        c.conn.send(b"direct".to_vec()).await.unwrap();
        assert_eq!(on_b.recv().await.unwrap(), b"direct");

        // Relay-only: through its relay, staying there.
        let only = ConnectOpts { relay_only: true, allow_relay: true, upgrade_interval: None, ..ConnectOpts::default() };
        let rc = connect_detailed(&a, b.node().node_id(), only.clone()).await.unwrap();
        assert_eq!(rc.method, Method::Relayed);
        assert_eq!(a.node().relay_of(&rc.conn.remote_address()), Some(node_id));
        let rb = tokio::time::timeout(Duration::from_secs(5), b.accept()).await.unwrap().unwrap();
        let payload = vec![9u8; 20_000];
        for _ in 0..5 {
            rc.conn.send(payload.clone()).await.unwrap();
            assert_eq!(rb.recv().await.unwrap(), payload);
            rb.send(b"ack".to_vec()).await.unwrap();
            assert_eq!(rc.conn.recv().await.unwrap(), b"ack");
        }

        // max_sessions = 1: the next relay-only connect is refused.
        let e = connect_detailed(&a, b.node().node_id(), only).await.unwrap_err();
        assert_eq!(e.kind(), "max_sessions", "{e}");

        let m = metrics_async(r.metrics).await;
        assert_eq!(sample(&m, "macula_node_stun_answers_total"), 1.0);
        assert!(m.lines().any(|l| l.starts_with("macula_node_stun_dropped_total{") && l.ends_with(" 1")), "{m}");
        assert_eq!(sample(&m, "macula_node_rendezvous_peers"), 2.0);
        assert_eq!(sample(&m, "macula_node_rendezvous_registrations_total"), 2.0);
        assert!(sample(&m, "macula_node_rendezvous_messages_total{kind=\"connect\"}") >= 1.0, "{m}");
        assert!(sample(&m, "macula_node_rendezvous_messages_total{kind=\"answer\"}") >= 1.0, "{m}");
        assert_eq!(sample(&m, "macula_node_relay_sessions"), 1.0);
        assert_eq!(sample(&m, "macula_node_relay_reservations"), 1.0);
        assert_eq!(sample(&m, "macula_node_relay_sessions_started_total"), 1.0);
        assert_eq!(sample(&m, "macula_node_relay_refusals_total{reason=\"max_sessions\"}"), 1.0);
        let bytes = sample(&m, "macula_node_relay_bytes_total");
        assert!(bytes >= 5.0 * 20_000.0, "relay counted {bytes} bytes\n{m}");
        assert!(sample(&m, "macula_node_relay_frames_total") >= 5.0 * 20_000.0 / 1500.0, "{m}");

        // Closing the relayed connection ends its session.
        rc.conn.close("done");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = metrics_async(r.metrics).await;
            let ended: f64 = m
                .lines()
                .filter(|l| l.starts_with("macula_node_relay_sessions_ended_total{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum();
            // The gauge and the counters are read one after the other: a
            // scrape can fall between the session's removal and its count
            // (seen once in a full-suite run), so wait for both.
            if sample(&m, "macula_node_relay_sessions") == 0.0 && ended >= 1.0 {
                assert_eq!(ended, 1.0, "{m}");
                assert!(sample(&m, "macula_node_relay_ended_sessions_bytes_total") >= 5.0 * 20_000.0, "{m}");
                break;
            }
            assert!(Instant::now() < deadline, "relay session never ended\n{m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        a.close();
        b.close();
        // The control connections are gone: no peers left.
        let deadline = Instant::now() + Duration::from_secs(15);
        while sample(&metrics_async(r.metrics).await, "macula_node_rendezvous_peers") != 0.0 {
            assert!(Instant::now() < deadline, "peers still registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // Restarted with the same config: same key file, same node id.
    let id = r.node_id;
    drop(r);
    let again = start(&config);
    assert_eq!(again.node_id, id);
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn metrics_async(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        body
    })
    .await
    .unwrap()
}

#[test]
fn a_bad_config_is_refused_with_its_reason() {
    let dir = std::env::temp_dir().join(format!("macula-node-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "identity_key = \"k\"\n[node]\nlisten = \"127.0.0.1:0\"\nrelay_limit = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_macula-node")).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relay_limit"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `listen6`: a dual-stack public node (one socket per family); the ready
/// line names both, and the IPv6 one answers STUN (as the rendezvous and
/// relay do there: `tests/ipv6_loopback.rs`).
#[test]
fn a_dual_stack_public_node_listens_on_both_families() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback");
        return;
    }
    // Not under `tempdir()`: the other tests empty that one while this runs.
    let dir = std::env::temp_dir().join(format!("macula-node-test-dual-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("macula-node.toml");
    let text = format!("identity_key = \"{}\"\n[node]\nlisten = \"127.0.0.1:0\"\nlisten6 = \"[::1]:0\"\n", dir.join("node.key").display());
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_macula-node")).arg("--config").arg(&path).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    let node6: SocketAddr = v["node6"].as_str().unwrap_or_else(|| panic!("node6 in {line}")).parse().unwrap();
    assert!(node6.is_ipv6() && v["node"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
    let s = UdpSocket::bind("[::1]:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&Message::binding_request([3; 12]).encode(), node6).unwrap();
    let mut buf = [0u8; 1500];
    let got = s.recv_from(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (n, from) = got.expect("STUN answer over IPv6");
    assert_eq!(from, node6);
    let m = Message::decode(&buf[..n]).unwrap();
    assert_eq!((m.class, m.mapped_address()), (Class::SuccessResponse, Some(s.local_addr().unwrap())));
}
