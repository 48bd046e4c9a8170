//! The mainline backend against a private 20-node swarm on loopback (never
//! the public DHT): a value published by one client is fetched by another,
//! BEP 44's seq rules hold, unknown keys and dead bootstraps answer in
//! bounded time, and oversized values are refused.
//!
//! The tests share one swarm while any of them runs; it is dropped (its
//! nodes stopped) when the last one finishes.

use macula_nat_core::dht::mainline::{MainlineConfig, MainlineDht};
use macula_nat_core::dht::swarm::LocalSwarm;
use macula_nat_core::dht::{DhtBackend, DhtError, MAX_VALUE};
use macula_nat_core::{runtime, Identity};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

const SWARM_SIZE: usize = 20;
/// How long a reader keeps retrying before a test fails. Stores land on
/// every node a put reaches before the put returns, so a read normally
/// succeeds on the first try; the retry only absorbs scheduling noise on a
/// loaded machine.
const READ_DEADLINE: Duration = Duration::from_secs(10);

static SWARM: Mutex<Weak<LocalSwarm>> = Mutex::new(Weak::new());

fn block_on<F: Future>(f: F) -> F::Output {
    runtime::handle().block_on(f)
}

fn swarm() -> Arc<LocalSwarm> {
    // Held across the start so that tests starting together share one swarm.
    let mut slot = SWARM.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let s = Arc::new(block_on(LocalSwarm::start(SWARM_SIZE)).expect("swarm starts"));
    *slot = Arc::downgrade(&s);
    s
}

/// A client of the swarm, bootstrapped from two of its nodes (not all of
/// them, so lookups really walk the DHT).
fn client(swarm: &LocalSwarm) -> MainlineDht {
    let cfg = MainlineConfig {
        bootstrap: swarm.bootstrap().into_iter().take(2).collect(),
        request_timeout: Some(Duration::from_secs(1)),
        ..MainlineConfig::default()
    };
    let dht = block_on(MainlineDht::start(cfg)).expect("client starts");
    assert!(dht.local_addr().ip().is_loopback(), "loopback bootstrap binds loopback");
    assert!(block_on(dht.bootstrapped()), "client bootstraps from the swarm");
    dht
}

/// Reads `id` through `dht` until it equals `want`, up to the deadline;
/// returns the last answer.
fn read_until(dht: &MainlineDht, id: &Identity, want: &[u8]) -> Result<Option<Vec<u8>>, DhtError> {
    let start = Instant::now();
    loop {
        let got = block_on(dht.get(id.node_id()));
        if matches!(&got, Ok(Some(v)) if v == want) || start.elapsed() > READ_DEADLINE {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn value_published_by_a_is_fetched_by_b() {
    let s = swarm();
    let (a, b) = (client(&s), client(&s));
    assert_ne!(a.local_addr(), b.local_addr());
    let id = Identity::generate();
    let value = b"signed peer record".to_vec();
    block_on(a.put(&id, 1, value.clone())).expect("put");
    assert_eq!(read_until(&b, &id, &value), Ok(Some(value)));
}

#[test]
fn largest_allowed_value_round_trips() {
    let s = swarm();
    let (a, b) = (client(&s), client(&s));
    let id = Identity::generate();
    let value: Vec<u8> = (0..MAX_VALUE).map(|i| i as u8).collect();
    block_on(a.put(&id, 1, value.clone())).expect("put");
    assert_eq!(read_until(&b, &id, &value), Ok(Some(value)));
}

#[test]
fn higher_seq_replaces() {
    let s = swarm();
    let (a, b) = (client(&s), client(&s));
    let id = Identity::generate();
    block_on(a.put(&id, 1, b"one".to_vec())).expect("put 1");
    assert_eq!(read_until(&b, &id, b"one"), Ok(Some(b"one".to_vec())));
    block_on(a.put(&id, 2, b"two".to_vec())).expect("put 2");
    assert_eq!(read_until(&b, &id, b"two"), Ok(Some(b"two".to_vec())));
}

#[test]
fn lower_seq_does_not_replace() {
    let s = swarm();
    let (a, b) = (client(&s), client(&s));
    let id = Identity::generate();
    block_on(a.put(&id, 5, b"five".to_vec())).expect("put 5");
    assert_eq!(read_until(&b, &id, b"five"), Ok(Some(b"five".to_vec())));
    // The swarm refuses it; like the memory backend, that is not an error.
    assert_eq!(block_on(a.put(&id, 3, b"three".to_vec())), Ok(()));
    for _ in 0..3 {
        assert_eq!(block_on(b.get(id.node_id())), Ok(Some(b"five".to_vec())));
    }
}

#[test]
fn unknown_key_is_none_in_bounded_time() {
    let s = swarm();
    let b = client(&s);
    let start = Instant::now();
    assert_eq!(block_on(b.get(Identity::generate().node_id())), Ok(None));
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
}

#[test]
fn value_over_1000_bytes_is_too_large() {
    let s = swarm();
    let a = client(&s);
    let id = Identity::generate();
    assert_eq!(block_on(a.put(&id, 1, vec![0; MAX_VALUE + 1])), Err(DhtError::TooLarge(MAX_VALUE + 1)));
    assert_eq!(block_on(a.get(id.node_id())), Ok(None));
}

#[test]
fn no_reachable_node_is_a_timeout() {
    // A loopback port nobody listens on: every request goes unanswered.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("port").port();
    let cfg = MainlineConfig {
        bootstrap: vec![format!("127.0.0.1:{port}")],
        request_timeout: Some(Duration::from_millis(200)),
        ..MainlineConfig::default()
    };
    let dht = block_on(MainlineDht::start(cfg)).expect("starts");
    let id = Identity::generate();
    let start = Instant::now();
    assert_eq!(block_on(dht.get(id.node_id())), Err(DhtError::Timeout));
    assert_eq!(block_on(dht.put(&id, 1, b"x".to_vec())), Err(DhtError::Timeout));
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
}

#[test]
fn bad_bootstrap_is_an_error_not_a_silent_public_dht() {
    let cfg = MainlineConfig { bootstrap: vec!["not an address".into()], ..MainlineConfig::default() };
    assert!(matches!(block_on(MainlineDht::start(cfg)), Err(DhtError::Backend(_))));
}

#[test]
fn swarm_binary_serves_until_stdin_closes() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_macula-dht-swarm"))
        .arg("20")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("swarm binary runs");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("bootstrap line");
    let list = line.trim_end().strip_prefix("bootstrap ").expect("`bootstrap ` prefix");
    let nodes: Vec<String> = list.split(',').map(String::from).collect();
    assert_eq!(nodes.len(), 20);
    assert!(nodes.iter().all(|n| n.starts_with("127.0.0.1:")), "{line}");

    let cfg = |bootstrap: Vec<String>| MainlineConfig {
        bootstrap,
        request_timeout: Some(Duration::from_secs(1)),
        ..MainlineConfig::default()
    };
    let a = block_on(MainlineDht::start(cfg(nodes[..2].to_vec()))).expect("a");
    let b = block_on(MainlineDht::start(cfg(nodes[18..].to_vec()))).expect("b");
    let id = Identity::generate();
    block_on(a.put(&id, 1, b"via the binary".to_vec())).expect("put");
    assert_eq!(read_until(&b, &id, b"via the binary"), Ok(Some(b"via the binary".to_vec())));

    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => {
                let _ = child.kill();
                panic!("swarm binary still running 5 s after its stdin closed");
            }
        }
    };
    assert!(status.success(), "{status}");
}
