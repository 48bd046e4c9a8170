//! Connecting across real NATs: a public host runs the rendezvous
//! (`macula-connect rendezvous`), each pair of lab hosts runs a listener
//! (B) and a connecting node (A). Asserts the strategy, the method, that a
//! message goes A -> B -> A (the listener echoes), and that the
//! relay-only pair fails fast. Profiles are given (`--nat`), not detected:
//! this test is about connecting, `lab_detection` covers detection.

mod common;
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

const RDV_PORT: u16 = 4433;

fn ready() -> bool {
    common::ready(env!("CARGO_BIN_EXE_macula-connect"))
}

use common::field;

/// Lines of a child's stdout, readable with a timeout.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// A `stream`'s result line, skipping the event lines it prints while it
/// runs (path quality, method changes, gaps).
fn stream_result(said: &mpsc::Receiver<String>, within: Duration) -> Option<String> {
    let until = std::time::Instant::now() + within;
    loop {
        let l = said.recv_timeout(until.checked_duration_since(std::time::Instant::now())?).ok()?;
        if field(&l, "event").is_none() {
            return Some(l);
        }
    }
}

/// Starts the rendezvous on the lab's public host `rdv`: the process, its
/// address and its node id.
fn rendezvous(lab: &Lab) -> (Child, String, String) {
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let rdv_ip = lab.host_addr("rdv").unwrap();
    let mut rdv = lab.spawn("rdv", &[bin, "rendezvous", "--bind", &format!("{rdv_ip}:{RDV_PORT}")]).expect("rendezvous");
    let line = lines(&mut rdv).recv_timeout(Duration::from_secs(5)).expect("rendezvous ready");
    let rdv_id = field(&line, "node_id").expect("rendezvous id");
    (rdv, format!("{rdv_ip}:{RDV_PORT}"), rdv_id)
}

struct Pair {
    name: &'static str,
    /// (host, lab nat spec or None for a public host, --nat for the node)
    a: (&'static str, Option<&'static str>, &'static str),
    b: (&'static str, Option<&'static str>, &'static str),
    /// Expected: Ok((strategy, method)) or Err(error kind).
    expect: Result<(&'static str, &'static str), &'static str>,
}

fn pairs() -> Vec<Pair> {
    vec![
        Pair {
            name: "kernel full_cone -> port_restricted",
            a: ("kfc", Some("kernel:full_cone"), "ei-ei-pp"),
            b: ("kprc1", Some("kernel:port_restricted_cone"), "ei-pd-pp"),
            expect: Ok(("direct", "direct")),
        },
        Pair {
            name: "kernel port_restricted -> full_cone",
            a: ("kprc2", Some("kernel:port_restricted_cone"), "ei-pd-pp"),
            b: ("kfc2", Some("kernel:full_cone"), "ei-ei-pp"),
            expect: Ok(("direct", "direct")),
        },
        Pair {
            name: "kernel port_restricted -> port_restricted",
            a: ("kprc3", Some("kernel:port_restricted_cone"), "ei-pd-pp"),
            b: ("kprc4", Some("kernel:port_restricted_cone"), "ei-pd-pp"),
            expect: Ok(("simple_punch", "punched")),
        },
        Pair {
            name: "kernel symmetric -> public host",
            a: ("ksym1", Some("kernel:symmetric"), "pd-pd-rd"),
            b: ("pub1", None, "none"),
            expect: Ok(("direct", "direct")),
        },
        Pair {
            name: "public host -> kernel symmetric",
            a: ("pub2", None, "none"),
            b: ("ksym2", Some("kernel:symmetric"), "pd-pd-rd"),
            expect: Ok(("direct", "direct")),
        },
        Pair {
            name: "kernel symmetric -> symmetric",
            a: ("ksym3", Some("kernel:symmetric"), "pd-pd-rd"),
            b: ("ksym4", Some("kernel:symmetric"), "pd-pd-rd"),
            expect: Err("symmetric_nat"),
        },
        Pair {
            name: "user ei-pd-pc:2 -> ei-pd-pp",
            a: ("uc1", Some("user:ei-pd-pc:delta=2"), "ei-pd-pc:delta=2"),
            b: ("up1", Some("user:ei-pd-pp"), "ei-pd-pp"),
            expect: Ok(("simple_punch", "punched")),
        },
        Pair {
            name: "user pd-pd-pc:2 -> ei-pd-pp",
            a: ("uc2", Some("user:pd-pd-pc:delta=2"), "pd-pd-pc:delta=2"),
            b: ("up2", Some("user:ei-pd-pp"), "ei-pd-pp"),
            expect: Ok(("predict_contiguity", "punched")),
        },
        // Unequal paths to the rendezvous (one-way delay 40 ms each way on
        // A's site, 5 ms on B's): the go's RTT-based waits line the two
        // starts up.
        Pair {
            name: "user ei-pd-pp (40ms) -> ei-pd-pp (5ms)",
            a: ("ud1", Some("user:ei-pd-pp"), "ei-pd-pp"),
            b: ("ud2", Some("user:ei-pd-pp"), "ei-pd-pp"),
            expect: Ok(("simple_punch", "punched")),
        },
        Pair {
            name: "user pd-pd-rd -> ei-hd-pp",
            a: ("ur1", Some("user:pd-pd-rd"), "pd-pd-rd"),
            b: ("uh1", Some("user:ei-hd-pp"), "ei-hd-pp"),
            expect: Ok(("connection_reversal", "direct")),
        },
        Pair {
            name: "user ei-hd-pp -> pd-pd-rd",
            a: ("uh2", Some("user:ei-hd-pp"), "ei-hd-pp"),
            b: ("ur2", Some("user:pd-pd-rd"), "pd-pd-rd"),
            expect: Ok(("connection_reversal", "direct")),
        },
        // Birthday probing: a random-allocation side ("hard") against an
        // endpoint-independent mapping that filters by address and port.
        Pair {
            name: "kernel port_restricted -> symmetric",
            a: ("kprc5", Some("kernel:port_restricted_cone"), "ei-pd-pp"),
            b: ("ksym5", Some("kernel:symmetric"), "pd-pd-rd"),
            expect: Ok(("birthday_probing", "punched")),
        },
        Pair {
            name: "kernel symmetric -> port_restricted",
            a: ("ksym6", Some("kernel:symmetric"), "pd-pd-rd"),
            b: ("kprc6", Some("kernel:port_restricted_cone"), "ei-pd-pp"),
            expect: Ok(("birthday_probing", "punched")),
        },
        Pair {
            name: "user ei-pd-pp -> pd-pd-rd",
            a: ("ub1", Some("user:ei-pd-pp"), "ei-pd-pp"),
            b: ("ub2", Some("user:pd-pd-rd"), "pd-pd-rd"),
            expect: Ok(("birthday_probing", "punched")),
        },
        Pair {
            name: "user pd-pd-rd -> ei-pd-pc:2",
            a: ("ub3", Some("user:pd-pd-rd"), "pd-pd-rd"),
            b: ("ub4", Some("user:ei-pd-pc:delta=2"), "ei-pd-pc:delta=2"),
            expect: Ok(("birthday_probing", "punched")),
        },
        Pair {
            name: "user hd-hd-rd -> ei-pd-rd",
            a: ("ub5", Some("user:hd-hd-rd"), "hd-hd-rd"),
            b: ("ub6", Some("user:ei-pd-rd"), "ei-pd-rd"),
            expect: Ok(("birthday_probing", "punched")),
        },
        // Two random sides, B filtering endpoint-independently: A dials B's
        // rendezvous mapping and follows B's answer from a new port.
        Pair {
            name: "user pd-hd-rd -> hd-ei-rd",
            a: ("urr1", Some("user:pd-hd-rd"), "pd-hd-rd"),
            b: ("urr2", Some("user:hd-ei-rd"), "hd-ei-rd"),
            expect: Ok(("connection_reversal", "direct")),
        },
        // 25 ms one-way delay on each site (50 ms between the peers).
        Pair {
            name: "user ei-pd-pp (25ms) -> pd-ei-rd (25ms)",
            a: ("ub7", Some("user:ei-pd-pp"), "ei-pd-pp"),
            b: ("ub8", Some("user:pd-ei-rd"), "pd-ei-rd"),
            expect: Ok(("birthday_probing", "punched")),
        },
        // Port preservation: A aims at B's preserved port.
        Pair {
            name: "user ei-hd-pp -> hd-ei-pp",
            a: ("upp1", Some("user:ei-hd-pp"), "ei-hd-pp"),
            b: ("upp2", Some("user:hd-ei-pp"), "hd-ei-pp"),
            expect: Ok(("predict_preservation", "punched")),
        },
    ]
}

#[test]
fn lab_connect_matrix() {
    if !ready() {
        return;
    }
    let pairs = pairs();
    let mut spec = LabSpec::new("conn");
    spec.public.push("rdv".into());
    spec.seed = Some(11);
    for p in &pairs {
        for (host, nat, _) in [p.a, p.b] {
            match nat {
                Some(nat) => {
                    let mut site = SiteSpec::new(host, nat).unwrap();
                    site.delay_ms = match host {
                        "ud1" => 40.0,
                        "ud2" => 5.0,
                        "ub7" | "ub8" => 25.0,
                        _ => 0.0,
                    };
                    spec.sites.push(site);
                }
                None => spec.public.push(host.into()),
            }
        }
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let (mut rdv, rdv_addr, rdv_id) = rendezvous(&lab);

    let mut failures = Vec::new();
    let mut table = String::from("| pair | strategy | method | connect ms | A observed | A's remote |\n|---|---|---|---|---|---|\n");
    let mut listeners = Vec::new();
    for p in &pairs {
        let mut listener = lab
            .spawn(p.b.0, &[bin, "listen", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", p.b.2])
            .expect("listener");
        let joined = lines(&mut listener).recv_timeout(Duration::from_secs(8));
        listeners.push(listener);
        let Some(b_id) = joined.ok().and_then(|l| field(&l, "node_id")) else {
            failures.push(format!("{}: listener did not join", p.name));
            continue;
        };
        let argv = [bin, "connect", &b_id, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", p.a.2, "--timeout-ms", "8000"];
        // Birthday probing hits with p = 0.99 by design (the schedule's
        // target; 808 of 810 tries in bench/lab_matrix.md), and this lab has
        // no relay to catch a miss, so a miss gets one more try: a broken
        // birthday punch still fails both, a chance miss (1 in ~100) no
        // longer fails the suite.
        let tries = if matches!(p.expect, Ok(("birthday_probing", _))) { 2 } else { 1 };
        let mut out = lab.exec_timeout(p.a.0, &argv, Duration::from_secs(15)).expect("connect");
        for _ in 1..tries {
            if field(String::from_utf8_lossy(&out.stdout).trim(), "ok").as_deref() == Some("true") {
                break;
            }
            eprintln!("{}: birthday miss, one more try: {}", p.name, String::from_utf8_lossy(&out.stdout).trim());
            out = lab.exec_timeout(p.a.0, &argv, Duration::from_secs(15)).expect("connect");
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let got_ok = field(&line, "ok").as_deref() == Some("true");
        let ms: f64 = field(&line, "connect_ms").and_then(|v| v.parse().ok()).unwrap_or(-1.0);
        let strategy = field(&line, "strategy").unwrap_or_else(|| "-".into());
        let method = field(&line, "method").or_else(|| field(&line, "error")).unwrap_or_else(|| "?".into());
        let observed = field(&line, "observed").unwrap_or_default();
        let remote = field(&line, "remote").unwrap_or_default();
        table.push_str(&format!("| {} | {strategy} | {method} | {ms:.0} | {observed} | {remote} |\n", p.name));
        // The rendezvous saw A at its NAT's public IP: traffic really
        // crossed the NAT.
        let want_ip = match p.a.1 {
            Some(_) => lab.site(p.a.0).unwrap().public_ip,
            None => lab.host_addr(p.a.0).unwrap(),
        };
        let observed_ok = field(&line, "observed").is_some_and(|o| o.starts_with(&format!("{want_ip}:")));
        let good = observed_ok && match p.expect {
            Ok((s, m)) => got_ok && strategy == s && method == m,
            // Relay-only pairs must fail at once (no punching, no timeout).
            Err(kind) => !got_ok && field(&line, "error").as_deref() == Some(kind) && (0.0..2000.0).contains(&ms),
        };
        if !good {
            failures.push(format!(
                "{}: expected {:?}, got `{line}` stderr `{}`",
                p.name,
                p.expect,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    eprintln!("{table}");
    for mut l in listeners {
        let _ = l.kill();
    }
    let _ = rdv.kill();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A long-lived node behind a port-contiguous NAT with PD mapping makes a
/// new mapping for every peer endpoint it punches to, so its NAT's counter
/// runs ahead of the mapping the rendezvous saw at join. Every connect must
/// still be predicted: the node measures its NAT's latest allocation for
/// each session (`alloc_probe`). Aiming past the join-time mapping instead
/// exhausts the window within a few connects (this lab has no relay: such
/// a connect fails).
#[test]
fn a_long_lived_contiguous_node_stays_predictable() {
    if !ready() {
        return;
    }
    let mut spec = LabSpec::new("conpc");
    spec.public.push("rdv".into());
    spec.seed = Some(12);
    spec.sites.push(SiteSpec::new("pcl", "user:pd-pd-pc").unwrap());
    spec.sites.push(SiteSpec::new("prc", "user:ei-pd-pp").unwrap());
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let (mut rdv, rdv_addr, rdv_id) = rendezvous(&lab);
    let mut listener = lab
        .spawn("pcl", &[bin, "listen", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "pd-pd-pc:delta=1"])
        .expect("listener");
    // Kept: the listener prints a line per connection it accepts.
    let said = lines(&mut listener);
    let joined = said.recv_timeout(Duration::from_secs(8)).expect("listener joined");
    let b_id = field(&joined, "node_id").expect("listener id");
    let argv = [bin, "connect", &b_id, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-pd-pp", "--timeout-ms", "8000"];
    let mut failures = Vec::new();
    const CONNECTS: usize = 12;
    for i in 0..CONNECTS {
        // A new node each time: a new peer endpoint for the listener's NAT.
        let out = lab.exec_timeout("prc", &argv, Duration::from_secs(15)).expect("connect");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let good = field(&line, "ok").as_deref() == Some("true")
            && field(&line, "strategy").as_deref() == Some("predict_contiguity")
            && field(&line, "method").as_deref() == Some("punched");
        if !good {
            failures.push(format!("connect {i}: `{line}`"));
        }
        eprintln!("connect {i}: {} {} ms", field(&line, "method").unwrap_or_default(), field(&line, "connect_ms").unwrap_or_default());
    }
    let _ = listener.kill();
    let _ = rdv.kill();
    if !failures.is_empty() {
        let mut err = String::new();
        if let Some(mut e) = listener.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        failures.push(format!("listener stderr: {err}"));
    }
    assert!(failures.is_empty(), "{} of {CONNECTS} connects failed:\n{}", failures.len() - 1, failures.join("\n"));
}

/// Nodes idle for 3 minutes behind NATs that forget a UDP binding after
/// 30 s of silence (a userspace port-restricted cone and a kernel one that
/// is a plain router) are still reachable by a new connect: their control
/// connections' keep-alives (every 5 s) hold their mappings at the
/// rendezvous open, and a connect punches a fresh path.
#[test]
fn idle_nodes_behind_30s_nats_stay_reachable() {
    if !ready() {
        return;
    }
    const IDLE: Duration = Duration::from_secs(180);
    let mut spec = LabSpec::new("conidle");
    spec.public.push("rdv".into());
    spec.seed = Some(13);
    for (name, nat, plain) in [("uidle", "user:ei-pd-pp", false), ("kidle", "kernel:port_restricted_cone", true)] {
        let mut s = SiteSpec::new(name, nat).unwrap();
        s.binding_timeout_s = Some(30);
        s.plain_router = plain;
        spec.sites.push(s);
    }
    spec.sites.push(SiteSpec::new("dialer", "user:ei-pd-pp").unwrap());
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let (mut rdv, rdv_addr, rdv_id) = rendezvous(&lab);
    let mut listeners = Vec::new();
    for site in ["uidle", "kidle"] {
        let mut l = lab
            .spawn(site, &[bin, "listen", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-pd-pp"])
            .expect("listener");
        let said = lines(&mut l);
        let joined = said.recv_timeout(Duration::from_secs(8)).expect("listener joined");
        listeners.push((site, l, said, field(&joined, "node_id").expect("listener id")));
    }
    std::thread::sleep(IDLE);
    let mut failures = Vec::new();
    for (site, _, said, id) in &listeners {
        let argv = [bin, "connect", id, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-pd-pp", "--timeout-ms", "8000"];
        let out = lab.exec_timeout("dialer", &argv, Duration::from_secs(15)).expect("connect");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("{site} after {IDLE:?} idle: {line}");
        if field(&line, "ok").as_deref() != Some("true") || field(&line, "method").as_deref() != Some("punched") {
            failures.push(format!("{site}: `{line}`"));
        }
        if said.recv_timeout(Duration::from_secs(5)).is_err() {
            failures.push(format!("{site}: the listener saw no connection"));
        }
    }
    // The NAT did forget idle bindings meanwhile (the userspace one counts).
    let st = lab.router_stats("uidle").expect("stats");
    eprintln!("uidle router counters: {:?}", st.counters);
    for (_, mut l, _, _) in listeners {
        let _ = l.kill();
    }
    let _ = rdv.kill();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `tries` connects from a long-lived `macula-connect agent` on `from`
/// (a fresh node, so fresh NAT mappings, for each try) to a listener on
/// `to`: how many were `punched` with strategy `simple_punch`, and a few
/// of the others' lines.
#[allow(clippy::too_many_arguments)]
fn punch_tries(lab: &Lab, rdv: &(String, String), from: &str, nat_from: &str, to: &str, nat_to: &str, tries: usize, extra: &[&str]) -> (usize, Vec<String>) {
    let t = strategy_tries(lab, rdv, (from, nat_from), (to, nat_to), tries, extra, "simple_punch", 4000);
    (t.punched, t.other)
}

/// What [`strategy_tries`] saw.
#[derive(Debug, Default)]
struct Tally {
    tries: usize,
    /// Punched with the expected strategy.
    punched: usize,
    relayed: usize,
    failed: usize,
    /// Median connect time of the punched ones (ms; NaN if none).
    median_ms: f64,
    /// A few lines of the others.
    other: Vec<String>,
}

/// Like [`punch_tries`], for any punching `strategy`, with a connect
/// timeout of `timeout_ms`. With `MACULA_TRACE` set (e.g. `debug`) the
/// agent's and the listener's traces go to `/tmp/trace-{agent,listener}-HOST.log`.
#[allow(clippy::too_many_arguments)]
fn strategy_tries(lab: &Lab, rdv: &(String, String), (from, nat_from): (&str, &str), (to, nat_to): (&str, &str), tries: usize, extra: &[&str], strategy: &str, timeout_ms: u64) -> Tally {
    use std::io::Write;
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let (rdv_addr, rdv_id) = rdv;
    let mut largv = vec![bin, "listen", "--rendezvous", rdv_addr, "--rendezvous-id", rdv_id, "--nat", nat_to];
    largv.extend_from_slice(extra);
    let mut listener = lab.spawn(to, &largv).expect("listener");
    if std::env::var_os("MACULA_TRACE").is_some() {
        let mut se = listener.stderr.take().unwrap();
        let mut f = std::fs::File::create(format!("/tmp/trace-listener-{to}.log")).unwrap();
        std::thread::spawn(move || { let _ = std::io::copy(&mut se, &mut f); });
    }
    // Kept to the end: the listener prints a line per connection it accepts.
    let heard = lines(&mut listener);
    let joined = heard.recv_timeout(Duration::from_secs(10)).expect("listener joined");
    let target = field(&joined, "node_id").expect("listener id");
    let timeout = timeout_ms.to_string();
    let mut aargv: Vec<String> = [bin, "agent", "--rendezvous", rdv_addr, "--rendezvous-id", rdv_id, "--nat", nat_from, "--timeout-ms", &timeout]
        .iter()
        .map(|s| s.to_string())
        .collect();
    aargv.extend(extra.iter().map(|s| s.to_string()));
    let (mut cmd, ns) = lab.command(from, &aargv).expect("agent command");
    if std::env::var_os("MACULA_TRACE").is_some() {
        cmd.stderr(std::fs::File::create(format!("/tmp/trace-agent-{from}.log")).unwrap());
    }
    let mut agent = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("agent");
    drop(ns);
    let said = lines(&mut agent);
    let mut stdin = agent.stdin.take().expect("stdin");
    let wait = Duration::from_millis(timeout_ms) + Duration::from_secs(16);
    let next = |kinds: &[&str]| loop {
        let l = said.recv_timeout(wait).expect("agent answers");
        if kinds.iter().any(|k| field(&l, "event").as_deref() == Some(*k)) {
            return l;
        }
    };
    let mut t = Tally { tries, ..Tally::default() };
    let mut ms = Vec::new();
    for i in 0..tries {
        writeln!(stdin, "fresh").unwrap();
        next(&["joined", "join_failed"]);
        writeln!(stdin, "connect {target} t{i}").unwrap();
        let l = next(&["connected", "failed"]);
        let method = field(&l, "method");
        if method.as_deref() == Some("punched") && field(&l, "strategy").as_deref() == Some(strategy) {
            t.punched += 1;
            ms.push(field(&l, "connect_ms").and_then(|m| m.parse::<f64>().ok()).unwrap_or(f64::NAN));
            continue;
        }
        match method.as_deref() {
            Some("relayed") => t.relayed += 1,
            _ => t.failed += 1,
        }
        if t.other.len() < 3 {
            t.other.push(l);
        }
    }
    let _ = writeln!(stdin, "quit");
    let _ = agent.wait();
    let _ = listener.kill();
    let _ = listener.wait();
    drop(heard);
    ms.sort_by(f64::total_cmp);
    t.median_ms = ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN);
    eprintln!("{from} -> {to} {extra:?}: {}/{tries} punched ({strategy}), median connect {:.1} ms", t.punched, t.median_ms);
    t
}

/// Simple punching behind plain routers (masquerade only: a punch that
/// arrives before its host has sent anything confirms a conntrack entry
/// that moves the host's own port) between two port-restricted cones and
/// between a port-restricted cone and a random-port EIM NAT, at 0 and
/// 25 ms one way, on an internet with a router between the sites: with
/// TTL-limited primers (hop count learnt) at least 99 of 100 tries
/// punch. Without primers most fail at 0 ms (the lab models the race).
#[test]
fn plain_routers_punch_with_ttl_primers() {
    if !ready() {
        return;
    }
    let mut spec = LabSpec::new("conprime");
    spec.public.push("rdv".into());
    spec.seed = Some(14);
    spec.routed_internet = true;
    for (name, nat, delay) in [
        ("pa", "kernel:port_restricted_cone", 0.0),
        ("pb", "kernel:port_restricted_cone", 0.0),
        ("pu", "user:ei-pd-rd", 0.0),
        ("pc", "kernel:port_restricted_cone", 0.0),
        ("pd", "kernel:port_restricted_cone", 0.0),
        ("da", "kernel:port_restricted_cone", 25.0),
        ("db", "kernel:port_restricted_cone", 25.0),
        ("du", "user:ei-pd-rd", 25.0),
        ("dc", "kernel:port_restricted_cone", 25.0),
    ] {
        let mut s = SiteSpec::new(name, nat).unwrap();
        s.plain_router = true;
        s.delay_ms = delay;
        spec.sites.push(s);
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let (mut rdv_proc, rdv_addr, rdv_id) = rendezvous(&lab);
    let rdv = (rdv_addr, rdv_id);
    const TRIES: usize = 100;
    // (label, from, its nat, to, its nat, tries, extra args)
    let runs: Vec<(&str, &str, &str, &str, &str, usize, &[&str])> = vec![
        ("port-restricted -> port-restricted, 0 ms", "pa", "ei-pd-pp", "pb", "ei-pd-pp", TRIES, &[]),
        ("port-restricted -> random-port EIM, 0 ms", "pc", "ei-pd-pp", "pu", "ei-pd-rd", TRIES, &[]),
        ("port-restricted -> port-restricted, 25 ms", "da", "ei-pd-pp", "db", "ei-pd-pp", TRIES, &[]),
        ("port-restricted -> random-port EIM, 25 ms", "dc", "ei-pd-pp", "du", "ei-pd-rd", TRIES, &[]),
    ];
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = runs
            .iter()
            .map(|r| {
                let (lab, rdv) = (&lab, &rdv);
                s.spawn(move || punch_tries(lab, rdv, r.1, r.2, r.3, r.4, r.5, r.6))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The control, alone (its failures wait out the 2 s dial bound).
    let (control, _) = punch_tries(&lab, &rdv, "pd", "ei-pd-pp", "pb", "ei-pd-pp", 20, &["--no-primer"]);
    let _ = rdv_proc.kill();
    let mut failures = Vec::new();
    for (r, (ok, other)) in runs.iter().zip(&results) {
        eprintln!("{}: {ok}/{} punched", r.0, r.5);
        if *ok < r.5 - 1 {
            failures.push(format!("{}: {ok}/{} punched; e.g. {other:?}", r.0, r.5));
        }
    }
    eprintln!("control, no primers, port-restricted -> port-restricted, 0 ms: {control}/20 punched");
    if control > 16 {
        failures.push(format!("without primers {control}/20 punched: the lab no longer models the plain router's race"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Birthday probing behind plain routers (masquerade only, so every packet
/// that reaches a NAT before its own host sent on that tuple moves the
/// host's port; see `connector`'s comment on birthday primers): a
/// random-port, port-dependent-mapping side ("hard", kernel symmetric)
/// with a random-port EIM NAT (userspace ei-pd-rd) and with a
/// port-restricted cone (kernel), each side initiating, at 0 and 25 ms one
/// way, on an internet with a router between the sites. With primers (the
/// hard side from all its sockets towards the easy endpoint, the easy side
/// to every port it will probe) the matrix rate (250/250 connected, 249
/// punched) holds. The schedule is planned for a 99% hit, so a miss in
/// 100 is no fault: at least 16 of 20 tries punch in each run and 154 of
/// the 160 in all (the matrix rate on plain routers, 96 %). Seen: 158,
/// 159, 160 and 157 of 160 (17/20 in one row, during a full-suite run); a traced miss heard nothing on either side (no port
/// collided), and its primers had all left before the hard side started.
/// Without primers (a few tries, for the record) they fail.
#[test]
fn plain_routers_birthday_probing_with_primers() {
    if !ready() {
        return;
    }
    let mut spec = LabSpec::new("conbday");
    spec.public.push("rdv".into());
    spec.seed = Some(16);
    spec.routed_internet = true;
    // (site, lab nat, one-way delay): one pair of sites per run.
    let sites = [
        ("bs1", "kernel:symmetric", 0.0),
        ("bu1", "user:ei-pd-rd", 0.0),
        ("bs2", "kernel:symmetric", 0.0),
        ("bu2", "user:ei-pd-rd", 0.0),
        ("bs3", "kernel:symmetric", 0.0),
        ("bk3", "kernel:port_restricted_cone", 0.0),
        ("bs4", "kernel:symmetric", 0.0),
        ("bk4", "kernel:port_restricted_cone", 0.0),
        ("ds1", "kernel:symmetric", 25.0),
        ("du1", "user:ei-pd-rd", 25.0),
        ("ds2", "kernel:symmetric", 25.0),
        ("du2", "user:ei-pd-rd", 25.0),
        ("ds3", "kernel:symmetric", 25.0),
        ("dk3", "kernel:port_restricted_cone", 25.0),
        ("ds4", "kernel:symmetric", 25.0),
        ("dk4", "kernel:port_restricted_cone", 25.0),
    ];
    for (name, nat, delay) in sites {
        let mut s = SiteSpec::new(name, nat).unwrap();
        s.plain_router = true;
        s.delay_ms = delay;
        spec.sites.push(s);
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let (mut rdv_proc, rdv_addr, rdv_id) = rendezvous(&lab);
    let rdv = (rdv_addr, rdv_id);
    const TRIES: usize = 20;
    const TIMEOUT_MS: u64 = 10_000;
    let (sym, ru, prc) = ("pd-pd-rd", "ei-pd-rd", "ei-pd-pp");
    // (label, (from, its --nat), (to, its --nat))
    type Run<'a> = (&'a str, (&'a str, &'a str), (&'a str, &'a str));
    let runs: Vec<Run> = vec![
        ("symmetric -> random-port EIM, 0 ms", ("bs1", sym), ("bu1", ru)),
        ("random-port EIM -> symmetric, 0 ms", ("bu2", ru), ("bs2", sym)),
        ("symmetric -> port-restricted, 0 ms", ("bs3", sym), ("bk3", prc)),
        ("port-restricted -> symmetric, 0 ms", ("bk4", prc), ("bs4", sym)),
        ("symmetric -> random-port EIM, 25 ms", ("ds1", sym), ("du1", ru)),
        ("random-port EIM -> symmetric, 25 ms", ("du2", ru), ("ds2", sym)),
        ("symmetric -> port-restricted, 25 ms", ("ds3", sym), ("dk3", prc)),
        ("port-restricted -> symmetric, 25 ms", ("dk4", prc), ("ds4", sym)),
    ];
    let go = |r: &Run, tries: usize, extra: &[&str]| strategy_tries(&lab, &rdv, r.1, r.2, tries, extra, "birthday_probing", TIMEOUT_MS);
    let results: Vec<Tally> = std::thread::scope(|s| {
        let hs: Vec<_> = runs.iter().map(|r| s.spawn(move || go(r, TRIES, &[]))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The control: a few tries without primers, hard and easy initiating
    // (failures wait out the schedule).
    const CONTROL: usize = 3;
    let controls: Vec<Tally> = std::thread::scope(|s| {
        let hs: Vec<_> = [&runs[0], &runs[3]].into_iter().map(|r| s.spawn(move || go(r, CONTROL, &["--no-primer"]))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let _ = rdv_proc.kill();
    let mut failures = Vec::new();
    for (r, t) in runs.iter().zip(&results) {
        eprintln!(
            "{}: {}/{} punched, {} relayed, {} failed, median connect {:.1} ms",
            r.0, t.punched, t.tries, t.relayed, t.failed, t.median_ms
        );
        // Birthday probing is a chance by design (its schedule aims at 99 %
        // per try): a row is a sample of 20. Seen: 20/20 in three runs of
        // every row, and 17/20 once for the easy side initiating at 25 ms
        // with the suite's lab tests beside it. The bound is the matrix
        // rate over all rows (the BEAM matrix on plain routers: 241/250,
        // 96 %); a row only has to stay clear of a broken direction.
        if t.punched + 4 < t.tries {
            failures.push(format!("{}: {}/{} punched; e.g. {:?}", r.0, t.punched, t.tries, t.other));
        }
    }
    let (punched, tries) = results.iter().fold((0, 0), |(p, n), t| (p + t.punched, n + t.tries));
    eprintln!("all runs: {punched}/{tries} punched");
    if punched + 6 < tries {
        failures.push(format!("{punched}/{tries} punched in all"));
    }
    for (r, t) in [&runs[0], &runs[3]].into_iter().zip(&controls) {
        eprintln!("control, no primers, {}: {}/{} punched, median connect {:.1} ms", r.0, t.punched, t.tries, t.median_ms);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Drops, in `site`'s router, all traffic to and from `peer_ip` before
/// conntrack sees it (no entry is left behind); nothing else.
fn block(lab: &Lab, site: &str, peer_ip: &str) {
    let router = lab.site(site).unwrap().router.clone().unwrap();
    let cmds: [&[&str]; 4] = [
        &["nft", "add", "table", "ip", "lcblock"],
        &["nft", "add chain ip lcblock pre { type filter hook prerouting priority -300 ; policy accept ; }"],
        &["nft", "add", "rule", "ip", "lcblock", "pre", "ip", "daddr", peer_ip, "drop"],
        &["nft", "add", "rule", "ip", "lcblock", "pre", "ip", "saddr", peer_ip, "drop"],
    ];
    for c in cmds {
        let out = lab.exec(&router, c).unwrap();
        assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn unblock(lab: &Lab, site: &str) {
    let router = lab.site(site).unwrap().router.clone().unwrap();
    let out = lab.exec(&router, &["nft", "delete", "table", "ip", "lcblock"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `tries` relayed connections from `from` to a listener on `to` (two
/// port-restricted cones behind plain routers) that become punchable: the
/// path between them is blocked at `from`'s router until the connection
/// is relayed, then opened; each streams 5,000 messages (5 s) meanwhile.
/// How many ended `punched` (the upgrade), and the others' lines.
fn upgrade_tries(lab: &Lab, rdv: &(String, String), from: &str, to: &str, tries: usize, extra: &[&str]) -> (usize, Vec<String>) {
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let (rdv_addr, rdv_id) = rdv;
    let mut largv = vec![bin, "listen", "--rendezvous", rdv_addr, "--rendezvous-id", rdv_id, "--nat", "ei-pd-pp", "--relay", rdv_addr, "--relay-id", rdv_id];
    largv.extend_from_slice(extra);
    let mut listener = lab.spawn(to, &largv).expect("listener");
    let heard = lines(&mut listener);
    let joined = heard.recv_timeout(Duration::from_secs(15)).expect("listener joined");
    let target = field(&joined, "node_id").expect("listener id");
    let to_ip = lab.site(to).unwrap().public_ip.to_string();
    let (mut ok, mut other) = (0, Vec::new());
    for _ in 0..tries {
        block(lab, from, &to_ip);
        let mut argv = vec![bin, "stream", &target, "--rendezvous", rdv_addr, "--rendezvous-id", rdv_id, "--nat", "ei-pd-pp", "--allow-relay", "--count", "5000"];
        argv.extend_from_slice(extra);
        let mut stream = lab.spawn(from, &argv).expect("stream");
        let said = lines(&mut stream);
        let mut se = stream.stderr.take().expect("stderr");
        let errs = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut se, &mut s);
            s
        });
        let first = said.recv_timeout(Duration::from_secs(20));
        unblock(lab, from);
        let last = first.is_ok().then(|| stream_result(&said, Duration::from_secs(60))).flatten();
        let _ = stream.kill();
        let status = stream.wait();
        let errs = errs.join().unwrap_or_default();
        let (Ok(first), Some(last)) = (first.clone(), last) else {
            other.push(format!("stream ended early ({status:?}, first {first:?}): {}", errs.lines().rev().take(3).collect::<Vec<_>>().join(" | ")));
            continue;
        };
        let fine = field(&first, "method").as_deref() == Some("relayed")
            && field(&last, "method").as_deref() == Some("punched")
            && field(&last, "ok").as_deref() == Some("true");
        if fine {
            ok += 1;
        } else {
            other.push(format!("{first} / {last}"));
        }
    }
    let _ = listener.kill();
    let _ = listener.wait();
    eprintln!("{from} -> {to} {extra:?}: {ok}/{tries} relayed connections upgraded to punched");
    (ok, other)
}

/// The relayed -> punched upgrade behind plain routers: a punch session
/// like the first one, so it races alike and is primed alike (both
/// sides, the responder starting the primer lead after the go). Two
/// port-restricted cones, 0 ms: every try upgrades while its stream runs,
/// intact. Without primers, for the record.
#[test]
fn plain_routers_upgrade_with_primers() {
    if !ready() {
        return;
    }
    let mut spec = LabSpec::new("conupg");
    spec.public.push("rdv".into());
    spec.seed = Some(18);
    spec.routed_internet = true;
    for name in ["ua", "ub", "uc", "ud"] {
        let mut s = SiteSpec::new(name, "kernel:port_restricted_cone").unwrap();
        s.plain_router = true;
        spec.sites.push(s);
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let rdv_ip = lab.host_addr("rdv").unwrap();
    let mut rdv_proc = lab.spawn("rdv", &[bin, "rendezvous", "--bind", &format!("{rdv_ip}:{RDV_PORT}"), "--serve-relay"]).expect("rendezvous");
    let line = lines(&mut rdv_proc).recv_timeout(Duration::from_secs(5)).expect("rendezvous ready");
    let rdv = (format!("{rdv_ip}:{RDV_PORT}"), field(&line, "node_id").expect("rendezvous id"));
    const TRIES: usize = 6;
    const CONTROL: usize = 4;
    let ((ok, other), (control, control_other)) = std::thread::scope(|s| {
        let a = s.spawn(|| upgrade_tries(&lab, &rdv, "ua", "ub", TRIES, &[]));
        let b = s.spawn(|| upgrade_tries(&lab, &rdv, "uc", "ud", CONTROL, &["--no-primer"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let _ = rdv_proc.kill();
    eprintln!("with primers: {ok}/{TRIES} upgraded; control, no primers: {control}/{CONTROL} (e.g. {:?})", control_other.first());
    eprintln!("with primers, not upgraded: {other:?}");
    assert_eq!(ok, TRIES, "relayed connections not upgraded: {other:?}");
}

/// A live connection carries 10,000 sequenced messages (one a millisecond,
/// echoed back) while the dialler's NAT forgets all its mappings (a
/// rebinding: its next packets leave from a new random port): every echo
/// comes back once and in order, through QUIC's migration at the acceptor.
/// Acceptors: a public host, and a host behind a full cone (any new port
/// of the dialler gets through its filter).
#[test]
fn a_live_connection_survives_a_nat_rebinding() {
    if !ready() {
        return;
    }
    let mut spec = LabSpec::new("conrebind");
    spec.public.push("rdv".into());
    spec.public.push("pub".into());
    spec.seed = Some(15);
    for (name, nat) in [("d1", "user:ei-pd-rd"), ("d2", "user:ei-pd-rd"), ("fc", "user:ei-ei-pp")] {
        spec.sites.push(SiteSpec::new(name, nat).unwrap());
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let bin = env!("CARGO_BIN_EXE_macula-connect");
    let (mut rdv, rdv_addr, rdv_id) = rendezvous(&lab);
    let mut kept = Vec::new();
    let mut streams = Vec::new();
    for (listener_host, listener_nat, dialler) in [("pub", "none", "d1"), ("fc", "ei-ei-pp", "d2")] {
        let mut l = lab
            .spawn(listener_host, &[bin, "listen", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", listener_nat])
            .expect("listener");
        let heard = lines(&mut l);
        let joined = heard.recv_timeout(Duration::from_secs(10)).expect("listener joined");
        let id = field(&joined, "node_id").expect("listener id");
        let mut s = lab
            .spawn(dialler, &[bin, "stream", &id, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-pd-rd", "--count", "10000", "--interval-ms", "1"])
            .expect("stream");
        let said = lines(&mut s);
        let connected = said.recv_timeout(Duration::from_secs(15)).expect("stream connected");
        eprintln!("{dialler} -> {listener_host}: {connected}");
        kept.push((l, heard));
        streams.push((dialler, listener_host, s, said));
    }
    // Mid-stream (10 s each): both dialers' NATs forget their mappings.
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<u64> = ["d1", "d2"].iter().map(|d| lab.router_stats(d).unwrap().counters["bindings_created"]).collect();
    for d in ["d1", "d2"] {
        lab.rebind(d).expect("rebind");
    }
    let mut failures = Vec::new();
    for ((dialler, listener, mut s, said), created_before) in streams.into_iter().zip(before) {
        let out = stream_result(&said, Duration::from_secs(60)).unwrap_or_default();
        let _ = s.wait();
        // The stats file is rewritten every 100 ms.
        std::thread::sleep(Duration::from_millis(300));
        let st = lab.router_stats(dialler).unwrap();
        eprintln!("{dialler} -> {listener}: {out}; NAT: rebinds {}, bindings created {} -> {}", st.counters["rebinds"], created_before, st.counters["bindings_created"]);
        if field(&out, "ok").as_deref() != Some("true") || field(&out, "echoed").as_deref() != Some("10000") || field(&out, "out_of_order").as_deref() != Some("0") {
            failures.push(format!("{dialler} -> {listener}: `{out}`"));
        }
        if st.counters["rebinds"] != 1 || st.counters["bindings_created"] <= created_before {
            failures.push(format!("{dialler}: the NAT did not rebind ({:?})", st.counters));
        }
    }
    for (mut l, _) in kept {
        let _ = l.kill();
    }
    let _ = rdv.kill();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
