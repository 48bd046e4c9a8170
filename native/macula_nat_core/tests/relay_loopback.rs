//! Relays on 127.0.0.1: a rendezvous, one or two relay nodes and peers.
//! Relayed connects, the relay's rules (reservations, max_sessions,
//! bandwidth), byte accounting, failover to a second relay and the upgrade
//! to a punched path without losing or reordering a message.

use macula_nat_core::connect::{profile_of, public_profile};
use macula_nat_core::relay::{RelayError, RelayEvent, RelayLimits, RelayLink, RelayServer};
use macula_nat_core::{connect_detailed, runtime, Connection, ConnectOpts, Identity, Method, Node, NodeConfig, Rendezvous, Signal, SignalConfig};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::record::PeerInfo;
use macula_nat_proto::relay::msg::Refusal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn node() -> Arc<Node> {
    Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap()
}

fn symmetric() -> PeerInfo {
    profile_of(NatType { mapping: Mapping::Pd, filtering: Filtering::Pd, allocation: Allocation::Rd }, None, false)
}

struct Relay {
    node: Arc<Node>,
    server: Option<RelayServer>,
    events: mpsc::Receiver<RelayEvent>,
}

impl Relay {
    fn start(limits: RelayLimits) -> Relay {
        let node = node();
        let (tx, events) = mpsc::channel(macula_nat_core::relay::EVENT_QUEUE);
        let server = RelayServer::start(&node, limits, tx).unwrap();
        Relay { node, server: Some(server), events }
    }

    fn contact(&self) -> (macula_nat_core::NodeId, std::net::SocketAddr) {
        (self.node.node_id(), self.node.local_addr().unwrap())
    }

    async fn next_event(&mut self) -> RelayEvent {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await.expect("relay event").unwrap()
    }

    /// Kills it: the server and the node's socket go at once.
    fn kill(&mut self) {
        self.server.take();
        self.node.close();
    }
}

struct World {
    _rdv: Rendezvous,
    relays: Vec<Relay>,
    a: Signal,
    b: Signal,
}

async fn world(pa: PeerInfo, pb: PeerInfo, relays: usize, limits: RelayLimits) -> World {
    let r = node();
    let rdv = Rendezvous::serve(r.clone()).unwrap();
    let addr = r.local_addr().unwrap();
    let relays: Vec<Relay> = (0..relays).map(|_| Relay::start(limits.clone())).collect();
    let a = Signal::join_with(node(), addr, r.node_id(), SignalConfig::new(pa)).await.unwrap();
    let b = Signal::join_with(node(), addr, r.node_id(), SignalConfig::new(pb)).await.unwrap();
    b.set_relays(relays.iter().map(|r| r.contact()).collect());
    wait_until(|| b.reserved_relays().len() == relays.len(), "B reserved at every relay").await;
    World { _rdv: rdv, relays, a, b }
}

async fn wait_until(f: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect_relayed(w: &World, opts: ConnectOpts) -> (Connection, Connection) {
    let c = tokio::time::timeout(Duration::from_secs(15), connect_detailed(&w.a, w.b.node().node_id(), opts)).await.unwrap().unwrap();
    assert_eq!(c.method, Method::Relayed);
    assert_eq!(c.conn.method(), Method::Relayed);
    let on_b = tokio::time::timeout(Duration::from_secs(5), w.b.accept()).await.unwrap().unwrap();
    assert_eq!(on_b.peer_id(), w.a.node().node_id());
    assert_eq!(on_b.method(), Method::Relayed);
    (c.conn, on_b)
}

fn relay_opts() -> ConnectOpts {
    ConnectOpts { allow_relay: true, ..ConnectOpts::default() }
}

#[test]
fn symmetric_peers_talk_through_a_relay_that_counts_their_bytes() {
    runtime::handle().block_on(async {
        let mut w = world(symmetric(), symmetric(), 1, RelayLimits::default()).await;
        let (on_a, on_b) = connect_relayed(&w, relay_opts()).await;
        let (a_id, b_id) = (w.a.node().node_id(), w.b.node().node_id());
        let ev = w.relays[0].next_event().await;
        assert!(matches!(ev, RelayEvent::Started { a, b, .. } if a == a_id && b == b_id), "{ev:?}");
        // Both ends can tell which relay carries them.
        let relay_id = w.relays[0].node.node_id();
        assert_eq!(w.a.node().relay_of(&on_a.remote_address()), Some(relay_id));
        assert_eq!(w.b.node().relay_of(&on_b.remote_address()), Some(relay_id));
        assert_eq!(w.a.node().relay_of(&w.relays[0].node.local_addr().unwrap()), None);
        let payload = vec![7u8; 100_000];
        for _ in 0..10 {
            on_a.send(payload.clone()).await.unwrap();
            assert_eq!(on_b.recv().await.unwrap(), payload);
            on_b.send(b"ack".to_vec()).await.unwrap();
            assert_eq!(on_a.recv().await.unwrap(), b"ack");
        }
        assert!(w.relays[0].node.stats().datagrams_in > 600, "the bytes went through the relay node: {:?}", w.relays[0].node.stats());
        let sent = w.a.node().relayed_bytes_out() + w.b.node().relayed_bytes_out();
        on_a.close("done");
        let ev = w.relays[0].next_event().await;
        let RelayEvent::Ended { a, b, bytes, .. } = ev else { panic!("{ev:?}") };
        assert_eq!((a, b), (a_id, b_id));
        assert!(bytes >= 1_000_000, "{bytes} < the application's 1 MB");
        // What the peers put into the session (up to the close) is what the
        // relay counted; the close itself may be the only difference.
        assert!(bytes <= w.a.node().relayed_bytes_out() + w.b.node().relayed_bytes_out());
        assert!(bytes + 4 * 1500 >= sent, "relay counted {bytes}, peers sent {sent}");
    });
}

#[test]
fn a_node_without_a_reservation_cannot_be_reached() {
    runtime::handle().block_on(async {
        let relay = Relay::start(RelayLimits::default());
        let (id, addr) = relay.contact();
        let (a, b) = (node(), node());
        let link_a = RelayLink::connect(&a, addr, id).await.unwrap();
        let link_b = RelayLink::connect(&b, addr, id).await.unwrap();
        let e = link_a.open(b.node_id(), macula_nat_core::relay::virtual_addr()).await.unwrap_err();
        assert!(matches!(e, RelayError::Refused(Refusal::NoReservation)), "{e}");
        // Once B reserves, the same open works.
        link_b.reserve().await.unwrap();
        link_a.open(b.node_id(), macula_nat_core::relay::virtual_addr()).await.unwrap();
        // A connect to a peer that advertises no relay has nowhere to go.
        let w = world(symmetric(), symmetric(), 0, RelayLimits::default()).await;
        let e = connect_detailed(&w.a, w.b.node().node_id(), relay_opts()).await.unwrap_err();
        assert_eq!(e.kind(), "no_relay");
    });
}

#[test]
fn max_sessions_refuses_the_next_session_clearly() {
    runtime::handle().block_on(async {
        let w = world(symmetric(), symmetric(), 1, RelayLimits { max_sessions: 1, ..RelayLimits::default() }).await;
        let (_on_a, _on_b) = connect_relayed(&w, relay_opts()).await;
        let only = ConnectOpts { relay_only: true, ..ConnectOpts::default() };
        let e = connect_detailed(&w.a, w.b.node().node_id(), only).await.unwrap_err();
        assert_eq!(e.kind(), "max_sessions", "{e}");
        // A plain connect just finds no relay available.
        let e = connect_detailed(&w.a, w.b.node().node_id(), relay_opts()).await.unwrap_err();
        assert_eq!(e.kind(), "no_relay", "{e}");
        // Raising the limit on the running relay makes room at once.
        let server = w.relays[0].server.as_ref().unwrap();
        server.set_limits(RelayLimits { max_sessions: 2, ..RelayLimits::default() });
        assert_eq!(server.limits().max_sessions, 2);
        let only = ConnectOpts { relay_only: true, ..ConnectOpts::default() };
        let c = connect_detailed(&w.a, w.b.node().node_id(), only).await.unwrap();
        assert_eq!(c.method, Method::Relayed);
    });
}

/// 2 MB/s per session; a sender that wants more for 10 s gets the limit
/// within 5 %, measured as what the relay forwarded.
#[test]
fn the_bandwidth_limit_holds_within_five_percent_over_ten_seconds() {
    runtime::handle().block_on(async {
        let limit = 2_000_000u64;
        let limits = RelayLimits { bandwidth_limit: Some(limit), ..RelayLimits::default() };
        let w = world(symmetric(), symmetric(), 1, limits).await;
        let (on_a, on_b) = connect_relayed(&w, relay_opts()).await;
        let sender = runtime::spawn(async move {
            let m = vec![1u8; 64 * 1024];
            while on_a.send(m.clone()).await.is_ok() {}
        });
        let reader = runtime::spawn(async move { while on_b.recv().await.is_some() {} });
        let stats = || w.relays[0].server.as_ref().unwrap().stats();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (t0, b0) = (Instant::now(), stats().bytes_forwarded);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (t1, b1) = (Instant::now(), stats().bytes_forwarded);
        let rate = (b1 - b0) as f64 / (t1 - t0).as_secs_f64();
        eprintln!("relayed {rate:.0} B/s with a limit of {limit} B/s; over limit dropped {}", stats().dropped_over_limit);
        assert!((rate - limit as f64).abs() <= 0.05 * limit as f64, "rate {rate:.0} B/s vs limit {limit}");
        sender.abort();
        reader.abort();
    });
}

/// Sends `n` numbered messages from `from`, `pace` apart every 10th; the
/// receiver checks each arrives once and in order.
async fn sequenced(from: Connection, to: Connection, n: u32, pace: Duration) {
    let sender = runtime::spawn(async move {
        for i in 0..n {
            from.send(i.to_be_bytes().to_vec()).await.unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(pace).await;
            }
        }
        from
    });
    for i in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(30), to.recv()).await.expect("message in time").expect("open");
        assert_eq!(m, i.to_be_bytes().to_vec(), "message {i} out of order or lost");
    }
    let _ = sender.await;
}

#[test]
fn killing_the_relay_moves_the_connection_to_the_second_relay_without_loss() {
    runtime::handle().block_on(async {
        let mut w = world(symmetric(), symmetric(), 2, RelayLimits::default()).await;
        let (on_a, on_b) = connect_relayed(&w, relay_opts()).await;
        assert!(matches!(w.relays[0].next_event().await, RelayEvent::Started { .. }), "the first relay carries it");
        let run = runtime::spawn(sequenced(on_a.clone(), on_b.clone(), 3000, Duration::from_millis(20)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        w.relays[0].kill();
        assert!(matches!(w.relays[1].next_event().await, RelayEvent::Started { .. }), "the second relay takes over");
        tokio::time::timeout(Duration::from_secs(60), run).await.unwrap().unwrap();
        assert_eq!(on_a.method(), Method::Relayed);
        assert!(on_a.close_reason().is_none() && on_b.close_reason().is_none());
    });
}

#[test]
fn a_relayed_connection_upgrades_to_punched_without_losing_a_message() {
    runtime::handle().block_on(async {
        let mut w = world(public_profile(), public_profile(), 1, RelayLimits::default()).await;
        let opts = ConnectOpts { relay_only: true, upgrade_interval: Some(Duration::from_secs(1)), ..ConnectOpts::default() };
        let (on_a, on_b) = connect_relayed(&w, opts).await;
        let mut watch = on_a.watch_method();
        // 10,000 numbered messages spread over ~4 s, across the switch.
        let run = runtime::spawn(sequenced(on_a.clone(), on_b.clone(), 10_000, Duration::from_millis(4)));
        tokio::time::timeout(Duration::from_secs(15), watch.wait_for(|m| *m == Method::Punched)).await.unwrap().unwrap();
        assert!(!run.is_finished(), "the switch happened while messages were flowing");
        tokio::time::timeout(Duration::from_secs(60), run).await.unwrap().unwrap();
        wait_until(|| on_b.method() == Method::Punched, "the responder sees the punched path").await;
        assert!(!macula_nat_core::relay::is_virtual(&on_b.remote_address()));
        // The relay session is closed once the path moved.
        let mut ended = false;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(8), w.relays[0].events.recv()).await {
            ended |= matches!(ev, RelayEvent::Ended { .. });
            if ended {
                break;
            }
        }
        assert!(ended, "relay session ended after the upgrade");
        // Still one working connection, both ways.
        on_b.send(b"after".to_vec()).await.unwrap();
        assert_eq!(on_a.recv().await.unwrap(), b"after");
    });
}

/// A relay server started on a node before the previous one stops (its
/// owner restarted) keeps the node relaying: the old one's stop leaves the
/// new one's hooks alone.
#[test]
fn a_new_relay_server_survives_the_old_one_stopping() {
    runtime::handle().block_on(async {
        let mut w = world(symmetric(), symmetric(), 1, RelayLimits::default()).await;
        let (tx, mut events) = mpsc::channel(macula_nat_core::relay::EVENT_QUEUE);
        let second = RelayServer::start(&w.relays[0].node, RelayLimits::default(), tx).unwrap();
        w.relays[0].server.take().unwrap().stop();
        // B loses its reservation with the old server and takes one at the new.
        let relay_id = w.relays[0].node.node_id();
        wait_until(|| second.stats().reservations == 1 && w.b.reserved_relays().iter().any(|r| r.0 == relay_id), "B reserved again").await;
        let (on_a, on_b) = connect_relayed(&w, relay_opts()).await;
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
        assert!(matches!(ev, RelayEvent::Started { .. }), "{ev:?}");
        on_a.send(b"through the new server".to_vec()).await.unwrap();
        assert_eq!(on_b.recv().await.unwrap(), b"through the new server");
    });
}

/// A NAT on loopback, between nodes and a relay: each inside source gets
/// its own outside socket (its mapping) towards `target`; `rebind` drops
/// every mapping, so the next packets leave from new ports, as after a
/// real NAT's rebinding.
struct LoopbackNat {
    inside: Arc<tokio::net::UdpSocket>,
    maps: Arc<std::sync::Mutex<std::collections::HashMap<std::net::SocketAddr, (Arc<tokio::net::UdpSocket>, tokio::task::JoinHandle<()>)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoopbackNat {
    async fn start(target: std::net::SocketAddr) -> LoopbackNat {
        let inside = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let maps: Arc<std::sync::Mutex<std::collections::HashMap<_, (Arc<tokio::net::UdpSocket>, tokio::task::JoinHandle<()>)>>> = Default::default();
        let task = {
            let (inside, maps) = (inside.clone(), maps.clone());
            runtime::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, src)) = inside.recv_from(&mut buf).await {
                    let out = {
                        let mut m = maps.lock().unwrap();
                        m.entry(src)
                            .or_insert_with(|| {
                                let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                                std.set_nonblocking(true).unwrap();
                                let out = Arc::new(tokio::net::UdpSocket::from_std(std).unwrap());
                                let back = {
                                    let (out, inside) = (out.clone(), inside.clone());
                                    runtime::spawn(async move {
                                        let mut buf = vec![0u8; 65536];
                                        while let Ok((n, _)) = out.recv_from(&mut buf).await {
                                            let _ = inside.send_to(&buf[..n], src).await;
                                        }
                                    })
                                };
                                (out, back)
                            })
                            .0
                            .clone()
                    };
                    let _ = out.send_to(&buf[..n], target).await;
                }
            })
        };
        LoopbackNat { inside, maps, task }
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.inside.local_addr().unwrap()
    }

    /// The outside ports in use now.
    fn ports(&self) -> Vec<u16> {
        self.maps.lock().unwrap().values().map(|(s, _)| s.local_addr().unwrap().port()).collect()
    }

    fn rebind(&self) {
        for (_, (_, back)) in self.maps.lock().unwrap().drain() {
            back.abort();
        }
    }
}

impl Drop for LoopbackNat {
    fn drop(&mut self) {
        self.rebind();
        self.task.abort();
    }
}

/// Issue 18 item 11: both legs reach the relay through a NAT that rebinds
/// mid-connection. QUIC migrates their control connections to the new
/// ports, and the relay's legs follow them: messages keep flowing both
/// ways. Before, the relay kept the legs' first addresses and dropped their
/// frames as "not a leg" (the connection stalled until its idle timeout).
#[test]
fn relay_legs_follow_their_peers_through_a_nat_rebinding() {
    runtime::handle().block_on(async {
        let r = node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let relay = Relay::start(RelayLimits::default());
        let nat = LoopbackNat::start(relay.node.local_addr().unwrap()).await;
        let rdv_addr = r.local_addr().unwrap();
        let a = Signal::join_with(node(), rdv_addr, r.node_id(), SignalConfig::new(symmetric())).await.unwrap();
        let b = Signal::join_with(node(), rdv_addr, r.node_id(), SignalConfig::new(symmetric())).await.unwrap();
        // B knows the relay at the NAT's inside address, and advertises it so.
        b.set_relays(vec![(relay.node.node_id(), nat.addr())]);
        wait_until(|| !b.reserved_relays().is_empty(), "B reserved through the NAT").await;
        let c = tokio::time::timeout(Duration::from_secs(15), connect_detailed(&a, b.node().node_id(), relay_opts())).await.unwrap().unwrap();
        assert_eq!(c.method, Method::Relayed);
        let on_a = c.conn;
        let on_b = tokio::time::timeout(Duration::from_secs(5), b.accept()).await.unwrap().unwrap();
        for i in 0..10u32 {
            on_a.send(i.to_be_bytes().to_vec()).await.unwrap();
            assert_eq!(on_b.recv().await.unwrap(), i.to_be_bytes().to_vec());
        }
        let before = nat.ports();
        assert_eq!(before.len(), 2, "A and B each have a mapping: {before:?}");
        nat.rebind();
        // Both directions, each message within 10 s (QUIC resends what the
        // old mappings swallowed once the legs moved).
        let t = Instant::now();
        for i in 10..20u32 {
            on_a.send(i.to_be_bytes().to_vec()).await.unwrap();
            let m = tokio::time::timeout(Duration::from_secs(10), on_b.recv()).await.expect("A -> B after the rebinding").unwrap();
            assert_eq!(m, i.to_be_bytes().to_vec());
            on_b.send(i.to_be_bytes().to_vec()).await.unwrap();
            let m = tokio::time::timeout(Duration::from_secs(10), on_a.recv()).await.expect("B -> A after the rebinding").unwrap();
            assert_eq!(m, i.to_be_bytes().to_vec());
        }
        let after = nat.ports();
        assert!(after.iter().all(|p| !before.contains(p)), "new mappings: {before:?} -> {after:?}");
        let st = relay.server.as_ref().unwrap().stats();
        eprintln!("moved through the rebinding in {:?}; relay {st:?}", t.elapsed());
        assert!(st.legs_moved >= 2, "{st:?}");
        assert_eq!(on_a.method(), Method::Relayed);
    });
}
