//! Black-hole failover, repeated: a direct connection between two kernel
//! full cones behind plain routers (a public rendezvous that also relays)
//! streams sequenced messages (one every 2 ms, echoed); the direct path is
//! black-holed at the listener's router for 6 s (the relay stays
//! reachable), then lifted. Per try: black hole -> `relayed`, black hole ->
//! traffic again (the echo gap), block lifted -> `direct` again.
//!
//! `renumber` mode (issue 19, network change): the same lab; per try a
//! fresh direct connection streams, then one site's router gets a new
//! public address (`Lab::renumber`), the dialler's and the listener's
//! alternately. Per try: renumbered -> the renumbered node learns its new
//! address (`netchange`), -> traffic again (the first echo after a gap of
//! 100 ms or more; none: the stream never paused that long, counted as its
//! longest gap), and on the listener's side -> `relayed` and -> `direct`
//! again at the new address.
//! Usage: `bench_failover [tries] [blackhole|renumber]` (20, blackhole);
//! prints a Markdown table.

#[path = "../tests/common/mod.rs"]
mod common;

use common::field;
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// Keeps a child's stderr flowing (a full pipe would block it), into
/// `path` when `MACULA_BENCH_LOGS` names a directory.
fn drain_stderr(child: &mut Child, name: &str) {
    let Some(mut err) = child.stderr.take() else { return };
    let dir = std::env::var("MACULA_BENCH_LOGS").ok();
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut sink: Box<dyn std::io::Write> = match dir.and_then(|d| std::fs::File::create(format!("{d}/{name}.log")).ok()) {
            Some(f) => Box::new(f),
            None => Box::new(std::io::sink()),
        };
        let _ = std::io::copy(&mut err, &mut sink);
    });
}

fn next_event(rx: &mpsc::Receiver<String>, kind: &str, t: Duration) -> Option<(String, Instant)> {
    let until = Instant::now() + t;
    loop {
        let l = rx.recv_timeout(until.checked_duration_since(Instant::now())?).ok()?;
        if field(&l, "event").as_deref() == Some(kind) {
            return Some((l, Instant::now()));
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let tries: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let renumber = std::env::args().nth(2).as_deref() == Some("renumber");
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("macula-connect");
    let bin = bin.to_str().unwrap().to_string();
    if !common::ready(&bin) {
        std::process::exit(2);
    }
    let mut spec = LabSpec::new(if renumber { "bnc" } else { "bfo" });
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
    let mut rdv = lab.spawn("rdv", &[&bin, "rendezvous", "--bind", &rdv_addr, "--serve-relay"]).expect("rendezvous");
    let rdv_said = lines(&mut rdv);
    let rdv_id = field(&rdv_said.recv_timeout(Duration::from_secs(10)).expect("rendezvous ready"), "node_id").unwrap();
    let mut listener = lab
        .spawn("qb", &[&bin, "listen", "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-ei-pp", "--relay", &rdv_addr, "--relay-id", &rdv_id])
        .expect("listener");
    drain_stderr(&mut rdv, "rdv");
    drain_stderr(&mut listener, "listener");
    // Kept: the listener prints a line per accepted connection, and a
    // closed pipe would end it.
    let heard = lines(&mut listener);
    let target = field(&heard.recv_timeout(Duration::from_secs(15)).expect("listener joined"), "node_id").unwrap();
    if renumber {
        renumber_tries(&mut lab, tries, &bin, &rdv_addr, &rdv_id, &target, &heard);
        for c in [&mut rdv, &mut listener] {
            let _ = c.kill();
            let _ = c.wait();
        }
        return;
    }
    std::thread::spawn(move || while heard.recv().is_ok() {});
    let (mut to_relay, mut to_traffic, mut to_direct, mut failed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in 0..tries {
        let mut stream = lab
            .spawn("qa", &[&bin, "stream", &target, "--rendezvous", &rdv_addr, "--rendezvous-id", &rdv_id, "--nat", "ei-ei-pp", "--relay", &rdv_addr, "--relay-id", &rdv_id, "--count", "100000", "--interval-ms", "2"])
            .expect("stream");
        drain_stderr(&mut stream, &format!("stream{t}"));
        let said = lines(&mut stream);
        let ok = (|| {
            let c = said.recv_timeout(Duration::from_secs(20)).map_err(|_| "no connect".to_string())?;
            if field(&c, "method").as_deref() != Some("direct") {
                return Err(format!("not direct: {c}"));
            }
            std::thread::sleep(Duration::from_secs(2));
            lab.blackhole("qb", true, &[rdv_ip]).map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            let (m, at) = next_event(&said, "method", Duration::from_secs(15)).ok_or("no failover")?;
            if field(&m, "method").as_deref() != Some("relayed") {
                return Err(format!("not relayed: {m}"));
            }
            let relayed = at - t0;
            let (_, at) = next_event(&said, "gap", Duration::from_secs(15)).ok_or("no traffic after the black hole")?;
            let traffic = at - t0;
            std::thread::sleep(Duration::from_secs(6).saturating_sub(t0.elapsed()));
            lab.blackhole("qb", false, &[]).map_err(|e| e.to_string())?;
            let t1 = Instant::now();
            let (m, at) = next_event(&said, "method", Duration::from_secs(60)).ok_or("not back to direct")?;
            if field(&m, "method").as_deref() != Some("direct") {
                return Err(format!("not direct again: {m}"));
            }
            Ok((relayed, traffic, at - t1))
        })();
        let _ = lab.blackhole("qb", false, &[]);
        let _ = stream.kill();
        let _ = stream.wait();
        match ok {
            Ok((r, tr, d)) => {
                eprintln!("try {t}: relayed {} ms, traffic {} ms, direct {} ms", r.as_millis(), tr.as_millis(), d.as_millis());
                to_relay.push(r.as_secs_f64() * 1000.0);
                to_traffic.push(tr.as_secs_f64() * 1000.0);
                to_direct.push(d.as_secs_f64() * 1000.0);
            }
            Err(e) => {
                eprintln!("try {t}: {e}");
                failed.push(e);
            }
        }
    }
    for c in [&mut rdv, &mut listener] {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("| measure | tries | p50 ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, v) in [
        ("black hole -> `relayed` (method_changed)", &mut to_relay),
        ("black hole -> traffic again (first echo after the gap)", &mut to_traffic),
        ("block lifted -> `direct` again (re-punch)", &mut to_direct),
    ] {
        let max = v.iter().cloned().fold(f64::NAN, f64::max);
        println!("| {name} | {} | {:.0} | {:.0} | {:.0} |", v.len(), pct(v, 0.5), pct(v, 0.95), max);
    }
    println!();
    println!("Tries that failed: {} of {tries}{}", failed.len(), if failed.is_empty() { String::new() } else { format!(" ({})", failed.join("; ")) });
}

/// Per try, a renumbering of the dialler's site (even tries) or the
/// listener's (odd); see the module. Prints the table.
fn renumber_tries(lab: &mut Lab, tries: usize, bin: &str, rdv_addr: &str, rdv_id: &str, target: &str, heard: &mpsc::Receiver<String>) {
    #[derive(Default)]
    struct Side {
        netchange: Vec<f64>,
        traffic: Vec<f64>,
        paused: usize,
        relayed: Vec<f64>,
        direct: Vec<f64>,
        failed: Vec<String>,
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut dialler, mut listener) = (Side::default(), Side::default());
    for t in 0..tries {
        let listener_side = t % 2 == 1;
        let site = if listener_side { "qb" } else { "qa" };
        let mut stream = lab
            .spawn("qa", &[bin, "stream", target, "--rendezvous", rdv_addr, "--rendezvous-id", rdv_id, "--nat", "ei-ei-pp", "--relay", rdv_addr, "--relay-id", rdv_id, "--count", "100000", "--interval-ms", "2", "--gap-ms", "100"])
            .expect("stream");
        drain_stderr(&mut stream, &format!("renumber{t}"));
        let said = lines(&mut stream);
        // What the listener said since the last try is stale.
        while heard.try_recv().is_ok() {}
        let side = if listener_side { &mut listener } else { &mut dialler };
        let r = (|| {
            let c = said.recv_timeout(Duration::from_secs(20)).map_err(|_| "no connect".to_string())?;
            if field(&c, "method").as_deref() != Some("direct") {
                return Err(format!("not direct: {c}"));
            }
            std::thread::sleep(Duration::from_secs(2));
            lab.renumber(site).map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            // The stream's lines in order, and the renumbered node's.
            let mut events: Vec<(String, Instant)> = Vec::new();
            let mut change = None;
            let until = t0 + Duration::from_secs(if listener_side { 15 } else { 5 });
            let done = |events: &Vec<(String, Instant)>, change: &Option<Duration>| {
                listener_side && change.is_some() && events.iter().any(|(l, _)| field(l, "method").as_deref() == Some("direct"))
            };
            while Instant::now() < until && !done(&events, &change) {
                if let Ok(l) = said.recv_timeout(Duration::from_millis(20)) {
                    events.push((l, Instant::now()));
                }
                let own = if listener_side { heard } else { &said };
                if listener_side {
                    if let Ok(l) = own.try_recv() {
                        if field(&l, "event").as_deref() == Some("netchange") {
                            change = Some(Instant::now() - t0);
                        }
                    }
                } else if let Some((_, at)) = events.iter().find(|(l, _)| field(l, "event").as_deref() == Some("netchange")) {
                    change = Some(*at - t0);
                }
            }
            let change = change.ok_or("no netchange")?;
            let at = |kind: &str, value: Option<&str>| {
                events
                    .iter()
                    .find(|(l, _)| field(l, "event").as_deref() == Some(kind) && value.is_none_or(|v| field(l, "method").as_deref() == Some(v)))
                    .map(|(l, at)| (l.clone(), *at - t0))
            };
            let traffic = at("gap", None);
            let (relayed, direct) = if listener_side {
                (Some(at("method", Some("relayed")).ok_or("no failover")?.1), Some(at("method", Some("direct")).ok_or("not direct again")?.1))
            } else {
                (None, None)
            };
            Ok((change, traffic.map(|(_, d)| d), relayed, direct))
        })();
        let _ = stream.kill();
        let _ = stream.wait();
        match r {
            Ok((change, traffic, relayed, direct)) => {
                eprintln!("try {t} ({site}): netchange {} ms, traffic {:?}, relayed {:?}, direct {:?}", ms(change), traffic.map(ms), relayed.map(ms), direct.map(ms));
                side.netchange.push(ms(change));
                match traffic {
                    Some(d) => side.traffic.push(ms(d)),
                    None => side.paused += 1,
                }
                side.relayed.extend(relayed.map(ms));
                side.direct.extend(direct.map(ms));
            }
            Err(e) => {
                eprintln!("try {t} ({site}): {e}");
                side.failed.push(e);
            }
        }
    }
    println!("| renumbered | measure | tries | p50 ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (name, s) in [("dialler (QUIC client)", &mut dialler), ("listener (QUIC server)", &mut listener)] {
        let rows: [(&str, &mut Vec<f64>); 4] = [
            ("-> `netchange` at the renumbered node (its rendezvous reports the new address)", &mut s.netchange),
            ("-> traffic again (first echo after a pause of 100 ms or more)", &mut s.traffic),
            ("-> `relayed` (failover)", &mut s.relayed),
            ("-> `direct` again (re-punch to the new address)", &mut s.direct),
        ];
        for (m, v) in rows {
            if v.is_empty() {
                continue;
            }
            let max = v.iter().cloned().fold(f64::NAN, f64::max);
            println!("| {name} | {m} | {} | {:.0} | {:.0} | {:.0} |", v.len(), pct(v, 0.5), pct(v, 0.95), max);
        }
    }
    println!();
    for (name, s) in [("dialler", &dialler), ("listener", &listener)] {
        println!(
            "Renumbered {name}: {} tries without a pause of 100 ms or more; {} failed{}",
            s.paused,
            s.failed.len(),
            if s.failed.is_empty() { String::new() } else { format!(" ({})", s.failed.join("; ")) }
        );
        println!();
    }
}
