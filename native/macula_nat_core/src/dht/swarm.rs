//! A private mainline swarm on 127.0.0.1 (or another local address: the
//! NAT lab runs one on a public lab host), for tests, benchmarks and the
//! `macula-dht-swarm` binary, so that none of them ever touches the public
//! DHT.
//!
//! Unlike mainline's own `Testnet`, no node starts with an empty bootstrap
//! list. A mainline node without bootstrap nodes adds everyone who sends it
//! a `find_node` to its routing table (so that the first node of a new DHT
//! gets a table at all), clients included; clients answer nothing, so every
//! later lookup through that node waits a full request timeout on them.
//! Instead the ports are picked first and every node bootstraps from all
//! the others. Ports are OS-chosen (never 6881, which a real client on the
//! host may hold), and the swarm is only handed out once every node has
//! found its peers, after all of them exist.

use super::{BoxFuture, DhtError};
use crate::runtime;
use ::mainline::{Config, Dht};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

/// Bound on the whole bootstrap phase; on loopback it takes well under a
/// second.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(20);
/// Kademlia's bucket size in mainline.
const BUCKET_K: usize = 20;
const NODE_REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// The swarm's nodes; they stop when this is dropped.
#[derive(Debug)]
pub struct LocalSwarm {
    nodes: Vec<Dht>,
    addrs: Vec<SocketAddrV4>,
}

impl LocalSwarm {
    /// Starts `n` server nodes (at least one) and resolves once all of them
    /// have bootstrapped.
    pub fn start(n: usize) -> BoxFuture<Result<LocalSwarm, DhtError>> {
        Self::start_on(Ipv4Addr::LOCALHOST, n)
    }

    /// [`LocalSwarm::start`] with every node bound to `ip`, an address of
    /// this host (network namespace).
    pub fn start_on(ip: Ipv4Addr, n: usize) -> BoxFuture<Result<LocalSwarm, DhtError>> {
        Box::pin(async move {
            if n == 0 {
                return Err(DhtError::Backend("a swarm needs at least one node".into()));
            }
            let created = runtime::handle().spawn_blocking(move || create(ip, n));
            let swarm = created.await.unwrap_or(Err(DhtError::Closed))?;
            swarm.bootstrap_all().await?;
            Ok(swarm)
        })
    }

    /// Every node's address as `"ip:port"`, the form
    /// `MainlineConfig::bootstrap` takes.
    pub fn bootstrap(&self) -> Vec<String> {
        self.addrs.iter().map(|a| a.to_string()).collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Ready means every node knows at least `min(n - 1, K)` peers: its
    /// own first lookup went out before the later nodes were up, so a node
    /// is polled until a repeat lookup has found them.
    async fn bootstrap_all(&self) -> Result<(), DhtError> {
        let wants = self.wants();
        // All nodes at once: in sequence they would cost a lookup each.
        let waits: Vec<_> = self
            .nodes
            .iter()
            .zip(wants)
            .map(|(node, want)| {
                let node = node.clone().as_async();
                runtime::spawn(tokio::time::timeout(BOOTSTRAP_DEADLINE, async move {
                    while !(node.bootstrapped().await && node.to_bootstrap().await.len() >= want) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }))
            })
            .collect();
        for (wait, addr) in waits.into_iter().zip(&self.addrs) {
            match wait.await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(DhtError::Backend(format!("swarm node {addr} found too few peers"))),
                Err(_) => return Err(DhtError::Closed),
            }
        }
        Ok(())
    }
}

impl LocalSwarm {
    /// How many peers each node must know. mainline keeps at most one node
    /// per IP in a lookup's closest nodes, or one per BEP 42 id prefix
    /// (21 bits, 8 per IP) when ids are valid for the IP (always on
    /// loopback and private addresses, where every node is "secure").
    /// On a public address the nodes take secure ids (`public_ip`), and a
    /// node can only find as many peers as the others have distinct
    /// prefixes.
    fn wants(&self) -> Vec<usize> {
        let all = (self.nodes.len() - 1).min(BUCKET_K);
        let ip = *self.addrs[0].ip();
        if !needs_secure_ids(ip) {
            return vec![all; self.nodes.len()];
        }
        let prefixes: Vec<[u8; 3]> = self
            .nodes
            .iter()
            .map(|n| {
                let b = n.info().id().as_bytes().to_owned();
                [b[0], b[1], b[2] & 0xf8]
            })
            .collect();
        (0..prefixes.len())
            .map(|i| {
                let mut others: Vec<[u8; 3]> =
                    prefixes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect();
                others.sort_unstable();
                others.dedup();
                others.len().min(all)
            })
            .collect()
    }
}

/// Addresses where mainline trusts any node id (BEP 42's exemptions).
fn needs_secure_ids(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_private() || ip.is_link_local())
}

/// Binding a port, releasing it and binding it again leaves a window in
/// which another process may take it; a new set of ports is tried then.
const CREATE_ATTEMPTS: usize = 3;

fn create(ip: Ipv4Addr, n: usize) -> Result<LocalSwarm, DhtError> {
    let mut last = DhtError::Closed;
    for _ in 0..CREATE_ATTEMPTS {
        match try_create(ip, n) {
            Ok(swarm) => return Ok(swarm),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn try_create(ip: Ipv4Addr, n: usize) -> Result<LocalSwarm, DhtError> {
    let addrs = free_ports(ip, n)?;
    let mut nodes = Vec::with_capacity(n);
    for addr in &addrs {
        let others = addrs.iter().filter(|a| *a != addr).copied().collect();
        nodes.push(start_node(ip, addr.port(), others)?);
    }
    Ok(LocalSwarm { nodes, addrs })
}

fn free_ports(ip: Ipv4Addr, n: usize) -> Result<Vec<SocketAddrV4>, DhtError> {
    // All held at once so the OS hands out n different ports.
    let held: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind((ip, 0)))
        .collect::<Result<_, _>>()
        .map_err(|e| DhtError::Backend(format!("swarm port: {e}")))?;
    held.iter()
        .map(|s| match s.local_addr() {
            Ok(SocketAddr::V4(a)) => Ok(a),
            Ok(other) => Err(DhtError::Backend(format!("swarm port: unexpected {other}"))),
            Err(e) => Err(DhtError::Backend(format!("swarm port: {e}"))),
        })
        .collect()
}

fn start_node(ip: Ipv4Addr, port: u16, bootstrap: Vec<SocketAddrV4>) -> Result<Dht, DhtError> {
    let config = Config {
        // A one-node swarm gets `Some(empty)`, "no bootstrap" (`None` would
        // be the public bootstrap nodes).
        bootstrap: Some(bootstrap),
        port: Some(port),
        bind_address: Some(ip),
        // Secure ids on a public address: see `LocalSwarm::wants`.
        public_ip: needs_secure_ids(ip).then_some(ip),
        server_mode: true,
        // Only swarm nodes' own lookups wait on it: the first ones, sent
        // before the later nodes are up, should give up quickly.
        request_timeout: NODE_REQUEST_TIMEOUT,
        ..Config::default()
    };
    Dht::new(config).map_err(|e| DhtError::Backend(format!("swarm node socket: {e}")))
}
