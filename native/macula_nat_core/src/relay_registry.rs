//! The relays this node knows, measured and ranked; and this node's own
//! relay advertisement.
//!
//! Relays become known by `register` (the application, or static
//! configuration) and from any signed peer record the profile cache accepts
//! that says "I relay" (`ProfileCache::watch_records`). Every `refresh`
//! period each relay's record is fetched again (verified by the cache: its
//! load is taken, a record that no longer says "I relay" removes it) and
//! its round trip is measured with a STUN Binding request from the node's
//! own socket; then the sans-IO [`RelaySelect`] evaluates, with its
//! hysteresis. A relay that stops answering is down after
//! `SelectConfig::down_after` rounds and replaced at once.
//!
//! Registering this node's own id does not make it a candidate (relaying
//! to oneself is pointless): it makes the advertiser publish "I relay" with
//! the load the relay server reports through `set_own_load`.
//!
//! Reads (`best`, `find`) take one short lock and never wait on the
//! network, so the binding calls them on a BEAM scheduler.

use crate::lock::{lock, read, write};
use crate::advertiser::Advertiser;
use crate::identity::NodeId;
use crate::profile_cache::ProfileCache;
use crate::detect::stun_rtt;
use crate::{runtime, Node};
use macula_nat_proto::cache::Lookup;
use macula_nat_proto::record::RelayAd;
use macula_nat_proto::relay_select::{self, Candidate, RelaySelect, SelectConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Period of the refresh rounds (records, probes, one evaluation).
    pub refresh: Duration,
    /// How long one probe round waits for answers.
    pub probe_timeout: Duration,
    pub select: SelectConfig,
}

impl RegistryConfig {
    /// Defaults for a refresh period: probes time out within it, and a
    /// relay found in the DHT is forgotten after six rounds without a
    /// record (a few failed lookups are not the relay's fault).
    pub fn with_refresh(refresh: Duration) -> Self {
        let refresh = refresh.max(Duration::from_millis(10));
        RegistryConfig {
            refresh,
            probe_timeout: (refresh / 2).clamp(Duration::from_millis(5), Duration::from_secs(1)),
            select: SelectConfig { expire_after: refresh * 6, ..SelectConfig::default() },
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig::with_refresh(Duration::from_secs(5))
    }
}

/// A relay as the integrator's code and the binding see it.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayInfo {
    pub node_id: NodeId,
    pub addr: SocketAddr,
    /// Smoothed round trip.
    pub latency: Duration,
    /// 0.0 (idle) ..= 1.0 (full).
    pub load: f32,
}

impl RelayInfo {
    fn of(c: &Candidate) -> Self {
        RelayInfo { node_id: c.node_id, addr: c.addr, latency: c.srtt.unwrap_or_default(), load: c.load }
    }
}

/// What the registry runs on. Swapped as a whole by `attach` when the
/// node or the cache behind it is restarted.
#[derive(Clone)]
pub struct Sources {
    pub node: Arc<Node>,
    pub cache: Arc<ProfileCache>,
    pub adv: Arc<Advertiser>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Own {
    addr: SocketAddr,
}

pub struct RelayRegistry {
    cfg: RegistryConfig,
    sources: RwLock<Sources>,
    sel: Mutex<RelaySelect>,
    own: Mutex<Option<Own>>,
    own_load: Mutex<f32>,
    changes: watch::Sender<u64>,
    /// New candidates to measure now rather than at the next round.
    wake: Notify,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    follower: Mutex<Option<JoinHandle<()>>>,
}


impl RelayRegistry {
    pub fn new(sources: Sources, cfg: RegistryConfig) -> Arc<Self> {
        let reg = Arc::new(RelayRegistry {
            sel: Mutex::new(RelaySelect::new(cfg.select.clone())),
            cfg,
            sources: RwLock::new(sources),
            own: Mutex::new(None),
            own_load: Mutex::new(0.0),
            changes: watch::Sender::new(0),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            follower: Mutex::new(None),
        });
        let refresher = runtime::spawn(refresh_loop(Arc::downgrade(&reg)));
        lock(&reg.tasks).push(refresher);
        reg.follow_records();
        reg
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    fn sources(&self) -> Sources {
        read(&self.sources).clone()
    }

    /// Runs on a restarted node or cache from now on, keeping what is known
    /// (relays, measurements, the current choice, this node's own relay
    /// advertisement, which the new advertiser takes over).
    pub fn attach(self: &Arc<Self>, sources: Sources) {
        *write(&self.sources) = sources;
        self.advertise_own();
        self.follow_records();
        self.wake.notify_one();
    }

    /// `id` relays at `addr`. This node's own id: advertise it; any other:
    /// a candidate that never expires (until `unregister`), measured at
    /// once.
    pub fn register(&self, id: NodeId, addr: SocketAddr) {
        if id == self.sources().node.node_id() {
            *lock(&self.own) = Some(Own { addr });
            self.advertise_own();
            return;
        }
        self.with_sel(|s| s.upsert(id, addr, None, true, Instant::now()));
        self.wake.notify_one();
    }

    /// Forgets a relay; for this node's own id, stops advertising it.
    pub fn unregister(&self, id: &NodeId) {
        if *id == self.sources().node.node_id() {
            *lock(&self.own) = None;
            self.advertise_own();
            return;
        }
        self.with_sel(|s| s.remove(id));
    }

    /// The relay server's load, 0.0 (idle) ..= 1.0 (full). Republished
    /// (quantised) while this node is registered as a relay.
    pub fn set_own_load(&self, load: f32) {
        *lock(&self.own_load) = if load.is_nan() { 0.0 } else { load.clamp(0.0, 1.0) };
        self.advertise_own();
    }

    /// The caller could not use `id` (reservation refused, connection
    /// failed): not chosen again until it answers a probe.
    pub fn report_failure(&self, id: &NodeId) {
        self.with_sel(|s| s.mark_failed(id));
    }

    fn advertise_own(&self) {
        let own = *lock(&self.own);
        let load = *lock(&self.own_load);
        let ad = own.map(|o| RelayAd { addr: o.addr, load_permille: relay_select::quantise_load(load) });
        self.sources().adv.set_relay(ad);
    }

    /// Up to `n` usable relays, best first (the current choice, then by
    /// score). None once closed: nothing measures them any more.
    pub fn best(&self, n: usize) -> Vec<RelayInfo> {
        if self.is_closed() {
            return Vec::new();
        }
        lock(&self.sel).best(n).into_iter().map(RelayInfo::of).collect()
    }

    /// The relay to reach `target` through: one the target's cached record
    /// names as a contact if any is usable, else the best; never the target
    /// itself. No network wait: a target that is not cached is treated as
    /// naming no contact (a stale entry starts its refresh).
    pub fn find(&self, target: Option<&NodeId>) -> Option<RelayInfo> {
        if self.is_closed() {
            return None;
        }
        let via: Vec<SocketAddr> = match target {
            Some(t) => self.sources().cache.read(t, |found| match found {
                Lookup::Fresh(e) | Lookup::Stale { value: e, .. } => e.info.rendezvous.clone(),
                Lookup::Miss => Vec::new(),
            }),
            None => Vec::new(),
        };
        lock(&self.sel).choose_for(target, &via).map(RelayInfo::of)
    }

    /// Changes to the current relay or to the set of usable relays: the
    /// value is a counter, the news is that it moved.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// One full refresh round now (records, probes, evaluation), as the
    /// periodic task does.
    pub async fn refresh_now(&self) {
        self.round(false).await;
        self.with_sel(|s| s.evaluate(Instant::now()));
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        if let Some(f) = lock(&self.follower).take() {
            f.abort();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn with_sel<R>(&self, f: impl FnOnce(&mut RelaySelect) -> R) -> R {
        let (r, generation) = {
            let mut s = lock(&self.sel);
            let r = f(&mut s);
            (r, s.generation())
        };
        self.changes.send_if_modified(|g| {
            let moved = *g != generation;
            *g = generation;
            moved
        });
        r
    }

    /// Takes relays from every record the cache accepts.
    fn follow_records(self: &Arc<Self>) {
        let mut rx = self.sources().cache.watch_records();
        let me = Arc::downgrade(self);
        let task = runtime::spawn(async move {
            while let Some((id, entry)) = rx.recv().await {
                let Some(reg) = me.upgrade() else { return };
                if id == reg.sources().node.node_id() {
                    continue;
                }
                match entry.relay {
                    Some(ad) => {
                        let new = lock(&reg.sel).get(&id).is_none();
                        let load = relay_select::load_from_permille(ad.load_permille);
                        reg.with_sel(|s| s.upsert(id, ad.addr, Some(load), false, Instant::now()));
                        if new {
                            reg.wake.notify_one();
                        }
                    }
                    // Its own signed word: it does not relay (any more).
                    None => {
                        reg.with_sel(|s| s.remove(&id));
                    }
                }
            }
        });
        if let Some(old) = lock(&self.follower).replace(task) {
            old.abort();
        }
        if self.is_closed() {
            self.close();
        }
    }

    /// Fetches records and probes relays: all of them, or (`unmeasured_only`)
    /// those not measured yet. Record lookups are left running on their own:
    /// a verified record reaches the registry through `follow_records`
    /// (load, or "no longer a relay") whenever it arrives, a failed one
    /// changes nothing (expiry deals with silence), and a slow DHT never
    /// holds up the measurements. The cache joins a lookup still in flight
    /// from the previous round instead of starting another.
    async fn round(&self, unmeasured_only: bool) {
        let src = self.sources();
        let own_id = src.node.node_id();
        let targets: Vec<(NodeId, SocketAddr)> = lock(&self.sel)
            .candidates()
            .filter(|c| !unmeasured_only || c.srtt.is_none())
            .map(|c| (c.node_id, c.addr))
            .filter(|(id, _)| *id != own_id)
            .collect();
        if targets.is_empty() {
            return;
        }
        for (id, _) in &targets {
            let (cache, id) = (src.cache.clone(), *id);
            runtime::spawn(async move {
                let _ = cache.fetch(id).await;
            });
        }
        let addrs: Vec<SocketAddr> = targets.iter().map(|(_, a)| *a).collect();
        let rtts = stun_rtt::measure(&src.node, &addrs, self.cfg.probe_timeout).await;
        self.with_sel(|s| {
            for ((id, addr), rtt) in targets.iter().zip(rtts) {
                // Skip a relay whose endpoint changed while it was probed:
                // the answer timed the old path.
                if s.get(id).map(|c| c.addr) != Some(*addr) {
                    continue;
                }
                match rtt {
                    Some(r) => s.rtt_sample(id, r),
                    None => s.probe_failed(id),
                }
            }
        });
    }
}

impl Drop for RelayRegistry {
    fn drop(&mut self) {
        self.close();
    }
}

async fn refresh_loop(reg: Weak<RelayRegistry>) {
    let period = match reg.upgrade() {
        Some(r) => r.cfg.refresh,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the first full round is one period in.
    tick.tick().await;
    loop {
        let full = {
            let Some(r) = reg.upgrade() else { return };
            tokio::select! {
                _ = tick.tick() => true,
                _ = r.wake.notified() => false,
            }
        };
        let Some(r) = reg.upgrade() else { return };
        if r.is_closed() {
            return;
        }
        if full {
            r.refresh_now().await;
        } else {
            // New relays: measured now so a caller has an answer soon; the
            // evaluation (hysteresis) stays on the period.
            r.round(true).await;
        }
    }
}

#[cfg(test)]
mod tests;
