//! Several rendezvous (and relays) per node, on 127.0.0.1, sharing one
//! in-memory DHT. The rendezvous and relays that die are `macula-node`
//! processes killed with SIGKILL: no QUIC close reaches their peers, as
//! after a crash or a power cut, so a node notices only the silence.
//!
//! B joins R1 and R2, A joins R3 only. R1 dies: B's record stops naming
//! it within seconds, A still reaches B by id, messages flow both ways, B
//! still connects out; R1 comes back (same key, same port): B rejoins and
//! its record names R1 again. And a node reserved at two relays: one dies,
//! it leaves the node's reservations and record, the other carries a
//! relayed connect.

mod common;

use common::loopback::{node, Rdv};
use macula_nat_core::advertiser::Advertiser;
use macula_nat_core::connect::public_profile;
use macula_nat_core::dht::memory::MemoryDht;
use macula_nat_core::profile_cache::{CacheConfig, ProfileCache};
use macula_nat_core::{connect_detailed, runtime, Connection, ConnectOpts, Method, NodeId, Signal, SignalConfig};
use macula_nat_proto::record::{Contact, Contacts, PeerInfo};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `macula-node` process: a rendezvous, or a relay, that can crash.
struct Public {
    child: Option<Child>,
    _out: Option<std::io::BufReader<ChildStdout>>,
    dir: PathBuf,
    what: &'static str,
    contact: Contact,
}

impl Public {
    fn start(name: &str, what: &'static str) -> Public {
        let dir = std::env::temp_dir().join(format!("macula-multihome-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = Public { child: None, _out: None, dir, what, contact: Contact { node_id: NodeId::from_bytes([0; 32]), addr: "127.0.0.1:0".parse().unwrap() } };
        p.run("127.0.0.1:0".parse().unwrap());
        p
    }

    fn run(&mut self, listen: SocketAddr) {
        let (rendezvous, relay) = match self.what {
            "rendezvous" => (true, false),
            _ => (false, true),
        };
        let config = self.dir.join("node.toml");
        let text = format!(
            "log_level = \"error\"\nidentity_key = \"{}\"\n[node]\nlisten = \"{listen}\"\nrendezvous = {rendezvous}\nrelay = {relay}\n",
            self.dir.join("node.key").display()
        );
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_macula-node")).arg("--config").arg(&config).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        assert_eq!(v["event"], "ready", "{line}");
        self.contact = Contact {
            node_id: NodeId::from_hex(v["node_id"].as_str().unwrap()).unwrap(),
            addr: v["node"].as_str().unwrap().parse().unwrap(),
        };
        self.child = Some(child);
        // Kept: the child's stdout stays open while it runs.
        self._out = Some(out);
    }

    /// SIGKILL: no close goes out.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same address with the same key.
    fn restart(&mut self) {
        let addr = self.contact.addr;
        let id = self.contact.node_id;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may take a moment to be free again.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(addr)));
            if r.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "{} restarted", self.what);
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!((self.contact.node_id, self.contact.addr), (id, addr));
    }
}

impl Drop for Public {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cfg() -> SignalConfig {
    let mut c = SignalConfig::new(public_profile());
    // A dead rendezvous in a record costs a connect this much.
    c.join_timeout = Duration::from_secs(1);
    c
}

fn directory() -> Arc<ProfileCache> {
    ProfileCache::new(CacheConfig::default(), Arc::new(MemoryDht))
}

/// Publishes `s`'s record naming `rendezvous`; it then follows the
/// signal's live homes and reservations, as the node's own does.
async fn advertise(s: &Signal, rendezvous: Vec<Contact>) -> Arc<Advertiser> {
    let adv = Advertiser::new(s.node().identity().clone(), Arc::new(MemoryDht), Duration::from_secs(3600));
    adv.set_contacts(Contacts { rendezvous, reserved: vec![] });
    let info: PeerInfo = PeerInfo { endpoints: vec![s.node().local_addr().unwrap()], ..public_profile() };
    adv.publish(info).await.unwrap();
    s.advertise_homes(adv.clone());
    s.advertise_reservations(adv.clone());
    adv
}

/// Waits until `id`'s record in the DHT satisfies `f`; how long it took.
async fn record_until(id: NodeId, what: &str, limit: Duration, f: impl Fn(&Contacts) -> bool) -> Duration {
    let reader = directory();
    let started = Instant::now();
    loop {
        let e = reader.fetch(id).await.unwrap();
        if f(&e.contacts) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: {:?}", e.contacts);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `from` connects to `to` by id; messages both ways; `to` accepts it.
async fn exchange(from: &Signal, to: &Signal, opts: ConnectOpts) -> (Connection, Method) {
    let id = to.node().node_id();
    let c = tokio::time::timeout(Duration::from_secs(20), connect_detailed(from, id, opts)).await.unwrap().unwrap();
    assert_eq!(c.conn.peer_id(), id);
    let on_to = tokio::time::timeout(Duration::from_secs(5), to.accept()).await.unwrap().unwrap();
    assert_eq!(on_to.peer_id(), from.node().node_id());
    c.conn.send(b"ping".to_vec()).await.unwrap();
    assert_eq!(on_to.recv().await.unwrap(), b"ping");
    on_to.send(b"pong".to_vec()).await.unwrap();
    assert_eq!(c.conn.recv().await.unwrap(), b"pong");
    (c.conn, c.method)
}

/// Has `s` reserve at `relays`, in that order, and waits until it holds
/// all of them.
async fn reserve_at(s: &Signal, relays: &[&Public]) {
    let want: Vec<(NodeId, SocketAddr)> = relays.iter().map(|r| (r.contact.node_id, r.contact.addr)).collect();
    s.set_relays(want.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.reserved_relays() != want {
        assert!(Instant::now() < deadline, "reserved at {:?}", s.reserved_relays());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn live(s: &Signal) -> Vec<NodeId> {
    s.homes().into_iter().filter(|(_, l)| *l).map(|(c, _)| c.node_id).collect()
}

#[test]
fn a_node_at_two_rendezvous_stays_reachable_when_one_dies() {
    macula_nat_core::stderr_trace::init_from_env();
    runtime::handle().block_on(async {
        let mut r1 = Public::start("r1", "rendezvous");
        let (r2, r3) = (Rdv::start(), Rdv::start());
        let b = Signal::join_homes(node(), &[r1.contact, r2.contact()], cfg()).await.unwrap();
        assert_eq!(live(&b), vec![r1.contact.node_id, r2.node.node_id()]);
        let _adv_b = advertise(&b, vec![r1.contact, r2.contact()]).await;
        let a = Signal::join_homes(node(), &[r3.contact()], cfg()).await.unwrap();
        let _adv_a = advertise(&a, vec![r3.contact()]).await;
        a.set_directory(Some(directory()));
        b.set_directory(Some(directory()));
        let b_id = b.node().node_id();
        record_until(b_id, "B's record names both", Duration::from_secs(5), |c| c.rendezvous == vec![r1.contact, r2.contact()]).await;
        exchange(&a, &b, ConnectOpts::default()).await;

        // R1 crashes.
        let killed = Instant::now();
        r1.kill();
        // Reachable at once: A's cached record still names R1, which is
        // passed over (1 s join timeout), then R2.
        exchange(&a, &b, ConnectOpts::default()).await;
        let reachable = killed.elapsed();
        let gone = record_until(b_id, "B's record drops R1", Duration::from_secs(15), |c| c.rendezvous == vec![r2.contact()]).await + reachable;
        assert_eq!(live(&b), vec![r2.node.node_id()]);
        eprintln!("R1 killed -> A reached B again: {} ms; -> B's record without R1: {} ms", reachable.as_millis(), gone.as_millis());
        // After: a fresh reader finds only R2; A reaches B, B reaches A.
        let (_c, m) = exchange(&a, &b, ConnectOpts::default()).await;
        assert_eq!(m, Method::Direct);
        exchange(&b, &a, ConnectOpts::default()).await;

        // R1 comes back: B rejoins it and names it again.
        r1.restart();
        let again = record_until(b_id, "B's record names R1 again", Duration::from_secs(15), |c| c.rendezvous == vec![r1.contact, r2.contact()]).await;
        assert_eq!(live(&b), vec![r1.contact.node_id, r2.node.node_id()]);
        eprintln!("R1 restarted -> B's record names it again: {} ms after it was up", again.as_millis());
        exchange(&a, &b, ConnectOpts::default()).await;
    });
}

#[test]
fn a_dead_relay_leaves_the_reservations_and_the_other_serves() {
    runtime::handle().block_on(async {
        let mut relay1 = Public::start("relay1", "relay");
        let relay2 = Public::start("relay2", "relay");
        let r = Rdv::start();
        let a = Signal::join_homes(node(), &[r.contact()], cfg()).await.unwrap();
        let b = Signal::join_homes(node(), &[r.contact()], cfg()).await.unwrap();
        reserve_at(&b, &[&relay1, &relay2]).await;
        let _adv = advertise(&b, vec![r.contact()]).await;
        let b_id = b.node().node_id();
        record_until(b_id, "both reservations advertised", Duration::from_secs(10), |c| c.reserved == vec![relay1.contact, relay2.contact]).await;

        let killed = Instant::now();
        relay1.kill();
        let deadline = Instant::now() + Duration::from_secs(15);
        while b.reserved_relays().len() != 1 {
            assert!(Instant::now() < deadline, "the dead relay left: {:?}", b.reserved_relays());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = killed.elapsed();
        assert_eq!(b.reserved_relays(), vec![(relay2.contact.node_id, relay2.contact.addr)]);
        let gone = record_until(b_id, "the record drops the dead relay", Duration::from_secs(15), |c| c.reserved == vec![relay2.contact]).await + left;
        eprintln!("relay1 killed -> left B's reservations: {} ms; -> B's record: {} ms", left.as_millis(), gone.as_millis());
        // The other reservation carries a relayed connect (A takes B's
        // relays from its answer, which names only the live one).
        let opts = ConnectOpts { relay_only: true, upgrade_interval: None, ..ConnectOpts::default() };
        let (c, m) = exchange(&a, &b, opts).await;
        assert_eq!(m, Method::Relayed);
        assert_eq!(a.node().relay_of(&c.remote_address()), Some(relay2.contact.node_id));
    });
}

/// Seen in the operators lab: right after a relay was killed, a relayed
/// connect waited 5 s on it (the target still named it first, and our own
/// link to it, idle, had not been judged dead yet) before the next relay.
/// While another relay remains, each gets a quick try.
#[test]
fn a_relayed_connect_passes_over_a_relay_that_just_died() {
    runtime::handle().block_on(async {
        let mut relay1 = Public::start("relay1-quick", "relay");
        let relay2 = Public::start("relay2-quick", "relay");
        let r = Rdv::start();
        let a = Signal::join_homes(node(), &[r.contact()], cfg()).await.unwrap();
        let b = Signal::join_homes(node(), &[r.contact()], cfg()).await.unwrap();
        reserve_at(&b, &[&relay1, &relay2]).await;
        let opts = ConnectOpts { relay_only: true, upgrade_interval: None, ..ConnectOpts::default() };
        // A first connects through relay1 (B's first): A now holds a link there.
        let (c, _) = exchange(&a, &b, opts.clone()).await;
        assert_eq!(a.node().relay_of(&c.remote_address()), Some(relay1.contact.node_id));
        c.close("done");
        relay1.kill();
        // At once: B still names relay1 first, A's idle link to it looks alive.
        let t = Instant::now();
        let (c, m) = exchange(&a, &b, opts).await;
        let took = t.elapsed();
        eprintln!("relay1 killed -> relayed connect through relay2 in {} ms", took.as_millis());
        assert_eq!(m, Method::Relayed);
        assert_eq!(a.node().relay_of(&c.remote_address()), Some(relay2.contact.node_id));
        assert!(took < Duration::from_millis(4000), "waited {took:?} on the dead relay");
    });
}

#[test]
fn a_home_down_at_the_join_is_joined_when_it_comes_up() {
    runtime::handle().block_on(async {
        let mut r1 = Public::start("r1-late", "rendezvous");
        let r2 = Rdv::start();
        r1.kill();
        // The primary is down: the join succeeds through the standby, at
        // the cost of one join timeout, and the primary keeps being tried.
        let started = Instant::now();
        let b = Signal::join_homes(node(), &[r1.contact, r2.contact()], cfg()).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(live(&b), vec![r2.node.node_id()]);
        let _adv = advertise(&b, vec![r1.contact, r2.contact()]).await;
        let b_id = b.node().node_id();
        record_until(b_id, "the record names the live home only", Duration::from_secs(5), |c| c.rendezvous == vec![r2.contact()]).await;
        r1.restart();
        record_until(b_id, "the record names both once R1 is up", Duration::from_secs(15), |c| c.rendezvous == vec![r1.contact, r2.contact()]).await;
        assert_eq!(live(&b), vec![r1.contact.node_id, r2.node.node_id()]);
        // None up at all: the join fails.
        r1.kill();
        let none = Signal::join_homes(node(), &[r1.contact], cfg()).await;
        assert!(none.is_err());
    });
}

/// Seen in the operators lab: a connect waited 5 s on a guest connection
/// to a dead rendezvous (found silent, then rejoined rather than closed,
/// so still taken for open and tried first) before signalling through one
/// of the node's own homes. A guest that goes silent is closed, and our
/// own live homes come before guests.
#[test]
fn a_lost_guest_is_closed_and_our_own_homes_come_first() {
    runtime::handle().block_on(async {
        let mut r1 = Public::start("r1-guest", "rendezvous");
        let (r2, r3) = (Rdv::start(), Rdv::start());
        // A: homes R3 and R2. B: homes R1 and R2 (record: R1 first). C: R1 only.
        let a = Signal::join_homes(node(), &[r3.contact(), r2.contact()], cfg()).await.unwrap();
        let b = Signal::join_homes(node(), &[r1.contact, r2.contact()], cfg()).await.unwrap();
        let c = Signal::join_homes(node(), &[r1.contact], cfg()).await.unwrap();
        let _adv_b = advertise(&b, vec![r1.contact, r2.contact()]).await;
        let _adv_c = advertise(&c, vec![r1.contact]).await;
        a.set_directory(Some(directory()));
        // A holds a guest connection to R1 (to reach C).
        exchange(&a, &c, ConnectOpts::default()).await;
        assert_eq!(a.guest_connections(), 1);
        // To B: through R2, A's own home, though the record names R1 first
        // and A holds a guest there.
        exchange(&a, &b, ConnectOpts::default()).await;
        r1.kill();
        let killed = Instant::now();
        // Right after the kill (R1 not found silent yet): still through R2 at once.
        exchange(&a, &b, ConnectOpts::default()).await;
        let took = killed.elapsed();
        assert!(took < Duration::from_millis(1500), "{took:?}");
        // The guest to the dead R1 is closed once silent, not rejoined.
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.guest_connections() > 0 {
            assert!(Instant::now() < deadline, "the lost guest closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("R1 killed -> A reached B through its own home in {} ms; A's guest at R1 closed after {} ms", took.as_millis(), killed.elapsed().as_millis());
        exchange(&a, &b, ConnectOpts::default()).await;
    });
}
