//! In-memory network for driving [`Detection`]: one host behind a NAT that
//! implements any of the 27 NATCracker types (or no NAT, optionally with a
//! filtering firewall), observers built from the real [`Observer`] logic,
//! fixed one-way delay and seeded random loss.

use super::*;
use crate::nat::NatType;
use crate::observer::{Observer, ObserverConfig};
use crate::stun::HEADER_LEN;

pub(crate) use crate::rng::XorShift;

struct SimMap {
    local: SocketAddr,
    key: (Option<IpAddr>, Option<u16>),
    public: SocketAddr,
    contacted: Vec<SocketAddr>,
}

/// A NAT (or no NAT) in front of one host.
pub(crate) struct SimNat {
    pub ty: Option<NatType>,
    /// Filtering of the host firewall when `ty` is None.
    pub firewall: Filtering,
    pub public_ip: IpAddr,
    pub delta: i32,
    /// A plain Linux router (no rule on its input chain): a packet it
    /// refuses still leaves a confirmed conntrack entry (remote -> public
    /// port), and a later outbound packet from that public port to that
    /// remote clashes with it and leaves from another port.
    pub conntrack: bool,
    refused: Vec<(SocketAddr, SocketAddr)>,
    /// Other hosts behind the NAT: before every `busy_every`-th allocation
    /// (0: never) one of them takes the next port (contiguous allocation).
    pub busy_every: u32,
    allocations: u32,
    next_port: i32,
    rng: XorShift,
    maps: Vec<SimMap>,
}

impl SimNat {
    pub fn new(ty: Option<NatType>, delta: i32, seed: u64) -> SimNat {
        let mut rng = XorShift(seed | 1);
        let next_port = 20_000 + (rng.next() % 1000) as i32;
        SimNat {
            ty,
            firewall: Filtering::Ei,
            public_ip: "203.0.113.1".parse().unwrap(),
            delta,
            conntrack: false,
            refused: Vec::new(),
            busy_every: 0,
            allocations: 0,
            next_port,
            rng,
            maps: Vec::new(),
        }
    }

    fn in_use(&self, port: u16) -> bool {
        self.maps.iter().any(|m| m.public.port() == port)
    }

    fn random_port(&mut self) -> u16 {
        loop {
            let p = 1024 + (self.rng.next() % (65535 - 1024)) as u16;
            if !self.in_use(p) {
                return p;
            }
        }
    }

    /// Translate an outbound packet; returns the public source address.
    pub fn outbound(&mut self, local: SocketAddr, dst: SocketAddr) -> SocketAddr {
        let Some(ty) = self.ty else {
            if let Some(m) = self.maps.iter_mut().find(|m| m.local == local) {
                m.contacted.push(dst);
            } else {
                self.maps.push(SimMap { local, key: (None, None), public: local, contacted: vec![dst] });
            }
            return local;
        };
        let key = match ty.mapping {
            Mapping::Ei => (None, None),
            Mapping::Hd => (Some(dst.ip()), None),
            Mapping::Pd => (Some(dst.ip()), Some(dst.port())),
        };
        let exact = (Some(dst.ip()), Some(dst.port()));
        if let Some(m) = self.maps.iter_mut().find(|m| m.local == local && m.key == exact) {
            m.contacted.push(dst);
            return m.public;
        }
        if let Some(m) = self.maps.iter_mut().find(|m| m.local == local && m.key == key) {
            let clash = self.conntrack && !m.contacted.contains(&dst) && self.refused.contains(&(dst, m.public));
            if !clash {
                m.contacted.push(dst);
                return m.public;
            }
            let public = SocketAddr::new(self.public_ip, self.random_port());
            self.maps.push(SimMap { local, key: exact, public, contacted: vec![dst] });
            return public;
        }
        let port = match ty.allocation {
            // Preserve the local port if free, else fall back to random.
            Allocation::Pp if !self.in_use(local.port()) => local.port(),
            Allocation::Pp | Allocation::Rd => self.random_port(),
            Allocation::Pc => {
                self.allocations += 1;
                if self.busy_every > 0 && self.allocations % self.busy_every == 0 {
                    self.next_port += self.delta;
                }
                let mut p = self.next_port;
                while self.in_use(p as u16) {
                    p += self.delta;
                }
                self.next_port = p + self.delta;
                p as u16
            }
        };
        let public = SocketAddr::new(self.public_ip, port);
        self.maps.push(SimMap { local, key, public, contacted: vec![dst] });
        public
    }

    /// Translate an inbound packet; returns the local destination if the
    /// mapping exists and its filter lets `from` in.
    pub fn inbound(&mut self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let filtering = self.ty.map_or(self.firewall, |t| t.filtering);
        let local = self.maps.iter().find(|m| m.public == to).and_then(|m| {
            let ok = match filtering {
                Filtering::Ei => true,
                Filtering::Hd => m.contacted.iter().any(|c| c.ip() == from.ip()),
                Filtering::Pd => m.contacted.contains(&from),
            };
            ok.then_some(m.local)
        });
        if local.is_none() && self.conntrack && self.ty.is_some() && !self.refused.contains(&(from, to)) {
            self.refused.push((from, to));
        }
        local
    }
}

enum Packet {
    /// Left the NAT, travelling to an observer.
    Up { src: SocketAddr, dst: SocketAddr, payload: Vec<u8> },
    /// Left an observer, travelling to the NAT's public side.
    Down { src: SocketAddr, dst: SocketAddr, payload: Vec<u8> },
}

pub(super) struct World {
    pub nat: SimNat,
    pub observers: Vec<Observer>,
    pub one_way: Duration,
    /// Per-packet loss probability in parts per thousand.
    pub loss_permille: u64,
    /// Observers that drop everything (dead).
    pub dead: Vec<usize>,
    /// Extra delay of answers an observer sends from its other addresses
    /// (tests II-IV, and the filtering tests' changed-address answers): a
    /// stalled observer socket or path.
    pub slow_alternate: Duration,
    /// Requests reaching an observer's primary address in `[from, until)`
    /// are answered at `until`: a starved observer process.
    pub stall: Option<(Instant, Instant)>,
    /// Observers that answer as an RFC 3489 server, Debian's `stund`
    /// (Vovida 0.97), does (see [`classic_answer`]).
    pub classic: Vec<usize>,
    /// Local address of the detection's filter socket (a new one per run
    /// in reality: change it between runs to model that).
    pub filter_local: SocketAddr,
    rng: XorShift,
    queue: Vec<(Instant, u64, Packet)>,
    seq: u64,
    pub sent: usize,
}

pub(super) const PRIMARY_LOCAL: &str = "10.0.0.2:5000";

pub(super) fn full_observer(ip1: &str, ip2: &str) -> Observer {
    Observer::new(ObserverConfig {
        primary: format!("{ip1}:3478").parse().unwrap(),
        alternate: Some(format!("{ip2}:3479").parse().unwrap()),
        software: Some("sim".into()),
    })
    .unwrap()
}

pub(super) fn plain_observer(ip: &str) -> Observer {
    Observer::new(ObserverConfig { primary: format!("{ip}:3478").parse().unwrap(), alternate: None, software: None })
        .unwrap()
}

/// Outcome of one simulated run.
pub(super) struct Run {
    pub result: Result<NatProfile, DetectError>,
    pub elapsed: Duration,
    pub transmits: usize,
}

impl World {
    pub fn new(nat: SimNat, observers: Vec<Observer>, one_way_ms: u64, loss_permille: u64, seed: u64) -> World {
        World {
            nat,
            observers,
            one_way: Duration::from_millis(one_way_ms),
            loss_permille,
            dead: Vec::new(),
            slow_alternate: Duration::ZERO,
            stall: None,
            classic: Vec::new(),
            filter_local: "10.0.0.2:6001".parse().unwrap(),
            rng: XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1),
            queue: Vec::new(),
            seq: 0,
            sent: 0,
        }
    }

    fn lost(&mut self) -> bool {
        self.rng.next() % 1000 < self.loss_permille
    }

    fn push(&mut self, at: Instant, p: Packet) {
        self.seq += 1;
        self.queue.push((at, self.seq, p));
    }

    fn pop_next(&mut self) -> Option<(Instant, Packet)> {
        let i = self.queue.iter().enumerate().min_by_key(|(_, (t, s, _))| (*t, *s))?.0;
        let (t, _, p) = self.queue.swap_remove(i);
        Some((t, p))
    }

    fn next_time(&self) -> Option<Instant> {
        self.queue.iter().map(|(t, _, _)| *t).min()
    }

    pub fn config(&self) -> DetectConfig {
        DetectConfig {
            observers: self.observers.iter().map(|o| o.config().primary).collect(),
            ..DetectConfig::default()
        }
    }

    /// Drive `det` to completion. `probe_locals` are the local addresses of
    /// the probe sockets the runtime opens (fewer than requested = the
    /// runtime could not open them).
    pub fn run(&mut self, det: &mut Detection, probe_locals: &[SocketAddr], t0: Instant) -> Run {
        let primary: SocketAddr = PRIMARY_LOCAL.parse().unwrap();
        let filter = self.filter_local;
        det.set_filter_local_addr(filter);
        for (n, a) in probe_locals.iter().enumerate().take(det.probe_sockets_needed()) {
            det.set_probe_local_addr(n, *a);
        }
        let socket_of = |local: SocketAddr| -> Option<SocketId> {
            if local == primary {
                Some(SocketId::Primary)
            } else if local == filter {
                Some(SocketId::Filter)
            } else {
                probe_locals.iter().position(|a| *a == local).map(SocketId::Probe)
            }
        };
        let mut now = t0;
        let mut stuck = 0;
        for _ in 0..100_000 {
            while let Some(t) = det.poll_transmit(now) {
                stuck = 0;
                self.sent += 1;
                let local = match t.socket {
                    SocketId::Primary => primary,
                    SocketId::Probe(n) => probe_locals[n],
                    SocketId::Filter => filter,
                };
                let src = self.nat.outbound(local, t.dst);
                if !self.lost() {
                    self.push(now + self.one_way, Packet::Up { src, dst: t.dst, payload: t.payload });
                }
            }
            if let Some(result) = det.poll_result() {
                assert!(det.poll_result().is_none(), "result must be returned once");
                assert!(det.poll_transmit(now).is_none() && det.poll_timeout().is_none());
                return Run { result, elapsed: now - t0, transmits: self.sent };
            }
            let timer = det.poll_timeout().expect("unfinished detection must have a timer");
            assert!(timer >= now || det.poll_transmit(now).is_some(), "timer in the past with nothing to do");
            match self.next_time() {
                Some(t) if t <= timer => {
                    now = t;
                    let (_, pkt) = self.pop_next().unwrap();
                    self.deliver(det, pkt, now, &socket_of);
                }
                _ => {
                    // A timer that does not move while nothing is sent is a
                    // livelock in the state machine.
                    stuck = if timer <= now { stuck + 1 } else { 0 };
                    assert!(stuck < 100, "livelock at {:?}", now - t0);
                    now = timer.max(now);
                    det.handle_timeout(now);
                }
            }
        }
        panic!("detection did not finish");
    }

    fn deliver(&mut self, det: &mut Detection, pkt: Packet, now: Instant, socket_of: &dyn Fn(SocketAddr) -> Option<SocketId>) {
        match pkt {
            Packet::Up { src, dst, payload } => {
                let Some(i) = self.observers.iter().position(|o| o.local_addrs().contains(&dst)) else { return };
                if self.dead.contains(&i) {
                    return;
                }
                let primary = self.observers[i].config().primary;
                // No more bytes than the request (a responder whose allowance for
                // this address is spent): the detector's requests are sized
                // for full answers, so this must be enough.
                let answer = self.observers[i].answer_datagram(dst, src, &payload, payload.len()).ok();
                let answer = if self.classic.contains(&i) { answer.map(|r| classic_answer(&self.observers[i], dst, r)) } else { answer };
                if let Some(reply) = answer {
                    let mut at = now + if reply.from == primary { Duration::ZERO } else { self.slow_alternate };
                    if let Some((_, until)) = self.stall.filter(|&(f, u)| dst == primary && now >= f && now < u) {
                        at = at.max(until);
                    }
                    if !self.lost() {
                        self.push(at + self.one_way, Packet::Down { src: reply.from, dst: reply.to, payload: reply.payload });
                    }
                }
            }
            Packet::Down { src, dst, payload } => {
                if let Some(local) = self.nat.inbound(src, dst) {
                    if let Some(s) = socket_of(local) {
                        det.handle_datagram(s, src, &payload, now);
                    }
                }
            }
        }
    }
}

/// What an RFC 3489 server (Debian's `stund`, Vovida 0.97, seen on the wire
/// in the lab) answers where our observer answered `reply`, to a request
/// that arrived on `local`: the same source and destination (it honours
/// CHANGE-REQUEST the same way), the request's 16 bytes after the type
/// echoed as its transaction id (so an RFC 8489 request gets the cookie
/// back), and MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS (the address
/// opposite the one the request reached: other IP and other port), then
/// its pre-RFC 5389 XOR-MAPPED-ADDRESS (0x8020, XORed with the first bytes
/// of the transaction id) and SERVER (0x8022); no OTHER-ADDRESS, no
/// RESPONSE-ORIGIN, no FINGERPRINT.
pub(super) fn classic_answer(obs: &Observer, local: SocketAddr, reply: crate::observer::Reply) -> crate::observer::Reply {
    let theirs = Message::decode_any(&reply.payload).expect("our observer's answer decodes");
    let mapped = theirs.mapped_address().expect("a mapped address");
    let (p, alt) = (obs.config().primary, obs.config().alternate.expect("a classic server has two addresses"));
    let changed = SocketAddr::new(
        if local.ip() == p.ip() { alt.ip() } else { p.ip() },
        if local.port() == p.port() { alt.port() } else { p.port() },
    );
    let mut m = Message::new(theirs.class, METHOD_BINDING, theirs.transaction_id);
    m.classic = theirs.classic;
    let m = m
        .with(Attribute::MappedAddress(mapped))
        .with(Attribute::SourceAddress(reply.from))
        .with(Attribute::ChangedAddress(changed));
    let mut out = m.encode();
    let SocketAddr::V4(v4) = mapped else { panic!("stund is IPv4 only") };
    let port = v4.port() ^ u16::from_be_bytes([out[4], out[5]]);
    let mut xored = v4.ip().octets();
    for (b, k) in xored.iter_mut().zip(&out[4..8].to_vec()) {
        *b ^= k;
    }
    out.extend_from_slice(&[0x80, 0x20, 0, 8, 0, 1]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&xored);
    out.extend_from_slice(&[0x80, 0x22, 0, 16]);
    out.extend_from_slice(b"Vovida.org 0.97\0");
    let body = (out.len() - HEADER_LEN) as u16;
    out[2..4].copy_from_slice(&body.to_be_bytes());
    crate::observer::Reply { payload: out, ..reply }
}
