//! Reach by node id on 127.0.0.1: two rendezvous, A joined at R1, B at R2,
//! one in-memory DHT (per process) holding B's signed record. A connects
//! to B by its id alone: R1 answers Unknown, B's record names R2, A dials
//! R2 from its own socket (a guest signalling connection) and the pair
//! traverses as usual.

mod common;

use common::loopback::{node, Rdv};
use macula_nat_core::advertiser::Advertiser;
use macula_nat_core::connect::public_profile;
use macula_nat_core::dht::memory::MemoryDht;
use macula_nat_core::profile_cache::{CacheConfig, ProfileCache};
use macula_nat_core::{connect_detailed, runtime, ConnectError, ConnectOpts, Identity, Method, Signal, SignalConfig};
use macula_nat_proto::record::{Contact, Contacts, PeerInfo};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg() -> SignalConfig {
    let mut c = SignalConfig::new(public_profile());
    // A dead rendezvous in a record costs a connect this much.
    c.join_timeout = Duration::from_secs(1);
    c
}

async fn join(r: &Rdv, cfg: SignalConfig) -> Signal {
    Signal::join_with(node(), r.addr(), r.node.node_id(), cfg).await.unwrap()
}

/// Publishes `s`'s record naming `rendezvous` (as the node's own
/// advertiser does).
async fn advertise(s: &Signal, rendezvous: Vec<Contact>) -> Arc<Advertiser> {
    let adv = Advertiser::new(s.node().identity().clone(), Arc::new(MemoryDht), Duration::from_secs(3600));
    adv.set_contacts(Contacts { rendezvous, reserved: vec![] });
    let info: PeerInfo = PeerInfo { endpoints: vec![s.node().local_addr().unwrap()], ..public_profile() };
    adv.publish(info).await.unwrap();
    adv
}

fn directory() -> Arc<ProfileCache> {
    ProfileCache::new(CacheConfig::default(), Arc::new(MemoryDht))
}

/// A connects to B by id; both directions carry messages; B gets the
/// connection from accept.
async fn exchange(a: &Signal, b: &Signal) -> (macula_nat_core::Connection, macula_nat_core::Connection, Method, Duration) {
    let b_id = b.node().node_id();
    let c = tokio::time::timeout(Duration::from_secs(20), connect_detailed(a, b_id, ConnectOpts::default())).await.unwrap().unwrap();
    assert_eq!(c.conn.peer_id(), b_id);
    let on_b = tokio::time::timeout(Duration::from_secs(5), b.accept()).await.unwrap().unwrap();
    assert_eq!(on_b.peer_id(), a.node().node_id());
    c.conn.send(b"ping".to_vec()).await.unwrap();
    assert_eq!(on_b.recv().await.unwrap(), b"ping");
    on_b.send(b"pong".to_vec()).await.unwrap();
    assert_eq!(c.conn.recv().await.unwrap(), b"pong");
    (c.conn, on_b, c.method, c.elapsed)
}

#[test]
fn connects_by_id_through_the_targets_rendezvous_found_in_its_record() {
    runtime::handle().block_on(async {
        let (r1, r2) = (Rdv::start(), Rdv::start());
        let a = join(&r1, cfg()).await;
        let b = join(&r2, cfg()).await;
        let _adv = advertise(&b, vec![r2.contact()]).await;

        // Without a directory: what A's rendezvous says.
        let e = connect_detailed(&a, b.node().node_id(), ConnectOpts::default()).await.unwrap_err();
        assert!(matches!(e, ConnectError::UnknownPeer), "{e:?}");
        assert_eq!(a.guest_connections(), 0);

        a.set_directory(Some(directory()));
        let (_c, _on_b, method, took) = exchange(&a, &b).await;
        assert_eq!(method, Method::Direct);
        assert_eq!(a.guest_connections(), 1);
        eprintln!("cross-rendezvous connect (record lookup, guest join, session): {took:?}");
        // Again: the guest connection is reused, the record comes from the cache.
        let (_c2, _on_b2, _, took2) = exchange(&a, &b).await;
        assert_eq!(a.guest_connections(), 1);
        eprintln!("second connect (guest open, record cached): {took2:?}");
        // Same-rendezvous connect, for comparison.
        let c = join(&r1, cfg()).await;
        let (_c3, _on_c, _, took3) = exchange(&a, &c).await;
        eprintln!("same-rendezvous connect: {took3:?}");
    });
}

#[test]
fn a_dead_rendezvous_in_the_record_is_passed_over() {
    runtime::handle().block_on(async {
        let (r1, r2) = (Rdv::start(), Rdv::start());
        // Nothing answers there: a node with no rendezvous service.
        let dead = node();
        let dead_contact = Contact { node_id: Identity::generate().node_id(), addr: dead.local_addr().unwrap() };
        let a = join(&r1, cfg()).await;
        let b = join(&r2, cfg()).await;
        let _adv = advertise(&b, vec![dead_contact, r2.contact()]).await;
        a.set_directory(Some(directory()));
        let started = Instant::now();
        let (_c, _on_b, _, _) = exchange(&a, &b).await;
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert_eq!(a.guest_connections(), 1);
    });
}

#[test]
fn a_record_without_a_reachable_rendezvous_is_unknown_peer() {
    runtime::handle().block_on(async {
        let (r1, r2) = (Rdv::start(), Rdv::start());
        let a = join(&r1, cfg()).await;
        a.set_directory(Some(directory()));
        // B joined R2 but advertises only R1, where it is not.
        let b = join(&r2, cfg()).await;
        let _adv = advertise(&b, vec![r1.contact()]).await;
        let e = connect_detailed(&a, b.node().node_id(), ConnectOpts::default()).await.unwrap_err();
        assert!(matches!(e, ConnectError::UnknownPeer), "{e:?}");
        // No record at all.
        let e = connect_detailed(&a, Identity::generate().node_id(), ConnectOpts::default()).await.unwrap_err();
        assert!(matches!(e, ConnectError::UnknownPeer), "{e:?}");
        assert_eq!(a.guest_connections(), 0);
    });
}

#[test]
fn idle_guests_close_and_connections_outlive_them() {
    runtime::handle().block_on(async {
        let (r1, r2) = (Rdv::start(), Rdv::start());
        let mut ca = cfg();
        ca.guest_idle = Duration::from_millis(300);
        let a = join(&r1, ca).await;
        let b = join(&r2, cfg()).await;
        let _adv = advertise(&b, vec![r2.contact()]).await;
        a.set_directory(Some(directory()));
        let (c, on_b, _, _) = exchange(&a, &b).await;
        assert_eq!(a.guest_connections(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.guest_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(a.guest_connections(), 0, "idle guest closed");
        // The pair's connection is theirs, not the rendezvous'.
        on_b.send(b"still here".to_vec()).await.unwrap();
        assert_eq!(c.recv().await.unwrap(), b"still here");
        // B, still joined only at R2, is reached again: a new guest.
        let (_c, _on_b, _, _) = exchange(&a, &b).await;
        assert_eq!(a.guest_connections(), 1);
    });
}

#[test]
fn guests_are_capped() {
    runtime::handle().block_on(async {
        let (r1, r2, r3) = (Rdv::start(), Rdv::start(), Rdv::start());
        let mut ca = cfg();
        ca.max_guests = 1;
        let a = join(&r1, ca).await;
        let b = join(&r2, cfg()).await;
        let c = join(&r3, cfg()).await;
        let _ab = advertise(&b, vec![r2.contact()]).await;
        let _ac = advertise(&c, vec![r3.contact()]).await;
        a.set_directory(Some(directory()));
        exchange(&a, &b).await;
        // An idle guest makes room for the next.
        exchange(&a, &c).await;
        assert_eq!(a.guest_connections(), 1);
        exchange(&a, &b).await;
        assert_eq!(a.guest_connections(), 1);
    });
}

#[test]
fn the_targets_relays_serve_the_fallback_across_rendezvous() {
    use macula_nat_core::relay::{RelayLimits, RelayServer};
    use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
    runtime::handle().block_on(async {
        let (r1, r2) = (Rdv::start(), Rdv::start());
        let relay = node();
        let (tx, _events) = tokio::sync::mpsc::channel(macula_nat_core::relay::EVENT_QUEUE);
        let _server = RelayServer::start(&relay, RelayLimits::default(), tx).unwrap();
        // Both behind symmetric NATs: only a relay connects them.
        let sym = macula_nat_core::connect::profile_of(NatType { mapping: Mapping::Pd, filtering: Filtering::Pd, allocation: Allocation::Rd }, None, false);
        let mut ca = cfg();
        ca.profile = sym.clone();
        let mut cb = cfg();
        cb.profile = sym;
        let a = join(&r1, ca).await;
        let b = join(&r2, cb).await;
        b.set_relays(vec![(relay.node_id(), relay.local_addr().unwrap())]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while b.reserved_relays().is_empty() {
            assert!(Instant::now() < deadline, "B reserved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let adv = advertise(&b, vec![r2.contact()]).await;
        // B's record names its live reservation too.
        b.advertise_reservations(adv.clone());
        let relay_contact = Contact { node_id: relay.node_id(), addr: relay.local_addr().unwrap() };
        let reader = directory();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let e = reader.fetch(b.node().node_id()).await.unwrap();
            if e.contacts.reserved == vec![relay_contact] {
                assert_eq!(e.contacts.rendezvous, vec![r2.contact()]);
                break;
            }
            assert!(Instant::now() < deadline, "reservation advertised: {:?}", e.contacts);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        a.set_directory(Some(directory()));
        let opts = ConnectOpts { allow_relay: true, upgrade_interval: None, ..ConnectOpts::default() };
        let c = tokio::time::timeout(Duration::from_secs(20), connect_detailed(&a, b.node().node_id(), opts)).await.unwrap().unwrap();
        assert_eq!(c.method, Method::Relayed);
        assert_eq!(a.node().relay_of(&c.conn.remote_address()), Some(relay.node_id()));
        let on_b = tokio::time::timeout(Duration::from_secs(5), b.accept()).await.unwrap().unwrap();
        c.conn.send(b"via relay".to_vec()).await.unwrap();
        assert_eq!(on_b.recv().await.unwrap(), b"via relay");
        on_b.send(b"back".to_vec()).await.unwrap();
        assert_eq!(c.conn.recv().await.unwrap(), b"back");
        eprintln!("cross-rendezvous relayed connect: {:?}", c.elapsed);
    });
}

#[test]
fn a_target_that_moved_is_found_through_its_newer_record() {
    runtime::handle().block_on(async {
        let (r1, r2, r3) = (Rdv::start(), Rdv::start(), Rdv::start());
        let a = join(&r1, cfg()).await;
        a.set_directory(Some(directory()));
        let b_node = node();
        let b = Signal::join_with(b_node.clone(), r2.addr(), r2.node.node_id(), cfg()).await.unwrap();
        let adv = advertise(&b, vec![r2.contact()]).await;
        exchange(&a, &b).await;
        // B leaves R2 for R3 and says so; A's cache still holds the old
        // record (well within its TTL).
        b.close();
        drop(b);
        let b = Signal::join_with(b_node, r3.addr(), r3.node.node_id(), cfg()).await.unwrap();
        adv.set_contacts(Contacts { rendezvous: vec![r3.contact()], reserved: vec![] });
        adv.publish(PeerInfo { endpoints: vec![b.node().local_addr().unwrap()], ..public_profile() }).await.unwrap();
        let (_c, _on_b, _, _) = exchange(&a, &b).await;
    });
}
