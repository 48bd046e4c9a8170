//! Detection benchmark (issue 4), run by `bench/detection.sh`:
//! wall time of one NAT detection by `macula-detect` and by coturn's
//! `turnutils_natdiscovery -m -f`, side by side in one run, against coturn's
//! `turnserver` and against `macula-observer` on the same observer host, at
//! 0 ms and 50 ms one-way delay on the site's links. The cross pairs are the
//! interop check: each client's verdict against the other's server.
//! Prints a Markdown report on stdout.

use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use std::time::{Duration, Instant};

const RUNS: usize = 15;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn natdiscovery_verdict(out: &str) -> String {
    let find = |what| macula_nat_lab::natdiscovery::behaviour(out, what).unwrap_or("?");
    format!("{} {}", find("mapping"), find("filtering"))
}

fn main() {
    macula_nat_lab::can_run().expect("needs root and the lab tools");
    let bin_dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    std::env::set_var("MACULA_LAB_BIN", bin_dir.join("macula-lab"));
    let detect = bin_dir.join("macula-detect").to_string_lossy().to_string();
    let observer = bin_dir.join("macula-observer").to_string_lossy().to_string();
    macula_nat_lab::reap(false);

    // (label, expected verdict, lab NAT, plain router). Plain routers
    // (masquerade, no input rule) are where a single-socket schedule was
    // fooled; they are measured with the same schedule as the rest.
    let types = [
        ("ei-ei-pp", "ei-ei-pp", "user:ei-ei-pp", false),
        ("ei-pd-pp", "ei-pd-pp", "user:ei-pd-pp", false),
        ("pd-pd-rd", "pd-pd-rd", "user:pd-pd-rd", false),
        ("ei-pd-rd, plain router", "ei-pd-rd", "user:ei-pd-rd", true),
        ("kernel port-restricted, plain router", "ei-pd-pp", "kernel:port_restricted_cone", true),
    ];
    let site_name = |delay: u32, i: usize| format!("d{delay}t{i}");
    let mut spec = LabSpec::new("benchdet");
    spec.observers.push("obs".into());
    spec.seed = Some(11);
    for delay in [0.0, 50.0] {
        for (i, (_, _, nat, plain)) in types.iter().enumerate() {
            let mut s = SiteSpec::new(&site_name(delay as u32, i), nat).unwrap();
            s.delay_ms = delay;
            s.plain_router = *plain;
            spec.sites.push(s);
        }
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let [ip1, ip2] = lab.info.observers["obs"];
    let mut coturn = lab
        .spawn("obs", &["turnserver", "-L", &ip1.to_string(), "-L", &ip2.to_string(), "--no-auth", "--no-tls", "--no-dtls", "--no-cli", "-n", "--log-file", "stdout"])
        .unwrap();
    let mut ours = lab
        .spawn("obs", &[observer.as_str(), "--primary", &format!("{ip1}:4478"), "--alternate", &format!("{ip2}:4479")])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    println!("# NAT detection benchmark\n");
    println!("One lab, observer host with two IPs running coturn `turnserver` (3478/3479) and `macula-observer` (4478/4479).");
    println!("Sites behind the userspace NAT engine; delay is one-way on each direction of the site's link (RTT = 2 x delay).");
    println!("{RUNS} runs per row, interleaved (ours, coturn's, ours, ...), wall time of the whole client process.");
    println!("`internal` is the detection time measured inside macula-detect (excludes process start).\n");
    println!("| site NAT | one-way delay | client | server | verdict (expected) | p50 ms | p95 ms | max ms | internal p50/p95 ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for delay in [0u32, 50] {
        for (i, (t, expected, _, _)) in types.iter().enumerate() {
            let site = site_name(delay, i);
            let expected = expected.to_string();
            let servers = [("turnserver", format!("{ip1}:3478")), ("macula-observer", format!("{ip1}:4478"))];
            for (server, addr) in &servers {
                let mut ours_ms = Vec::new();
                let mut ours_int = Vec::new();
                let mut theirs_ms = Vec::new();
                let mut ours_v = String::new();
                let mut theirs_v = String::new();
                for _ in 0..RUNS {
                    let t0 = Instant::now();
                    let o = lab.exec_timeout(&site, &[detect.as_str(), "--observer", addr, "--timeout-ms", "5000"], Duration::from_secs(10)).unwrap();
                    ours_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                    let line = String::from_utf8_lossy(&o.stdout).to_string();
                    let get = |k: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap_or("?").to_string();
                    ours_v = format!("{}-{}-{}", get("mapping"), get("filtering"), get("allocation"));
                    ours_int.push(get("ms").parse::<f64>().unwrap_or(f64::NAN));
                    let t1 = Instant::now();
                    let host_port: Vec<&str> = addr.split(':').collect();
                    let o = lab
                        .exec_timeout(&site, &["turnutils_natdiscovery", "-m", "-f", "-p", host_port[1], host_port[0]], Duration::from_secs(30))
                        .unwrap();
                    theirs_ms.push(t1.elapsed().as_secs_f64() * 1000.0);
                    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
                    theirs_v = natdiscovery_verdict(&text);
                }
                let exp_mf = expected.rsplitn(2, '-').nth(1).unwrap().replace('-', " ");
                println!(
                    "| {t} | {delay} ms | macula-detect | {server} | {ours_v} ({expected}) | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} |",
                    pct(&mut ours_ms.clone(), 0.5), pct(&mut ours_ms.clone(), 0.95), pct(&mut ours_ms, 1.0),
                    pct(&mut ours_int.clone(), 0.5), pct(&mut ours_int, 0.95)
                );
                println!(
                    "| {t} | {delay} ms | turnutils_natdiscovery -m -f | {server} | {theirs_v} ({exp_mf}) | {:.1} | {:.1} | {:.1} | |",
                    pct(&mut theirs_ms.clone(), 0.5), pct(&mut theirs_ms.clone(), 0.95), pct(&mut theirs_ms, 1.0)
                );
            }
        }
    }
    let _ = coturn.kill();
    let _ = ours.kill();
    let _ = coturn.wait();
    let _ = ours.wait();
}
