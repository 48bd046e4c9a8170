//! This node's reflexive address as the parties it is joined to report it,
//! and its changes (issue 19: network and NAT change). The decision (what
//! counts, the debounce) is `macula_nat_proto::netchange`; this holds it
//! per node and tells subscribers: the BEAM's detector re-detects (or
//! adopts the address) and so fires `{nat_profile_changed, Old, New}`,
//! republishes the record and refreshes the registration; `macula-connect`
//! prints it.
//!
//! How fast a move is seen: the rendezvous tells us when our control
//! connection moved (it looks once a second), which it sees at our next
//! packet on it: at the latest the control keep-alive (5 s). Sooner when a
//! relay link (pinged every 500 ms) reports a new address or a live
//! connection goes silent ([`Reflexive::suspect`]): then we ask at once.

use crate::lock::lock;
use macula_nat_proto::netchange::{Change, ReflexiveWatch};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// One per node (see [`crate::Node::reflexive`]).
pub struct Reflexive {
    state: Mutex<ReflexiveWatch>,
    tx: watch::Sender<Option<Change>>,
    /// Hints that our address may have moved (see [`Reflexive::suspect`]).
    suspects: watch::Sender<u64>,
    /// Reports a held change when its interval is over.
    timer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for Reflexive {
    fn default() -> Self {
        Reflexive {
            state: Mutex::new(ReflexiveWatch::new()),
            tx: watch::Sender::new(None),
            suspects: watch::Sender::new(0),
            timer: Mutex::new(None),
        }
    }
}

impl Reflexive {
    /// Where a trusted witness (our rendezvous) sees us now.
    pub(crate) fn observe(self: &Arc<Self>, seen: SocketAddr) {
        let mut st = lock(&self.state);
        match st.observe(seen, Instant::now()) {
            Some(c) => self.report(c),
            None => {
                if let Some(due) = st.due() {
                    let weak = Arc::downgrade(self);
                    let t = crate::runtime::spawn(async move {
                        tokio::time::sleep_until(due.into()).await;
                        let Some(me) = weak.upgrade() else { return };
                        let c = lock(&me.state).poll(Instant::now());
                        if let Some(c) = c {
                            me.report(c);
                        }
                    });
                    if let Some(old) = lock(&self.timer).replace(t) {
                        old.abort();
                    }
                }
            }
        }
    }

    fn report(&self, c: Change) {
        tracing::info!("netchange: our public address moved from {} to {}", c.old, c.new);
        self.tx.send_replace(Some(c));
    }

    /// The address we believe peers see us at.
    pub fn current(&self) -> Option<SocketAddr> {
        lock(&self.state).believed()
    }

    /// Something suggests our public address moved, without saying where
    /// to in a way we trust: a relay saw our link come from a new address,
    /// or a live connection went silent. Signalling then asks the
    /// rendezvous (a `Hello(Control)`, whose answer goes to
    /// [`Reflexive::observe`]); the packet itself moves our control
    /// connection there if the router was renumbered, so the rendezvous
    /// does not wait for our next keep-alive to see it.
    pub(crate) fn suspect(&self) {
        self.suspects.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sees every [`Reflexive::suspect`] (coalesced).
    pub(crate) fn suspicions(&self) -> watch::Receiver<u64> {
        self.suspects.subscribe()
    }

    /// Sees every change (the value is the latest).
    pub fn subscribe(&self) -> watch::Receiver<Option<Change>> {
        self.tx.subscribe()
    }
}

impl Drop for Reflexive {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.timer).take() {
            t.abort();
        }
    }
}
