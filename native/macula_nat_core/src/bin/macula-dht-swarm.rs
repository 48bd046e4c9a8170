//! Runs a private mainline DHT swarm on 127.0.0.1 for tests (Erlang common
//! tests among them), so that nothing under test ever uses the public DHT.
//!
//! macula-dht-swarm [N]      (N server nodes, default 20)
//!
//! Once every node has bootstrapped it prints one line,
//! `bootstrap 127.0.0.1:PORT,127.0.0.1:PORT,...` (every node), and then
//! runs until its stdin closes: an Erlang port or a test harness that dies
//! takes the swarm down with it. Exits 0 then, 1 if the swarm cannot start,
//! 2 on bad arguments.

use macula_nat_core::dht::swarm::LocalSwarm;
use macula_nat_core::runtime;
use std::io::{self, Write};
use std::process::exit;

const DEFAULT_NODES: usize = 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let n = match (args.next(), args.next()) {
        (None, _) => DEFAULT_NODES,
        (Some(a), None) => match a.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => usage(),
        },
        _ => usage(),
    };
    let swarm = runtime::handle().block_on(LocalSwarm::start(n)).unwrap_or_else(|e| {
        eprintln!("macula-dht-swarm: {e}");
        exit(1)
    });
    let mut out = io::stdout().lock();
    if writeln!(out, "bootstrap {}", swarm.bootstrap().join(",")).and_then(|_| out.flush()).is_err() {
        // Nobody is reading: the owner is already gone.
        exit(1);
    }
    // EOF or a read error both mean the owner is gone.
    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
    drop(swarm);
    exit(0)
}

fn usage() -> ! {
    eprintln!("usage: macula-dht-swarm [N]   (N > 0 nodes, default {DEFAULT_NODES})");
    exit(2)
}
