//! Runs a private mainline DHT swarm on 127.0.0.1 for tests (Erlang common
//! tests among them), so that nothing under test ever uses the public DHT.
//!
//! macula-dht-swarm [N] [--bind IP]   (N server nodes, default 20; every
//!                                    node on IP, default 127.0.0.1: the
//!                                    NAT lab binds a public lab host's)
//!
//! Once every node has bootstrapped it prints one line,
//! `bootstrap IP:PORT,IP:PORT,...` (every node), and then
//! runs until its stdin closes: an Erlang port or a test harness that dies
//! takes the swarm down with it. Exits 0 then, 1 if the swarm cannot start,
//! 2 on bad arguments.

use macula_nat_core::dht::swarm::LocalSwarm;
use macula_nat_core::runtime;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::exit;

const DEFAULT_NODES: usize = 20;

fn main() {
    let (n, ip) = parse(std::env::args().skip(1).collect()).unwrap_or_else(|| usage());
    let swarm = runtime::handle().block_on(LocalSwarm::start_on(ip, n)).unwrap_or_else(|e| {
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

fn parse(args: Vec<String>) -> Option<(usize, Ipv4Addr)> {
    let mut n = DEFAULT_NODES;
    let mut ip = Ipv4Addr::LOCALHOST;
    let mut args = args.into_iter();
    let mut seen_n = false;
    while let Some(a) = args.next() {
        if a == "--bind" {
            ip = args.next()?.parse().ok()?;
        } else if !seen_n {
            n = a.parse::<usize>().ok().filter(|n| *n > 0)?;
            seen_n = true;
        } else {
            return None;
        }
    }
    Some((n, ip))
}

fn usage() -> ! {
    eprintln!("usage: macula-dht-swarm [N] [--bind IP]   (N > 0 nodes, default {DEFAULT_NODES}; IP default 127.0.0.1)");
    exit(2)
}
