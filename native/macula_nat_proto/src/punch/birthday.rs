//! How both sides of a birthday punch configure their [`Punch`] machines.
//!
//! Nothing about the attempt is signalled: each side derives the same
//! schedule from the same plan ([`plan_birthday`] under the same limits) and
//! the pair's rendezvous round trip it got in the go. The hard side sends one
//! request per socket to the easy side's single endpoint; each opens a
//! mapping on its NAT and is dropped by the easy side's filter. The easy side
//! starts probing once all of those mappings exist: the hard side needs
//! `sockets / rate` to send them at the rate cap, and the pair RTT plus a
//! fixed setup margin cover the skew between the two starts (the hard side
//! opens its sockets after the go) and the path delay. Probes that arrive before
//! their mapping exists are wasted, so starting earlier would only lower the
//! hit probability.
//!
//! Peers running different versions could plan differently; the plan's
//! inputs are constants here for that reason ([`BirthdaySchedule::standard`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{BirthdayProbe, PunchConfig};
use crate::port_predictor::{plan_birthday, BirthdayLimits, BirthdayPlan};

/// Hit probability the standard schedule is planned for. 0.99 rather than
/// the 0.95 a single attempt is asked to reach: other losses (a dropped
/// nomination, a slow handshake) come on top of a miss.
pub const STANDARD_TARGET: f64 = 0.99;
/// Transmissions per hard-side socket: the first opens the mapping, the
/// second covers a first one lost before the hard side's NAT.
pub const HARD_ATTEMPTS: u32 = 2;
/// Margin after the last probe for its answer and the nomination.
const TAIL: Duration = Duration::from_secs(1);
/// The hard side opens its sockets after the go (17-47 ms for ~500 in the
/// lab), so it starts that much after the easy side; without delay the
/// pair RTT is far too small to cover that.
const SETUP: Duration = Duration::from_millis(100);

/// One birthday attempt, as both sides run it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BirthdaySchedule {
    pub plan: BirthdayPlan,
    /// Requests per second on each side.
    pub rate_pps: u32,
    /// When the easy side starts probing, after the start.
    pub start_after: Duration,
    /// Both machines give up this long after the start.
    pub timeout: Duration,
}

impl BirthdaySchedule {
    /// The cheapest schedule reaching hit probability `target` within
    /// `limits`, for a pair whose go came with `rendezvous_rtt`; `None` if no
    /// plan reaches it.
    pub fn new(target: f64, limits: &BirthdayLimits, rendezvous_rtt: Duration) -> Option<BirthdaySchedule> {
        let plan = plan_birthday(target, limits)?;
        let gap = Duration::from_secs(1) / limits.rate_pps.max(1);
        let start_after = gap * plan.sockets + rendezvous_rtt + SETUP;
        Some(BirthdaySchedule {
            plan,
            rate_pps: limits.rate_pps,
            start_after,
            timeout: start_after + gap * plan.probes + TAIL,
        })
    }

    /// What the runtime uses: [`STANDARD_TARGET`] under the default
    /// [`BirthdayLimits`] (512 sockets, 200 requests per second, 10 s).
    pub fn standard(rendezvous_rtt: Duration) -> Option<BirthdaySchedule> {
        BirthdaySchedule::new(STANDARD_TARGET, &BirthdayLimits::default(), rendezvous_rtt)
    }

    /// Sockets the hard side punches from (the node's own included).
    pub fn sockets(&self) -> usize {
        self.plan.sockets as usize
    }

    /// The hard side: one path from each of `sockets` to the easy side's
    /// endpoint `easy`, replacing any targets.
    pub fn configure_hard(&self, cfg: &mut PunchConfig, sockets: impl IntoIterator<Item = usize>, easy: SocketAddr) {
        cfg.targets = sockets.into_iter().map(|s| (s, easy)).collect();
        cfg.max_attempts = HARD_ATTEMPTS;
        cfg.birthday = None;
        self.common(cfg);
    }

    /// The easy side: probes from local `socket` to distinct random ports of
    /// the hard side's public IP. Targets are kept (usually none).
    pub fn configure_easy(&self, cfg: &mut PunchConfig, socket: usize, hard_ip: IpAddr) {
        cfg.birthday = Some(BirthdayProbe { socket, peer_ip: hard_ip, probes: self.plan.probes, start_after: self.start_after });
        self.common(cfg);
    }

    fn common(&self, cfg: &mut PunchConfig) {
        cfg.rate_pps = self.rate_pps;
        cfg.timeout = self.timeout;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{NodeId, SessionId};
    use crate::punch::Role;

    fn cfg() -> PunchConfig {
        PunchConfig::new(Role::Initiator, NodeId::from_bytes([1; 32]), NodeId::from_bytes([2; 32]), SessionId::from_bytes([3; 16]), vec![(0, "203.0.113.9:1".parse().unwrap())], Duration::from_millis(100))
    }

    #[test]
    fn standard_schedule_reaches_its_target_within_the_default_limits() {
        let s = BirthdaySchedule::standard(Duration::from_millis(100)).expect("a plan");
        let limits = BirthdayLimits::default();
        assert!(s.plan.probability >= STANDARD_TARGET);
        assert!(s.plan.sockets <= limits.max_sockets);
        assert_eq!(s.rate_pps, limits.rate_pps);
        // Hard side's first round at the rate cap, then the pair RTT and
        // the setup margin.
        let gap = Duration::from_secs(1) / limits.rate_pps;
        assert_eq!(s.start_after, gap * s.plan.sockets + Duration::from_millis(100) + SETUP);
        assert_eq!(s.timeout, s.start_after + gap * s.plan.probes + TAIL);
        // Worst case (no hit) still ends well inside a 10 s connect.
        assert!(s.timeout < Duration::from_secs(8), "{:?}", s.timeout);
    }

    #[test]
    fn both_sides_derive_the_same_schedule_from_the_same_rtt() {
        let rtt = Duration::from_millis(137);
        assert_eq!(BirthdaySchedule::standard(rtt), BirthdaySchedule::standard(rtt));
    }

    #[test]
    fn unreachable_target_gives_no_schedule() {
        let tight = BirthdayLimits { max_sockets: 4, rate_pps: 10, max_duration: Duration::from_secs(1) };
        assert!(BirthdaySchedule::new(0.99, &tight, Duration::ZERO).is_none());
    }

    #[test]
    fn hard_side_aims_every_socket_at_the_easy_endpoint() {
        let s = BirthdaySchedule::standard(Duration::from_millis(50)).unwrap();
        let easy: SocketAddr = "198.51.100.7:4500".parse().unwrap();
        let mut c = cfg();
        s.configure_hard(&mut c, 0..3, easy);
        assert_eq!(c.targets, vec![(0, easy), (1, easy), (2, easy)]);
        assert_eq!(c.max_attempts, HARD_ATTEMPTS);
        assert_eq!((c.rate_pps, c.timeout, c.birthday), (s.rate_pps, s.timeout, None));
    }

    #[test]
    fn easy_side_probes_the_hard_ip_after_the_hard_side_opened_its_sockets() {
        let s = BirthdaySchedule::standard(Duration::from_millis(50)).unwrap();
        let ip: IpAddr = "203.0.113.40".parse().unwrap();
        let mut c = cfg();
        s.configure_easy(&mut c, 0, ip);
        let b = c.birthday.expect("probing");
        assert_eq!((b.socket, b.peer_ip, b.probes, b.start_after), (0, ip, s.plan.probes, s.start_after));
        assert_eq!(c.targets.len(), 1, "targets kept");
        assert_eq!((c.rate_pps, c.timeout), (s.rate_pps, s.timeout));
    }
}
