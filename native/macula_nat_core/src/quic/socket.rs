//! quinn's view of the node socket ([`QuicSocket`]).
//!
//! quinn normally owns its socket and reads it itself. Here the node's
//! receive loop (`crate::socket::recv_loop`) owns reading (it must keep
//! answering STUN whether or not QUIC runs), so quinn gets an
//! [`AsyncUdpSocket`] whose receive side is the queue the loop fills
//! ([`Inbox`]) and whose send side writes straight to the socket, or through
//! a [`DatagramTunnel`] for addresses routed elsewhere ([`Routes`]).
//!
//! A dual-stack node has a second socket, for IPv6 (one per family): one
//! quinn endpoint serves both. quinn speaks IPv6 then (its local address is
//! the IPv6 socket's) and writes IPv4 peers in mapped form
//! (`::ffff:a.b.c.d`), as on a dual-stack socket; this file is the border:
//! IPv4 sources enter mapped, destinations leave unmapped on the socket of
//! their family, and everything above QUIC (routes, relay virtual
//! addresses, `Connection::remote_address`) sees plain IPv4. An IPv6-only
//! node is the same with no IPv4 socket.

use crate::lock::{lock, read, write};
use crate::socket::{current, mapped, unmapped, Counters, Entry, Inbox, NodeSocket, SocketSlot, POOL_BUFFERS, RECV_BATCH};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

/// Carries QUIC datagrams for some remote addresses instead of the raw
/// socket, e.g. a relay tunnel. Datagrams arriving through the tunnel are
/// handed back with [`crate::quic::QuicEndpoint::inject`], with the same
/// remote address the route was registered for.
pub trait DatagramTunnel: Send + Sync + fmt::Debug + 'static {
    /// Sends one datagram. Must not block: queue or drop (QUIC treats a
    /// drop as loss and retransmits).
    fn send(&self, dst: SocketAddr, datagram: &[u8]);

    /// Sends a GSO batch: `contents` cut into datagrams of `segment` bytes
    /// (the last may be shorter). A tunnel that can keep the batch together
    /// (one syscall for all of it) overrides this; by default each datagram
    /// goes through [`DatagramTunnel::send`].
    fn send_batch(&self, dst: SocketAddr, contents: &[u8], segment: usize) {
        for d in contents.chunks(segment.max(1)) {
            self.send(dst, d);
        }
    }
}

/// Where QUIC datagrams for a remote address go instead of straight to it.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// Through a tunnel (a relay session, a birthday-probing socket).
    Tunnel(Arc<dyn DatagramTunnel>),
    /// To another real address on the node socket: a relayed connection
    /// whose remote is a virtual address and that now has a punched path.
    /// QUIC keeps the address it knows; GSO batches stay whole.
    Via(SocketAddr),
}

/// Remote address → route. Consulted on every QUIC send, so the common
/// case (no routes) costs one atomic load.
#[derive(Default)]
pub(crate) struct Routes {
    any: AtomicBool,
    map: RwLock<HashMap<SocketAddr, Route>>,
}

impl Routes {
    pub(crate) fn set(&self, remote: SocketAddr, route: Option<Route>) {
        let mut map = write(&self.map);
        match route {
            Some(r) => map.insert(remote, r),
            None => map.remove(&remote),
        };
        self.any.store(!map.is_empty(), Ordering::Release);
    }

    fn get(&self, remote: &SocketAddr) -> Option<Route> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        read(&self.map).get(remote).cloned()
    }
}

/// quinn's view of the node socket.
pub(crate) struct QuicSocket {
    slot: SocketSlot,
    /// A dual-stack node's IPv6 socket.
    slot6: Option<SocketSlot>,
    /// quinn sees IPv6 addresses (IPv4 ones mapped): the local address is
    /// IPv6.
    v6: bool,
    inbox: Arc<Inbox>,
    routes: Arc<Routes>,
    counters: Arc<Counters>,
    local: SocketAddr,
    max_gso: usize,
    gro: usize,
    may_fragment: bool,
    /// Entries taken from the inbox and not yet handed to quinn. Only the
    /// endpoint driver touches it, so the lock is uncontended.
    scratch: Mutex<VecDeque<Entry>>,
}

impl QuicSocket {
    /// `six`: a dual-stack node's IPv6 socket and its slot.
    pub(crate) fn new(
        sock: &NodeSocket,
        slot: SocketSlot,
        six: Option<(&NodeSocket, SocketSlot)>,
        inbox: Arc<Inbox>,
        routes: Arc<Routes>,
        counters: Arc<Counters>,
    ) -> io::Result<QuicSocket> {
        let local = match &six {
            Some((s6, _)) => s6.io.local_addr()?,
            None => sock.io.local_addr()?,
        };
        let (mut max_gso, mut gro, mut may_fragment) = (sock.state.max_gso_segments(), sock.state.gro_segments(), sock.state.may_fragment());
        if let Some((s6, _)) = &six {
            max_gso = max_gso.min(s6.state.max_gso_segments());
            gro = gro.max(s6.state.gro_segments());
            may_fragment |= s6.state.may_fragment();
        }
        Ok(QuicSocket {
            local,
            v6: local.is_ipv6(),
            max_gso,
            gro,
            may_fragment,
            slot6: six.map(|(_, s)| s),
            slot,
            inbox,
            routes,
            counters,
            scratch: Mutex::new(VecDeque::with_capacity(RECV_BATCH * POOL_BUFFERS)),
        })
    }

    fn send_tunnelled(tunnel: &dyn DatagramTunnel, t: &Transmit<'_>) {
        match t.segment_size {
            Some(seg) if seg < t.contents.len() => tunnel.send_batch(t.destination, t.contents, seg),
            _ => tunnel.send(t.destination, t.contents),
        }
    }
}

impl fmt::Debug for QuicSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicSocket").field("local", &self.local).finish_non_exhaustive()
    }
}

impl Drop for QuicSocket {
    fn drop(&mut self) {
        self.inbox.set_attached(false);
    }
}

impl AsyncUdpSocket for QuicSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller { slot: self.slot.clone(), slot6: self.slot6.clone(), fut: None })
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let dst = unmapped(t.destination);
        let plain = Transmit { destination: dst, ..*t };
        let dst = match self.routes.get(&dst) {
            None => dst,
            Some(Route::Tunnel(tunnel)) => {
                Self::send_tunnelled(tunnel.as_ref(), &plain);
                return Ok(());
            }
            Some(Route::Via(real)) => real,
        };
        // The source IP quinn echoes belongs to the socket it came in on.
        let src_ip = t.src_ip.map(|ip| unmapped(SocketAddr::new(ip, 0)).ip()).filter(|ip| ip.is_ipv4() == dst.is_ipv4());
        let t = &Transmit { destination: dst, src_ip, ..*t };
        let slot = match &self.slot6 {
            Some(s6) if dst.is_ipv6() => s6,
            _ => &self.slot,
        };
        // Node closed: the datagram is lost as on a dead link; the endpoint
        // is being closed anyway.
        let Some(sock) = current(slot) else { return Ok(()) };
        sock.try_send(t)?;
        let segs = match t.segment_size {
            Some(s) if s > 0 => t.contents.len().div_ceil(s),
            _ => 1,
        };
        self.counters.datagrams_out.fetch_add(segs as u64, Ordering::Relaxed);
        self.counters.bytes_out.fetch_add(t.contents.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(&self, cx: &mut Context<'_>, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Poll<io::Result<usize>> {
        let mut scratch = lock(&self.scratch);
        loop {
            if scratch.is_empty() && self.inbox.poll_take_all(cx, &mut scratch).is_pending() {
                return Poll::Pending;
            }
            let mut n = 0;
            while n < bufs.len().min(meta.len()) {
                let Some(e) = scratch.pop_front() else { break };
                let len = e.data.len();
                let Some(dst) = bufs[n].get_mut(..len) else {
                    // Larger than quinn's buffer: cannot be a packet it
                    // accepts anyway.
                    self.inbox.count_dropped(1);
                    continue;
                };
                dst.copy_from_slice(&e.data);
                meta[n] = RecvMeta { len, ..e.meta };
                if self.v6 {
                    meta[n].addr = mapped(meta[n].addr);
                    meta[n].dst_ip = meta[n].dst_ip.map(|ip| mapped(SocketAddr::new(ip, 0)).ip());
                }
                n += 1;
            }
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        self.max_gso
    }

    fn max_receive_segments(&self) -> usize {
        self.gro
    }

    fn may_fragment(&self) -> bool {
        self.may_fragment
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Wakes quinn when the node socket is writable again after `WouldBlock`
/// (either socket of a dual-stack node: quinn does not say which blocked).
struct WritablePoller {
    slot: SocketSlot,
    slot6: Option<SocketSlot>,
    fut: Option<WritableFuture>,
}

impl fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritablePoller").finish_non_exhaustive()
    }
}

impl UdpPoller for WritablePoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let fut = match &mut this.fut {
            Some(f) => f,
            None => {
                // Closed node: report writable; the send is then dropped.
                let Some(sock) = current(&this.slot) else { return Poll::Ready(Ok(())) };
                let sock6 = this.slot6.as_ref().and_then(current);
                this.fut.insert(Box::pin(async move {
                    match sock6 {
                        None => sock.io.writable().await,
                        Some(s6) => tokio::select! {
                            r = sock.io.writable() => r,
                            r = s6.io.writable() => r,
                        },
                    }
                }))
            }
        };
        let res = fut.as_mut().poll(cx);
        if res.is_ready() {
            this.fut = None;
        }
        res
    }
}

