//! The node's one UDP socket and everything that reads it, below QUIC and
//! below the node: the socket itself with quinn-udp's batched IO
//! ([`NodeSocket`], this file), the receive buffers and the queue towards
//! QUIC ([`buffers`]), the counters ([`counters`]), the receive loop that
//! demultiplexes STUN, punch packets, relay frames and QUIC
//! ([`recv_loop`]), where punch packets go ([`punch_routes`]) and what
//! relay frames and relayed connections' addresses become ([`relay_plane`],
//! with the typed virtual addresses); which local ports a fresh socket may
//! take ([`local_ports`]) and the host's own addresses ([`local_addrs`]).
//!
//! Nothing here knows QUIC or the node: `quic` plugs into the [`Inbox`] and
//! the [`SocketSlot`], the node owns one of each and starts the loop.
//!
//! Cost model: the loop reads up to [`RECV_BATCH`] messages per `recvmmsg`
//! (each possibly a GRO batch of many datagrams) into one pooled buffer; the
//! QUIC datagrams of that batch enter the queue as `Bytes` slices of that
//! buffer (no allocation per datagram), and quinn copies them out in
//! `poll_recv`. The buffer returns to the pool when its last slice is
//! consumed, so memory held by a slow QUIC endpoint is bounded by the pool.

pub(crate) mod buffers;
pub(crate) mod counters;
pub(crate) mod local_addrs;
pub(crate) mod local_ports;
pub(crate) mod punch_routes;
pub(crate) mod recv_loop;
pub(crate) mod relay_plane;

pub(crate) use buffers::{share, BufPool, Entry, Inbox, POOL_BUFFERS};
pub(crate) use counters::Counters;

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use crate::lock::read;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Messages read per `recvmmsg` call.
pub(crate) const RECV_BATCH: usize = 16;
/// Largest GSO batch we hand the kernel (UDP's limit is 65507 bytes).
const GSO_BYTES: usize = 65_000;
/// quinn's default `max_udp_payload_size`; GRO batches are at most 64 of these.
const MAX_UDP_PAYLOAD: usize = 1472;

/// The socket plus quinn-udp's per-socket state, which adds batched
/// receive, GSO/GRO, ECN and source-address control messages.
pub(crate) struct NodeSocket {
    pub(crate) io: Arc<UdpSocket>,
    pub(crate) state: UdpSocketState,
}

/// The node's sockets as one receive loop holds them: the one it reads,
/// and a dual-stack node's other one, so that what the loop sends on (a
/// relay forwarding a frame between an IPv6 and an IPv4 client) leaves on
/// the socket of the destination's family.
pub(crate) struct FamilySockets {
    pub(crate) own: Arc<NodeSocket>,
    own_v6: bool,
    other: Option<Arc<NodeSocket>>,
}

impl FamilySockets {
    pub(crate) fn new(own: Arc<NodeSocket>, own_v6: bool, other: Option<Arc<NodeSocket>>) -> FamilySockets {
        FamilySockets { own, own_v6, other }
    }

    /// The socket that sends to `dst`.
    pub(crate) fn for_dst(&self, dst: &SocketAddr) -> &NodeSocket {
        match &self.other {
            Some(o) if dst.is_ipv6() != self.own_v6 => o,
            _ => &self.own,
        }
    }
}

/// Where the node keeps its socket; emptied when the node closes so the port
/// is released even while other handles exist.
pub(crate) type SocketSlot = Arc<RwLock<Option<Arc<NodeSocket>>>>;

pub(crate) fn current(slot: &SocketSlot) -> Option<Arc<NodeSocket>> {
    read(slot).clone()
}

/// An IPv4 address in the IPv6 form a dual-stack QUIC endpoint uses
/// (`::ffff:a.b.c.d`); IPv6 addresses unchanged.
pub(crate) fn mapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

/// The plain form of an address: IPv4 for a mapped one (see [`mapped`]).
pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(std::net::IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
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
    pub(crate) fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || self.state.send((&*self.io).into(), t))
    }

    /// Sends `contents` as datagrams of `segment` bytes (the last may be
    /// shorter) to `dst`, now or not at all: one GSO `sendmsg` per
    /// `max_gso_segments` where the kernel has GSO, else one each. Returns
    /// how many leading datagrams left. For the relay data path, where a
    /// datagram per syscall was most of the CPU.
    ///
    /// Always tries the syscall, unlike tokio's `try_send_to`/`try_io`: once
    /// those saw a full send buffer they refuse without trying until a task
    /// awaits writability, and nothing on the relay path awaits, so one
    /// `EAGAIN` used to drop every relayed datagram until some other QUIC
    /// send on the socket re-armed it (stalls of up to a ping interval).
    pub(crate) fn try_send_segments(&self, dst: SocketAddr, contents: &[u8], segment: usize) -> usize {
        let segment = segment.max(1);
        // A UDP datagram (GSO batch included) carries at most 65507 bytes.
        let per_call = self.state.max_gso_segments().min(GSO_BYTES / segment).max(1);
        let mut sent = 0;
        for piece in contents.chunks(segment * per_call) {
            let n = piece.len().div_ceil(segment);
            let t = Transmit { destination: dst, ecn: None, contents: piece, segment_size: (n > 1).then_some(segment), src_ip: None };
            if self.state.send((&*self.io).into(), &t).is_err() {
                break;
            }
            sent += n;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The relay data path must keep sending after tokio saw a full send
    /// buffer: nothing on that path awaits writability to re-arm tokio's
    /// readiness, so its sends go to the kernel whatever tokio believes.
    #[test]
    fn segment_sends_go_out_after_tokio_saw_a_full_buffer() {
        crate::runtime::handle().block_on(async {
            let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let dst = rx.local_addr().unwrap();
            let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            std.set_nonblocking(true).unwrap();
            let sock = NodeSocket::new(UdpSocket::from_std(std).unwrap()).unwrap();
            sock.io.writable().await.unwrap();
            // What an EAGAIN leaves behind: tokio's write readiness cleared.
            let _ = sock.io.try_io(Interest::WRITABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
            assert!(sock.io.try_send_to(b"x", dst).is_err(), "tokio now refuses without trying");
            // Three datagrams of 100, 100 and 50 bytes (one GSO batch where
            // the kernel has GSO), and a single one.
            assert_eq!(sock.try_send_segments(dst, &[7u8; 250], 100), 3);
            assert_eq!(sock.try_send_segments(dst, &[8u8; 40], 40), 1);
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            for _ in 0..4 {
                let n = rx.recv(&mut buf).expect("datagram");
                got.push((n, buf[0]));
            }
            assert_eq!(got, vec![(100, 7), (100, 7), (50, 7), (40, 8)]);
        });
    }

}
