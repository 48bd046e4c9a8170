//! Shared by the adversarial tests (`tests/hostile_*.rs`): an honest pair of
//! nodes that must keep connecting while an attack runs, and the report row
//! each test prints for `bench/hostile.sh` (`bench/hostile.md`).
#![allow(dead_code)]

use macula_nat_core::connect::public_profile;
use macula_nat_core::{connect_detailed, ConnectOpts, Identity, Node, NodeConfig, Signal, SignalConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn node() -> Arc<Node> {
    Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap()
}

/// Two honest nodes joined at the rendezvous `rdv` (its node's address and id).
pub struct Honest {
    pub a: Signal,
    pub b: Signal,
}

impl Honest {
    pub async fn join(rdv: &Arc<Node>) -> Honest {
        let addr: SocketAddr = rdv.local_addr().unwrap();
        let a = Signal::join_with(node(), addr, rdv.node_id(), SignalConfig::new(public_profile())).await.unwrap();
        let b = Signal::join_with(node(), addr, rdv.node_id(), SignalConfig::new(public_profile())).await.unwrap();
        Honest { a, b }
    }

    /// A connects to B and one message goes each way; the time from the
    /// connect call to B's answer arriving at A, in ms. Panics (fails the
    /// test) if the honest pair cannot connect within 10 s.
    pub async fn connect_ms(&self, opts: ConnectOpts) -> f64 {
        let t = Instant::now();
        let c = tokio::time::timeout(Duration::from_secs(10), connect_detailed(&self.a, self.b.node().node_id(), opts))
            .await
            .expect("honest connect timed out during the attack")
            .expect("honest connect failed during the attack");
        let on_b = tokio::time::timeout(Duration::from_secs(10), self.b.accept()).await.expect("honest accept timed out").expect("honest accept");
        c.conn.send(b"ping".to_vec()).await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), on_b.recv()).await.unwrap().unwrap(), b"ping");
        on_b.send(b"pong".to_vec()).await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), c.conn.recv()).await.unwrap().unwrap(), b"pong");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        // Closed, not just dropped: the connection's watchers (failover,
        // relay upkeep) hold it until it closes, and so would its slot in
        // the per-address connection cap (32 from 127.0.0.1).
        c.conn.close("done");
        on_b.close("done");
        ms
    }
}

/// One row of `bench/hostile.md`: the attack, the bound that holds it, what
/// was measured against that bound, the amplification factor at the third
/// party (bytes there / bytes the attacker sent; `None` when the attack aims
/// at no third party) and the honest pair's connect time during the attack.
/// Printed as a `HOSTILE-ROW` line and appended to `$MACULA_HOSTILE_REPORT`
/// when set (what `bench/hostile.sh` collects).
pub fn row(attack: &str, bound: &str, measured: &str, amplification: Option<f64>, honest_ms: f64) {
    let amp = amplification.map(|a| format!("{a:.2}")).unwrap_or_else(|| "-".into());
    let line = format!("| {attack} | {bound} | {measured} | {amp} | {honest_ms:.0} |");
    println!("HOSTILE-ROW {line}");
    if let Ok(path) = std::env::var("MACULA_HOSTILE_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}
