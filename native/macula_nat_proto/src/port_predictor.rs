//! Pure port prediction: which public ports a peer's NAT will use next, and
//! the numbers behind birthday probing.
//!
//! NAT port space is `1024..=65535` (64512 ports, the range the lab NAT
//! engine and most NATs allocate from); arithmetic wraps 65535 -> 1024 and
//! 1024 -> 65535, as a contiguity allocator does when it runs off the end.
//!
//! [`predict`] is what `macula_port_predictor:predict/2` wraps: from the
//! peer's allocation behaviour and what was last observed of it, an ordered
//! candidate list (most likely first):
//!
//! * EI mapping: its reflexive port, the same for every destination.
//! * port preservation: the local port of the (fresh) socket it punches from;
//! * port contiguity: `last + k * delta` for `k = 1..=count`; the window
//!   covers mappings other hosts behind the same NAT (or the peer itself)
//!   create between our observation and the punch;
//! * random: a birthday set of distinct ports spread over the whole range.
//!
//! # Birthday probing
//!
//! The hard side (random allocation) opens `n` sockets towards the easy
//! side's one endpoint, creating `n` uniformly random public ports; the
//! easy side sends `m` probes to distinct random ports of the hard side's IP.
//! A probe hits when it lands on one of the `n` ports; with `N = 64512`:
//!
//! ```text
//! P(miss) = C(N - n, m) / C(N, m) = prod_{i=0}^{m-1} (N - n - i) / (N - i)
//! P(hit)  = 1 - P(miss)  ~  1 - exp(-n * m / N)
//! ```
//!
//! so `n * m ~ -N ln(1 - p)`: for p = 0.95, `n * m ~ 193 000`, e.g. 440
//! sockets and 440 probes. The cost is `n + m` packets, smallest when
//! `n = m`; [`plan_birthday`] picks them under a socket cap and a rate cap.
//! Because any set of distinct probe ports has the same chance against a
//! uniform allocator, the probe order only matters against NATs that favour
//! part of the range; we spread the probes over the whole range.

use std::time::Duration;

use crate::nat::{Allocation, Mapping, NatProfile};

mod alloc_base;
pub use alloc_base::{latest_allocation, AllocBase, ProbeToken};

/// Lowest port a NAT allocates.
pub const PORT_MIN: u16 = 1024;
/// Highest port.
pub const PORT_MAX: u16 = 65535;
/// Number of allocatable ports, `PORT_MAX - PORT_MIN + 1`.
pub const PORT_RANGE: u32 = 64512;

/// Map any integer onto `PORT_MIN..=PORT_MAX`, wrapping around.
pub fn wrap_port(p: i64) -> u16 {
    let off = (p - i64::from(PORT_MIN)).rem_euclid(i64::from(PORT_RANGE));
    // off < 64512, so the sum fits in u16.
    (i64::from(PORT_MIN) + off) as u16
}

/// Shortest signed distance from `a` to `b` on the wrapping port range, in
/// `(-RANGE/2, RANGE/2]`.
pub fn port_distance(a: u16, b: u16) -> i32 {
    let r = PORT_RANGE as i32;
    let d = (i32::from(b) - i32::from(a)).rem_euclid(r);
    if d > r / 2 {
        d - r
    } else {
        d
    }
}

/// What we know about a peer's NAT for predicting its next public port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHint {
    pub mapping: Mapping,
    pub allocation: Allocation,
    /// Public ports of the peer's most recent fresh mappings, oldest first
    /// (at least its reflexive port, when known).
    pub observed: Vec<u16>,
    /// Delta between consecutive mappings (PC); inferred from `observed`
    /// when absent.
    pub port_delta: Option<i32>,
    /// Local port of the socket the peer punches from.
    pub local_port: Option<u16>,
}

impl PortHint {
    /// From a detected profile plus the local port the peer punches from.
    pub fn from_profile(p: &NatProfile, local_port: Option<u16>) -> PortHint {
        PortHint {
            mapping: p.mapping,
            allocation: p.allocation,
            observed: vec![p.public_addr.port()],
            port_delta: p.port_delta,
            local_port,
        }
    }
}

/// Options of [`predict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PredictOpts {
    /// Maximum number of candidates (the window for PC, the birthday set
    /// size for RD). Preservation and EI mapping give one port.
    pub count: usize,
    /// Seed of the birthday set.
    pub seed: u64,
}

/// Ordered candidate public ports of the peer's next mapping (see the module
/// docs). Empty when nothing useful is known.
pub fn predict(h: &PortHint, opts: &PredictOpts) -> Vec<u16> {
    if opts.count == 0 {
        return Vec::new();
    }
    let last = h.observed.last().copied();
    if h.mapping == Mapping::Ei {
        return last.into_iter().collect();
    }
    match h.allocation {
        // The first mapping of a socket keeps its local port; without the
        // local port, the observed first mapping shows it.
        Allocation::Pp => h.local_port.or(h.observed.first().copied()).into_iter().collect(),
        Allocation::Pc => {
            let delta = h.port_delta.or_else(|| infer_delta(&h.observed));
            match (last, delta) {
                (Some(l), Some(d)) => contiguity_window(l, d, opts.count),
                _ => Vec::new(),
            }
        }
        Allocation::Rd => birthday_ports(opts.seed, opts.count),
    }
}

/// `last + k * delta` for `k = 1..=window`, wrapped into the port range,
/// stopping before the sequence repeats. Empty for a delta that predicts
/// nothing (0 or a multiple of the range).
pub fn contiguity_window(last: u16, delta: i32, window: usize) -> Vec<u16> {
    let step = i64::from(delta).rem_euclid(i64::from(PORT_RANGE));
    if step == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(window.min(PORT_RANGE as usize));
    let mut p = i64::from(last);
    for _ in 0..window.min(PORT_RANGE as usize) {
        p = i64::from(wrap_port(p + step));
        let port = p as u16;
        // With a step sharing factors with the range the cycle is shorter
        // than the range: stop at the first repeat.
        if out.first() == Some(&port) {
            break;
        }
        out.push(port);
    }
    out
}

/// The delta between consecutive observed ports, if one value explains at
/// least half of the steps (another host can steal a port in between).
pub fn infer_delta(observed: &[u16]) -> Option<i32> {
    let deltas: Vec<i32> = observed.windows(2).map(|w| port_distance(w[0], w[1])).filter(|d| *d != 0).collect();
    let mut best: Option<(i32, usize)> = None;
    for d in &deltas {
        let n = deltas.iter().filter(|x| *x == d).count();
        if best.map_or(true, |(_, c)| n > c) {
            best = Some((*d, n));
        }
    }
    best.filter(|(_, n)| n * 2 >= deltas.len()).map(|(d, _)| d)
}

/// A seeded sequence of distinct ports covering the whole range: a
/// full-period linear congruential permutation of `0..RANGE`, so no port
/// repeats before all 64512 were produced and no memory is needed.
#[derive(Clone, Debug)]
pub struct BirthdayPorts {
    x: u32,
    a: u32,
    c: u32,
    left: u32,
}

impl BirthdayPorts {
    pub fn new(seed: u64) -> BirthdayPorts {
        let n = PORT_RANGE;
        // Hull-Dobell: full period iff c is coprime with N and a - 1 is
        // divisible by every prime factor of N and by 4 (N = 2^10 * 3^2 * 7,
        // so a = 1 + 84k).
        let s = splitmix(seed);
        let k = 1 + (s % u64::from(n / 84 - 1)) as u32;
        let a = 1 + 84 * k;
        let mut c = (splitmix(s) % u64::from(n)) as u32;
        while gcd(c, n) != 1 {
            c = (c + 1) % n;
        }
        let x = (splitmix(s ^ 0xA5A5_A5A5) % u64::from(n)) as u32;
        BirthdayPorts { x, a, c, left: n }
    }
}

impl Iterator for BirthdayPorts {
    type Item = u16;
    fn next(&mut self) -> Option<u16> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.x = ((u64::from(self.a) * u64::from(self.x) + u64::from(self.c)) % u64::from(PORT_RANGE)) as u32;
        // x < 64512
        Some(PORT_MIN + self.x as u16)
    }
}

/// `count` distinct ports (at most the whole range) from a seeded
/// permutation of the range.
pub fn birthday_ports(seed: u64, count: usize) -> Vec<u16> {
    BirthdayPorts::new(seed).take(count).collect()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Probability that at least one of `probes` distinct random ports hits one
/// of `sockets` distinct random ports, in a range of `range` ports (exact,
/// hypergeometric; see the module docs).
pub fn birthday_hit_probability(sockets: u32, probes: u32, range: u32) -> f64 {
    if sockets == 0 || probes == 0 || range == 0 {
        return 0.0;
    }
    let (n, m, big) = (u64::from(sockets.min(range)), u64::from(probes.min(range)), u64::from(range));
    if n + m > big {
        return 1.0; // pigeonhole
    }
    let mut ln_miss = 0.0f64;
    for i in 0..m {
        ln_miss += ((big - n - i) as f64 / (big - i) as f64).ln();
    }
    1.0 - ln_miss.exp()
}

/// Caps on a birthday attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BirthdayLimits {
    /// Most sockets the hard side may open.
    pub max_sockets: u32,
    /// Packets per second either side may send.
    pub rate_pps: u32,
    /// Longest the attempt may take.
    pub max_duration: Duration,
}

impl Default for BirthdayLimits {
    fn default() -> Self {
        BirthdayLimits { max_sockets: 512, rate_pps: 200, max_duration: Duration::from_secs(10) }
    }
}

/// A chosen birthday attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BirthdayPlan {
    /// Sockets the hard side opens.
    pub sockets: u32,
    /// Probes the easy side sends.
    pub probes: u32,
    /// Exact hit probability of this plan.
    pub probability: f64,
    /// Time at the rate cap: the hard side opens its sockets first, then
    /// the easy side probes, `(sockets + probes) / rate`.
    pub duration: Duration,
}

/// The cheapest plan (fewest packets, `sockets + probes`) that reaches
/// `target` hit probability within `limits`, or `None` if none does.
///
/// Probes start once the hard side's mappings exist (a probe that arrives
/// before them is wasted), hence the sequential duration.
pub fn plan_birthday(target: f64, limits: &BirthdayLimits) -> Option<BirthdayPlan> {
    if !(target > 0.0 && target <= 1.0) || limits.max_sockets == 0 || limits.rate_pps == 0 {
        return None;
    }
    let range = PORT_RANGE;
    let max_n = limits.max_sockets.min(range);
    let budget = (u128::from(limits.rate_pps) * limits.max_duration.as_millis() / 1000).min(u128::from(u32::MAX)) as u64;
    // n * m ~ -N ln(1 - p); the packet count n + m is smallest at n = m, so
    // search around min(sqrt, cap).
    let need = -(f64::from(range)) * (1.0 - target).max(1e-12).ln();
    let centre = (need.sqrt().ceil() as u32).clamp(1, max_n);
    let mut best: Option<(u32, u32)> = None;
    for n in centre.saturating_sub(8).max(1)..=centre.saturating_add(8).min(max_n) {
        let m = min_probes(n, target, range);
        if best.map_or(true, |(bn, bm)| u64::from(n) + u64::from(m) < u64::from(bn) + u64::from(bm)) {
            best = Some((n, m));
        }
    }
    let (n, m) = best?;
    let total = u64::from(n) + u64::from(m);
    if total > budget {
        return None;
    }
    Some(BirthdayPlan {
        sockets: n,
        probes: m,
        probability: birthday_hit_probability(n, m, range),
        duration: Duration::from_micros(total * 1_000_000 / u64::from(limits.rate_pps)),
    })
}

/// Smallest `m` with `P(hit) >= target` for `n` sockets (binary search; the
/// probability grows with `m` and is 1 at `m = range - n + 1`).
fn min_probes(n: u32, target: f64, range: u32) -> u32 {
    let (mut lo, mut hi) = (1u32, range - n.min(range - 1) + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if birthday_hit_probability(n, mid, range) >= target {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests;
