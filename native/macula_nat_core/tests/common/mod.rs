//! Shared by the lab tests (and the birthday benchmark, which includes this
//! file): lab preconditions and reading the JSON lines our binaries print.
#![allow(dead_code)]

pub mod loopback;

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

// Reading the JSON lines a lab-spawned binary prints (shared by the lab tests).

#[allow(dead_code)]
pub fn lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Keeps a child's stderr flowing (a full pipe would block it), into
/// `$MACULA_TEST_LOGS/<name>.log` when that names a directory (with
/// `MACULA_TRACE=debug` for the story of a run).
#[allow(dead_code)]
pub fn drain_stderr(child: &mut std::process::Child, name: &str) {
    let Some(mut err) = child.stderr.take() else { return };
    let dir = std::env::var("MACULA_TEST_LOGS").ok();
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut sink: Box<dyn std::io::Write> = match dir.and_then(|d| std::fs::File::create(format!("{d}/{name}.log")).ok()) {
            Some(f) => Box::new(f),
            None => Box::new(std::io::sink()),
        };
        let _ = std::io::copy(&mut err, &mut sink);
    });
}

/// The next line with `"event":"<kind>"`, skipping others, within `t`.
#[allow(dead_code)]
pub fn next_event(rx: &std::sync::mpsc::Receiver<String>, kind: &str, t: std::time::Duration, skipped: &mut Vec<String>) -> Option<String> {
    let until = std::time::Instant::now() + t;
    loop {
        let left = until.checked_duration_since(std::time::Instant::now())?;
        let l = rx.recv_timeout(left).ok()?;
        if field(&l, "event").as_deref() == Some(kind) {
            return Some(l);
        }
        skipped.push(l);
    }
}
