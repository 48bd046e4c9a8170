//! Hostile STUN clients (issue 18 items 7 and 10): every node and every
//! `macula-observer` answers Binding requests from any source, so an
//! attacker tries to make them a reflector (spoofed source, RESPONSE-PORT)
//! or to stall their receive loop (datagrams full of attributes). Each
//! attack runs while an honest pair keeps connecting through a rendezvous
//! on the attacked node; each reports one row of `bench/hostile.md`.
//!
//! Amplification is measured as UDP payload bytes arriving at the third
//! party's socket over UDP payload bytes the attacker sent.

mod hostile;

use macula_nat_core::detect::observer_server::ObserverServer;
use macula_nat_core::{runtime, ConnectOpts, Node, Rendezvous};
use macula_nat_proto::stun::{Attribute, Message};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A socket of a third party that counts the bytes arriving at it.
struct Victim {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Victim {
    fn on(ip: &str) -> Victim {
        let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = sock.local_addr().unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bytes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    b.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Victim { addr, bytes, stop, thread: Some(thread) }
    }

    /// Bytes received, after letting late answers arrive.
    fn finish(mut self) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Sends `datagrams` (cycled) from a thread, `rate` per second for `dur`;
/// returns the bytes sent.
fn flood(send: impl Fn(&[u8]) + Send + 'static, datagrams: Vec<Vec<u8>>, rate: u32, dur: Duration) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut k = 0u64;
        while start.elapsed() < dur {
            // Paced in slices of 1 ms so the rate holds on a loaded machine.
            let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
            while k < due {
                let d = &datagrams[(k % datagrams.len() as u64) as usize];
                send(d);
                sent += d.len() as u64;
                k += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

/// A raw IPv4 socket (`IPPROTO_RAW`, so `IP_HDRINCL`): datagrams with any
/// source address, here only ever loopback ones.
struct Spoofer {
    fd: i32,
}

impl Spoofer {
    fn new() -> Spoofer {
        // SAFETY: plain socket(2); the fd is owned by the Spoofer.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket (the suite runs as root): {}", std::io::Error::last_os_error());
        Spoofer { fd }
    }

    /// One UDP datagram from `src` to `dst` (both 127.0.0.0/8).
    fn send(&self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        assert!(src.ip().is_loopback() && dst.ip().is_loopback());
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        // IPv4 header; the kernel fills in the checksum and the total length.
        p.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&src.ip().octets());
        p.extend_from_slice(&dst.ip().octets());
        // UDP header, checksum 0 (none, allowed over IPv4).
        let ulen = 8 + payload.len();
        p.extend_from_slice(&src.port().to_be_bytes());
        p.extend_from_slice(&dst.port().to_be_bytes());
        p.extend_from_slice(&[(ulen >> 8) as u8, ulen as u8, 0, 0]);
        p.extend_from_slice(payload);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: dst.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: `p` and `to` outlive the call; the lengths are theirs.
        unsafe {
            libc::sendto(
                self.fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
        }
    }
}

impl Drop for Spoofer {
    fn drop(&mut self) {
        // SAFETY: our fd, closed once.
        unsafe { libc::close(self.fd) };
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// The smallest requests an attacker can send (the largest answer per byte
/// before the fix): bare RFC 8489 and RFC 3489 Binding requests.
fn bare_requests() -> Vec<Vec<u8>> {
    (0..64u8)
        .map(|i| {
            if i % 2 == 0 {
                Message::binding_request([i; 12]).encode()
            } else {
                let mut classic = vec![0, 1, 0, 0, 0x5a, i];
                classic.extend_from_slice(&[i; 14]);
                classic
            }
        })
        .collect()
}

/// Honest connects until `attack` ends; the worst time in ms.
async fn honest_during(h: &hostile::Honest, attack: &std::thread::JoinHandle<u64>) -> f64 {
    let mut worst: f64 = 0.0;
    let mut n = 0;
    while !attack.is_finished() || n < 2 {
        worst = worst.max(h.connect_ms(ConnectOpts::default()).await);
        n += 1;
        // Paced like an application, not back to back: a responder takes
        // at most 16 sessions per initiator at a time (a finished one is
        // kept for late connections), and the rendezvous 50 Connects/s.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    worst
}

const FLOOD_RATE: u32 = 5_000;
const FLOOD_FOR: Duration = Duration::from_secs(3);

fn amplification(at_victim: u64, sent: u64) -> f64 {
    at_victim as f64 / sent.max(1) as f64
}

/// (a) RESPONSE-PORT aims a node's answers at another port of the
/// attacker's own IP: a third party's socket on 127.0.0.1.
#[test]
fn response_port_at_a_third_party() {
    runtime::handle().block_on(async {
        let r = hostile::node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let victim = Victim::on("127.0.0.1");
        let target = r.local_addr().unwrap();
        let reqs: Vec<Vec<u8>> =
            (0..64u8).map(|i| Message::binding_request([i; 12]).with(Attribute::ResponsePort(victim.addr.port())).encode()).collect();
        let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
        let attack = flood(move |d| drop(attacker.send_to(d, target)), reqs, FLOOD_RATE, FLOOD_FOR);
        let honest_ms = honest_during(&h, &attack).await;
        let sent = attack.join().unwrap();
        let got = victim.finish();
        let amp = amplification(got, sent);
        println!("RESPONSE-PORT: {sent} bytes sent, {got} at the third party ({amp:.3}x), refused {}", r.stats().stun_refused);
        hostile::row(
            "STUN RESPONSE-PORT at a third party's port (node)",
            "answers <= request bytes + 1 KiB per IP; 50 req/s per IP",
            &format!("{got} B at the victim for {sent} B sent"),
            Some(amp),
            honest_ms,
        );
        assert!(amp <= 1.0, "amplification {amp}");
    });
}

/// (b) Binding requests from a spoofed source (a third party's socket on
/// 127.0.0.2) at a node and at an observer.
#[test]
fn spoofed_source_flood_at_a_node_and_an_observer() {
    runtime::handle().block_on(async {
        let r = hostile::node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let obs = ObserverServer::start("127.0.0.1:0".parse().unwrap(), Some("127.0.0.2:0".parse().unwrap()), Some("macula-observer".into())).unwrap();
        for (what, target) in [("node", r.local_addr().unwrap()), ("observer", obs.primary())] {
            let victim = Victim::on("127.0.0.2");
            let (src, dst) = (v4(victim.addr), v4(target));
            let spoofer = Spoofer::new();
            let attack = flood(move |d| spoofer.send(src, dst, d), bare_requests(), FLOOD_RATE, FLOOD_FOR);
            let honest_ms = honest_during(&h, &attack).await;
            let sent = attack.join().unwrap();
            let got = victim.finish();
            let amp = amplification(got, sent);
            println!("spoofed flood at the {what}: {sent} bytes sent, {got} at the third party ({amp:.3}x)");
            hostile::row(
                &format!("STUN Binding flood from a spoofed source ({what})"),
                "answers <= request bytes + 1 KiB per IP; 50 req/s per IP, 10,000/s in all",
                &format!("{got} B at the victim for {sent} B sent"),
                Some(amp),
                honest_ms,
            );
            assert!(amp <= 1.0, "{what}: amplification {amp}");
        }
        // A real client is still answered in full by both. On an IP of its
        // own: the honest pair's nodes on 127.0.0.1 spend that IP's
        // allowance at the rendezvous with their bare NAT-opening requests.
        let client = UdpSocket::bind("127.0.0.3:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for target in [r.local_addr().unwrap(), obs.primary()] {
            client.send_to(&Message::binding_request([9; 12]).with_fingerprint().encode(), target).unwrap();
            let mut buf = [0u8; 1500];
            let (n, _) = client
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{target} did not answer a real client ({e}): node {:?}, observer {:?}", r.stats(), obs.stats.snapshot()));
            assert_eq!(Message::decode(&buf[..n]).unwrap().mapped_address(), Some(client.local_addr().unwrap()));
        }
    });
}

/// The largest STUN datagram UDP carries, full of empty attributes of
/// distinct unknown comprehension-required types.
fn max_attribute_datagram(tid: u8) -> Vec<u8> {
    let mut d = Message::binding_request([tid; 12]).encode();
    let body = (65_507 - 20) & !3;
    for i in 0..body / 4 {
        d.extend_from_slice(&(0x0030u16 + (i % 0x7F00) as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
    }
    let len = (d.len() - 20) as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    d
}

/// (c) Datagrams with the most attributes a datagram can hold at a node:
/// decoding one is bounded, and the receive loop keeps answering a real
/// client and carrying the honest pair's QUIC.
#[test]
fn max_attribute_datagrams_do_not_stall_the_receive_loop() {
    let crafted = max_attribute_datagram(1);
    let mut decode_worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let _ = std::hint::black_box(Message::decode_any(std::hint::black_box(&crafted)));
        decode_worst = decode_worst.max(t.elapsed());
    }
    runtime::handle().block_on(async {
        let r = hostile::node();
        let _rdv = Rendezvous::serve(r.clone()).unwrap();
        let h = hostile::Honest::join(&r).await;
        let target = r.local_addr().unwrap();
        let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagrams: Vec<Vec<u8>> = (0..4).map(max_attribute_datagram).collect();
        // 2,000/s of 64 KiB: 131 MB/s at the node's receive loop.
        let attack = flood(move |d| drop(attacker.send_to(d, target)), datagrams, 2_000, FLOOD_FOR);
        let (answer_ms, honest_ms) = tokio::join!(answered_during(&r, &attack), honest_during(&h, &attack));
        let sent = attack.join().unwrap();
        println!(
            "max-attribute flood: {sent} bytes sent; decode {decode_worst:?} each; a real client answered within {answer_ms:.1} ms; dropped {}",
            r.stats().stun_dropped
        );
        hostile::row(
            "STUN datagrams of 16,371 attributes (node)",
            "64 attributes per message",
            &format!("decode {:.1} us worst; real client answered in {answer_ms:.1} ms worst", decode_worst.as_secs_f64() * 1e6),
            None,
            honest_ms,
        );
        assert!(decode_worst < Duration::from_millis(1), "decode {decode_worst:?}");
        assert!(answer_ms < 1000.0, "a real client waited {answer_ms} ms");
    });
}

/// A real client's Binding requests to `node` while `attack` runs: the
/// worst time to an answer, in ms (each is given 2 s).
async fn answered_during(node: &Arc<Node>, attack: &std::thread::JoinHandle<u64>) -> f64 {
    let target = node.local_addr().unwrap();
    let client = tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let mut worst: f64 = 0.0;
    let mut k = 0u8;
    while !attack.is_finished() && k < 20 {
        k += 1;
        // As large as the answer, as our clients send them (`sized_for_answer`).
        let req = Message::binding_request([k; 12]).with(Attribute::Software(format!("{:<96}", "macula_nat"))).with_fingerprint().encode();
        let t = Instant::now();
        client.send_to(&req, target).await.unwrap();
        let mut buf = [0u8; 1500];
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let n = client.recv(&mut buf).await.unwrap();
                if Message::decode(&buf[..n]).is_ok_and(|m| m.transaction_id == [k; 12]) {
                    return;
                }
            }
        })
        .await;
        let ms = if answered.is_ok() { t.elapsed().as_secs_f64() * 1000.0 } else { 2000.0 };
        worst = worst.max(ms);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worst
}
