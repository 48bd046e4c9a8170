//! The BitTorrent mainline DHT as a backend: BEP 44 signed mutable items.
//!
//! The node's ed25519 key is the BEP 44 key and there is no salt, so the
//! DHT target is `sha1(node_id)` and any peer that knows a NodeId can look
//! the record up without knowing anything else. `seq` is BEP 44's `seq`.
//!
//! The `mainline` crate runs one actor thread and one UDP socket of its own
//! per [`MainlineDht`] (it does not share the node's socket): DHT traffic
//! goes out from a different port than the node's hole-punching traffic.
//! Its async API only awaits channels to that thread, so nothing here
//! blocks a runtime worker; the one blocking step (binding the socket and
//! resolving bootstrap names) runs on tokio's blocking pool.

use super::{BoxFuture, DhtBackend, DhtError, MAX_VALUE};
use crate::identity::{Identity, NodeId};
use crate::runtime;
use futures_core::Stream;
use ::mainline::async_dht::AsyncDht;
use ::mainline::errors::{ConcurrencyError, PutMutableError, PutQueryError};
use ::mainline::{Dht, MutableItem};
use std::future::{poll_fn, Future};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::pin::Pin;
use std::time::Duration;
use zeroize::Zeroize;

/// How many request timeouts one put or get may take before it reports
/// `Timeout`. A lookup is a few rounds of requests, each bounded by the
/// request timeout, so a handful of them is a generous upper bound that
/// still answers the caller in bounded time.
const DEADLINE_IN_REQUEST_TIMEOUTS: u32 = 5;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MainlineConfig {
    /// Bootstrap nodes as `"ip:port"` (host names resolve too). Empty means
    /// the crate's default public bootstrap nodes. When every entry is a
    /// loopback address the DHT socket binds 127.0.0.1 instead of 0.0.0.0:
    /// a node that can only ever reach loopback peers has no reason to
    /// listen on other interfaces.
    pub bootstrap: Vec<String>,
    /// UDP port of the DHT socket; `None` is an OS-chosen port (not
    /// mainline's habit of trying 6881 first, so two VMs on one host behave
    /// alike).
    pub port: Option<u16>,
    /// Answer other nodes' requests and store their values from the start.
    /// `false` is mainline's adaptive mode: a client that becomes a server
    /// after 15 minutes if it turns out to be publicly reachable.
    pub server_mode: bool,
    /// Per-request timeout; `None` is mainline's default (2 s). A put or a
    /// get gives up with `Timeout` after 5 of these.
    pub request_timeout: Option<Duration>,
}

/// A handle on one mainline DHT node. Clones share the node; it stops (its
/// thread exits and its socket closes) when the last clone is dropped and
/// no put or get is still running.
#[derive(Debug, Clone)]
pub struct MainlineDht {
    dht: AsyncDht,
    local_addr: SocketAddrV4,
    deadline: Duration,
}

impl MainlineDht {
    /// Binds the DHT socket and starts the node. Returns at once without
    /// waiting for the node to bootstrap (lookups made before that still
    /// work, they start from the bootstrap nodes); await
    /// [`Self::bootstrapped`] to wait for it. The returned future needs no
    /// particular runtime: the work runs on the crate's runtime.
    pub fn start(cfg: MainlineConfig) -> BoxFuture<Result<MainlineDht, DhtError>> {
        let task = runtime::handle().spawn_blocking(move || start_blocking(cfg));
        Box::pin(async move { task.await.unwrap_or(Err(DhtError::Closed)) })
    }

    /// Address of this node's own UDP socket.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// Resolves once the node has looked itself up: `true` if some node
    /// answered (the routing table is no longer empty).
    pub fn bootstrapped(&self) -> BoxFuture<bool> {
        let dht = self.dht.clone();
        let done = self.run(async move { Ok(dht.bootstrapped().await) });
        Box::pin(async move { done.await.unwrap_or(false) })
    }

    /// Runs one DHT operation on the crate's runtime, bounded by the
    /// deadline. On the runtime because mainline's async API panics when its
    /// actor thread is gone: there the panic becomes a `JoinError`, reported
    /// as `Closed`, instead of unwinding through the caller. It also gives
    /// the timeout a timer whatever executor polls the returned future.
    fn run<T, F>(&self, op: F) -> BoxFuture<Result<T, DhtError>>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, DhtError>> + Send + 'static,
    {
        let deadline = self.deadline;
        let task = runtime::spawn(async move {
            tokio::time::timeout(deadline, op).await.unwrap_or(Err(DhtError::Timeout))
        });
        Box::pin(async move { task.await.unwrap_or(Err(DhtError::Closed)) })
    }
}

impl DhtBackend for MainlineDht {
    fn put(&self, signer: &Identity, seq: u64, value: Vec<u8>) -> BoxFuture<Result<(), DhtError>> {
        if value.len() > MAX_VALUE {
            return ready(Err(DhtError::TooLarge(value.len())));
        }
        // BEP 44's seq is a signed 64-bit integer.
        let Ok(seq) = i64::try_from(seq) else {
            return ready(Err(DhtError::Backend(format!("seq {seq} is above the BEP 44 maximum"))));
        };
        let key = bep44_key(signer);
        let dht = self.dht.clone();
        self.run(async move {
            let item = MutableItem::new(key, &value, seq, None);
            match dht.put_mutable(item, None).await {
                Ok(_) => Ok(()),
                Err(e) => put_outcome(e),
            }
        })
    }

    fn get(&self, node_id: NodeId) -> BoxFuture<Result<Option<Vec<u8>>, DhtError>> {
        let dht = self.dht.clone();
        self.run(async move {
            let target = MutableItem::target_from_key(node_id.as_bytes(), None);
            // Both requests ride on one lookup (mainline joins requests for
            // a target whose query is still running); the responders tell
            // "nobody has it" (Ok(None)) from "nobody answered" (Timeout).
            let (item, responders) =
                tokio::join!(most_recent(&dht, &node_id), dht.get_closest_nodes(target));
            match item {
                Some(item) => Ok(Some(item.value().to_vec())),
                None if responders.is_empty() => Err(DhtError::Timeout),
                None => Ok(None),
            }
        })
    }

    fn name(&self) -> &'static str {
        "mainline"
    }
}

/// The most recent item signed by `node_id`. mainline checks each item's
/// signature against the key the item carries, but not that this key is
/// the one asked for, so a lying node could answer with an item of its
/// own key; those are dropped here before they can outrank the real one.
/// Ties on `seq` go to the larger value, as in mainline, so every reader
/// picks the same item.
async fn most_recent(dht: &AsyncDht, node_id: &NodeId) -> Option<MutableItem> {
    let mut items = dht.get_mutable(node_id.as_bytes(), None, None);
    let mut best: Option<MutableItem> = None;
    while let Some(item) = poll_fn(|cx| Pin::new(&mut items).poll_next(cx)).await {
        if item.key() != node_id.as_bytes() {
            continue;
        }
        let newer = match &best {
            None => true,
            Some(b) => (item.seq(), item.value()) > (b.seq(), b.value()),
        };
        if newer {
            best = Some(item);
        }
    }
    best
}

/// Maps a failed put. A rejection for an older `seq` is a success: an older
/// value never replaces a newer one, exactly as in the other backends,
/// whose put is then a no-op too.
fn put_outcome(e: PutMutableError) -> Result<(), DhtError> {
    match e {
        PutMutableError::Concurrency(ConcurrencyError::NotMostRecent) => Ok(()),
        // Nobody answered the lookup or the stores: "no answer in time".
        PutMutableError::Query(PutQueryError::Timeout | PutQueryError::NoClosestNodes) => Err(DhtError::Timeout),
        PutMutableError::Concurrency(ConcurrencyError::ConflictRisk) => {
            Err(DhtError::Backend("another put for this key is still in flight".into()))
        }
        other => Err(DhtError::Backend(other.to_string())),
    }
}

/// mainline depends on a newer ed25519-dalek than the identity module, so
/// the key crosses over as its 32-byte seed (wiped afterwards).
fn bep44_key(id: &Identity) -> ::mainline::SigningKey {
    let mut seed = id.signing_key().to_bytes();
    let key = ::mainline::SigningKey::from_bytes(&seed);
    seed.zeroize();
    key
}

fn start_blocking(cfg: MainlineConfig) -> Result<MainlineDht, DhtError> {
    let bootstrap = resolve_bootstrap(&cfg.bootstrap)?;
    let mut config = ::mainline::Config::default();
    if bootstrap.iter().all(|a| a.ip().is_loopback()) && !bootstrap.is_empty() {
        config.bind_address = Some(Ipv4Addr::LOCALHOST);
    }
    // Empty means the public default, which mainline spells `None`.
    config.bootstrap = if bootstrap.is_empty() { None } else { Some(bootstrap) };
    config.port = Some(cfg.port.unwrap_or(0));
    config.server_mode = cfg.server_mode;
    if let Some(t) = cfg.request_timeout {
        config.request_timeout = t;
    }
    let deadline = config.request_timeout.saturating_mul(DEADLINE_IN_REQUEST_TIMEOUTS);
    let dht = Dht::new(config).map_err(|e| DhtError::Backend(format!("mainline socket: {e}")))?;
    let local_addr = dht.info().local_addr();
    Ok(MainlineDht { dht: dht.as_async(), local_addr, deadline })
}

/// Resolves every entry to its IPv4 addresses (mainline's socket is
/// IPv4-only). An entry that yields none is an error rather than skipped:
/// a silently shorter list could leave a private swarm's node isolated.
fn resolve_bootstrap(entries: &[String]) -> Result<Vec<SocketAddrV4>, DhtError> {
    let mut out = Vec::new();
    for entry in entries {
        let bad = |why: String| DhtError::Backend(format!("bootstrap {entry:?}: {why}"));
        let before = out.len();
        let addrs = entry.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
        out.extend(addrs.filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        }));
        if out.len() == before {
            return Err(bad("no IPv4 address".into()));
        }
    }
    Ok(out)
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<T> {
    Box::pin(std::future::ready(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bep44_key_is_the_node_key() {
        let id = Identity::generate();
        assert_eq!(bep44_key(&id).verifying_key().to_bytes(), id.node_id().to_bytes());
    }

    #[test]
    fn bootstrap_entries_resolve_or_fail() {
        let ok = resolve_bootstrap(&["127.0.0.1:6881".into(), "10.0.0.1:1".into()]).unwrap();
        assert_eq!(ok, vec!["127.0.0.1:6881".parse().unwrap(), "10.0.0.1:1".parse().unwrap()]);
        assert!(matches!(resolve_bootstrap(&["127.0.0.1".into()]), Err(DhtError::Backend(_))));
        assert!(matches!(resolve_bootstrap(&["[::1]:6881".into()]), Err(DhtError::Backend(_))));
        assert_eq!(resolve_bootstrap(&[]).unwrap(), vec![]);
    }

    #[test]
    fn older_seq_rejection_is_a_no_op() {
        assert_eq!(put_outcome(PutMutableError::Concurrency(ConcurrencyError::NotMostRecent)), Ok(()));
        assert_eq!(put_outcome(PutMutableError::Query(PutQueryError::Timeout)), Err(DhtError::Timeout));
    }
}
