//! What the node's receive loop does with relay frames and with datagrams
//! of relayed connections that moved to a direct path.
//!
//! * A frame from a relay we hold a session with is that session's QUIC
//!   packet: it enters QUIC as if it came from the session's *virtual*
//!   address (see [`virtual_addr`]), which is the remote address QUIC
//!   knows for the connection.
//! * Any other frame goes to this node's relay server, if it runs one.
//! * Aliases: a relayed connection that got a punched path keeps its
//!   virtual remote address in QUIC; its packets now arrive from the real
//!   address, which is rewritten to the virtual one (a QUIC client drops
//!   packets from an address it does not know; this way it never sees the
//!   change).
//!
//! Every lookup is behind an atomic "anything at all" flag, so a node
//! without relays pays one load per datagram.

use macula_nat_proto::relay::frame;
use macula_nat_proto::relay::msg::NodeId;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use tokio::net::UdpSocket;

/// The relay server side of a node: forwards frames it is not the end of.
pub(crate) trait FrameForwarder: Send + Sync + 'static {
    fn forward(&self, sock: &UdpSocket, from: SocketAddr, frame: &[u8]);
}

#[derive(Default)]
pub(crate) struct RelayPlane {
    any_session: AtomicBool,
    /// (relay address, session) -> (virtual address, relay's node key).
    sessions: RwLock<HashMap<(SocketAddr, u64), (SocketAddr, NodeId)>>,
    server: RwLock<Option<Arc<dyn FrameForwarder>>>,
    any_alias: AtomicBool,
    aliases: RwLock<HashMap<SocketAddr, SocketAddr>>,
    /// Payload bytes this node sent into relay sessions (what the relay
    /// counts for them, for checking its accounting).
    pub(crate) tunnelled_out: std::sync::atomic::AtomicU64,
}

impl RelayPlane {
    /// Handles a frame: `Some(virtual)` when its payload is QUIC for us.
    pub(crate) fn on_frame(&self, sock: &UdpSocket, from: SocketAddr, data: &[u8]) -> Option<SocketAddr> {
        if self.any_session.load(Ordering::Acquire) {
            if let Some(s) = frame::session_of(data) {
                if let Some(v) = self.sessions.read().ok().and_then(|m| m.get(&(from, s)).map(|e| e.0)) {
                    return Some(v);
                }
            }
        }
        let server = self.server.read().ok().and_then(|s| s.clone());
        if let Some(server) = server {
            server.forward(sock, from, data);
        }
        None
    }

    /// The virtual address to report for a datagram from `from`.
    pub(crate) fn alias_of(&self, from: &SocketAddr) -> Option<SocketAddr> {
        if !self.any_alias.load(Ordering::Acquire) {
            return None;
        }
        self.aliases.read().ok()?.get(from).copied()
    }

    /// The relay whose session carries the virtual address `virt` now.
    pub(crate) fn relay_of(&self, virt: &SocketAddr) -> Option<NodeId> {
        if !self.any_session.load(Ordering::Acquire) {
            return None;
        }
        self.sessions.read().ok()?.values().find(|(v, _)| v == virt).map(|(_, id)| *id)
    }

    pub(crate) fn set_session(&self, relay: SocketAddr, session: u64, virt: Option<(SocketAddr, NodeId)>) {
        let Ok(mut m) = self.sessions.write() else { return };
        match virt {
            Some(v) => m.insert((relay, session), v),
            None => m.remove(&(relay, session)),
        };
        self.any_session.store(!m.is_empty(), Ordering::Release);
    }

    pub(crate) fn set_alias(&self, real: SocketAddr, virt: Option<SocketAddr>) {
        let Ok(mut m) = self.aliases.write() else { return };
        match virt {
            Some(v) => m.insert(real, v),
            None => m.remove(&real),
        };
        self.any_alias.store(!m.is_empty(), Ordering::Release);
    }

    /// Whether `real` is already the alias of some connection.
    pub(crate) fn has_alias(&self, real: &SocketAddr) -> bool {
        self.aliases.read().map(|m| m.contains_key(real)).unwrap_or(true)
    }

    pub(crate) fn set_server(&self, server: Option<Arc<dyn FrameForwarder>>) {
        if let Ok(mut s) = self.server.write() {
            *s = server;
        }
    }

    /// Removes `server`, unless another one took its place since.
    pub(crate) fn clear_server_if(&self, server: &Arc<dyn FrameForwarder>) {
        if let Ok(mut s) = self.server.write() {
            if s.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, server)) {
                *s = None;
            }
        }
    }
}

static NEXT_VIRTUAL: AtomicU32 = AtomicU32::new(1);

/// A fresh virtual address for a relayed connection: 240.0.0.0/8 (reserved,
/// "future use", never routed), so no real peer can have it and a datagram
/// sent there by mistake goes nowhere.
pub fn virtual_addr() -> SocketAddr {
    let n = NEXT_VIRTUAL.fetch_add(1, Ordering::Relaxed) & 0x00FF_FFFF;
    let [_, b, c, d] = n.to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(240, b, c, d)), 9)
}

/// Whether `a` is one of our virtual addresses (a relayed path).
pub fn is_virtual(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V4(ip) if ip.octets()[0] == 240)
}
