//! Publishes this node's signed peer record and keeps it alive.
//!
//! The record is republished when the profile changes (`publish`), when
//! this node's relay advertisement changes (`set_relay`: starts or stops
//! relaying, or its quantised load moves a step; at most once per
//! `MIN_GAP`, so a load hovering on a step boundary cannot flood the DHT)
//! and before it expires (every half TTL), so a reader never finds only an
//! expired record of a live node.

use crate::lock::lock;
use crate::dht::{DhtBackend, DhtError};
use crate::identity::Identity;
use crate::peer_record;
use crate::runtime;
use macula_nat_proto::nat::{Allocation, Confidence, Filtering, Mapping};
use macula_nat_proto::record::{Contacts, PeerInfo, RelayAd};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Least time between two publications caused by `set_relay`.
pub const MIN_GAP: Duration = Duration::from_secs(1);

pub struct Advertiser {
    identity: Identity,
    dht: Arc<dyn DhtBackend>,
    ttl: Duration,
    state: Mutex<State>,
    wake: Notify,
    closed: AtomicBool,
    published: AtomicU64,
}

#[derive(Default)]
struct State {
    info: Option<PeerInfo>,
    relay: Option<RelayAd>,
    /// The rendezvous we are joined at and the relays holding our
    /// reservation (see [`Advertiser::set_contacts`]).
    contacts: Contacts,
    /// `relay` or `contacts` changed since the last publication.
    dirty: bool,
    /// The profile of the last publication, when `info` was not set yet
    /// (a relay-only record): withdrawing the relay republishes it.
    last_info: Option<PeerInfo>,
    last_seq: u64,
    last_publish: Option<Instant>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvertStats {
    pub published: u64,
    pub last_seq: u64,
}

impl Advertiser {
    /// `ttl` is the validity written into each record (at least 2 s).
    pub fn new(identity: Identity, dht: Arc<dyn DhtBackend>, ttl: Duration) -> Arc<Self> {
        let a = Arc::new(Advertiser {
            identity,
            dht,
            ttl: ttl.max(Duration::from_secs(2)),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            published: AtomicU64::new(0),
        });
        spawn_refresher(Arc::downgrade(&a));
        a
    }

    /// Replaces what is advertised and publishes it now.
    pub async fn publish(&self, info: PeerInfo) -> Result<u64, DhtError> {
        lock(&self.state).info = Some(info);
        let seq = self.publish_current().await?;
        // Restart the refresh period from this publication.
        self.wake.notify_one();
        Ok(seq)
    }

    /// Advertises this node as a relay at `addr` with `load_permille`
    /// (`None`: not a relay). Publishes soon (within `MIN_GAP` of the last
    /// publication) if that changes the record; never waits.
    pub fn set_relay(&self, relay: Option<RelayAd>) {
        {
            let mut st = lock(&self.state);
            if st.relay == relay {
                return;
            }
            st.relay = relay;
            st.dirty = true;
        }
        self.wake.notify_one();
    }

    /// Advertises where this node can be signalled (rendezvous joined,
    /// with their keys) and relayed (live reservations). Publishes soon
    /// (within `MIN_GAP` of the last publication) if that changes the
    /// record, never waits; ignored until there is a profile to publish
    /// with it.
    pub fn set_contacts(&self, contacts: Contacts) {
        {
            let mut st = lock(&self.state);
            if st.contacts == contacts {
                return;
            }
            st.contacts = contacts;
            st.dirty = true;
        }
        self.wake.notify_one();
    }

    /// Replaces only the reserving relays of [`Advertiser::set_contacts`]
    /// (what the node's relay set follows; the rendezvous are configured).
    pub fn set_reserved(&self, reserved: Vec<macula_nat_proto::record::Contact>) {
        {
            let mut st = lock(&self.state);
            if st.contacts.reserved == reserved {
                return;
            }
            st.contacts.reserved = reserved;
            st.dirty = true;
        }
        self.wake.notify_one();
    }

    /// Replaces only the rendezvous of [`Advertiser::set_contacts`] (what
    /// the node's live homes follow; see `connect::homes`).
    pub fn set_rendezvous(&self, rendezvous: Vec<macula_nat_proto::record::Contact>) {
        {
            let mut st = lock(&self.state);
            if st.contacts.rendezvous == rendezvous {
                return;
            }
            st.contacts.rendezvous = rendezvous;
            st.dirty = true;
        }
        self.wake.notify_one();
    }

    pub fn contacts(&self) -> Contacts {
        lock(&self.state).contacts.clone()
    }

    pub fn relay(&self) -> Option<RelayAd> {
        lock(&self.state).relay
    }

    async fn publish_current(&self) -> Result<u64, DhtError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DhtError::Closed);
        }
        let (seq, record) = {
            let mut st = lock(&self.state);
            let info = match (&st.info, st.relay, &st.last_info) {
                (Some(i), _, _) => i.clone(),
                (None, Some(r), _) => relay_only_info(r.addr),
                (None, None, Some(i)) => i.clone(),
                (None, None, None) => return Ok(st.last_seq),
            };
            st.last_info = Some(info.clone());
            let seq = peer_record::next_seq(st.last_seq);
            let ttl_s = self.ttl.as_secs().min(u32::MAX as u64) as u32;
            let record = peer_record::sign_with(&self.identity, seq, ttl_s, info, st.relay, st.contacts.clone())
                .map_err(|e| DhtError::Backend(format!("record: {e:?}")))?;
            st.last_seq = seq;
            st.dirty = false;
            st.last_publish = Some(Instant::now());
            (seq, record)
        };
        self.dht.put(&self.identity, seq, record).await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    pub fn stats(&self) -> AdvertStats {
        AdvertStats {
            published: self.published.load(Ordering::Relaxed),
            last_seq: lock(&self.state).last_seq,
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// What a relay that has not detected its NAT yet advertises: its relay
/// endpoint as an endpoint-independent mapping, with low confidence. A
/// relay must be reachable at that endpoint from anywhere, which is what
/// EI/EI says; the detected profile replaces it as soon as there is one.
fn relay_only_info(addr: SocketAddr) -> PeerInfo {
    PeerInfo {
        mapping: Mapping::Ei,
        filtering: Filtering::Ei,
        allocation: Allocation::Pp,
        confidence: Confidence::Low,
        public_addr: Some(addr),
        port_delta: None,
        no_nat: false,
        detected_at: 0,
        endpoints: vec![addr],
        rendezvous: Vec::new(),
    }
}

fn spawn_refresher(adv: Weak<Advertiser>) {
    runtime::spawn(async move {
        loop {
            let (period, woke) = {
                let Some(a) = adv.upgrade() else { return };
                let period = a.ttl / 2;
                // Hold the Arc only while waiting on its Notify; the Weak
                // is re-checked after every wake so a dropped advertiser
                // ends this task.
                let woke = tokio::time::timeout(period, a.wake.notified()).await.is_ok();
                (period, woke)
            };
            let Some(a) = adv.upgrade() else { return };
            if a.closed.load(Ordering::Acquire) {
                return;
            }
            let (dirty, last) = {
                let st = lock(&a.state);
                (st.dirty, st.last_publish)
            };
            if woke && dirty {
                if let Some(at) = last.map(|l| l + MIN_GAP).filter(|at| *at > Instant::now()) {
                    drop(a);
                    tokio::time::sleep_until(at.into()).await;
                    let Some(a) = adv.upgrade() else { return };
                    // A `publish` in the meantime took the change along.
                    if !lock(&a.state).dirty {
                        continue;
                    }
                    if let Err(e) = a.publish_current().await {
                        tracing::debug!(?e, "relay advertisement not published; next attempt in one period");
                    }
                    continue;
                }
            }
            if !woke || dirty {
                if let Err(e) = a.publish_current().await {
                    tracing::debug!(?e, ?period, "republish failed; next attempt in one period");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::memory::MemoryDht;
    use crate::profile_cache::{CacheConfig, ProfileCache};
    use macula_nat_proto::nat::{Allocation, Confidence, Filtering, Mapping};

    fn info(port: u16) -> PeerInfo {
        PeerInfo {
            mapping: Mapping::Hd,
            filtering: Filtering::Hd,
            allocation: Allocation::Pc,
            confidence: Confidence::Medium,
            public_addr: Some(format!("203.0.113.9:{port}").parse().unwrap()),
            port_delta: Some(2),
            no_nat: false,
            detected_at: 5,
            endpoints: vec![format!("203.0.113.9:{port}").parse().unwrap()],
            rendezvous: vec!["198.51.100.1:3478".parse().unwrap()],
        }
    }

    #[test]
    fn publishes_on_change_and_republishes_before_expiry() {
        let id = Identity::generate();
        let adv = Advertiser::new(id.clone(), Arc::new(MemoryDht), Duration::from_secs(2));
        let reader = ProfileCache::new(CacheConfig::default(), Arc::new(MemoryDht));
        let h = runtime::handle();
        assert_eq!(adv.stats().published, 0, "nothing to say yet");
        let s1 = h.block_on(adv.publish(info(1))).unwrap();
        assert_eq!(h.block_on(reader.fetch(id.node_id())).unwrap().info, info(1));
        let s2 = h.block_on(adv.publish(info(2))).unwrap();
        assert!(s2 > s1);
        let e = h.block_on(reader.fetch(id.node_id())).unwrap();
        assert_eq!((e.info.clone(), e.seq), (info(2), Some(s2)));
        // Half the 2 s TTL later the refresher has published again.
        std::thread::sleep(Duration::from_millis(1300));
        let st = adv.stats();
        assert_eq!(st.published, 3);
        assert!(st.last_seq > s2);
        adv.close();
        assert_eq!(h.block_on(adv.publish(info(3))), Err(DhtError::Closed));
    }
}

#[cfg(test)]
mod relay_tests {
    use super::*;
    use crate::dht::memory::MemoryDht;
    use crate::profile_cache::{CacheConfig, ProfileCache};

    fn ad(load_permille: u16) -> Option<RelayAd> {
        Some(RelayAd { addr: "203.0.113.7:4433".parse().unwrap(), load_permille })
    }

    fn wait_published(adv: &Advertiser, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while adv.stats().published < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(adv.stats().published, n);
    }

    #[test]
    fn relay_advertisement_is_published_on_change_only_and_withdrawn() {
        let id = Identity::generate();
        let adv = Advertiser::new(id.clone(), Arc::new(MemoryDht), Duration::from_secs(3600));
        let reader = ProfileCache::new(CacheConfig::default(), Arc::new(MemoryDht));
        let h = runtime::handle();
        // Before any profile: a relay-only record at once.
        adv.set_relay(ad(0));
        wait_published(&adv, 1);
        let e = h.block_on(reader.fetch(id.node_id())).unwrap();
        assert_eq!(e.relay, ad(0));
        assert_eq!((e.info.public_addr, e.info.confidence), (ad(0).map(|r| r.addr), Confidence::Low));
        // The same advertisement again publishes nothing.
        adv.set_relay(ad(0));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(adv.stats().published, 1);
        // A profile arrives: published with the relay advertisement kept.
        let info = relay_only_info("198.51.100.4:9".parse().unwrap());
        let before_publish = Instant::now();
        h.block_on(adv.publish(info.clone())).unwrap();
        assert_eq!(h.block_on(reader.fetch(id.node_id())).unwrap().relay, ad(0));
        // Two load steps in quick succession: one publication, not before
        // MIN_GAP after the last one, with the latest load.
        adv.set_relay(ad(50));
        adv.set_relay(ad(100));
        wait_published(&adv, 3);
        let e = h.block_on(reader.fetch(id.node_id())).unwrap();
        assert_eq!((e.relay, &e.info), (ad(100), &info));
        assert!(before_publish.elapsed() >= MIN_GAP, "rate limit");
        // Stops relaying: a v1 record again, so readers drop it as a relay.
        adv.set_relay(None);
        wait_published(&adv, 4);
        assert_eq!(h.block_on(reader.fetch(id.node_id())).unwrap().relay, None);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(adv.stats().published, 4);
        adv.close();
    }

    #[test]
    fn contacts_are_published_on_change_only() {
        use macula_nat_proto::record::Contact;
        let id = Identity::generate();
        let adv = Advertiser::new(id.clone(), Arc::new(MemoryDht), Duration::from_secs(3600));
        let reader = ProfileCache::new(CacheConfig::default(), Arc::new(MemoryDht));
        let h = runtime::handle();
        let rv = Contact { node_id: Identity::generate().node_id(), addr: "198.51.100.1:3478".parse().unwrap() };
        let contacts = Contacts { rendezvous: vec![rv], reserved: vec![] };
        h.block_on(adv.publish(relay_only_info("198.51.100.4:9".parse().unwrap()))).unwrap();
        adv.set_contacts(contacts.clone());
        wait_published(&adv, 2);
        assert_eq!(h.block_on(reader.fetch(id.node_id())).unwrap().contacts, contacts);
        adv.set_contacts(contacts.clone());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(adv.stats().published, 2, "unchanged: nothing published");
        let more = Contacts { reserved: vec![rv], ..contacts };
        adv.set_contacts(more.clone());
        wait_published(&adv, 3);
        assert_eq!(h.block_on(reader.fetch(id.node_id())).unwrap().contacts, more);
        adv.close();
    }
}
