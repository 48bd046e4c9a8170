//! Classic STUN (RFC 3489, no magic cookie) both ways (issue 21).
//!
//! 1. Debian's `stun` client (Vovida 0.97, RFC 3489) behind lab NATs (the
//!    four kernel NATs filtered and as plain routers, a few userspace types,
//!    no NAT) against `macula-observer` and against coturn's `turnserver`,
//!    each on an observer host with two IPs: the client's verdict must be the
//!    same against both, and the one its classification gives the
//!    configured NAT.
//! 2. Our `macula-detect` against Debian's `stund` (Vovida 0.97, RFC 3489
//!    only) on an observer host with its two IPs: the configured mapping and
//!    filtering (and allocation) for every site.
//! 3. A plain node (one socket, QUIC running) answers a classic request in
//!    kind (loopback, no lab needed).

mod common;
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use macula_nat_proto::stun::{Attribute, Class, Message, METHOD_BINDING};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const PORT: u16 = 3478;
const ALT_PORT: u16 = 3479;

fn ready() -> bool {
    if !common::ready(env!("CARGO_BIN_EXE_macula-detect")) {
        return false;
    }
    for tool in ["stun", "stund", "turnserver"] {
        if macula_nat_lab::which(tool).is_none() {
            panic!("{tool} missing: scripts/setup.sh installs it (stun-client, stun-server, coturn)");
        }
    }
    true
}

/// (site, nat spec, plain router, expected "mapping filtering allocation").
fn sites() -> Vec<(String, String, bool, String)> {
    let mut v = Vec::new();
    for (short, k, want) in [
        ("fc", "full_cone", "ei ei pp"),
        ("rc", "restricted_cone", "ei hd pp"),
        ("prc", "port_restricted_cone", "ei pd pp"),
        ("sym", "symmetric", "pd pd rd"),
    ] {
        v.push((format!("k{short}"), format!("kernel:{k}"), false, want.to_string()));
        v.push((format!("p{short}"), format!("kernel:{k}"), true, want.to_string()));
    }
    for (m, f, a) in [
        ("ei", "ei", "rd"),
        ("ei", "hd", "pc"),
        ("ei", "pd", "pp"),
        ("hd", "ei", "pp"),
        ("hd", "hd", "rd"),
        ("hd", "pd", "pc"),
        ("pd", "ei", "pc"),
        ("pd", "hd", "pp"),
        ("pd", "pd", "rd"),
    ] {
        let nat = if a == "pc" { format!("user:{m}-{f}-{a}:delta=2") } else { format!("user:{m}-{f}-{a}") };
        v.push((format!("u{m}{f}{a}"), nat, false, format!("{m} {f} {a}")));
    }
    v.push(("open".into(), "none".into(), false, "ei ei pp".into()));
    v
}

/// What an RFC 3489 client's classification says about a configured NAT:
/// its tests cannot tell address- from port-dependent mapping (both are
/// "Dependent Mapping", RFC 3489's symmetric NAT), and without NAT it says
/// "Open".
fn classic_name(nat: &str, expected: &str) -> String {
    if nat == "none" {
        return "Open".into();
    }
    let mut it = expected.split(' ');
    let (m, f) = (it.next().unwrap(), it.next().unwrap());
    if m != "ei" {
        return "Dependent Mapping".into();
    }
    let filter = match f {
        "ei" => "Independent Filter",
        "hd" => "Address Dependent Filter",
        _ => "Port Dependent Filter",
    };
    format!("Independent Mapping, {filter}")
}

/// The `Primary:` line of `stun`'s output, without its trailing tab.
fn primary(out: &str) -> String {
    out.lines().find_map(|l| l.strip_prefix("Primary: ")).map(|s| s.trim().to_string()).unwrap_or_else(|| "?".into())
}

fn coturn(lab: &Lab, host: &str) -> std::process::Child {
    let [ip1, ip2] = lab.info.observers[host];
    lab.spawn(
        host,
        &["turnserver", "-L", &ip1.to_string(), "-L", &ip2.to_string(), "--no-auth", "--no-tls", "--no-dtls", "--no-cli", "-n", "--log-file", "stdout"],
    )
    .expect("turnserver")
}

fn ours(lab: &Lab, host: &str) -> std::process::Child {
    let [ip1, ip2] = lab.info.observers[host];
    let observer = env!("CARGO_BIN_EXE_macula-observer");
    lab.spawn(host, &[observer, "--primary", &format!("{ip1}:{PORT}"), "--alternate", &format!("{ip2}:{ALT_PORT}")])
        .expect("macula-observer")
}

fn stund(lab: &Lab, host: &str) -> std::process::Child {
    let [ip1, ip2] = lab.info.observers[host];
    lab.spawn(host, &["stund", "-h", &ip1.to_string(), "-a", &ip2.to_string(), "-p", &PORT.to_string(), "-o", &ALT_PORT.to_string()])
        .expect("stund")
}

fn stop(children: Vec<std::process::Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Debian's `stun` client behind every site, against coturn and against our
/// observer (on separate hosts, coturn first): the same verdict, the one
/// the configuration gives.
#[test]
fn debian_stun_client_agrees_between_our_observer_and_coturn() {
    if !ready() {
        return;
    }
    let sites = sites();
    let mut spec = LabSpec::new("clsclient");
    spec.observers.push("obs".into());
    spec.observers.push("cot".into());
    spec.seed = Some(21);
    for (name, nat, plain, _) in &sites {
        let mut s = SiteSpec::new(name, nat).unwrap();
        s.plain_router = *plain;
        spec.sites.push(s);
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let (o1, c1) = (lab.info.observers["obs"][0], lab.info.observers["cot"][0]);
    let servers = vec![ours(&lab, "obs"), coturn(&lab, "cot")];
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let children: Vec<_> = sites
        .iter()
        .map(|(name, _, _, _)| {
            let sh = format!("echo '@@ coturn'; stun {c1}:{PORT}; echo '@@ ours'; stun {o1}:{PORT}; echo '@@ end'");
            lab.spawn(name, &["sh", "-c", &sh]).unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    let mut table = String::from("| site | nat | plain router | configured | expected verdict | `stun` vs coturn | `stun` vs macula-observer |\n|---|---|---|---|---|---|---|\n");
    for ((name, nat, plain, expected), child) in sites.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let sections: HashMap<&str, &str> =
            text.split("@@ ").skip(1).filter_map(|s| s.split_once('\n')).map(|(k, v)| (k.trim(), v)).collect();
        let (cot, our) = (primary(sections.get("coturn").unwrap_or(&"")), primary(sections.get("ours").unwrap_or(&"")));
        let want = classic_name(nat, expected);
        table.push_str(&format!("| {name} | {nat} | {plain} | {expected} | {want} | {cot} | {our} |\n"));
        if cot != our {
            failures.push(format!("{name} ({nat}, plain {plain}): `stun` says `{our}` against us, `{cot}` against coturn"));
        }
        if our != want && !our.starts_with(&format!("{want},")) {
            failures.push(format!("{name} ({nat}, plain {plain}): `stun` says `{our}` against us, configured {expected} ({want})"));
        }
        if expected.ends_with("pp") && nat != "none" && !our.contains("preserves ports") {
            failures.push(format!("{name} ({nat}): `{our}` does not say the ports are preserved"));
        }
    }
    eprintln!("Debian stun client, {} sites in {:?}\n{table}", sites.len(), started.elapsed());
    if let Ok(path) = std::env::var("MACULA_CLASSIC_REPORT") {
        let _ = std::fs::write(format!("{path}.client.md"), &table);
    }
    stop(servers);
    drop(lab);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Our detector against Debian's `stund` (RFC 3489 only) as its observer:
/// the configured mapping, filtering and allocation for every site.
#[test]
fn our_detector_against_debian_stund() {
    if !ready() {
        return;
    }
    let sites = sites();
    let mut spec = LabSpec::new("clsstund");
    spec.observers.push("std".into());
    spec.seed = Some(23);
    for (name, nat, plain, _) in &sites {
        let mut s = SiteSpec::new(name, nat).unwrap();
        s.plain_router = *plain;
        spec.sites.push(s);
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let s1 = lab.info.observers["std"][0];
    let servers = vec![stund(&lab, "std")];
    std::thread::sleep(Duration::from_millis(500));
    let detect = env!("CARGO_BIN_EXE_macula-detect");
    let started = Instant::now();
    let children: Vec<_> = sites
        .iter()
        .map(|(name, _, _, _)| {
            lab.spawn(name, &[detect, "--observer", &format!("{s1}:{PORT}"), "--timeout-ms", "5000", "--repeat", "2"]).unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    let mut table = String::from("| site | nat | plain router | configured | first detection | again, same socket |\n|---|---|---|---|---|---|\n");
    for ((name, nat, plain, expected), child) in sites.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let runs: Vec<HashMap<String, String>> = stdout
            .lines()
            .map(|l| l.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
            .collect();
        let get = |r: &HashMap<String, String>, k: &str| r.get(k).cloned().unwrap_or_else(|| "?".into());
        let triple = |r: &HashMap<String, String>| format!("{} {} {}", get(r, "mapping"), get(r, "filtering"), get(r, "allocation"));
        let cell = |r: Option<&HashMap<String, String>>| r.map_or("-".into(), |r| format!("{} ({})", triple(r), get(r, "confidence")));
        table.push_str(&format!("| {name} | {nat} | {plain} | {expected} | {} | {} |\n", cell(runs.first()), cell(runs.get(1))));
        if runs.len() != 2 {
            failures.push(format!("{name}: {} verdicts: `{stdout}` stderr `{}`", runs.len(), String::from_utf8_lossy(&out.stderr).trim()));
            continue;
        }
        let public_ip = lab.site(name).unwrap().public_ip.to_string();
        for (i, r) in runs.iter().enumerate() {
            if triple(r) != *expected || !get(r, "public").starts_with(&format!("{public_ip}:")) {
                failures.push(format!("{name} ({nat}, plain {plain}) run {i}: got {} public {}, configured {expected}", triple(r), get(r, "public")));
            }
            if expected.contains("pc") && get(r, "delta") != "2" {
                failures.push(format!("{name} run {i}: delta {}", get(r, "delta")));
            }
        }
        if get(&runs[0], "confidence") == "low" {
            failures.push(format!("{name}: first detection has low confidence against stund"));
        }
    }
    eprintln!("macula-detect against stund, {} sites in {:?}\n{table}", sites.len(), started.elapsed());
    if let Ok(path) = std::env::var("MACULA_CLASSIC_REPORT") {
        let _ = std::fs::write(format!("{path}.stund.md"), &table);
    }
    stop(servers);
    drop(lab);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A plain node (one socket, QUIC running on it) answers a classic request
/// in kind: the whole 128-bit transaction id back, MAPPED-ADDRESS and
/// SOURCE-ADDRESS, no cookie; Debian's `stun` client gets test I through.
#[test]
fn a_node_answers_classic_stun() {
    let node = macula_nat_core::Node::open(
        macula_nat_core::NodeConfig { bind: "127.0.0.1:0".parse().unwrap() },
        macula_nat_core::Identity::generate(),
    )
    .unwrap();
    let _quic = node.quic().unwrap();
    let addr = node.local_addr().unwrap();
    let id = [0x5a, 0xa5, 0x0f, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    let req = Message::classic(Class::Request, METHOD_BINDING, id)
        .with(Attribute::ChangeRequest { change_ip: false, change_port: false })
        .encode();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&req, addr).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).expect("an answer to a classic request");
    assert_eq!(from, addr);
    let m = Message::decode_any(&buf[..n]).unwrap();
    assert_eq!(m.class, Class::SuccessResponse);
    assert_eq!(m.classic_transaction_id(), Some(id));
    assert_eq!(
        m.attributes,
        vec![Attribute::MappedAddress(sock.local_addr().unwrap()), Attribute::SourceAddress(addr)]
    );
    if macula_nat_lab::which("stun").is_some() {
        let out = Command::new("stun").args([&addr.to_string(), "-v"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("test I = 1"), "`stun` against a node: {text}");
    }
}
