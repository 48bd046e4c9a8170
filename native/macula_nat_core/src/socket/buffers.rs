//! Receive buffers shared by the receive loop and the QUIC queue, and the
//! queue itself ([`Inbox`]): the loop fills it, quinn's socket drains it.

use bytes::Bytes;
use crate::lock::lock;
use quinn::udp::RecvMeta;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;

/// Receive buffers that may sit in the QUIC queue at once (each holds one
/// `recvmmsg` batch; pages are touched only as far as datagrams fill them).
pub(crate) const POOL_BUFFERS: usize = 8;
/// When every buffer is queued, the loop stops reading for up to this long
/// so datagrams wait in the kernel buffer instead of being dropped; only a
/// QUIC endpoint stalled longer than this makes the loop read into its spare
/// buffer and drop that batch's QUIC datagrams, so STUN is never held up
/// more than this.
const POOL_WAIT: Duration = Duration::from_millis(20);

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
        let mut free = lock(&self.free);
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
        lock(&self.free).push(buf);
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
            let mut s = lock(&self.state);
            s.queue.clear();
            s.waker = None;
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
            let mut s = lock(&self.state);
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
    pub(crate) fn poll_take_all(&self, cx: &mut Context<'_>, out: &mut VecDeque<Entry>) -> Poll<()> {
        let mut s = lock(&self.state);
        if s.queue.is_empty() {
            s.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        std::mem::swap(&mut s.queue, out);
        Poll::Ready(())
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

