//! Sorts a node's incoming QUIC connections once signalling is in use.
//!
//! The node's QUIC endpoint has one accept queue. When a [`crate::Signal`]
//! or a [`crate::Rendezvous`] runs on the node, the dispatcher owns that
//! queue and reads the first message of each incoming connection:
//!
//! * `Hello(Control)`: a peer's control connection, for the rendezvous
//!   running on this node (closed if there is none);
//! * `Hello(Relay)`: a relay client's connection, for the relay server
//!   running on this node (closed if there is none);
//! * `Hello(Session(id))`: the connection of a connect session; handed to
//!   the session waiting for it (or kept briefly until it registers);
//! * anything else, or nothing within [`CLASSIFY_TIMEOUT`]: an unsolicited
//!   connection for the application, queued for `Signal::accept()` (a
//!   message read to classify it is put back, so the application sees it).
//!
//! Applications must then take incoming connections from
//! `Signal::accept()`, not from `node.quic()?.accept()`.

use crate::lock::lock;
use macula_nat_proto::signal::{HelloKind, Msg, SessionId};
use crate::{runtime, Connection, QuicEndpoint};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long an incoming connection may stay silent before it is taken as
/// unsolicited.
pub const CLASSIFY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Session connections that arrived before their session registered are
/// kept this long.
const EARLY_TTL: Duration = Duration::from_secs(10);
const MAX_EARLY: usize = 64;

pub(crate) struct Dispatch {
    control: Mutex<Option<mpsc::UnboundedSender<Connection>>>,
    relay: Mutex<Option<mpsc::UnboundedSender<Connection>>>,
    sessions: Mutex<HashMap<SessionId, oneshot::Sender<Connection>>>,
    early: Mutex<HashMap<SessionId, (Instant, Connection)>>,
    general_tx: mpsc::Sender<Connection>,
    general_rx: tokio::sync::Mutex<mpsc::Receiver<Connection>>,
    /// For the control connections it sorts out (rendezvous, relay).
    control_limits: crate::quic::ControlLimits,
}

impl Dispatch {
    /// Starts the accept loop on `quic`.
    pub(crate) fn start(quic: QuicEndpoint) -> std::sync::Arc<Dispatch> {
        let (general_tx, general_rx) = mpsc::channel(quic.config().accept_backlog.max(1));
        let d = std::sync::Arc::new(Dispatch {
            control: Mutex::new(None),
            relay: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            early: Mutex::new(HashMap::new()),
            general_tx,
            general_rx: tokio::sync::Mutex::new(general_rx),
            control_limits: quic.config().control,
        });
        let weak = std::sync::Arc::downgrade(&d);
        runtime::spawn(async move {
            while let Some(conn) = quic.accept().await {
                let Some(d) = weak.upgrade() else { return };
                runtime::spawn(async move { d.classify(conn).await });
            }
        });
        d
    }

    async fn classify(&self, conn: Connection) {
        match tokio::time::timeout(CLASSIFY_TIMEOUT, conn.recv()).await {
            Err(_) => self.general(conn),
            Ok(None) => {}
            Ok(Some(m)) => match Msg::decode(&m) {
                Ok(Msg::Hello(HelloKind::Control)) => {
                    conn.restrict(&self.control_limits);
                    Self::hand_over(&self.control, conn, "no rendezvous here")
                }
                Ok(Msg::Hello(HelloKind::Relay)) => {
                    conn.restrict(&self.control_limits);
                    Self::hand_over(&self.relay, conn, "no relay here")
                }
                Ok(Msg::Hello(HelloKind::Session(s))) => self.session_arrived(s, conn),
                _ => {
                    conn.unread(m);
                    self.general(conn);
                }
            },
        }
    }

    fn hand_over(to: &Mutex<Option<mpsc::UnboundedSender<Connection>>>, conn: Connection, refusal: &str) {
        let tx = lock(to).clone();
        match tx {
            Some(tx) => {
                if let Err(e) = tx.send(conn) {
                    e.0.close(refusal);
                }
            }
            None => conn.close(refusal),
        }
    }

    fn session_arrived(&self, s: SessionId, conn: Connection) {
        let waiter = lock(&self.sessions).remove(&s);
        let conn = match waiter {
            Some(tx) => match tx.send(conn) {
                Ok(()) => return,
                Err(c) => c,
            },
            None => conn,
        };
        tracing::debug!("dispatch: session {:02x?} connection from {} kept until its session waits", &s.as_bytes()[..4], conn.remote_address());
        {
            let mut e = lock(&self.early);
            let now = Instant::now();
            e.retain(|_, (t, _)| now.duration_since(*t) < EARLY_TTL);
            if e.len() < MAX_EARLY {
                e.insert(s, (now, conn));
            }
        }
    }

    fn general(&self, conn: Connection) {
        if let Err(mpsc::error::TrySendError::Full(c)) = self.general_tx.try_send(conn) {
            c.close_with(crate::quic::codes::BUSY, "accept backlog full");
        }
    }

    /// Queues a connection for `accept` (a responder's session connection).
    pub(crate) fn deliver(&self, conn: Connection) {
        self.general(conn)
    }

    pub(crate) async fn accept(&self) -> Option<Connection> {
        self.general_rx.lock().await.recv().await
    }

    pub(crate) fn set_control(&self, tx: Option<mpsc::UnboundedSender<Connection>>) {
        *lock(&self.control) = tx;
    }

    pub(crate) fn set_relay(&self, tx: Option<mpsc::UnboundedSender<Connection>>) {
        *lock(&self.relay) = tx;
    }

    /// Stops handing relay clients to `tx`, unless another relay server
    /// took over since.
    pub(crate) fn clear_relay_if(&self, tx: &mpsc::UnboundedSender<Connection>) {
        {
            let mut c = lock(&self.relay);
            if c.as_ref().is_some_and(|cur| cur.same_channel(tx)) {
                *c = None;
            }
        }
    }

    /// Waits for the session connection the peer dials.
    pub(crate) fn expect_session(&self, s: SessionId) -> oneshot::Receiver<Connection> {
        let (tx, rx) = oneshot::channel();
        let early = lock(&self.early).remove(&s);
        match early {
            Some((_, c)) => {
                let _ = tx.send(c);
            }
            None => {
                lock(&self.sessions).insert(s, tx);
            }
        }
        rx
    }

    pub(crate) fn forget_session(&self, s: &SessionId) {
        lock(&self.sessions).remove(s);
    }
}
