//! Port mapping: asks the gateway (the default route's) to forward a public
//! port to the node's one UDP socket, by PCP (RFC 6887), NAT-PMP (RFC 6886)
//! or UPnP IGD, whichever answers first in the configured order.
//!
//! A [`PortMapper`] runs one task per node: it maps at start, renews at
//! half the granted lifetime, maps again when the network changes (another
//! gateway or local address, polled every second), and deletes the mapping
//! when the node closes (or is dropped: an owner that dies closes its node)
//! or when [`PortMapper::close`] is called. While a mapping with a public
//! external address holds, the node is directly reachable there from any
//! peer (the gateway forwards every remote: endpoint-independent and
//! unfiltered), and the profile it signals says so ([`signalled`]): mapping
//! and filtering EI at the mapped address, so the strategy table picks
//! `direct` with the peer dialling it.
//!
//! Codecs and timing are sans-IO in `macula_nat_proto::portmap`; `udp`
//! carries NAT-PMP and PCP, `upnp` is `igd-next`.

mod gateway;
mod udp;
mod upnp;

pub use gateway::Network;
pub use macula_nat_proto::portmap::Protocol;
use crate::lock::lock;
use crate::Node;
use macula_nat_proto::nat::{Confidence, Filtering, Mapping};
use macula_nat_proto::portmap::{renew_after, REQUESTED_LIFETIME_S};
use macula_nat_proto::record::PeerInfo;
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A mapping the gateway granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub protocol: Protocol,
    /// The public address peers reach the node at.
    pub external: SocketAddr,
    /// The node socket's port.
    pub internal_port: u16,
    /// Granted lifetime, seconds.
    pub lifetime_s: u32,
    pub network: Network,
    pub obtained: Instant,
    /// PCP: the mapping nonce, needed to renew and delete it.
    pub pcp_nonce: Option<[u8; 12]>,
}

/// Which protocols to try, in order.
#[derive(Debug, Clone)]
pub struct PortMapConfig {
    pub protocols: Vec<Protocol>,
    /// After every protocol failed: the wait before trying again (a
    /// network change tries at once). Default 5 min.
    pub retry: Duration,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        PortMapConfig { protocols: Protocol::ALL.to_vec(), retry: Duration::from_secs(300) }
    }
}

struct Shared {
    current: Mutex<Option<Mapped>>,
    stop: tokio::sync::Notify,
    stopped: Mutex<bool>,
    done: tokio::sync::Notify,
    finished: Mutex<bool>,
}

/// The mapping task of one node. Cloning shares it.
#[derive(Clone)]
pub struct PortMapper {
    shared: Arc<Shared>,
}

/// Mappers by node (the node's address in memory; entries leave when the
/// mapping does).
static REGISTRY: Lazy<Mutex<HashMap<usize, Weak<Shared>>>> = Lazy::new(|| Mutex::new(HashMap::new()));

fn key(node: &Node) -> usize {
    node as *const Node as usize
}

/// The node's mapping now, if it has one.
pub fn mapped_for(node: &Node) -> Option<Mapped> {
    let shared = lock(&REGISTRY).get(&key(node))?.upgrade()?;
    let m = lock(&shared.current).clone();
    m
}

/// `info` as the node signals it: with a mapping at a public address the
/// node is open there (EI mapping and filtering, high confidence).
pub fn signalled(node: &Node, mut info: PeerInfo) -> PeerInfo {
    if let Some(m) = mapped_for(node).filter(|m| !crate::punch::primer::is_inside(m.external.ip())) {
        info.mapping = Mapping::Ei;
        info.filtering = Filtering::Ei;
        info.confidence = Confidence::High;
        info.public_addr = Some(m.external);
        info.no_nat = false;
    }
    info
}

impl PortMapper {
    /// Starts mapping `node`'s socket port.
    pub fn start(node: &Arc<Node>, cfg: PortMapConfig) -> PortMapper {
        let shared = Arc::new(Shared {
            current: Mutex::new(None),
            stop: tokio::sync::Notify::new(),
            stopped: Mutex::new(false),
            done: tokio::sync::Notify::new(),
            finished: Mutex::new(false),
        });
        lock(&REGISTRY).insert(key(node), Arc::downgrade(&shared));
        let k = key(node);
        crate::runtime::spawn(run(Arc::downgrade(node), k, cfg, shared.clone()));
        PortMapper { shared }
    }

    pub fn mapped(&self) -> Option<Mapped> {
        lock(&self.shared.current).clone()
    }

    /// Stops the task and deletes the mapping (waits for the delete, at
    /// most 10 s).
    pub async fn close(&self) {
        *lock(&self.shared.stopped) = true;
        self.shared.stop.notify_one();
        self.wait(Duration::from_secs(10)).await;
    }

    /// Waits (at most `max`) for the task to end: after the node closed
    /// (or [`PortMapper::close`]) and the mapping was deleted. True when
    /// it ended.
    pub async fn wait(&self, max: Duration) -> bool {
        let until = tokio::time::Instant::now() + max;
        loop {
            let done = self.shared.done.notified();
            if *lock(&self.shared.finished) {
                return true;
            }
            if tokio::time::timeout_at(until, done).await.is_err() {
                return *lock(&self.shared.finished);
            }
        }
    }
}

/// Tries the protocols in order; the first mapping wins.
async fn map_once(net: Network, port: u16, cfg: &PortMapConfig, renew: Option<&Mapped>) -> Option<Mapped> {
    // A renewal asks the protocol that granted it first.
    let mut order = cfg.protocols.clone();
    if let Some(m) = renew {
        order.retain(|p| *p != m.protocol);
        order.insert(0, m.protocol);
    }
    for p in order {
        let t0 = Instant::now();
        let r = match p {
            Protocol::Pcp => {
                let nonce = renew.and_then(|m| m.pcp_nonce).unwrap_or_else(rand::random);
                udp::pcp_map(net, port, REQUESTED_LIFETIME_S, nonce).await.map_err(|e| e.to_string())
            }
            Protocol::NatPmp => udp::natpmp_map(net, port, REQUESTED_LIFETIME_S).await.map_err(|e| e.to_string()),
            Protocol::Upnp => upnp::map(net, port, REQUESTED_LIFETIME_S).await,
        };
        match r {
            Ok(m) => {
                tracing::info!("portmap: {} mapped {} -> {}:{} for {} s ({:?})", p.name(), m.external, net.local, port, m.lifetime_s, t0.elapsed());
                return Some(m);
            }
            Err(e) => tracing::debug!("portmap: {} at {}: {e} ({:?})", p.name(), net.gateway, t0.elapsed()),
        }
    }
    None
}

async fn delete(m: &Mapped) {
    let r = match m.protocol {
        Protocol::Pcp => udp::pcp_delete(m.network, m.internal_port, m.pcp_nonce.unwrap_or_default()).await.map_err(|e| e.to_string()),
        Protocol::NatPmp => udp::natpmp_delete(m.network, m.internal_port).await.map_err(|e| e.to_string()),
        Protocol::Upnp => upnp::delete(m.network, m.external.port()).await,
    };
    match r {
        Ok(()) => tracing::info!("portmap: {} deleted {}", m.protocol.name(), m.external),
        Err(e) => tracing::warn!("portmap: {} delete of {}: {e}", m.protocol.name(), m.external),
    }
}

/// How often the task looks at the node and the network.
const POLL: Duration = Duration::from_millis(250);
const NETWORK_EVERY: Duration = Duration::from_secs(1);

async fn run(node: Weak<Node>, k: usize, cfg: PortMapConfig, shared: Arc<Shared>) {
    let mut net = None;
    let mut due = Instant::now();
    let mut net_checked = Instant::now() - NETWORK_EVERY;
    loop {
        let port = match node.upgrade() {
            Some(n) if !n.is_closed() && !*lock(&shared.stopped) => n.local_addr().ok().map(|a| a.port()),
            _ => break,
        };
        if net_checked.elapsed() >= NETWORK_EVERY {
            net_checked = Instant::now();
            let now = gateway::current();
            if now != net {
                // Another network: the old gateway's mapping is useless
                // (deleted best effort), ask the new one now.
                let old = lock(&shared.current).take();
                if let Some(old) = old {
                    tracing::info!("portmap: network changed ({:?} -> {:?})", net, now);
                    delete(&old).await;
                }
                net = now;
                due = Instant::now();
            }
        }
        if let (Some(n), Some(port), true) = (net, port, Instant::now() >= due) {
            let prev = lock(&shared.current).clone();
            let got = map_once(n, port, &cfg, prev.as_ref()).await;
            due = Instant::now() + got.as_ref().map_or(cfg.retry, |m| renew_after(m.lifetime_s));
            if let (Some(old), Some(new)) = (&prev, &got) {
                if old.protocol != new.protocol || old.external != new.external {
                    delete(old).await;
                }
            }
            // A failed renewal keeps the old mapping until it expires.
            let keep = got.or(prev.filter(|m| m.obtained.elapsed() < Duration::from_secs(m.lifetime_s as u64)));
            *lock(&shared.current) = keep;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shared.stop.notified() => {}
        }
    }
    let last = lock(&shared.current).take();
    if let Some(m) = last {
        delete(&m).await;
    }
    lock(&REGISTRY).remove(&k);
    *lock(&shared.finished) = true;
    shared.done.notify_waiters();
}
