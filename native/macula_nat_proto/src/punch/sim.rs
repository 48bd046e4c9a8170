//! Two hosts, each behind one of detect's simulated NATs (any of the 27
//! types, or none with a filtering firewall), a fixed one-way delay and
//! seeded loss between them, driving two [`Punch`] machines. Also the test
//! planner that turns a [`Strategy`] into the two punch configurations, the
//! way the runtime will.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;
use crate::detect::sim::{SimNat, XorShift};
use crate::nat::{Filtering, NatType};
use crate::port_predictor::{contiguity_window, BirthdayLimits};
use crate::strategy::{aim, Aim, Dialer, PeerNat, Side, Strategy};

/// Where both hosts registered (the rendezvous); nothing answers there.
pub(super) const RENDEZVOUS: &str = "198.51.100.1:3478";
/// Predicted ports per contiguity window: covers the listener's own extra
/// mappings (priming + answer) and a stolen port or two.
pub(super) const WINDOW: usize = 4;

pub(super) struct Host {
    pub nat: SimNat,
    /// Local address of each socket, by index; 0 is the primary socket.
    pub locals: Vec<SocketAddr>,
    public_ip: IpAddr,
}

impl Host {
    /// Host `n` (0 or 1) behind `peer`'s NAT.
    pub fn new(n: usize, peer: &PeerNat, seed: u64) -> Host {
        let (local_ip, public_ip): (IpAddr, IpAddr) = if peer.public {
            let ip: IpAddr = format!("192.0.2.{}", 50 + n).parse().unwrap();
            (ip, ip)
        } else {
            (format!("10.0.{}.2", n + 1).parse().unwrap(), format!("203.0.113.{}", 1 + 98 * n).parse().unwrap())
        };
        let ty = (!peer.public).then_some(peer.nat);
        let mut nat = SimNat::new(ty, peer.port_delta.unwrap_or(1), seed.wrapping_add(n as u64 * 7919));
        nat.public_ip = public_ip;
        nat.firewall = peer.nat.filtering;
        Host { nat, locals: vec![SocketAddr::new(local_ip, 5000)], public_ip }
    }

    /// Bind another socket; returns its index.
    pub fn add_socket(&mut self, port: u16) -> usize {
        self.locals.push(SocketAddr::new(self.locals[0].ip(), port));
        self.locals.len() - 1
    }

    /// The primary socket talks to the rendezvous: returns the reflexive
    /// address the rendezvous saw.
    pub fn register(&mut self) -> SocketAddr {
        self.nat.outbound(self.locals[0], RENDEZVOUS.parse().unwrap())
    }

    pub fn public_ip(&self) -> IpAddr {
        self.public_ip
    }
}

struct Pkt {
    to: usize,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

/// One transmission, for rate and timing checks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sent {
    pub host: usize,
    pub at: Duration,
    pub request: bool,
}

pub(super) struct Outcome {
    pub results: [Option<Result<PunchSuccess, PunchError>>; 2],
    /// When each result appeared, since the start of the run.
    pub done: [Duration; 2],
    pub stats: [PunchStats; 2],
    pub sent: Vec<Sent>,
}

impl Outcome {
    pub fn ok(&self, h: usize) -> Option<PunchSuccess> {
        match self.results[h] {
            Some(Ok(s)) => Some(s),
            _ => None,
        }
    }

    /// Both succeeded, on the same 5-tuple seen from both ends.
    pub fn agreed(&self) -> bool {
        match (self.ok(0), self.ok(1)) {
            (Some(a), Some(b)) => a.remote_addr == b.our_reflexive && b.remote_addr == a.our_reflexive,
            _ => false,
        }
    }
}

pub(super) struct Net {
    pub hosts: [Host; 2],
    pub one_way: Duration,
    /// Per-packet loss in parts per thousand.
    pub loss_permille: u64,
    /// Drop the first n packets each host sends.
    pub drop_first: [usize; 2],
    rng: XorShift,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pkts: Vec<Option<Pkt>>,
    sent: Vec<Sent>,
}

impl Net {
    pub fn new(hosts: [Host; 2], one_way_ms: u64, loss_permille: u64, seed: u64) -> Net {
        Net {
            hosts,
            one_way: Duration::from_millis(one_way_ms),
            loss_permille,
            drop_first: [0, 0],
            rng: XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1),
            queue: BinaryHeap::new(),
            pkts: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn send(&mut self, h: usize, t: Transmit, now: Instant, t0: Instant) {
        let request = t.payload.len() >= 2 && t.payload[..2] == [0x00, 0x01];
        self.sent.push(Sent { host: h, at: now - t0, request });
        let local = self.hosts[h].locals[t.socket];
        let src = self.hosts[h].nat.outbound(local, t.dst);
        if self.drop_first[h] > 0 {
            self.drop_first[h] -= 1;
            return;
        }
        if self.rng.next() % 1000 < self.loss_permille {
            return;
        }
        let Some(to) = (0..2).find(|&o| o != h && self.hosts[o].public_ip() == t.dst.ip()) else { return };
        self.queue.push(Reverse((now + self.one_way, self.pkts.len() as u64)));
        self.pkts.push(Some(Pkt { to, src, dst: t.dst, payload: t.payload }));
    }

    fn deliver(&mut self, m: &mut [Punch; 2], seq: u64, now: Instant) {
        let Some(p) = self.pkts.get_mut(seq as usize).and_then(Option::take) else { return };
        let host = &mut self.hosts[p.to];
        let Some(local) = host.nat.inbound(p.src, p.dst) else { return };
        let Some(socket) = host.locals.iter().position(|l| *l == local) else { return };
        m[p.to].handle_datagram(now, socket, p.src, &p.payload);
    }

    /// Drive both machines until both have a result.
    pub fn run(&mut self, m: &mut [Punch; 2], t0: Instant) -> Outcome {
        let mut now = t0;
        let mut results = [None, None];
        let mut done = [Duration::ZERO; 2];
        let mut stuck = 0;
        for _ in 0..5_000_000 {
            let before = self.sent.len();
            for h in 0..2 {
                while let Some(t) = m[h].poll_transmit(now) {
                    self.send(h, t, now, t0);
                }
                if results[h].is_none() {
                    if let Some(r) = m[h].poll_result() {
                        assert!(m[h].poll_result().is_none(), "result must be returned once");
                        results[h] = Some(r);
                        done[h] = now - t0;
                    }
                }
            }
            if results.iter().all(Option::is_some) {
                return Outcome { results, done, stats: [m[0].stats(), m[1].stats()], sent: std::mem::take(&mut self.sent) };
            }
            let timer = m.iter().filter_map(Punch::poll_timeout).min();
            let next_pkt = self.queue.peek().map(|Reverse((t, _))| *t);
            let packet_first = match (next_pkt, timer) {
                (Some(tp), Some(t)) => tp <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => panic!("unfinished punch without a timer"),
            };
            if packet_first {
                let Some(Reverse((at, seq))) = self.queue.pop() else { unreachable!() };
                now = now.max(at);
                self.deliver(m, seq, now);
            } else if let Some(t) = timer {
                // A timer that does not move while nothing is sent is a
                // livelock in the state machine.
                stuck = if t <= now && self.sent.len() == before { stuck + 1 } else { 0 };
                assert!(stuck < 100, "livelock at {:?}", now - t0);
                now = now.max(t);
                for p in m.iter_mut() {
                    p.handle_timeout(now);
                }
            }
        }
        panic!("punch simulation did not finish");
    }
}

/// Ids and session of a simulated pair.
pub(super) const ID_A: NodeId = NodeId::from_bytes([0xA1; 32]);
pub(super) const ID_B: NodeId = NodeId::from_bytes([0xB2; 32]);

pub(super) fn session(seed: u64) -> SessionId {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..].copy_from_slice(&(!seed).to_le_bytes());
    SessionId::from_bytes(s)
}

/// Birthday parameters used by the planner.
pub(super) fn birthday_limits() -> BirthdayLimits {
    BirthdayLimits { max_sockets: 512, rate_pps: 500, max_duration: Duration::from_secs(10) }
}

/// A planned punch: the two hosts (sockets bound, registered) and configs.
pub(super) struct Planned {
    pub hosts: [Host; 2],
    pub cfgs: [PunchConfig; 2],
}

/// Turn `strategy` for peers `[a, b]` into hosts and punch configurations,
/// as the runtime will: host 0 (side A) initiates. `target` is the birthday
/// hit probability to plan for.
pub(super) fn plan(strategy: Strategy, peers: [PeerNat; 2], rtt: Duration, seed: u64, target: f64) -> Planned {
    let mut hosts = [Host::new(0, &peers[0], seed), Host::new(1, &peers[1], seed)];
    let refl = [hosts[0].register(), hosts[1].register()];
    let aims = [aim(&peers[0]), aim(&peers[1])];
    let pd_pp = |x: usize| aims[x] == Aim::Preserved && peers[x].nat.mapping == crate::nat::Mapping::Pd;

    // Sockets each side punches from, and the addresses the other side aims at.
    let mut sockets: [Vec<usize>; 2] = [vec![0], vec![0]];
    let mut cands: [Vec<SocketAddr>; 2] = [vec![refl[0]], vec![refl[1]]];
    for x in 0..2 {
        let y = 1 - x;
        match aims[x] {
            Aim::Preserved => {
                // A PD-mapping side keeps its port only for a socket's first
                // mapping: one fresh socket per candidate of a windowed peer.
                let n = if pd_pp(x) && matches!(aims[y], Aim::Contiguous(_)) { WINDOW } else { 1 };
                sockets[x] = (0..n).map(|i| hosts[x].add_socket(40_000 + 10 * i as u16)).collect();
                cands[x] = sockets[x].iter().map(|&s| SocketAddr::new(hosts[x].public_ip(), hosts[x].locals[s].port())).collect();
            }
            Aim::Contiguous(d) => {
                let ip = hosts[x].public_ip();
                cands[x] = contiguity_window(refl[x].port(), d, WINDOW).into_iter().map(|p| SocketAddr::new(ip, p)).collect();
            }
            Aim::Reflexive | Aim::Unpredictable => {}
        }
    }
    let cross = |socks: &[usize], to: &[SocketAddr]| -> Vec<(usize, SocketAddr)> {
        if socks.len() > 1 && socks.len() == to.len() {
            socks.iter().copied().zip(to.iter().copied()).collect()
        } else {
            socks.iter().flat_map(|s| to.iter().map(move |a| (*s, *a))).collect()
        }
    };

    let mut targets: [Vec<(usize, SocketAddr)>; 2] = [Vec::new(), Vec::new()];
    // Birthday: (hard side, its sockets, the easy side's endpoint, schedule).
    let mut birthday: Option<(usize, Vec<usize>, BirthdaySchedule)> = None;
    match strategy {
        Strategy::Direct { dialer } => {
            let d = if dialer == Dialer::B { 1 } else { 0 };
            targets[d] = vec![(0, refl[1 - d])];
        }
        Strategy::ConnectionReversal { dialer } => {
            let d = if dialer == Side::B { 1 } else { 0 };
            let l = 1 - d;
            targets[d] = cross(&[0], &cands[l]);
            targets[l] = cross(&sockets[l], &[refl[d]]);
        }
        Strategy::SimplePunch | Strategy::PredictPreservation | Strategy::PredictContiguity | Strategy::Relay => {
            for x in 0..2 {
                targets[x] = cross(&sockets[x], &cands[1 - x]);
            }
        }
        Strategy::BirthdayProbing { hard } => {
            let h = if hard == Side::B { 1 } else { 0 };
            let sched = BirthdaySchedule::new(target, &birthday_limits(), rtt).expect("birthday plan within limits");
            let fresh: Vec<usize> = (0..sched.plan.sockets).map(|i| hosts[h].add_socket(20_000 + i as u16)).collect();
            birthday = Some((h, fresh, sched));
        }
    }
    let ids = [(ID_A, ID_B), (ID_B, ID_A)];
    let roles = [Role::Initiator, Role::Responder];
    let cfgs = [0, 1].map(|x| {
        let mut c = PunchConfig::new(roles[x], ids[x].0, ids[x].1, session(seed), targets[x].clone(), rtt);
        c.seed = seed.wrapping_mul(31).wrapping_add(x as u64);
        c.txids = crate::rng::Txids::seeded(c.seed);
        // As the runtime does: only the peer's rendezvous-observed address
        // is trusted before it answers.
        c.verify = Some(Verify::known(vec![refl[1 - x]]));
        match &birthday {
            Some((h, fresh, sched)) if *h == x => sched.configure_hard(&mut c, fresh.iter().copied(), cands[1 - x][0]),
            Some((h, _, sched)) => sched.configure_easy(&mut c, sockets[x][0], hosts[*h].public_ip()),
            None => {}
        }
        c
    });
    Planned { hosts, cfgs }
}

/// Plan and run one punch between `peers`; side A initiates at `t0`, side B
/// receives the go half a rendezvous RTT later.
pub(super) fn punch_pair(strategy: Strategy, peers: [PeerNat; 2], one_way_ms: u64, loss_permille: u64, seed: u64, target: f64) -> Outcome {
    let rtt = Duration::from_millis(4 * one_way_ms); // via the rendezvous
    let Planned { hosts, cfgs } = plan(strategy, peers, rtt, seed, target);
    let mut net = Net::new(hosts, one_way_ms, loss_permille, seed);
    let t0 = Instant::now();
    let [ca, cb] = cfgs;
    let mut m = [Punch::new(ca, t0), Punch::new(cb, t0 + rtt / 2)];
    net.run(&mut m, t0)
}

pub(super) fn public(f: Filtering) -> PeerNat {
    PeerNat::public(f)
}

pub(super) fn behind(t: NatType) -> PeerNat {
    PeerNat::behind(t)
}
