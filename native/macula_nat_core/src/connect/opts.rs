//! Settings of a connect ([`ConnectOpts`]) and of signalling ([`SignalConfig`]), and
//! what a connect returns ([`Connected`]).

use crate::Connection;
use crate::quic::Method;
use macula_nat_proto::record::PeerInfo;
use macula_nat_proto::strategy::Strategy;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ConnectOpts {
    /// Bound on the whole connect (signalling, punching, QUIC handshake).
    pub timeout: Duration,
    /// Transmissions per punched path.
    pub max_punch_attempts: u32,
    /// Whether a relayed connection is acceptable (when punching is
    /// impossible or fails).
    pub allow_relay: bool,
    /// Use Direct / ConnectionReversal when the table says so (default).
    /// `false` makes the pair punch instead (tests, or a peer that lies
    /// about being reachable).
    pub prefer_direct: bool,
    /// Go through a relay whatever the NAT types.
    pub relay_only: bool,
    /// First wait before a relayed connection tries to upgrade to a punched
    /// path (then doubling up to 30 s); `None`: stay relayed.
    pub upgrade_interval: Option<Duration>,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts {
            timeout: Duration::from_secs(10),
            max_punch_attempts: 10,
            allow_relay: false,
            prefer_direct: true,
            relay_only: false,
            upgrade_interval: Some(Duration::from_secs(2)),
        }
    }
}

/// A successful connect, with details.
#[derive(Debug)]
pub struct Connected {
    pub conn: Connection,
    pub method: Method,
    pub strategy: Strategy,
    pub elapsed: Duration,
}

/// Signalling settings.
#[derive(Clone, Debug)]
pub struct SignalConfig {
    /// This node's NAT profile while its node has none published
    /// ([`Node::local_profile`]: detections publish there, and a published
    /// profile wins). `public_addr` is ignored: the rendezvous'
    /// observation is used.
    pub profile: PeerInfo,
    /// Extra candidate addresses to advertise (e.g. LAN addresses).
    pub candidates: Vec<SocketAddr>,
    /// Bound on dialling the rendezvous and registering.
    pub join_timeout: Duration,
    /// Wait between reconnection attempts (doubles up to 8x).
    pub reconnect_backoff: Duration,
    /// How long a responder waits for the session to complete.
    pub responder_timeout: Duration,
    /// How long a responder waits for this node's first detection before
    /// it answers (the detection's own deadline usually ends it sooner).
    pub responder_profile_wait: Duration,
    /// Learn the primer TTL at join and send TTL-limited primers before
    /// punching (see [`crate::punch::primer`]). Default `true`; off only to measure
    /// what they are worth.
    pub primers: bool,
    /// Sessions this node answers at once, from all initiators together
    /// and from one initiator: each is a task, a punch and maybe sockets,
    /// and a `Connect` costs its sender one message. Over either, the
    /// `Incoming` is refused with `Reject(BUSY)`.
    pub max_responder_sessions: usize,
    pub max_responder_sessions_per_peer: usize,
    /// Guest signalling connections (to rendezvous of targets registered
    /// elsewhere, see `connect::reach`) kept at once; 0: none, a connect
    /// reaches only nodes at our rendezvous.
    pub max_guests: usize,
    /// A guest connection with no session for this long is closed.
    pub guest_idle: Duration,
    /// How often a home rendezvous is pinged (`None`: never; a crashed
    /// one is then noticed at QUIC's idle timeout).
    pub ping_every: Option<Duration>,
    /// A home that answered pings and has been silent this long is
    /// rejoined (and left out of our record meanwhile).
    pub silent_after: Duration,
}

impl SignalConfig {
    pub fn new(profile: PeerInfo) -> SignalConfig {
        SignalConfig {
            profile,
            candidates: Vec::new(),
            join_timeout: Duration::from_secs(5),
            reconnect_backoff: Duration::from_millis(250),
            responder_timeout: Duration::from_secs(15),
            responder_profile_wait: Duration::from_secs(5),
            primers: true,
            max_responder_sessions: 128,
            max_responder_sessions_per_peer: 16,
            max_guests: macula_nat_proto::reach::MAX_GUESTS,
            guest_idle: macula_nat_proto::reach::GUEST_IDLE,
            ping_every: Some(macula_nat_proto::homes::PING_EVERY),
            silent_after: macula_nat_proto::homes::SILENT_AFTER,
        }
    }
}
