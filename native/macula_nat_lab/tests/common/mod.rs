#![allow(dead_code)]
use macula_nat_lab::{can_run, which};

/// Print past the test harness's output capture so the skip reason is always visible.
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Returns false (after printing why) when lab tests cannot run here.
pub fn lab_ready(extra_tools: &[&str]) -> bool {
    if let Err(why) = can_run() {
        say(&format!("SKIPPED: lab test needs root + ip + nft + /dev/net/tun: {why}"));
        return false;
    }
    for t in extra_tools {
        if which(t).is_none() {
            say(&format!("SKIPPED: {t} not installed"));
            return false;
        }
    }
    std::env::set_var("MACULA_LAB_BIN", env!("CARGO_BIN_EXE_macula-lab"));
    // a killed earlier run never leaves debris (only labs whose owner is gone)
    let removed = macula_nat_lab::reap(false);
    if !removed.is_empty() {
        eprintln!("reaped stale labs/namespaces: {removed:?}");
    }
    true
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_macula-lab")
}
