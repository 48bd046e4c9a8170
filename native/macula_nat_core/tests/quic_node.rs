//! QUIC between two nodes on loopback, on each node's one UDP socket.

use bytes::Bytes;
use macula_nat_core::quic::{codes, DatagramTunnel};
use macula_nat_core::{runtime, CloseReason, Connection, Identity, Node, NodeConfig, QuicConfig, QuicEndpoint, QuicError};
use macula_nat_proto::stun::{Class, Message};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn node() -> Arc<Node> {
    Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap()
}

/// Runs a test body on the library runtime, bounded so a hang fails fast.
fn run<F: Future<Output = ()> + Send + 'static>(f: F) {
    runtime::handle().block_on(async {
        tokio::time::timeout(Duration::from_secs(60), runtime::spawn(f))
            .await
            .expect("test timed out")
            .expect("test task panicked");
    });
}

/// `a` dials `b`; returns (a's side, b's side).
async fn pair(a: &Node, b: &Node) -> (Connection, Connection) {
    let (qa, qb) = (a.quic().unwrap(), b.quic().unwrap());
    let b_addr = b.local_addr().unwrap();
    let accept = tokio::spawn(async move { qb.accept().await });
    let ca = qa.connect(b_addr, b.node_id()).await.expect("connect");
    let cb = accept.await.unwrap().expect("accepted");
    (ca, cb)
}

/// Message `i`: its index, then a pattern that depends on it; sizes vary
/// from empty to 1 MiB.
fn message(i: u32) -> Vec<u8> {
    let len = match i % 10 {
        0 => 4,
        1 => 5,
        2 => 100,
        3 => 1199,
        4 => 1500,
        5 => 16 << 10,
        6 => 64 << 10,
        7 if i % 100 == 7 => 1 << 20,
        _ => 3000 + (i as usize * 7919) % 5000,
    };
    let mut m = i.to_be_bytes().to_vec();
    m.extend((4..len).map(|k| (k as u32).wrapping_mul(31).wrapping_add(i) as u8));
    m
}

fn check(i: u32, m: &[u8]) {
    assert_eq!(m.len(), message(i).len(), "length of message {i}");
    assert!(m == message(i).as_slice(), "content of message {i}");
}

#[test]
fn both_sides_learn_the_other_node_id() {
    let (a, b) = (node(), node());
    run(async move {
        let (ca, cb) = pair(&a, &b).await;
        assert_eq!(ca.peer_id(), b.node_id());
        assert_eq!(cb.peer_id(), a.node_id());
        assert_eq!(ca.remote_address(), b.local_addr().unwrap());
        assert_eq!(cb.remote_address(), a.local_addr().unwrap());
        assert!(ca.rtt() < Duration::from_secs(1));
    });
}

#[test]
fn thousand_messages_both_ways_in_order() {
    const N: u32 = 1000;
    let (a, b) = (node(), node());
    run(async move {
        let (ca, cb) = pair(&a, &b).await;
        let mut tasks = Vec::new();
        for (tx, rx) in [(ca.clone(), cb.clone()), (cb.clone(), ca.clone())] {
            tasks.push(tokio::spawn(async move {
                for i in 0..N {
                    tx.send(message(i)).await.unwrap();
                }
                // Returns once the peer has everything.
                tx.finish().await.unwrap();
            }));
            tasks.push(tokio::spawn(async move {
                for i in 0..N {
                    let Some(m) = rx.recv().await else { panic!("closed before message {i}: {:?}", rx.close_reason()) };
                    check(i, &m);
                }
                assert_eq!(rx.recv().await, None, "the peer finished");
                assert_eq!(rx.close_reason(), None, "finishing does not close");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(matches!(ca.send(&b"late"[..]).await, Err(QuicError::Closed)));
        assert!(a.stats().datagrams_out > 0 && b.stats().datagrams_in > 0);
        assert_eq!(a.stats().quic_dropped + b.stats().quic_dropped, 0, "no datagram dropped on the way to QUIC");
    });
}

#[test]
fn stun_is_still_answered_while_quic_runs() {
    let (a, b) = (node(), node());
    run(async move {
        let (ca, cb) = pair(&a, &b).await;
        // Keep QUIC busy on b's socket while probing it.
        let pump = tokio::spawn(async move {
            for i in 0..200u32 {
                if ca.send(message(i % 10)).await.is_err() {
                    break;
                }
            }
        });
        let drain = tokio::spawn(async move { while cb.recv().await.is_some() {} });
        let b_addr = b.local_addr().unwrap();
        let answered_before = b.stats().stun_answered;
        tokio::task::spawn_blocking(move || {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            for k in 0..5u8 {
                let txid = [k; 12];
                probe.send_to(&Message::binding_request(txid).encode(), b_addr).unwrap();
                let mut buf = [0u8; 1500];
                let (n, from) = probe.recv_from(&mut buf).expect("STUN answer");
                assert_eq!(from, b_addr);
                let resp = Message::decode(&buf[..n]).unwrap();
                assert_eq!(resp.class, Class::SuccessResponse);
                assert_eq!(resp.transaction_id, txid);
                assert_eq!(resp.mapped_address(), Some(probe.local_addr().unwrap()));
            }
        })
        .await
        .unwrap();
        assert!(b.stats().stun_answered >= answered_before + 5);
        pump.await.unwrap();
        drop(drain);
    });
}

#[test]
fn wrong_node_id_is_rejected() {
    let (a, b) = (node(), node());
    run(async move {
        let qa = a.quic().unwrap();
        let qb = b.quic().unwrap();
        let b_addr = b.local_addr().unwrap();
        let wrong = Identity::generate().node_id();
        match qa.connect(b_addr, wrong).await {
            Err(QuicError::PeerIdMismatch(m)) => {
                assert_eq!(m.expected, wrong);
                assert_eq!(m.found, b.node_id());
                let text = QuicError::PeerIdMismatch(m).to_string();
                assert!(text.contains("was dialled"), "clear message: {text}");
            }
            other => panic!("expected PeerIdMismatch, got {other:?}"),
        }
        // Nothing reached b's accept queue, and the right id still works.
        let early = tokio::time::timeout(Duration::from_millis(200), qb.accept()).await;
        assert!(early.is_err(), "a rejected handshake must not be accepted");
        let (ca, cb) = pair(&a, &b).await;
        assert_eq!(ca.peer_id(), b.node_id());
        assert_eq!(cb.peer_id(), a.node_id());
    });
}

#[test]
fn close_is_seen_by_the_peer_with_its_reason() {
    let (a, b) = (node(), node());
    run(async move {
        let (ca, cb) = pair(&a, &b).await;
        ca.send(&b"last"[..]).await.unwrap();
        assert_eq!(cb.recv().await.as_deref(), Some(&b"last"[..]));
        ca.close("done here");
        assert_eq!(cb.closed().await, CloseReason::Peer { code: codes::NORMAL as u64, reason: "done here".into() });
        assert_eq!(cb.recv().await, None);
        assert_eq!(ca.close_reason(), Some(CloseReason::Local { reason: "done here".into() }));
        assert!(matches!(ca.send(&b"x"[..]).await, Err(QuicError::ConnectionLost(_))));
    });
}

#[test]
fn closing_the_node_ends_its_connections() {
    let (a, b) = (node(), node());
    run(async move {
        let (ca, cb) = pair(&a, &b).await;
        let qa = a.quic().unwrap();
        let a_addr = a.local_addr().unwrap();
        a.close();
        // The peer hears it now, not after the 30 s idle timeout.
        let seen = tokio::time::timeout(Duration::from_secs(2), cb.closed()).await.expect("peer told");
        assert_eq!(seen, CloseReason::Peer { code: codes::NODE_CLOSED as u64, reason: "node closed".into() });
        assert_eq!(ca.closed().await, CloseReason::NodeClosed);
        assert_eq!(ca.recv().await, None);
        assert!(matches!(qa.connect(b.local_addr().unwrap(), b.node_id()).await, Err(QuicError::Closed)));
        assert!(qa.accept().await.is_none());
        assert!(matches!(a.quic(), Err(QuicError::Closed)));
        // The port is released although connection and endpoint handles
        // are still alive.
        let mut rebound = false;
        for _ in 0..100 {
            if std::net::UdpSocket::bind(a_addr).is_ok() {
                rebound = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rebound, "port of the closed node released within 1 s");
        drop((ca, qa));
    });
}

#[test]
fn oversized_messages_are_refused() {
    let a = node();
    let b = node();
    let cfg = QuicConfig { max_frame: 1024, ..QuicConfig::default() };
    a.quic_with(cfg.clone()).unwrap();
    b.quic_with(cfg).unwrap();
    run(async move {
        let (ca, cb) = pair(&a, &b).await;
        assert!(matches!(ca.send(vec![0u8; 1025]).await, Err(QuicError::FrameTooLarge { len: 1025, max: 1024 })));
        ca.send(vec![7u8; 1024]).await.unwrap();
        assert_eq!(cb.recv().await, Some(vec![7u8; 1024]));
    });
}

/// A stand-in relay: hands each datagram to the other endpoint as if it had
/// come from `from`.
struct Loop {
    to: QuicEndpoint,
    from: SocketAddr,
}

impl std::fmt::Debug for Loop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Loop(from {})", self.from)
    }
}

impl DatagramTunnel for Loop {
    fn send(&self, _dst: SocketAddr, datagram: &[u8]) {
        self.to.inject(self.from, Bytes::copy_from_slice(datagram));
    }
}

#[test]
fn a_routed_tunnel_carries_quic_instead_of_the_socket() {
    let (a, b) = (node(), node());
    run(async move {
        let (qa, qb) = (a.quic().unwrap(), b.quic().unwrap());
        // Addresses the peers have for each other through the "relay";
        // nothing is ever sent to them on the wire.
        let a_via: SocketAddr = "127.77.0.1:4000".parse().unwrap();
        let b_via: SocketAddr = "127.77.0.2:4000".parse().unwrap();
        qa.route_via(b_via, Arc::new(Loop { to: qb.clone(), from: a_via }));
        qb.route_via(a_via, Arc::new(Loop { to: qa.clone(), from: b_via }));
        let out_before = a.stats().datagrams_out;
        let accept = tokio::spawn({
            let qb = qb.clone();
            async move { qb.accept().await }
        });
        let ca = qa.connect(b_via, b.node_id()).await.expect("connect through the tunnel");
        let cb = accept.await.unwrap().unwrap();
        assert_eq!(cb.remote_address(), a_via);
        assert_eq!(cb.peer_id(), a.node_id());
        for i in 0..50 {
            ca.send(message(i)).await.unwrap();
        }
        for i in 0..50 {
            check(i, &cb.recv().await.unwrap());
        }
        assert_eq!(a.stats().datagrams_out, out_before, "nothing went out on the raw socket");
    });
}

/// A dual-stack node (one socket per family, one QUIC endpoint) talks to
/// IPv4 peers in plain IPv4 and to IPv6 peers over its IPv6 socket; an
/// IPv6-only node talks to it over IPv6. STUN is answered on both sockets.
#[test]
fn dual_stack_node_speaks_both_families_on_one_endpoint() {
    let Ok(probe) = std::net::UdpSocket::bind("[::1]:0") else {
        eprintln!("SKIPPED: no IPv6 loopback");
        return;
    };
    drop(probe);
    let dual = |id| Node::open_dual(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Some("[::1]:0".parse().unwrap()), id).unwrap();
    run(async move {
        let (a, b) = (dual(Identity::generate()), dual(Identity::generate()));
        let v4 = node();
        let v6 = Node::open(NodeConfig { bind: "[::1]:0".parse().unwrap() }, Identity::generate()).unwrap();
        let b6 = b.local_addr6().unwrap().expect("IPv6 socket");
        assert!(b6.is_ipv6() && b.local_addr().unwrap().is_ipv4());
        assert_eq!(v6.local_addr6().unwrap(), Some(v6.local_addr().unwrap()));
        assert_eq!(v4.local_addr6().unwrap(), None);
        let (qa, qb) = (a.quic().unwrap(), b.quic().unwrap());
        for (to, want_v6) in [(b6, true), (b.local_addr().unwrap(), false)] {
            let qb2 = qb.clone();
            let accept = tokio::spawn(async move { qb2.accept().await });
            let ca = qa.connect(to, b.node_id()).await.expect("dual to dual");
            let cb = accept.await.unwrap().expect("accepted");
            assert_eq!(ca.remote_address(), to, "plain addresses above QUIC");
            assert_eq!(cb.remote_address().is_ipv6(), want_v6);
            ca.send(b"ping".to_vec()).await.unwrap();
            assert_eq!(cb.recv().await.unwrap(), b"ping");
            cb.send(b"pong".to_vec()).await.unwrap();
            assert_eq!(ca.recv().await.unwrap(), b"pong");
        }
        // An IPv4-only and an IPv6-only node each reach the dual one.
        for single in [&v4, &v6] {
            let to = if single.local_addr().unwrap().is_ipv6() { b6 } else { b.local_addr().unwrap() };
            let (c, d) = pair_at(single, &b, to).await;
            c.send(b"hi".to_vec()).await.unwrap();
            assert_eq!(d.recv().await.unwrap(), b"hi");
            assert_eq!(d.remote_address(), single.local_addr().unwrap());
        }
        // An IPv4-only node cannot dial IPv6 at all (no socket for it).
        assert!(v4.quic().unwrap().connect(b6, b.node_id()).await.is_err());
        // STUN on the IPv6 socket is answered from there.
        let s = std::net::UdpSocket::bind("[::1]:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&Message::binding_request([9; 12]).encode(), b6).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        assert_eq!(from, b6);
        let m = Message::decode(&buf[..n]).unwrap();
        assert_eq!((m.class, m.mapped_address()), (Class::SuccessResponse, Some(s.local_addr().unwrap())));
        // Closing releases both ports.
        let (p4, p6) = (b.local_addr().unwrap(), b6);
        b.close();
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::net::UdpSocket::bind(p4).expect("IPv4 port released");
        std::net::UdpSocket::bind(p6).expect("IPv6 port released");
    });
}

async fn pair_at(a: &Node, b: &Node, to: SocketAddr) -> (Connection, Connection) {
    let qb = b.quic().unwrap();
    let accept = tokio::spawn(async move { qb.accept().await });
    let ca = a.quic().unwrap().connect(to, b.node_id()).await.expect("connect");
    let cb = accept.await.unwrap().expect("accepted");
    (ca, cb)
}
