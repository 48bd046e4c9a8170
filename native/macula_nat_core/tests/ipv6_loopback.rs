//! IPv6 and IPv4 nodes on loopback (127.0.0.1 and ::1): a dual-stack node
//! runs the rendezvous and a relay; an IPv6-only node and an IPv4-only one
//! share no family and meet through the relay, each reaching it over its
//! own; a dual-stack node joined over IPv6 and an IPv4-only one; two
//! IPv6-only nodes connect directly. Messages both ways.

use macula_nat_core::connect::public_profile;
use macula_nat_core::relay::{RelayLimits, RelayServer};
use macula_nat_core::{connect_detailed, runtime, Connection, ConnectOpts, Identity, Method, Node, NodeConfig, Rendezvous, Signal, SignalConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn v4() -> Arc<Node> {
    Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap()
}

fn v6() -> Arc<Node> {
    Node::open(NodeConfig { bind: "[::1]:0".parse().unwrap() }, Identity::generate()).unwrap()
}

async fn wait_until(f: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn both_ways(a: &Connection, b: &Connection) {
    a.send(b"ping".to_vec()).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), b.recv()).await.unwrap().unwrap(), b"ping");
    b.send(b"pong".to_vec()).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), a.recv()).await.unwrap().unwrap(), b"pong");
}

#[test]
fn ipv6_only_and_ipv4_only_nodes_meet_through_a_dual_stack_relay() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback");
        return;
    }
    macula_nat_core::stderr_trace::init_from_env();
    runtime::handle().block_on(async {
        let hub = Node::open_dual(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Some("[::1]:0".parse().unwrap()), Identity::generate()).unwrap();
        let _rdv = Rendezvous::serve(hub.clone()).unwrap();
        let (tx, _events) = tokio::sync::mpsc::channel(macula_nat_core::relay::EVENT_QUEUE);
        let _relay = RelayServer::start(&hub, RelayLimits::default(), tx).unwrap();
        let (hub4, hub6): (SocketAddr, SocketAddr) = (hub.local_addr().unwrap(), hub.local_addr6().unwrap().unwrap());
        let join = |n: Arc<Node>, at: SocketAddr| {
            let id = hub.node_id();
            async move {
                let s = Signal::join_with(n, at, id, SignalConfig::new(public_profile())).await.unwrap();
                s.set_relays(vec![(id, at)]);
                wait_until(|| !s.reserved_relays().is_empty(), "reserved").await;
                s
            }
        };
        let a = join(v6(), hub6).await;
        let b = join(v4(), hub4).await;
        let c = join(v6(), hub6).await;
        assert!(a.observed_addr().unwrap().is_ipv6() && b.observed_addr().unwrap().is_ipv4());
        let opts = ConnectOpts { allow_relay: true, timeout: Duration::from_secs(8), ..ConnectOpts::default() };
        for (from, to) in [(&a, &b), (&b, &a)] {
            let t = Instant::now();
            let accept = async { tokio::time::timeout(Duration::from_secs(10), to.accept()).await.expect("accepted").unwrap() };
            let (got, theirs) = tokio::join!(connect_detailed(from, to.node().node_id(), opts.clone()), accept);
            let got = got.expect("relayed connect");
            eprintln!("{} -> {}: {} in {:?}", from.node().local_addr().unwrap(), to.node().local_addr().unwrap(), got.method.name(), t.elapsed());
            assert_eq!(got.method, Method::Relayed);
            assert!(t.elapsed() < Duration::from_secs(2), "no family in common: the relay at once");
            both_ways(&got.conn, &theirs).await;
        }
        // A dual-stack node that joined over IPv6: an IPv4-only initiator
        // has nothing to dial and relays at once; the dual node reaches the
        // IPv4-only one directly.
        let d = join(Node::open_dual(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Some("[::1]:0".parse().unwrap()), Identity::generate()).unwrap(), hub6).await;
        for (from, to, want) in [(&b, &d, Method::Relayed), (&d, &b, Method::Direct)] {
            let t = Instant::now();
            let accept = async { tokio::time::timeout(Duration::from_secs(10), to.accept()).await.expect("accepted").unwrap() };
            let (got, theirs) = tokio::join!(connect_detailed(from, to.node().node_id(), opts.clone()), accept);
            let got = got.expect("connect");
            assert_eq!(got.method, want, "after {:?}", t.elapsed());
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            both_ways(&got.conn, &theirs).await;
        }
        // Two IPv6-only nodes: directly, over IPv6.
        let accept = async { tokio::time::timeout(Duration::from_secs(10), c.accept()).await.expect("accepted").unwrap() };
        let (got, theirs) = tokio::join!(connect_detailed(&a, c.node().node_id(), opts.clone()), accept);
        let got = got.expect("direct connect");
        assert_ne!(got.method, Method::Relayed);
        assert_eq!(got.conn.remote_address(), c.node().local_addr().unwrap());
        both_ways(&got.conn, &theirs).await;
    });
}
