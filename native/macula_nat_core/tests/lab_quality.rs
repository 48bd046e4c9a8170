//! Connection quality across real NATs: a direct connection between two
//! kernel full cones behind plain routers carries a paced stream; the
//! direct path is black-holed at one router (the rendezvous stays
//! reachable). The connection's quality monitor must call the path silent
//! within seconds and healthy again once the block is lifted; with a relay
//! the connection fails over to it and comes back; the stream arrives
//! whole and in order either way.

mod common;
use common::{field, lines, next_event};
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use std::process::Child;
use std::time::{Duration, Instant};

/// The lab of both tests: a public rendezvous (that also relays, with
/// `relay`), two kernel full cones behind plain routers on a routed
/// internet; the rendezvous, a listener on `qb` (reserved at the relay,
/// with `relay`) and its node id.
fn lab_with_listener(name: &str, relay: bool) -> (Lab, Vec<Child>, std::net::Ipv4Addr, String, String, String) {
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let mut spec = LabSpec::new(name);
    spec.public.push("rdv".into());
    spec.routed_internet = true;
    for name in ["qa", "qb"] {
        let mut s = SiteSpec::new(name, "kernel:full_cone").unwrap();
        s.plain_router = true;
        spec.sites.push(s);
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let rdv_ip = lab.host_addr("rdv").unwrap();
    let rdv_addr = format!("{rdv_ip}:4433");
    let mut argv = vec![bin, "rendezvous", "--bind", &rdv_addr];
    if relay {
        argv.push("--serve-relay");
    }
    let mut rdv = lab.spawn("rdv", &argv).expect("rendezvous");
    let rdv_id = field(&lines(&mut rdv).recv_timeout(Duration::from_secs(10)).expect("rendezvous ready"), "node_id").unwrap();
    let mut argv = vec![bin, "listen", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-ei-pp"];
    if relay {
        argv.extend_from_slice(&["--relay", &rdv_addr, "--relay-id", &rdv_id]);
    }
    let mut listener = lab.spawn("qb", &argv).expect("listener");
    // The listener prints a line per accepted connection: its pipe is
    // kept open (read and dropped), or its next line would end it.
    let heard = lines(&mut listener);
    let target = field(&heard.recv_timeout(Duration::from_secs(15)).expect("listener joined"), "node_id").unwrap();
    std::thread::spawn(move || while heard.recv().is_ok() {});
    (lab, vec![rdv, listener], rdv_ip, rdv_addr, rdv_id, target)
}

/// The scenario: 10,000 sequenced messages, one every 2 ms, over a
/// direct connection; the direct path is black-holed at the listener's
/// router while the rendezvous (also the relay) stays reachable. The
/// connection must move to the relay within seconds, every message must
/// arrive once and in order, and it must come back to a direct path after
/// the block is lifted.
#[test]
fn black_hole_fails_over_to_the_relay_and_back() {
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    if !common::ready(bin) {
        return;
    }
    let (mut lab, mut procs, rdv_ip, rdv_addr, rdv_id, target) = lab_with_listener("lcf", true);
    let mut stream = lab
        .spawn(
            "qa",
            &[bin, "stream", &target, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-ei-pp", "--relay", &rdv_addr, "--relay-id", &rdv_id, "--count", "10000", "--interval-ms", "2"],
        )
        .expect("stream");
    let said = lines(&mut stream);
    let connected = said.recv_timeout(Duration::from_secs(20)).expect("stream connected");
    assert_eq!(field(&connected, "method").as_deref(), Some("direct"), "{connected}");
    std::thread::sleep(Duration::from_secs(3));
    lab.blackhole("qb", true, &[rdv_ip]).unwrap();
    let t0 = Instant::now();
    let mut other = Vec::new();
    let relayed = next_event(&said, "method", Duration::from_secs(15), &mut other).unwrap_or_else(|| panic!("no failover within 15 s: {other:?}"));
    let failover = t0.elapsed();
    assert_eq!(field(&relayed, "method").as_deref(), Some("relayed"), "{relayed}");
    eprintln!("black hole -> relayed after {} ms", failover.as_millis());
    assert!(failover <= Duration::from_secs(6), "failover took {failover:?}");
    std::thread::sleep(Duration::from_secs(4));
    lab.blackhole("qb", false, &[]).unwrap();
    let t1 = Instant::now();
    let back = next_event(&said, "method", Duration::from_secs(60), &mut other).unwrap_or_else(|| panic!("not back to direct within 60 s: {other:?}"));
    assert_eq!(field(&back, "method").as_deref(), Some("direct"), "{back}");
    eprintln!("block lifted -> direct after {} ms", t1.elapsed().as_millis());
    let last = loop {
        let l = said.recv_timeout(Duration::from_secs(90)).expect("stream result");
        if field(&l, "event").is_none() {
            break l;
        }
    };
    eprintln!("{last}");
    assert_eq!(field(&last, "ok").as_deref(), Some("true"), "stream across failover and back: {last}");
    assert_eq!(field(&last, "echoed").as_deref(), Some("10000"), "{last}");
    assert_eq!(field(&last, "out_of_order").as_deref(), Some("0"), "{last}");
    procs.push(stream);
    for c in procs.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Without a relay to fail over to: the path is called silent within
/// seconds and healthy again when the block lifts; QUIC retransmits.
#[test]
fn black_hole_is_noticed_and_the_recovery_too() {
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    if !common::ready(bin) {
        return;
    }
    let (mut lab, mut procs, rdv_ip, rdv_addr, rdv_id, target) = lab_with_listener("lcq", false);
    // 4,000 messages, one every 5 ms: 20 s of traffic.
    let mut stream = lab
        .spawn("qa", &[bin, "stream", &target, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-ei-pp", "--count", "4000", "--interval-ms", "5"])
        .expect("stream");
    let said = lines(&mut stream);
    let connected = said.recv_timeout(Duration::from_secs(20)).expect("stream connected");
    assert_eq!(field(&connected, "method").as_deref(), Some("direct"), "{connected}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(next_event(&said, "path", Duration::ZERO, &mut Vec::new()).is_none(), "a healthy path was called degraded");
    lab.blackhole("qb", true, &[rdv_ip]).unwrap();
    let t0 = Instant::now();
    let degraded = next_event(&said, "path", Duration::from_secs(10), &mut Vec::new()).expect("no path event within 10 s of the black hole");
    let noticed = t0.elapsed();
    assert_eq!(field(&degraded, "degraded").as_deref(), Some("silent"), "{degraded}");
    eprintln!("black hole noticed after {} ms", noticed.as_millis());
    // 3 s is the target (bench); a loaded CI machine gets some slack.
    assert!(noticed <= Duration::from_millis(4500), "black hole noticed after {noticed:?}");
    std::thread::sleep(Duration::from_secs(2));
    lab.blackhole("qb", false, &[]).unwrap();
    let t1 = Instant::now();
    let recovered = next_event(&said, "path", Duration::from_secs(10), &mut Vec::new()).expect("no recovery within 10 s of lifting the block");
    assert_eq!(field(&recovered, "degraded").as_deref(), Some("false"), "{recovered}");
    eprintln!("recovery noticed after {} ms", t1.elapsed().as_millis());
    let last = loop {
        let l = said.recv_timeout(Duration::from_secs(60)).expect("stream result");
        if field(&l, "event").is_none() {
            break l;
        }
    };
    assert_eq!(field(&last, "ok").as_deref(), Some("true"), "stream after the black hole: {last}");
    procs.push(stream);
    for c in procs.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
