//! Cache policy: per-entry TTL, stale-while-revalidate, LRU bound.
//!
//! One `LruTtl` is one shard: single-threaded, every method takes `now`.
//! The runtime puts shards behind locks and owns the clock and the refresh
//! work; everything that decides (fresh, stale, gone, who refreshes, who is
//! evicted) is here and tested with synthetic time.
//!
//! - An entry is fresh until `expires`, then stale for `grace`, then gone.
//! - The first reader of a stale entry is told to refresh it; every other
//!   reader gets the stale value and no such order, until the refresh ends
//!   (`put` with the new value, or `refresh_failed`, which allows the next
//!   attempt after `retry`).
//! - Least recently used goes first when the shard is full. Replacing an
//!   existing key never evicts another one.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long an entry stays usable (as stale) after its TTL.
    pub grace: Duration,
    /// After a failed refresh, how long before a reader may start another.
    pub retry: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy { grace: Duration::from_secs(60), retry: Duration::from_secs(1) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<V> {
    Fresh(V),
    /// Past its TTL, inside the grace window. `refresh` is true for exactly
    /// one reader per refresh round: that reader must start the refresh.
    Stale { value: V, refresh: bool },
    Miss,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub size: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale_hits: u64,
    /// Entries pushed out by the size bound.
    pub evictions: u64,
    /// Entries dropped because their grace ran out.
    pub expirations: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.size += o.size;
        self.hits += o.hits;
        self.misses += o.misses;
        self.stale_hits += o.stale_hits;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
    }
}

const NIL: u32 = u32::MAX;

struct Slot<K, V> {
    key: K,
    value: V,
    expires: Instant,
    refreshing: bool,
    retry_at: Option<Instant>,
    prev: u32,
    next: u32,
}

/// One LRU shard with TTLs. Slots live in a vector linked by index (no
/// per-entry allocation beyond the value itself); `head` is the most
/// recently used.
pub struct LruTtl<K, V, S = RandomState> {
    policy: CachePolicy,
    capacity: usize,
    index: HashMap<K, u32, S>,
    slots: Vec<Option<Slot<K, V>>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    stats: Stats,
}

impl<K: Hash + Eq + Clone, V: Clone> LruTtl<K, V> {
    /// A shard holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize, policy: CachePolicy) -> Self {
        Self::with_hasher(capacity, policy, RandomState::new())
    }
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher> LruTtl<K, V, S> {
    /// As `new`, with the index hashed by `hasher` (the runtime passes a
    /// faster keyed hasher than SipHash).
    pub fn with_hasher(capacity: usize, policy: CachePolicy, hasher: S) -> Self {
        let capacity = capacity.clamp(1, NIL as usize - 1);
        LruTtl {
            policy,
            capacity,
            index: HashMap::with_hasher(hasher),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            stats: Stats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> Stats {
        Stats { size: self.index.len() as u64, ..self.stats }
    }

    pub fn get(&mut self, key: &K, now: Instant) -> Lookup<V> {
        match self.get_ref(key, now) {
            Lookup::Fresh(v) => Lookup::Fresh(v.clone()),
            Lookup::Stale { value, refresh } => Lookup::Stale { value: value.clone(), refresh },
            Lookup::Miss => Lookup::Miss,
        }
    }

    /// `get` without cloning the value: the caller reads it in place (the
    /// runtime builds its answer under the shard lock instead of paying
    /// for a shared pointer's two atomic updates per read).
    pub fn get_ref(&mut self, key: &K, now: Instant) -> Lookup<&V> {
        let Some(&i) = self.index.get(key) else {
            self.stats.misses += 1;
            return Lookup::Miss;
        };
        let grace = self.policy.grace;
        let slot = self.slot_mut(i);
        if now < slot.expires {
            self.stats.hits += 1;
            self.touch(i);
            return Lookup::Fresh(&self.slot(i).value);
        }
        if now >= slot.expires + grace {
            self.remove_at(i);
            self.stats.expirations += 1;
            self.stats.misses += 1;
            return Lookup::Miss;
        }
        let refresh = !slot.refreshing && slot.retry_at.map_or(true, |t| now >= t);
        if refresh {
            slot.refreshing = true;
        }
        self.stats.stale_hits += 1;
        self.touch(i);
        Lookup::Stale { value: &self.slot(i).value, refresh }
    }

    /// Reads without counting or reordering (for callers that look before
    /// deciding, such as `get_from_dht`'s "fresh already?" check).
    pub fn peek(&self, key: &K, now: Instant) -> Option<(&V, bool)> {
        let slot = self.slot(*self.index.get(key)?);
        if now >= slot.expires + self.policy.grace {
            return None;
        }
        Some((&slot.value, now < slot.expires))
    }

    /// Inserts or replaces. Returns the key evicted to make room, if any.
    pub fn put(&mut self, key: K, value: V, ttl: Duration, now: Instant) -> Option<K> {
        let expires = now + ttl;
        if let Some(&i) = self.index.get(&key) {
            let slot = self.slot_mut(i);
            slot.value = value;
            slot.expires = expires;
            slot.refreshing = false;
            slot.retry_at = None;
            self.touch(i);
            return None;
        }
        let evicted = if self.index.len() >= self.capacity { self.evict_lru(now) } else { None };
        let slot = Slot { key: key.clone(), value, expires, refreshing: false, retry_at: None, prev: NIL, next: NIL };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.link_front(i);
        evicted
    }

    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// Drops the least recently used entry to make room; returns its key.
    /// An entry past its grace is dead weight: dropping it counts as an
    /// expiry, not an eviction.
    pub fn evict_lru(&mut self, now: Instant) -> Option<K> {
        if self.tail == NIL {
            return None;
        }
        let victim = self.tail;
        let k = self.slot(victim).key.clone();
        let dead = now >= self.slot(victim).expires + self.policy.grace;
        self.remove_at(victim);
        if dead {
            self.stats.expirations += 1;
        } else {
            self.stats.evictions += 1;
        }
        Some(k)
    }

    pub fn invalidate(&mut self, key: &K) -> bool {
        match self.index.get(key) {
            Some(&i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// The refresh ordered by `get` failed: the entry stays stale, and the
    /// next reader after `policy.retry` is told to try again.
    pub fn refresh_failed(&mut self, key: &K, now: Instant) {
        let retry = self.policy.retry;
        if let Some(&i) = self.index.get(key) {
            let slot = self.slot_mut(i);
            slot.refreshing = false;
            slot.retry_at = Some(now + retry);
        }
    }

    /// Drops every entry past its grace; returns how many. Visits at most
    /// `budget` slots starting at `from` so the caller can bound how long
    /// it holds the shard; returns (dropped, next start, or None when the
    /// scan reached the end).
    pub fn sweep(&mut self, now: Instant, from: usize, budget: usize) -> (usize, Option<usize>) {
        let end = (from + budget).min(self.slots.len());
        let mut dropped = 0;
        for i in from..end {
            if let Some(s) = &self.slots[i] {
                if now >= s.expires + self.policy.grace {
                    self.remove_at(i as u32);
                    self.stats.expirations += 1;
                    dropped += 1;
                }
            }
        }
        (dropped, if end < self.slots.len() { Some(end) } else { None })
    }

    fn slot(&self, i: u32) -> &Slot<K, V> {
        // Indices come only from `index` and the links, which are kept in
        // step with `slots`; a vacant slot here is a bug in this module.
        self.slots[i as usize].as_ref().expect("linked slot is occupied")
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot<K, V> {
        self.slots[i as usize].as_mut().expect("linked slot is occupied")
    }

    fn remove_at(&mut self, i: u32) {
        self.unlink(i);
        if let Some(s) = self.slots[i as usize].take() {
            self.index.remove(&s.key);
        }
        self.free.push(i);
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = self.slot(i);
            (s.prev, s.next)
        };
        if prev != NIL {
            self.slot_mut(prev).next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slot_mut(next).prev = prev;
        } else {
            self.tail = prev;
        }
        let s = self.slot_mut(i);
        s.prev = NIL;
        s.next = NIL;
    }

    fn link_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = self.slot_mut(i);
            s.prev = NIL;
            s.next = old;
        }
        if old != NIL {
            self.slot_mut(old).prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    /// Keys from most to least recently used (tests and debugging).
    pub fn keys_mru(&self) -> Vec<K> {
        let mut out = Vec::with_capacity(self.len());
        let mut i = self.head;
        while i != NIL {
            let s = self.slot(i);
            out.push(s.key.clone());
            i = s.next;
        }
        out
    }
}

#[cfg(test)]
mod tests;
