//! Publishes this node's signed peer record and keeps it alive.
//!
//! The record is republished when the profile changes (`publish`) and
//! before it expires (every half TTL), so a reader never finds only an
//! expired record of a live node.

use crate::dht::{DhtBackend, DhtError};
use crate::identity::Identity;
use crate::peer_record;
use crate::runtime;
use macula_nat_proto::record::PeerInfo;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

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
    last_seq: u64,
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
        self.state.lock().unwrap_or_else(|p| p.into_inner()).info = Some(info);
        let seq = self.publish_current().await?;
        // Restart the refresh period from this publication.
        self.wake.notify_one();
        Ok(seq)
    }

    async fn publish_current(&self) -> Result<u64, DhtError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DhtError::Closed);
        }
        let (seq, record) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(info) = st.info.clone() else { return Ok(st.last_seq) };
            let seq = peer_record::next_seq(st.last_seq);
            let ttl_s = self.ttl.as_secs().min(u32::MAX as u64) as u32;
            let record = peer_record::sign(&self.identity, seq, ttl_s, info)
                .map_err(|e| DhtError::Backend(format!("record: {e:?}")))?;
            st.last_seq = seq;
            (seq, record)
        };
        self.dht.put(&self.identity, seq, record).await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    pub fn stats(&self) -> AdvertStats {
        AdvertStats {
            published: self.published.load(Ordering::Relaxed),
            last_seq: self.state.lock().unwrap_or_else(|p| p.into_inner()).last_seq,
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
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
            if !woke {
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
