//! A hostile peer for the soak (`bench/soak.sh`): every attack of issue 18
//! at once, against a public node (rendezvous + relay) and honest nodes,
//! speaking the real protocols (STUN, QUIC with node keys, signalling,
//! relay messages and frames, message framing) on loopback only.
//!
//! Usage:
//! ```text
//! hostile_peer --public HEX@IP:PORT [--honest HEX@IP:PORT]... [--secs N]
//!              [--attacks all|name,name,...] [--scale F] [--bind-ip IP]
//! ```
//! `--public`: the node serving as rendezvous and relay; `--honest`: nodes
//! joined at it (the targets of Connects, unsolicited connections and
//! STUN). Every address must be loopback; the spoofed sources are
//! 127.0.0.66 (raw IP_HDRINCL socket, root only). `--scale` multiplies
//! every rate (1.0: the rates below).
//!
//! Third parties: reflection attacks aim at sockets of this process that
//! only count what arrives (RESPONSE-PORT at one, spoofed sources at
//! another, Connect candidates at a third), so each attack's amplification
//! is bytes at its third party / bytes the attack sent.
//!
//! At the end it prints one markdown row per attack:
//! `| attack | volume | bytes sent | third-party bytes | amplification | observed |`.

use bytes::Bytes;
use macula_nat_core::{runtime, Connection, Identity, Node, NodeConfig, QuicConfig};
use macula_nat_proto::nat::{Allocation, Confidence, Filtering, Mapping};
use macula_nat_proto::peer_info::PeerInfo;
use macula_nat_proto::relay::frame;
use macula_nat_proto::relay::msg::RelayMsg;
use macula_nat_proto::signal::{self, HelloKind, Msg, NodeId, Profile, SessionId};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

type Id = NodeId;

const ATTACKS: &[&str] = &[
    "stun_flood",
    "stun_response_port",
    "stun_spoofed",
    "stun_attrs",
    "connect_flood",
    "control_stall",
    "relay_ping",
    "relay_hoard",
    "relay_small_frames",
    "quic_flood",
    "big_frame",
    "term_bomb",
    "mailbox_flood",
];

/// Source address of spoofed datagrams, where the spoof third party listens.
const SPOOF_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);

/// The attacker's own address (`--bind-ip`, default 127.0.0.1): every socket
/// and node of the attacks binds there. An attacker is another host, so the
/// soak gives it an address of its own (per-IP caps then meet it, not the
/// honest nodes).
static BIND_IP: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

fn bind_any_port() -> SocketAddr {
    SocketAddr::new(*BIND_IP.get_or_init(|| Ipv4Addr::LOCALHOST.into()), 0)
}

struct Args {
    public: (Id, SocketAddr),
    honest: Vec<(Id, SocketAddr)>,
    secs: u64,
    attacks: Vec<String>,
    scale: f64,
}

/// What one attack did.
#[derive(Default)]
struct Tally {
    units: AtomicU64,
    bytes: AtomicU64,
    third_party: Option<Arc<AtomicU64>>,
    /// Named observations (max or count), printed as `name=value`.
    seen: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn sent(&self, n: usize) {
        self.units.fetch_add(1, Relaxed);
        self.bytes.fetch_add(n as u64, Relaxed);
    }
    fn count(&self, what: &'static str) {
        *self.seen.lock().unwrap().entry(what).or_default() += 1;
    }
    fn max(&self, what: &'static str, v: u64) {
        let mut s = self.seen.lock().unwrap();
        let e = s.entry(what).or_default();
        *e = (*e).max(v);
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("hostile_peer: {e}");
        std::process::exit(2);
    });
    runtime::handle().block_on(run(args));
}

async fn run(a: Args) {
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let a = Arc::new(a);
    let mut tallies: Vec<(&'static str, Arc<Tally>)> = Vec::new();
    let mut tasks = Vec::new();
    for &name in ATTACKS {
        if !a.attacks.iter().any(|x| x == name || x == "all") {
            continue;
        }
        let third = match name {
            "stun_response_port" | "connect_flood" => Some(counting_socket(Ipv4Addr::LOCALHOST).await),
            "stun_spoofed" => Some(counting_socket(SPOOF_IP).await),
            _ => None,
        };
        let t = Arc::new(Tally { third_party: third.as_ref().map(|(_, c)| c.clone()), ..Tally::default() });
        let third_addr = third.map(|(addr, _)| addr);
        tallies.push((name, t.clone()));
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let r = match name {
                "stun_flood" => stun_flood(&a, &t, deadline).await,
                "stun_response_port" => stun_response_port(&a, &t, third_addr.unwrap(), deadline).await,
                "stun_spoofed" => stun_spoofed(&a, &t, third_addr.unwrap(), deadline).await,
                "stun_attrs" => stun_attrs(&a, &t, deadline).await,
                "connect_flood" => connect_flood(&a, &t, third_addr.unwrap(), deadline).await,
                "control_stall" => control_stall(&a, &t, deadline).await,
                "relay_ping" => relay_ping(&a, &t, deadline).await,
                "relay_hoard" => relay_hoard(&a, &t, deadline).await,
                "relay_small_frames" => relay_small_frames(&a, &t, deadline).await,
                "quic_flood" => quic_flood(&a, &t, deadline).await,
                "big_frame" => big_frame(&a, &t, deadline).await,
                "term_bomb" => term_bomb(&a, &t, deadline).await,
                "mailbox_flood" => mailbox_flood(&a, &t, deadline).await,
                _ => Ok(()),
            };
            if let Err(e) = r {
                eprintln!("hostile_peer: {name} stopped: {e}");
                t.count("stopped_on_error");
            }
        }));
    }
    let started = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()))).await;
        let total: u64 = tallies.iter().map(|(_, t)| t.bytes.load(Relaxed)).sum();
        eprintln!("hostile_peer: {:.0} s, {:.1} MiB sent", started.elapsed().as_secs_f64(), total as f64 / 1048576.0);
    }
    // Attacks end at the deadline; a task stuck in a send the victim stalls
    // is abandoned rather than waited for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for t in &tasks {
        t.abort();
    }
    println!("| attack | volume | bytes sent | third-party bytes | amplification | observed |");
    println!("|---|---|---|---|---|---|");
    for (name, t) in &tallies {
        let bytes = t.bytes.load(Relaxed);
        let (third, amp) = match &t.third_party {
            Some(c) => {
                let got = c.load(Relaxed);
                (got.to_string(), if bytes == 0 { "-".to_string() } else { format!("{:.3}", got as f64 / bytes as f64) })
            }
            None => ("-".into(), "-".into()),
        };
        let seen: Vec<String> = t.seen.lock().unwrap().iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("| {name} | {} | {bytes} | {third} | {amp} | {} |", t.units.load(Relaxed), seen.join(" "));
    }
}

// ---------------------------------------------------------------- STUN

/// A third party: a socket that only counts the bytes arriving at it.
async fn counting_socket(ip: Ipv4Addr) -> (SocketAddr, Arc<AtomicU64>) {
    let s = UdpSocket::bind((ip, 0)).await.expect("third-party socket");
    let addr = s.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((len, _)) = s.recv_from(&mut buf).await {
            c.fetch_add(len as u64, Relaxed);
        }
    });
    (addr, n)
}

/// A Binding request with the given attributes (type, value), hand-written
/// so that it can say what our own encoder would refuse to.
fn binding_request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + attrs.len() * 8);
    b.extend_from_slice(&0x0001u16.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    b.extend_from_slice(&rand_bytes::<12>());
    for (t, v) in attrs {
        b.extend_from_slice(&t.to_be_bytes());
        b.extend_from_slice(&(v.len() as u16).to_be_bytes());
        b.extend_from_slice(v);
        while b.len() % 4 != 0 {
            b.push(0);
        }
    }
    let len = (b.len() - 20) as u16;
    b[2..4].copy_from_slice(&len.to_be_bytes());
    b
}

const RESPONSE_PORT: u16 = 0x0027;
const CHANGE_REQUEST: u16 = 0x0003;

fn stun_targets(a: &Args) -> Vec<SocketAddr> {
    std::iter::once(a.public.1).chain(a.honest.iter().map(|h| h.1)).collect()
}

/// Paces a loop at `per_s` iterations per second (in 10 ms batches).
struct Pace {
    per_tick: f64,
    owed: f64,
    tick: tokio::time::Interval,
}

impl Pace {
    fn new(per_s: f64) -> Pace {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Pace { per_tick: per_s / 100.0, owed: 0.0, tick }
    }
    /// Waits for the next tick; how many to send in it.
    async fn next(&mut self) -> usize {
        self.tick.tick().await;
        self.owed += self.per_tick;
        let n = self.owed.floor();
        self.owed -= n;
        n as usize
    }
}

/// Binding requests as fast as the rate allows from one socket; the answers
/// are read and counted (they come back to the sender).
async fn stun_flood(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    let s = Arc::new(UdpSocket::bind(bind_any_port()).await?);
    let r = s.clone();
    let answers = Arc::new(AtomicU64::new(0));
    let an = answers.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, _)) = r.recv_from(&mut buf).await {
            an.fetch_add(n as u64, Relaxed);
        }
    });
    let targets = stun_targets(a);
    let mut pace = Pace::new(3000.0 * a.scale);
    let mut i = 0;
    while Instant::now() < deadline {
        for _ in 0..pace.next().await {
            let m = binding_request(&[]);
            let _ = s.send_to(&m, targets[i % targets.len()]).await;
            t.sent(m.len());
            i += 1;
        }
    }
    reader.abort();
    t.max("answer_bytes", answers.load(Relaxed));
    Ok(())
}

/// Binding requests asking for the answer at another port (RFC 5780
/// RESPONSE-PORT), that of the third party, plus CHANGE-REQUEST.
async fn stun_response_port(a: &Args, t: &Tally, third: SocketAddr, deadline: Instant) -> std::io::Result<()> {
    let s = UdpSocket::bind(bind_any_port()).await?;
    let targets = stun_targets(a);
    let port = third.port().to_be_bytes();
    let rp: [u8; 4] = [port[0], port[1], 0, 0];
    let mut pace = Pace::new(1000.0 * a.scale);
    let mut i = 0;
    while Instant::now() < deadline {
        for _ in 0..pace.next().await {
            let m = if i % 2 == 0 {
                binding_request(&[(RESPONSE_PORT, &rp)])
            } else {
                binding_request(&[(RESPONSE_PORT, &rp), (CHANGE_REQUEST, &[0, 0, 0, 6])])
            };
            let _ = s.send_to(&m, targets[i % targets.len()]).await;
            t.sent(m.len());
            i += 1;
        }
    }
    Ok(())
}

/// Binding requests from a forged source (the third party's address) through
/// a raw IP_HDRINCL socket: every answer goes to the third party.
async fn stun_spoofed(a: &Args, t: &Tally, third: SocketAddr, deadline: Instant) -> std::io::Result<()> {
    let SocketAddr::V4(src) = third else { return Ok(()) };
    let targets: Vec<SocketAddrV4> = stun_targets(a)
        .into_iter()
        .filter_map(|d| match d {
            SocketAddr::V4(v) => Some(v),
            _ => None,
        })
        .collect();
    let raw = RawSocket::open()?;
    let mut pace = Pace::new(1000.0 * a.scale);
    let mut i = 0;
    while Instant::now() < deadline {
        for _ in 0..pace.next().await {
            let m = binding_request(&[]);
            let dst = targets[i % targets.len()];
            raw.send(src, dst, &m)?;
            t.sent(m.len() + 28);
            i += 1;
        }
    }
    Ok(())
}

/// The largest datagrams loopback carries, full of distinct unknown
/// comprehension-optional attributes (each header only): the decoder's
/// work per datagram is what this measures.
async fn stun_attrs(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    let s = UdpSocket::bind(bind_any_port()).await?;
    let targets = stun_targets(a);
    let mut pace = Pace::new(30.0 * a.scale);
    let mut i = 0;
    while Instant::now() < deadline {
        for _ in 0..pace.next().await {
            let mut m = binding_request(&[]);
            let mut k = 0u16;
            while m.len() + 4 <= 65000 {
                m.extend_from_slice(&(0x8100u16.wrapping_add(k % 0x7E00)).to_be_bytes());
                m.extend_from_slice(&[0, 0]);
                k = k.wrapping_add(1);
            }
            let len = (m.len() - 20) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
            let _ = s.send_to(&m, targets[i % targets.len()]).await;
            t.sent(m.len());
            i += 1;
        }
    }
    Ok(())
}

/// A raw IPv4 socket writing its own headers (root).
struct RawSocket(i32);

impl RawSocket {
    fn open() -> std::io::Result<RawSocket> {
        // SAFETY: plain socket(2); the descriptor is owned by the result.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawSocket(fd))
    }

    /// One UDP datagram from `src` (forged) to `dst`; the kernel fills the
    /// IP checksum and id, the UDP checksum is 0 (none, allowed on IPv4).
    fn send(&self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> std::io::Result<()> {
        if !dst.ip().is_loopback() {
            return Err(std::io::Error::other("raw socket: loopback only"));
        }
        let total = 20 + 8 + payload.len();
        let mut p = Vec::with_capacity(total);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&src.ip().octets());
        p.extend_from_slice(&dst.ip().octets());
        p.extend_from_slice(&src.port().to_be_bytes());
        p.extend_from_slice(&dst.port().to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: dst.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*dst.ip()).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: `p` and `sin` outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.0,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

// ---------------------------------------------------------- signalling

fn fresh_node(cfg: Option<QuicConfig>) -> std::io::Result<Arc<Node>> {
    let n = Node::open(NodeConfig { bind: bind_any_port() }, Identity::generate()).map_err(std::io::Error::other)?;
    if let Some(cfg) = cfg {
        n.quic_with(cfg).map_err(std::io::Error::other)?;
    }
    Ok(n)
}

async fn dial(node: &Arc<Node>, to: (Id, SocketAddr)) -> std::io::Result<Connection> {
    let q = node.quic().map_err(std::io::Error::other)?;
    tokio::time::timeout(Duration::from_secs(10), q.connect(to.1, to.0))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
        .map_err(std::io::Error::other)
}

/// A control connection to the rendezvous (Hello(Control), then Registered).
async fn join_control(node: &Arc<Node>, rdv: (Id, SocketAddr), read_registered: bool) -> std::io::Result<Connection> {
    let c = dial(node, rdv).await?;
    c.send(Msg::Hello(HelloKind::Control).encode()).await.map_err(std::io::Error::other)?;
    if read_registered {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.recv()).await;
    }
    Ok(c)
}

/// The profile an initiator claims: `candidates` all at the third party;
/// `hard` claims a port-dependent, random-allocation NAT (birthday probing
/// on the other side: sockets).
fn claimed_profile(third: SocketAddr, hard: bool) -> Profile {
    let info = PeerInfo {
        mapping: if hard { Mapping::Pd } else { Mapping::Ei },
        filtering: if hard { Filtering::Pd } else { Filtering::Ei },
        allocation: if hard { Allocation::Rd } else { Allocation::Pp },
        confidence: Confidence::High,
        public_addr: Some(third),
        port_delta: None,
        no_nat: false,
        detected_at: 1,
        endpoints: vec![],
        rendezvous: vec![],
    };
    Profile {
        info,
        local_port: third.port(),
        answer_port: 0,
        alloc_base: 0,
        candidates: vec![third; signal::MAX_CANDIDATES],
        relays: vec![],
    }
}

/// Connects through the rendezvous at the honest nodes: the upgrade flag,
/// 255 attempts, 16 candidates at the third party; every other one followed
/// by a Reject of its own session (the leaked-task attack), every fourth
/// claiming a hard NAT (birthday probing: file descriptors).
async fn connect_flood(a: &Args, t: &Tally, third: SocketAddr, deadline: Instant) -> std::io::Result<()> {
    if a.honest.is_empty() {
        return Ok(());
    }
    let node = fresh_node(None)?;
    let mut c = join_control(&node, a.public, true).await?;
    let reader = drain(c.clone());
    let mut pace = Pace::new(20.0 * a.scale);
    let mut i = 0usize;
    let base = node.stats().bytes_out;
    while Instant::now() < deadline {
        for _ in 0..pace.next().await {
            let to = a.honest[i % a.honest.len()].0;
            let session = SessionId::random();
            let flags = if i % 8 == 7 { signal::FLAG_NO_DIRECT } else { signal::FLAG_UPGRADE };
            let m = Msg::Connect { to, session, flags, attempts: 255, profile: claimed_profile(third, i % 4 == 3) };
            if c.send(m.encode()).await.is_err() {
                t.count("control_reconnects");
                c = join_control(&node, a.public, true).await?;
            }
            if i % 2 == 1 {
                let _ = c.send(Msg::Reject { peer: to, session, reason: signal::reject::BAD_REQUEST }.encode()).await;
            }
            i += 1;
            t.units.fetch_add(1, Relaxed);
        }
        t.bytes.store(node.stats().bytes_out - base, Relaxed);
    }
    reader.abort();
    t.bytes.store(node.stats().bytes_out - base, Relaxed);
    Ok(())
}

/// Reads and counts whatever a connection says, so only the attack under
/// test stalls anything.
fn drain(c: Connection) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while c.recv().await.is_some() {} })
}

/// A peer that joins the rendezvous with tiny receive windows and never
/// reads its control stream, while a second identity sends Connects at it
/// (each one is an Incoming the rendezvous must send it).
async fn control_stall(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    let tiny = QuicConfig { stream_window: 2048, connection_window: 4096, ..QuicConfig::default() };
    let stalled = fresh_node(Some(tiny))?;
    let _held = join_control(&stalled, a.public, false).await?;
    let talker = fresh_node(None)?;
    let c = join_control(&talker, a.public, true).await?;
    let _reader = drain(c.clone());
    let base = talker.stats().bytes_out + stalled.stats().bytes_out;
    let third: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut pace = Pace::new(50.0 * a.scale);
    while Instant::now() < deadline {
        for _ in 0..pace.next().await {
            let m = Msg::Connect {
                to: stalled.node_id(),
                session: SessionId::random(),
                flags: signal::FLAG_NO_DIRECT,
                attempts: 1,
                profile: claimed_profile(third, false),
            };
            match tokio::time::timeout(Duration::from_secs(2), c.send(m.encode())).await {
                Ok(Ok(())) => t.units.fetch_add(1, Relaxed),
                _ => {
                    t.count("talker_send_stalled");
                    break;
                }
            };
        }
        t.bytes.store(talker.stats().bytes_out + stalled.stats().bytes_out - base, Relaxed);
    }
    Ok(())
}

// --------------------------------------------------------------- relay

/// A relay client connection (Hello(Relay)), optionally reserved; whether
/// the relay said it reserved.
async fn relay_client(node: &Arc<Node>, relay: (Id, SocketAddr), reserve: bool) -> std::io::Result<(Connection, bool)> {
    let c = dial(node, relay).await?;
    c.send(Msg::Hello(HelloKind::Relay).encode()).await.map_err(std::io::Error::other)?;
    if reserve {
        // As the real client does: the Status that answers the Hello first
        // (a Reserve right behind the Hello is sometimes answered
        // reserved=false), then the Reserve and its Status.
        let _ = tokio::time::timeout(Duration::from_secs(5), c.recv()).await;
        c.send(RelayMsg::Reserve.encode()).await.map_err(std::io::Error::other)?;
        let reserved = match tokio::time::timeout(Duration::from_secs(5), c.recv()).await {
            Ok(Some(m)) => matches!(RelayMsg::decode(&m), Ok(RelayMsg::Status { reserved: true, .. })),
            _ => false,
        };
        return Ok((c, reserved));
    }
    Ok((c, false))
}

/// Pings as fast as the rate allows on a connection that never reads: the
/// Pongs pile up at the relay (its send queue to us) and in our window.
async fn relay_ping(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    let tiny = QuicConfig { stream_window: 2048, connection_window: 4096, ..QuicConfig::default() };
    let node = fresh_node(Some(tiny))?;
    let (c, _) = relay_client(&node, a.public, false).await?;
    let mut pace = Pace::new(2000.0 * a.scale);
    let mut nonce = 0u32;
    while Instant::now() < deadline {
        for _ in 0..pace.next().await {
            let m = RelayMsg::Ping { nonce }.encode();
            match tokio::time::timeout(Duration::from_secs(2), c.send(m.clone())).await {
                Ok(Ok(())) => t.sent(m.len() + 4),
                Ok(Err(_)) => {
                    t.count("closed_by_relay");
                    return Ok(());
                }
                Err(_) => t.count("send_stalled_2s"),
            }
            nonce = nonce.wrapping_add(1);
        }
    }
    Ok(())
}

/// What a relay client heard, kept by its reader.
#[derive(Default)]
struct RelayHeard {
    opened: AtomicU64,
    refused: AtomicU64,
    incoming_accepted: AtomicU64,
    ended: AtomicU64,
    reserved: AtomicU64,
    last_session: AtomicU64,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

/// Reads a relay client's messages: accepts every Incoming (so sessions
/// become active and stay), counts the rest.
fn relay_reader(c: Connection, heard: Arc<RelayHeard>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(m) = c.recv().await {
            match RelayMsg::decode(&m) {
                Ok(RelayMsg::Incoming { session, .. }) => {
                    let _ = c.send(RelayMsg::Accept { session }.encode()).await;
                    heard.incoming_accepted.fetch_add(1, Relaxed);
                }
                Ok(RelayMsg::Opened { session, .. }) => {
                    heard.opened.fetch_add(1, Relaxed);
                    heard.last_session.store(session, Relaxed);
                }
                Ok(RelayMsg::Refused { reason, .. }) => {
                    heard.refused.fetch_add(1, Relaxed);
                    *heard.refusals.lock().unwrap().entry(reason.name()).or_default() += 1;
                }
                Ok(RelayMsg::Ended { .. }) => {
                    heard.ended.fetch_add(1, Relaxed);
                }
                Ok(RelayMsg::Status { reserved: true, .. }) => {
                    heard.reserved.store(1, Relaxed);
                }
                _ => {}
            }
        }
    })
}

/// Eight identities reserve at the relay and open sessions to each other
/// (accepted: active sessions) and to the honest nodes (pending) every
/// second until the relay refuses; what they hold is what others lack.
/// Starts 5 s in.
async fn relay_hoard(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    // After relay_small_frames has its session: the two attacks would
    // otherwise measure each other.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let node = fresh_node(None)?;
        let (c, reserved) = relay_client(&node, a.public, true).await?;
        if reserved {
            t.count("reserved");
        }
        let heard = Arc::new(RelayHeard::default());
        let r = relay_reader(c.clone(), heard.clone());
        clients.push((node, c, heard, r));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<Id> = clients.iter().map(|c| c.0.node_id()).collect();
    let base: u64 = clients.iter().map(|c| c.0.stats().bytes_out).sum();
    let mut tag = 0u32;
    let mut pace = Pace::new(1.0);
    while Instant::now() < deadline {
        if pace.next().await == 0 {
            continue;
        }
        for (k, (_, c, _, _)) in clients.iter().enumerate() {
            let targets = ids.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, id)| *id).chain(a.honest.iter().map(|h| h.0));
            for to in targets {
                tag = tag.wrapping_add(1);
                let m = RelayMsg::Open { to, tag }.encode();
                if c.send(m.clone()).await.is_ok() {
                    t.sent(m.len() + 4);
                }
            }
        }
        let opened: u64 = clients.iter().map(|c| c.2.opened.load(Relaxed)).sum();
        let ended: u64 = clients.iter().map(|c| c.2.ended.load(Relaxed)).sum();
        t.max("opened_total", opened);
        t.max("held_max", opened.saturating_sub(ended));
        t.max("refused_total", clients.iter().map(|c| c.2.refused.load(Relaxed)).sum());
        t.bytes.store(clients.iter().map(|c| c.0.stats().bytes_out).sum::<u64>() - base, Relaxed);
    }
    Ok(())
}

/// One session between two identities of ours, then frames of 100 payload
/// bytes (under the 128-byte small-frame threshold) as fast as the rate
/// allows from the session's leg.
async fn relay_small_frames(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    let na = fresh_node(None)?;
    let nb = fresh_node(None)?;
    let (ca, _) = relay_client(&na, a.public, true).await?;
    let (cb, _) = relay_client(&nb, a.public, true).await?;
    let ha = Arc::new(RelayHeard::default());
    let hb = Arc::new(RelayHeard::default());
    let _ra = relay_reader(ca.clone(), ha.clone());
    let _rb = relay_reader(cb.clone(), hb.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut session = None;
    for tag in 0..20u32 {
        let _ = ca.send(RelayMsg::Open { to: nb.node_id(), tag }.encode()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if ha.opened.load(Relaxed) > 0 {
            session = Some(ha.last_session.load(Relaxed));
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let Some(session) = session else {
        t.count("no_session_opened");
        for (why, n) in ha.refusals.lock().unwrap().iter() {
            t.max(why, *n);
        }
        return Ok(());
    };
    let f = frame::encode(session, &[0x5A; 100]);
    let mut pace = Pace::new(5000.0 * a.scale);
    while Instant::now() < deadline {
        for _ in 0..pace.next().await {
            if na.send_to(&f, a.public.1).await.is_ok() {
                t.sent(f.len());
            }
        }
    }
    t.max("received_by_other_leg_bytes", nb.stats().bytes_in);
    Ok(())
}

// ------------------------------------------------------ connections

/// Many QUIC connections from one address (one node), to the public node
/// and the honest ones, held open; refused or closed ones are counted and
/// replaced.
async fn quic_flood(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    let node = fresh_node(None)?;
    let targets: Vec<(Id, SocketAddr)> = std::iter::once(a.public).chain(a.honest.iter().copied()).collect();
    let mut held: Vec<Connection> = Vec::new();
    let base = node.stats().bytes_out;
    let mut pace = Pace::new(50.0 * a.scale);
    let mut i = 0;
    while Instant::now() < deadline {
        let n = pace.next().await;
        held.retain(|c| c.close_reason().is_none());
        t.max("held_max", held.len() as u64);
        if held.len() >= 600 {
            continue;
        }
        for _ in 0..n {
            let to = targets[i % targets.len()];
            i += 1;
            t.units.fetch_add(1, Relaxed);
            match dial(&node, to).await {
                Ok(c) => held.push(c),
                Err(_) => t.count("refused_or_failed"),
            }
        }
        t.bytes.store(node.stats().bytes_out - base, Relaxed);
    }
    Ok(())
}

/// Unsolicited connections to the honest nodes, each announcing one frame
/// over the default message limit (64 MiB + 1); a peer that keeps the
/// limit closes the connection after the header.
async fn big_frame(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    if a.honest.is_empty() {
        return Ok(());
    }
    let big = QuicConfig { max_frame: u32::MAX as usize, ..QuicConfig::default() };
    let node = fresh_node(Some(big))?;
    let msg = Bytes::from(vec![0x83u8; (64 << 20) + 1]);
    let base = node.stats().bytes_out;
    let mut i = 0;
    while Instant::now() < deadline {
        let to = a.honest[i % a.honest.len()];
        i += 1;
        if let Ok(c) = dial(&node, to).await {
            t.units.fetch_add(1, Relaxed);
            match tokio::time::timeout(Duration::from_secs(5), c.send(msg.clone())).await {
                Ok(Ok(())) => t.count("whole_frame_taken"),
                Ok(Err(_)) => t.count("closed_by_peer"),
                Err(_) => t.count("stalled_5s"),
            }
            c.close("done");
        }
        t.bytes.store(node.stats().bytes_out - base, Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// Unsolicited connections to the honest nodes carrying an external-format
/// term compressed with zlib (tag 80) that declares 4 GiB and inflates to
/// 16 MiB of zeros (a 100 KiB message).
async fn term_bomb(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    if a.honest.is_empty() {
        return Ok(());
    }
    let node = fresh_node(None)?;
    let bomb = Bytes::from(compressed_term_bomb(u32::MAX, 16 << 20));
    let base = node.stats().bytes_out;
    let mut i = 0;
    while Instant::now() < deadline {
        let to = a.honest[i % a.honest.len()];
        i += 1;
        if let Ok(c) = dial(&node, to).await {
            for _ in 0..4 {
                if c.send(bomb.clone()).await.is_err() {
                    t.count("closed_by_peer");
                    break;
                }
                t.units.fetch_add(1, Relaxed);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.close("done");
        }
        t.bytes.store(node.stats().bytes_out - base, Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// `131, 80, declared(u32), zlib(deflate(zeros))`: one fixed-Huffman block,
/// a literal 0 then (length 258, distance 1) matches, 13 bits per 258
/// bytes, written by hand (no compression crate in the tree).
fn compressed_term_bomb(declared: u32, inflated: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, v: u32, len: u32) {
            for i in 0..len {
                self.acc |= ((v >> i) & 1) << self.n;
                self.n += 1;
                if self.n == 8 {
                    self.out.push(self.acc as u8);
                    self.acc = 0;
                    self.n = 0;
                }
            }
        }
        /// Huffman codes go most significant bit first.
        fn huff(&mut self, code: u32, len: u32) {
            for i in (0..len).rev() {
                self.put((code >> i) & 1, 1);
            }
        }
    }
    let mut b = Bits { out: vec![131, 80], acc: 0, n: 0 };
    b.out.extend_from_slice(&declared.to_be_bytes());
    b.out.extend_from_slice(&[0x78, 0x01]);
    b.put(1, 1); // BFINAL
    b.put(1, 2); // fixed Huffman
    b.huff(0x30, 8); // literal 0
    let matches = (inflated - 1) / 258;
    for _ in 0..matches {
        b.huff(0b1100_0101, 8); // length code 285: 258
        b.huff(0, 5); // distance code 0: 1
    }
    b.huff(0, 7); // end of block
    if b.n > 0 {
        b.out.push(b.acc as u8);
    }
    let len = (1 + matches * 258) as u32;
    let adler = ((len % 65521) << 16) | 1;
    b.out.extend_from_slice(&adler.to_be_bytes());
    b.out
}

/// Unsolicited connections to every honest node (`FLOOD_CONNS` each at
/// any time, one address) sending 1 KiB binaries as fast as `send` returns
/// to owners that never read them: flow control must hold the receiver and
/// push back here (a send waits, never cancelled: that would break the
/// framing); the number of such connections is what caps on connections
/// per address bound. A connection the owner closes is replaced.
const FLOOD_CONNS: usize = 4;

async fn mailbox_flood(a: &Args, t: &Tally, deadline: Instant) -> std::io::Result<()> {
    let node = fresh_node(None)?;
    let mut term = vec![131u8, 109];
    term.extend_from_slice(&1024u32.to_be_bytes());
    term.extend_from_slice(&[0x42; 1024]);
    let term = Bytes::from(term);
    let sent = Arc::new(AtomicU64::new(0));
    let dialled = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for &to in &a.honest {
        for _ in 0..FLOOD_CONNS {
            let (term, sent, node, dialled) = (term.clone(), sent.clone(), node.clone(), dialled.clone());
            senders.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let Ok(c) = dial(&node, to).await else {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    };
                    dialled.fetch_add(1, Relaxed);
                    while c.send(term.clone()).await.is_ok() {
                        sent.fetch_add(1, Relaxed);
                    }
                }
            }));
        }
    }
    let base = node.stats().bytes_out;
    let mut last = 0;
    let mut rates = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = sent.load(Relaxed);
        rates.push((now - last) / 5);
        last = now;
        t.units.store(now, Relaxed);
        t.bytes.store(node.stats().bytes_out - base, Relaxed);
    }
    // The first window fills the receiver; the rate after it is what
    // back-pressure lets through.
    rates.sort_unstable();
    t.max("median_sends_per_s", rates.get(rates.len() / 2).copied().unwrap_or(0));
    t.max("connections_dialled", dialled.load(Relaxed));
    for s in senders {
        s.abort();
    }
    Ok(())
}

// ---------------------------------------------------------------- misc

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The attacker needs unpredictability only to look like a real peer.
    // SAFETY: getrandom(2) writes at most N bytes into `b`.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    b
}

fn parse_peer(s: &str) -> Result<(Id, SocketAddr), String> {
    let (hex, addr) = s.split_once('@').ok_or_else(|| format!("{s}: want HEX@IP:PORT"))?;
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr}: loopback only"));
    }
    let id = NodeId::from_hex(hex).ok_or_else(|| format!("{hex}: want 64 hex digits"))?;
    Ok((id, addr))
}

fn parse_args() -> Result<Args, String> {
    let mut public = None;
    let mut honest = Vec::new();
    let mut secs = 60;
    let mut attacks = vec!["all".to_string()];
    let mut scale = 1.0;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k}: missing value"))?;
        match k.as_str() {
            "--public" => public = Some(parse_peer(&v)?),
            "--honest" => honest.push(parse_peer(&v)?),
            "--secs" => secs = v.parse().map_err(|e| format!("--secs: {e}"))?,
            "--attacks" => attacks = v.split(',').map(str::to_string).collect(),
            "--scale" => scale = v.parse().map_err(|e| format!("--scale: {e}"))?,
            "--bind-ip" => {
                let ip = v.parse().map_err(|e| format!("--bind-ip: {e}"))?;
                BIND_IP.set(ip).map_err(|_| "--bind-ip given twice".to_string())?;
            }
            _ => return Err(format!("unknown option {k}")),
        }
    }
    for a in &attacks {
        if a != "all" && !ATTACKS.contains(&a.as_str()) {
            return Err(format!("unknown attack {a}; known: {}", ATTACKS.join(",")));
        }
    }
    let public = public.ok_or("--public HEX@IP:PORT is required")?;
    Ok(Args { public, honest, secs, attacks, scale })
}
