//! Runs a rendezvous, a listening node or a connecting node, for the lab
//! tests (inside lab hosts) and for operators. Prints JSON lines.
//!
//! ```text
//! macula-connect rendezvous [--bind IP:PORT]
//!     {"event":"ready","node_id":HEX,"addr":"IP:PORT"}
//! macula-connect listen --rendezvous IP:PORT --rendezvous-id HEX [--nat SPEC] [--bind IP:PORT]
//!     {"event":"joined","node_id":HEX,"observed":"IP:PORT"}
//!     {"event":"accepted","peer":HEX,"remote":"IP:PORT"}   per connection; echoes its messages
//! macula-connect connect TARGET_HEX --rendezvous IP:PORT --rendezvous-id HEX [--nat SPEC]
//!                [--timeout-ms N] [--no-direct] [--allow-relay] [--bind IP:PORT]
//!     one line: {"ok":true,"method":..,"strategy":..,"connect_ms":..,"echo_ms":..,"node_id":..,"remote":..}
//!            or {"ok":false,"error":KIND,"message":..,"connect_ms":..,"node_id":..}
//! ```
//!
//! SPEC is this node's NAT type as `none` (public host) or
//! `MAPPING-FILTERING-ALLOCATION[:delta=N]` with each in ei|hd|pd / pp|pc|rd,
//! e.g. `ei-pd-pp` or `pd-pd-pc:delta=2` (no detection is run).

use macula_nat_core::connector::{profile_of, public_profile};
use macula_nat_core::{connect_detailed, runtime, ConnectOpts, Identity, Node, NodeConfig, Rendezvous, Signal, SignalConfig};
use macula_nat_proto::nat::{Allocation, Filtering, Mapping, NatType};
use macula_nat_proto::record::PeerInfo;
use std::net::SocketAddr;
use std::process::exit;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!("usage: macula-connect rendezvous|listen|connect TARGET_HEX [--rendezvous IP:PORT --rendezvous-id HEX] [--nat SPEC] [--bind IP:PORT] [--timeout-ms N] [--no-direct] [--allow-relay]");
    exit(2)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn parse_nat(s: &str) -> Option<PeerInfo> {
    if s == "none" {
        return Some(public_profile());
    }
    let (t, delta) = match s.split_once(":delta=") {
        Some((t, d)) => (t, Some(d.parse().ok()?)),
        None => (s, None),
    };
    let mut it = t.split('-');
    let m = match it.next()? {
        "ei" => Mapping::Ei,
        "hd" => Mapping::Hd,
        "pd" => Mapping::Pd,
        _ => return None,
    };
    let f = match it.next()? {
        "ei" => Filtering::Ei,
        "hd" => Filtering::Hd,
        "pd" => Filtering::Pd,
        _ => return None,
    };
    let a = match it.next()? {
        "pp" => Allocation::Pp,
        "pc" => Allocation::Pc,
        "rd" => Allocation::Rd,
        _ => return None,
    };
    Some(profile_of(NatType { mapping: m, filtering: f, allocation: a }, delta, false))
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let mut target = None;
    if mode == "connect" {
        target = Some(unhex(&args.next().unwrap_or_else(|| usage())).unwrap_or_else(|| usage()));
    }
    let mut bind: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let mut rdv: Option<SocketAddr> = None;
    let mut rdv_id = None;
    let mut nat = public_profile();
    let mut opts = ConnectOpts::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-direct" => opts.prefer_direct = false,
            "--allow-relay" => opts.allow_relay = true,
            _ => {
                let v = args.next().unwrap_or_else(|| usage());
                match a.as_str() {
                    "--bind" => bind = v.parse().unwrap_or_else(|_| usage()),
                    "--rendezvous" => rdv = Some(v.parse().unwrap_or_else(|_| usage())),
                    "--rendezvous-id" => rdv_id = Some(unhex(&v).unwrap_or_else(|| usage())),
                    "--nat" => nat = parse_nat(&v).unwrap_or_else(|| usage()),
                    "--timeout-ms" => opts.timeout = Duration::from_millis(v.parse().unwrap_or_else(|_| usage())),
                    _ => usage(),
                }
            }
        }
    }
    let node = Node::open(NodeConfig { bind }, Identity::generate()).unwrap_or_else(|e| {
        eprintln!("macula-connect: {e}");
        exit(1)
    });
    let id = hex(&node.node_id());
    runtime::handle().block_on(async move {
        if mode == "rendezvous" {
            let _r = Rendezvous::serve(node.clone()).unwrap_or_else(|e| {
                eprintln!("macula-connect: {e}");
                exit(1)
            });
            println!("{{\"event\":\"ready\",\"node_id\":\"{id}\",\"addr\":\"{}\"}}", node.local_addr().unwrap());
            std::future::pending::<()>().await;
        }
        let (Some(rdv), Some(rdv_id)) = (rdv, rdv_id) else { usage() };
        let signal = match Signal::join_with(node.clone(), rdv, rdv_id, SignalConfig::new(nat)).await {
            Ok(s) => s,
            Err(e) => {
                println!("{{\"ok\":false,\"event\":\"join\",\"error\":\"{}\",\"message\":{},\"node_id\":\"{id}\"}}", e.kind(), json_str(&e.to_string()));
                exit(3)
            }
        };
        let observed = signal.observed_addr().map(|a| a.to_string()).unwrap_or_default();
        match (mode.as_str(), target) {
            ("listen", _) => {
                println!("{{\"event\":\"joined\",\"node_id\":\"{id}\",\"observed\":\"{observed}\"}}");
                while let Some(c) = signal.accept().await {
                    println!("{{\"event\":\"accepted\",\"peer\":\"{}\",\"remote\":\"{}\"}}", hex(&c.peer_id()), c.remote_address());
                    runtime::spawn(async move {
                        while let Some(m) = c.recv().await {
                            if c.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
            ("connect", Some(target)) => {
                let t = Instant::now();
                match connect_detailed(&signal, target, opts).await {
                    Ok(c) => {
                        let connect_ms = t.elapsed().as_secs_f64() * 1000.0;
                        let t2 = Instant::now();
                        let msg = format!("hello from {id}").into_bytes();
                        let echoed = async {
                            c.conn.send(msg.clone()).await.ok()?;
                            c.conn.recv().await
                        };
                        let echo = tokio::time::timeout(Duration::from_secs(5), echoed).await.ok().flatten();
                        let ok = echo.as_deref() == Some(&msg[..]);
                        println!(
                            "{{\"ok\":{ok},\"method\":\"{}\",\"strategy\":\"{}\",\"connect_ms\":{connect_ms:.1},\"echo_ms\":{:.1},\"node_id\":\"{id}\",\"observed\":\"{observed}\",\"remote\":\"{}\"}}",
                            c.method.name(),
                            c.strategy.name(),
                            t2.elapsed().as_secs_f64() * 1000.0,
                            c.conn.remote_address()
                        );
                        let _ = c.conn.finish().await;
                        exit(if ok { 0 } else { 4 })
                    }
                    Err(e) => {
                        println!(
                            "{{\"ok\":false,\"error\":\"{}\",\"message\":{},\"connect_ms\":{:.1},\"node_id\":\"{id}\",\"observed\":\"{observed}\"}}",
                            e.kind(),
                            json_str(&e.to_string()),
                            t.elapsed().as_secs_f64() * 1000.0
                        );
                        exit(5)
                    }
                }
            }
            _ => usage(),
        }
    });
}
