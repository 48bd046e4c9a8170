//! Userspace NAT engine over TUN (NATCracker's 27 types + pass-through),
//! with per-direction one-way delay, jitter and loss.
//!
//! The router namespace routes LAN egress (ip rule `iif lan lookup 100`,
//! table 100 `default dev tun0`) and WAN ingress for the public IP
//! (`iif wan lookup 101`, table 101 `<public>/32 dev tun0`) into tun0.
//! The engine rewrites packets and writes them back to tun0; the kernel then
//! forwards them with the main table (LAN subnet via `lan`, internet via `wan`).
//!
//! With `MACULA_LAB_TRACE` set, each engine writes every mapping it makes
//! (internal endpoint, public port, remote) to its log, and the lab keeps
//! its directory (`/run/macula-lab/<lab>/<site>.engine.log`) at teardown:
//! how a prediction went wrong is then there to read.

use crate::spec::{Alloc, Dep, UserNat};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineConfig {
    pub tun: String,
    /// `None` = pass-through (no translation, only delay/loss).
    pub nat: Option<String>,
    /// LAN network and prefix length (NAT mode: sources inside are "internal").
    pub lan_net: Ipv4Addr,
    pub lan_prefix: u8,
    /// NAT mode: the public IP. Pass-through: the host's public IP.
    pub public_ip: Ipv4Addr,
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub loss: f64,
    pub binding_timeout_s: u64,
    pub hairpin: bool,
    /// Model a plain router's conntrack (see `SiteSpec::plain_router`).
    #[serde(default)]
    pub plain_router: bool,
    pub seed: u64,
    pub stats_file: PathBuf,
    pub ready_file: PathBuf,
    /// Runtime control ([`EngineControl`], JSON): read on SIGUSR2, applied,
    /// then acknowledged by writing its `generation` to `<file>.ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_file: Option<PathBuf>,
}

/// What a lab changes in a running engine (`Lab::blackhole`, `Lab::renumber`):
/// the whole desired state, written to the engine's control file before a
/// SIGUSR2.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineControl {
    /// Increases with every change; echoed in the `.ack` file once applied.
    pub generation: u64,
    /// Drop every packet to/from the site's hosts except to/from `spare`
    /// (counted in `dropped_blackhole`).
    #[serde(default)]
    pub blackhole: bool,
    #[serde(default)]
    pub spare: Vec<Ipv4Addr>,
    /// A new public address (NAT mode): every mapping is forgotten (counted
    /// in `renumbers`), translation uses the new address from then on.
    #[serde(default)]
    pub public_ip: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineStats {
    /// Packets read from LAN side / WAN side.
    pub rx_lan: u64,
    pub rx_wan: u64,
    /// Packets forwarded LAN->WAN / WAN->LAN (after loss).
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Inbound dropped by the filtering policy (binding exists, remote not allowed).
    pub dropped_filtered: u64,
    /// Inbound dropped because no (live) binding owns the port.
    pub dropped_no_binding: u64,
    pub dropped_loss_out: u64,
    /// Times the engine forgot all its mappings (SIGUSR1).
    #[serde(default)]
    pub rebinds: u64,
    pub dropped_loss_in: u64,
    pub dropped_hairpin: u64,
    /// Non-UDP (NAT mode), fragments, malformed, unroutable.
    pub dropped_other: u64,
    pub hairpinned: u64,
    pub bindings_active: u64,
    pub bindings_created: u64,
    pub bindings_expired: u64,
    pub port_collisions: u64,
    pub write_errors: u64,
    /// Packets dropped by a black hole ([`EngineControl::blackhole`]).
    #[serde(default)]
    pub dropped_blackhole: u64,
    /// Public address changes applied ([`EngineControl::public_ip`]).
    #[serde(default)]
    pub renumbers: u64,
}

// ---------------------------------------------------------------- TUN

const TUNSETIFF: libc::c_ulong = 0x400454ca;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub fn open_tun(name: &str) -> Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ {
        bail!("tun name too long");
    }
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        bail!("open /dev/net/tun: {}", std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    for (i, b) in name.bytes().enumerate() {
        req.name[i] = b as libc::c_char;
    }
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        bail!("TUNSETIFF: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

// ---------------------------------------------------------------- RNG

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------- packets

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < data.len() {
        sum += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    if i < data.len() {
        sum += (data[i] as u32) << 8;
    }
    sum
}
fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parsed view of an IPv4 packet (offsets into the buffer).
struct Ip {
    ihl: usize,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    frag: bool,
}

fn parse_ip(p: &[u8]) -> Option<Ip> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((p[0] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([p[2], p[3]]) as usize;
    if ihl < 20 || tot < ihl || tot > p.len() {
        return None;
    }
    let fo = u16::from_be_bytes([p[6], p[7]]);
    Some(Ip {
        ihl,
        proto: p[9],
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        // MF set or offset != 0
        frag: fo & 0x3fff != 0,
    })
}

fn udp_ports(p: &[u8], ip: &Ip) -> Option<(u16, u16)> {
    let u = &p[ip.ihl..];
    if u.len() < 8 {
        return None;
    }
    Some((u16::from_be_bytes([u[0], u[1]]), u16::from_be_bytes([u[2], u[3]])))
}

/// Rewrite addresses/ports of a UDP/IPv4 packet and recompute both checksums.
fn rewrite_udp(p: &mut Vec<u8>, ihl: usize, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) {
    let tot = u16::from_be_bytes([p[2], p[3]]) as usize;
    p.truncate(tot);
    p[12..16].copy_from_slice(&src.0.octets());
    p[16..20].copy_from_slice(&dst.0.octets());
    p[10] = 0;
    p[11] = 0;
    let c = csum_fold(csum_add(0, &p[..ihl]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let u = ihl;
    p[u..u + 2].copy_from_slice(&src.1.to_be_bytes());
    p[u + 2..u + 4].copy_from_slice(&dst.1.to_be_bytes());
    let had_csum = p[u + 6] != 0 || p[u + 7] != 0;
    if had_csum {
        let ulen = (tot - ihl) as u32;
        p[u + 6] = 0;
        p[u + 7] = 0;
        let mut s = csum_add(0, &src.0.octets());
        s = csum_add(s, &dst.0.octets());
        s += 17 + ulen;
        s = csum_add(s, &p[u..tot]);
        let mut c = csum_fold(s);
        if c == 0 {
            c = 0xffff;
        }
        p[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    }
}

/// Set by SIGUSR1 (see [`Engine::run`]).
static REBIND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set by SIGUSR2: re-read the control file (see [`EngineControl`]).
static CONTROL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The router of an engine forwards each packet twice (into the tun device
/// and out of it), so the kernel takes two off its TTL; one more here keeps
/// the router one hop, as a real NAT is (TTL-limited packets and
/// traceroutes count on it).
fn bump_ttl(p: &mut [u8], ihl: usize) {
    p[8] = p[8].saturating_add(1);
    p[10] = 0;
    p[11] = 0;
    let c = csum_fold(csum_add(0, &p[..ihl]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// An inbound ICMP error (unreachable, time exceeded) quoting a UDP packet
/// that one of our bindings sent: rewritten to the internal host (outer
/// destination, quoted source), checksums recomputed. `false`: not ours.
fn translate_icmp_in(p: &mut Vec<u8>, ip: &Ip, public: Ipv4Addr, nat: &mut Nat, now: Instant) -> bool {
    let tot = u16::from_be_bytes([p[2], p[3]]) as usize;
    p.truncate(tot);
    let icmp = ip.ihl;
    if p.len() < icmp + 8 || !matches!(p[icmp], 3 | 11) {
        return false;
    }
    let q = icmp + 8;
    let Some(qip) = parse_quoted(&p[q..]) else { return false };
    if qip.proto != 17 || qip.src != public || p.len() < q + qip.ihl + 4 {
        return false;
    }
    let u = q + qip.ihl;
    let pub_port = u16::from_be_bytes([p[u], p[u + 1]]);
    let Some(int) = nat.internal_of(pub_port, now) else { return false };
    // Outer: to the internal host, one hop.
    p[16..20].copy_from_slice(&int.0.octets());
    bump_ttl(p, ip.ihl);
    // Quoted: from the internal endpoint, as the host sent it.
    p[q + 12..q + 16].copy_from_slice(&int.0.octets());
    p[q + 10] = 0;
    p[q + 11] = 0;
    let c = csum_fold(csum_add(0, &p[q..q + qip.ihl]));
    p[q + 10..q + 12].copy_from_slice(&c.to_be_bytes());
    p[u..u + 2].copy_from_slice(&int.1.to_be_bytes());
    // ICMP checksum over the whole message.
    p[icmp + 2] = 0;
    p[icmp + 3] = 0;
    let c = csum_fold(csum_add(0, &p[icmp..]));
    p[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    true
}

/// The IPv4 header quoted in an ICMP error (the quote may be cut short
/// after the first 8 bytes of payload, so its total length is not checked).
fn parse_quoted(p: &[u8]) -> Option<Ip> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((p[0] & 0x0f) as usize) * 4;
    if ihl < 20 || p.len() < ihl {
        return None;
    }
    Some(Ip {
        ihl,
        proto: p[9],
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        frag: false,
    })
}

// ---------------------------------------------------------------- NAT table

type Ep = (Ipv4Addr, u16);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct MapKey {
    int: Ep,
    rip: Option<Ipv4Addr>,
    rport: Option<u16>,
}

struct Binding {
    key: MapKey,
    last_out: Instant,
    /// remote endpoints this binding has sent to, with last time
    perm_ep: HashMap<Ep, Instant>,
    perm_ip: HashMap<Ipv4Addr, Instant>,
}

pub struct Nat {
    pub cfg: UserNat,
    pub public_ip: Ipv4Addr,
    pub timeout: Duration,
    by_key: HashMap<MapKey, u16>,
    by_port: HashMap<u16, Binding>,
    last_pc: u16,
    rng: Rng,
    /// Plain router: inbound packets refused at a public port, by (public
    /// port, remote), with when (Linux keeps such unreplied entries for
    /// its UDP timeout).
    pub conntrack: bool,
    refused: HashMap<(u16, Ep), Instant>,
}

const PORT_MIN: u16 = 1024;
const PORT_MAX: u16 = 65535;

/// See the module docs.
pub fn trace_mappings() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MACULA_LAB_TRACE").is_some())
}

impl Nat {
    pub fn new(cfg: UserNat, public_ip: Ipv4Addr, timeout: Duration, seed: u64) -> Nat {
        let mut rng = Rng::new(seed.wrapping_add(0x5eed));
        let last_pc = 20000 + (rng.next_u64() % 20000) as u16;
        Nat {
            cfg,
            public_ip,
            timeout,
            by_key: HashMap::new(),
            by_port: HashMap::new(),
            last_pc,
            rng,
            conntrack: false,
            refused: HashMap::new(),
        }
    }

    /// Plain router: `remote` was refused at `port` lately, and so holds the
    /// tuple (public port, remote) in conntrack.
    fn clashes(&self, port: u16, remote: Ep, now: Instant) -> bool {
        self.conntrack
            && self.refused.get(&(port, remote)).is_some_and(|t| now.duration_since(*t) <= self.timeout)
            && !self.by_port.get(&port).is_some_and(|b| b.perm_ep.contains_key(&remote))
    }

    fn refuse(&mut self, port: u16, remote: Ep, now: Instant) {
        if self.conntrack {
            if self.refused.len() >= 65536 {
                let timeout = self.timeout;
                self.refused.retain(|_, t| now.duration_since(*t) <= timeout);
            }
            self.refused.insert((port, remote), now);
        }
    }

    fn key(&self, int: Ep, remote: Ep) -> MapKey {
        match self.cfg.mapping {
            Dep::Ei => MapKey { int, rip: None, rport: None },
            Dep::Hd => MapKey { int, rip: Some(remote.0), rport: None },
            Dep::Pd => MapKey { int, rip: Some(remote.0), rport: Some(remote.1) },
        }
    }

    fn live(&self, b: &Binding, now: Instant) -> bool {
        now.duration_since(b.last_out) <= self.timeout
    }

    fn port_free(&mut self, p: u16, now: Instant, st: &mut EngineStats) -> bool {
        match self.by_port.get(&p) {
            None => true,
            Some(b) if !self.live(b, now) => {
                self.remove(p, st);
                true
            }
            _ => false,
        }
    }

    fn remove(&mut self, port: u16, st: &mut EngineStats) {
        if let Some(b) = self.by_port.remove(&port) {
            self.by_key.remove(&b.key);
            st.bindings_expired += 1;
        }
    }

    fn random_free(&mut self, now: Instant, st: &mut EngineStats) -> Option<u16> {
        for _ in 0..10_000 {
            let p = PORT_MIN + (self.rng.next_u64() % (PORT_MAX - PORT_MIN + 1) as u64) as u16;
            if self.port_free(p, now, st) {
                return Some(p);
            }
        }
        None
    }

    fn allocate(&mut self, int_port: u16, now: Instant, st: &mut EngineStats) -> Option<u16> {
        match self.cfg.allocation {
            Alloc::Pp => {
                if int_port >= PORT_MIN && self.port_free(int_port, now, st) {
                    Some(int_port)
                } else {
                    st.port_collisions += 1;
                    self.random_free(now, st)
                }
            }
            Alloc::Pc => {
                let span = (PORT_MAX - PORT_MIN) as u32 + 1;
                let mut p = self.last_pc;
                for i in 0..span {
                    let off = (p - PORT_MIN) as u32 + self.cfg.delta as u32;
                    p = PORT_MIN + (off % span) as u16;
                    if self.port_free(p, now, st) {
                        self.last_pc = p;
                        return Some(p);
                    }
                    if i == 0 {
                        st.port_collisions += 1;
                    }
                }
                None
            }
            Alloc::Rd => self.random_free(now, st),
        }
    }

    /// Outbound translation: returns the public port.
    pub fn outbound(&mut self, int: Ep, remote: Ep, now: Instant, st: &mut EngineStats) -> Option<u16> {
        let mut key = self.key(int, remote);
        // Plain router: a connection to this exact remote that had to leave
        // from another port (below) keeps it.
        let exact = MapKey { int, rip: Some(remote.0), rport: Some(remote.1) };
        if self.conntrack && key != exact && self.by_key.contains_key(&exact) {
            key = exact;
        }
        if let Some(p) = self.by_key.get(&key).copied() {
            if self.clashes(p, remote, now) {
                // Linux: the reply tuple (remote -> public:p) is taken by the
                // refused entry, so this connection gets another port.
                key = exact;
                st.port_collisions += 1;
            }
        }
        let port = match self.by_key.get(&key).copied() {
            Some(p) if self.by_port.get(&p).is_some_and(|b| self.live(b, now)) => p,
            other => {
                if let Some(p) = other {
                    self.remove(p, st);
                }
                let p = self.allocate(int.1, now, st)?;
                if trace_mappings() {
                    eprintln!("{now:?} map {}:{} -> {p} for {}:{}", int.0, int.1, remote.0, remote.1);
                }
                self.by_key.insert(key, p);
                self.by_port.insert(
                    p,
                    Binding { key, last_out: now, perm_ep: HashMap::new(), perm_ip: HashMap::new() },
                );
                st.bindings_created += 1;
                p
            }
        };
        let b = self.by_port.get_mut(&port).unwrap();
        b.last_out = now;
        b.perm_ep.insert(remote, now);
        b.perm_ip.insert(remote.0, now);
        Some(port)
    }

    /// Inbound: Ok(internal endpoint) or Err(true = filtered, false = no binding).
    pub fn inbound(&mut self, port: u16, remote: Ep, now: Instant) -> std::result::Result<Ep, bool> {
        let r = self.admit(port, remote, now);
        if r.is_err() {
            self.refuse(port, remote, now);
        }
        r
    }

    /// A hairpinned packet (one internal host to another's public
    /// endpoint): filtered as an inbound one, but a refusal leaves no
    /// clash. On Linux such a packet's conntrack entry is keyed by the
    /// sender's internal endpoint (it never went out), so it cannot take
    /// the tuple (public port <- public:sender port) an outbound flow of
    /// the other host needs.
    pub fn inbound_hairpin(&mut self, port: u16, remote: Ep, now: Instant) -> std::result::Result<Ep, bool> {
        self.admit(port, remote, now)
    }

    fn admit(&self, port: u16, remote: Ep, now: Instant) -> std::result::Result<Ep, bool> {
        let Some(b) = self.by_port.get(&port) else {
            return Err(false);
        };
        if !self.live(b, now) {
            return Err(false);
        }
        let fresh = |t: &Instant| now.duration_since(*t) <= self.timeout;
        let ok = match self.cfg.filtering {
            Dep::Ei => true,
            Dep::Hd => b.perm_ip.get(&remote.0).is_some_and(fresh),
            Dep::Pd => b.perm_ep.get(&remote).is_some_and(fresh),
        };
        if ok {
            Ok(b.key.int)
        } else {
            Err(true)
        }
    }

    /// Forgets every binding and refused entry: the next outbound packet of
    /// each host gets a new mapping (counted in `rebinds`).
    pub fn forget_all(&mut self, st: &mut EngineStats) {
        self.clear(st);
        st.rebinds += 1;
    }

    /// Forgets every binding and refused entry (uncounted).
    fn clear(&mut self, st: &mut EngineStats) {
        st.bindings_expired += self.by_port.len() as u64;
        self.by_port.clear();
        self.by_key.clear();
        self.refused.clear();
    }

    /// The internal endpoint of the live binding at public `port`.
    pub fn internal_of(&self, port: u16, now: Instant) -> Option<Ep> {
        self.by_port.get(&port).filter(|b| self.live(b, now)).map(|b| b.key.int)
    }

    pub fn sweep(&mut self, now: Instant, st: &mut EngineStats) {
        let dead: Vec<u16> =
            self.by_port.iter().filter(|(_, b)| !self.live(b, now)).map(|(p, _)| *p).collect();
        for p in dead {
            self.remove(p, st);
        }
        st.bindings_active = self.by_port.len() as u64;
    }
}

// ---------------------------------------------------------------- engine loop

struct Delayed {
    due: Instant,
    seq: u64,
    pkt: Vec<u8>,
}
impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due && self.seq == o.seq
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Out,
    In,
}

pub struct Engine {
    cfg: EngineConfig,
    nat: Option<Nat>,
    pub stats: EngineStats,
    rng: Rng,
    queue: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    lan_mask: u32,
    /// Black hole on: the addresses still reachable.
    blackhole: Option<Vec<Ipv4Addr>>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Engine> {
        let nat = match &cfg.nat {
            None => None,
            Some(s) => match s.parse::<crate::spec::NatKind>()? {
                crate::spec::NatKind::User(u) => {
                    let mut nat = Nat::new(u, cfg.public_ip, Duration::from_secs(cfg.binding_timeout_s), cfg.seed);
                    nat.conntrack = cfg.plain_router;
                    Some(nat)
                }
                other => bail!("engine cannot run nat kind {other}"),
            },
        };
        let lan_mask = if cfg.lan_prefix == 0 { 0 } else { u32::MAX << (32 - cfg.lan_prefix as u32) };
        Ok(Engine {
            rng: Rng::new(cfg.seed),
            cfg,
            nat,
            stats: EngineStats::default(),
            queue: BinaryHeap::new(),
            seq: 0,
            lan_mask,
            blackhole: None,
        })
    }

    fn in_lan(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.lan_mask == u32::from(self.cfg.lan_net) & self.lan_mask
    }

    /// Impair (loss, delay) and queue a packet for writing.
    fn emit(&mut self, pkt: Vec<u8>, dir: Dir, now: Instant) {
        if self.cfg.loss > 0.0 && self.rng.f64() < self.cfg.loss {
            match dir {
                Dir::Out => self.stats.dropped_loss_out += 1,
                Dir::In => self.stats.dropped_loss_in += 1,
            }
            return;
        }
        match dir {
            Dir::Out => {
                self.stats.packets_out += 1;
                self.stats.bytes_out += pkt.len() as u64;
            }
            Dir::In => {
                self.stats.packets_in += 1;
                self.stats.bytes_in += pkt.len() as u64;
            }
        }
        let mut d = self.cfg.delay_ms;
        if self.cfg.jitter_ms > 0.0 {
            d += (self.rng.f64() * 2.0 - 1.0) * self.cfg.jitter_ms;
        }
        let d = d.max(0.0);
        self.push(pkt, now + Duration::from_secs_f64(d / 1000.0));
    }

    fn push(&mut self, pkt: Vec<u8>, due: Instant) {
        self.seq += 1;
        self.queue.push(Reverse(Delayed { due, seq: self.seq, pkt }));
    }

    /// Applies a control state (see [`EngineControl`]).
    pub fn apply_control(&mut self, c: &EngineControl) {
        self.blackhole = c.blackhole.then(|| c.spare.clone());
        if let Some(ip) = c.public_ip {
            if ip != self.cfg.public_ip {
                if let Some(n) = self.nat.as_mut() {
                    n.public_ip = ip;
                    n.clear(&mut self.stats);
                    self.cfg.public_ip = ip;
                    self.stats.renumbers += 1;
                }
            }
        }
    }

    fn read_control(&mut self) {
        let Some(p) = self.cfg.control_file.clone() else { return };
        match std::fs::read(&p).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice::<EngineControl>(&b)?)) {
            Ok(c) => {
                self.apply_control(&c);
                let _ = std::fs::write(p.with_extension("ack"), c.generation.to_string());
            }
            Err(e) => eprintln!("engine: control file {}: {e:#}", p.display()),
        }
    }

    /// Black hole: the packet (`src` -> `dst`, `out` = from the LAN side)
    /// is dropped unless its remote end is spared.
    fn blackholed(&mut self, src: Ipv4Addr, dst: Ipv4Addr, out: bool) -> bool {
        let Some(spare) = &self.blackhole else { return false };
        let remote = if out { dst } else { src };
        if spare.contains(&remote) {
            return false;
        }
        self.stats.dropped_blackhole += 1;
        true
    }

    /// Handle one packet read from the tun device.
    pub fn handle(&mut self, mut pkt: Vec<u8>, now: Instant) {
        let Some(ip) = parse_ip(&pkt) else {
            self.stats.dropped_other += 1;
            return;
        };
        if self.blackhole.is_some() {
            let out = if self.nat.is_none() { ip.src == self.cfg.public_ip } else { self.in_lan(ip.src) };
            if self.blackholed(ip.src, ip.dst, out) {
                return;
            }
        }
        if self.nat.is_none() {
            // pass-through
            if ip.src == self.cfg.public_ip {
                self.stats.rx_lan += 1;
                bump_ttl(&mut pkt, ip.ihl);
                self.emit(pkt, Dir::Out, now);
            } else if ip.dst == self.cfg.public_ip {
                self.stats.rx_wan += 1;
                bump_ttl(&mut pkt, ip.ihl);
                self.emit(pkt, Dir::In, now);
            } else {
                self.stats.dropped_other += 1;
            }
            return;
        }
        let public = self.cfg.public_ip;
        let from_lan = self.in_lan(ip.src);
        if from_lan {
            self.stats.rx_lan += 1;
        } else if ip.dst == public {
            self.stats.rx_wan += 1;
        } else {
            self.stats.dropped_other += 1;
            return;
        }
        if !from_lan && ip.proto == 1 && !ip.frag {
            // An ICMP error about one of our mappings' packets goes to the
            // internal host, as real NATs translate them (RFC 5508).
            let nat = self.nat.as_mut().unwrap();
            if translate_icmp_in(&mut pkt, &ip, public, nat, now) {
                self.emit(pkt, Dir::In, now);
            } else {
                self.stats.dropped_other += 1;
            }
            return;
        }
        if ip.proto != 17 || ip.frag {
            self.stats.dropped_other += 1;
            return;
        }
        let Some((sport, dport)) = udp_ports(&pkt, &ip) else {
            self.stats.dropped_other += 1;
            return;
        };
        let nat = self.nat.as_mut().unwrap();
        if from_lan {
            let Some(pub_port) = nat.outbound((ip.src, sport), (ip.dst, dport), now, &mut self.stats)
            else {
                self.stats.dropped_other += 1;
                return;
            };
            if ip.dst == public {
                // hairpin
                if !self.cfg.hairpin {
                    self.stats.dropped_hairpin += 1;
                    return;
                }
                match nat.inbound_hairpin(dport, (public, pub_port), now) {
                    Ok(int) => {
                        rewrite_udp(&mut pkt, ip.ihl, (public, pub_port), int);
                        self.stats.hairpinned += 1;
                        self.push(pkt, now);
                    }
                    Err(true) => self.stats.dropped_filtered += 1,
                    Err(false) => self.stats.dropped_no_binding += 1,
                }
                return;
            }
            pkt[8] = pkt[8].saturating_add(1); // one hop, see `bump_ttl`
            rewrite_udp(&mut pkt, ip.ihl, (public, pub_port), (ip.dst, dport));
            self.emit(pkt, Dir::Out, now);
        } else {
            match nat.inbound(dport, (ip.src, sport), now) {
                Ok(int) => {
                    pkt[8] = pkt[8].saturating_add(1); // one hop, see `bump_ttl`
                    rewrite_udp(&mut pkt, ip.ihl, (ip.src, sport), int);
                    self.emit(pkt, Dir::In, now);
                }
                Err(true) => self.stats.dropped_filtered += 1,
                Err(false) => self.stats.dropped_no_binding += 1,
            }
        }
    }

    fn write_stats(&self) -> Result<()> {
        let tmp = self.cfg.stats_file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&self.stats)?)?;
        std::fs::rename(&tmp, &self.cfg.stats_file)?;
        Ok(())
    }

    /// Run forever on the tun device (inside the router namespace).
    pub fn run(mut self) -> Result<()> {
        let fd = open_tun(&self.cfg.tun)?;
        // SIGUSR1: the router forgets every mapping (a NAT rebinding, as
        // after a router restart or a mapping table flush).
        extern "C" fn on_usr1(_: libc::c_int) {
            REBIND.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(libc::SIGUSR1, on_usr1 as extern "C" fn(libc::c_int) as libc::sighandler_t) };
        // SIGUSR2: re-read the control file (black hole, public address).
        extern "C" fn on_usr2(_: libc::c_int) {
            CONTROL.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(libc::SIGUSR2, on_usr2 as extern "C" fn(libc::c_int) as libc::sighandler_t) };

        let raw = fd.as_raw_fd();
        self.write_stats()?;
        std::fs::write(&self.cfg.ready_file, b"ready\n").context("ready file")?;
        let mut buf = vec![0u8; 65536];
        let mut last_stats = Instant::now();
        let mut written = self.stats.clone();
        loop {
            let now = Instant::now();
            if REBIND.swap(false, std::sync::atomic::Ordering::Relaxed) {
                if let Some(n) = self.nat.as_mut() {
                    n.forget_all(&mut self.stats);
                }
            }
            if CONTROL.swap(false, std::sync::atomic::Ordering::Relaxed) {
                self.read_control();
            }
            // release due packets
            while let Some(Reverse(top)) = self.queue.peek() {
                if top.due > now {
                    break;
                }
                let Reverse(d) = self.queue.pop().unwrap();
                let r = unsafe { libc::write(raw, d.pkt.as_ptr() as *const _, d.pkt.len()) };
                if r < 0 {
                    self.stats.write_errors += 1;
                }
            }
            if now.duration_since(last_stats) >= Duration::from_millis(100) {
                if let Some(n) = self.nat.as_mut() {
                    n.sweep(now, &mut self.stats);
                }
                if self.stats != written {
                    let _ = self.write_stats();
                    written = self.stats.clone();
                }
                last_stats = now;
            }
            let wait = match self.queue.peek() {
                Some(Reverse(t)) => t.due.saturating_duration_since(now).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let ts = libc::timespec {
                tv_sec: wait.as_secs() as _,
                tv_nsec: wait.subsec_nanos() as _,
            };
            let mut pfd = libc::pollfd { fd: raw, events: libc::POLLIN, revents: 0 };
            let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("ppoll: {e}");
            }
            if n > 0 && pfd.revents & libc::POLLIN != 0 {
                for _ in 0..256 {
                    let r = unsafe { libc::read(raw, buf.as_mut_ptr() as *mut _, buf.len()) };
                    if r <= 0 {
                        break;
                    }
                    let pkt = buf[..r as usize].to_vec();
                    self.handle(pkt, Instant::now());
                }
            }
        }
    }
}

pub fn run_from_file(path: &str) -> Result<()> {
    let cfg: EngineConfig = serde_json::from_slice(&std::fs::read(path).context("engine config")?)?;
    Engine::new(cfg)?.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(s: &str) -> Nat {
        let k: crate::spec::NatKind = s.parse().unwrap();
        let crate::spec::NatKind::User(u) = k else { panic!() };
        Nat::new(u, Ipv4Addr::new(203, 0, 113, 9), Duration::from_secs(2), 7)
    }
    const H: Ep = (Ipv4Addr::new(198, 18, 1, 2), 40000);
    const R1: Ep = (Ipv4Addr::new(203, 0, 113, 10), 3478);
    const R1B: Ep = (Ipv4Addr::new(203, 0, 113, 10), 3479);
    const R2: Ep = (Ipv4Addr::new(203, 0, 113, 11), 3478);

    #[test]
    fn mapping_and_filtering() {
        let now = Instant::now();
        let mut st = EngineStats::default();
        for (kind, same12, same23) in [
            ("user:ei-ei-pp", true, true),
            ("user:hd-ei-pp", false, true),
            ("user:pd-ei-pp", false, false),
        ] {
            let mut n = nat(kind);
            let a = n.outbound(H, R1, now, &mut st).unwrap();
            let b = n.outbound(H, R2, now, &mut st).unwrap();
            let c = n.outbound(H, (R2.0, 3479), now, &mut st).unwrap();
            assert_eq!(a, 40000, "{kind}: PP keeps port");
            assert_eq!(a == b, same12, "{kind}");
            assert_eq!(b == c, same23, "{kind}");
        }
        let mut n = nat("user:ei-hd-pp");
        let p = n.outbound(H, R1, now, &mut st).unwrap();
        assert_eq!(n.inbound(p, R1B, now), Ok(H));
        assert_eq!(n.inbound(p, R2, now), Err(true));
        assert_eq!(n.inbound(p + 1, R2, now), Err(false));
        let mut n = nat("user:ei-pd-pp");
        let p = n.outbound(H, R1, now, &mut st).unwrap();
        assert_eq!(n.inbound(p, R1, now), Ok(H));
        assert_eq!(n.inbound(p, R1B, now), Err(true));
        // expiry
        assert_eq!(n.inbound(p, R1, now + Duration::from_secs(3)), Err(false));
    }

    #[test]
    fn contiguity() {
        let now = Instant::now();
        let mut st = EngineStats::default();
        let mut n = nat("user:pd-ei-pc:delta=3");
        let a = n.outbound(H, R1, now, &mut st).unwrap();
        let b = n.outbound(H, R2, now, &mut st).unwrap();
        let c = n.outbound((H.0, 40001), R2, now, &mut st).unwrap();
        assert_eq!(b, a + 3);
        assert_eq!(c, b + 3);
        // PP collision: two internal hosts, same port
        let mut n = nat("user:ei-ei-pp");
        let a = n.outbound(H, R1, now, &mut st).unwrap();
        let b = n.outbound((Ipv4Addr::new(198, 18, 1, 3), 40000), R1, now, &mut st).unwrap();
        assert_eq!(a, 40000);
        assert_ne!(b, 40000);
    }

    #[test]
    fn plain_router_refusals_clash_but_hairpinned_ones_do_not() {
        let now = Instant::now();
        let mut st = EngineStats::default();
        let pubip = Ipv4Addr::new(203, 0, 113, 9);
        let h2: Ep = (Ipv4Addr::new(198, 18, 1, 3), 41000);
        // An unsolicited packet from R1 refused at H's public port: H's
        // own later packet to R1 must leave from another port.
        let mut n = nat("user:ei-pd-pp");
        n.conntrack = true;
        let p = n.outbound(H, R2, now, &mut st).unwrap();
        assert_eq!(n.inbound(p, R1, now), Err(true));
        assert_ne!(n.outbound(H, R1, now, &mut st).unwrap(), p);
        // The same refusal of a hairpinned packet (from h2's public
        // endpoint) leaves nothing: H then reaches h2 from its port.
        let mut n = nat("user:ei-pd-pp");
        n.conntrack = true;
        let p = n.outbound(H, R2, now, &mut st).unwrap();
        let p2 = n.outbound(h2, R2, now, &mut st).unwrap();
        assert_eq!(n.inbound_hairpin(p, (pubip, p2), now), Err(true));
        assert_eq!(n.outbound(H, (pubip, p2), now, &mut st).unwrap(), p);
        assert_eq!(n.inbound_hairpin(p, (pubip, p2), now), Ok(H));
    }

    #[test]
    fn checksum_rewrite() {
        // build a UDP packet and check checksums verify after rewrite
        let payload = b"hello world!!";
        let ulen = 8 + payload.len();
        let tot = 20 + ulen;
        let mut p = vec![0u8; tot];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(tot as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[20 + 4..20 + 6].copy_from_slice(&(ulen as u16).to_be_bytes());
        p[20 + 6] = 1; // nonzero => has checksum
        p[28..].copy_from_slice(payload);
        rewrite_udp(&mut p, 20, (Ipv4Addr::new(1, 2, 3, 4), 1111), (Ipv4Addr::new(5, 6, 7, 8), 2222));
        assert_eq!(csum_fold(csum_add(0, &p[..20])), 0);
        let mut s = csum_add(0, &p[12..20]);
        s += 17 + ulen as u32;
        s = csum_add(s, &p[20..]);
        assert_eq!(csum_fold(s), 0);
    }
}
