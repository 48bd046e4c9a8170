//! A node's homes: the rendezvous it joins, several at once from its one
//! socket (see `macula_nat_proto::homes` for the decisions). Each is a
//! membership of its own (`super::membership`, the one a guest uses too):
//! its control connection, pinged and rejoined with backoff; incoming
//! sessions through any of them land in the node's one dispatcher. They
//! share the node's relays (one set of reservations per node). The first
//! configured is the primary (its view of our address is our reflexive
//! address); the others are standbys.
//!
//! Why memberships inside one [`Signal`](super::Signal) rather than one
//! signal per rendezvous in the Erlang coordinator: a connect picks a live
//! home and, when none knows the target, reaches it through its record
//! without ever dialling one of our own homes as a guest (a second control
//! connection from the same node would replace our registration there);
//! the record's list follows the homes' liveness in one place; the relay
//! set and the dispatcher stay one per node.

use super::error::ConnectError;
use super::inner::{Inner, Role};
use super::membership::{build_inner, start, start_rejoining};
use super::opts::SignalConfig;
use crate::advertiser::Advertiser;
use crate::relay::RelaySet;
use crate::{runtime, Node};
use macula_nat_proto::homes;
use macula_nat_proto::record::Contact;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// One home membership and its tasks (control loop, profile follower).
pub(super) struct Home {
    pub(super) inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Home {
    pub(super) fn contact(&self) -> Contact {
        Contact { node_id: self.inner.rendezvous_id, addr: self.inner.rendezvous }
    }

    pub(super) fn is_live(&self) -> bool {
        is_live(&self.inner)
    }

    pub(super) fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(c) = self.inner.control.borrow().as_ref() {
            c.close("signal closed");
        }
    }
}

pub(super) fn is_live(inner: &Inner) -> bool {
    inner.control.borrow().as_ref().is_some_and(|c| c.close_reason().is_none())
}

/// Joins `configured` (see [`homes::select`]), all at once: the first is
/// the primary, the others standbys. One whose first registration fails
/// keeps trying in the background (with the rejoin's backoff); the join
/// fails only when none registers, and takes one `join_timeout` at most
/// however many are down. Answers the homes in the configured order.
pub(super) async fn join(node: Arc<Node>, configured: &[Contact], cfg: SignalConfig) -> Result<Vec<Home>, ConnectError> {
    let wanted = homes::select(configured);
    let relays = RelaySet::new(&node);
    let mut joining = Vec::with_capacity(wanted.len());
    for (i, c) in wanted.iter().enumerate() {
        let role = if i == 0 { Role::Primary } else { Role::Standby };
        let inner = build_inner(node.clone(), c.addr, c.node_id, cfg.clone(), relays.clone(), role)?;
        joining.push(runtime::spawn(async move {
            match start(&inner).await {
                Ok(tasks) => (Home { inner, tasks }, None),
                Err(e) => {
                    tracing::debug!("signal: rendezvous {} not joined yet ({e}); retrying", inner.rendezvous);
                    let tasks = start_rejoining(&inner);
                    (Home { inner, tasks }, Some(e))
                }
            }
        }));
    }
    let mut homes_ = Vec::with_capacity(joining.len());
    let mut failed = Vec::new();
    for j in joining {
        let (home, err) = j.await.map_err(|_| ConnectError::Closed)?;
        homes_.push(home);
        failed.extend(err);
    }
    if failed.len() == homes_.len() {
        for h in &homes_ {
            h.close();
        }
        relays.close();
        return Err(failed.pop().unwrap_or(ConnectError::NoRendezvous));
    }
    Ok(homes_)
}

/// How often the record's rendezvous are brought in line with the homes'
/// liveness (a home's loss is noticed by its control loop; this only reads
/// it).
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Keeps `adv`'s record naming our live homes ([`homes::advertised`]);
/// republished (by the advertiser, within its `MIN_GAP`) when that
/// changes. Ends when the homes are gone.
pub(super) fn advertise(homes_: &[Home], adv: Arc<Advertiser>) -> JoinHandle<()> {
    let contacts: Vec<Contact> = homes_.iter().map(Home::contact).collect();
    let weak: Vec<_> = homes_.iter().map(|h| Arc::downgrade(&h.inner)).collect();
    runtime::spawn(async move {
        loop {
            let mut live = Vec::with_capacity(weak.len());
            for w in &weak {
                let Some(inner) = w.upgrade() else { return };
                live.push(is_live(&inner));
            }
            adv.set_rendezvous(homes::advertised(&contacts, &live));
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    })
}
