//! What the node's receive loop does with relay frames and with datagrams
//! of relayed connections that moved to a direct path.
//!
//! * A frame from a relay we hold a session with is that session's QUIC
//!   packet: it enters QUIC as if it came from the session's *virtual*
//!   address ([`VirtualAddr`]), which is the remote address QUIC
//!   knows for the connection.
//! * Any other frame goes to this node's relay server, if it runs one.
//! * Aliases: a relayed connection that got a punched path keeps its
//!   virtual remote address in QUIC; its packets now arrive from the real
//!   address, which is rewritten to the virtual one (a QUIC client drops
//!   packets from an address it does not know; this way it never sees the
//!   change).
//!
//! * Follows: a connection-reversal dialer towards a listener with PD
//!   mapping dials the listener's predicted port, but the listener's
//!   answer leaves through a new mapping, from another port of the same IP.
//!   The dialer registers the dialled address ([`RelayPlane::expect_follow`]);
//!   the first QUIC datagram from that IP and another port becomes an alias
//!   of it. The dialer keeps sending to the dialled port (the listener's
//!   filter admits it there), so the path has a different public port in
//!   each direction and QUIC never sees it.
//!
//! Every lookup is behind an atomic "anything at all" flag, so a node
//! without relays pays one load per datagram.

use macula_nat_proto::relay::frame;
use macula_nat_proto::relay::msg::NodeId;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use super::FamilySockets;
use crate::lock::{read, write};

/// The relay server side of a node: forwards frames it is not the end of.
pub(crate) trait FrameForwarder: Send + Sync + 'static {
    /// `run`: one frame, or consecutive frames of `stride` bytes (the last
    /// may be shorter) from one GRO batch, all from `from`.
    fn forward(&self, socks: &FamilySockets, from: SocketAddr, run: &[u8], stride: usize);
}

#[derive(Default)]
pub(crate) struct RelayPlane {
    any_session: AtomicBool,
    /// (relay address, session) -> (virtual address, relay's node key).
    /// The address is a [`VirtualAddr`], or, for a direct connection failed
    /// over to a relay, the real address its QUIC already uses.
    sessions: RwLock<HashMap<(SocketAddr, u64), (SocketAddr, NodeId)>>,
    server: RwLock<Option<Arc<dyn FrameForwarder>>>,
    any_alias: AtomicBool,
    aliases: RwLock<HashMap<SocketAddr, SocketAddr>>,
    any_follow: AtomicBool,
    /// Listener IP -> (dialled address, the port it answered from once seen).
    follows: RwLock<HashMap<IpAddr, (SocketAddr, Option<SocketAddr>)>>,
    /// Payload bytes this node sent into relay sessions (what the relay
    /// counts for them, for checking its accounting).
    pub(crate) tunnelled_out: std::sync::atomic::AtomicU64,
}

impl RelayPlane {
    /// `Some(virtual)` when the frame belongs to one of our sessions (its
    /// payload is QUIC for us); `None`: it is for [`RelayPlane::forward`].
    pub(crate) fn ours(&self, from: SocketAddr, data: &[u8]) -> Option<SocketAddr> {
        if !self.any_session.load(Ordering::Acquire) {
            return None;
        }
        let s = frame::session_of(data)?;
        read(&self.sessions).get(&(from, s)).map(|e| e.0)
    }

    /// Hands frames that are not ours to this node's relay server, if it
    /// runs one (dropped otherwise). Frames from one GRO batch come as one
    /// run, so the server can send them on as one GSO batch.
    pub(crate) fn forward(&self, socks: &FamilySockets, from: SocketAddr, run: &[u8], stride: usize) {
        let server = read(&self.server).clone();
        if let Some(server) = server {
            server.forward(socks, from, run, stride);
        }
    }

    /// The virtual address to report for a datagram from `from`.
    pub(crate) fn alias_of(&self, from: &SocketAddr) -> Option<SocketAddr> {
        if !self.any_alias.load(Ordering::Acquire) {
            return None;
        }
        read(&self.aliases).get(from).copied()
    }

    /// For a QUIC datagram from `from` without an alias: when a follow waits
    /// for `from`'s IP and `from` is not the dialled address itself, `from`
    /// becomes an alias of the dialled address, which is returned.
    pub(crate) fn follow(&self, from: &SocketAddr) -> Option<SocketAddr> {
        let (target, seen) = *read(&self.follows).get(&from.ip())?;
        if target == *from || seen.is_some() {
            return None;
        }
        let mut m = write(&self.follows);
        let e = m.get_mut(&from.ip()).filter(|e| e.0 == target && e.1.is_none())?;
        e.1 = Some(*from);
        drop(m);
        self.set_alias(*from, Some(target));
        Some(target)
    }

    /// Whether any follow waits (one load: the receive loop asks first).
    pub(crate) fn following(&self) -> bool {
        self.any_follow.load(Ordering::Acquire)
    }

    /// Starts a follow for a dial to `target` (see the module docs); `false`
    /// if one for that IP is already running.
    pub(crate) fn expect_follow(&self, target: SocketAddr) -> bool {
        let mut m = write(&self.follows);
        if m.contains_key(&target.ip()) {
            return false;
        }
        m.insert(target.ip(), (target, None));
        self.any_follow.store(true, Ordering::Release);
        true
    }

    /// Ends the follow for `target` and the alias it made.
    pub(crate) fn end_follow(&self, target: SocketAddr) {
        let mut m = write(&self.follows);
        let seen = match m.get(&target.ip()) {
            Some((t, seen)) if *t == target => *seen,
            _ => return,
        };
        m.remove(&target.ip());
        self.any_follow.store(!m.is_empty(), Ordering::Release);
        drop(m);
        if let Some(real) = seen {
            self.set_alias(real, None);
        }
    }

    /// The relay whose session carries the virtual address `virt` now.
    pub(crate) fn relay_of(&self, virt: &SocketAddr) -> Option<NodeId> {
        if !self.any_session.load(Ordering::Acquire) {
            return None;
        }
        read(&self.sessions).values().find(|(v, _)| v == virt).map(|(_, id)| *id)
    }

    pub(crate) fn set_session(&self, relay: SocketAddr, session: u64, virt: Option<(SocketAddr, NodeId)>) {
        let mut m = write(&self.sessions);
        match virt {
            Some(v) => m.insert((relay, session), v),
            None => m.remove(&(relay, session)),
        };
        self.any_session.store(!m.is_empty(), Ordering::Release);
    }

    pub(crate) fn set_alias(&self, real: SocketAddr, virt: Option<SocketAddr>) {
        let mut m = write(&self.aliases);
        match virt {
            Some(v) => m.insert(real, v),
            None => m.remove(&real),
        };
        self.any_alias.store(!m.is_empty(), Ordering::Release);
    }

    /// Whether `real` is already the alias of some connection.
    pub(crate) fn has_alias(&self, real: &SocketAddr) -> bool {
        read(&self.aliases).contains_key(real)
    }

    pub(crate) fn set_server(&self, server: Option<Arc<dyn FrameForwarder>>) {
        *write(&self.server) = server;
    }

    /// Removes `server`, unless another one took its place since.
    pub(crate) fn clear_server_if(&self, server: &Arc<dyn FrameForwarder>) {
        let mut s = write(&self.server);
        if s.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, server)) {
            *s = None;
        }
    }
}

static NEXT_VIRTUAL: AtomicU32 = AtomicU32::new(1);

/// The address QUIC knows a relayed connection's peer by: 240.0.0.0/8
/// (reserved, "future use", never routed), so no real peer can have it and
/// a datagram sent there by mistake goes nowhere. Typed, so a real address
/// cannot be installed as a session's, nor a virtual one dialled as real.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VirtualAddr(SocketAddr);

impl VirtualAddr {
    /// A fresh one, for a new relayed connection.
    pub fn fresh() -> VirtualAddr {
        let n = NEXT_VIRTUAL.fetch_add(1, Ordering::Relaxed) & 0x00FF_FFFF;
        let [_, b, c, d] = n.to_be_bytes();
        VirtualAddr(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(240, b, c, d)), 9))
    }

    /// `a` as a virtual address, if it is one (a connection on a relayed path).
    pub fn of(a: SocketAddr) -> Option<VirtualAddr> {
        matches!(a.ip(), IpAddr::V4(ip) if ip.octets()[0] == 240).then_some(VirtualAddr(a))
    }

    /// The address as QUIC sees it.
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl From<VirtualAddr> for SocketAddr {
    fn from(v: VirtualAddr) -> SocketAddr {
        v.0
    }
}

/// A fresh [`VirtualAddr`].
pub fn virtual_addr() -> VirtualAddr {
    VirtualAddr::fresh()
}

/// Whether `a` is one of our virtual addresses (a relayed path).
pub fn is_virtual(a: &SocketAddr) -> bool {
    VirtualAddr::of(*a).is_some()
}
