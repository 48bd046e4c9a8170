//! Which relay to use: candidates, their score, and a choice that does not
//! flap (sans-IO; the runtime feeds measurements and the clock).
//!
//! A candidate is a relay node (id, endpoint) with its smoothed round trip
//! (from STUN probes), its advertised load (from its signed record, 0.0 =
//! idle .. 1.0 = full) and when it was last refreshed.
//!
//! Score (lower is better):
//!
//! ```text
//! score = srtt_ms + load_scale_ms / (1 - load)
//! ```
//!
//! Why this shape: what a relayed connection costs is the path to the relay
//! plus the time the relay takes to forward. The path does not grow with
//! load, so it is added, not multiplied. The forwarding delay of a busy
//! server grows like an M/M/1 queue's, `1 / (1 - load)`: barely at 0.3,
//! tenfold at 0.9; `load_scale_ms` is that delay for an idle relay and
//! says how many milliseconds of path one unit of "busier" is worth (at the
//! default 20 ms, a relay at 0.5 load is worth 20 ms more path than an idle
//! one; at 0.9, 180 ms more). The constant term also keeps scores away from
//! zero, so the relative switching margin still means something when every
//! relay is sub-millisecond away (a LAN, loopback). A full relay (load 1.0)
//! would refuse new sessions and is never chosen.
//!
//! Hysteresis: the current relay is kept unless some other eligible
//! candidate scores at least `switch_margin` (20%) lower for
//! `switch_after` (2) consecutive evaluations; then the best at that moment
//! is taken. A current relay that goes down (failed probes, or the caller
//! reports it failed), expires, is removed or becomes full is replaced at
//! once by the best remaining candidate: keeping a dead relay is worse than
//! any flap. The very first choice (made as soon as one candidate is
//! measured, so a caller can have an answer right away) is provisional:
//! the next evaluation takes the best without waiting out the hysteresis.
//!
//! Eligible = up (fewer than `down_after` consecutive failed probes since
//! the last answer), measured (an RTT sample exists) and not full.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use crate::id::NodeId;

#[derive(Clone, Debug, PartialEq)]
pub struct SelectConfig {
    /// Forwarding delay of an idle relay in the score (see the module doc).
    pub load_scale: Duration,
    /// A challenger must score at most `(1 - switch_margin)` of the current.
    pub switch_margin: f64,
    /// ... at this many consecutive evaluations.
    pub switch_after: u32,
    /// Consecutive unanswered probes after which a relay is down.
    pub down_after: u32,
    /// A candidate that is not pinned and not refreshed for this long is
    /// dropped.
    pub expire_after: Duration,
}

impl Default for SelectConfig {
    fn default() -> Self {
        SelectConfig {
            load_scale: Duration::from_millis(20),
            switch_margin: 0.2,
            switch_after: 2,
            down_after: 2,
            expire_after: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub node_id: NodeId,
    pub addr: SocketAddr,
    /// Smoothed round trip (RFC 6298 weights); `None` until the first answer.
    pub srtt: Option<Duration>,
    /// 0.0 (idle) ..= 1.0 (full).
    pub load: f32,
    pub refreshed_at: Instant,
    /// Registered explicitly: never expires, only removed.
    pub pinned: bool,
    /// Consecutive unanswered probes.
    pub failures: u32,
}

impl Candidate {
    /// The score of the module doc, `None` when not eligible.
    pub fn score(&self, cfg: &SelectConfig) -> Option<f64> {
        if self.failures >= cfg.down_after || self.load >= 1.0 {
            return None;
        }
        let rtt = self.srtt?.as_secs_f64() * 1000.0;
        let load = self.load.clamp(0.0, 1.0) as f64;
        Some(rtt + cfg.load_scale.as_secs_f64() * 1000.0 / (1.0 - load))
    }

    pub fn is_up(&self, cfg: &SelectConfig) -> bool {
        self.failures < cfg.down_after
    }
}

/// A load as advertised: per mille, in steps of `LOAD_STEP_PERMILLE`, so a
/// relay republishes its record when its load moves by a step, not on
/// every session. Out-of-range and NaN loads are clamped (NaN is 0).
pub const LOAD_STEP_PERMILLE: u16 = 50;

pub fn quantise_load(load: f32) -> u16 {
    let l = if load.is_nan() { 0.0 } else { load.clamp(0.0, 1.0) };
    let step = LOAD_STEP_PERMILLE as f32;
    ((l * 1000.0 / step).round() * step) as u16
}

pub fn load_from_permille(p: u16) -> f32 {
    p.min(1000) as f32 / 1000.0
}

#[derive(Debug)]
pub struct RelaySelect {
    cfg: SelectConfig,
    candidates: HashMap<NodeId, Candidate>,
    current: Option<NodeId>,
    /// The current choice was made outside an evaluation with no previous
    /// choice; the next evaluation may replace it without hysteresis.
    provisional: bool,
    /// Consecutive evaluations in which the current was clearly beaten.
    beaten: u32,
    /// (current, eligible ids sorted) as of the last change.
    signature: (Option<NodeId>, Vec<NodeId>),
    generation: u64,
}

impl RelaySelect {
    pub fn new(cfg: SelectConfig) -> Self {
        RelaySelect {
            cfg,
            candidates: HashMap::new(),
            current: None,
            provisional: false,
            beaten: 0,
            signature: (None, Vec::new()),
            generation: 0,
        }
    }

    pub fn config(&self) -> &SelectConfig {
        &self.cfg
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    pub fn get(&self, id: &NodeId) -> Option<&Candidate> {
        self.candidates.get(id)
    }

    /// Every candidate, eligible or not, in no particular order (whom the
    /// runtime probes and refreshes).
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.values()
    }

    /// Bumped whenever the current relay or the set of eligible relays
    /// changes (not when only scores move).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds `id` or refreshes it: `load` when the source says it (a record;
    /// `None` keeps what is known, 0.0 for a new one), `pinned` for explicit
    /// registrations (sticky: a later unpinned refresh keeps the pin). A new
    /// endpoint is a new path: its RTT and failures start over.
    pub fn upsert(&mut self, id: NodeId, addr: SocketAddr, load: Option<f32>, pinned: bool, now: Instant) {
        let c = self.candidates.entry(id).or_insert_with(|| Candidate {
            node_id: id,
            addr,
            srtt: None,
            load: 0.0,
            refreshed_at: now,
            pinned,
            failures: 0,
        });
        if c.addr != addr {
            c.addr = addr;
            c.srtt = None;
            c.failures = 0;
        }
        if let Some(l) = load {
            c.load = if l.is_nan() { 0.0 } else { l.clamp(0.0, 1.0) };
        }
        c.pinned |= pinned;
        c.refreshed_at = c.refreshed_at.max(now);
        self.settle();
    }

    /// Forgets `id` (no longer a relay, or unregistered).
    pub fn remove(&mut self, id: &NodeId) -> bool {
        let had = self.candidates.remove(id).is_some();
        self.settle();
        had
    }

    /// A probe answered after `rtt`: smooths it in and marks the relay up.
    pub fn rtt_sample(&mut self, id: &NodeId, rtt: Duration) {
        let Some(c) = self.candidates.get_mut(id) else { return };
        c.srtt = Some(match c.srtt {
            None => rtt,
            // RFC 6298: SRTT <- 7/8 SRTT + 1/8 R.
            Some(s) => (s * 7 + rtt) / 8,
        });
        c.failures = 0;
        self.settle();
    }

    /// A probe went unanswered; `down_after` of these in a row mark it down.
    pub fn probe_failed(&mut self, id: &NodeId) {
        if let Some(c) = self.candidates.get_mut(id) {
            c.failures = c.failures.saturating_add(1);
        }
        self.settle();
    }

    /// The caller could not use the relay: down at once, until a probe is
    /// answered again.
    pub fn mark_failed(&mut self, id: &NodeId) {
        let down = self.cfg.down_after;
        if let Some(c) = self.candidates.get_mut(id) {
            c.failures = c.failures.max(down);
        }
        self.settle();
    }

    /// One selection round: drops expired candidates, then applies the
    /// hysteresis rule. Call it at a steady pace (the runtime does it after
    /// each refresh round); "consecutive evaluations" counts these calls.
    pub fn evaluate(&mut self, now: Instant) {
        let ttl = self.cfg.expire_after;
        self.candidates
            .retain(|_, c| c.pinned || now.saturating_duration_since(c.refreshed_at) < ttl);
        self.settle();
        let Some(cur) = self.current else { return };
        let Some(top) = self.ranked().first().map(|c| c.node_id) else { return };
        if top == cur {
            self.beaten = 0;
            self.provisional = false;
        } else if self.provisional {
            self.switch_to(Some(top));
        } else {
            let cur_score = self.candidates.get(&cur).and_then(|c| c.score(&self.cfg)).unwrap_or(f64::INFINITY);
            let top_score = self.candidates.get(&top).and_then(|c| c.score(&self.cfg)).unwrap_or(f64::INFINITY);
            if top_score <= cur_score * (1.0 - self.cfg.switch_margin) {
                self.beaten += 1;
                if self.beaten >= self.cfg.switch_after {
                    self.switch_to(Some(top));
                }
            } else {
                self.beaten = 0;
            }
        }
        self.note_change();
    }

    pub fn current(&self) -> Option<&Candidate> {
        self.current.and_then(|id| self.candidates.get(&id))
    }

    /// Up to `n` eligible relays, best first: the current choice, then the
    /// others by score.
    pub fn best(&self, n: usize) -> Vec<&Candidate> {
        let mut out: Vec<&Candidate> = Vec::with_capacity(n.min(self.candidates.len()));
        if let Some(c) = self.current() {
            out.push(c);
        }
        out.extend(self.ranked().into_iter().filter(|c| Some(c.node_id) != self.current));
        out.truncate(n);
        out
    }

    /// The relay to reach `target` through: among the eligible relays in
    /// `best` order, the first whose endpoint the target's record lists as
    /// a contact (`via`), else the first one; never the target itself.
    pub fn choose_for(&self, target: Option<&NodeId>, via: &[SocketAddr]) -> Option<&Candidate> {
        let order: Vec<&Candidate> =
            self.best(usize::MAX).into_iter().filter(|c| Some(&c.node_id) != target).collect();
        order.iter().find(|c| via.contains(&c.addr)).or_else(|| order.first()).copied()
    }

    /// Eligible candidates by score, ties by node id (deterministic).
    fn ranked(&self) -> Vec<&Candidate> {
        let mut v: Vec<(f64, &Candidate)> =
            self.candidates.values().filter_map(|c| c.score(&self.cfg).map(|s| (s, c))).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.node_id.cmp(&b.1.node_id)));
        v.into_iter().map(|(_, c)| c).collect()
    }

    fn is_eligible(&self, id: &NodeId) -> bool {
        self.candidates.get(id).and_then(|c| c.score(&self.cfg)).is_some()
    }

    /// Keeps `current` valid between evaluations: a current relay that is
    /// gone or no longer eligible is replaced by the best at once; with no
    /// current relay, the best becomes a provisional one.
    fn settle(&mut self) {
        match self.current {
            Some(id) if self.is_eligible(&id) => {}
            Some(_) => {
                let top = self.ranked().first().map(|c| c.node_id);
                self.switch_to(top);
            }
            None => {
                let top = self.ranked().first().map(|c| c.node_id);
                if top.is_some() {
                    self.switch_to(top);
                    self.provisional = true;
                }
            }
        }
        self.note_change();
    }

    fn switch_to(&mut self, id: Option<NodeId>) {
        self.current = id;
        self.beaten = 0;
        self.provisional = false;
    }

    fn note_change(&mut self) {
        let mut eligible: Vec<NodeId> =
            self.candidates.values().filter(|c| c.score(&self.cfg).is_some()).map(|c| c.node_id).collect();
        eligible.sort_unstable();
        let sig = (self.current, eligible);
        if sig != self.signature {
            self.signature = sig;
            self.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests;
