//! Where the receive loop sends punch packets: STUN Binding requests and
//! responses carrying a PUNCH-TOKEN whose session is registered here go to
//! that session's channel (see `crate::punch::driver`, which runs the
//! machine); datagrams of unknown sessions fall through to the ordinary
//! STUN handling.

use macula_nat_proto::punch::{self, SessionId};
use crate::lock::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Datagrams queued per session before more are dropped.
const QUEUE: usize = 1024;

pub(crate) type Datagram = (SocketAddr, Vec<u8>);

/// Punch sessions of one node, keyed by session id.
#[derive(Default)]
pub struct PunchRoutes {
    map: Mutex<HashMap<SessionId, mpsc::Sender<Datagram>>>,
}

impl PunchRoutes {
    /// Offers a STUN datagram to the punch sessions; `true` if one took it.
    pub(crate) fn offer(&self, from: SocketAddr, data: &[u8]) -> bool {
        let map = lock(&self.map);
        if map.is_empty() {
            return false;
        }
        let Some(s) = punch::session_of(data) else { return false };
        match map.get(&s) {
            Some(tx) => {
                // Full queue: drop (the peer retransmits).
                let _ = tx.try_send((from, data.to_vec()));
                true
            }
            None => false,
        }
    }

    pub(crate) fn register(self: &Arc<Self>, session: SessionId) -> Registration {
        let (tx, rx) = mpsc::channel(QUEUE);
        lock(&self.map).insert(session, tx);
        Registration { routes: self.clone(), session, rx }
    }
}

/// A registered session; unregisters on drop.
pub struct Registration {
    routes: Arc<PunchRoutes>,
    session: SessionId,
    pub(crate) rx: mpsc::Receiver<Datagram>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.routes.map).remove(&self.session);
    }
}
