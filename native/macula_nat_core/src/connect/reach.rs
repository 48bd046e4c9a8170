//! Reaching a node by its id alone: when our rendezvous does not know the
//! target, its signed record (profile cache, then DHT) names the
//! rendezvous it is joined at; we dial one of them from our own socket
//! (a *guest* signalling connection, opened on demand, shared by later
//! connects, closed after `SignalConfig::guest_idle` without a session)
//! and signal through it. The decisions (which rendezvous, in what order,
//! when to give up, which guest to close) are
//! `macula_nat_proto::reach`'s.
//!
//! Why a connection of our own rather than our rendezvous forwarding to
//! theirs: no trust or protocol between rendezvous operators is needed,
//! the target's rendezvous sees our real reflexive address (what it tells
//! the target to punch towards, and the round trip it times the go with),
//! and a rendezvous keeps serving only the nodes that dial it.

use crate::lock::{lock, read, write};
use super::error::ConnectError;
use super::inner::{Inner, Role};
use super::initiator::initiate;
use super::membership::{build_inner, start};
use crate::profile_cache::ProfileCache;
use crate::quic::Method;
use crate::{runtime, Connection};
use macula_nat_proto::reach::{self, Outcome};
use macula_nat_proto::record::Contact;
use macula_nat_proto::signal::NodeId;
use macula_nat_proto::strategy::Strategy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// What a signal keeps for reaching nodes registered elsewhere: where to
/// look records up, and its guest connections.
#[derive(Default)]
pub(super) struct Reach {
    directory: RwLock<Option<Arc<ProfileCache>>>,
    guests: Mutex<HashMap<NodeId, Arc<Guest>>>,
    /// Keeps the record's reserving relays in step with our live
    /// reservations (see [`Reach::advertise_reservations`]).
    advertising: Mutex<Option<JoinHandle<()>>>,
}

/// A guest signalling connection: a membership at another rendezvous
/// (its own `Inner`, sharing our node, dispatcher and relays).
pub(super) struct Guest {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    last_used: Mutex<Instant>,
    busy: AtomicUsize,
}

impl Guest {
    fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(c) = self.inner.control.borrow().as_ref() {
            c.close("guest signalling idle");
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.close();
    }
}

/// A session running through a guest: keeps it from being closed.
struct Use(Arc<Guest>);

impl Use {
    fn new(g: Arc<Guest>) -> Use {
        g.busy.fetch_add(1, Ordering::AcqRel);
        *lock(&g.last_used) = Instant::now();
        Use(g)
    }
}

impl Drop for Use {
    fn drop(&mut self) {
        *lock(&self.0.last_used) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Reach {
    pub(super) fn set_directory(&self, cache: Option<Arc<ProfileCache>>) {
        *write(&self.directory) = cache;
    }

    /// Guest connections open right now.
    pub(super) fn guests(&self) -> usize {
        lock(&self.guests).len()
    }

    /// Follows `relays`' live reservations into `adv`'s record (at most
    /// `MAX_CONTACTS`, best first), on every change and every 5 s.
    pub(super) fn advertise_reservations(&self, relays: &Arc<crate::relay::RelaySet>, adv: Arc<crate::advertiser::Advertiser>) {
        let weak = Arc::downgrade(relays);
        let mut changes = relays.watch();
        let task = runtime::spawn(async move {
            loop {
                let Some(relays) = weak.upgrade() else { return };
                let reserved: Vec<Contact> = relays
                    .reserved()
                    .into_iter()
                    .take(macula_nat_proto::record::MAX_CONTACTS)
                    .map(|(node_id, addr)| Contact { node_id, addr })
                    .collect();
                drop(relays);
                adv.set_reserved(reserved);
                let _ = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
            }
        });
        if let Some(old) = lock(&self.advertising).replace(task) {
            old.abort();
        }
    }

    pub(super) fn close(&self) {
        if let Some(t) = lock(&self.advertising).take() {
            t.abort();
        }
        let all: Vec<_> = lock(&self.guests).drain().map(|(_, g)| g).collect();
        for g in all {
            g.close();
        }
    }
}

/// A connect: through our first home (`homes`: live ones first), then,
/// when it does not know the target, through the rendezvous the target's
/// record names (through our own membership when one of them is another
/// of our homes). Answers the membership the connection was made through
/// (a home or a guest), which looks after it.
pub(super) async fn initiate_anywhere(homes: &[Arc<Inner>], reach: &Arc<Reach>, target: NodeId, opts: &super::ConnectOpts) -> Result<Reached, ConnectError> {
    let Some(inner) = homes.first() else { return Err(ConnectError::NoRendezvous) };
    let first = initiate(inner, target, opts).await;
    match first {
        Err(ConnectError::UnknownPeer | ConnectError::NoRendezvous) => {}
        Ok((c, m, s)) => return Ok((c, m, s, inner.clone())),
        Err(e) => return Err(e),
    }
    let first_err = first.err().unwrap_or(ConnectError::UnknownPeer);
    let Some(dir) = read(&reach.directory).clone() else { return Err(first_err) };
    if read(&inner.cfg).max_guests == 0 {
        return Err(first_err);
    }
    let mut entry = match dir.get_or_fetch(target).await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!("reach: no record of {:02x?}: {e:?}", &target.as_bytes()[..4]);
            return Err(first_err);
        }
    };
    let mut last = first_err;
    for round in 0..2 {
        if round == 1 {
            // The record may have come from the cache and be out of date
            // (the target moved to another rendezvous within the cache's
            // TTL): once, a newer one from the DHT gets its own round.
            match dir.fetch(target).await {
                Ok(e) if e.seq > entry.seq => entry = e,
                _ => break,
            }
        }
        match through_record(homes, reach, target, opts, &entry.contacts.rendezvous).await {
            Ok(done) => return Ok(done),
            Err(Some((e, Outcome::Reached))) => return Err(e),
            Err(Some((e, _))) => last = e,
            Err(None) => {}
        }
    }
    Err(last)
}

type Reached = (Connection, Method, Strategy, Arc<Inner>);

/// Tries the rendezvous of `advertised` the plan picks; the error of the
/// last attempt and how it ended (`None`: nothing to try).
async fn through_record(homes: &[Arc<Inner>], reach: &Arc<Reach>, target: NodeId, opts: &super::ConnectOpts, advertised: &[Contact]) -> Result<Reached, Option<(ConnectError, Outcome)>> {
    let inner = &homes[0];
    let ours: Vec<NodeId> = homes.iter().skip(1).filter(|h| super::homes::is_live(h)).map(|h| h.rendezvous_id).collect();
    let open: Vec<NodeId> = lock(&reach.guests).iter().filter(|(_, g)| super::homes::is_live(&g.inner)).map(|(k, _)| *k).collect();
    let plan = reach::plan(advertised, Some(&inner.rendezvous_id), &inner.node.node_id(), &ours, &open);
    let mut last = None;
    for contact in plan {
        // One of our other homes: never a guest (a second control
        // connection from us would replace our registration there).
        let r = match homes.iter().find(|h| h.rendezvous_id == contact.node_id) {
            Some(home) if super::homes::is_live(home) => attempt(home, target, opts).await,
            Some(_) => Err((ConnectError::NoRendezvous, Outcome::Unreachable)),
            None => match guest(inner, reach, contact).await {
                Ok(g) => {
                    let used = Use::new(g);
                    attempt(&used.0.inner, target, opts).await
                }
                Err(e) => Err((e, Outcome::Unreachable)),
            },
        };
        match r {
            Ok(done) => return Ok(done),
            Err((e, outcome)) => {
                tracing::debug!("reach: through {} for {:02x?}: {outcome:?} ({e})", contact.addr, &target.as_bytes()[..4]);
                if !reach::try_next(outcome) {
                    return Err(Some((e, outcome)));
                }
                last = Some((e, outcome));
            }
        }
    }
    Err(last)
}

/// One signalling attempt through `through` (a home or a guest) and how it
/// ended, for the choice of the next rendezvous.
async fn attempt(through: &Arc<Inner>, target: NodeId, opts: &super::ConnectOpts) -> Result<Reached, (ConnectError, Outcome)> {
    match initiate(through, target, opts).await {
        Ok((c, m, s)) => Ok((c, m, s, through.clone())),
        Err(e @ ConnectError::UnknownPeer) => Err((e, Outcome::NotThere)),
        Err(e @ (ConnectError::NoRendezvous | ConnectError::Closed)) => Err((e, Outcome::Unreachable)),
        Err(e) => Err((e, Outcome::Reached)),
    }
}

/// The guest connection to `contact`: the open one, or a new one (making
/// room by closing the longest idle guest with no session running).
async fn guest(inner: &Arc<Inner>, reach: &Arc<Reach>, contact: Contact) -> Result<Arc<Guest>, ConnectError> {
    let existing = lock(&reach.guests).get(&contact.node_id).cloned();
    if let Some(g) = existing {
        if super::homes::is_live(&g.inner) {
            return Ok(g);
        }
    }
    let (max, idle) = {
        let cfg = read(&inner.cfg);
        (cfg.max_guests, cfg.guest_idle)
    };
    make_room(reach, max)?;
    let cfg = read(&inner.cfg).clone();
    let g_inner = build_inner(inner.node.clone(), contact.addr, contact.node_id, cfg, inner.relays.clone(), Role::Guest)?;
    let tasks = start(&g_inner).await?;
    let g = Arc::new(Guest { inner: g_inner, tasks, last_used: Mutex::new(Instant::now()), busy: AtomicUsize::new(0) });
    // Two connects racing to the same rendezvous: the first one in wins,
    // the other's connection is closed with its guest.
    let kept = {
        let mut guests = lock(&reach.guests);
        match guests.get(&contact.node_id) {
            Some(other) if other.inner.control.borrow().as_ref().is_some_and(|c| c.close_reason().is_none()) => other.clone(),
            _ => {
                guests.insert(contact.node_id, g.clone());
                g.clone()
            }
        }
    };
    if Arc::ptr_eq(&kept, &g) {
        tracing::debug!("reach: guest signalling at {} ({:02x?})", contact.addr, &contact.node_id.as_bytes()[..4]);
        runtime::spawn(reap(Arc::downgrade(reach), contact.node_id, Arc::downgrade(&g), idle));
    }
    Ok(kept)
}

fn make_room(reach: &Reach, max: usize) -> Result<(), ConnectError> {
    let victim = {
        let guests = lock(&reach.guests);
        let now = Instant::now();
        let view: Vec<(NodeId, Duration, bool)> = guests
            .iter()
            .map(|(k, g)| (*k, now.saturating_duration_since(*lock(&g.last_used)), g.busy.load(Ordering::Acquire) > 0))
            .collect();
        reach::evict(&view, max).map_err(|_| ConnectError::Rejected(macula_nat_proto::signal::reject::BUSY))?
    };
    if let Some(k) = victim {
        if let Some(g) = lock(&reach.guests).remove(&k) {
            g.close();
        }
    }
    Ok(())
}

/// Closes a guest once no session has run through it for `idle`.
async fn reap(owner: Weak<Reach>, key: NodeId, guest: Weak<Guest>, idle: Duration) {
    let mut control = match guest.upgrade() {
        Some(g) => g.inner.control.subscribe(),
        None => return,
    };
    loop {
        let wait = {
            let Some(g) = guest.upgrade() else { return };
            let since = lock(&g.last_used).elapsed();
            // A guest whose rendezvous went silent or closed is not
            // rejoined (see `membership::control_loop`): it leaves the
            // table at once, so that a connect neither prefers it as open
            // nor waits on it; the next one that needs that rendezvous
            // dials it afresh.
            let dead = !super::homes::is_live(&g.inner);
            if dead || (g.busy.load(Ordering::Acquire) == 0 && since >= idle) {
                drop(g);
                let Some(owner) = owner.upgrade() else { return };
                let mut guests = lock(&owner.guests);
                if guests.get(&key).is_some_and(|g| Weak::ptr_eq(&Arc::downgrade(g), &guest)) {
                    if let Some(g) = guests.remove(&key) {
                        drop(guests);
                        tracing::debug!("reach: guest signalling {:02x?} {}; closed", &key.as_bytes()[..4], if dead { "lost" } else { "idle" });
                        g.close();
                    }
                }
                return;
            }
            idle.saturating_sub(since).max(Duration::from_millis(50))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = control.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
    }
}
