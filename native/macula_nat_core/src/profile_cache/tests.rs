use super::*;
use crate::dht::{BoxFuture, DhtBackend};
use crate::identity::Identity;
use macula_nat_proto::nat::{Allocation, Confidence, Filtering, Mapping};
use std::sync::atomic::AtomicUsize;

/// A DHT that holds records in a map, counts lookups and answers slowly,
/// so concurrent readers really overlap with the refresh.
#[derive(Default)]
struct SlowDht {
    values: Mutex<HashMap<NodeId, Vec<u8>>>,
    gets: AtomicUsize,
    delay_ms: u64,
}

impl DhtBackend for Arc<SlowDht> {
    fn put(&self, signer: &Identity, _seq: u64, value: Vec<u8>) -> BoxFuture<Result<(), DhtError>> {
        lock(&self.values).insert(signer.node_id(), value);
        Box::pin(async { Ok(()) })
    }
    fn get(&self, id: NodeId) -> BoxFuture<Result<Option<Vec<u8>>, DhtError>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let v = lock(&self.values).get(&id).cloned();
        let d = self.delay_ms;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(d)).await;
            Ok(v)
        })
    }
    fn name(&self) -> &'static str {
        "slow"
    }
}

fn info(port: u16) -> PeerInfo {
    PeerInfo {
        mapping: Mapping::Ei,
        filtering: Filtering::Pd,
        allocation: Allocation::Pp,
        confidence: Confidence::High,
        public_addr: Some(format!("203.0.113.5:{port}").parse().unwrap()),
        port_delta: None,
        no_nat: false,
        detected_at: 1,
        endpoints: vec![],
        rendezvous: vec![],
    }
}

fn setup(max: usize, delay_ms: u64, grace: Duration) -> (Arc<ProfileCache>, Arc<SlowDht>) {
    let dht = Arc::new(SlowDht { delay_ms, ..Default::default() });
    let cfg = CacheConfig {
        max_entries: max,
        default_ttl: Duration::from_secs(300),
        policy: CachePolicy { grace, retry: Duration::from_millis(200) },
        dht_timeout: Duration::from_secs(2),
        sweep_every: Duration::from_millis(50),
    };
    (ProfileCache::new(cfg, Arc::new(dht.clone())), dht)
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    runtime::handle().block_on(f)
}

fn publish(dht: &Arc<SlowDht>, id: &Identity, seq: u64, port: u16) {
    let rec = peer_record::sign(id, seq, 3600, info(port), None).unwrap();
    lock(&dht.values).insert(id.node_id(), rec);
}

#[test]
fn stale_entry_refreshes_once_under_100_concurrent_readers() {
    let (cache, dht) = setup(100, 300, Duration::from_secs(60));
    let a = Identity::generate();
    publish(&dht, &a, 5, 2000);
    cache.put(a.node_id(), info(1000), Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(5));
    let barrier = Arc::new(std::sync::Barrier::new(100));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let (c, b, id) = (cache.clone(), barrier.clone(), a.node_id());
            std::thread::spawn(move || {
                b.wait();
                matches!(c.get(&id), Lookup::Stale { .. })
            })
        })
        .collect();
    let stale = threads.into_iter().map(|t| t.join().unwrap()).filter(|s| *s).count();
    assert_eq!(stale, 100, "every reader is served the stale value at once");
    // Wait for the refresh (300 ms DHT).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Lookup::Fresh(e) = cache.get(&a.node_id()) {
            assert_eq!(e.info, info(2000));
            assert_eq!(e.seq, Some(5));
            break;
        }
        assert!(Instant::now() < deadline, "refresh never landed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dht.gets.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().refreshes, 1);
}

#[test]
fn concurrent_fetches_share_one_lookup_and_cache_the_result() {
    let (cache, dht) = setup(100, 100, Duration::from_secs(60));
    let a = Identity::generate();
    publish(&dht, &a, 7, 3000);
    let results = block(async {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let c = cache.clone();
                let id = a.node_id();
                tokio::spawn(async move { c.get_or_fetch(id).await })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(results.iter().all(|r| r.as_ref().map(|e| e.info == info(3000)).unwrap_or(false)));
    assert_eq!(dht.gets.load(Ordering::SeqCst), 1);
    assert!(matches!(cache.get(&a.node_id()), Lookup::Fresh(_)));
    // Fresh now: get_from_dht answers from the cache.
    block(cache.get_or_fetch(a.node_id())).unwrap();
    assert_eq!(dht.gets.load(Ordering::SeqCst), 1);
}

#[test]
fn forged_records_are_refused_counted_and_not_cached() {
    let (cache, dht) = setup(100, 0, Duration::from_secs(60));
    let victim = Identity::generate();
    let attacker = Identity::generate();
    // The attacker's own valid record served under the victim's key.
    let rec = peer_record::sign(&attacker, 1, 3600, info(6666), None).unwrap();
    lock(&dht.values).insert(victim.node_id(), rec);
    assert_eq!(block(cache.get_or_fetch(victim.node_id())), Err(FetchError::Forged));
    // Garbage too.
    lock(&dht.values).insert(victim.node_id(), b"not a record".to_vec());
    assert_eq!(block(cache.fetch(victim.node_id())), Err(FetchError::Forged));
    assert_eq!(cache.stats().forged, 2);
    assert_eq!(cache.get(&victim.node_id()), Lookup::Miss);
}

#[test]
fn replayed_records_are_refused_and_counted() {
    let (cache, dht) = setup(100, 0, Duration::from_secs(60));
    let a = Identity::generate();
    publish(&dht, &a, 10, 1);
    block(cache.fetch(a.node_id())).unwrap();
    // An attacker re-serves an older record.
    publish(&dht, &a, 9, 2);
    assert_eq!(block(cache.fetch(a.node_id())), Err(FetchError::Rejected(Rejection::Replayed)));
    assert_eq!(cache.stats().replayed, 1);
    match cache.get(&a.node_id()) {
        Lookup::Fresh(e) => assert_eq!(e.seq, Some(10)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn not_found_and_failed_refresh_keeps_stale_value() {
    let (cache, dht) = setup(100, 0, Duration::from_secs(60));
    let a = Identity::generate();
    assert_eq!(block(cache.get_or_fetch(a.node_id())), Err(FetchError::NotFound));
    cache.put(a.node_id(), info(1), Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(5));
    assert!(matches!(cache.get(&a.node_id()), Lookup::Stale { .. }));
    std::thread::sleep(Duration::from_millis(50));
    assert!(matches!(cache.get(&a.node_id()), Lookup::Stale { .. }));
    // One lookup for the miss, one for the refresh; retry is 200 ms away.
    assert_eq!(dht.gets.load(Ordering::SeqCst), 2);
}

#[test]
fn sweeper_removes_entries_past_grace() {
    let (cache, _dht) = setup(100, 0, Duration::from_millis(50));
    for i in 0..10u8 {
        cache.put(NodeId::from_bytes([i; 32]), info(i as u16), Duration::from_millis(10));
    }
    assert_eq!(cache.stats().cache.size, 10);
    std::thread::sleep(Duration::from_millis(250));
    let s = cache.stats();
    assert_eq!(s.cache.size, 0);
    assert_eq!(s.cache.expirations, 10);
}

#[test]
fn bound_holds_for_sharded_caches() {
    let (cache, _dht) = setup(10_000, 0, Duration::from_secs(60));
    for i in 0..20_000u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        cache.put(NodeId::from_bytes(id), info(1), Duration::from_secs(60));
    }
    let s = cache.stats().cache;
    assert_eq!(s.size, 10_000);
    assert_eq!(s.evictions, 10_000);
}

#[test]
fn closed_cache_answers_closed_for_fetches_and_still_reads() {
    let (cache, _dht) = setup(10, 0, Duration::from_secs(60));
    cache.put(NodeId::from_bytes([1; 32]), info(1), Duration::from_secs(60));
    cache.close();
    assert_eq!(block(cache.fetch(NodeId::from_bytes([2; 32]))), Err(FetchError::Closed));
    assert!(matches!(cache.get(&NodeId::from_bytes([1; 32])), Lookup::Fresh(_)));
}

fn key(i: u32) -> NodeId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&i.to_be_bytes());
    NodeId::from_bytes(id)
}

#[test]
fn a_sharded_cache_fills_to_its_bound_before_evicting() {
    let (cache, _dht) = setup(10_000, 0, Duration::from_secs(60));
    for i in 0..10_000 {
        cache.put(key(i), info(1), Duration::from_secs(60));
    }
    let s = cache.stats().cache;
    assert_eq!((s.size, s.evictions), (10_000, 0));
    cache.put(key(10_000), info(1), Duration::from_secs(60));
    let s = cache.stats().cache;
    assert_eq!((s.size, s.evictions), (10_000, 1));
}

#[test]
fn concurrent_writers_never_exceed_the_bound() {
    let (cache, _dht) = setup(5_000, 0, Duration::from_secs(60));
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let c = cache.clone();
            std::thread::spawn(move || {
                for i in 0..25_000 {
                    c.put(key(t * 1_000_000 + i), info(1), Duration::from_secs(60));
                    if i % 97 == 0 {
                        c.invalidate(&key(t * 1_000_000 + i / 2));
                        assert!(c.len.load(Ordering::Acquire) <= 5_000);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = cache.stats().cache;
    assert_eq!(s.size as usize, cache.len.load(Ordering::Acquire));
    assert_eq!(s.size, 5_000);
}
