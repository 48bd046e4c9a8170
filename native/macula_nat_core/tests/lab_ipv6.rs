//! IPv6 dual stack across the lab's stateful firewalls (issue 19): sites
//! with a global IPv6 /64 behind a firewall without NAT (address- and
//! port-dependent filtering), next to NAT44, and a dual-stack public host
//! that runs the rendezvous and a relay (`macula-connect rendezvous
//! --bind6 --serve-relay`). Each connect sends a message the listener
//! echoes (both ways).
//!
//! - two IPv6-only nodes punch through both firewalls (simultaneous open);
//! - two dual-stack nodes connect over IPv6 although IPv4 punches too
//!   (IPv6 first, IPv4 a happy-eyeballs delay later), remote IPv6;
//! - a dual-stack node whose IPv6 is broken (its host lost its IPv6 route;
//!   the address is still offered) still punches, over IPv4;
//! - an IPv6-only node and an IPv4-only node share no family: they meet
//!   through the relay, which each reaches over its own family, in both
//!   directions.

mod common;
use common::field;
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

const RDV_PORT: u16 = 4433;

/// Lines of a child's stdout; the reader thread keeps the pipe drained.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

/// Kills the children when the test ends, also when it fails.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn ipv6_only_and_dual_stack_pairs_connect_directly_and_cross_families_relay() {
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    if !common::ready(bin) {
        return;
    }
    let mut spec = LabSpec::new("v6c");
    spec.ipv6 = true;
    spec.public.push("rdv".into());
    for (name, v6only) in [("o1", true), ("o2", true), ("d1", false), ("d2", false), ("d3", false)] {
        let mut s = SiteSpec::new(name, "kernel:port_restricted_cone").unwrap();
        if v6only {
            s.ipv6_only = true;
        } else {
            s.ipv6 = true;
        }
        spec.sites.push(s);
    }
    spec.sites.push(SiteSpec::new("f4", "kernel:port_restricted_cone").unwrap());
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let mut kids = Children(Vec::new());

    let (r4, r6) = (lab.host_addr("rdv").unwrap(), lab.host_addr6("rdv").unwrap());
    let (rdv4, rdv6) = (format!("{r4}:{RDV_PORT}"), format!("[{r6}]:{RDV_PORT}"));
    let mut rdv = lab.spawn("rdv", &[bin, "rendezvous", "--bind", &rdv4, "--bind6", &rdv6, "--serve-relay"]).expect("rendezvous");
    let said = lines(&mut rdv);
    kids.0.push(rdv);
    let ready = said.recv_timeout(Duration::from_secs(5)).expect("rendezvous ready");
    let rdv_id = field(&ready, "node_id").expect("rendezvous id");
    assert_eq!(field(&ready, "addr6").as_deref(), Some(rdv6.as_str()), "{ready}");

    // How each kind of node is started: its sockets, the rendezvous and
    // relay address of its family. IPv6 behind a stateful firewall is an
    // endpoint-independent mapping with port-dependent filtering; so is
    // IPv4 behind these NATs.
    let args = |host: &str| -> Vec<String> {
        let (bind, rdv) = match host {
            "o1" | "o2" => (vec!["--bind", "[::]:0"], &rdv6),
            "d1" | "d2" | "d3" => (vec!["--bind", "0.0.0.0:0", "--bind6", "[::]:0"], &rdv4),
            _ => (vec!["--bind", "0.0.0.0:0"], &rdv4),
        };
        let mut v: Vec<String> = bind.into_iter().map(String::from).collect();
        for a in ["--rendezvous", rdv, "--rendezvous-id", &rdv_id, "--relay", rdv, "--relay-id", &rdv_id, "--nat", "ei-pd-pp"] {
            v.push(a.to_string());
        }
        v
    };
    let mut ids = std::collections::HashMap::new();
    for host in ["o2", "d2", "f4"] {
        let mut argv = vec![bin.to_string(), "listen".into()];
        argv.extend(args(host));
        let mut l = lab.spawn(host, &argv).expect("listener");
        let said = lines(&mut l);
        kids.0.push(l);
        let joined = said.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{host}: listener did not join"));
        let observed = field(&joined, "observed").unwrap_or_default();
        eprintln!("{host}: {joined}");
        // The rendezvous saw an IPv6-only node over IPv6, the others over IPv4.
        assert_eq!(observed.starts_with('['), host == "o2", "{host}: observed {observed}");
        ids.insert(host, (field(&joined, "node_id").expect("node id"), said));
    }

    // d3's IPv6 goes nowhere: its global address stays (and is offered),
    // its packets to other networks are dropped on the host.
    let broke = lab.exec("d3", &["ip", "-6", "route", "replace", "blackhole", "default"]).expect("ip route");
    assert!(broke.status.success(), "{}", String::from_utf8_lossy(&broke.stderr));
    let addr6 = |host: &str| lab.host_addr6(host).unwrap();
    // (from, to, strategy, method, where the remote must be: IPv6 or
    // IPv4 (d2's NAT), or anything (relayed))
    let cases: [(&str, &str, &str, &str, Option<std::net::IpAddr>); 5] = [
        ("o1", "o2", "simple_punch", "punched", Some(addr6("o2").into())),
        ("d1", "d2", "simple_punch", "punched", Some(addr6("d2").into())),
        ("d3", "d2", "simple_punch", "punched", Some(lab.site("d2").unwrap().public_ip.into())),
        ("o1", "f4", "relay", "relayed", None),
        ("f4", "o2", "relay", "relayed", None),
    ];
    let mut failures = Vec::new();
    for (from, to, strategy, method, remote6) in cases {
        let target = &ids[to].0;
        let mut argv = vec![bin.to_string(), "connect".into(), target.clone()];
        argv.extend(args(from));
        argv.extend(["--timeout-ms".into(), "8000".into(), "--allow-relay".into()]);
        let out = lab.exec_timeout(from, &argv, Duration::from_secs(20)).expect("connect");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("{from} -> {to}: {line}");
        let remote = field(&line, "remote").unwrap_or_default();
        let accepted = ids[to].1.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
        let good = field(&line, "ok").as_deref() == Some("true")
            && field(&line, "strategy").as_deref() == Some(strategy)
            && field(&line, "method").as_deref() == Some(method)
            && match remote6 {
                Some(std::net::IpAddr::V6(ip)) => remote.starts_with(&format!("[{ip}]:")),
                Some(ip) => remote.starts_with(&format!("{ip}:")),
                None => true,
            };
        if !good {
            failures.push(format!("{from} -> {to}: want {strategy}/{method} at {remote6:?}, got `{line}`; stderr `{}`", String::from_utf8_lossy(&out.stderr).trim()));
        }
        // The listener's side of a direct IPv6 connection is IPv6 too.
        if let Some(std::net::IpAddr::V6(ip)) = remote6 {
            let from6 = lab.host_addr6(from).unwrap();
            if !field(&accepted, "remote").is_some_and(|r| r.starts_with(&format!("[{from6}]:"))) {
                failures.push(format!("{from} -> {to}: listener saw `{accepted}`, want {from6} ({ip})"));
            }
        }
    }
    drop(kids);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Detection per family: an IPv6-only node behind the stateful firewall,
/// against an observer's IPv6 addresses, finds no NAT (its public address
/// is its own, mapping endpoint independent) and the firewall's address-
/// and port-dependent filtering; an IPv6 `none` host is open; a dual-stack
/// node detects its IPv4 NAT and, beside it, its IPv6 public address.
#[test]
fn an_ipv6_only_node_detects_its_firewall_over_ipv6() {
    let detect = env!("CARGO_BIN_EXE_macula-detect");
    if !common::ready(detect) {
        return;
    }
    let mut spec = LabSpec::new("v6d");
    spec.ipv6 = true;
    spec.observers.push("obs".into());
    let mut o = SiteSpec::new("o", "kernel:port_restricted_cone").unwrap();
    o.ipv6_only = true;
    let mut n = SiteSpec::new("n", "none").unwrap();
    n.ipv6 = true;
    let mut d = SiteSpec::new("d", "kernel:port_restricted_cone").unwrap();
    d.ipv6 = true;
    spec.sites.extend([o, n, d]);
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let [a, b] = lab.info.observers6["obs"];
    let [a4, b4] = lab.info.observers["obs"];
    let observer = env!("CARGO_BIN_EXE_macula-observer");
    let obs = lab.spawn("obs", &[observer, "--primary", &format!("[{a}]:3478"), "--alternate", &format!("[{b}]:3479")]).expect("observer");
    let obs4 = lab.spawn("obs", &[observer, "--primary", &format!("{a4}:3478"), "--alternate", &format!("{b4}:3479")]).expect("observer");
    let _kids = Children(vec![obs, obs4]);
    std::thread::sleep(Duration::from_millis(300));
    let mut wrong = Vec::new();
    for (site, want_filtering) in [("o", "pd"), ("n", "ei")] {
        let out = lab
            .exec_timeout(site, &[detect, "--bind", "[::]:0", "--observer", &format!("[{a}]:3478"), "--timeout-ms", "5000"], Duration::from_secs(20))
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("{site}: {line}");
        let kv = |k: &str| line.split_whitespace().find_map(|p| p.strip_prefix(&format!("{k}="))).unwrap_or("?").to_string();
        let own = lab.site(site).unwrap().host_addr6.unwrap();
        let good = kv("mapping") == "ei"
            && kv("filtering") == want_filtering
            && kv("no_nat") == "true"
            && kv("public").starts_with(&format!("[{own}]:"));
        if !good {
            wrong.push(format!("{site}: want ei/{want_filtering}/no_nat at {own}, got {line}"));
        }
    }
    // A dual-stack node behind NAT44 and the firewall: its IPv4 verdict
    // (port-restricted cone), and its IPv6 side detected beside it.
    let argv = [detect, "--bind", "0.0.0.0:0", "--bind6", "[::]:0", "--observer", &format!("{a4}:3478"), "--observer", &format!("[{a}]:3478"), "--timeout-ms", "5000"];
    let out = lab.exec_timeout("d", &argv, Duration::from_secs(20)).unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    eprintln!("d: {line}");
    let kv = |k: &str| line.split_whitespace().find_map(|p| p.strip_prefix(&format!("{k}="))).unwrap_or("?").to_string();
    let si = lab.site("d").unwrap();
    if !(kv("mapping") == "ei" && kv("filtering") == "pd" && kv("no_nat") == "false" && kv("public").starts_with(&format!("{}:", si.public_ip)) && kv("public6").starts_with(&format!("[{}]:", si.host_addr6.unwrap()))) {
        wrong.push(format!("d: want ei/pd behind {} and public6 at {:?}, got {line}", si.public_ip, si.host_addr6));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
