//! Rendezvous + two nodes on 127.0.0.1: signalling, strategy choice,
//! Direct and punched connects, errors, and the responder's `accept`.

use macula_nat_core::connect::{profile_of, public_profile};
use macula_nat_core::{connect_detailed, runtime, ConnectError, ConnectOpts, Identity, Method, Node, NodeConfig, Rendezvous, Signal, SignalConfig};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::record::PeerInfo;
use std::sync::Arc;
use std::time::Duration;

fn node() -> Arc<Node> {
    Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap()
}

struct Setup {
    _rdv: Rendezvous,
    a: Signal,
    b: Signal,
}

async fn setup(pa: PeerInfo, pb: PeerInfo) -> Setup {
    let r = node();
    let rdv = Rendezvous::serve(r.clone()).unwrap();
    let addr = r.local_addr().unwrap();
    let a = Signal::join_with(node(), addr, r.node_id(), SignalConfig::new(pa)).await.unwrap();
    let b = Signal::join_with(node(), addr, r.node_id(), SignalConfig::new(pb)).await.unwrap();
    assert_eq!(a.observed_addr(), Some(a.node().local_addr().unwrap()));
    Setup { _rdv: rdv, a, b }
}

/// A connects to B; both directions carry messages; B gets it from accept.
async fn exchange(s: &Setup, opts: ConnectOpts) -> (Method, String) {
    let b_id = s.b.node().node_id();
    let c = tokio::time::timeout(Duration::from_secs(15), connect_detailed(&s.a, b_id, opts)).await.unwrap().unwrap();
    assert_eq!(c.conn.peer_id(), b_id);
    let on_b = tokio::time::timeout(Duration::from_secs(5), s.b.accept()).await.unwrap().unwrap();
    assert_eq!(on_b.peer_id(), s.a.node().node_id());
    c.conn.send(b"ping".to_vec()).await.unwrap();
    assert_eq!(on_b.recv().await.unwrap(), b"ping");
    on_b.send(b"pong".to_vec()).await.unwrap();
    assert_eq!(c.conn.recv().await.unwrap(), b"pong");
    (c.method, c.strategy.name().to_string())
}

#[test]
fn direct_between_public_hosts() {
    runtime::handle().block_on(async {
        let s = setup(public_profile(), public_profile()).await;
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "direct".into()));
        // Twice on the same signals: sessions are independent.
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "direct".into()));
    });
}

fn nat(m: Mapping, f: Filtering, a: Allocation) -> PeerInfo {
    profile_of(NatType { mapping: m, filtering: f, allocation: a }, None, false)
}

#[test]
fn responder_dials_when_the_table_says_so() {
    // A open (public), B port-restricted: the table makes B dial A.
    runtime::handle().block_on(async {
        let s = setup(public_profile(), nat(Mapping::Ei, Filtering::Pd, Allocation::Pp)).await;
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "direct".into()));
    });
}

#[test]
fn simple_punch_on_loopback() {
    runtime::handle().block_on(async {
        let p = nat(Mapping::Ei, Filtering::Pd, Allocation::Pp);
        let s = setup(p.clone(), p).await;
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Punched, "simple_punch".into()));
        // prefer_direct = false punches even between open hosts.
        let s = setup(public_profile(), public_profile()).await;
        let opts = ConnectOpts { prefer_direct: false, ..ConnectOpts::default() };
        assert_eq!(exchange(&s, opts).await, (Method::Punched, "simple_punch".into()));
    });
}

#[test]
fn connection_reversal_on_loopback() {
    runtime::handle().block_on(async {
        // A hard (PD-RD), B EI-HD: B listens, A dials.
        let s = setup(nat(Mapping::Pd, Filtering::Pd, Allocation::Rd), nat(Mapping::Ei, Filtering::Hd, Allocation::Pp)).await;
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "connection_reversal".into()));
        // And reversed roles: B hard, so B dials A.
        let s = setup(nat(Mapping::Ei, Filtering::Hd, Allocation::Pp), nat(Mapping::Pd, Filtering::Pd, Allocation::Rd)).await;
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "connection_reversal".into()));
    });
}

/// A side whose NAT preserves ports only for a socket's first mapping
/// (HD/PD mapping + PP) is aimed at through a fresh socket per connect: the
/// QUIC connection runs on that socket, not on the node socket.
#[test]
fn preserved_ports_connect_from_a_fresh_socket() {
    runtime::handle().block_on(async {
        let cases = [
            // both preserved: both punch from fresh sockets
            (nat(Mapping::Hd, Filtering::Pd, Allocation::Pp), nat(Mapping::Pd, Filtering::Hd, Allocation::Pp), "predict_preservation", Method::Punched, true),
            // hard A dials B's preserved port; B opened its filter from it
            (nat(Mapping::Hd, Filtering::Hd, Allocation::Rd), nat(Mapping::Hd, Filtering::Ei, Allocation::Pp), "connection_reversal", Method::Direct, false),
        ];
        for (pa, pb, strategy, method, a_fresh) in cases {
            let s = setup(pa, pb).await;
            let b_id = s.b.node().node_id();
            let c = tokio::time::timeout(Duration::from_secs(15), connect_detailed(&s.a, b_id, ConnectOpts::default())).await.unwrap().unwrap();
            assert_eq!((c.method, c.strategy.name()), (method, strategy));
            let on_b = tokio::time::timeout(Duration::from_secs(5), s.b.accept()).await.unwrap().unwrap();
            let (a_node, b_node) = (s.a.node().local_addr().unwrap(), s.b.node().local_addr().unwrap());
            assert_ne!(c.conn.remote_address(), b_node, "{strategy}: B answered from its node socket");
            assert_eq!(c.conn.remote_address().ip(), b_node.ip());
            assert_eq!(on_b.remote_address() != a_node, a_fresh, "{strategy}: A's socket");
            c.conn.send(b"ping".to_vec()).await.unwrap();
            assert_eq!(on_b.recv().await.unwrap(), b"ping");
            on_b.send(b"pong".to_vec()).await.unwrap();
            assert_eq!(c.conn.recv().await.unwrap(), b"pong");
        }
    });
}

#[test]
fn errors_are_fast_and_typed() {
    runtime::handle().block_on(async {
        let sym = nat(Mapping::Pd, Filtering::Pd, Allocation::Rd);
        let s = setup(sym.clone(), sym).await;
        let t = std::time::Instant::now();
        let e = connect_detailed(&s.a, s.b.node().node_id(), ConnectOpts::default()).await.unwrap_err();
        assert!(matches!(e, ConnectError::SymmetricNat), "{e}");
        assert_eq!(e.kind(), "symmetric_nat");
        let opts = ConnectOpts { allow_relay: true, ..ConnectOpts::default() };
        let e = connect_detailed(&s.a, s.b.node().node_id(), opts).await.unwrap_err();
        assert_eq!(e.kind(), "no_relay");
        let e = connect_detailed(&s.a, macula_nat_core::NodeId::from_bytes([1u8; 32]), ConnectOpts::default()).await.unwrap_err();
        assert_eq!(e.kind(), "unknown_peer");
        // Fast means: none of the three waited for the 10 s connect
        // timeout. Any bound below it proves that; 5 s leaves room for a
        // loaded CI host (they take milliseconds on a quiet one).
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    });
}

#[test]
fn unsolicited_connection_reaches_accept() {
    runtime::handle().block_on(async {
        let s = setup(public_profile(), public_profile()).await;
        let b_addr = s.b.node().local_addr().unwrap();
        let c = s.a.node().quic().unwrap().connect(b_addr, s.b.node().node_id()).await.unwrap();
        c.send(b"first".to_vec()).await.unwrap();
        let on_b = tokio::time::timeout(Duration::from_secs(5), s.b.accept()).await.unwrap().unwrap();
        // The message read to classify the connection is not lost.
        assert_eq!(on_b.recv().await.unwrap(), b"first");
    });
}

#[test]
fn signal_rejoins_a_restarted_rendezvous() {
    runtime::handle().block_on(async {
        let seed = [42u8; 32];
        let r = Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::from_seed(seed)).unwrap();
        let addr = r.local_addr().unwrap();
        let rdv = Rendezvous::serve(r.clone()).unwrap();
        let a = Signal::join(node(), addr, r.node_id()).await.unwrap();
        let b = Signal::join(node(), addr, r.node_id()).await.unwrap();
        assert!(a.is_connected());
        // The rendezvous goes away and comes back on the same address.
        drop(rdv);
        r.close();
        let mut r2 = None;
        for _ in 0..100 {
            if let Ok(n) = Node::open(NodeConfig { bind: addr }, Identity::from_seed(seed)) {
                r2 = Some(n);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r2 = r2.expect("rendezvous port free again");
        let rdv2 = Rendezvous::serve(r2.clone()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // The rendezvous counts a peer when its registration arrives, a
        // moment before the peer has read the answer (and rejoins are
        // spread over up to a second, so the two do not come together).
        while rdv2.peers().len() < 2 || !(a.is_connected() && b.is_connected()) {
            assert!(std::time::Instant::now() < deadline, "signals did not rejoin");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = Setup { _rdv: rdv2, a, b };
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "direct".into()));
    });
}

/// What a node signals is its node's published profile (every detection
/// publishes there), read when it signals: a connect and an answer issued
/// while the first detection runs wait for it, later detections replace it
/// without a rejoin, and the rendezvous answers a registration refresh.
#[test]
fn signalled_profile_follows_the_nodes_detections() {
    runtime::handle().block_on(async {
        // Both joined with the configured public guess, before detecting.
        let s = setup(public_profile(), public_profile()).await;
        let hard = nat(Mapping::Pd, Filtering::Pd, Allocation::Rd);
        let restricted = nat(Mapping::Ei, Filtering::Hd, Allocation::Pp);
        let (a_slot, b_slot) = (s.a.node().clone(), s.b.node().clone());
        a_slot.local_profile().expect(Duration::from_secs(5));
        b_slot.local_profile().expect(Duration::from_secs(5));
        // The detections report 300 ms after the connect was issued.
        let (ha, hb) = (hard.clone(), restricted.clone());
        let (na, nb) = (a_slot.clone(), b_slot.clone());
        let reporter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            na.local_profile().publish(ha);
            tokio::time::sleep(Duration::from_millis(100)).await;
            nb.local_profile().publish(hb);
        });
        let t0 = std::time::Instant::now();
        // A hard, B restricted: connection reversal (a public guess on
        // either side would have made it a plain direct dial).
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "connection_reversal".into()));
        assert!(t0.elapsed() >= Duration::from_millis(390), "did not wait for both detections: {:?}", t0.elapsed());
        reporter.await.unwrap();
        // A later detection (B now port-restricted, A public) is signalled
        // from the next session on, on the same membership.
        a_slot.local_profile().publish(public_profile());
        b_slot.local_profile().publish(nat(Mapping::Ei, Filtering::Pd, Allocation::Pp));
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "direct".into()));
        b_slot.local_profile().publish(nat(Mapping::Ei, Filtering::Pd, Allocation::Pp));
        a_slot.local_profile().publish(nat(Mapping::Ei, Filtering::Hd, Allocation::Pp));
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Punched, "simple_punch".into()));
        // A detection that fails before any profile is known releases a
        // waiting connect at once, with the configured profile.
        let s = setup(public_profile(), public_profile()).await;
        s.a.node().local_profile().expect(Duration::from_secs(30));
        let na = s.a.node().clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            na.local_profile().unavailable();
        });
        let t0 = std::time::Instant::now();
        assert_eq!(exchange(&s, ConnectOpts::default()).await, (Method::Direct, "direct".into()));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // The registration refresh after a detection is answered (the
        // observed address stays the loopback one).
        s.b.node().local_profile().publish(public_profile());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(s.b.observed_addr(), Some(s.b.node().local_addr().unwrap()));
        assert!(s.b.is_connected());
    });
}

/// The application's accept may be waiting before the node joins its
/// rendezvous (an Erlang node's `accept/1` called right after it started):
/// the join starts the dispatcher, and the connection a peer then opens
/// through traversal must still reach that accept. Before `Node::accept`,
/// the early accept sat on the raw QUIC queue behind the dispatcher and
/// timed out while the initiator's connect succeeded.
#[test]
fn accept_waiting_before_the_join_gets_the_connection() {
    runtime::handle().block_on(async {
        let r = node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let addr = r.local_addr().unwrap();
        let b_node = node();
        let early = {
            let b_node = b_node.clone();
            tokio::spawn(async move { b_node.accept().await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a = Signal::join_with(node(), addr, r.node_id(), SignalConfig::new(public_profile())).await.unwrap();
        let b = Signal::join_with(b_node.clone(), addr, r.node_id(), SignalConfig::new(public_profile())).await.unwrap();
        let c = tokio::time::timeout(Duration::from_secs(15), connect_detailed(&a, b_node.node_id(), ConnectOpts::default()))
            .await
            .unwrap()
            .unwrap();
        let on_b = tokio::time::timeout(Duration::from_secs(10), early).await.expect("the early accept never got the connection").unwrap().unwrap();
        assert_eq!(on_b.peer_id(), a.node().node_id());
        c.conn.send(b"ping".to_vec()).await.unwrap();
        assert_eq!(on_b.recv().await.unwrap(), b"ping");
        drop(b);
    });
}
