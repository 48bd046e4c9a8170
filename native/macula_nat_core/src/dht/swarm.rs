//! A private mainline swarm on 127.0.0.1, for tests, benchmarks and the
//! `macula-dht-swarm` binary, so that none of them ever touches the public
//! DHT.
//!
//! Like mainline's own `Testnet`, the first node starts with no bootstrap
//! and every other node bootstraps from it. Unlike it, every node binds an
//! OS-chosen port (never 6881, which a real client on the host may hold),
//! and the swarm is only handed out once every node has looked itself up
//! after all of them exist, so routing tables cover the whole swarm and
//! not just the nodes that were up when each one joined.

use super::{BoxFuture, DhtError};
use crate::runtime;
use ::mainline::{Config, Dht};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Bound on the whole bootstrap phase; on loopback it takes milliseconds.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(20);

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
        Box::pin(async move {
            if n == 0 {
                return Err(DhtError::Backend("a swarm needs at least one node".into()));
            }
            let created = runtime::handle().spawn_blocking(move || create(n));
            let swarm = created.await.unwrap_or(Err(DhtError::Closed))?;
            swarm.bootstrap_all().await?;
            Ok(swarm)
        })
    }

    /// Every node's address as `"127.0.0.1:port"`, the form
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

    async fn bootstrap_all(&self) -> Result<(), DhtError> {
        // All lookups at once: in sequence they would cost a lookup each.
        let lookups: Vec<_> = self
            .nodes
            .iter()
            .map(|node| {
                let node = node.clone().as_async();
                runtime::spawn(tokio::time::timeout(BOOTSTRAP_DEADLINE, async move { node.bootstrapped().await }))
            })
            .collect();
        for (lookup, addr) in lookups.into_iter().zip(&self.addrs) {
            match lookup.await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Err(DhtError::Backend(format!("swarm node {addr} found no peers"))),
                Ok(Err(_)) => return Err(DhtError::Timeout),
                Err(_) => return Err(DhtError::Closed),
            }
        }
        Ok(())
    }
}

fn create(n: usize) -> Result<LocalSwarm, DhtError> {
    let first = start_node(Vec::new())?;
    let first_addr = first.info().local_addr();
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(start_node(vec![first_addr])?);
    }
    let addrs = nodes.iter().map(|node| node.info().local_addr()).collect();
    Ok(LocalSwarm { nodes, addrs })
}

fn start_node(bootstrap: Vec<SocketAddrV4>) -> Result<Dht, DhtError> {
    let mut config = Config::default();
    // `Some(empty)` is "no bootstrap" (the first node); `None` would be the
    // public bootstrap nodes.
    config.bootstrap = Some(bootstrap);
    config.port = Some(0);
    config.bind_address = Some(Ipv4Addr::LOCALHOST);
    config.server_mode = true;
    Dht::new(config).map_err(|e| DhtError::Backend(format!("swarm node socket: {e}")))
}
