//! Mapping lifetime measured (RFC 5780 section 4.6): `macula-detect
//! --lifetime on` behind NATs whose binding timeouts are 30, 60 and 120 s
//! (the lab's `binding_timeout_s`: the kernel router's conntrack UDP
//! timeouts, the userspace engine's binding timeout) reports each within
//! 10%, against our observer. All sites measure at once: the wall time is
//! that of the 120 s sites (about 1.7 x 120 s).

mod common;
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use std::time::{Duration, Instant};

#[test]
fn lifetime_measured_within_10_percent() {
    let detect = env!("CARGO_BIN_EXE_macula-detect");
    if !common::ready(detect) {
        return;
    }
    // (site, nat, binding timeout s)
    let sites = [
        ("k30", "kernel:port_restricted_cone", 30u64),
        ("k60", "kernel:port_restricted_cone", 60),
        ("k120", "kernel:port_restricted_cone", 120),
        ("u30", "user:ei-pd-pp", 30),
        ("u60", "user:ei-pd-pp", 60),
        ("u120", "user:ei-pd-pp", 120),
    ];
    let mut spec = LabSpec::new("ltm");
    spec.observers.push("obs".into());
    for (name, nat, t) in sites {
        let mut s = SiteSpec::new(name, nat).unwrap();
        s.binding_timeout_s = Some(t);
        spec.sites.push(s);
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let [ip1, ip2] = lab.info.observers["obs"];
    let observer = env!("CARGO_BIN_EXE_macula-observer");
    let mut obs = lab.spawn("obs", &[observer, "--primary", &format!("{ip1}:3478"), "--alternate", &format!("{ip2}:3479")]).expect("observer");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let obs_addr = format!("{ip1}:3478");
    let argv = [detect, "--observer", &obs_addr, "--timeout-ms", "5000", "--lifetime", "on"];
    let outs: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = sites.iter().map(|&(name, _, _)| sc.spawn(|| lab.exec_timeout(name, &argv, Duration::from_secs(400)))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut wrong = Vec::new();
    for ((name, nat, t), out) in sites.into_iter().zip(outs) {
        let line = match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Err(e) => format!("exec failed: {e}"),
        };
        let field = |k: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap_or("?").to_string();
        let got = field("mapping_lifetime");
        let ms: Option<f64> = got.parse().ok();
        eprintln!(
            "{name} ({nat}, timeout {t} s): mapping_lifetime={got} ms, bracket [{}, {}] ms, {} s, {} epochs, {} sockets, {} packets, {} bytes",
            field("lifetime_lo"),
            field("lifetime_hi"),
            field("lifetime_s"),
            field("lifetime_epochs"),
            field("lifetime_sockets"),
            field("lifetime_packets"),
            field("lifetime_bytes")
        );
        match ms {
            Some(ms) if (ms / 1000.0 - t as f64).abs() <= 0.1 * t as f64 => {}
            _ => wrong.push(format!("{name} ({nat}, timeout {t} s): got {got}: {line}")),
        }
    }
    eprintln!("all sites measured in {:.1} s", started.elapsed().as_secs_f64());
    let _ = obs.kill();
    let _ = obs.wait();
    assert!(wrong.is_empty(), "{wrong:#?}");
}
