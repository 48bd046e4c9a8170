//! Reaching a node by its id alone: which rendezvous to signal it through,
//! in what order, and when to give up.
//!
//! A connect first signals through the node's own rendezvous (the target
//! may be registered there, advertised or not). When that rendezvous
//! answers `Unknown`, the target's signed record (cache, then DHT) names
//! the rendezvous it is joined at, with their keys
//! ([`crate::record::Contacts`]); the initiator dials one of them from its
//! own socket on demand (a *guest* signalling connection) and signals
//! through it. These are the decisions; the runtime does the dialling.

use crate::id::NodeId;
use crate::record::{Contact, MAX_CONTACTS};
use std::time::Duration;

/// Rendezvous of a record tried per connect, after our own: each costs a
/// QUIC handshake (or a round trip on an open guest connection), and a
/// record names at most [`MAX_CONTACTS`].
pub const MAX_TRIES: usize = 2;
/// Guest signalling connections a node keeps at once (each is a control
/// connection and its task); a hostile record cannot make us hold more.
pub const MAX_GUESTS: usize = 4;
/// A guest connection with no session started through it for this long is
/// closed.
pub const GUEST_IDLE: Duration = Duration::from_secs(60);

/// How one signalling attempt ended, as far as the choice of the next
/// rendezvous is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The rendezvous does not know the target (`Unknown`).
    NotThere,
    /// The rendezvous could not be reached or registered at, or lost us.
    Unreachable,
    /// The target was reached (it answered, or rejected): whatever happens
    /// next is traversal, not a matter of which rendezvous.
    Reached,
}

/// Whether to try the next rendezvous after `outcome`.
pub fn try_next(outcome: Outcome) -> bool {
    !matches!(outcome, Outcome::Reached)
}

/// The rendezvous of a target's record to try, in order, after our own
/// (`own`, already tried) said it does not know the target.
///
/// Ours and our own node (a rendezvous serving itself) are skipped, as are
/// duplicates. Our other live homes (`homes`) come first: they are ours,
/// pinged, and cost no handshake; then contacts we hold a live guest
/// connection to (`open`), also without a handshake; then the rest, each
/// group in the record's order (the target's preference, its joined
/// rendezvous first). At most `MAX_TRIES` and never beyond the record's
/// first [`MAX_CONTACTS`].
pub fn plan(advertised: &[Contact], own: Option<&NodeId>, me: &NodeId, homes: &[NodeId], open: &[NodeId]) -> Vec<Contact> {
    let mut seen: Vec<NodeId> = Vec::with_capacity(MAX_CONTACTS);
    let mut usable: Vec<Contact> = Vec::with_capacity(MAX_CONTACTS);
    for c in advertised.iter().take(MAX_CONTACTS) {
        if Some(&c.node_id) == own || &c.node_id == me || seen.contains(&c.node_id) {
            continue;
        }
        seen.push(c.node_id);
        usable.push(*c);
    }
    // Stable: each group in the record's order.
    usable.sort_by_key(|c| if homes.contains(&c.node_id) { 0 } else if open.contains(&c.node_id) { 1 } else { 2 });
    usable.truncate(MAX_TRIES);
    usable
}

/// Which guest connection to close to make room for a new one, given each
/// one's idle time and whether a session is running through it; `None`:
/// there is room (fewer than `cap`), or every guest is busy (the new one is
/// refused rather than break a running session).
pub fn evict<K: Copy>(guests: &[(K, Duration, bool)], cap: usize) -> Result<Option<K>, Full> {
    if guests.len() < cap {
        return Ok(None);
    }
    guests
        .iter()
        .filter(|(_, _, busy)| !busy)
        .max_by_key(|(_, idle, _)| *idle)
        .map(|(k, _, _)| Some(*k))
        .ok_or(Full)
}

/// Every guest slot holds a running session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId::from_bytes([b; 32])
    }

    fn c(b: u8) -> Contact {
        Contact { node_id: id(b), addr: format!("198.51.100.{b}:3478").parse().unwrap() }
    }

    #[test]
    fn plan_skips_ours_ourselves_and_duplicates_and_caps_the_tries() {
        let me = id(9);
        assert_eq!(plan(&[c(1), c(2), c(3)], Some(&id(1)), &me, &[], &[]), vec![c(2), c(3)]);
        assert_eq!(plan(&[c(9), c(2), c(2), c(4)], None, &me, &[], &[]), vec![c(2), c(4)]);
        assert_eq!(plan(&[c(1), c(2), c(3), c(4)], None, &me, &[], &[]).len(), MAX_TRIES);
        assert!(plan(&[], Some(&id(1)), &me, &[], &[]).is_empty());
        assert!(plan(&[c(1)], Some(&id(1)), &me, &[], &[]).is_empty());
    }

    #[test]
    fn plan_prefers_open_guests_then_the_records_order() {
        let me = id(9);
        assert_eq!(plan(&[c(1), c(2), c(3)], None, &me, &[], &[id(3)]), vec![c(3), c(1)]);
        assert_eq!(plan(&[c(1), c(2), c(3)], None, &me, &[], &[id(7)]), vec![c(1), c(2)]);
    }

    #[test]
    fn plan_tries_our_own_homes_before_guests() {
        let me = id(9);
        // 3 is a live guest, 2 another of our homes: home, guest, then the rest.
        assert_eq!(plan(&[c(1), c(3), c(2)], None, &me, &[id(2)], &[id(3)]), vec![c(2), c(3)]);
        assert_eq!(plan(&[c(1), c(3), c(2), c(4)], Some(&id(1)), &me, &[id(4), id(2)], &[id(3)]), vec![c(2), c(4)]);
    }

    #[test]
    fn plan_reads_no_further_than_the_contact_cap() {
        // A record decoded from the wire has at most MAX_CONTACTS; a list
        // built by hand may have more, and the extra are never tried.
        let me = id(9);
        let many: Vec<Contact> = (1..=10).map(c).collect();
        let own = id(1);
        let open: Vec<NodeId> = (5..=10).map(id).collect();
        assert_eq!(plan(&many, Some(&own), &me, &open, &open), vec![c(2), c(3)]);
    }

    #[test]
    fn only_a_reached_target_ends_the_search() {
        assert!(try_next(Outcome::NotThere));
        assert!(try_next(Outcome::Unreachable));
        assert!(!try_next(Outcome::Reached));
    }

    #[test]
    fn eviction_takes_the_longest_idle_free_guest_or_refuses() {
        let s = Duration::from_secs;
        assert_eq!(evict(&[(1, s(5), false)], 2), Ok(None));
        assert_eq!(evict(&[(1, s(5), false), (2, s(9), false)], 2), Ok(Some(2)));
        assert_eq!(evict(&[(1, s(5), false), (2, s(9), true)], 2), Ok(Some(1)));
        assert_eq!(evict(&[(1, s(5), true), (2, s(9), true)], 2), Err(Full));
    }
}
