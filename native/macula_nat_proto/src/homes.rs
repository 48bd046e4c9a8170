//! A node's home rendezvous: the ones it joins (not a guest, see
//! [`crate::reach`]), which of them are alive, what its record says about
//! them, and when a silent one counts as dead.
//!
//! A node may join several rendezvous from its one socket, so that the
//! death of one leaves it reachable through the others. Each home is a
//! membership of its own (control connection, incoming sessions); one, the
//! *primary*, is the one whose view of our address is our reflexive
//! address (behind an address-dependent NAT each rendezvous sees another
//! port). The record names the live homes, so a peer looking us up does
//! not spend its tries on a dead one; a home that comes back is named
//! again.

use crate::record::{Contact, MAX_CONTACTS};
use std::time::Duration;

/// Homes a node joins at most: what its record can name.
pub const MAX_HOMES: usize = MAX_CONTACTS;
/// A home is sent a `Ping` this often (the rendezvous answers `Pong`).
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// A home that answered pings before and has sent nothing for this long
/// is taken for dead: its control connection is dropped and rejoined.
/// QUIC alone would notice only at its idle timeout (30 s).
pub const SILENT_AFTER: Duration = Duration::from_secs(3);

/// The homes to join, from the configured rendezvous (preferred first):
/// no duplicates, at most [`MAX_HOMES`]. A rendezvous may be its own
/// home (one list configured on every node, the rendezvous included).
pub fn select(configured: &[Contact]) -> Vec<Contact> {
    let mut homes: Vec<Contact> = Vec::with_capacity(MAX_HOMES);
    for c in configured {
        if homes.len() == MAX_HOMES {
            break;
        }
        if homes.iter().any(|h| h.node_id == c.node_id) {
            continue;
        }
        homes.push(*c);
    }
    homes
}

/// The rendezvous our record names, given which homes are live: the live
/// ones, in the configured order. With none live, all of them: a node
/// whose every rendezvous is down rejoins there, so that is still where
/// to look for it.
pub fn advertised(homes: &[Contact], live: &[bool]) -> Vec<Contact> {
    let up: Vec<Contact> = homes.iter().zip(live).filter(|(_, l)| **l).map(|(c, _)| *c).collect();
    if up.is_empty() {
        homes.to_vec()
    } else {
        up
    }
}

/// The order to signal a connect through our homes: live ones first, each
/// group in the configured order (a connect through a dead one fails at
/// once and goes on).
pub fn order(live: &[bool]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..live.len()).collect();
    idx.sort_by_key(|i| !live[*i]);
    idx
}

/// Whether a home is dead: it answered a ping once (an older rendezvous
/// that does not know pings is never judged by them) and has been silent
/// for `after`.
pub fn silent(since_heard: Duration, answers_pings: bool, after: Duration) -> bool {
    answers_pings && since_heard >= after
}

/// The next wait between rejoin attempts: doubling from `base`, at most
/// 32x (8 s from 250 ms).
pub fn next_backoff(current: Duration, base: Duration) -> Duration {
    (current * 2).min(base * 32)
}

/// The wait before a rejoin attempt whose backoff is `backoff`: drawn
/// uniformly from its upper half (`unit` in [0, 1), from a random source).
/// All the nodes of a rendezvous that crashed or fell behind find it
/// silent within the same second; rejoining all at once, or in lockstep
/// after it, made an overloaded rendezvous' handshakes its main load
/// (`bench/capacity.md`: 10,000 nodes at a busy rendezvous kept
/// rejoining). The first attempt after a loss waits too, `base` drawn
/// from its upper half again doubled (see `first_rejoin_wait`).
pub fn jittered(backoff: Duration, unit: f64) -> Duration {
    backoff.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// The wait before the first rejoin after a home was lost: up to a second
/// with the default 250 ms base, spread as [`jittered`].
pub fn first_rejoin_wait(base: Duration, unit: f64) -> Duration {
    jittered(base * 4, unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;

    fn id(b: u8) -> NodeId {
        NodeId::from_bytes([b; 32])
    }

    fn c(b: u8) -> Contact {
        Contact { node_id: id(b), addr: format!("198.51.100.{b}:3478").parse().unwrap() }
    }

    #[test]
    fn select_drops_duplicates_and_caps() {
        assert_eq!(select(&[c(1), c(9), c(1), c(2)]), vec![c(1), c(9), c(2)]);
        let many: Vec<Contact> = (1..=8).map(c).collect();
        assert_eq!(select(&many), vec![c(1), c(2), c(3), c(4)]);
        assert!(select(&[]).is_empty());
    }

    #[test]
    fn the_record_names_the_live_homes_or_all_when_none_is() {
        let homes = [c(1), c(2), c(3)];
        assert_eq!(advertised(&homes, &[false, true, true]), vec![c(2), c(3)]);
        assert_eq!(advertised(&homes, &[true, false, true]), vec![c(1), c(3)]);
        assert_eq!(advertised(&homes, &[true, true, true]), homes.to_vec());
        assert_eq!(advertised(&homes, &[false, false, false]), homes.to_vec());
        assert!(advertised(&[], &[]).is_empty());
    }

    #[test]
    fn connects_go_through_live_homes_first() {
        assert_eq!(order(&[true, true]), vec![0, 1]);
        assert_eq!(order(&[false, true, true]), vec![1, 2, 0]);
        assert_eq!(order(&[false, false]), vec![0, 1]);
    }

    #[test]
    fn only_a_home_that_answered_pings_is_judged_silent() {
        let s = Duration::from_secs;
        assert!(!silent(s(2), true, SILENT_AFTER));
        assert!(silent(s(3), true, SILENT_AFTER));
        assert!(!silent(s(60), false, SILENT_AFTER));
        // Several pings go unanswered before a home is dropped.
        assert!(SILENT_AFTER >= PING_EVERY * 2);
    }

    #[test]
    fn rejoin_backoff_doubles_to_thirty_two_times() {
        let b = Duration::from_millis(250);
        let mut w = b;
        let mut seen = vec![];
        for _ in 0..6 {
            w = next_backoff(w, b);
            seen.push(w.as_millis());
        }
        assert_eq!(seen, vec![500, 1000, 2000, 4000, 8000, 8000]);
    }

    #[test]
    fn rejoin_waits_are_spread_over_the_upper_half() {
        let b = Duration::from_secs(2);
        assert_eq!(jittered(b, 0.0), Duration::from_secs(1));
        assert_eq!(jittered(b, 0.5), Duration::from_millis(1500));
        assert!(jittered(b, 0.999_999) <= b);
        assert_eq!(jittered(b, 7.0), b, "out-of-range randomness is clamped");
        let base = Duration::from_millis(250);
        assert_eq!(first_rejoin_wait(base, 0.0), Duration::from_millis(500));
        assert_eq!(first_rejoin_wait(base, 1.0), Duration::from_secs(1));
    }
}
