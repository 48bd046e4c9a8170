//! Runs one NAT detection from a fresh node socket and prints the verdict on
//! one line of `key=value` pairs. Used by the lab tests and benchmarks (run
//! inside a lab host) and handy for operators.
//!
//! macula-detect --observer IP:PORT [--observer IP:PORT] [--timeout-ms N] [--bind IP:PORT] [--bind6 IP:PORT] [--repeat N] [--filter-socket on|off]
//!
//! `--bind6`: a dual-stack node (a second socket for IPv6); with IPv6
//! observers its IPv6 side is detected too, printed as `public6=`.
//!
//! `--filter-socket off` runs the filtering tests on the node socket too
//! (the schedule that plain Linux routers fool; for comparisons).
//! `--repeat N` detects N times on the same socket, a line each (a
//! re-detection must not be fooled by what the first one opened).

use macula_nat_core::detect::detector::{detect, DetectFailure};
use macula_nat_core::{runtime, Identity, Node, NodeConfig};
use macula_nat_proto::detect::DetectConfig;
use std::net::SocketAddr;
use std::process::exit;
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: macula-detect --observer IP:PORT [--observer IP:PORT] [--timeout-ms N] [--bind IP:PORT] [--bind6 IP:PORT] [--repeat N] [--filter-socket on|off]");
    exit(2)
}

fn main() {
    let mut observers: Vec<SocketAddr> = Vec::new();
    let mut timeout_ms = 5000u64;
    let mut bind: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let mut bind6 = None;
    let mut repeat = 1u32;
    let mut filter_socket = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--observer" => observers.push(v.parse().unwrap_or_else(|_| usage())),
            "--timeout-ms" => timeout_ms = v.parse().unwrap_or_else(|_| usage()),
            "--bind" => bind = v.parse().unwrap_or_else(|_| usage()),
            "--bind6" => bind6 = Some(v.parse().unwrap_or_else(|_| usage())),
            "--repeat" => repeat = v.parse().unwrap_or_else(|_| usage()),
            "--filter-socket" => {
                filter_socket = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    let node = Node::open_dual(NodeConfig { bind }, bind6, Identity::generate()).unwrap_or_else(|e| {
        eprintln!("macula-detect: {e}");
        exit(1)
    });
    let cfg = DetectConfig { observers, timeout: Duration::from_millis(timeout_ms), filter_socket, ..DetectConfig::default() };
    for _ in 0..repeat.max(1) {
        run_once(&node, &cfg);
    }
}

fn run_once(node: &std::sync::Arc<Node>, cfg: &DetectConfig) {
    match runtime::handle().block_on(detect(node.clone(), cfg.clone())) {
        Ok(d) => {
            let p = &d.profile;
            println!(
                "mapping={} filtering={} allocation={} delta={} public={} local={} no_nat={} confidence={} ms={:.3} hairpin={} public6={}",
                format!("{:?}", p.mapping).to_lowercase(),
                format!("{:?}", p.filtering).to_lowercase(),
                format!("{:?}", p.allocation).to_lowercase(),
                p.port_delta.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                p.public_addr,
                d.local_addr,
                p.no_nat,
                format!("{:?}", p.confidence).to_lowercase(),
                d.elapsed.as_secs_f64() * 1000.0,
                p.hairpin.map_or("-".to_string(), |h| h.to_string()),
                node.public6().map_or("-".to_string(), |a| a.to_string())
            );
        }
        Err(DetectFailure::Detect(e)) => {
            println!("error={e:?}");
            exit(3)
        }
        Err(DetectFailure::Runtime(e)) => {
            println!("error={e}");
            exit(1)
        }
    }
}
