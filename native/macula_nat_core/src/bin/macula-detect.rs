//! Runs one NAT detection from a fresh node socket and prints the verdict on
//! one line of `key=value` pairs. Used by the lab tests and benchmarks (run
//! inside a lab host) and handy for operators.
//!
//! macula-detect --observer IP:PORT [--observer IP:PORT] [--timeout-ms N] [--bind IP:PORT] [--bind6 IP:PORT] [--repeat N] [--filter-socket on|off]
//!               [--lifetime on|off] [--lifetime-cap-s N]
//!
//! `--bind6`: a dual-stack node (a second socket for IPv6); with IPv6
//! observers its IPv6 side is detected too, printed as `public6=`.
//!
//! `--filter-socket off` runs the filtering tests on the node socket too
//! (the schedule that plain Linux routers fool; for comparisons).
//! `--repeat N` detects N times on the same socket, a line each (a
//! re-detection must not be fooled by what the first one opened).
//! `--lifetime on` then measures the mapping lifetime against the first
//! observer of the node socket's family (RFC 5780 section 4.6; about 1.7 lifetimes, at most about
//! 1.5 x the cap, 600 s by default) and appends `mapping_lifetime=MS`
//! (the estimate; `>=MS` above the cap, `<MS` below the first rung) and
//! what it cost to the line.

use macula_nat_core::detect::detector::{detect, DetectFailure};
use macula_nat_core::{runtime, Identity, Node, NodeConfig};
use macula_nat_core::detect::lifetime::{measure, LifetimeReport};
use macula_nat_proto::detect::lifetime::{LifetimeConfig, LifetimeVerdict};
use macula_nat_proto::detect::DetectConfig;
use std::net::SocketAddr;
use std::process::exit;
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: macula-detect --observer IP:PORT [--observer IP:PORT] [--timeout-ms N] [--bind IP:PORT] [--bind6 IP:PORT] [--repeat N] [--filter-socket on|off] [--lifetime on|off] [--lifetime-cap-s N]");
    exit(2)
}

fn main() {
    let mut observers: Vec<SocketAddr> = Vec::new();
    let mut timeout_ms = 5000u64;
    let mut bind: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let mut bind6 = None;
    let mut repeat = 1u32;
    let mut filter_socket = true;
    let mut lifetime = false;
    let mut lifetime_cfg = LifetimeConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--observer" => observers.push(v.parse().unwrap_or_else(|_| usage())),
            "--timeout-ms" => timeout_ms = v.parse().unwrap_or_else(|_| usage()),
            "--bind" => bind = v.parse().unwrap_or_else(|_| usage()),
            "--bind6" => bind6 = Some(v.parse().unwrap_or_else(|_| usage())),
            "--repeat" => repeat = v.parse().unwrap_or_else(|_| usage()),
            "--lifetime" => {
                lifetime = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => usage(),
                }
            }
            "--lifetime-cap-s" => lifetime_cfg.cap = Duration::from_secs(v.parse().unwrap_or_else(|_| usage())),
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
        run_once(&node, &cfg, lifetime.then(|| lifetime_cfg.clone()));
    }
}

fn run_once(node: &std::sync::Arc<Node>, cfg: &DetectConfig, lifetime: Option<LifetimeConfig>) {
    match runtime::handle().block_on(detect(node.clone(), cfg.clone())) {
        Ok(d) => {
            let p = &d.profile;
            let mut line = format!(
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
            let bind_ip = node.local_addr().map(|a| a.ip()).unwrap_or(d.local_addr.ip());
            if let (Some(lcfg), Some(observer)) = (lifetime, cfg.observers.iter().find(|o| o.is_ipv4() == bind_ip.is_ipv4())) {
                line.push_str(&match runtime::handle().block_on(measure(*observer, bind_ip, lcfg)) {
                    Some(r) => lifetime_fields(&r),
                    None => " mapping_lifetime=-".to_string(),
                });
            }
            println!("{line}");
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

fn lifetime_fields(r: &LifetimeReport) -> String {
    let ms = |d: Duration| d.as_millis();
    let (shown, lo, hi) = match r.verdict {
        LifetimeVerdict::Between { lo, hi } => (ms(r.verdict.estimate()).to_string(), ms(lo).to_string(), ms(hi).to_string()),
        LifetimeVerdict::AtLeast(l) => (format!(">={}", ms(l)), ms(l).to_string(), "-".into()),
        LifetimeVerdict::Below(h) => (format!("<{}", ms(h)), "-".into(), ms(h).to_string()),
    };
    format!(
        " mapping_lifetime={shown} lifetime_lo={lo} lifetime_hi={hi} lifetime_s={:.1} lifetime_epochs={} lifetime_sockets={} lifetime_packets={} lifetime_bytes={}",
        r.elapsed.as_secs_f64(),
        r.epochs,
        r.sockets,
        r.packets_sent,
        r.bytes_sent
    )
}
