//! Hairpinning measured (RFC 5780 section 4.5): `macula-detect` behind NATs
//! that hairpin and that do not reports `hairpin=true|false`, against our
//! observer. The userspace engine's `hairpin` switch is the ground truth;
//! a kernel masquerade router (no hairpin rules: a packet to the router's
//! own public address is delivered to the router itself) does not hairpin.

mod common;
use macula_nat_lab::{Lab, LabSpec, SiteSpec, UpOptions};
use std::time::Duration;

#[test]
fn hairpin_reported_on_and_off() {
    let detect = env!("CARGO_BIN_EXE_macula-detect");
    if !common::ready(detect) {
        return;
    }
    // (site, nat, engine hairpin switch, expected verdict)
    let sites = [
        ("hon", "user:ei-ei-pp", true, "true"),
        ("hoff", "user:ei-ei-pp", false, "false"),
        ("hrd", "user:ei-ei-rd", true, "true"),
        ("hkfc", "kernel:full_cone", false, "false"),
    ];
    let mut spec = LabSpec::new("lhp");
    spec.observers.push("obs".into());
    for (name, nat, hp, _) in sites {
        let mut s = SiteSpec::new(name, nat).unwrap();
        s.hairpin = hp;
        spec.sites.push(s);
    }
    let lab = Lab::up_with(spec, UpOptions::default()).expect("lab up");
    let [ip1, ip2] = lab.info.observers["obs"];
    let observer = env!("CARGO_BIN_EXE_macula-observer");
    let mut obs = lab.spawn("obs", &[observer, "--primary", &format!("{ip1}:3478"), "--alternate", &format!("{ip2}:3479")]).expect("observer");
    std::thread::sleep(Duration::from_millis(300));
    let mut wrong = Vec::new();
    for (name, nat, hp, want) in sites {
        let out = lab.exec_timeout(name, &[detect, "--observer", &format!("{ip1}:3478"), "--timeout-ms", "5000"], Duration::from_secs(20)).unwrap();
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let got = line.split_whitespace().find_map(|kv| kv.strip_prefix("hairpin=")).unwrap_or("?").to_string();
        eprintln!("{name} ({nat}, engine hairpin {hp}): hairpin={got}   [{line}]");
        if got != want {
            wrong.push(format!("{name} ({nat}, hairpin {hp}): want {want}, got {got}: {line}"));
        }
    }
    let _ = obs.kill();
    let _ = obs.wait();
    assert!(wrong.is_empty(), "{wrong:#?}");
}
