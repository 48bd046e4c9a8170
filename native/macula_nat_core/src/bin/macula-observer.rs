//! Standalone RFC 5780 STUN observer for operators.
//!
//! macula-observer --primary IP:PORT [--alternate IP:PORT] [--software TEXT]
//!
//! Prints the bound addresses, then serves until killed. With an alternate
//! address it honours CHANGE-REQUEST (behaviour discovery); without one it is
//! a plain STUN Binding server.

use macula_nat_core::detect::observer_server::ObserverServer;
use std::net::SocketAddr;
use std::process::exit;
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: macula-observer --primary IP:PORT [--alternate IP:PORT] [--software TEXT] [--stats-every SECONDS]");
    exit(2)
}

fn main() {
    let mut primary: Option<SocketAddr> = None;
    let mut alternate: Option<SocketAddr> = None;
    let mut software = Some(format!("macula-observer {}", env!("CARGO_PKG_VERSION")));
    let mut stats_every: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--primary" => primary = Some(v.parse().unwrap_or_else(|_| usage())),
            "--alternate" => alternate = Some(v.parse().unwrap_or_else(|_| usage())),
            "--software" => software = Some(v),
            "--stats-every" => stats_every = Some(v.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    let primary = primary.unwrap_or_else(|| usage());
    let srv = match ObserverServer::start(primary, alternate, software) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("macula-observer: {e}");
            exit(1)
        }
    };
    match srv.alternate() {
        Some(a) => println!("macula-observer primary={} alternate={}", srv.primary(), a),
        None => println!("macula-observer primary={}", srv.primary()),
    }
    loop {
        std::thread::sleep(Duration::from_secs(stats_every.unwrap_or(3600)));
        if stats_every.is_some() {
            let (answered, dropped) = srv.stats.snapshot();
            println!("answered={answered} dropped={dropped:?}");
        }
    }
}
