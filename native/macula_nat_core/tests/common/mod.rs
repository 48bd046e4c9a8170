//! Shared by the lab tests (and the birthday benchmark, which includes this
//! file): lab preconditions and reading the JSON lines our binaries print.
#![allow(dead_code)]

use std::path::Path;

/// Whether the lab can run here (root, ip, nft, /dev/net/tun); points the
/// lab at the `macula-lab` binary next to `sibling` (one of this crate's
/// binaries, e.g. `env!("CARGO_BIN_EXE_macula-connect")`) and clears labs
/// that dead runs left. A missing `macula-lab` is a failure, not a skip.
pub fn ready(sibling: &str) -> bool {
    if let Err(why) = macula_nat_lab::can_run() {
        eprintln!("SKIPPED: lab tests need root, ip, nft and /dev/net/tun: {why}");
        return false;
    }
    let lab_bin = Path::new(sibling).with_file_name("macula-lab");
    if !lab_bin.exists() {
        panic!("{} missing: build it (cargo build --release -p macula_nat_lab) or run `cargo test --workspace`", lab_bin.display());
    }
    std::env::set_var("MACULA_LAB_BIN", lab_bin);
    macula_nat_lab::reap(false);
    true
}

/// The value of `"key":` in a one-line JSON object (strings unquoted).
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let rest = &line[line.find(&pat)? + pat.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        Some(s[..s.find('"')?].to_string())
    } else {
        Some(rest[..rest.find([',', '}']).unwrap_or(rest.len())].to_string())
    }
}
