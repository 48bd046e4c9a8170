//! Black-hole failover: a direct or punched connection whose path goes
//! silent (`macula_nat_proto::quality`) moves to a relay, and back to a
//! direct path when a re-punch succeeds, without QUIC noticing on our side
//! and without losing or reordering a message (QUIC retransmits what the
//! black hole ate, over the new path).
//!
//! Only the QUIC *dialler* of a connection moves it. A QUIC server follows
//! a client whose address changes (quinn's server-side migration, after
//! path validation), but a client drops packets from an address it does
//! not know. So the dialler opens a relay session to the peer whose QUIC
//! datagrams use the address its QUIC already has for the peer (the relay
//! link routes them; see `RelayLink::open`): nothing changes for its QUIC.
//! The peer receives them from a fresh virtual address of the session it
//! accepts, and its QUIC migrates there; its answers go back through that
//! session. Back to direct: the dialler drops the route, its packets leave
//! from its real address again, and the peer's QUIC migrates back; the
//! relay session is then closed.
//!
//! The server side's method follows its QUIC's remote address (a virtual
//! one is a relay session).
//!
//! The relay: one where this node holds a reservation and the peer can
//! take the session (its reservation is its consent); the deployment's
//! usual case of a public node that relays for all of its nodes.

use super::inner::Inner;
use super::opts::ConnectOpts;
use super::relayed::upgrade_once;
use crate::quic::Method;
use crate::relay::{RelayLink, RelayPath};
use crate::Connection;
use macula_nat_proto::signal::NodeId;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Re-punch attempts after a failover: first after this, doubling up to
/// [`REPUNCH_MAX`].
const REPUNCH_FIRST: Duration = Duration::from_secs(2);
const REPUNCH_MAX: Duration = Duration::from_secs(30);

/// Looks after `conn` (direct or punched, to `peer`) until it closes.
pub(super) fn look_after_direct(inner: &Arc<Inner>, conn: &Connection, peer: NodeId, opts: &ConnectOpts) {
    if conn.method() == Method::Relayed {
        return;
    }
    conn.monitor_quality();
    if conn.is_dialler() {
        crate::runtime::spawn(watch(Arc::downgrade(inner), conn.clone(), peer, opts.clone()));
    } else {
        crate::runtime::spawn(follow(conn.clone(), Arc::downgrade(&inner.node)));
    }
}

/// The server side: its QUIC follows the dialler onto the relay session
/// (a virtual address) and back; the method says so. A silent path may be
/// our own router renumbered (the dialler still sends to the old address):
/// we ask the rendezvous where it sees us (see `crate::netchange`), so that
/// the dialler's re-punch finds us at the new address.
async fn follow(conn: Connection, node: Weak<crate::Node>) {
    let direct = conn.method();
    let mut tick = tokio::time::interval(macula_nat_proto::quality::SAMPLE_EVERY);
    let mut quality = conn.watch_quality();
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            _ = tick.tick() => {
                let m = if crate::relay::is_virtual(&conn.remote_address()) { Method::Relayed } else { direct };
                conn.set_method(m);
            }
            changed = quality.changed() => {
                if changed.is_err() {
                    return;
                }
                let silent = matches!(*quality.borrow_and_update(), Some(macula_nat_proto::quality::Degraded::Silent { .. }));
                if let (true, Some(node)) = (silent, node.upgrade()) {
                    node.reflexive().suspect();
                }
            }
        }
    }
}

async fn watch(weak: Weak<Inner>, conn: Connection, peer: NodeId, opts: ConnectOpts) {
    let mut quality = conn.watch_quality();
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            changed = quality.changed() => {
                if changed.is_err() {
                    return;
                }
                let silent = matches!(*quality.borrow_and_update(), Some(macula_nat_proto::quality::Degraded::Silent { .. }));
                if !silent {
                    continue;
                }
                let Some(inner) = weak.upgrade() else { return };
                // Our own router may have been renumbered (see `follow`).
                inner.node.reflexive().suspect();
                let direct = conn.method();
                let r = conn.remote_address();
                let Some((link, path)) = move_to_relay(&inner, peer, r).await else {
                    tracing::debug!("failover: no relay took a session to the peer; the connection waits");
                    continue;
                };
                conn.set_method(Method::Relayed);
                tracing::debug!("failover: silent path to {r} moved to relay {}", path.relay_addr);
                drop(inner);
                if !back_to_direct(&weak, &conn, peer, &opts, r, direct, &link, path).await {
                    return;
                }
                quality.mark_unchanged();
            }
        }
    }
}

/// A session to `peer` at one of our relays, carrying `r`'s datagrams.
async fn move_to_relay(inner: &Arc<Inner>, peer: NodeId, r: SocketAddr) -> Option<(RelayLink, RelayPath)> {
    for (id, addr) in inner.relays.reserved() {
        let Ok(link) = inner.relays.link_to(id, addr).await else { continue };
        match link.open(peer, r).await {
            Ok(path) => return Some((link, path)),
            Err(e) => tracing::debug!("failover: relay {addr}: {e}"),
        }
    }
    None
}

/// Re-punches until one works (then `true`: the connection is direct
/// again) or the connection closes (`false`).
#[allow(clippy::too_many_arguments)]
async fn back_to_direct(
    weak: &Weak<Inner>,
    conn: &Connection,
    peer: NodeId,
    opts: &ConnectOpts,
    r: SocketAddr,
    method: Method,
    link: &RelayLink,
    path: RelayPath,
) -> bool {
    let mut wait = REPUNCH_FIRST;
    loop {
        tokio::select! {
            _ = conn.closed() => {
                if let Some(inner) = weak.upgrade() {
                    if let Ok(q) = inner.node.quic() {
                        q.clear_route(r);
                    }
                }
                link.close_session(path.session);
                return false;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(inner) = weak.upgrade() else { return false };
        match upgrade_once(&inner, peer, opts).await {
            Ok(real) => {
                let Ok(q) = inner.node.quic() else { return false };
                if real == r {
                    q.clear_route(r);
                } else {
                    // The peer's mapping moved: QUIC keeps `r`, the wire
                    // uses `real` (as a relayed connection's upgrade does),
                    // until the connection closes.
                    inner.node.relay_plane().set_alias(real, Some(r));
                    q.route_to(r, real);
                    let (weak, conn) = (weak.clone(), conn.clone());
                    crate::runtime::spawn(async move {
                        conn.closed().await;
                        if let Some(inner) = weak.upgrade() {
                            inner.node.relay_plane().set_alias(real, None);
                            if let Ok(q) = inner.node.quic() {
                                q.clear_route(r);
                            }
                        }
                    });
                }
                conn.set_method(method);
                tracing::debug!("failover: back to a direct path at {real}");
                // The peer may still answer through the relay until its
                // QUIC has followed us back.
                let link = link.clone();
                crate::runtime::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    link.close_session(path.session);
                });
                return true;
            }
            Err(e) => tracing::debug!("failover: re-punch failed: {e}"),
        }
        wait = (wait * 2).min(REPUNCH_MAX);
    }
}
