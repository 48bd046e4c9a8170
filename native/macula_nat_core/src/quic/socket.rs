//! The node's one UDP socket, shared by STUN and QUIC.
//!
//! quinn normally owns its socket and reads it itself. Here the node's
//! receive loop owns reading (it must keep answering STUN whether or not QUIC
//! runs), so quinn gets an [`AsyncUdpSocket`] whose receive side is a queue
//! the loop fills ([`Inbox`]) and whose send side writes straight to the
//! socket, or through a [`DatagramTunnel`] for addresses routed elsewhere.
//!
//! Cost model: the loop reads up to [`RECV_BATCH`] messages per `recvmmsg`
//! (each possibly a GRO batch of many datagrams) into one pooled buffer; the
//! QUIC datagrams of that batch enter the queue as `Bytes` slices of that
//! buffer (no allocation per datagram), and quinn copies them out in
//! `poll_recv`. The buffer returns to the pool when its last slice is
//! consumed, so memory held by a slow QUIC endpoint is bounded by the pool.

use crate::node::Counters;
use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// Messages read per `recvmmsg` call.
pub(crate) const RECV_BATCH: usize = 16;
/// Receive buffers that may sit in the QUIC queue at once (each holds one
/// `recvmmsg` batch; pages are touched only as far as datagrams fill them).
const POOL_BUFFERS: usize = 8;
/// When every buffer is queued, the loop stops reading for up to this long
/// so datagrams wait in the kernel buffer instead of being dropped; only a
/// QUIC endpoint stalled longer than this makes the loop read into its spare
/// buffer and drop that batch's QUIC datagrams, so STUN is never held up
/// more than this.
const POOL_WAIT: Duration = Duration::from_millis(20);
/// quinn's default `max_udp_payload_size`; GRO batches are at most 64 of these.
const MAX_UDP_PAYLOAD: usize = 1472;

/// The socket plus quinn-udp's per-socket state, which adds batched
/// receive, GSO/GRO, ECN and source-address control messages.
pub(crate) struct NodeSocket {
    pub(crate) io: Arc<UdpSocket>,
    state: UdpSocketState,
}

/// Where the node keeps its socket; emptied when the node closes so the port
/// is released even while other handles exist.
pub(crate) type SocketSlot = Arc<RwLock<Option<Arc<NodeSocket>>>>;

pub(crate) fn current(slot: &SocketSlot) -> Option<Arc<NodeSocket>> {
    slot.read().ok().and_then(|s| s.clone())
}

impl NodeSocket {
    /// Also enables GRO, IP_PKTINFO and "don't fragment" on the socket (see
    /// `UdpSocketState::new`); the receive loop reads with `recv_batch`, which
    /// understands GRO, so plain `recv_from` must not be used on it.
    pub(crate) fn new(io: UdpSocket) -> io::Result<NodeSocket> {
        let state = UdpSocketState::new((&io).into())?;
        Ok(NodeSocket { io: Arc::new(io), state })
    }

    /// Bytes per receive slot: one GRO batch, or the largest UDP datagram.
    pub(crate) fn slot_len(&self) -> usize {
        (MAX_UDP_PAYLOAD * self.state.gro_segments()).max(65535)
    }

    /// One non-blocking `recvmmsg`; `WouldBlock` clears readiness.
    pub(crate) fn try_recv_batch(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.io.try_io(Interest::READABLE, || self.state.recv((&*self.io).into(), bufs, meta))
    }

    /// Only `WouldBlock` is reported; other send errors are logged and the
    /// datagram counts as lost, which QUIC recovers from.
    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || self.state.send((&*self.io).into(), t))
    }
}

/// Receive buffers shared between the receive loop and the QUIC queue.
pub(crate) struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
    allocated: AtomicUsize,
    buf_len: usize,
    returned: Notify,
}

impl BufPool {
    pub(crate) fn new(buf_len: usize) -> Arc<BufPool> {
        Arc::new(BufPool { free: Mutex::new(Vec::new()), allocated: AtomicUsize::new(0), buf_len, returned: Notify::new() })
    }

    fn try_take(&self) -> Option<Vec<u8>> {
        let mut free = self.free.lock().ok()?;
        if let Some(b) = free.pop() {
            return Some(b);
        }
        if self.allocated.load(Ordering::Relaxed) >= POOL_BUFFERS {
            return None;
        }
        self.allocated.fetch_add(1, Ordering::Relaxed);
        Some(vec![0u8; self.buf_len])
    }

    /// A buffer, waiting briefly for one to come back when all are queued.
    pub(crate) async fn take(&self) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + POOL_WAIT;
        loop {
            if let Some(b) = self.try_take() {
                return Some(b);
            }
            // A loop, not one wait: `notify_one` leaves a permit behind when
            // nobody waits, so a wake-up may be stale.
            if tokio::time::timeout_at(deadline, self.returned.notified()).await.is_err() {
                return self.try_take();
            }
        }
    }

    pub(crate) fn put(&self, buf: Vec<u8>) {
        if let Ok(mut free) = self.free.lock() {
            free.push(buf);
        }
        self.returned.notify_one();
    }
}

/// Owner of a receive buffer while `Bytes` slices of it are queued.
struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

/// Turns a filled pool buffer into shared bytes that return it when dropped.
pub(crate) fn share(buf: Vec<u8>, pool: &Arc<BufPool>) -> Bytes {
    Bytes::from_owner(PooledBuf { buf, pool: pool.clone() })
}

/// One received message for quinn: a datagram, or a GRO batch of equal-size
/// datagrams from one source (`meta.stride` apart).
pub(crate) struct Entry {
    pub(crate) meta: RecvMeta,
    pub(crate) data: Bytes,
}

/// The queue from the node's receive loop to the QUIC endpoint.
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    /// Only while a QUIC endpoint exists; before that non-STUN datagrams
    /// are dropped in the loop, so nothing piles up.
    attached: AtomicBool,
    pub(crate) pool: Arc<BufPool>,
    dropped: AtomicU64,
}

#[derive(Default)]
struct InboxState {
    queue: VecDeque<Entry>,
    waker: Option<Waker>,
}

/// Bounds injected (tunnelled) entries, which hold no pool buffer.
const MAX_QUEUED: usize = 4096;

impl Inbox {
    pub(crate) fn new(pool: Arc<BufPool>) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            attached: AtomicBool::new(false),
            pool,
            dropped: AtomicU64::new(0),
        })
    }

    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    pub(crate) fn set_attached(&self, on: bool) {
        self.attached.store(on, Ordering::Release);
        if !on {
            if let Ok(mut s) = self.state.lock() {
                s.queue.clear();
                s.waker = None;
            }
        }
    }

    /// Datagrams dropped on the way to QUIC (endpoint not keeping up, or too
    /// large for quinn's buffers).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn count_dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Queues a batch under one lock and wakes quinn once.
    pub(crate) fn push(&self, entries: impl Iterator<Item = Entry>) {
        let waker = {
            let Ok(mut s) = self.state.lock() else { return };
            for e in entries {
                if s.queue.len() >= MAX_QUEUED {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                s.queue.push_back(e);
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Moves everything queued into `out` (a swap: the producer's lock is
    /// held for O(1), and both queues keep their capacity).
    fn poll_take_all(&self, cx: &mut Context<'_>, out: &mut VecDeque<Entry>) -> Poll<()> {
        let Ok(mut s) = self.state.lock() else { return Poll::Pending };
        if s.queue.is_empty() {
            s.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        std::mem::swap(&mut s.queue, out);
        Poll::Ready(())
    }
}

/// Carries QUIC datagrams for some remote addresses instead of the raw
/// socket, e.g. a relay tunnel. Datagrams arriving through the tunnel are
/// handed back with [`crate::quic::QuicEndpoint::inject`], with the same
/// remote address the route was registered for.
pub trait DatagramTunnel: Send + Sync + fmt::Debug + 'static {
    /// Sends one datagram. Must not block: queue or drop (QUIC treats a
    /// drop as loss and retransmits).
    fn send(&self, dst: SocketAddr, datagram: &[u8]);
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
        let Ok(mut map) = self.map.write() else { return };
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
        self.map.read().ok()?.get(remote).cloned()
    }
}

/// quinn's view of the node socket.
pub(crate) struct QuicSocket {
    slot: SocketSlot,
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
    pub(crate) fn new(
        sock: &NodeSocket,
        slot: SocketSlot,
        inbox: Arc<Inbox>,
        routes: Arc<Routes>,
        counters: Arc<Counters>,
    ) -> io::Result<QuicSocket> {
        Ok(QuicSocket {
            local: sock.io.local_addr()?,
            max_gso: sock.state.max_gso_segments(),
            gro: sock.state.gro_segments(),
            may_fragment: sock.state.may_fragment(),
            slot,
            inbox,
            routes,
            counters,
            scratch: Mutex::new(VecDeque::with_capacity(RECV_BATCH * POOL_BUFFERS)),
        })
    }

    fn send_tunnelled(tunnel: &dyn DatagramTunnel, t: &Transmit<'_>) {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        for d in t.contents.chunks(seg) {
            tunnel.send(t.destination, d);
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
        Box::pin(WritablePoller { slot: self.slot.clone(), fut: None })
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        let via = match self.routes.get(&t.destination) {
            None => None,
            Some(Route::Tunnel(tunnel)) => {
                Self::send_tunnelled(tunnel.as_ref(), t);
                return Ok(());
            }
            Some(Route::Via(real)) => Some(Transmit { destination: real, ..*t }),
        };
        let t = via.as_ref().unwrap_or(t);
        // Node closed: the datagram is lost as on a dead link; the endpoint
        // is being closed anyway.
        let Some(sock) = current(&self.slot) else { return Ok(()) };
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
        let Ok(mut scratch) = self.scratch.lock() else { return Poll::Pending };
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

/// Wakes quinn when the node socket is writable again after `WouldBlock`.
struct WritablePoller {
    slot: SocketSlot,
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
                this.fut.insert(Box::pin(async move { sock.io.writable().await }))
            }
        };
        let res = fut.as_mut().poll(cx);
        if res.is_ready() {
            this.fut = None;
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn pool_is_bounded_waits_briefly_and_recycles() {
        crate::runtime::handle().block_on(async {
            let pool = BufPool::new(64);
            let mut held: Vec<Bytes> = Vec::new();
            for _ in 0..POOL_BUFFERS {
                let b = pool.take().await.expect("within the bound");
                held.push(share(b, &pool));
            }
            // Exhausted: waits about POOL_WAIT, then gives up.
            let t = Instant::now();
            assert!(pool.take().await.is_none());
            assert!(t.elapsed() >= POOL_WAIT);
            // A slice keeps its buffer queued; dropping the last one returns it.
            let slice = held[0].slice(0..8);
            held.remove(0);
            assert!(pool.try_take().is_none());
            let waiter = tokio::spawn({
                let pool = pool.clone();
                async move { pool.take().await.map(|b| b.len()) }
            });
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(slice);
            assert_eq!(waiter.await.unwrap(), Some(64), "woken by the returned buffer");
            assert_eq!(pool.allocated.load(Ordering::Relaxed), POOL_BUFFERS);
        });
    }
}
