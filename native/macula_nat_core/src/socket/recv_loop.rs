//! The one reader of the node socket, and the STUN subscriptions it feeds.
//!
//! Every datagram arriving on the node's port passes here first: punch
//! packets go to their punch session ([`PunchRoutes`]), other STUN is
//! answered (we are every peer's STUN server) or handed to the subscribers
//! (detection), relay frames go to their relayed connection or to this
//! node's relay server ([`RelayPlane`]), and the rest is QUIC, queued for
//! the endpoint ([`Inbox`]) under the remote address QUIC knows.

use super::punch_routes::PunchRoutes;
use super::relay_plane::RelayPlane;
use super::{share, Counters, Entry, FamilySockets, Inbox, NodeSocket, RECV_BATCH};
use crate::lock::lock;
use macula_nat_proto::observer::{NoAnswer, Observer};
use macula_nat_proto::relay::frame;
use macula_nat_proto::reply_budget::{ReplyBudget, ReplyLimits};
use macula_nat_proto::stun::{self, Class, Message};
use quinn::udp::RecvMeta;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A STUN response that arrived on the node's socket: (source, bytes).
pub type StunDatagram = (SocketAddr, Vec<u8>);

/// Who wants STUN responses. Each subscriber ignores transaction ids that
/// are not its own, so a broadcast is enough and keeps the loop simple.
#[derive(Default)]
pub(crate) struct StunSinks {
    next: u64,
    sinks: Vec<(u64, mpsc::UnboundedSender<StunDatagram>)>,
}

/// Receives the STUN responses arriving on the node's socket until dropped.
pub struct StunSubscription {
    id: u64,
    sinks: Arc<Mutex<StunSinks>>,
    pub rx: mpsc::UnboundedReceiver<StunDatagram>,
}

impl Drop for StunSubscription {
    fn drop(&mut self) {
        lock(&self.sinks).sinks.retain(|(id, _)| *id != self.id);
    }
}

impl StunSinks {
    /// A new subscription to the STUN responses of `sinks`.
    pub(crate) fn subscribe(sinks: &Arc<Mutex<StunSinks>>) -> StunSubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = lock(sinks);
        s.next += 1;
        let id = s.next;
        s.sinks.push((id, tx));
        StunSubscription { id, sinks: sinks.clone(), rx }
    }
}

/// The one reader of the node socket. Reads batches (`recvmmsg`, with GRO
/// where the kernel has it) and demultiplexes each datagram: STUN (detection
/// probes, peers' Binding requests, punch packets) is handled here, anything
/// else goes to the QUIC endpoint if there is one and is dropped otherwise.
pub(crate) async fn recv_loop(
    sock: Arc<NodeSocket>,
    // A dual-stack node's other socket (see `FamilySockets`).
    other: Option<Arc<NodeSocket>>,
    local: SocketAddr,
    observer: Observer,
    counters: Arc<Counters>,
    sinks: Arc<Mutex<StunSinks>>,
    inbox: Arc<Inbox>,
    punch: Arc<PunchRoutes>,
    relay: Arc<RelayPlane>,
) -> std::io::Result<()> {
    let slot = sock.slot_len();
    let socks = FamilySockets::new(sock.clone(), local.is_ipv6(), other);
    // Only this loop answers STUN on the node socket: the ledger needs no lock.
    let mut budget = ReplyBudget::new(ReplyLimits::default(), Instant::now());
    // Read into while QUIC is off or its queue is full.
    let mut spare = vec![0u8; slot * RECV_BATCH];
    let mut metas = [RecvMeta::default(); RECV_BATCH];
    // QUIC datagrams of the current batch, as ranges of its buffer.
    let mut quic: Vec<(RecvMeta, Range<usize>)> = Vec::with_capacity(RECV_BATCH);
    loop {
        sock.io.readable().await?;
        let attached = inbox.is_attached();
        let mut pooled = if attached { inbox.pool.take().await } else { None };
        let buf: &mut [u8] = match pooled.as_mut() {
            Some(b) => b,
            None => &mut spare,
        };
        let received = {
            let mut chunks = buf.chunks_mut(slot);
            let mut iovs: [IoSliceMut<'_>; RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or(&mut [])));
            sock.try_recv_batch(&mut iovs, &mut metas)
        };
        let n = match received {
            Ok(n) => n.min(RECV_BATCH),
            // Spurious readiness, or an ICMP error from an earlier send
            // (Linux reports those on the next receive): nothing about this
            // socket's health, keep receiving.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                if let Some(b) = pooled {
                    inbox.pool.put(b);
                }
                continue;
            }
            // Anything else (EBADF, ENOTSOCK, ENOMEM, ...) will not get
            // better: the node must fail visibly, not go deaf.
            Err(e) => return Err(e),
        };
        for (i, meta) in metas.iter().take(n).enumerate() {
            let start = i * slot;
            let len = meta.len.min(slot);
            let Some(data) = buf.get(start..start + len) else { continue };
            // `stride` is the size of each datagram in a GRO batch.
            let stride = if meta.stride == 0 || meta.stride > len { len } else { meta.stride };
            counters.datagrams_in.fetch_add(len.div_ceil(stride.max(1)).max(1) as u64, Ordering::Relaxed);
            counters.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
            if len == 0 {
                continue;
            }
            // A relayed connection moved to a punched path still knows its
            // peer by the virtual address (see `relay_plane`).
            let plain = |d: &[u8]| stun::is_stun(d) || stun::is_classic_binding_request(d) || frame::is_frame(d);
            let quic_addr = match relay.alias_of(&meta.addr) {
                Some(a) => a,
                None if relay.following() && !plain(&data[..stride]) => relay.follow(&meta.addr).unwrap_or(meta.addr),
                None => meta.addr,
            };
            if len != stride && !data.chunks(stride).any(plain) {
                // The usual GRO case: all QUIC, handed over whole.
                quic.push((RecvMeta { addr: quic_addr, ..*meta }, start..start + len));
                continue;
            }
            // One datagram, or a GRO batch that mixes in STUN or relay frames
            // (GRO merges by flow, so a STUN datagram from a QUIC peer's
            // address can share a batch): each segment on its own, except
            // that consecutive frames to forward stay together (`run`) and
            // leave as one GSO batch.
            let mut run: Option<Range<usize>> = None;
            let flush = |run: &mut Option<Range<usize>>| {
                if let Some(r) = run.take() {
                    relay.forward(&socks, meta.addr, &data[r], stride);
                }
            };
            for (k, seg) in data.chunks(stride).enumerate() {
                let s = k * stride;
                if frame::is_frame(seg) {
                    let Some(virt) = relay.ours(meta.addr, seg) else {
                        match run.as_mut() {
                            Some(r) if r.end == s => r.end = s + seg.len(),
                            _ => {
                                flush(&mut run);
                                run = Some(s..s + seg.len());
                            }
                        }
                        continue;
                    };
                    let n = seg.len() - frame::HEADER;
                    let m = RecvMeta { addr: virt, len: n, stride: n, ..*meta };
                    quic.push((m, start + s + frame::HEADER..start + s + seg.len()));
                    continue;
                }
                flush(&mut run);
                // RFC 3489 clients (no magic cookie) are answered too.
                if stun::is_stun(seg) || stun::is_classic_binding_request(seg) {
                    let responder = Responder { socket: &sock.io, local, observer: &observer, budget: &mut budget };
                    on_stun(responder, &counters, &sinks, &punch, meta.addr, seg);
                } else {
                    quic.push((RecvMeta { addr: quic_addr, len: seg.len(), stride: seg.len(), ..*meta }, start + s..start + s + seg.len()));
                }
            }
            flush(&mut run);
        }
        match pooled {
            Some(b) if !quic.is_empty() => {
                let shared = share(b, &inbox.pool);
                inbox.push(quic.drain(..).map(|(meta, r)| Entry { meta, data: shared.slice(r) }));
            }
            Some(b) => inbox.pool.put(b),
            None => {
                if attached {
                    inbox.count_dropped(quic.len());
                }
                quic.clear();
            }
        }
    }
}

/// What answers Binding requests on the node socket.
struct Responder<'a> {
    socket: &'a UdpSocket,
    local: SocketAddr,
    observer: &'a Observer,
    budget: &'a mut ReplyBudget,
}

fn on_stun(
    r: Responder<'_>,
    counters: &Counters,
    sinks: &Mutex<StunSinks>,
    punch: &PunchRoutes,
    from: SocketAddr,
    data: &[u8],
) {
    if punch.offer(from, data) {
        return;
    }
    let Ok(msg) = Message::decode_any(data) else {
        counters.stun_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match msg.class {
        Class::Request => {
            // The source may be spoofed: the answer is bounded by what that
            // address sent us (`reply_budget`), and sent without waiting, so
            // a flood of requests never holds up QUIC behind it.
            let Ok(room) = r.budget.admit(from.ip(), data.len(), Instant::now()) else {
                counters.stun_refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            match r.observer.answer(r.local, from, &msg, data.len(), room) {
                Ok(reply) => match send_now(r.socket, &reply.payload, reply.to) {
                    Ok(n) => {
                        r.budget.spent(reply.to.ip(), n);
                        counters.stun_answered.fetch_add(1, Ordering::Relaxed);
                        counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
                        counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counters.stun_refused.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(NoAnswer::OverBudget) => {
                    r.budget.refused_by_ledger();
                    counters.stun_refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(NoAnswer::Ignored) => {
                    counters.stun_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Class::SuccessResponse | Class::ErrorResponse => {
            lock(sinks).sinks.retain(|(_, tx)| tx.send((from, data.to_vec())).is_ok());
        }
        Class::Indication => {}
    }
}

/// Sends without waiting. An ICMP error for an earlier datagram (Linux
/// reports it on the next operation of the socket: here, an answer to a
/// spoofed source whose port is closed) fails that next send: the send is
/// tried once more, so one address's error does not cost another its answer.
pub(crate) fn send_now(socket: &UdpSocket, payload: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    match socket.try_send_to(payload, to) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset) => {
            socket.try_send_to(payload, to)
        }
        other => other,
    }
}
