//! Where a contiguous allocator's next port is counted from.
//!
//! A port-contiguous NAT hands out `last + delta` to the next mapping of
//! any host behind it, so the port a peer should aim at is one step past
//! the NAT's *latest* allocation, not past whatever mapping it observed
//! first. The rendezvous's view (the control connection's mapping) goes
//! stale: every new mapping of ours since then (one per peer with HD
//! mapping, one per peer endpoint with PD) moves the counter on, and a node
//! that rebinds a local port whose mapping the NAT still holds is seen at a
//! mapping made long ago. The runtime therefore measures the counter
//! afresh (a STUN request from a throwaway socket: a new mapping, hence
//! the latest port) and this policy says when a measurement may be used:
//!
//! * not after a session of ours has allocated from it ([`AllocBase::used`]:
//!   the counter has moved by an amount we do not know);
//! * not when a session started while the measurement was in flight
//!   (its mappings may fall before or after it);
//! * not when older than `max_age` (other hosts behind the NAT allocate
//!   too; the window covers a few of theirs, not minutes of them);
//! * not after mappings of ours made outside sessions
//!   ([`AllocBase::others_allocated`]: the mapping-lifetime measurement's
//!   sockets learn and relearn mappings in the background).

use std::time::{Duration, Instant};

/// The latest measured allocation of our NAT, if still usable.
#[derive(Clone, Debug)]
pub struct AllocBase {
    latest: Option<(u16, Instant)>,
    /// Moves on whenever a session allocates: a measurement started in an
    /// earlier epoch is not taken.
    epoch: u64,
    max_age: Duration,
    /// The runtime's count of mappings made outside sessions, as last seen.
    others: u64,
}

/// A measurement in flight, from [`AllocBase::probe_started`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeToken(u64);

impl AllocBase {
    pub fn new(max_age: Duration) -> AllocBase {
        AllocBase { latest: None, epoch: 0, max_age, others: 0 }
    }

    /// The port to count from, if a measurement is usable at `now`.
    pub fn fresh(&self, now: Instant) -> Option<u16> {
        self.latest.filter(|(_, at)| now.saturating_duration_since(*at) <= self.max_age).map(|(p, _)| p)
    }

    /// A session is about to make mappings: what was measured no longer
    /// says where the counter is.
    pub fn used(&mut self) {
        self.epoch += 1;
        self.latest = None;
    }

    /// `count`: how many mappings our sockets have made outside sessions so
    /// far (a running count kept by the runtime). When it moved since the
    /// last look, the counter moved as after a session: what was measured,
    /// or is being measured, is not used.
    pub fn others_allocated(&mut self, count: u64) {
        if count != self.others {
            self.others = count;
            self.used();
        }
    }

    pub fn probe_started(&self) -> ProbeToken {
        ProbeToken(self.epoch)
    }

    /// Records a measurement taken at `at`; `false` (and nothing recorded)
    /// when a session allocated while it was in flight.
    pub fn probed(&mut self, token: ProbeToken, port: u16, at: Instant) -> bool {
        if token.0 != self.epoch {
            return false;
        }
        self.latest = Some((port, at));
        true
    }
}

/// Of ports a contiguous allocator with `delta` handed out (any order, all
/// within half the port range of each other, which a NAT's mapping
/// lifetime guarantees), the one handed out last.
pub fn latest_allocation(delta: i32, ports: impl IntoIterator<Item = u16>) -> Option<u16> {
    let dir = delta.signum();
    ports.into_iter().reduce(|best, p| if super::port_distance(best, p) * dir > 0 { p } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_allocation_is_furthest_along_the_delta() {
        assert_eq!(latest_allocation(1, []), None);
        assert_eq!(latest_allocation(1, [31497]), Some(31497));
        // A recycled socket's old mapping (30960) loses to the fresh one.
        assert_eq!(latest_allocation(1, [31497, 30960, 31499]), Some(31499));
        assert_eq!(latest_allocation(1, [30960, 31499, 31497]), Some(31499));
        // Counting down.
        assert_eq!(latest_allocation(-2, [5000, 4990, 5010]), Some(4990));
        // Across the wrap at the top of the range: 1030 came after 65530.
        assert_eq!(latest_allocation(1, [65530, 1030, 65000]), Some(1030));
        assert_eq!(latest_allocation(-1, [1030, 65530]), Some(65530));
    }

    const AGE: Duration = Duration::from_secs(30);

    #[test]
    fn nothing_measured_nothing_fresh() {
        assert_eq!(AllocBase::new(AGE).fresh(Instant::now()), None);
    }

    #[test]
    fn a_measurement_is_fresh_until_max_age() {
        let t0 = Instant::now();
        let mut b = AllocBase::new(AGE);
        let tok = b.probe_started();
        assert!(b.probed(tok, 20910, t0));
        assert_eq!(b.fresh(t0), Some(20910));
        assert_eq!(b.fresh(t0 + AGE), Some(20910));
        assert_eq!(b.fresh(t0 + AGE + Duration::from_millis(1)), None);
    }

    #[test]
    fn a_session_spends_the_measurement() {
        let t0 = Instant::now();
        let mut b = AllocBase::new(AGE);
        let tok = b.probe_started();
        b.probed(tok, 20910, t0);
        b.used();
        assert_eq!(b.fresh(t0), None);
    }

    #[test]
    fn mappings_made_outside_sessions_spend_the_measurement() {
        let t0 = Instant::now();
        let mut b = AllocBase::new(AGE);
        let tok = b.probe_started();
        b.probed(tok, 20910, t0);
        // Nothing new outside sessions: still usable.
        b.others_allocated(0);
        assert_eq!(b.fresh(t0), Some(20910));
        // The lifetime measurement learnt a mapping since.
        b.others_allocated(1);
        assert_eq!(b.fresh(t0), None);
        let tok = b.probe_started();
        assert!(b.probed(tok, 20912, t0));
        b.others_allocated(1);
        assert_eq!(b.fresh(t0), Some(20912));
        // One made while a probe was in flight voids that probe.
        let tok = b.probe_started();
        b.others_allocated(2);
        assert!(!b.probed(tok, 20914, t0));
        assert_eq!(b.fresh(t0), None);
    }

    #[test]
    fn a_probe_overtaken_by_a_session_is_dropped() {
        let t0 = Instant::now();
        let mut b = AllocBase::new(AGE);
        let tok = b.probe_started();
        b.used();
        assert!(!b.probed(tok, 20945, t0));
        assert_eq!(b.fresh(t0), None);
        // A probe started after the session counts again.
        let tok = b.probe_started();
        assert!(b.probed(tok, 20950, t0));
        assert_eq!(b.fresh(t0), Some(20950));
    }

    #[test]
    fn the_latest_measurement_wins() {
        let t0 = Instant::now();
        let mut b = AllocBase::new(AGE);
        let (a, c) = (b.probe_started(), b.probe_started());
        b.probed(a, 100, t0);
        b.probed(c, 102, t0 + Duration::from_millis(5));
        assert_eq!(b.fresh(t0 + Duration::from_millis(5)), Some(102));
    }
}
