//! An authenticated node-to-node connection carrying ordered messages.
//!
//! Messages travel on one long-lived bidirectional stream opened by the
//! dialler, each as a 4-byte big-endian length followed by the bytes. One
//! stream (rather than a stream per message) gives total order for free and
//! costs no per-message stream setup; the price is head-of-line blocking,
//! which ordered delivery implies anyway.
//!
//! Opening handshake on that stream: the dialler writes [`STREAM_VERSION`],
//! the acceptor checks it and answers with the same byte. The dialler does
//! not wait for that answer: `connect` returns as soon as the QUIC handshake
//! is done, and its first message leaves with the version byte, so the
//! first message costs half a round trip after the handshake instead of a
//! round trip and a half. The answer is checked when the first bytes arrive
//! ([`Connection::recv`]). What the dialler gives up is knowing, when
//! `connect` returns, that the acceptor took its certificate (in TLS 1.3 a
//! client finishes its handshake before the server has checked the client
//! certificate); an acceptor that refuses closes the connection, which the
//! dialler then sees as a closed connection, exactly as if the peer had
//! closed it right after accepting.

use crate::lock::lock;
use super::{tls, Admitted, ControlLimits, QuicConfig, QuicError};
use crate::NodeId;
use bytes::Bytes;
use quinn::rustls::pki_types::CertificateDer;
use quinn::{ConnectionError, ReadError, VarInt, WriteError};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Mutex;

/// First byte on the message stream in both directions; a peer speaking
/// another framing version is refused (framing: `macula_nat_proto::frame`).
use macula_nat_proto::frame::{FrameDecoder, FrameError, STREAM_VERSION};

/// Application close codes (QUIC `CONNECTION_CLOSE` error codes).
pub mod codes {
    /// `Connection::close`.
    pub const NORMAL: u32 = 0;
    /// The node (or its QUIC endpoint) closed.
    pub const NODE_CLOSED: u32 = 1;
    /// The peer broke the message framing.
    pub const PROTOCOL: u32 = 2;
    /// The acceptor's backlog was full.
    pub const BUSY: u32 = 3;
    /// The peer sent a message over our limit (its frame, or the size a
    /// compressed term declares).
    pub const TOO_LARGE: u32 = 4;
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// This side called [`Connection::close`].
    Local { reason: String },
    /// The peer closed it; `code` is one of [`codes`].
    Peer { code: u64, reason: String },
    /// This node, or its QUIC endpoint, was closed.
    NodeClosed,
    /// Nothing heard from the peer within the idle timeout.
    TimedOut,
    /// The peer answered with a stateless reset: it lost the connection state
    /// (e.g. it restarted).
    Reset,
    /// Transport, TLS or framing failure.
    Failed(String),
    /// The peer sent a message of `len` bytes (or a compressed term that
    /// declares `len` bytes once inflated) over our limit `max`; refused
    /// before anything that size was allocated.
    TooLarge { len: u64, max: u64 },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local { reason } => write!(f, "closed locally: {reason}"),
            CloseReason::Peer { code, reason } => write!(f, "closed by peer (code {code}): {reason}"),
            CloseReason::NodeClosed => f.write_str("node closed"),
            CloseReason::TimedOut => f.write_str("idle timeout"),
            CloseReason::Reset => f.write_str("reset by peer"),
            CloseReason::Failed(m) => write!(f, "failed: {m}"),
            CloseReason::TooLarge { len, max } => write!(f, "peer sent a {len}-byte message, limit {max}"),
        }
    }
}

/// A connection to one authenticated peer node. Cheap to clone; clones
/// share the connection, so one task may send while another receives.
/// Dropping the last clone closes it at once (the peer sees code `NORMAL`
/// and an empty reason); see [`Connection::finish`] for a lossless end.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    conn: quinn::Connection,
    peer: NodeId,
    /// Lowered once a connection turns out to be a control connection.
    max_frame: AtomicUsize,
    tx: Mutex<Sender>,
    rx: Mutex<Receiver>,
    /// Set before we close, so `LocallyClosed` can say why.
    local_reason: OnceLock<CloseReason>,
    /// Set by the endpoint before it closes every connection.
    endpoint_closing: Arc<AtomicBool>,
    /// A message read by the node's connection dispatcher to classify the
    /// connection and handed back: `recv` returns it first.
    unread: std::sync::Mutex<Option<Vec<u8>>>,
    /// How the connection's packets travel now (a relayed connection that
    /// gets punched changes it).
    method: tokio::sync::watch::Sender<Method>,
    /// Messages each way, for quality reports.
    messages: [std::sync::atomic::AtomicU64; 2],
    quality: super::quality::QualityCell,
    /// An incoming connection's place under the connection caps, given
    /// back when the connection goes.
    _admitted: Option<Admitted>,
}

/// How a connection's packets travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Dialled straight to the peer's public address (no punching).
    Direct,
    /// Over a path opened by hole punching.
    Punched,
    /// Through a relay that forwards the (end-to-end encrypted) packets.
    Relayed,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Direct => "direct",
            Method::Punched => "punched",
            Method::Relayed => "relayed",
        }
    }
}

struct Sender {
    stream: quinn::SendStream,
    /// `finish` was called: no more messages from this side.
    finished: bool,
    /// A send future was dropped after writing part of a frame; the stream
    /// can no longer be framed, so the connection is closed on next use.
    mid_frame: bool,
}

/// Receive state lives here, not in the `recv` future, so a cancelled
/// `recv` loses nothing: the next call continues the same frame.
struct Receiver {
    stream: quinn::RecvStream,
    /// Expects the acceptor's [`STREAM_VERSION`] first on a dialler's stream.
    frames: FrameDecoder,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.inner.peer)
            .field("remote", &self.inner.conn.remote_address())
            .finish_non_exhaustive()
    }
}

/// The NodeId in the certificate the peer presented (already verified by
/// the TLS layer).
fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(tls::node_id_of)
}

fn internal_stopped(e: quinn::StoppedError) -> QuicError {
    QuicError::Internal(format!("message stream: {e}"))
}

fn opening_error(e: impl fmt::Display) -> QuicError {
    QuicError::Handshake(format!("message stream: {e}"))
}

/// A handle that does not keep the connection open (dropping the last
/// [`Connection`] still closes it): for state whose lifetime follows the
/// connection's, such as a birthday punch's path socket.
#[derive(Clone)]
pub(crate) struct WeakConnection(std::sync::Weak<Inner>);

impl WeakConnection {
    pub(crate) fn upgrade(&self) -> Option<Connection> {
        self.0.upgrade().map(|inner| Connection { inner })
    }
}

impl Connection {
    fn new(
        conn: quinn::Connection,
        peer: NodeId,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        version_pending: bool,
        cfg: &QuicConfig,
        endpoint_closing: Arc<AtomicBool>,
        admitted: Option<Admitted>,
    ) -> Connection {
        Connection {
            inner: Arc::new(Inner {
                conn,
                peer,
                max_frame: AtomicUsize::new(cfg.max_frame.min(u32::MAX as usize)),
                tx: Mutex::new(Sender { stream: send, finished: false, mid_frame: false }),
                rx: Mutex::new(Receiver { stream: recv, frames: FrameDecoder::new(cfg.max_frame.min(u32::MAX as usize), version_pending) }),
                local_reason: OnceLock::new(),
                endpoint_closing,
                unread: std::sync::Mutex::new(None),
                method: tokio::sync::watch::Sender::new(Method::Direct),
                messages: Default::default(),
                quality: Default::default(),
                _admitted: admitted,
            }),
        }
    }

    /// How the connection's packets travel now.
    pub fn method(&self) -> Method {
        *self.inner.method.borrow()
    }

    /// Records a change of path (the connector does this).
    pub fn set_method(&self, m: Method) {
        self.inner.method.send_if_modified(|cur| std::mem::replace(cur, m) != m);
    }

    /// Sees every later change of [`Connection::method`].
    pub fn watch_method(&self) -> tokio::sync::watch::Receiver<Method> {
        self.inner.method.subscribe()
    }

    pub(crate) fn downgrade(&self) -> WeakConnection {
        WeakConnection(Arc::downgrade(&self.inner))
    }

    /// Puts a message back in front of the queue (see `Inner::unread`).
    pub(crate) fn unread(&self, msg: Vec<u8>) {
        *lock(&self.inner.unread) = Some(msg);
    }

    /// Dialler side, after the QUIC handshake.
    pub(crate) async fn dialled(
        conn: quinn::Connection,
        expected: NodeId,
        cfg: &QuicConfig,
        endpoint_closing: Arc<AtomicBool>,
    ) -> Result<Connection, QuicError> {
        // The verifier already refused any other key; checked again so a
        // change there can never hand out a connection to the wrong node.
        let peer = peer_node_id(&conn).ok_or_else(|| QuicError::Handshake("no peer certificate".into()))?;
        if peer != expected {
            conn.close(VarInt::from_u32(codes::PROTOCOL), b"wrong node");
            return Err(QuicError::PeerIdMismatch(tls::PeerIdMismatch { expected, found: peer }));
        }
        let (mut send, recv) = conn.open_bi().await.map_err(opening_error)?;
        send.write_all(&[STREAM_VERSION]).await.map_err(opening_error)?;
        Ok(Connection::new(conn, peer, (send, recv), true, cfg, endpoint_closing, None))
    }

    /// Acceptor side, after the QUIC handshake.
    pub(crate) async fn accepted(
        conn: quinn::Connection,
        cfg: &QuicConfig,
        endpoint_closing: Arc<AtomicBool>,
        admitted: Admitted,
    ) -> Result<Connection, QuicError> {
        let peer = peer_node_id(&conn).ok_or_else(|| QuicError::Handshake("no peer certificate".into()))?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(opening_error)?;
        let mut v = [0u8; 1];
        recv.read_exact(&mut v).await.map_err(opening_error)?;
        if v[0] != STREAM_VERSION {
            conn.close(VarInt::from_u32(codes::PROTOCOL), b"unsupported stream version");
            return Err(QuicError::Handshake(format!("peer speaks stream version {}", v[0])));
        }
        send.write_all(&[STREAM_VERSION]).await.map_err(opening_error)?;
        Ok(Connection::new(conn, peer, (send, recv), false, cfg, endpoint_closing, Some(admitted)))
    }

    /// The peer's NodeId (its ed25519 public key), proven in the handshake.
    pub fn peer_id(&self) -> NodeId {
        self.inner.peer
    }

    /// Whether this side dialled the connection (its QUIC client).
    pub fn is_dialler(&self) -> bool {
        self.inner.conn.side().is_client()
    }

    /// The peer's current address; follows the peer if it migrates.
    pub fn remote_address(&self) -> SocketAddr {
        // Plain IPv4 also on a dual-stack endpoint (see `quic::socket`).
        crate::socket::unmapped(self.inner.conn.remote_address())
    }

    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.inner.conn.rtt()
    }

    /// Transport counters in one line, for diagnostics: UDP datagrams and
    /// bytes each way, packets lost, congestion window, RTT.
    pub fn stats_line(&self) -> String {
        let s = self.inner.conn.stats();
        format!(
            "remote {} rtt {:?} udp_tx {}/{}B udp_rx {}/{}B lost {} cwnd {} sent_pkts {}",
            self.remote_address(),
            s.path.rtt,
            s.udp_tx.datagrams,
            s.udp_tx.bytes,
            s.udp_rx.datagrams,
            s.udp_rx.bytes,
            s.path.lost_packets,
            s.path.cwnd,
            s.path.sent_packets
        )
    }

    /// The largest message `send` accepts and `recv` will take.
    pub fn max_frame(&self) -> usize {
        self.inner.max_frame.load(Ordering::Relaxed)
    }

    /// Makes this a control connection: its smaller message limit from now
    /// on, and its smaller connection receive window for all credit not yet
    /// given (quinn cannot take back what the handshake granted, nor shrink
    /// the stream's window; the message limit and the reader, which always
    /// reads a control connection, bound what that credit can make us hold).
    pub(crate) fn restrict(&self, control: &ControlLimits) {
        self.inner.max_frame.fetch_min(control.max_frame.min(u32::MAX as usize), Ordering::Relaxed);
        self.inner.conn.set_receive_window(VarInt::from_u32(control.connection_window));
    }

    /// Refuses a message the peer sent whose size, or the size it will
    /// take once decoded (`len`), is over `max`: closes the connection (the
    /// peer sees code `TOO_LARGE`) with [`CloseReason::TooLarge`].
    pub fn refuse_too_large(&self, len: u64, max: u64) {
        let _ = self.inner.local_reason.set(CloseReason::TooLarge { len, max });
        self.inner.conn.close(VarInt::from_u32(codes::TOO_LARGE), format!("message of {len} bytes over the {max}-byte limit").as_bytes());
    }

    /// Sends one message, reliably and in order with the others. Returns
    /// once the message is buffered in QUIC (flow control may make that
    /// wait). Passing a `Vec<u8>` or `Bytes` avoids copying the payload.
    ///
    /// Dropping the future part-way through a message would leave half a
    /// frame on the stream; the connection is then closed on the next send.
    pub async fn send(&self, msg: impl Into<Bytes>) -> Result<(), QuicError> {
        let msg = msg.into();
        let max = self.max_frame();
        let Some(header) = macula_nat_proto::frame::header(msg.len(), max) else {
            return Err(QuicError::FrameTooLarge { len: msg.len(), max });
        };
        let mut tx = self.inner.tx.lock().await;
        if tx.finished {
            return Err(QuicError::Closed);
        }
        if tx.mid_frame {
            self.fail("a send was cancelled mid-message");
            return Err(self.lost());
        }
        tx.mid_frame = true;
        let header = Bytes::copy_from_slice(&header);
        let mut chunks = [header, msg];
        tx.stream.write_all_chunks(&mut chunks).await.map_err(|e| self.write_error(e))?;
        tx.mid_frame = false;
        self.inner.messages[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Ends this side's messages and waits until the peer has acknowledged
    /// every one sent so far; its `recv` then returns `None` after the last
    /// message. The connection stays open (the peer may still send) until
    /// closed or dropped. Use it before `close` or dropping the connection,
    /// which would discard messages still in flight. Later `send`s fail with
    /// `QuicError::Closed`.
    pub async fn finish(&self) -> Result<(), QuicError> {
        let mut tx = self.inner.tx.lock().await;
        if tx.mid_frame {
            self.fail("a send was cancelled mid-message");
            return Err(self.lost());
        }
        tx.finished = true;
        // Already finished (an earlier, cancelled `finish`) is fine.
        let _ = tx.stream.finish();
        match tx.stream.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(QuicError::ConnectionLost(CloseReason::Failed(format!(
                "peer stopped reading (code {code})"
            )))),
            Err(quinn::StoppedError::ConnectionLost(e)) => Err(QuicError::ConnectionLost(self.reason_from(e))),
            Err(other) => Err(internal_stopped(other)),
        }
    }

    /// The next whole message, in send order; `None` once the peer has
    /// finished (see [`Connection::finish`]) or the connection is closed (see
    /// [`Connection::close_reason`]). Cancel-safe.
    pub async fn recv(&self) -> Option<Vec<u8>> {
        let m = self.recv_frame().await;
        if m.is_some() {
            self.inner.messages[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        m
    }

    /// One reading of the counters a quality [`Monitor`](macula_nat_proto::quality::Monitor)
    /// works from, stamped `at_ms`.
    pub fn quality_sample(&self, at_ms: u64) -> macula_nat_proto::quality::Sample {
        let s = self.inner.conn.stats();
        let m = |i: usize| self.inner.messages[i].load(std::sync::atomic::Ordering::Relaxed);
        macula_nat_proto::quality::Sample {
            at_ms,
            srtt_us: s.path.rtt.as_micros() as u64,
            min_rtt_us: s.path.min_rtt.as_micros() as u64,
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            datagrams_in: s.udp_rx.datagrams,
            datagrams_out: s.udp_tx.datagrams,
            bytes_in: s.udp_rx.bytes,
            bytes_out: s.udp_tx.bytes,
            messages_in: m(0),
            messages_out: m(1),
        }
    }

    /// Starts sampling this connection's quality (idempotent); the sampler
    /// ends with the connection.
    pub fn monitor_quality(&self) {
        if !self.inner.quality.start() {
            return;
        }
        self.inner.quality.feed(self.quality_sample(super::quality::now_ms()));
        let weak = self.downgrade();
        super::quality::spawn_sampler(move || match weak.upgrade() {
            Some(c) if c.close_reason().is_none() => {
                c.inner.quality.feed(c.quality_sample(super::quality::now_ms()));
                true
            }
            _ => false,
        });
    }

    /// The quality figures now (see `macula_nat_proto::quality`).
    pub fn quality(&self) -> macula_nat_proto::quality::Report {
        self.inner.quality.report(self.quality_sample(super::quality::now_ms()))
    }

    /// Sees every change between a healthy and a degraded path (needs
    /// [`Connection::monitor_quality`]).
    pub fn watch_quality(&self) -> tokio::sync::watch::Receiver<Option<macula_nat_proto::quality::Degraded>> {
        self.inner.quality.subscribe()
    }

    async fn recv_frame(&self) -> Option<Vec<u8>> {
        if let Some(m) = lock(&self.inner.unread).take() {
            return Some(m);
        }
        let mut guard = self.inner.rx.lock().await;
        let rx = &mut *guard;
        // The limit can have been lowered (a control connection); the
        // decoder applies it from the next header.
        rx.frames.set_max(self.max_frame());
        loop {
            let want = rx.frames.want();
            let chunk = match rx.stream.read_chunk(want, true).await {
                Ok(Some(c)) => c.bytes,
                Ok(None) if rx.frames.at_boundary() => return None,
                Ok(None) => {
                    self.fail("peer ended the message stream mid-message");
                    return None;
                }
                Err(e) => {
                    self.read_error(e);
                    return None;
                }
            };
            // `read_chunk` never returns more than `want`, and the decoder
            // takes a read of `want` bytes whole.
            match rx.frames.push(&chunk) {
                Ok((_, Some(msg))) => return Some(msg),
                Ok((_, None)) => {}
                Err(FrameError::Version(v)) => {
                    self.fail(&format!("peer speaks stream version {v}"));
                    return None;
                }
                Err(FrameError::TooLarge { len, max }) => {
                    // Checked on the header, before the body is allocated.
                    self.refuse_too_large(len, max);
                    return None;
                }
            }
        }
    }

    fn read_error(&self, e: ReadError) {
        match e {
            ReadError::ConnectionLost(_) | ReadError::ClosedStream => {}
            other => self.fail(&format!("message stream: {other}")),
        }
    }

    fn write_error(&self, e: WriteError) -> QuicError {
        match e {
            WriteError::ConnectionLost(ce) => QuicError::ConnectionLost(self.reason_from(ce)),
            other => {
                self.fail(&format!("message stream: {other}"));
                self.lost()
            }
        }
    }

    fn lost(&self) -> QuicError {
        match self.close_reason() {
            Some(r) => QuicError::ConnectionLost(r),
            None => QuicError::Closed,
        }
    }

    /// Closes on a framing failure; the peer sees code `PROTOCOL`.
    fn fail(&self, why: &str) {
        let _ = self.inner.local_reason.set(CloseReason::Failed(why.to_string()));
        self.inner.conn.close(VarInt::from_u32(codes::PROTOCOL), why.as_bytes());
    }

    /// Closes the connection now; the peer sees `CloseReason::Peer` with code
    /// `NORMAL` and `reason`. Messages not yet delivered may be lost: a
    /// protocol that needs a clean end should say so in a message first.
    pub fn close(&self, reason: &str) {
        self.close_with(codes::NORMAL, reason);
    }

    pub(crate) fn close_with(&self, code: u32, reason: &str) {
        let _ = self.inner.local_reason.set(CloseReason::Local { reason: reason.to_string() });
        self.inner.conn.close(VarInt::from_u32(code), reason.as_bytes());
    }

    /// Why the connection ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.conn.close_reason().map(|e| self.reason_from(e))
    }

    /// Waits until the connection ends and says why.
    pub async fn closed(&self) -> CloseReason {
        let e = self.inner.conn.closed().await;
        self.reason_from(e)
    }

    fn reason_from(&self, e: ConnectionError) -> CloseReason {
        match e {
            ConnectionError::LocallyClosed => match self.inner.local_reason.get() {
                Some(r) => r.clone(),
                None if self.inner.endpoint_closing.load(Ordering::Acquire) => CloseReason::NodeClosed,
                None => CloseReason::Local { reason: String::new() },
            },
            ConnectionError::ApplicationClosed(c) => CloseReason::Peer {
                code: c.error_code.into_inner(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            ConnectionError::TimedOut => CloseReason::TimedOut,
            ConnectionError::Reset => CloseReason::Reset,
            other => CloseReason::Failed(other.to_string()),
        }
    }
}
