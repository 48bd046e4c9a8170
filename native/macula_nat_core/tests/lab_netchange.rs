//! Network change across real NATs (issue 19): a site's router gets a new
//! public address (`Lab::renumber`: an ISP renumbering it; the kernel NAT
//! forgets every mapping) under a live direct connection between two
//! kernel full cones. The connection must keep carrying a paced stream of
//! sequenced messages (echoed: both ways), every one delivered once and in
//! order, and the renumbered node must learn its new public address from
//! its rendezvous (`{"event":"netchange"}`: what the NIF passes to the
//! BEAM's detector, which re-detects and fires `nat_profile_changed`).
//!
//! The renumbered side as QUIC client (the dialler): its packets arrive
//! from the new address and the peer's QUIC migrates to it. As QUIC server
//! (the listener): the dialler keeps sending to the dead address and drops
//! the answers from the new one, the path goes silent and the dialler
//! fails over to the relay; the re-punch then reaches the listener at its
//! new address through the rendezvous and the connection is direct again.

mod common;
use common::{field, lines, drain_stderr, next_event};
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use std::time::{Duration, Instant};

/// Which side's router is renumbered.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Dialler,
    Listener,
}

/// A public rendezvous that also relays, two kernel full cones behind
/// plain routers on a routed internet, both nodes reserved at the relay;
/// `qa` streams 6,000 messages, one every 5 ms (30 s), to `qb`, which
/// echoes them. 3 s in, `side`'s router is renumbered.
fn renumber_under_a_stream(lab_name: &str, side: Side) {
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    if !common::ready(bin) {
        return;
    }
    let mut spec = LabSpec::new(lab_name);
    spec.public.push("rdv".into());
    spec.routed_internet = true;
    for name in ["qa", "qb"] {
        let mut s = SiteSpec::new(name, "kernel:full_cone").unwrap();
        s.plain_router = true;
        spec.sites.push(s);
    }
    let mut lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let rdv_ip = lab.host_addr("rdv").unwrap();
    let rdv_addr = format!("{rdv_ip}:4433");
    let mut rdv = lab.spawn("rdv", &[bin, "rendezvous", "--bind", &rdv_addr, "--serve-relay"]).expect("rendezvous");
    let rdv_said = lines(&mut rdv);
    let rdv_id = field(&rdv_said.recv_timeout(Duration::from_secs(10)).expect("rendezvous ready"), "node_id").unwrap();
    std::thread::spawn(move || while rdv_said.recv().is_ok() {});
    let mut listener = lab
        .spawn("qb", &[bin, "listen", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-ei-pp", "--relay", &rdv_addr, "--relay-id", &rdv_id])
        .expect("listener");
    let heard = lines(&mut listener);
    let joined = heard.recv_timeout(Duration::from_secs(15)).expect("listener joined");
    let target = field(&joined, "node_id").unwrap();
    let mut stream = lab
        .spawn(
            "qa",
            &[bin, "stream", &target, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-ei-pp", "--relay", &rdv_addr, "--relay-id", &rdv_id, "--count", "6000", "--interval-ms", "5"],
        )
        .expect("stream");
    let said = lines(&mut stream);
    for (c, n) in [(&mut rdv, "rdv"), (&mut listener, "listener"), (&mut stream, "stream")] {
        drain_stderr(c, &format!("{lab_name}-{n}"));
    }
    let mut procs = vec![rdv, listener, stream];
    let connected = said.recv_timeout(Duration::from_secs(20)).expect("stream connected");
    assert_eq!(field(&connected, "method").as_deref(), Some("direct"), "{connected}");
    std::thread::sleep(Duration::from_secs(3));
    let site = if side == Side::Dialler { "qa" } else { "qb" };
    let old = lab.site(site).unwrap().public_ip;
    let new = lab.renumber(site).unwrap();
    let t0 = Instant::now();
    eprintln!("{site} renumbered {old} -> {new}");
    // The renumbered node hears of its new address from the rendezvous.
    let (watch, other_side) = if side == Side::Dialler { (&said, &heard) } else { (&heard, &said) };
    let mut other = Vec::new();
    let change = next_event(watch, "netchange", Duration::from_secs(20), &mut other)
        .unwrap_or_else(|| panic!("{site} never learnt its new address: {other:?}"));
    eprintln!("netchange at {site} after {} ms: {change}", t0.elapsed().as_millis());
    assert!(field(&change, "old").unwrap().starts_with(&format!("{old}:")), "{change}");
    assert!(field(&change, "new").unwrap().starts_with(&format!("{new}:")), "{change}");
    if side == Side::Listener {
        // The dialler moved the connection to the relay and back to a
        // direct path at the listener's new address.
        let m = next_event(other_side, "method", Duration::from_secs(20), &mut other).unwrap_or_else(|| panic!("no failover: {other:?}"));
        eprintln!("renumbered -> {m} after {} ms", t0.elapsed().as_millis());
        assert_eq!(field(&m, "method").as_deref(), Some("relayed"), "{m}");
        let m = next_event(other_side, "method", Duration::from_secs(40), &mut other).unwrap_or_else(|| panic!("not direct again: {other:?}"));
        eprintln!("renumbered -> {m} after {} ms", t0.elapsed().as_millis());
        assert_eq!(field(&m, "method").as_deref(), Some("direct"), "{m}");
    }
    let last = loop {
        let l = said.recv_timeout(Duration::from_secs(90)).expect("stream result");
        if field(&l, "event").is_none() {
            break l;
        }
        eprintln!("{l}");
    };
    eprintln!("{last}");
    assert_eq!(field(&last, "ok").as_deref(), Some("true"), "stream across the renumbering: {last}");
    assert_eq!(field(&last, "echoed").as_deref(), Some("6000"), "{last}");
    assert_eq!(field(&last, "out_of_order").as_deref(), Some("0"), "{last}");
    // Traffic again within a generous bound (figures: bench/quality.md).
    let gap: f64 = field(&last, "max_gap_ms").unwrap().parse().unwrap();
    assert!(gap < 15_000.0, "the stream stalled {gap} ms");
    if side == Side::Listener {
        // The dialler's QUIC now talks to the listener's new address.
        assert!(field(&last, "remote").is_some(), "{last}");
    }
    for c in procs.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn renumbered_dialler_keeps_its_connection_and_learns_the_change() {
    renumber_under_a_stream("ncd", Side::Dialler);
}

#[test]
fn renumbered_listener_keeps_its_connection_through_the_relay_and_back() {
    renumber_under_a_stream("ncl", Side::Listener);
}
