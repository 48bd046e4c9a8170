//! This node's own NAT profile as its detections publish it, read by
//! signalling at the moment it signals.
//!
//! The detector (on the BEAM: `macula_nat_detector`) publishes every
//! profile it stores: the first detection, the periodic and forced ones,
//! re-detections on a network change and an address moved by peers'
//! observations. Before the first detection finishes the slot is
//! `Pending`, with a deadline the detector sets from its own timeout:
//! signalling waits for the profile until then (bounded by the caller's
//! own budget) rather than telling peers a guess. A detection that fails
//! while none is known puts the slot back to `Unset`, and signalling falls
//! back to the profile it was configured with.
//!
//! The slot lives in the [`crate::Node`], so it outlives a rendezvous
//! membership (a rejoin reads the same profile) and every signal on the
//! node sees the same one.

use macula_nat_proto::record::PeerInfo;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What is known of this node's profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileState {
    /// Nothing published and no detection under way: signalling uses its
    /// configured profile.
    Unset,
    /// The first detection is under way; it reports by `until` at the latest.
    Pending { until: Instant },
    /// The last detected profile.
    Known(PeerInfo),
}

/// The slot (one per node).
pub struct LocalProfile {
    tx: watch::Sender<ProfileState>,
}

impl Default for LocalProfile {
    fn default() -> Self {
        LocalProfile { tx: watch::Sender::new(ProfileState::Unset) }
    }
}

impl LocalProfile {
    /// The current profile, if one was published.
    pub fn get(&self) -> Option<PeerInfo> {
        match &*self.tx.borrow() {
            ProfileState::Known(p) => Some(p.clone()),
            _ => None,
        }
    }

    pub fn state(&self) -> ProfileState {
        self.tx.borrow().clone()
    }

    /// A detection's result: the profile from now on.
    pub fn publish(&self, info: PeerInfo) {
        self.tx.send_if_modified(|s| {
            let new = ProfileState::Known(info);
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    /// A detection started that will report within `within`. Only matters
    /// while no profile is known: then signalling waits for it.
    pub fn expect(&self, within: Duration) {
        let until = Instant::now() + within;
        self.tx.send_if_modified(|s| match s {
            ProfileState::Known(_) => false,
            _ => {
                *s = ProfileState::Pending { until };
                true
            }
        });
    }

    /// The detection under way ended without a profile: nobody waits for
    /// it any longer (a known profile stays).
    pub fn unavailable(&self) {
        self.tx.send_if_modified(|s| match s {
            ProfileState::Pending { .. } => {
                *s = ProfileState::Unset;
                true
            }
            _ => false,
        });
    }

    /// Sees every change of the slot.
    pub fn subscribe(&self) -> watch::Receiver<ProfileState> {
        self.tx.subscribe()
    }

    /// The profile once no first detection is pending: at once when one is
    /// known or none is under way, else when the detection reports, its
    /// deadline passes or `max` has passed, whichever comes first. `None`:
    /// nothing was published (use the configured profile).
    pub async fn settled(&self, max: Duration) -> Option<PeerInfo> {
        let mut rx = self.tx.subscribe();
        let give_up = Instant::now() + max;
        loop {
            let until = match &*rx.borrow_and_update() {
                ProfileState::Known(p) => return Some(p.clone()),
                ProfileState::Unset => return None,
                ProfileState::Pending { until } => (*until).min(give_up),
            };
            if Instant::now() >= until {
                return None;
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => continue,
                // Deadline: look once more (a report may have raced it).
                Err(_) => continue,
                Ok(Err(_)) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::public_profile;
    use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};

    fn symmetric() -> PeerInfo {
        crate::connect::profile_of(NatType { mapping: Mapping::Pd, allocation: Allocation::Rd, filtering: Filtering::Pd }, None, false)
    }

    #[tokio::test]
    async fn nothing_pending_settles_at_once() {
        let s = LocalProfile::default();
        assert_eq!(s.settled(Duration::from_secs(10)).await, None);
        s.publish(public_profile());
        assert_eq!(s.settled(Duration::from_secs(10)).await, Some(public_profile()));
    }

    #[tokio::test]
    async fn a_waiter_gets_the_first_detection() {
        let s = std::sync::Arc::new(LocalProfile::default());
        s.expect(Duration::from_secs(10));
        let t0 = Instant::now();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.settled(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.publish(symmetric());
        assert_eq!(waiter.await.unwrap(), Some(symmetric()));
        assert!(t0.elapsed() < Duration::from_secs(2));
        // Later detections replace it; expecting again does not hide it.
        s.expect(Duration::from_secs(10));
        assert_eq!(s.get(), Some(symmetric()));
        s.publish(public_profile());
        assert_eq!(s.get(), Some(public_profile()));
    }

    #[tokio::test]
    async fn a_failed_or_late_detection_releases_the_waiter() {
        let s = std::sync::Arc::new(LocalProfile::default());
        s.expect(Duration::from_secs(10));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.settled(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.unavailable();
        assert_eq!(waiter.await.unwrap(), None);
        assert_eq!(s.state(), ProfileState::Unset);
        // The detection's own deadline, then the caller's bound.
        s.expect(Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(s.settled(Duration::from_secs(10)).await, None);
        assert!(t0.elapsed() >= Duration::from_millis(90) && t0.elapsed() < Duration::from_secs(2));
        s.expect(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(s.settled(Duration::from_millis(100)).await, None);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
