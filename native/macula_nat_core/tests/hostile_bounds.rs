//! Bounds on what one peer can make a node hold (issue 18, items 1 and 3):
//! an oversized frame, a connection flood from one address, and a demand
//! for more birthday sessions than the process has descriptors. Each
//! asserts its bound while an honest pair keeps connecting, and prints one
//! report row.

mod hostile;

use macula_nat_core::connect::{profile_of, public_profile};
use macula_nat_core::quic::{codes, CloseReason, QuicConfig};
use macula_nat_core::{connect_detailed, fd_budget, runtime, ConnectOpts, Identity, Node, NodeConfig, Rendezvous, Signal, SignalConfig};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fd test counts the whole process's descriptors and lowers its
/// limit: the tests of this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node on another loopback address than the honest ones (127.0.0.1):
/// "one source address" for the caps.
fn attacker_node() -> Arc<Node> {
    Node::open(NodeConfig { bind: "127.0.0.2:0".parse().unwrap() }, Identity::generate()).unwrap()
}

#[test]
fn oversized_frame_header_closes_the_connection_before_the_body() {
    let _s = serial();
    runtime::handle().block_on(async {
        let r = hostile::node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let victim = hostile::node();
        let vq = victim.quic().unwrap();
        let max = vq.config().max_frame;
        // The attacker's own limit does not stop it: 32 MiB, which the old
        // 64 MiB default took whole.
        let attacker = attacker_node();
        let aq = attacker.quic_with(QuicConfig { max_frame: u32::MAX as usize, ..QuicConfig::default() }).unwrap();
        let accept = tokio::spawn({
            let vq = vq.clone();
            async move { vq.accept().await }
        });
        let ca = aq.connect(victim.local_addr().unwrap(), victim.node_id()).await.unwrap();
        let cv = accept.await.unwrap().expect("accepted");
        let before = victim.stats().bytes_in;
        let frame = 32usize << 20;
        let sent = tokio::spawn({
            let ca = ca.clone();
            async move { ca.send(vec![0u8; frame]).await }
        });
        let got = tokio::time::timeout(Duration::from_secs(10), cv.recv()).await.expect("victim reader ends");
        assert!(got.is_none(), "an oversized message was delivered");
        let reason = cv.close_reason().expect("closed");
        assert_eq!(reason, CloseReason::TooLarge { len: frame as u64, max: max as u64 });
        let on_attacker = tokio::time::timeout(Duration::from_secs(10), ca.closed()).await.expect("attacker told");
        assert!(matches!(on_attacker, CloseReason::Peer { code, .. } if code == codes::TOO_LARGE as u64), "{on_attacker:?}");
        assert!(sent.await.unwrap().is_err(), "the attacker's send fails");
        let took = victim.stats().bytes_in - before;
        // Only what QUIC had in flight when the header arrived, far from
        // the frame (bounded by the receive windows, 16 MiB).
        assert!(took < (frame as u64) / 2, "victim received {took} bytes of a {frame}-byte frame");
        let honest = h.connect_ms(ConnectOpts::default()).await;
        hostile::row(
            "frame header declaring 32 MiB (over the message limit)",
            &format!("max message {} MiB, checked on the 4-byte header", max >> 20),
            &format!("closed (TOO_LARGE) after {} KiB on the wire, nothing allocated for the body", took >> 10),
            None,
            honest,
        );
    });
}

#[test]
fn connection_flood_from_one_address_is_capped_per_ip() {
    let _s = serial();
    runtime::handle().block_on(async {
        let r = hostile::node();
        let rq = r.quic().unwrap();
        let per_ip = rq.config().conn_limits.per_ip;
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let honest_in = rq.incoming_connections();
        let attacker = attacker_node();
        let aq = attacker.quic().unwrap();
        let (out0, in0) = (attacker.stats().bytes_out, attacker.stats().bytes_in);
        let flood = 4 * per_ip;
        let dials: Vec<_> = (0..flood)
            .map(|_| {
                let (aq, to, id) = (aq.clone(), r.local_addr().unwrap(), r.node_id());
                tokio::spawn(async move { aq.connect(to, id).await })
            })
            .collect();
        let mut held = Vec::new();
        let mut refused = 0;
        for d in dials {
            match d.await.unwrap() {
                Ok(c) => held.push(c),
                // The dialler is told why: a cap, not a failed handshake.
                Err(e) => {
                    assert_eq!(e.kind(), "refused", "{e}");
                    refused += 1
                }
            }
        }
        let at_peak = rq.incoming_connections();
        // While the attacker holds its connections, an honest node still
        // joins the rendezvous and the honest pair still connects.
        let t = Instant::now();
        let late = Signal::join_with(hostile::node(), r.local_addr().unwrap(), r.node_id(), SignalConfig::new(public_profile()))
            .await
            .expect("an honest node joins during the flood");
        let join_ms = t.elapsed().as_secs_f64() * 1000.0;
        let honest = h.connect_ms(ConnectOpts::default()).await.max(join_ms);
        let (out, inn) = (attacker.stats().bytes_out - out0, attacker.stats().bytes_in - in0);
        assert!(held.len() <= per_ip, "{} attacker connections accepted, cap {per_ip}", held.len());
        assert!(refused >= flood - per_ip, "only {refused} refused");
        assert!(at_peak <= honest_in + per_ip, "{at_peak} incoming at the peak");
        assert!(rq.refused_connections() as usize >= flood - per_ip);
        drop(late);
        hostile::row(
            "QUIC connection flood from one IP",
            &format!("{per_ip} connections per source IP, 1024 in total"),
            &format!("{} of {flood} accepted, {refused} refused before the handshake; answers {:.2} of the attacker's bytes", held.len(), inn as f64 / out.max(1) as f64),
            None,
            honest,
        );
    });
}

/// Descriptors open in this process now.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn set_nofile_soft(n: u64) -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a stack value.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        let old = r.rlim_cur;
        r.rlim_cur = n.min(r.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        old
    }
}

#[test]
fn many_hard_side_sessions_stay_within_the_fd_budget() {
    let _s = serial();
    // A VM's common limit; the default budget is a quarter of it.
    let limit = 4096u64;
    let old = set_nofile_soft(limit);
    let limit = fd_budget::nofile_soft_limit();
    fd_budget::set_limit(macula_nat_proto::limits::fd_budget::default_limit(limit));
    let (budget, _) = fd_budget::usage();
    runtime::handle().block_on(async {
        let r = hostile::node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let rdv = r.local_addr().unwrap();
        // The victim says it is behind a hard NAT (random ports per
        // destination): against an easy peer it is the birthday hard side,
        // ~511 sockets per session.
        let hard = profile_of(NatType { mapping: Mapping::Pd, allocation: Allocation::Rd, filtering: Filtering::Pd }, None, false);
        let easy = profile_of(NatType { mapping: Mapping::Ei, allocation: Allocation::Pp, filtering: Filtering::Pd }, None, false);
        let victim = Signal::join_with(hostile::node(), rdv, r.node_id(), SignalConfig::new(hard)).await.unwrap();
        let attacker = Arc::new(Signal::join_with(attacker_node(), rdv, r.node_id(), SignalConfig::new(easy)).await.unwrap());
        let base = open_fds();
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(base));
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = std::thread::spawn({
            let (peak, sampling) = (peak.clone(), sampling.clone());
            move || {
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    peak.fetch_max(open_fds(), std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        let sessions = 16;
        let opts = ConnectOpts { timeout: Duration::from_secs(8), allow_relay: false, prefer_direct: false, ..ConnectOpts::default() };
        let attacks: Vec<_> = (0..sessions)
            .map(|_| {
                let (a, to, o) = (attacker.clone(), victim.node().node_id(), opts.clone());
                tokio::spawn(async move { connect_detailed(&a, to, o).await.map(|c| c.strategy) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let honest = h.connect_ms(ConnectOpts::default()).await;
        let mut strategies = Vec::new();
        for a in attacks {
            strategies.push(format!("{:?}", a.await.unwrap().map(|s| s.to_string())));
        }
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap();
        let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("fd budget {budget}, base {base} fds, peak {peak}, limit {limit}; sessions: {strategies:?}");
        assert!(peak <= base + budget + 64, "peak {peak} fds, base {base}, budget {budget}");
        assert!((peak as u64) < limit / 2, "peak {peak} fds near the limit {limit}");
        let (_, used) = fd_budget::usage();
        hostile::row(
            &format!("{sessions} concurrent birthday sessions demanding ~511 hard-side sockets each"),
            &format!("fd budget {budget} (a quarter of RLIMIT_NOFILE {limit}, at most 4096)"),
            &format!("peak {peak} fds open (base {base}); {used} still out after"),
            None,
            honest,
        );
    });
    set_nofile_soft(old);
}

/// The node's socket starts failing every receive (its descriptor now
/// names /dev/null: ENOTSOCK, as a revoked or broken socket would): the
/// node must fail visibly and close, not look open and hear nothing.
#[test]
fn a_failing_receive_loop_closes_the_node_visibly() {
    use std::os::fd::AsRawFd;
    let _s = serial();
    runtime::handle().block_on(async {
        let r = hostile::node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let victim = hostile::node();
        let mut failure = victim.failure();
        let addr = victim.local_addr().unwrap();
        let fd = victim.socket().unwrap().as_raw_fd();
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: `keep` holds the socket's open file (so the poller still
        // watches it and its port stays bound) while `fd` is made to name
        // /dev/null; both are closed by this test or the node.
        let keep = unsafe { libc::dup(fd) };
        assert!(keep >= 0);
        assert!(unsafe { libc::dup2(null.as_raw_fd(), fd) } >= 0);
        let t = Instant::now();
        let poke = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        poke.send_to(b"wake up", addr).unwrap();
        let why = tokio::time::timeout(Duration::from_secs(5), failure.wait_for(Option::is_some))
            .await
            .expect("the node reports its failure")
            .unwrap()
            .clone()
            .unwrap();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(victim.is_closed(), "a failed node is closed");
        assert!(victim.local_addr().is_err());
        let honest = h.connect_ms(ConnectOpts::default()).await;
        // SAFETY: our own duplicate.
        unsafe { libc::close(keep) };
        hostile::row(
            "node socket fails (every receive errors)",
            "the node closes and reports why",
            &format!("closed {ms:.0} ms after the first failing receive: {why}"),
            None,
            honest,
        );
    });
}
