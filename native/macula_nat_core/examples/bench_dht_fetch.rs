//! Publish and fetch latency of the mainline backend on a private loopback
//! swarm (never the public DHT). Prints a markdown report on stdout; run it
//! through `bench/dht_fetch.sh`, which writes `bench/dht_fetch.md`.
//!
//! bench_dht_fetch [--nodes N] [--keys K] [--misses M]
//!
//! Client A publishes K records, each under its own fresh identity, then a
//! separate client B (its own socket, bootstrapped from other swarm nodes)
//! fetches every key once, then all of them a second time. Distinct keys
//! mean every fetch is a lookup of its own: nothing one fetch learns about
//! a target can help the next. The second pass shows what mainline keeps
//! per target between lookups.

use macula_nat_core::dht::mainline::{MainlineConfig, MainlineDht};
use macula_nat_core::dht::swarm::LocalSwarm;
use macula_nat_core::dht::DhtBackend;
use macula_nat_core::{runtime, Identity};
use std::future::Future;
use std::process::exit;
use std::time::{Duration, Instant};

/// About the size of a signed peer record with a few candidates.
const VALUE_LEN: usize = 300;

struct Args {
    nodes: usize,
    keys: usize,
    misses: usize,
}

fn parse_args() -> Args {
    let mut a = Args { nodes: 50, keys: 200, misses: 50 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage());
        match flag.as_str() {
            "--nodes" if v > 0 => a.nodes = v,
            "--keys" if v > 0 => a.keys = v,
            "--misses" => a.misses = v,
            _ => usage(),
        }
    }
    a
}

fn usage() -> ! {
    eprintln!("usage: bench_dht_fetch [--nodes N] [--keys K] [--misses M]");
    exit(2)
}

fn block_on<F: Future>(f: F) -> F::Output {
    runtime::handle().block_on(f)
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("bench_dht_fetch: {what}: {e}");
    exit(1)
}

fn client(bootstrap: Vec<String>) -> MainlineDht {
    let cfg = MainlineConfig { bootstrap, ..MainlineConfig::default() };
    let dht = block_on(MainlineDht::start(cfg)).unwrap_or_else(|e| fail("client", e));
    if !block_on(dht.bootstrapped()) {
        fail("client", "did not bootstrap");
    }
    dht
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

fn row(name: &str, mut samples: Vec<Duration>, note: &str) {
    if samples.is_empty() {
        return;
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e3 / samples.len() as f64;
    println!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {note} |",
        samples.len(),
        samples[0].as_secs_f64() * 1e3,
        pct(&samples, 50.0),
        pct(&samples, 95.0),
        pct(&samples, 99.0),
        pct(&samples, 100.0),
        mean
    );
}

fn main() {
    let args = parse_args();
    let t = Instant::now();
    let swarm = block_on(LocalSwarm::start(args.nodes)).unwrap_or_else(|e| fail("swarm", e));
    let swarm_ready = t.elapsed();
    let nodes = swarm.bootstrap();
    // Two bootstrap nodes each, and not the same ones: lookups have to walk
    // the DHT rather than ask every node at once.
    let a = client(nodes.iter().take(2).cloned().collect());
    let b = client(nodes.iter().rev().take(2).cloned().collect());

    let ids: Vec<Identity> = (0..args.keys).map(|_| Identity::generate()).collect();
    let value_of = |i: usize| -> Vec<u8> { (0..VALUE_LEN).map(|j| (i + j) as u8).collect() };

    let mut publish = Vec::with_capacity(args.keys);
    let mut publish_errors = 0;
    for (i, id) in ids.iter().enumerate() {
        let t = Instant::now();
        match block_on(a.put(id, 1, value_of(i))) {
            Ok(()) => publish.push(t.elapsed()),
            Err(e) => {
                publish_errors += 1;
                eprintln!("put {i}: {e}");
            }
        }
    }

    let fetch_pass = |label: &str| {
        let mut samples = Vec::with_capacity(args.keys);
        let mut wrong = 0;
        for (i, id) in ids.iter().enumerate() {
            let t = Instant::now();
            let got = block_on(b.get(id.node_id()));
            samples.push(t.elapsed());
            if got != Ok(Some(value_of(i))) {
                wrong += 1;
                eprintln!("{label} fetch {i}: {got:?}");
            }
        }
        (samples, wrong)
    };
    let (first, first_wrong) = fetch_pass("first");
    let (second, second_wrong) = fetch_pass("second");

    let mut misses = Vec::with_capacity(args.misses);
    let mut miss_wrong = 0;
    for _ in 0..args.misses {
        let t = Instant::now();
        let got = block_on(b.get(Identity::generate().node_id()));
        misses.push(t.elapsed());
        if got != Ok(None) {
            miss_wrong += 1;
        }
    }

    println!("# mainline DHT: publish and fetch latency\n");
    println!(
        "Private swarm of {} mainline server nodes on 127.0.0.1 (ready in {:.0} ms), mainline 6.2, \
         default request timeout (2 s). Client A publishes {} BEP 44 items of {VALUE_LEN} bytes, \
         each under its own fresh ed25519 key (seq 1, no salt); client B, a separate node with \
         its own socket bootstrapped from two other swarm nodes, fetches each key once, then \
         all of them again. Operations run one at a time; times are wall-clock per call of \
         `DhtBackend::put`/`get`, in ms.\n",
        swarm.len(),
        swarm_ready.as_secs_f64() * 1e3,
        args.keys
    );
    println!("| operation | n | min | p50 | p95 | p99 | max | mean | failures |");
    println!("|---|---|---|---|---|---|---|---|---|");
    row("publish (A, put)", publish, &format!("{publish_errors} errors"));
    row("fetch, first (B, get)", first, &format!("{first_wrong} wrong or missing"));
    row("fetch, second pass of the same keys", second, &format!("{second_wrong} wrong or missing"));
    row("fetch of an unknown key (Ok(None))", misses, &format!("{miss_wrong} not None"));
    println!(
        "\nNotes:\n\n\
         - mainline keeps no values on the reading side: every get is a full iterative lookup \
           answered by the storing nodes. What it keeps per target (LRU) is the set of closest \
           responding nodes of the last lookup, which seeds the next lookup of that target; the \
           second pass shows what that is worth.\n\
         - A put is a lookup of the target followed by the stores to the closest responders; \
           on loopback the stores add little to the lookup.\n\
         - On loopback the figures are mainline's own cadence, not the network: each mainline \
           node is one thread whose loop blocks in `recv` with a 50 ms read timeout, and lookups \
           complete in steps of about that (here ~55 or ~110 ms). The first matching item reaches \
           the reader much sooner, but a get waits for the whole lookup so that it returns the \
           highest `seq` any storing node holds.\n\
         - Loopback has no round-trip time: on the public DHT every lookup step costs real round \
           trips, so these figures are a floor, not a prediction."
    );
}
