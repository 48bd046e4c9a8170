//! Birthday probing across real NATs in the lab, repeated: hit rate, time to
//! connect, and what it cost, measured outside the nodes by the NAT routers'
//! own counters (userspace engine): mappings the hard side's NAT created
//! (= sockets that sent) and packets the easy side sent (= probes plus a
//! handful of answers, nominations and QUIC packets).
//!
//! Each try is a fresh listener (B) and a fresh connecting process (A)
//! through a rendezvous on a public host, as in `tests/lab_connect.rs`. The
//! listener's open file descriptors are counted before the connect and a
//! second after A exited, so sockets left behind by a punch show up.
//!
//! Usage (root; build `macula-connect` and `macula-lab` first):
//! `bench_birthday [runs]` prints a markdown report on stdout
//! (`BENCH_CASE=substring` runs only the matching cases).

#[path = "../tests/common/mod.rs"]
mod common;
use macula_nat_lab::{can_run, Lab, LabSpec, RouterStats, SiteSpec, UpOptions};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Duration;

const RDV_PORT: u16 = 4433;

struct Case {
    name: &'static str,
    /// (site, lab nat, --nat), A connects to B.
    a: (&'static str, &'static str, &'static str),
    b: (&'static str, &'static str, &'static str),
    /// One-way delay added by each site's engine, in each direction.
    site_delay_ms: f64,
    /// Which side is hard (random allocation).
    hard_is_a: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case { name: "ei-pd-pp -> pd-pd-rd, 0 ms", a: ("e1", "user:ei-pd-pp", "ei-pd-pp"), b: ("h1", "user:pd-pd-rd", "pd-pd-rd"), site_delay_ms: 0.0, hard_is_a: false },
        Case { name: "pd-pd-rd -> ei-pd-pp, 0 ms", a: ("h2", "user:pd-pd-rd", "pd-pd-rd"), b: ("e2", "user:ei-pd-pp", "ei-pd-pp"), site_delay_ms: 0.0, hard_is_a: true },
        Case { name: "ei-pd-pp -> pd-pd-rd, 25 ms one-way", a: ("e3", "user:ei-pd-pp", "ei-pd-pp"), b: ("h3", "user:pd-pd-rd", "pd-pd-rd"), site_delay_ms: 12.5, hard_is_a: false },
        Case { name: "pd-pd-rd -> ei-pd-pp, 25 ms one-way", a: ("h4", "user:pd-pd-rd", "pd-pd-rd"), b: ("e4", "user:ei-pd-pp", "ei-pd-pp"), site_delay_ms: 12.5, hard_is_a: true },
        Case { name: "hd-ei-rd -> ei-pd-rd, 25 ms one-way", a: ("h5", "user:hd-ei-rd", "hd-ei-rd"), b: ("e5", "user:ei-pd-rd", "ei-pd-rd"), site_delay_ms: 12.5, hard_is_a: true },
        Case { name: "ei-pd-pp -> pd-pd-rd, 50 ms one-way", a: ("e6", "user:ei-pd-pp", "ei-pd-pp"), b: ("h6", "user:pd-pd-rd", "pd-pd-rd"), site_delay_ms: 25.0, hard_is_a: false },
        Case { name: "kernel port_restricted -> symmetric, 0 ms", a: ("ke1", "kernel:port_restricted_cone", "ei-pd-pp"), b: ("kh1", "kernel:symmetric", "pd-pd-rd"), site_delay_ms: 0.0, hard_is_a: false },
        Case { name: "kernel symmetric -> port_restricted, 0 ms", a: ("kh2", "kernel:symmetric", "pd-pd-rd"), b: ("ke2", "kernel:port_restricted_cone", "ei-pd-pp"), site_delay_ms: 0.0, hard_is_a: true },
    ]
}

use common::field;

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/release/examples/bench_birthday -> target/release/<name>
    exe.parent().and_then(|p| p.parent()).map(|p| p.join(name)).expect("target dir")
}

fn counter(s: &RouterStats, key: &str) -> u64 {
    s.counters.get(key).copied().unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    if let Err(why) = can_run() {
        eprintln!("bench_birthday needs root, ip, nft and /dev/net/tun: {why}");
        std::process::exit(2);
    }
    let connect_bin = bin("macula-connect");
    let lab_bin = bin("macula-lab");
    for b in [&connect_bin, &lab_bin] {
        assert!(b.exists(), "{} missing: cargo build --release -p macula_nat_core -p macula_nat_lab --bins", b.display());
    }
    std::env::set_var("MACULA_LAB_BIN", &lab_bin);
    macula_nat_lab::reap(false);
    // BENCH_CASE=substring runs only the matching cases.
    let only = std::env::var("BENCH_CASE").unwrap_or_default();
    let cases: Vec<Case> = cases().into_iter().filter(|c| c.name.contains(&only)).collect();
    let mut spec = LabSpec::new("bday");
    spec.public.push("rdv".into());
    spec.seed = Some(6);
    for c in &cases {
        for (site, nat, _) in [c.a, c.b] {
            let mut s = SiteSpec::new(site, nat).expect("site");
            s.delay_ms = c.site_delay_ms;
            spec.sites.push(s);
        }
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let connect = connect_bin.to_string_lossy().to_string();
    let rdv_ip = lab.host_addr("rdv").unwrap();
    let rdv_addr = format!("{rdv_ip}:{RDV_PORT}");
    let mut rdv = lab.spawn("rdv", &[connect.as_str(), "rendezvous", "--bind", &rdv_addr]).expect("rendezvous");
    let mut rdv_out = BufReader::new(rdv.stdout.take().unwrap());
    let mut line = String::new();
    rdv_out.read_line(&mut line).expect("rendezvous ready");
    let rdv_id = field(&line, "node_id").expect("rendezvous id");

    println!("| case | punched | connect ms median | p95 | max | hard NAT mappings / try | easy site packets out / try | listener fds left after the try (max) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut failures = Vec::new();
    for c in &cases {
        let (hard, easy) = if c.hard_is_a { (c.a.0, c.b.0) } else { (c.b.0, c.a.0) };
        let user = !c.a.1.starts_with("kernel");
        let (mut times, mut ok, mut mappings, mut easy_out, mut leaked) = (Vec::new(), 0, 0u64, 0u64, 0usize);
        for run in 0..runs {
            // A fresh listener per try: a long-lived one keeps filter
            // permissions from earlier tries' probes on its NAT, which lets
            // later tries hit without probing.
            let mut listener = lab
                .spawn(c.b.0, &[connect.as_str(), "listen", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", c.b.2])
                .expect("listener");
            let mut out = BufReader::new(listener.stdout.take().unwrap());
            let mut joined = String::new();
            out.read_line(&mut joined).expect("listener joined");
            let b_id = field(&joined, "node_id").expect("listener id");
            // Keep reading its lines so it never blocks on stdout.
            std::thread::spawn(move || for _ in out.lines() {});
            let fds_before = fds(listener.id());
            let before = (lab.router_stats(hard).ok(), lab.router_stats(easy).ok());
            let argv = [connect.as_str(), "connect", &b_id, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", c.a.2, "--timeout-ms", "10000"];
            let o = lab.exec_timeout(c.a.0, &argv, Duration::from_secs(20)).expect("connect");
            let l = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let good = field(&l, "ok").as_deref() == Some("true")
                && field(&l, "strategy").as_deref() == Some("birthday_probing")
                && field(&l, "method").as_deref() == Some("punched");
            if good {
                ok += 1;
                times.push(field(&l, "connect_ms").and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN));
            } else {
                failures.push(format!("{} run {run}: {l} {}", c.name, String::from_utf8_lossy(&o.stderr).trim()));
            }
            // The engines rewrite their counters every 100 ms; the
            // listener's path socket closes within a second of A's exit.
            std::thread::sleep(Duration::from_millis(1500));
            if let (Some(hb), Some(eb), Ok(ha), Ok(ea)) = (before.0, before.1, lab.router_stats(hard), lab.router_stats(easy)) {
                mappings += counter(&ha, "bindings_created").saturating_sub(counter(&hb, "bindings_created"));
                easy_out += ea.packets_out.saturating_sub(eb.packets_out);
            }
            leaked = leaked.max(fds(listener.id()).saturating_sub(fds_before));
            let _ = listener.kill();
            let _ = listener.wait();
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let per = |x: u64| if user { format!("{:.0}", x as f64 / runs as f64) } else { "-".into() };
        let easy_per = format!("{:.0}", easy_out as f64 / runs as f64);
        println!(
            "| {} | {ok}/{runs} | {:.0} | {:.0} | {:.0} | {} | {} | {leaked} |",
            c.name,
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            times.last().copied().unwrap_or(f64::NAN),
            per(mappings),
            easy_per,
        );
    }
    let _ = rdv.kill();
    if !failures.is_empty() {
        println!("\nFailures:\n");
        for f in &failures {
            println!("* {f}");
        }
    }
    drop(lab);
}
