//! Bounds on what peers make us hold, as pure state: how many of a thing
//! each peer and all peers together may hold at once ([`Caps`]), and how
//! often one peer may ask for another ([`Rate`]). The runtime asks before
//! it takes and refuses over the bound; nothing here reads a clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Which bound refused a [`Caps::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// The peer holds its share already.
    Peer,
    /// All peers together hold the total.
    Total,
}

/// Counts of a thing held per key, with a cap per key and one in total.
/// O(1) per call; a key holding nothing takes no memory.
#[derive(Clone, Debug)]
pub struct Caps<K> {
    per_key: usize,
    total: usize,
    held: HashMap<K, usize>,
    sum: usize,
}

impl<K: Hash + Eq + Clone> Caps<K> {
    pub fn new(per_key: usize, total: usize) -> Caps<K> {
        Caps { per_key, total, held: HashMap::new(), sum: 0 }
    }

    /// Takes one for `key`, or says which bound is reached.
    pub fn take(&mut self, key: &K) -> Result<(), Over> {
        if self.sum >= self.total {
            return Err(Over::Total);
        }
        let n = self.held.entry(key.clone()).or_insert(0);
        if *n >= self.per_key {
            return Err(Over::Peer);
        }
        *n += 1;
        self.sum += 1;
        Ok(())
    }

    /// Gives one of `key`'s back (a no-op when it holds none).
    pub fn release(&mut self, key: &K) {
        if let Some(n) = self.held.get_mut(key) {
            *n -= 1;
            self.sum -= 1;
            if *n == 0 {
                self.held.remove(key);
            }
        }
    }

    pub fn held_by(&self, key: &K) -> usize {
        self.held.get(key).copied().unwrap_or(0)
    }

    pub fn held(&self) -> usize {
        self.sum
    }
}

/// A token bucket of events: `per_sec` on average, up to `burst` at once.
#[derive(Clone, Debug)]
pub struct Rate {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Rate {
    /// Starts full.
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> Rate {
        let burst = f64::from(burst.max(1));
        Rate { per_sec: f64::from(per_sec.max(1)), burst, tokens: burst, last: now }
    }

    /// Whether one more event is allowed at `now` (it is then counted).
    pub fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt.as_secs_f64() * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Entries that expire `ttl` after they were added, oldest first: expiry
/// pops from the front instead of scanning every entry (what a map guarded
/// by a lock must not do on every request).
#[derive(Clone, Debug)]
pub struct Expiry<K> {
    ttl: Duration,
    queue: std::collections::VecDeque<(Instant, K)>,
}

impl<K: Clone> Expiry<K> {
    pub fn new(ttl: Duration) -> Expiry<K> {
        Expiry { ttl, queue: std::collections::VecDeque::new() }
    }

    /// Remembers `key`, added at `now` (`now` must not go backwards).
    pub fn push(&mut self, key: K, now: Instant) {
        self.queue.push_back((now, key));
    }

    /// The next key whose time is up at `now`, if any. A key removed
    /// meanwhile may still come out: the caller checks it is the same entry.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.queue.front() {
            Some((at, _)) if now.saturating_duration_since(*at) >= self.ttl => self.queue.pop_front(),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests;
