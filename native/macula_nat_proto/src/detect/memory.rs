//! What detections on one socket leave for the next: where they sent, and
//! the last filtering measured on clean evidence. Pure policy; the runtime
//! keeps one per node socket.

use crate::nat::{Filtering, NatProfile};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long after a detection its probes' destinations are assumed to be
/// still open in the NAT's filter. RFC 4787 (REQ-5) wants mappings to live
/// at least 2 minutes and recommends 5; twice that errs on the safe side,
/// where a re-detection merely keeps the last measured filtering.
const OPENED_FOR: Duration = Duration::from_secs(600);

/// What a node's detections leave for the next one on the same socket. The
/// first detection's tests II-IV open the socket's filter towards the
/// observer's alternate addresses; within the NAT's timeout a second one
/// would see its filtering tests answered whatever the filtering (see
/// [`super::DetectConfig::opened`]). So the next detection is told what was
/// opened, and when it cannot measure, the last measured verdict behind
/// the same public IP stands (if the new evidence allows it).
#[derive(Debug, Default)]
pub struct DetectMemory {
    /// Destinations the node socket sent probes to, with the last time.
    opened: Vec<(SocketAddr, Instant)>,
    /// Last filtering measured on clean evidence, and behind which public IP.
    measured: Option<(IpAddr, Filtering)>,
}

impl DetectMemory {
    /// Destinations still possibly open at `now`, for the next
    /// detection's [`super::DetectConfig::opened`].
    pub fn opened(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.opened.retain(|&(_, at)| now.saturating_duration_since(at) < OPENED_FOR);
        self.opened.iter().map(|&(a, _)| a).collect()
    }

    /// Records a detection's [`super::Detection::primary_destinations`].
    pub fn remember(&mut self, sent: Vec<SocketAddr>, now: Instant) {
        self.opened.retain(|(a, _)| !sent.contains(a));
        self.opened.extend(sent.into_iter().map(|a| (a, now)));
    }

    /// `profile.filtering` is a conservative bound unless `measured`: keep
    /// the last measured verdict when it is at least as strict as that bound
    /// allows (a stricter bound is itself evidence: silence is never faked).
    pub fn settle_filtering(&mut self, profile: &mut NatProfile, measured: bool) {
        let ip = profile.public_addr.ip();
        match self.measured {
            _ if measured => self.measured = Some((ip, profile.filtering)),
            Some((at, f)) if at == ip && f <= profile.filtering => profile.filtering = f,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Allocation, Mapping};

    fn profile(ip: &str, filtering: Filtering) -> NatProfile {
        NatProfile {
            mapping: Mapping::Ei,
            filtering,
            allocation: Allocation::Pp,
            public_addr: SocketAddr::new(ip.parse().unwrap(), 4000),
            port_delta: None,
            confidence: crate::nat::Confidence::Medium,
            mapping_lifetime: None,
            hairpin: None,
            no_nat: false,
        }
    }

    #[test]
    fn memory_keeps_the_last_measured_filtering_where_the_evidence_allows() {
        let mut m = DetectMemory::default();
        // Nothing measured yet: a bound stays a bound.
        let mut p = profile("203.0.113.1", Filtering::Pd);
        m.settle_filtering(&mut p, false);
        assert_eq!(p.filtering, Filtering::Pd);
        // Measured EI; a later ambiguous run (bound PD or HD) keeps EI.
        m.settle_filtering(&mut profile("203.0.113.1", Filtering::Ei), true);
        for bound in [Filtering::Pd, Filtering::Hd, Filtering::Ei] {
            let mut p = profile("203.0.113.1", bound);
            m.settle_filtering(&mut p, false);
            assert_eq!(p.filtering, Filtering::Ei, "bound {bound:?}");
        }
        // Behind another public IP the old verdict means nothing.
        let mut p = profile("198.51.100.1", Filtering::Pd);
        m.settle_filtering(&mut p, false);
        assert_eq!(p.filtering, Filtering::Pd);
        // A measured PD replaces it; an HD bound (test III answered from a
        // port never opened) contradicts PD and wins.
        m.settle_filtering(&mut profile("203.0.113.1", Filtering::Pd), true);
        let mut p = profile("203.0.113.1", Filtering::Hd);
        m.settle_filtering(&mut p, false);
        assert_eq!(p.filtering, Filtering::Hd);
    }

    #[test]
    fn memory_forgets_what_was_opened_after_the_nat_would_have() {
        let mut m = DetectMemory::default();
        let t0 = Instant::now();
        let a: SocketAddr = "198.51.100.2:3479".parse().unwrap();
        let b: SocketAddr = "198.51.100.1:3479".parse().unwrap();
        m.remember(vec![a, b], t0);
        m.remember(vec![a], t0 + OPENED_FOR / 2);
        assert_eq!(m.opened(t0 + OPENED_FOR / 4).len(), 2);
        // b expired; a was sent to again halfway.
        assert_eq!(m.opened(t0 + OPENED_FOR), vec![a]);
        assert!(m.opened(t0 + OPENED_FOR * 2).is_empty());
    }

}
