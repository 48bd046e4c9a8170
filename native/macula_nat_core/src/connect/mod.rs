//! Signalling client and `connect`: rendezvous, strategy, punch, QUIC.
//!
//! # Flow
//!
//! 1. [`Signal::join`] dials the rendezvous from the node's socket, says
//!    `Hello(Control)` and learns its observed (reflexive) address. The
//!    control connection is kept (QUIC keep-alive holds the NAT mapping)
//!    and re-dialled when lost.
//! 2. [`connect`] (side A, the initiator) sends `Connect` with its profile;
//!    B's signal receives `Incoming` and answers automatically with its own
//!    profile; the rendezvous relays `Answered` to A and sends `Go` to both.
//!    "Its profile" is read when the message is sent: the node's last
//!    detected one ([`crate::local_profile`], published by every detection),
//!    else the signal's configured one. While the node's first detection is
//!    under way, a connect waits for it (within its timeout) and so does a
//!    responder before it answers (at most `responder_profile_wait`).
//! 3. Both compute `strategy::choose(A, B)` from the two profiles (the
//!    same inputs on both sides, so the same answer) and act on `Go`, after
//!    the wait it carries:
//!    * `Direct { dialer }`: the dialer (A for `Either`) QUIC-connects to the
//!      other's observed address.
//!    * `ConnectionReversal { dialer }`: the other side ("listener") sends a
//!      few STUN packets towards the dialer's observed address (opening its
//!      filter for the dialer's IP); the dialer then connects to the
//!      listener's aimed address.
//!    * `SimplePunch` / `PredictPreservation` / `PredictContiguity`: both
//!      run the punch machine on their node socket (targets from
//!      `macula_nat_proto::connect::targets`); A then QUIC-connects to the punched address.
//!    * `BirthdayProbing { hard }`: the hard side punches from the node
//!      socket and a few hundred extra sockets ([`crate::punch::birthday`]) towards
//!      the easy side's endpoint, the easy side probes random ports of the
//!      hard side's IP; A then QUIC-connects to the punched address, over
//!      the winning extra socket when the hard side's path is one.
//!    * `Relay`: with `allow_relay`, through a relay (below); otherwise
//!      `SymmetricNat` when both sides have unpredictable ports, else
//!      `NoRelay`.
//!
//!    A punch that fails falls back to the relay too when `allow_relay`;
//!    a failed prediction (preservation, contiguity, connection reversal)
//!    first gets one more session, predicted afresh, when that and a relay
//!    still fit in the connect's timeout (`macula_nat_proto::connect::may_retry`).
//! 4. Whoever dials sends `Hello(Session(id))` first; the other side's
//!    dispatcher hands that connection to the session. The initiator gets it
//!    from `connect`; on the responder it is queued for [`Signal::accept`]
//!    (together with unsolicited incoming connections), so the application
//!    on B receives every connection its peers made to it there.
//!
//! Methods reported: `Direct` for Direct and ConnectionReversal (a plain
//! dial, no punching), `Punched` for the punching strategies, `Relayed`.
//!
//! # Relays
//!
//! Each node keeps reservations at the relays it is given
//! ([`Signal::set_relays`], a [`RelaySet`]) and advertises the live ones in
//! its profile. A relayed connect: the initiator opens a session to the
//! responder at one of the responder's relays, and dials the responder's
//! node key through it (the QUIC connection stays end to end; its remote
//! address is a virtual one that the relay session routes). The initiator
//! then looks after the connection:
//! * relay lost (its link dies): the session is opened again at the
//!   responder's next relay and the virtual address re-routed there; QUIC
//!   resends what was in flight; the responder's QUIC sees its peer migrate.
//! * upgrade: every `upgrade_interval` (doubling to 30 s) it runs a punch
//!   session with the responder (`Connect` with `FLAG_UPGRADE`: both punch,
//!   nobody dials). On success the virtual address is routed to the punched
//!   address and that address aliased back to it, so QUIC carries on
//!   without seeing a change; nothing is lost or reordered (one QUIC
//!   stream). The method becomes `Punched` on both sides (the responder
//!   sees its QUIC peer migrate to a real address).

//!
//! # Files
//!
//! * `signalling`: the [`Signal`] and [`connect`]; `membership`: a
//!   membership at a rendezvous (join, control loop, incoming messages),
//!   with `inner` (what it shares with its sessions);
//! * `opts`, `error`: [`ConnectOpts`], [`SignalConfig`], [`ConnectError`];
//! * `profile`: our profile for a session, a peer's candidates;
//! * `session`: a session's channel, the `Meeting`, the
//!   session's first message, late connections;
//! * `initiator`: [`connect`], its sessions and relay fallback;
//! * `responder`: answering an `Incoming`;
//! * `strategies`: acting on the go, one function per strategy arm, with
//!   `punching` (punch, bounded dials) and `primers` below them;
//! * `relayed`: relayed connections, relay loss and upgrades;
//! * `reach`: targets registered at another rendezvous, found through
//!   their signed record, signalled through a guest connection;
//! * `homes`: the rendezvous a node joins (several at once: a primary and
//!   standbys), which of them are live, what the record names.
//!
//! The decisions (targets, strategy of a session, dial bounds, retries)
//! are `macula_nat_proto::connect`'s.

mod error;
mod failover;
mod homes;
mod initiator;
mod inner;
mod membership;
mod opts;
mod primers;
mod profile;
mod punching;
mod reach;
mod relayed;
mod responder;
mod session;
mod signalling;
mod strategies;

pub use crate::quic::Method;
pub use error::ConnectError;
pub use signalling::{connect, connect_detailed};
pub use macula_nat_proto::connect::{profile_of, public_profile};
pub use opts::{ConnectOpts, Connected, SignalConfig};
pub use signalling::Signal;
