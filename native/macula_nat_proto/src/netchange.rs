//! When a change of this node's reflexive address counts as a network (NAT)
//! change (issue 19).
//!
//! A node behind a NAT cannot see its public address change: an ISP that
//! renumbers the router, or a NAT that rebinds the mapping, changes nothing
//! on the host. The parties it holds a connection to can: a rendezvous
//! tells a joined node the address it sees it at (`Registered`, at the join,
//! on a refresh and whenever the control connection's address moves). This
//! is the belief those reports feed: a report that differs from what we
//! believe is a change at once (a configured rendezvous is one trusted
//! witness, unlike the quorum of arbitrary peers in
//! [`crate::observations`]), but changes are reported at most once per
//! [`MIN_INTERVAL`]: an address that flaps (two paths, a rebinding NAT)
//! costs one re-detection per interval, the latest address wins.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// At most one reported change per this long.
pub const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Our public address moved from `old` to `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub old: SocketAddr,
    pub new: SocketAddr,
}

/// The believed reflexive address and the debounce (see the module).
#[derive(Clone, Debug, Default)]
pub struct ReflexiveWatch {
    believed: Option<SocketAddr>,
    last_change: Option<Instant>,
    /// A report that came within [`MIN_INTERVAL`] of the last change.
    held: Option<SocketAddr>,
}

impl ReflexiveWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The address we believe peers see us at.
    pub fn believed(&self) -> Option<SocketAddr> {
        self.believed
    }

    /// A witness saw us at `seen`. The first report is the belief, not a
    /// change; a report that differs is a change now, or at [`Self::due`]
    /// (then [`Self::poll`]) when the last one was too recent.
    pub fn observe(&mut self, seen: SocketAddr, now: Instant) -> Option<Change> {
        if seen.ip().is_unspecified() || seen.port() == 0 {
            return None;
        }
        let Some(old) = self.believed else {
            self.believed = Some(seen);
            return None;
        };
        if seen == old {
            self.held = None;
            return None;
        }
        if self.last_change.is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL) {
            self.held = Some(seen);
            return None;
        }
        self.adopt(old, seen, now)
    }

    /// When a held report becomes a change, if one is held.
    pub fn due(&self) -> Option<Instant> {
        self.held?;
        Some(self.last_change? + MIN_INTERVAL)
    }

    /// The held report, once [`Self::due`]: a change unless the address
    /// came back meanwhile (then nothing is held any more).
    pub fn poll(&mut self, now: Instant) -> Option<Change> {
        let due = self.due()?;
        if now < due {
            return None;
        }
        let seen = self.held.take()?;
        let old = self.believed?;
        (seen != old).then(|| self.adopt(old, seen, now)).flatten()
    }

    fn adopt(&mut self, old: SocketAddr, new: SocketAddr, now: Instant) -> Option<Change> {
        self.believed = Some(new);
        self.last_change = Some(now);
        self.held = None;
        Some(Change { old, new })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_report_is_the_belief_and_a_different_one_a_change() {
        let mut w = ReflexiveWatch::new();
        let t = Instant::now();
        assert_eq!(w.observe(a("203.0.113.5:4000"), t), None);
        assert_eq!(w.believed(), Some(a("203.0.113.5:4000")));
        assert_eq!(w.observe(a("203.0.113.5:4000"), t + Duration::from_secs(1)), None);
        // A renumbered router: a new IP, the port kept.
        let c = w.observe(a("203.0.113.9:4000"), t + Duration::from_secs(2));
        assert_eq!(c, Some(Change { old: a("203.0.113.5:4000"), new: a("203.0.113.9:4000") }));
        // A rebinding NAT: the port alone counts too (peers aim at it).
        let c = w.observe(a("203.0.113.9:4001"), t + Duration::from_secs(10));
        assert_eq!(c, Some(Change { old: a("203.0.113.9:4000"), new: a("203.0.113.9:4001") }));
        assert_eq!(w.due(), None);
    }

    #[test]
    fn reports_without_an_address_are_ignored() {
        let mut w = ReflexiveWatch::new();
        let t = Instant::now();
        assert_eq!(w.observe(a("0.0.0.0:4000"), t), None);
        assert_eq!(w.observe(a("203.0.113.5:0"), t), None);
        assert_eq!(w.believed(), None);
    }

    #[test]
    fn a_flapping_address_is_reported_once_per_interval_latest_wins() {
        let mut w = ReflexiveWatch::new();
        let t = Instant::now();
        w.observe(a("203.0.113.5:4000"), t);
        assert!(w.observe(a("203.0.113.6:4000"), t + Duration::from_millis(100)).is_some());
        // Within the interval: held, and the latest report replaces it.
        assert_eq!(w.observe(a("203.0.113.7:4000"), t + Duration::from_millis(200)), None);
        assert_eq!(w.observe(a("203.0.113.8:4000"), t + Duration::from_millis(300)), None);
        let due = w.due().unwrap();
        assert_eq!(due, t + Duration::from_millis(100) + MIN_INTERVAL);
        assert_eq!(w.poll(due - Duration::from_millis(1)), None);
        assert_eq!(w.poll(due), Some(Change { old: a("203.0.113.6:4000"), new: a("203.0.113.8:4000") }));
        assert_eq!(w.due(), None);
        assert_eq!(w.poll(due + MIN_INTERVAL), None);
    }

    #[test]
    fn an_address_that_comes_back_within_the_interval_is_no_change() {
        let mut w = ReflexiveWatch::new();
        let t = Instant::now();
        w.observe(a("203.0.113.5:4000"), t);
        w.observe(a("203.0.113.6:4000"), t + Duration::from_millis(100));
        assert_eq!(w.observe(a("203.0.113.5:4000"), t + Duration::from_millis(200)), None);
        // Back where the last change left us: nothing held.
        assert_eq!(w.observe(a("203.0.113.6:4000"), t + Duration::from_millis(300)), None);
        assert_eq!(w.due(), None);
        assert_eq!(w.poll(t + Duration::from_secs(10)), None);
        assert_eq!(w.believed(), Some(a("203.0.113.6:4000")));
    }
}
