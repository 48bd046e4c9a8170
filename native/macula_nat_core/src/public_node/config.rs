//! macula-node's TOML config file.
//!
//! ```toml
//! log_level = "info"                       # error | warn | info | debug | trace
//! identity_key = "/var/lib/macula-node/node.key"   # 32-byte ed25519 seed, created 0600 if absent
//!
//! [observer]                               # RFC 5780 STUN observer (omit the section: none)
//! primary = "203.0.113.10:3478"
//! alternate = "203.0.113.11:3479"          # other IP and port; omit: plain STUN, no CHANGE-REQUEST
//!
//! [node]                                   # the node socket (UDP, QUIC): rendezvous and relay
//! listen = "0.0.0.0:4433"
//! listen6 = "[::]:4433"                    # optional: a second socket for IPv6 (dual stack)
//! rendezvous = true
//! relay = true
//! max_connections = 1024                   # incoming QUIC connections at once (default 1024):
//! max_connections_per_ip = 32              # raise for more joined nodes (bench/capacity.md)
//!
//! [relay]                                  # limits (defaults: RelayLimits::default())
//! max_sessions = 100
//! bandwidth_limit = 1250000                # bytes/s per session; omit: unlimited
//! session_timeout_secs = 1800
//! max_queue_delay_ms = 100
//! max_reservations = 1000                  # nodes holding a reservation at once
//!
//! [metrics]                                # Prometheus text format over HTTP; omit: none
//! listen = "127.0.0.1:9464"
//! ```
//!
//! Unknown keys are errors (a typo must not silently fall back to a
//! default).

use macula_nat_core::relay::RelayLimits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_level")]
    pub log_level: LogLevel,
    pub identity_key: PathBuf,
    pub observer: Option<ObserverSection>,
    pub node: NodeSection,
    #[serde(default)]
    pub relay: RelaySection,
    pub metrics: Option<MetricsSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserverSection {
    pub primary: SocketAddr,
    pub alternate: Option<SocketAddr>,
    pub software: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub listen: SocketAddr,
    /// A dual-stack node's IPv6 socket (`listen` IPv4 then): IPv6-only and
    /// IPv4-only nodes meet through its relay.
    #[serde(default)]
    pub listen6: Option<SocketAddr>,
    #[serde(default = "yes")]
    pub rendezvous: bool,
    #[serde(default = "yes")]
    pub relay: bool,
    /// Incoming QUIC connections at once (`ConnLimits::total`, default
    /// 1024): each joined node and each relay client holds one, so a
    /// rendezvous or relay for more nodes needs it raised.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// ... of those from one source IP (`ConnLimits::per_ip`, default 32).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
}

impl NodeSection {
    /// The QUIC settings the node runs with: defaults, connection limits
    /// as configured.
    pub fn quic_config(&self) -> macula_nat_core::quic::QuicConfig {
        let mut q = macula_nat_core::quic::QuicConfig::default();
        if let Some(n) = self.max_connections {
            q.conn_limits.total = n;
        }
        if let Some(n) = self.max_connections_per_ip {
            q.conn_limits.per_ip = n;
        }
        q
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    pub max_sessions: Option<usize>,
    pub bandwidth_limit: Option<u64>,
    pub session_timeout_secs: Option<u64>,
    pub max_queue_delay_ms: Option<u64>,
    /// Reserved nodes at once (`RelayLimits::max_reservations`, default
    /// 1,000); a relay for more nodes needs `node.max_connections` raised
    /// too (each reserved node holds a control connection).
    pub max_reservations: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: SocketAddr,
}

fn default_level() -> LogLevel {
    LogLevel::Info
}

fn yes() -> bool {
    true
}

impl RelaySection {
    /// The limits, each missing one at its `RelayLimits::default()` value.
    pub fn limits(&self) -> RelayLimits {
        let mut l = RelayLimits::default();
        if let Some(n) = self.max_sessions {
            l.max_sessions = n;
        }
        if self.bandwidth_limit.is_some() {
            l.bandwidth_limit = self.bandwidth_limit;
        }
        if let Some(s) = self.session_timeout_secs {
            l.session_timeout = Duration::from_secs(s);
        }
        if let Some(ms) = self.max_queue_delay_ms {
            l.max_queue_delay = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_reservations {
            l.max_reservations = n;
        }
        l
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn check(&self) -> Result<(), String> {
        if let Some(o) = &self.observer {
            if let Some(a) = o.alternate {
                if a.ip() == o.primary.ip() || (a.port() == o.primary.port() && a.port() != 0) {
                    return Err("observer.alternate needs another IP and another port than observer.primary (RFC 5780)".into());
                }
            }
        }
        if self.node.listen6.is_some_and(|l| !l.is_ipv6() || self.node.listen.is_ipv6()) {
            return Err("node.listen6 needs an IPv6 address beside an IPv4 node.listen (an IPv6 node.listen alone is an IPv6-only node)".into());
        }
        if !self.node.rendezvous && !self.node.relay && self.observer.is_none() {
            return Err("nothing to run: no [observer] and node.rendezvous = node.relay = false".into());
        }
        if self.node.max_connections == Some(0) || self.node.max_connections_per_ip == Some(0) {
            return Err("node.max_connections and node.max_connections_per_ip must be at least 1".into());
        }
        if self.relay.max_sessions == Some(0) {
            return Err("relay.max_sessions must be at least 1 (set node.relay = false to run no relay)".into());
        }
        if self.relay.max_reservations == Some(0) {
            return Err("relay.max_reservations must be at least 1".into());
        }
        if self.relay.bandwidth_limit == Some(0) {
            return Err("relay.bandwidth_limit must be at least 1 byte/s (omit it: unlimited)".into());
        }
        if self.relay.session_timeout_secs == Some(0) {
            return Err("relay.session_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits() {
        let base = "identity_key = \"/tmp/k\"\n[node]\nlisten = \"0.0.0.0:4433\"\n";
        let d = Config::parse(base).unwrap().node.quic_config().conn_limits;
        assert_eq!((d.total, d.per_ip), (1024, 32));
        let c = Config::parse(&format!("{base}max_connections = 20000\nmax_connections_per_ip = 64\n")).unwrap();
        let l = c.node.quic_config().conn_limits;
        assert_eq!((l.total, l.per_ip), (20000, 64));
        assert!(Config::parse(&format!("{base}max_connections = 0\n")).is_err());
        let r = Config::parse(&format!("{base}[relay]\nmax_reservations = 20000\n")).unwrap();
        assert_eq!(r.relay.limits().max_reservations, 20000);
        assert_eq!(Config::parse(base).unwrap().relay.limits().max_reservations, RelayLimits::default().max_reservations);
    }

    #[test]
    fn full_and_minimal() {
        let c = Config::parse(
            r#"
            log_level = "debug"
            identity_key = "/tmp/k"
            [observer]
            primary = "127.0.0.1:3478"
            alternate = "127.0.0.2:3479"
            [node]
            listen = "0.0.0.0:4433"
            [relay]
            max_sessions = 7
            bandwidth_limit = 1000
            [metrics]
            listen = "127.0.0.1:9464"
            "#,
        )
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert!(c.node.rendezvous && c.node.relay);
        let l = c.relay.limits();
        assert_eq!((l.max_sessions, l.bandwidth_limit), (7, Some(1000)));
        assert_eq!(l.session_timeout, RelayLimits::default().session_timeout);
        let m = Config::parse("identity_key = \"k\"\n[node]\nlisten = \"0.0.0.0:1\"\n").unwrap();
        assert_eq!(m.log_level, LogLevel::Info);
        assert!(m.observer.is_none() && m.metrics.is_none());
    }

    #[test]
    fn refuses_typos_and_bad_values() {
        let base = "identity_key = \"k\"\n[node]\nlisten = \"0.0.0.0:1\"\n";
        assert!(Config::parse(&format!("{base}[relay]\nmax_sesions = 3\n")).is_err());
        assert!(Config::parse(&format!("{base}[relay]\nmax_sessions = 0\n")).is_err());
        assert!(Config::parse(&format!("log_level = \"loud\"\n{base}")).is_err());
        let same_ip = "[observer]\nprimary = \"127.0.0.1:3478\"\nalternate = \"127.0.0.1:3479\"\n";
        assert!(Config::parse(&format!("{base}{same_ip}")).is_err());
        assert!(Config::parse("[node]\nlisten = \"0.0.0.0:1\"\n").is_err());
        assert!(Config::parse(&format!("{base}listen6 = \"0.0.0.0:2\"\n")).is_err());
        let dual = Config::parse(&format!("{base}listen6 = \"[::]:1\"\n")).unwrap();
        assert_eq!(dual.node.listen6, Some("[::]:1".parse().unwrap()));
    }
}
