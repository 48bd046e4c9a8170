//! Hostile peers at a rendezvous (issue 18, items 2, 5 and 6): a real node
//! joined at the rendezvous speaking the real signalling protocol (messages
//! built with the proto codec, as `connect/initiator.rs` sends them), while
//! the harness's honest pair keeps connecting through the same rendezvous.
//!
//! * `connect_flood_punches_a_third_party_at_most_what_the_attacker_sent`:
//!   Connects with the upgrade flag, 255 attempts and the third party named
//!   as candidate and preserved port; bytes at the third party per byte the
//!   attacker sent must stay <= 1.
//! * `sessions_never_answered_and_a_peer_that_stops_reading_are_bounded`:
//!   pending sessions bounded per initiator; a peer that stops reading its
//!   control stream blocks nobody else's signalling.
//! * `upgrade_then_reject_leaks_no_session`: Connect(upgrade) then Reject:
//!   the responder's session (and task) ends, nothing waits for a Go.

mod hostile;

use macula_nat_core::connect::profile_of;
use macula_nat_core::{runtime, Connection, ConnectOpts, Node, QuicConfig, Rendezvous};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::signal::{self, HelloKind, Msg, NodeId, Profile, SessionId};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A hostile node's control connection at the rendezvous, registered.
async fn control(node: &Arc<Node>, rdv: &Arc<Node>) -> Connection {
    let conn = node.quic().unwrap().connect(rdv.local_addr().unwrap(), rdv.node_id()).await.unwrap();
    conn.send(Msg::Hello(HelloKind::Control).encode()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), conn.recv()).await.unwrap().unwrap();
    assert!(matches!(Msg::decode(&m), Ok(Msg::Registered { .. })));
    conn
}

/// Reads and forgets what the rendezvous sends (an attacker that keeps up).
fn drain(conn: &Connection) {
    let c = conn.clone();
    runtime::spawn(async move { while c.recv().await.is_some() {} });
}

/// A profile that claims a port-preserving NAT whose preserved port and
/// candidate are the third party's (`victim`).
fn aimed_at(victim: SocketAddr) -> Profile {
    let nat = NatType { mapping: Mapping::Pd, filtering: Filtering::Pd, allocation: Allocation::Pp };
    Profile { info: profile_of(nat, None, false), local_port: victim.port(), answer_port: 0, alloc_base: 0, candidates: vec![victim], relays: Vec::new() }
}

/// A UDP socket on 127.0.0.1 counting the bytes it receives.
async fn third_party() -> (SocketAddr, Arc<AtomicU64>) {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let bytes = Arc::new(AtomicU64::new(0));
    let b = bytes.clone();
    runtime::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = s.recv(&mut buf).await {
            b.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    (addr, bytes)
}

/// UDP bytes a connection has sent (its whole signalling on the wire).
fn udp_tx_bytes(c: &Connection) -> u64 {
    let line = c.stats_line();
    let tx = line.split("udp_tx ").nth(1).and_then(|r| r.split('/').nth(1)).and_then(|r| r.split('B').next());
    tx.and_then(|n| n.parse().ok()).expect("udp_tx in the stats line")
}

/// Honest connects, one after another, while `running`; the slowest, in ms.
async fn honest_meanwhile(h: &hostile::Honest, until: Instant) -> f64 {
    let mut worst: f64 = 0.0;
    loop {
        worst = worst.max(h.connect_ms(ConnectOpts::default()).await);
        if Instant::now() >= until {
            return worst;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn connect_flood_punches_a_third_party_at_most_what_the_attacker_sent() {
    runtime::handle().block_on(async {
        let r = hostile::node();
        let rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let (victim, at_victim) = third_party().await;
        let attacker = hostile::node();
        let ctl = control(&attacker, &r).await;
        drain(&ctl);
        // The honest pair's responder is the one asked to punch.
        let target: NodeId = h.b.node().node_id();
        let profile = aimed_at(victim);
        // Within the rendezvous' Connect rate (a flood beyond it is only
        // refused), so that every Connect reaches the responder.
        let until = Instant::now() + Duration::from_secs(3);
        let wire_before = udp_tx_bytes(&ctl);
        let flood = async {
            let (mut msg_bytes, mut connects) = (0u64, 0u64);
            while Instant::now() < until {
                for _ in 0..2 {
                    let m = Msg::Connect { to: target, session: SessionId::random(), flags: signal::FLAG_UPGRADE, attempts: 255, profile: profile.clone() }.encode();
                    msg_bytes += m.len() as u64;
                    connects += 1;
                    ctl.send(m).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (msg_bytes, connects)
        };
        let ((msg_bytes, connects), honest_ms) = tokio::join!(flood, honest_meanwhile(&h, until));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let wire = udp_tx_bytes(&ctl) - wire_before;
        // Punches end within their timeout (about 2 s), lingering answers 3 s.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let got = at_victim.load(Ordering::Relaxed);
        let amplification = got as f64 / wire as f64;
        let st = rdv.stats();
        println!("{connects} Connects ({msg_bytes} B of messages, {wire} B on the wire); relayed {}, refused {}; third party received {got} B ({:.2} per message byte)", st.connects, st.refused_connects, got as f64 / msg_bytes as f64);
        hostile::row(
            "rendezvous: Connects with upgrade flag, 255 attempts, a third party as candidate and preserved port",
            "unverified address: 1 punch request (84 B) per session until it answers; attempts <= 30; 50 Connects/s per peer; 16 responder sessions per initiator",
            &format!("{connects} Connects ({} relayed): {got} B at the third party for {wire} B the attacker sent ({msg_bytes} B of messages)", st.connects),
            Some(amplification),
            honest_ms,
        );
        assert!(st.connects > 0, "the rendezvous relayed none: the attack was not tried");
        assert!(amplification <= 1.0, "amplification {amplification:.2} ({got} B at the third party for {wire} B sent)");
        drop(rdv);
    });
}

#[test]
fn sessions_never_answered_and_a_peer_that_stops_reading_are_bounded() {
    runtime::handle().block_on(async {
        let r = hostile::node();
        let rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        // A registered peer that never reads its control stream (with
        // small receive windows, so the rendezvous' sends to it block soon).
        let stalled = hostile::node();
        let small = QuicConfig { stream_window: 8 << 10, connection_window: 16 << 10, ..QuicConfig::default() };
        stalled.quic_with(small).unwrap();
        let stalled_ctl = control(&stalled, &r).await;
        let stalled_id = stalled.node_id();
        // Two flooders open sessions to it that are never answered.
        let mut flooders = Vec::new();
        for _ in 0..2 {
            let n = hostile::node();
            let c = control(&n, &r).await;
            drain(&c);
            flooders.push((n, c));
        }
        let mut big = aimed_at("127.0.0.1:9".parse().unwrap());
        big.candidates = (1..=signal::MAX_CANDIDATES as u16).map(|p| SocketAddr::from(([127, 0, 0, 1], 9000 + p))).collect();
        let until = Instant::now() + Duration::from_secs(4);
        let max_pending = Arc::new(AtomicU64::new(0));
        let flood = async {
            let mut n = 0u64;
            while Instant::now() < until {
                for (_, c) in &flooders {
                    for _ in 0..10 {
                        let m = Msg::Connect { to: stalled_id, session: SessionId::random(), flags: 0, attempts: 0, profile: big.clone() };
                        let _ = c.send(m.encode()).await;
                        n += 1;
                    }
                }
                max_pending.fetch_max(rdv.pending_sessions() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        };
        let honest = async {
            // An honest peer asks for the stalled one first (it never
            // answers: this connect fails), then for its usual partner.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let quick = ConnectOpts { timeout: Duration::from_secs(1), ..ConnectOpts::default() };
            let r = macula_nat_core::connect(&h.a, stalled_id, quick).await;
            assert!(r.is_err(), "the stalled peer cannot have answered");
            honest_meanwhile(&h, until).await
        };
        let (sent, honest_ms) = tokio::join!(flood, honest);
        let max_pending = max_pending.load(Ordering::Relaxed);
        let st = rdv.stats();
        // The stalled peer is disconnected once a send to it times out.
        let t = Instant::now();
        while stalled_ctl.close_reason().is_none() && t.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let st_after = rdv.stats();
        println!("{sent} Connects; max pending {max_pending}; {st_after:?}");
        hostile::row(
            "rendezvous: sessions never answered, target stops reading its control stream",
            "64 pending sessions per initiator (10,000 in all, 30 s); 256 queued messages per peer; 5 s send timeout",
            &format!("{sent} Connects from 2 peers: max {max_pending} pending, {} refused, {} sends dropped, stalled peer disconnected: {}", st.refused_connects, st_after.dropped_sends, st_after.stalled_peers),
            None,
            honest_ms,
        );
        assert!(max_pending <= 2 * 64 + 8, "pending sessions {max_pending}");
        assert!(st.refused_connects > 0);
        assert!(stalled_ctl.close_reason().is_some() && st_after.stalled_peers >= 1, "the stalled peer stays connected");
        drop(flooders);
    });
}

#[test]
fn upgrade_then_reject_leaks_no_session() {
    runtime::handle().block_on(async {
        let r = hostile::node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        h.connect_ms(ConnectOpts::default()).await;
        let metrics = runtime::handle().metrics();
        let tasks_before = metrics.num_alive_tasks();
        let attacker = hostile::node();
        let ctl = control(&attacker, &r).await;
        drain(&ctl);
        let target = h.b.node().node_id();
        let profile = aimed_at(attacker.local_addr().unwrap());
        let rounds = 40;
        let attack = async {
            for _ in 0..rounds {
                let session = SessionId::random();
                let connect = Msg::Connect { to: target, session, flags: signal::FLAG_UPGRADE, attempts: 0, profile: profile.clone() };
                ctl.send(connect.encode()).await.unwrap();
                ctl.send(Msg::Reject { peer: target, session, reason: signal::reject::BUSY }.encode()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let until = Instant::now() + Duration::from_secs(1);
        let ((), honest_ms) = tokio::join!(attack, honest_meanwhile(&h, until));
        // What the attack left: every session of the responder ends (the
        // Reject ends those waiting for a Go) well within this.
        let t = Instant::now();
        while (h.b.open_sessions() > 0 || h.b.responder_sessions() > 0) && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (sessions, responders) = (h.b.open_sessions(), h.b.responder_sessions());
        // Tasks: the honest connects' late-connection windows (15 s) and
        // punch lingers end too; wait for them, within a bound.
        let t = Instant::now();
        while metrics.num_alive_tasks() > tasks_before + 4 && t.elapsed() < Duration::from_secs(25) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let tasks_after = metrics.num_alive_tasks();
        println!("sessions {sessions}, responders {responders}; tasks {tasks_before} -> {tasks_after}");
        hostile::row(
            "rendezvous: Connect(upgrade) then Reject, 40 times",
            "a Reject ends the session; every responder session bounded (profile wait + responder timeout + 5 s)",
            &format!("responder sessions left {sessions}, runtime tasks {tasks_before} before, {tasks_after} after"),
            None,
            honest_ms,
        );
        assert_eq!((sessions, responders), (0, 0), "sessions left waiting for a Go");
        assert!(tasks_after <= tasks_before + 4, "tasks {tasks_before} -> {tasks_after}");
    });
}
