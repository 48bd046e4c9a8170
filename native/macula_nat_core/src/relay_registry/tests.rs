//! Real nodes on loopback: relays are nodes with their own socket (which
//! answers STUN) and advertiser; the records go through the in-process
//! memory DHT and are verified by the client's cache.

use super::*;
use crate::dht::memory::MemoryDht;
use crate::profile_cache::CacheConfig;
use crate::{Identity, NodeConfig};
use macula_nat_proto::nat::{Allocation, Confidence, Filtering, Mapping};
use macula_nat_proto::record::PeerInfo;

struct Peer {
    node: Arc<Node>,
    adv: Arc<Advertiser>,
}

impl Peer {
    fn id(&self) -> NodeId {
        self.node.node_id()
    }

    fn addr(&self) -> SocketAddr {
        self.node.local_addr().unwrap()
    }

    /// Advertises itself as a relay with `load` and waits until published.
    fn relay_at(&self, load: f32) {
        let before = self.adv.stats().published;
        self.adv.set_relay(Some(RelayAd { addr: self.addr(), load_permille: relay_select::quantise_load(load) }));
        assert!(wait_until(|| self.adv.stats().published > before), "relay record published");
    }
}

fn peer() -> Peer {
    let node = Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap();
    let adv = Advertiser::new(node.identity().clone(), Arc::new(MemoryDht), Duration::from_secs(3600));
    Peer { node, adv }
}

fn relay(load: f32) -> Peer {
    let p = peer();
    p.relay_at(load);
    p
}

fn cache() -> Arc<ProfileCache> {
    ProfileCache::new(CacheConfig::default(), Arc::new(MemoryDht))
}

/// Rounds only when the test asks (`refresh_now`), so evaluations can be
/// counted; new relays are still measured at once. The probe timeout is
/// generous: tests share two cores and one runtime, and a late answer must
/// not pass for a dead relay.
fn cfg() -> RegistryConfig {
    RegistryConfig {
        refresh: Duration::from_secs(3600),
        probe_timeout: Duration::from_secs(1),
        select: SelectConfig { expire_after: Duration::from_secs(3600), ..SelectConfig::default() },
    }
}

fn client() -> (Peer, Arc<ProfileCache>, Arc<RelayRegistry>) {
    let me = peer();
    let cache = cache();
    let reg = RelayRegistry::new(
        Sources { node: me.node.clone(), cache: cache.clone(), adv: me.adv.clone() },
        cfg(),
    );
    (me, cache, reg)
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

fn refresh(reg: &RelayRegistry) {
    runtime::handle().block_on(reg.refresh_now());
}

fn ids(v: &[RelayInfo]) -> Vec<NodeId> {
    v.iter().map(|r| r.node_id).collect()
}

/// (id byte, srtt, failures, load) of every candidate, for failure messages.
fn state(reg: &RelayRegistry) -> Vec<(u8, Option<Duration>, u32, f32)> {
    lock(&reg.sel).candidates().map(|c| (c.node_id.as_bytes()[0], c.srtt, c.failures, c.load)).collect()
}

fn load_of(reg: &RelayRegistry, id: &NodeId) -> Option<f32> {
    lock(&reg.sel).get(id).map(|c| c.load)
}

fn info(rendezvous: Vec<SocketAddr>) -> PeerInfo {
    PeerInfo {
        mapping: Mapping::Pd,
        filtering: Filtering::Pd,
        allocation: Allocation::Rd,
        confidence: Confidence::High,
        public_addr: None,
        port_delta: None,
        no_nat: false,
        detected_at: 1,
        endpoints: vec![],
        rendezvous,
    }
}

#[test]
fn registered_relays_are_timed_by_stun_and_ranked_by_load() {
    let (_me, _cache, reg) = client();
    let busy = relay(0.9);
    let idle = relay(0.0);
    reg.register(busy.id(), busy.addr());
    reg.register(idle.id(), idle.addr());
    // Measured at once, without waiting for a round.
    assert!(wait_until(|| reg.best(5).len() == 2));
    for r in reg.best(5) {
        assert!(r.latency > Duration::ZERO, "{r:?}");
    }
    assert!(busy.node.stats().stun_answered >= 1 && idle.node.stats().stun_answered >= 1);
    // The round fetches their records: the loads come from the signed records.
    refresh(&reg);
    assert!(wait_until(|| load_of(&reg, &busy.id()) == Some(0.9)));
    assert_eq!(load_of(&reg, &idle.id()), Some(0.0));
    // A near but nearly full relay loses to an idle one (within the
    // hysteresis: at most two more evaluations).
    refresh(&reg);
    refresh(&reg);
    assert_eq!(ids(&reg.best(5)), vec![idle.id(), busy.id()]);
    assert_eq!(reg.find(None).map(|r| r.node_id), Some(idle.id()));
    assert_eq!(reg.best(1).len(), 1);
}

#[test]
fn a_killed_relay_is_dropped_and_the_choice_moves_at_once() {
    let (_me, _cache, reg) = client();
    let relays = [relay(0.0), relay(0.0)];
    for r in &relays {
        reg.register(r.id(), r.addr());
    }
    assert!(wait_until(|| reg.best(5).len() == 2));
    refresh(&reg);
    let chosen = reg.best(1)[0].node_id;
    let (dead, alive) = if relays[0].id() == chosen { (&relays[0], &relays[1]) } else { (&relays[1], &relays[0]) };
    let mut changes = reg.subscribe();
    changes.mark_unchanged();
    let dead_addr = dead.addr();
    dead.node.close();
    // Closing aborts the receive task, which a busy runtime may still be
    // running for a moment (answering the next probe); its port comes free
    // only once the task, which holds the socket, is gone.
    assert!(wait_until(|| std::net::UdpSocket::bind(dead_addr).is_ok()), "the dead relay's socket is released");
    refresh(&reg);
    assert_eq!(reg.best(1)[0].node_id, dead.id(), "one unanswered round is not down yet");
    assert!(!changes.has_changed().unwrap());
    refresh(&reg);
    // Down after the second: replaced without waiting for the hysteresis.
    assert_eq!(ids(&reg.best(5)), vec![alive.id()]);
    assert!(changes.has_changed().unwrap());
    // The caller's own failure report takes the last one out at once.
    reg.report_failure(&alive.id());
    assert!(reg.best(5).is_empty());
    assert_eq!(reg.find(None), None);
    // It answers the next probe: back.
    refresh(&reg);
    assert_eq!(ids(&reg.best(5)), vec![alive.id()]);
}

#[test]
fn relays_are_found_in_fetched_records_and_dropped_when_they_stop_relaying() {
    let (_me, cache, reg) = client();
    let r = relay(0.25);
    let plain = peer();
    runtime::handle().block_on(plain.adv.publish(info(vec![]))).unwrap();
    // Someone on this node looks both up (e.g. to connect to them).
    let h = runtime::handle();
    assert_eq!(h.block_on(cache.fetch(r.id())).unwrap().relay.map(|a| a.load_permille), Some(250));
    assert_eq!(h.block_on(cache.fetch(plain.id())).unwrap().relay, None);
    assert!(wait_until(|| reg.best(5).len() == 1));
    let got = &reg.best(5)[0];
    assert_eq!((got.node_id, got.addr, got.load), (r.id(), r.addr(), 0.25));
    assert!(got.latency > Duration::ZERO);
    // The relay stops relaying: its next record says so and the next round
    // reads it.
    let before = r.adv.stats().published;
    r.adv.set_relay(None);
    assert!(wait_until(|| r.adv.stats().published > before));
    refresh(&reg);
    assert!(wait_until(|| lock(&reg.sel).get(&r.id()).is_none()));
    assert!(reg.best(5).is_empty());
}

#[test]
fn registering_itself_advertises_this_node_and_it_is_not_a_candidate() {
    let (me, _cache, reg) = client();
    let reader = cache();
    let h = runtime::handle();
    let relay_of = |id: NodeId| h.block_on(reader.fetch(id)).ok().and_then(|e| e.relay);
    reg.register(me.id(), me.addr());
    assert!(wait_until(|| relay_of(me.id()) == Some(RelayAd { addr: me.addr(), load_permille: 0 })));
    reg.set_own_load(0.42);
    assert!(wait_until(|| relay_of(me.id()).map(|a| a.load_permille) == Some(400)));
    assert!(reg.best(5).is_empty());
    refresh(&reg);
    assert!(reg.best(5).is_empty(), "never a relay for itself");
    // The cache behind the registry restarts: the new advertiser carries on.
    let adv2 = Advertiser::new(me.node.identity().clone(), Arc::new(MemoryDht), Duration::from_secs(3600));
    let cache2 = cache();
    reg.attach(Sources { node: me.node.clone(), cache: cache2.clone(), adv: adv2.clone() });
    me.adv.close();
    assert!(wait_until(|| adv2.stats().published >= 1));
    assert_eq!(adv2.relay().map(|a| a.load_permille), Some(400));
    // ... and relays are found through the new cache.
    let r = relay(0.0);
    h.block_on(cache2.fetch(r.id())).unwrap();
    assert!(wait_until(|| ids(&reg.best(5)) == vec![r.id()]));
    reg.unregister(&me.id());
    assert!(wait_until(|| adv2.relay().is_none() && relay_of(me.id()).is_none()));
    reg.unregister(&r.id());
    assert!(reg.best(5).is_empty());
}

#[test]
fn find_prefers_the_targets_contacts_and_never_the_target() {
    let (_me, cache, reg) = client();
    let relays = [relay(0.0), relay(0.0)];
    for r in &relays {
        reg.register(r.id(), r.addr());
    }
    assert!(wait_until(|| reg.best(5).len() == 2));
    refresh(&reg);
    let best = reg.best(2);
    let (first, second) = (best[0].node_id, best[1].node_id);
    let second_addr = best[1].addr;
    // A target whose record names the second relay as its contact.
    let target = NodeId::from_bytes([9u8; 32]);
    cache.put(target, info(vec![second_addr]), Duration::from_secs(60));
    assert_eq!(reg.find(Some(&target)).map(|r| r.node_id), Some(second));
    // Unknown target: the best.
    assert_eq!(reg.find(Some(&NodeId::from_bytes([8u8; 32]))).map(|r| r.node_id), Some(first));
    // The best relay is the target: the other one.
    assert_eq!(reg.find(Some(&first)).map(|r| r.node_id), Some(second));
}

#[test]
fn hysteresis_holds_with_real_measurements() {
    let (_me, _cache, reg) = client();
    let relays = [relay(0.0), relay(0.0), relay(0.0)];
    for r in &relays {
        reg.register(r.id(), r.addr());
    }
    assert!(wait_until(|| reg.best(5).len() == 3));
    refresh(&reg);
    let chosen = reg.best(1)[0].node_id;
    let mut changes = reg.subscribe();
    changes.mark_unchanged();
    let answered: Vec<u64> = relays.iter().map(|r| r.node.stats().stun_answered).collect();
    // Three equally idle relays at loopback distance, each round timed
    // afresh: the measured RTTs wobble, the choice does not.
    for _ in 0..20 {
        refresh(&reg);
        assert_eq!(reg.best(1)[0].node_id, chosen, "{:?}", state(&reg));
        assert!(!changes.has_changed().unwrap(), "no change notification: {:?}", state(&reg));
    }
    for (r, before) in relays.iter().zip(answered) {
        assert!(r.node.stats().stun_answered >= before + 20, "every round measured every relay");
    }
    // The chosen relay becomes busy: clearly worse, so the choice moves,
    // through the hysteresis (two evaluations once the load is known).
    let busy = relays.iter().find(|r| r.id() == chosen).unwrap();
    busy.relay_at(0.9);
    refresh(&reg);
    assert!(wait_until(|| load_of(&reg, &chosen) == Some(0.9)));
    for _ in 0..2 {
        refresh(&reg);
    }
    assert_ne!(reg.best(1)[0].node_id, chosen);
    assert_eq!(reg.best(3)[2].node_id, chosen);
    assert!(changes.has_changed().unwrap());
}

#[test]
fn close_stops_the_tasks() {
    let (_me, _cache, reg) = client();
    assert_eq!(lock(&reg.tasks).len(), 1);
    let r = relay(0.0);
    reg.register(r.id(), r.addr());
    assert!(wait_until(|| reg.best(5).len() == 1));
    reg.close();
    assert!(reg.is_closed());
    assert!(reg.best(5).is_empty() && reg.find(None).is_none(), "a closed registry answers nothing");
    assert!(lock(&reg.tasks).is_empty());
    assert!(lock(&reg.follower).is_none());
}
