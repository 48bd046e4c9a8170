//! The peers' profile cache: sharded `LruTtl` policy behind short locks,
//! plus the DHT work (fetch, stale refresh) on the runtime.
//!
//! Reads come straight from the caller's thread (a BEAM scheduler through a
//! NIF): they take one shard lock for a lookup and a pointer copy, never
//! wait on the network, and never go through a process mailbox. A stale
//! read that is told to refresh spawns the refresh on the runtime and
//! returns at once.

use crate::lock::lock;
use crate::dht::{DhtBackend, DhtError};
use crate::identity::NodeId;
use crate::peer_record::{self, Refusal};
use crate::runtime;
use macula_nat_proto::cache::{CachePolicy, Lookup, LruTtl, Stats};
use macula_nat_proto::record::{Contacts, PeerInfo, Rejection, RelayAd};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Bounds at or above this are split into shards; below it the cache is
/// one shard and the LRU order is exact. Sharded, the bound is still exact
/// (one count for the whole cache, reserved before an insert) and the
/// victim is the least recently used entry of the inserting shard.
const SHARD_THRESHOLD: usize = 4096;
const SHARDS: usize = 16;
/// Slots a sweep visits per lock hold: keeps each hold well under 1 ms.
const SWEEP_BUDGET: usize = 4096;

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub max_entries: usize,
    pub default_ttl: Duration,
    pub policy: CachePolicy,
    /// How long one DHT lookup may take before `Timeout`.
    pub dht_timeout: Duration,
    /// How often dead entries are swept out.
    pub sweep_every: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            default_ttl: Duration::from_secs(300),
            policy: CachePolicy::default(),
            dht_timeout: Duration::from_secs(5),
            sweep_every: Duration::from_secs(1),
        }
    }
}

/// A cached profile. `seq` is the sequence number of the signed record it
/// came from (none when an application `put` it), used to refuse replays.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub info: PeerInfo,
    pub seq: Option<u64>,
    /// The peer's relay advertisement, from its signed record.
    pub relay: Option<RelayAd>,
    /// Where its signed record says it can be signalled and relayed.
    pub contacts: Contacts,
}

/// A record that verified, as the cache took it in.
pub type RecordSeen = (NodeId, Arc<Entry>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    NotFound,
    /// The record failed its signature check (or was not a record).
    Forged,
    /// Well signed, refused by the acceptance rule.
    Rejected(Rejection),
    Dht(DhtError),
    Closed,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub cache: Stats,
    pub forged: u64,
    pub replayed: u64,
    pub dht_fetches: u64,
    pub refreshes: u64,
}

/// Keyed (per process) fast hashing: NodeIds can be chosen by peers, so
/// the hash must not be predictable, but SipHash was a measurable share of
/// a read.
type Shard = LruTtl<NodeId, Arc<Entry>, ahash::RandomState>;

type Waiters = Vec<oneshot::Sender<Result<Arc<Entry>, FetchError>>>;

pub struct ProfileCache {
    shards: Box<[Mutex<Shard>]>,
    /// Entries in all shards together; never above `max`.
    len: AtomicUsize,
    max: usize,
    /// Where the next cross-shard eviction starts looking.
    evict_cursor: AtomicUsize,
    hasher: ahash::RandomState,
    cfg: CacheConfig,
    dht: Arc<dyn DhtBackend>,
    inflight: Mutex<HashMap<NodeId, Waiters>>,
    closed: AtomicBool,
    forged: AtomicU64,
    replayed: AtomicU64,
    dht_fetches: AtomicU64,
    refreshes: AtomicU64,
    /// Followers of verified records (`watch_records`).
    watchers: Mutex<Vec<mpsc::UnboundedSender<RecordSeen>>>,
}


impl ProfileCache {
    pub fn new(cfg: CacheConfig, dht: Arc<dyn DhtBackend>) -> Arc<Self> {
        let max = cfg.max_entries.max(1);
        let n = if max >= SHARD_THRESHOLD { SHARDS } else { 1 };
        // Every shard may hold the whole bound; the shared count enforces it.
        let shards = (0..n)
            .map(|_| Mutex::new(LruTtl::with_hasher(max, cfg.policy, ahash::RandomState::new()))).collect::<Vec<_>>().into_boxed_slice();
        let cache = Arc::new(ProfileCache {
            shards,
            len: AtomicUsize::new(0),
            max,
            evict_cursor: AtomicUsize::new(0),
            hasher: ahash::RandomState::new(),
            cfg,
            dht,
            inflight: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            forged: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            dht_fetches: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
        });
        spawn_sweeper(Arc::downgrade(&cache));
        cache
    }

    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    pub fn dht_name(&self) -> &'static str {
        self.dht.name()
    }

    fn shard(&self, id: &NodeId) -> &Mutex<Shard> {
        if self.shards.len() == 1 {
            return &self.shards[0];
        }
        &self.shards[(self.hasher.hash_one(id) as usize) % self.shards.len()]
    }

    /// The read path. A stale hit that is first in its round starts the
    /// background refresh before returning.
    pub fn get(self: &Arc<Self>, id: &NodeId) -> Lookup<Arc<Entry>> {
        let found = self.with_shard(id, |s| s.get(id, Instant::now()));
        if let Lookup::Stale { refresh: true, .. } = &found {
            self.start_refresh(*id);
        }
        found
    }

    /// The read path without a pointer copy: `f` sees the entry under the
    /// shard lock (keep it short: the binding only builds a term). A stale
    /// hit that is first in its round starts the background refresh.
    pub fn read<R>(self: &Arc<Self>, id: &NodeId, f: impl FnOnce(Lookup<&Entry>) -> R) -> R {
        let mut refresh = false;
        let r = self.with_shard(id, |s| {
            f(match s.get_ref(id, Instant::now()) {
                Lookup::Fresh(e) => Lookup::Fresh(&**e),
                Lookup::Stale { value, refresh: r } => {
                    refresh = r;
                    Lookup::Stale { value: &**value, refresh: r }
                }
                Lookup::Miss => Lookup::Miss,
            })
        });
        if refresh {
            self.start_refresh(*id);
        }
        r
    }

    fn start_refresh(self: &Arc<Self>, id: NodeId) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        runtime::spawn(async move {
            // The outcome lands in the cache (or marks the refresh failed);
            // nobody waits for it here.
            let _ = me.fetch(id).await;
        });
    }

    pub fn put(&self, id: NodeId, info: PeerInfo, ttl: Duration) {
        self.insert(id, Arc::new(Entry { info, seq: None, relay: None, contacts: Contacts::default() }), ttl);
    }

    /// Every record fetched from the DHT that verifies and is accepted from
    /// now on (whoever asked for it), until the receiver is dropped. How
    /// the relay registry learns of relays it was not told about.
    pub fn watch_records(&self) -> mpsc::UnboundedReceiver<RecordSeen> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.watchers).push(tx);
        rx
    }

    /// Runs `f` on `id`'s shard and keeps the shared count in step with
    /// whatever `f` removed.
    fn with_shard<R>(&self, id: &NodeId, f: impl FnOnce(&mut Shard) -> R) -> R {
        let mut s = lock(self.shard(id));
        let before = s.len();
        let r = f(&mut s);
        let after = s.len();
        if after < before {
            self.len.fetch_sub(before - after, Ordering::AcqRel);
        }
        r
    }

    fn try_reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| if n < self.max { Some(n + 1) } else { None })
            .is_ok()
    }

    fn insert(&self, id: NodeId, entry: Arc<Entry>, ttl: Duration) {
        loop {
            let now = Instant::now();
            let mut s = lock(self.shard(&id));
            if s.contains(&id) {
                s.put(id, entry, ttl, now);
                return;
            }
            if self.try_reserve() {
                s.put(id, entry, ttl, now);
                return;
            }
            // Full: make room in this shard (count unchanged: one out, one in).
            if s.evict_lru(now).is_some() {
                s.put(id, entry, ttl, now);
                return;
            }
            // This shard is empty while the cache is full: evict elsewhere,
            // without holding this shard (no two shard locks at once).
            drop(s);
            self.evict_elsewhere(now);
        }
    }

    fn evict_elsewhere(&self, now: Instant) {
        let n = self.shards.len();
        let start = self.evict_cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let mut s = lock(&self.shards[(start + k) % n]);
            if s.evict_lru(now).is_some() {
                self.len.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        }
    }

    pub fn invalidate(&self, id: &NodeId) -> bool {
        self.with_shard(id, |s| s.invalidate(id))
    }

    pub fn stats(&self) -> CacheStats {
        let mut total = Stats::default();
        for s in self.shards.iter() {
            total.add(&lock(s).stats());
        }
        CacheStats {
            cache: total,
            forged: self.forged.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            dht_fetches: self.dht_fetches.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
        }
    }

    /// `get_from_dht`: a fresh cached entry answers at once; otherwise one
    /// DHT lookup per NodeId is in flight however many callers ask, and its
    /// verified result is cached before every caller gets it.
    pub async fn get_or_fetch(self: &Arc<Self>, id: NodeId) -> Result<Arc<Entry>, FetchError> {
        if let Some((e, true)) = lock(self.shard(&id)).peek(&id, Instant::now()) {
            return Ok(e.clone());
        }
        self.fetch(id).await
    }

    /// Always asks the DHT (joining a lookup already in flight).
    pub async fn fetch(self: &Arc<Self>, id: NodeId) -> Result<Arc<Entry>, FetchError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(FetchError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut inflight = lock(&self.inflight);
            let waiters = inflight.entry(id).or_default();
            waiters.push(tx);
            waiters.len() == 1
        };
        if first {
            let me = self.clone();
            runtime::spawn(async move {
                let result = me.lookup(id).await;
                if result.is_err() {
                    me.with_shard(&id, |s| s.refresh_failed(&id, Instant::now()));
                }
                let waiters = lock(&me.inflight).remove(&id).unwrap_or_default();
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            });
        }
        rx.await.unwrap_or(Err(FetchError::Closed))
    }

    async fn lookup(&self, id: NodeId) -> Result<Arc<Entry>, FetchError> {
        self.dht_fetches.fetch_add(1, Ordering::Relaxed);
        let bytes = match tokio::time::timeout(self.cfg.dht_timeout, self.dht.get(id)).await {
            Err(_) => return Err(FetchError::Dht(DhtError::Timeout)),
            Ok(Err(e)) => return Err(FetchError::Dht(e)),
            Ok(Ok(None)) => return Err(FetchError::NotFound),
            Ok(Ok(Some(b))) => b,
        };
        let last_seq = lock(self.shard(&id)).peek(&id, Instant::now()).and_then(|(e, _)| e.seq);
        let now_s = peer_record::unix_now();
        let body = match peer_record::open(&bytes, &id, now_s, last_seq) {
            Ok(b) => b,
            Err(Refusal::Forged) => {
                self.forged.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %id, "forged peer record refused");
                return Err(FetchError::Forged);
            }
            Err(Refusal::Rejected(r)) => {
                if r == Rejection::Replayed {
                    self.replayed.fetch_add(1, Ordering::Relaxed);
                }
                return Err(FetchError::Rejected(r));
            }
        };
        // Never cache a record past its own validity.
        let left = Duration::from_secs(body.expires_at().saturating_sub(now_s));
        let ttl = self.cfg.default_ttl.min(left);
        let entry = Arc::new(Entry { info: body.info, seq: Some(body.seq), relay: body.relay, contacts: body.contacts });
        self.insert(id, entry.clone(), ttl);
        lock(&self.watchers).retain(|w| w.send((id, entry.clone())).is_ok());
        Ok(entry)
    }

    /// Stops background work; later fetches answer `Closed`. Reads keep
    /// working on what is cached (a reader racing a restart is not hurt).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Followers see the end of the stream.
        lock(&self.watchers).clear();
        let waiters: Vec<_> = lock(&self.inflight).drain().collect();
        for (_, ws) in waiters {
            for w in ws {
                let _ = w.send(Err(FetchError::Closed));
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

fn spawn_sweeper(cache: Weak<ProfileCache>) {
    runtime::spawn(async move {
        let every = match cache.upgrade() {
            Some(c) => c.cfg.sweep_every,
            None => return,
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(c) = cache.upgrade() else { return };
            if c.is_closed() {
                return;
            }
            for shard in c.shards.iter() {
                let mut from = 0;
                loop {
                    let (dropped, next) = lock(shard).sweep(Instant::now(), from, SWEEP_BUDGET);
                    c.len.fetch_sub(dropped, Ordering::AcqRel);
                    match next {
                        Some(n) => {
                            from = n;
                            tokio::task::yield_now().await;
                        }
                        None => break,
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests;
