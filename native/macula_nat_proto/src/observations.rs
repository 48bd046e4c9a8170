//! Reflexive addresses reported by peers ("you look like 203.0.113.1:4000
//! to me"), turned into a belief that one lying peer cannot flip.
//!
//! Rules, and why:
//! * A peer counts once: its newest report replaces its older one, so
//!   repeating a lie adds nothing.
//! * A belief changes only when a different address is reported by at least
//!   `quorum` distinct peers (default 3) *and* by more peers than the current
//!   belief: a few stale or lying peers cannot flip an established belief.
//! * Reports older than `max_age` are dropped: mappings change (NAT reboot,
//!   new uplink), old votes must not pin the past.
//! * At most `max_peers` reports are kept (oldest evicted) to bound memory.
//!
//! "Distinct peers" is only as strong as peer identity: the runtime must
//! feed authenticated peer ids, or a Sybil can vote many times.
//!
//! Besides the full address, an IP-only belief is kept: behind a PD-mapping
//! NAT every peer sees a different port, yet they agree on the IP.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Parameters of the quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservationConfig {
    /// Distinct peers needed to adopt a new address (values below 1 act as 1).
    pub quorum: usize,
    /// Reports older than this are forgotten.
    pub max_age: Duration,
    /// Upper bound on the number of peers remembered.
    pub max_peers: usize,
}

impl Default for ObservationConfig {
    fn default() -> Self {
        ObservationConfig { quorum: 3, max_age: Duration::from_secs(600), max_peers: 64 }
    }
}

#[derive(Clone, Debug)]
struct Report<P> {
    peer: P,
    addr: SocketAddr,
    at: Instant,
}

/// Peer-reported reflexive addresses and the belief derived from them.
#[derive(Clone, Debug)]
pub struct Observations<P> {
    cfg: ObservationConfig,
    reports: Vec<Report<P>>,
    believed: Option<SocketAddr>,
    believed_ip: Option<IpAddr>,
}

impl<P: PartialEq + Clone> Observations<P> {
    pub fn new(cfg: ObservationConfig) -> Self {
        Observations { cfg, reports: Vec::new(), believed: None, believed_ip: None }
    }

    /// Start from an address we already trust (e.g. `NatProfile::public_addr`
    /// from detection); peers then need a quorum to move us off it.
    pub fn with_baseline(cfg: ObservationConfig, addr: SocketAddr) -> Self {
        let mut o = Self::new(cfg);
        o.believed = Some(addr);
        o.believed_ip = Some(addr.ip());
        o
    }

    /// Record that `peer` saw us as `addr` at `now`. Returns the new believed
    /// address if this report changed the belief.
    pub fn add_observation(&mut self, peer: P, addr: SocketAddr, now: Instant) -> Option<SocketAddr> {
        self.expire(now);
        if let Some(r) = self.reports.iter_mut().find(|r| r.peer == peer) {
            r.addr = addr;
            r.at = now;
        } else {
            if self.reports.len() >= self.cfg.max_peers.max(1) {
                if let Some(oldest) = self.reports.iter().enumerate().min_by_key(|(_, r)| r.at).map(|(i, _)| i) {
                    self.reports.remove(oldest);
                }
            }
            self.reports.push(Report { peer, addr, at: now });
        }
        if let Some(ip) = self.challenger(addr.ip(), self.believed_ip, |r| r.addr.ip()) {
            self.believed_ip = Some(ip);
        }
        let new = self.challenger(addr, self.believed, |r| r.addr)?;
        self.believed = Some(new);
        Some(new)
    }

    /// `candidate` replaces `current` if it has quorum and more support.
    fn challenger<K: PartialEq + Copy>(&self, candidate: K, current: Option<K>, key: impl Fn(&Report<P>) -> K) -> Option<K> {
        if current == Some(candidate) {
            return None;
        }
        let support = |k: K| self.reports.iter().filter(|r| key(r) == k).count();
        let s = support(candidate);
        let beats_current = current.map_or(true, |c| s > support(c));
        (s >= self.cfg.quorum.max(1) && beats_current).then_some(candidate)
    }

    /// Forget reports older than `max_age`. The belief itself stays (it was
    /// true when last confirmed) until a quorum says otherwise.
    pub fn expire(&mut self, now: Instant) {
        let max_age = self.cfg.max_age;
        self.reports.retain(|r| now.saturating_duration_since(r.at) <= max_age);
    }

    /// Current believed reflexive address.
    pub fn believed(&self) -> Option<SocketAddr> {
        self.believed
    }

    /// Current believed public IP (quorum on the IP alone).
    pub fn believed_ip(&self) -> Option<IpAddr> {
        self.believed_ip
    }

    /// How many distinct, unexpired peers currently report `addr`.
    pub fn support(&self, addr: SocketAddr) -> usize {
        self.reports.iter().filter(|r| r.addr == addr).count()
    }

    /// Number of peers with a live report.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    const TRUE: &str = "203.0.113.1:4000";
    const LIE: &str = "198.51.100.66:6666";

    fn obs() -> Observations<u32> {
        Observations::new(ObservationConfig::default())
    }

    #[test]
    fn quorum_of_distinct_peers_sets_the_belief() {
        let t = Instant::now();
        let mut o = obs();
        assert_eq!(o.add_observation(1, sa(TRUE), t), None);
        assert_eq!(o.add_observation(2, sa(TRUE), t), None);
        assert_eq!(o.believed(), None);
        assert_eq!(o.add_observation(3, sa(TRUE), t), Some(sa(TRUE)));
        assert_eq!(o.believed(), Some(sa(TRUE)));
        assert_eq!(o.believed_ip(), Some(sa(TRUE).ip()));
        // Further agreement is not a change.
        assert_eq!(o.add_observation(4, sa(TRUE), t), None);
        assert_eq!(o.support(sa(TRUE)), 4);
    }

    #[test]
    fn a_peer_repeating_itself_counts_once() {
        let t = Instant::now();
        let mut o = obs();
        for i in 0..50 {
            assert_eq!(o.add_observation(7, sa(LIE), t + Duration::from_secs(i)), None);
        }
        assert_eq!(o.support(sa(LIE)), 1);
        assert_eq!(o.len(), 1);
        assert_eq!(o.believed(), None);
    }

    #[test]
    fn one_lying_peer_cannot_flip_the_profile() {
        let t = Instant::now();
        let mut o = Observations::with_baseline(ObservationConfig::default(), sa(TRUE));
        for i in 0..20 {
            assert_eq!(o.add_observation(666, sa(LIE), t + Duration::from_secs(i)), None);
        }
        assert_eq!(o.believed(), Some(sa(TRUE)));
        // Two liars are still below quorum.
        assert_eq!(o.add_observation(667, sa(LIE), t), None);
        assert_eq!(o.believed(), Some(sa(TRUE)));
    }

    #[test]
    fn quorum_of_liars_cannot_beat_a_larger_honest_majority() {
        let t = Instant::now();
        let mut o = obs();
        for p in 1..=4 {
            o.add_observation(p, sa(TRUE), t);
        }
        for p in 100..=103 {
            assert_eq!(o.add_observation(p, sa(LIE), t), None, "a tie must not flip");
        }
        assert_eq!(o.believed(), Some(sa(TRUE)));
        // A fifth agreeing reporter of the new address does flip it: that is
        // what a real mapping change looks like.
        assert_eq!(o.add_observation(104, sa(LIE), t), Some(sa(LIE)));
    }

    #[test]
    fn mapping_change_is_adopted_once_old_reports_expire() {
        let t = Instant::now();
        let cfg = ObservationConfig { max_age: Duration::from_secs(60), ..ObservationConfig::default() };
        let mut o = Observations::new(cfg);
        for p in 1..=5 {
            o.add_observation(p, sa(TRUE), t);
        }
        assert_eq!(o.believed(), Some(sa(TRUE)));
        let later = t + Duration::from_secs(120);
        let new = sa("203.0.113.1:4100");
        assert_eq!(o.add_observation(10, new, later), None);
        assert_eq!(o.len(), 1, "old reports expired");
        assert_eq!(o.believed(), Some(sa(TRUE)), "belief survives expiry");
        assert_eq!(o.add_observation(11, new, later), None);
        assert_eq!(o.add_observation(12, new, later), Some(new));
    }

    #[test]
    fn a_peer_changing_its_report_moves_its_single_vote() {
        let t = Instant::now();
        let mut o = obs();
        o.add_observation(1, sa(LIE), t);
        o.add_observation(1, sa(TRUE), t);
        assert_eq!(o.support(sa(LIE)), 0);
        assert_eq!(o.support(sa(TRUE)), 1);
    }

    #[test]
    fn ip_quorum_works_when_ports_differ_behind_pd_nat() {
        let t = Instant::now();
        let mut o = obs();
        for p in 1..=3u32 {
            let a = SocketAddr::new(sa(TRUE).ip(), 4000 + p as u16);
            assert_eq!(o.add_observation(p, a, t), None, "no full-address quorum");
        }
        assert_eq!(o.believed(), None);
        assert_eq!(o.believed_ip(), Some(sa(TRUE).ip()));
    }

    #[test]
    fn peer_table_is_bounded() {
        let t = Instant::now();
        let cfg = ObservationConfig { max_peers: 4, ..ObservationConfig::default() };
        let mut o = Observations::new(cfg);
        for p in 0..100u32 {
            o.add_observation(p, sa(TRUE), t + Duration::from_millis(p as u64));
        }
        assert_eq!(o.len(), 4);
        assert!(!o.is_empty());
    }

    #[test]
    fn quorum_zero_behaves_like_one() {
        let t = Instant::now();
        let cfg = ObservationConfig { quorum: 0, ..ObservationConfig::default() };
        let mut o = Observations::new(cfg);
        assert_eq!(o.add_observation("a", sa(TRUE), t), Some(sa(TRUE)));
    }
}
