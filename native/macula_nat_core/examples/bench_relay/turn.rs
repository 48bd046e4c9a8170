//! The smallest TURN client (RFC 8656) the benchmark needs to put a QUIC
//! connection through coturn: Allocate (UDP, no credentials: the server runs
//! with `--no-auth`), ChannelBind (which also installs the permission), a
//! zero-lifetime Refresh to release, and ChannelData framing both ways.
//!
//! The client has its own UDP socket, not the node's: ChannelData starts
//! with 0x40-0x7F, like a QUIC short header, so the node's receive loop
//! could not tell them apart. QUIC datagrams to the peer go out through
//! [`TurnTunnel`] (GSO batches kept whole, as for our relay's frames); what
//! comes back is unwrapped by the pump of [`TurnClient::carry`] and
//! injected into the node's QUIC endpoint.

use bytes::Bytes;
use macula_nat_core::quic::DatagramTunnel;
use macula_nat_core::QuicEndpoint;
use macula_nat_proto::stun::{Attribute, Class, Message, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_REFRESH};
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use std::cell::RefCell;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The first channel number (RFC 8656 §12: 0x4000-0x4FFF).
pub const FIRST_CHANNEL: u16 = 0x4000;

/// A ChannelData message's channel and payload.
pub fn channel_data(d: &[u8]) -> Option<(u16, &[u8])> {
    if d.len() < 4 || !(0x40..0x50).contains(&d[0]) {
        return None;
    }
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    Some((u16::from_be_bytes([d[0], d[1]]), d.get(4..4 + len)?))
}

pub struct TurnClient {
    pub sock: Arc<UdpSocket>,
    pub server: SocketAddr,
    /// The address coturn relays from (what the peer sees).
    pub relayed: SocketAddr,
}

impl TurnClient {
    /// One request/response, retransmitted every 200 ms, 10 times at most:
    /// the success response.
    async fn transact(sock: &UdpSocket, server: SocketAddr, method: u16, attrs: Vec<Attribute>) -> Result<Message, String> {
        let txid: [u8; 12] = rand::random();
        let mut req = Message::new(Class::Request, method, txid);
        req.attributes = attrs;
        let req = req.encode();
        let mut buf = vec![0u8; 2048];
        for _ in 0..10 {
            sock.send_to(&req, server).await.map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                let Ok(m) = Message::decode(&buf[..n]) else { continue };
                if from != server || m.transaction_id != txid || m.method != method {
                    continue;
                }
                match m.class {
                    Class::SuccessResponse => return Ok(m),
                    Class::ErrorResponse => {
                        let (code, why) = m.error_code().unwrap_or((0, ""));
                        return Err(format!("TURN error {code} {why}"));
                    }
                    _ => {}
                }
            }
        }
        Err(format!("TURN server {server} did not answer"))
    }

    /// Allocates a UDP relay address on `server` from `sock`.
    pub async fn allocate(sock: UdpSocket, server: SocketAddr) -> Result<TurnClient, String> {
        let a = Self::transact(&sock, server, METHOD_ALLOCATE, vec![Attribute::RequestedTransport(17)]).await?;
        let relayed = a.relayed_address().ok_or("no XOR-RELAYED-ADDRESS")?;
        Ok(TurnClient { sock: Arc::new(sock), server, relayed })
    }

    /// Binds `channel` to `peer` (and so permits the peer's IP).
    pub async fn bind(&self, channel: u16, peer: SocketAddr) -> Result<(), String> {
        let attrs = vec![Attribute::ChannelNumber(channel), Attribute::XorPeerAddress(peer)];
        Self::transact(&self.sock, self.server, METHOD_CHANNEL_BIND, attrs).await.map(|_| ())
    }

    /// Releases the allocation (Refresh with lifetime 0). Only while no
    /// pump reads the socket.
    pub async fn release(&self) {
        let _ = Self::transact(&self.sock, self.server, METHOD_REFRESH, vec![Attribute::Lifetime(0)]).await;
    }

    /// Starts carrying QUIC for `quic` on `channel`: datagrams to `virt`
    /// go out as ChannelData (GSO batches kept whole), ChannelData from the
    /// server comes back in as datagrams from `virt`. Returns the pump task.
    pub fn carry(&self, channel: u16, quic: &QuicEndpoint, virt: SocketAddr) -> tokio::task::JoinHandle<()> {
        // quinn-udp's socket state: GSO for ChannelData batches, as our
        // FrameTunnel has. It enables GRO on the socket, so from here on
        // only `state.recv` reads it (the pump).
        let state = Arc::new(UdpSocketState::new((&*self.sock).into()).expect("quinn-udp socket state"));
        quic.route_via(virt, Arc::new(TurnTunnel { sock: self.sock.clone(), state: state.clone(), server: self.server, channel }));
        macula_nat_core::runtime::spawn(Self::pump(self.sock.clone(), state, self.server, quic.clone(), virt))
    }

    /// Hands ChannelData arriving from the server to `quic` as datagrams
    /// from `virt`, until the task is aborted.
    async fn pump(sock: Arc<UdpSocket>, state: Arc<UdpSocketState>, server: SocketAddr, quic: QuicEndpoint, virt: SocketAddr) {
        let mut buf = vec![0u8; 65536];
        loop {
            if sock.readable().await.is_err() {
                return;
            }
            let mut meta = [RecvMeta::default()];
            let got = sock.try_io(Interest::READABLE, || state.recv((&*sock).into(), &mut [IoSliceMut::new(&mut buf)], &mut meta));
            if got.is_err() || meta[0].addr != server {
                continue;
            }
            let (len, stride) = (meta[0].len, meta[0].stride.max(1));
            for d in buf[..len].chunks(stride) {
                if let Some((_, payload)) = channel_data(d) {
                    quic.inject(virt, Bytes::copy_from_slice(payload));
                }
            }
        }
    }
}

/// ChannelData out through the client's socket, as `FrameTunnel` does for
/// our relay: now or dropped (QUIC retransmits), a GSO batch in one
/// `sendmsg`.
#[derive(Debug)]
pub struct TurnTunnel {
    sock: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    server: SocketAddr,
    channel: u16,
}

impl TurnTunnel {
    fn transmit(&self, contents: &[u8], segment: Option<usize>) {
        let t = Transmit { destination: self.server, ecn: None, contents, segment_size: segment, src_ip: None };
        // Straight to the kernel, as the node's relay sends: tokio's
        // `try_io` would stop trying after one EAGAIN until someone awaits
        // writability, and nothing here does.
        let _ = self.state.send((&*self.sock).into(), &t);
    }
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(16 * 1024));
}

impl DatagramTunnel for TurnTunnel {
    fn send(&self, _dst: SocketAddr, datagram: &[u8]) {
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            b.extend_from_slice(&self.channel.to_be_bytes());
            b.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
            b.extend_from_slice(datagram);
            self.transmit(&b, None);
        });
    }

    /// Every datagram but the last is `segment` long, so with the 4-byte
    /// ChannelData header (a multiple of 4: no padding) the messages are of
    /// equal size too and go out as one GSO batch.
    fn send_batch(&self, _dst: SocketAddr, contents: &[u8], segment: usize) {
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            for d in contents.chunks(segment) {
                b.extend_from_slice(&self.channel.to_be_bytes());
                b.extend_from_slice(&(d.len() as u16).to_be_bytes());
                b.extend_from_slice(d);
            }
            self.transmit(&b, Some(segment + 4));
        });
    }
}
