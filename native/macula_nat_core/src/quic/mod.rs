//! QUIC between nodes, on the node's own UDP socket.
//!
//! Why the same socket: the NAT mapping that detection measured and that
//! hole punching opened belongs to that socket; a second socket would get a
//! different mapping and the punched path would be useless to QUIC.
//!
//! * [`socket`]: quinn's `AsyncUdpSocket` over the node socket. The node's
//!   receive loop demultiplexes: STUN stays with the node, everything else is
//!   queued for the QUIC endpoint. Sends go straight to the socket unless a
//!   [`DatagramTunnel`] is routed for the destination (the relay seam).
//! * [`tls`]: node-key authentication (self-signed ed25519 certificates,
//!   the dialler pins the NodeId it dialled).
//! * [`conn`]: [`Connection`], ordered messages over one stream.
//!
//! Paths and migration: the acceptor follows a peer whose address changes
//! (quinn's server-side migration is on). A dialler addresses the peer at
//! whatever address `connect` was given; once hole punching has opened a
//! path, the dialler connects to the punched address, which is then the
//! QUIC path. Moving an existing client connection onto a newly punched
//! path would need quinn's client-side path migration, which it does not
//! offer for a remote address change, so a new connection is made instead.

pub(crate) mod conn;
pub(crate) mod dispatch;
mod quality;
pub(crate) mod socket;
pub(crate) mod tls;

pub use conn::{codes, CloseReason, Connection, Method};
pub use macula_nat_proto::limits::conn_caps::ConnLimits;
pub use socket::DatagramTunnel;
pub use tls::{PeerIdMismatch, ALPN};

use crate::lock::lock;
use crate::socket::Counters;
use crate::{runtime, Error, Identity, NodeId};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::udp::RecvMeta;
use quinn::{ConnectError, ConnectionError, IdleTimeout, TransportConfig, VarInt};
use rustls::sign::CertifiedKey;
use crate::socket::{Entry, Inbox, NodeSocket, SocketSlot};
use socket::{QuicSocket, Routes};
use macula_nat_proto::detect::lifetime::keepalive_interval;
use macula_nat_proto::limits::conn_caps::ConnCaps;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Errors of the QUIC layer. Kept apart from [`crate::Error`] because the
/// binding crate matches that enum exhaustively; [`QuicError::kind`] gives
/// the stable atom name, and `From` maps into `Error` where a caller wants one
/// error type.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("endpoint closed")]
    Closed,
    #[error("{0}")]
    PeerIdMismatch(PeerIdMismatch),
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer refused the connection before its handshake (one of its
    /// connection caps, `ConnLimits`, was full): worth retrying later.
    #[error("refused by the peer (connection cap)")]
    Refused,
    #[error("timed out")]
    TimedOut,
    #[error("connection lost: {0}")]
    ConnectionLost(CloseReason),
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("invalid address: {0}")]
    InvalidAddress(SocketAddr),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

impl QuicError {
    /// Stable short name, for the Erlang error atom.
    pub fn kind(&self) -> &'static str {
        match self {
            QuicError::Closed => "closed",
            QuicError::PeerIdMismatch(_) => "peer_id_mismatch",
            QuicError::Handshake(_) => "handshake_failed",
            QuicError::Refused => "refused",
            QuicError::TimedOut => "timeout",
            QuicError::ConnectionLost(_) => "connection_lost",
            QuicError::FrameTooLarge { .. } => "frame_too_large",
            QuicError::InvalidAddress(_) => "invalid_address",
            QuicError::Io(_) => "io",
            QuicError::Internal(_) => "internal",
        }
    }
}

impl From<QuicError> for Error {
    fn from(e: QuicError) -> Error {
        match e {
            QuicError::Closed => Error::Closed,
            QuicError::TimedOut => Error::Timeout,
            QuicError::Io(io) => Error::Io(io),
            other => Error::Internal(other.to_string()),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> QuicError {
    QuicError::Internal(e.to_string())
}

/// Bounds on a caller's round-trip estimate for a dial: below 10 ms a
/// loopback estimate would make quinn resend before a far peer could
/// answer; above quinn's own default the estimate gains nothing.
const MIN_INITIAL_RTT: Duration = Duration::from_millis(10);
const MAX_INITIAL_RTT: Duration = Duration::from_millis(333);

/// The largest message a connection takes by default: 8 MiB. Large enough
/// for any message of the guide (terms of a few KiB) and for bulk transfer
/// in chunks, twice the 4 MiB a connection may put in its owner's mailbox
/// at once (`{active, true}`, see `conn_nif`), so a chunk that size still
/// travels alone; small enough that a compressed term, which the VM
/// inflates to its declared size, can never ask for more than 8 MiB, and
/// that 1024 connections each holding a half-read message stay far from a
/// host's memory. Raise it (`max_message_bytes`) for larger messages.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// Limits of a control connection (rendezvous signalling, relay control):
/// messages of at most a few hundred bytes, so a peer on one may hold
/// little. 64 KiB leaves room for the largest signalling message (a
/// profile with 16 candidates and 4 relays is under 1 KiB) many times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlLimits {
    pub max_frame: usize,
    pub stream_window: u32,
    pub connection_window: u32,
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits { max_frame: 64 << 10, stream_window: 128 << 10, connection_window: 256 << 10 }
    }
}

/// Connection settings. The defaults keep NAT mappings alive (keep-alive
/// well under the usual 30 s UDP mapping timeout) and allow bulk transfer
/// without tuning.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// Largest message, both directions (at most `u32::MAX`); see
    /// [`DEFAULT_MAX_FRAME`].
    pub max_frame: usize,
    /// Keep-alive interval: keeps NAT mappings open on idle connections.
    /// Control connections dialled once the mapping lifetime is measured
    /// use `keepalive_interval` of it instead (lifetime / 2.5, at most a
    /// third of `idle_timeout`; see [`QuicEndpoint::set_mapping_lifetime`]).
    pub keep_alive: Duration,
    /// Keep-alive interval of application connections (the ones dialled
    /// by [`QuicEndpoint::connect_rtt`]: sessions and
    /// `macula_connection:open`): the dialler PINGs when idle this often
    /// and the peer acknowledges, so each side hears from a live path at
    /// least this often and a quality monitor can call a path black-holed
    /// after 2.2 s (`macula_nat_proto::quality`). About 40 bytes each way
    /// per interval on an idle connection; a busy one sends no PING.
    pub app_keep_alive: Duration,
    /// A connection with no packet from the peer for this long is dead.
    pub idle_timeout: Duration,
    /// Bound on `connect` and on an incoming connection reaching `accept`.
    pub handshake_timeout: Duration,
    /// Per-stream receive window. quinn's default (1.25 MB) caps one stream
    /// at ~12 MB/s per 100 ms of RTT; messages all share one stream.
    pub stream_window: u32,
    /// Connection-wide receive window.
    pub connection_window: u32,
    /// Bytes buffered for sending before `send` waits.
    pub send_window: u64,
    /// Handshaken connections waiting for `accept`; beyond it new ones are
    /// closed with `codes::BUSY`.
    pub accept_backlog: usize,
    /// Incoming connections at once, in total and per source IP; beyond
    /// them a new one is refused before its handshake.
    pub conn_limits: ConnLimits,
    /// Limits of control connections (see [`ControlLimits`]).
    pub control: ControlLimits,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            max_frame: DEFAULT_MAX_FRAME,
            keep_alive: Duration::from_secs(5),
            app_keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            stream_window: 16 << 20,
            connection_window: 32 << 20,
            send_window: 32 << 20,
            accept_backlog: 64,
            conn_limits: ConnLimits::default(),
            control: ControlLimits::default(),
        }
    }
}

impl QuicConfig {
    fn transport(&self) -> Result<TransportConfig, QuicError> {
        self.transport_with(self.stream_window, self.connection_window)
    }

    /// A control connection's transport: its small windows.
    fn control_transport(&self) -> Result<TransportConfig, QuicError> {
        self.transport_with(self.control.stream_window, self.control.connection_window)
    }

    fn transport_with(&self, stream_window: u32, connection_window: u32) -> Result<TransportConfig, QuicError> {
        let mut t = TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(IdleTimeout::try_from(self.idle_timeout).map_err(internal)?))
            .stream_receive_window(VarInt::from_u32(stream_window))
            .receive_window(VarInt::from_u32(connection_window))
            .send_window(self.send_window)
            // One message stream per connection, opened by the dialler.
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None);
        Ok(t)
    }
}

/// A node's QUIC endpoint: dials and accepts authenticated connections.
/// Cheap to clone.
#[derive(Clone)]
pub struct QuicEndpoint {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: quinn::Endpoint,
    node_id: NodeId,
    cert: Arc<CertifiedKey>,
    cfg: QuicConfig,
    transport: Arc<TransportConfig>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Connection>>,
    acceptor: JoinHandle<()>,
    routes: Arc<Routes>,
    /// `None` for a standalone endpoint (own socket, no node).
    inbox: Option<Arc<Inbox>>,
    closing: Arc<AtomicBool>,
    caps: Arc<Caps>,
    /// Keep-alive of control connections dialled from now on, ms.
    control_keep_alive: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl QuicEndpoint {
    /// Endpoint on the node's socket; called by `Node::quic_with`.
    /// `six`: a dual-stack node's IPv6 socket and its slot.
    pub(crate) fn on_node(
        identity: &Identity,
        sock: &NodeSocket,
        slot: SocketSlot,
        six: Option<(&NodeSocket, SocketSlot)>,
        inbox: Arc<Inbox>,
        counters: Arc<Counters>,
        cfg: QuicConfig,
    ) -> Result<QuicEndpoint, QuicError> {
        let routes = Arc::new(Routes::default());
        let socket = QuicSocket::new(sock, slot, six, inbox.clone(), routes.clone(), counters)?;
        let ep = Self::build(identity, cfg, routes, Some(inbox.clone()), |server| {
            quinn::Endpoint::new_with_abstract_socket(
                endpoint_config(),
                Some(server),
                Arc::new(socket),
                Arc::new(quinn::TokioRuntime),
            )
        })?;
        inbox.set_attached(true);
        Ok(ep)
    }

    /// An endpoint on its own plain socket, driven by quinn's stock socket
    /// code, with the same TLS and transport settings and no STUN. Exists to
    /// measure what the shared node socket costs (see `bench_quic`), and for
    /// tools that need QUIC without a node.
    pub fn standalone(identity: &Identity, bind: SocketAddr, cfg: QuicConfig) -> Result<QuicEndpoint, QuicError> {
        let sock = std::net::UdpSocket::bind(bind)?;
        Self::build(identity, cfg, Arc::new(Routes::default()), None, |server| {
            quinn::Endpoint::new(endpoint_config(), Some(server), sock, Arc::new(quinn::TokioRuntime))
        })
    }

    fn build(
        identity: &Identity,
        cfg: QuicConfig,
        routes: Arc<Routes>,
        inbox: Option<Arc<Inbox>>,
        make: impl FnOnce(quinn::ServerConfig) -> std::io::Result<quinn::Endpoint>,
    ) -> Result<QuicEndpoint, QuicError> {
        let cert = tls::node_certificate(identity).map_err(QuicError::Internal)?;
        let transport = Arc::new(cfg.transport()?);
        let server_tls = tls::server_config(&cert).map_err(internal)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls).map_err(internal)?));
        server.transport_config(transport.clone());
        // quinn spawns its endpoint driver on the current runtime.
        let _guard = runtime::handle().enter();
        let endpoint = make(server)?;
        let closing = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(cfg.accept_backlog.max(1));
        let caps = Arc::new(Caps { caps: std::sync::Mutex::new(ConnCaps::new(cfg.conn_limits)), refused: AtomicU64::new(0) });
        let acceptor = runtime::spawn(accept_loop(endpoint.clone(), tx, cfg.clone(), closing.clone(), caps.clone()));
        let control_keep_alive = AtomicU64::new(cfg.keep_alive.as_millis() as u64);
        Ok(QuicEndpoint {
            shared: Arc::new(Shared {
                endpoint,
                node_id: identity.node_id(),
                cert,
                control_keep_alive,
                cfg,
                transport,
                incoming: tokio::sync::Mutex::new(rx),
                acceptor,
                routes,
                inbox,
                closing,
                caps,
            }),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    pub fn config(&self) -> &QuicConfig {
        &self.shared.cfg
    }

    pub fn local_addr(&self) -> Result<SocketAddr, QuicError> {
        Ok(self.shared.endpoint.local_addr()?)
    }

    /// Connections currently open (including ones still closing).
    pub fn open_connections(&self) -> usize {
        self.shared.endpoint.open_connections()
    }

    /// Incoming connections counted against the caps now (handshaking or
    /// established, not yet dropped).
    pub fn incoming_connections(&self) -> usize {
        lock(&self.shared.caps.caps).total()
    }

    /// Incoming connections refused so far for a cap (in total or per IP).
    pub fn refused_connections(&self) -> u64 {
        self.shared.caps.refused.load(Ordering::Relaxed)
    }

    /// Dials a control connection (to a rendezvous or a relay): its small
    /// windows and message limit ([`ControlLimits`]), so the node at the
    /// other end can make us hold little (a hostile rendezvous or relay
    /// included). Signalling and the relay client dial with it.
    pub async fn connect_control(&self, addr: SocketAddr, expected_peer: NodeId) -> Result<Connection, QuicError> {
        let t = self.shared.cfg.control_transport()?;
        let conn = self.dial(addr, expected_peer, Arc::new(t)).await?;
        conn.restrict(&self.shared.cfg.control);
        Ok(conn)
    }

    /// Dials `addr` and succeeds only if the node there proves it holds the
    /// key `expected_peer`, and accepts us in return.
    pub async fn connect(&self, addr: SocketAddr, expected_peer: NodeId) -> Result<Connection, QuicError> {
        let transport = self.transport_for(None, false)?;
        self.dial(addr, expected_peer, transport).await
    }

    /// [`QuicEndpoint::connect`] with an estimate of the round trip to
    /// `addr` (e.g. measured through a rendezvous). quinn otherwise assumes
    /// 333 ms until its first sample, so a lost first packet, which is
    /// common while a hole is still being punched, would be resent only
    /// after about a second; with the estimate it is resent after about
    /// three round trips.
    /// An application connection: keeps alive every
    /// [`QuicConfig::app_keep_alive`].
    pub async fn connect_rtt(&self, addr: SocketAddr, expected_peer: NodeId, rtt: Option<Duration>) -> Result<Connection, QuicError> {
        let transport = self.transport_for(rtt, true)?;
        self.dial(addr, expected_peer, transport).await
    }

    /// The transport of a dial: with the caller's round-trip estimate, and
    /// the application keep-alive for an application connection.
    fn transport_for(&self, rtt: Option<Duration>, app: bool) -> Result<Arc<TransportConfig>, QuicError> {
        let s = &self.shared;
        let control = self.control_keep_alive();
        if rtt.is_none() && !app && control == s.cfg.keep_alive {
            return Ok(s.transport.clone());
        }
        let mut t = s.cfg.transport()?;
        t.keep_alive_interval(Some(control));
        if let Some(rtt) = rtt {
            t.initial_rtt(rtt.clamp(MIN_INITIAL_RTT, MAX_INITIAL_RTT));
        }
        if app {
            t.keep_alive_interval(Some(s.cfg.app_keep_alive));
        }
        Ok(Arc::new(t))
    }

    /// Spaces the keep-alives of control connections (rendezvous, relay)
    /// dialled from now on from the NAT's measured mapping `lifetime`
    /// (`macula_nat_proto::detect::lifetime::keepalive_interval`): two or
    /// more per lifetime, no further apart than a third of the idle
    /// timeout; `None` goes back to [`QuicConfig::keep_alive`]. Application
    /// connections keep [`QuicConfig::app_keep_alive`] (their PINGs are the
    /// black-hole detector's probes).
    pub fn set_mapping_lifetime(&self, lifetime: Option<Duration>) {
        let cfg = &self.shared.cfg;
        let k = keepalive_interval(lifetime, cfg.keep_alive, cfg.idle_timeout / 3);
        self.shared.control_keep_alive.store(k.as_millis() as u64, Ordering::Relaxed);
    }

    /// The keep-alive interval of control connections dialled now.
    pub fn control_keep_alive(&self) -> Duration {
        Duration::from_millis(self.shared.control_keep_alive.load(Ordering::Relaxed))
    }

    async fn dial(&self, addr: SocketAddr, expected_peer: NodeId, transport: Arc<TransportConfig>) -> Result<Connection, QuicError> {
        let s = &self.shared;
        if s.closing.load(Ordering::Acquire) {
            return Err(QuicError::Closed);
        }
        let seen = tls::SeenPeer::default();
        let client_tls = tls::client_config(&s.cert, expected_peer, seen.clone()).map_err(internal)?;
        let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls).map_err(internal)?));
        client.transport_config(transport);
        let connecting = s.endpoint.connect_with(client, addr, tls::SERVER_NAME).map_err(|e| match e {
            ConnectError::EndpointStopping => QuicError::Closed,
            ConnectError::InvalidRemoteAddress(a) => QuicError::InvalidAddress(a),
            other => internal(other),
        })?;
        let dial = async {
            let conn = connecting.await.map_err(|e| handshake_error(e, expected_peer, &seen))?;
            Connection::dialled(conn, expected_peer, &s.cfg, s.closing.clone()).await
        };
        tokio::time::timeout(s.cfg.handshake_timeout, dial).await.unwrap_or(Err(QuicError::TimedOut))
    }

    /// The next authenticated incoming connection; `None` once the endpoint
    /// is closed.
    pub async fn accept(&self) -> Option<Connection> {
        self.shared.incoming.lock().await.recv().await
    }

    /// Closes every connection (peers see `codes::NODE_CLOSED`) and stops
    /// accepting. The node does this when it closes.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.endpoint.close(VarInt::from_u32(codes::NODE_CLOSED), b"node closed");
    }

    /// Waits until closed connections have told their peers, at most `limit`.
    pub(crate) async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.shared.endpoint.wait_idle()).await;
    }

    /// Relay seam: from now on QUIC datagrams for `remote` go through
    /// `tunnel` instead of the socket. Datagrams coming back through the
    /// tunnel enter with [`QuicEndpoint::inject`].
    pub fn route_via(&self, remote: SocketAddr, tunnel: Arc<dyn DatagramTunnel>) {
        self.shared.routes.set(remote, Some(socket::Route::Tunnel(tunnel)));
    }

    /// From now on QUIC datagrams for `remote` go to `real` on the node
    /// socket (QUIC still sees `remote`; the node rewrites what arrives from
    /// `real`, see `Node::alias`).
    pub fn route_to(&self, remote: SocketAddr, real: SocketAddr) {
        self.shared.routes.set(remote, Some(socket::Route::Via(real)));
    }

    /// Back to the raw socket for `remote`.
    pub fn clear_route(&self, remote: SocketAddr) {
        self.shared.routes.set(remote, None);
    }

    /// Hands a datagram that arrived by other means (a tunnel) to QUIC as if
    /// it came from `from`. `false` if this endpoint cannot take it (a
    /// standalone endpoint, or the node closed).
    pub fn inject(&self, from: SocketAddr, datagram: Bytes) -> bool {
        let Some(inbox) = self.shared.inbox.as_ref().filter(|i| i.is_attached()) else { return false };
        let meta = RecvMeta { addr: from, len: datagram.len(), stride: datagram.len(), ..RecvMeta::default() };
        inbox.push(std::iter::once(Entry { meta, data: datagram }));
        true
    }
}

/// Endpoint settings shared by node and standalone endpoints.
fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    // No QUIC-bit greasing (RFC 9287): with it, peers may clear the fixed
    // bit 0x40, and the first-byte test that tells QUIC from STUN on the
    // shared socket (RFC 9443) stops being reliable. Not advertising it
    // keeps peers from greasing towards us.
    c.grease_quic_bit(false);
    c
}

/// Turns a failed QUIC handshake into the clearest error we can give.
fn handshake_error(e: ConnectionError, expected: NodeId, seen: &tls::SeenPeer) -> QuicError {
    let found = *lock(seen);
    match (found, e) {
        (Some(found), _) if found != expected => QuicError::PeerIdMismatch(PeerIdMismatch { expected, found }),
        (_, ConnectionError::TimedOut) => QuicError::TimedOut,
        (_, ConnectionError::LocallyClosed) => QuicError::Closed,
        // What `Incoming::refuse` sends (our `accept_loop` over a cap).
        (_, ConnectionError::ConnectionClosed(c)) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            QuicError::Refused
        }
        (_, other) => QuicError::Handshake(other.to_string()),
    }
}

/// The connection caps of an endpoint and what they refused.
struct Caps {
    caps: std::sync::Mutex<ConnCaps>,
    refused: AtomicU64,
}

/// One incoming connection counted against the caps; counted out when
/// dropped (with the connection, or when its handshake fails).
pub(crate) struct Admitted {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        lock(&self.caps.caps).release(self.ip);
    }
}

/// An IPv4 peer seen on a dual-stack socket counts as its IPv4 address, so
/// it cannot double its share by alternating the two forms.
fn source_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Completes incoming handshakes concurrently, so one slow or silent peer
/// does not hold up the others, and queues the results for `accept`. A
/// connection over the caps is refused at its first packet (quinn's
/// `Incoming::refuse`: a small CONNECTION_CLOSE, no handshake, no state).
async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<Connection>,
    cfg: QuicConfig,
    closing: Arc<AtomicBool>,
    caps: Arc<Caps>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let ip = source_ip(remote);
        if let Err(why) = lock(&caps.caps).admit(ip) {
            caps.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("incoming QUIC connection from {remote} refused: {why:?} cap");
            incoming.refuse();
            continue;
        }
        let admitted = Admitted { caps: caps.clone(), ip };
        let (tx, cfg, closing) = (tx.clone(), cfg.clone(), closing.clone());
        runtime::spawn(async move {
            let handshake = async {
                let conn = incoming.await.map_err(|e| QuicError::Handshake(e.to_string()))?;
                Connection::accepted(conn, &cfg, closing, admitted).await
            };
            match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
                Ok(Ok(conn)) => match tx.try_send(conn) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(c)) => c.close_with(codes::BUSY, "accept backlog full"),
                    Err(mpsc::error::TrySendError::Closed(c)) => c.close_with(codes::NODE_CLOSED, "node closed"),
                },
                Ok(Err(e)) => tracing::debug!("incoming QUIC connection from {remote} failed: {e}"),
                Err(_) => tracing::debug!("incoming QUIC connection from {remote} timed out"),
            }
        });
    }
}
