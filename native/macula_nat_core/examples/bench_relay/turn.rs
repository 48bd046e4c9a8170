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
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use std::cell::RefCell;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UdpSocket;

const COOKIE: u32 = 0x2112_A442;
const ALLOCATE: u16 = 0x003;
const REFRESH: u16 = 0x004;
const CHANNEL_BIND: u16 = 0x009;
const SUCCESS: u16 = 0x100;
const ERROR: u16 = 0x110;
const A_CHANNEL_NUMBER: u16 = 0x000C;
const A_LIFETIME: u16 = 0x000D;
const A_XOR_PEER: u16 = 0x0012;
const A_XOR_RELAYED: u16 = 0x0016;
const A_TRANSPORT: u16 = 0x0019;
const A_ERROR_CODE: u16 = 0x0009;
/// The first channel number (RFC 8656 §12: 0x4000-0x4FFF).
pub const FIRST_CHANNEL: u16 = 0x4000;

/// A message's attributes: (type, value).
type Attrs = Vec<(u16, Vec<u8>)>;

fn attr(out: &mut Vec<u8>, t: u16, v: &[u8]) {
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn xor_addr(a: SocketAddr) -> Vec<u8> {
    let IpAddr::V4(ip) = a.ip() else { panic!("IPv4 only") };
    let mut v = vec![0, 1];
    v.extend_from_slice(&(a.port() ^ (COOKIE >> 16) as u16).to_be_bytes());
    v.extend_from_slice(&(u32::from(ip) ^ COOKIE).to_be_bytes());
    v
}

fn request(method: u16, txid: [u8; 12], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&method.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&COOKIE.to_be_bytes());
    out.extend_from_slice(&txid);
    for (t, v) in attrs {
        attr(&mut out, *t, v);
    }
    let len = (out.len() - 20) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// `(type, attributes)` of a response with transaction id `txid`.
fn parse(data: &[u8], txid: &[u8; 12]) -> Option<(u16, Attrs)> {
    if data.len() < 20 || data[0] & 0xC0 != 0 || data[8..20] != txid[..] {
        return None;
    }
    let t = u16::from_be_bytes([data[0], data[1]]);
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let body = data.get(20..20 + len)?;
    let mut attrs = Vec::new();
    let mut i = 0;
    while i + 4 <= body.len() {
        let at = u16::from_be_bytes([body[i], body[i + 1]]);
        let al = u16::from_be_bytes([body[i + 2], body[i + 3]]) as usize;
        attrs.push((at, body.get(i + 4..i + 4 + al)?.to_vec()));
        i += 4 + al.div_ceil(4) * 4;
    }
    Some((t, attrs))
}

fn unxor_addr(v: &[u8]) -> Option<SocketAddr> {
    if v.len() < 8 || v[1] != 1 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (COOKIE >> 16) as u16;
    let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ COOKIE;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
}

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
    /// One request/response, retransmitted every 200 ms, 10 times at most.
    async fn transact(sock: &UdpSocket, server: SocketAddr, method: u16, attrs: &[(u16, Vec<u8>)]) -> Result<Attrs, String> {
        let txid: [u8; 12] = rand::random();
        let req = request(method, txid, attrs);
        let mut buf = vec![0u8; 2048];
        for _ in 0..10 {
            sock.send_to(&req, server).await.map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                let Some((t, a)) = parse(&buf[..n], &txid).filter(|_| from == server) else { continue };
                if t == method | SUCCESS {
                    return Ok(a);
                }
                if t == method | ERROR {
                    let why = a.iter().find(|(t, _)| *t == A_ERROR_CODE).map(|(_, v)| {
                        let code = v.get(2).map_or(0, |c| *c as u16 * 100) + v.get(3).map_or(0, |n| *n as u16);
                        format!("{code} {}", String::from_utf8_lossy(v.get(4..).unwrap_or_default()))
                    });
                    return Err(format!("TURN error {}", why.unwrap_or_default()));
                }
            }
        }
        Err(format!("TURN server {server} did not answer"))
    }

    /// Allocates a UDP relay address on `server` from `sock`.
    pub async fn allocate(sock: UdpSocket, server: SocketAddr) -> Result<TurnClient, String> {
        let a = Self::transact(&sock, server, ALLOCATE, &[(A_TRANSPORT, vec![17, 0, 0, 0])]).await?;
        let relayed = a.iter().find(|(t, _)| *t == A_XOR_RELAYED).and_then(|(_, v)| unxor_addr(v)).ok_or("no XOR-RELAYED-ADDRESS")?;
        Ok(TurnClient { sock: Arc::new(sock), server, relayed })
    }

    /// Binds `channel` to `peer` (and so permits the peer's IP).
    pub async fn bind(&self, channel: u16, peer: SocketAddr) -> Result<(), String> {
        let mut ch = channel.to_be_bytes().to_vec();
        ch.extend_from_slice(&[0, 0]);
        Self::transact(&self.sock, self.server, CHANNEL_BIND, &[(A_CHANNEL_NUMBER, ch), (A_XOR_PEER, xor_addr(peer))]).await.map(|_| ())
    }

    /// Releases the allocation (Refresh with lifetime 0). Only while no
    /// pump reads the socket.
    pub async fn release(&self) {
        let _ = Self::transact(&self.sock, self.server, REFRESH, &[(A_LIFETIME, 0u32.to_be_bytes().to_vec())]).await;
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
