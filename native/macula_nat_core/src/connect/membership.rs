//! A membership at a rendezvous, below the [`Signal`](super::Signal) that
//! owns it (the node's own) or the guest table (`super::reach`): its state
//! ([`build_inner`]), registration, control loop (incoming messages routed
//! to sessions and responders, re-dialled when lost) and the profile
//! follower.

use crate::lock::{lock, read};
use super::error::ConnectError;
use super::inner::{control, Inner, Role};
use super::opts::SignalConfig;
use super::profile::{contiguity_basis, current_info, keep_reachable_candidates};
use super::responder::{refuse, respond, Responding};
use crate::{runtime, Connection, Node};
use crate::detect::alloc_probe::AllocTracker;
use crate::local_profile::ProfileState;
use crate::relay::RelaySet;
use macula_nat_proto::limits::caps::Caps;
use macula_nat_proto::signal::{HelloKind, Msg, NodeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use macula_nat_proto::homes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the join waits for the primer TTL (a route of a few hops
/// answers within a round trip to the rendezvous).
pub(super) const PRIMER_LEARN_BUDGET: Duration = Duration::from_millis(1000);

/// Learns the primer TTL towards the rendezvous into the node (see
/// [`crate::punch::primer`]); a node that cannot learn one sends none.
pub(super) async fn learn_primer_ttl(node: &Arc<Node>, rendezvous: SocketAddr) {
    let Ok(bound) = node.local_addr() else { return };
    let learn = move || tokio::task::spawn_blocking(move || crate::punch::primer::ttl_towards(bound.ip(), rendezvous, PRIMER_LEARN_BUDGET));
    let got = learn().await.ok().flatten();
    node.set_primer_ttl(got);
    if got.is_some() {
        return;
    }
    // Routers whose ICMP budget was spent, or a route still settling: a few
    // more tries in the background, spaced past the routers' rate limit.
    let weak = Arc::downgrade(node);
    runtime::spawn(async move {
        for after in [2, 10, 30] {
            tokio::time::sleep(Duration::from_secs(after)).await;
            let got = learn().await.ok().flatten();
            let Some(node) = weak.upgrade() else { return };
            if got.is_some() {
                node.set_primer_ttl(got);
                return;
            }
        }
    });
}

/// The state of a membership at `rendezvous_addr`. All of a node's
/// memberships share its relays; only the primary learns the primer TTL
/// and takes the address its rendezvous sees as the node's reflexive one
/// (behind an address-dependent NAT each rendezvous sees another port).
/// See [`Role`].
pub(super) fn build_inner(
    node: Arc<Node>,
    rendezvous_addr: SocketAddr,
    rendezvous_id: NodeId,
    cfg: SignalConfig,
    relays: Arc<RelaySet>,
    role: Role,
) -> Result<Arc<Inner>, ConnectError> {
    let dispatch = node.dispatch()?;
    let (control, _) = watch::channel(None);
    let alloc = AllocTracker::new(&node, rendezvous_addr);
    let responding = Mutex::new(Caps::new(cfg.max_responder_sessions_per_peer, cfg.max_responder_sessions));
    Ok(Arc::new(Inner {
        node,
        rendezvous: rendezvous_addr,
        rendezvous_id,
        cfg: RwLock::new(cfg),
        control,
        observed: Mutex::new(None),
        sessions: Mutex::new(HashMap::new()),
        dispatch,
        relays,
        alloc,
        relayed_in: Mutex::new(Vec::new()),
        responding,
        role,
    }))
}

/// Registers and starts the control loop and the profile follower.
pub(super) async fn start(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>, ConnectError> {
    // Watched from before the registration: a detection that finishes
    // while we register is followed too.
    let profiles = inner.node.local_profile().subscribe();
    // Learnt while we register: a session right after the join
    // primes too (see `crate::punch::primer`); about one round trip.
    let primers = read(&inner.cfg).primers && inner.role == Role::Primary;
    let learn = async {
        if primers {
            learn_primer_ttl(&inner.node, inner.rendezvous).await;
        }
    };
    let (conn, ()) = tokio::join!(register(inner), learn);
    let conn = conn?;
    if let Some(basis) = contiguity_basis(inner, &current_info(inner)) {
        // Measured now, ready for the first session.
        inner.alloc.clone().refresh(basis, conn.rtt());
    }
    Ok(spawn_loops(inner, Some(conn), profiles))
}

/// Starts a membership whose first registration failed: its control loop
/// rejoins with backoff, as after a loss.
pub(super) fn start_rejoining(inner: &Arc<Inner>) -> Vec<JoinHandle<()>> {
    let profiles = inner.node.local_profile().subscribe();
    spawn_loops(inner, None, profiles)
}

fn spawn_loops(inner: &Arc<Inner>, conn: Option<Connection>, profiles: watch::Receiver<ProfileState>) -> Vec<JoinHandle<()>> {
    let task = runtime::spawn(control_loop(Arc::downgrade(inner), conn));
    let follow = runtime::spawn(follow_profile(Arc::downgrade(inner), profiles));
    vec![task, follow]
}

pub(super) async fn register(inner: &Arc<Inner>) -> Result<Connection, ConnectError> {
    let join_timeout = read(&inner.cfg).join_timeout;
    let go = async {
        let quic = inner.node.quic()?;
        let conn = quic.connect_control(inner.rendezvous, inner.rendezvous_id).await?;
        conn.send(Msg::Hello(HelloKind::Control).encode()).await?;
        loop {
            let Some(m) = conn.recv().await else { return Err(ConnectError::NoRendezvous) };
            if let Ok(Msg::Registered { observed }) = Msg::decode(&m) {
                *lock(&inner.observed) = Some(observed);
                // A rejoin from a new address is a network change too.
                if inner.role == Role::Primary {
                    inner.node.reflexive().observe(observed);
                }
                inner.control.send_replace(Some(conn.clone()));
                return Ok(conn);
            }
        }
    };
    tokio::time::timeout(join_timeout, go).await.unwrap_or(Err(ConnectError::Timeout))
}

/// Receives on the control connection; re-registers when it is lost. It
/// pings the rendezvous and drops a connection that went silent (see
/// `macula_nat_proto::homes`): a crashed rendezvous sends no close, and
/// QUIC would wait for its idle timeout. Guests ping too: a connect
/// waiting on a crashed target's rendezvous moves on to the next; a guest
/// is not rejoined.
pub(super) async fn control_loop(weak: std::sync::Weak<Inner>, mut conn: Option<Connection>) {
    loop {
        if let Some(c) = conn.take() {
            let pinging = match weak.upgrade() {
                Some(inner) => read(&inner.cfg).ping_every,
                None => return,
            };
            if !receive(&weak, &c, pinging).await {
                return;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        inner.control.send_replace(None);
        if inner.role == Role::Guest {
            // Not rejoined: its table closes it (see `reach::reap`).
            return;
        }
        let base = read(&inner.cfg).reconnect_backoff;
        let mut backoff = base;
        // Not at once: every node of a rendezvous that fell silent finds it
        // so within the same second (see `homes::jittered`).
        tokio::time::sleep(homes::first_rejoin_wait(base, rand::random())).await;
        conn = loop {
            if inner.node.is_closed() {
                return;
            }
            match register(&inner).await {
                Ok(c) => break Some(c),
                Err(e) => {
                    tracing::debug!("signal: reconnect to rendezvous {} failed: {e}", inner.rendezvous);
                    tokio::time::sleep(homes::jittered(backoff, rand::random())).await;
                    backoff = homes::next_backoff(backoff, base);
                }
            }
        };
    }
}

/// Handles the control connection's messages until it closes or (when
/// `pinging`) goes silent; `false`: the membership is gone.
async fn receive(weak: &std::sync::Weak<Inner>, conn: &Connection, pinging: Option<Duration>) -> bool {
    let silent_after = match weak.upgrade() {
        Some(inner) => read(&inner.cfg).silent_after,
        None => return false,
    };
    let mut ticker = tokio::time::interval(pinging.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut answers = false;
    let mut nonce = 0u32;
    loop {
        tokio::select! {
            m = conn.recv() => {
                let Some(bytes) = m else { return true };
                heard = Instant::now();
                let Some(inner) = weak.upgrade() else { return false };
                match Msg::decode(&bytes) {
                    Ok(Msg::Pong { .. }) => answers = true,
                    Ok(m) => handle(&inner, conn, m),
                    Err(e) => tracing::debug!("signal: bad message from rendezvous: {e}"),
                }
            }
            // Judged the moment the silence is long enough, not at the
            // next tick (a second later).
            _ = tokio::time::sleep_until((heard + silent_after).into()), if pinging.is_some() && answers => {
                if homes::silent(heard.elapsed(), answers, silent_after) {
                    tracing::debug!("signal: rendezvous {} silent for {:?}; rejoining", conn.remote_address(), heard.elapsed());
                    conn.close("rendezvous silent");
                    return true;
                }
            }
            _ = ticker.tick(), if pinging.is_some() => {
                nonce = nonce.wrapping_add(1);
                // Never waits on a stalled stream: the silence says it.
                let c = conn.clone();
                runtime::spawn(async move {
                    let _ = tokio::time::timeout(PING_SEND_BOUND, c.send(Msg::Ping { nonce }.encode())).await;
                });
            }
        }
    }
}

/// Bound on sending one ping.
const PING_SEND_BOUND: Duration = Duration::from_secs(1);

/// One message from the rendezvous on the control connection.
fn handle(inner: &Arc<Inner>, conn: &Connection, m: Msg) {
    match m {
        Msg::Incoming { from, session, flags, attempts, mut profile, observed } => {
            keep_reachable_candidates(inner, &mut profile, observed);
            match Responding::admit(inner, from, session) {
                Some(admitted) => {
                    runtime::spawn(respond(admitted, session, flags, attempts, profile, observed));
                }
                None => {
                    tracing::debug!("signal: too many sessions to answer; refusing one of {:02x?}", &from.as_bytes()[..4]);
                    refuse(conn, from, session);
                }
            }
        }
        Msg::Registered { observed } => {
            // The answer to a registration refresh (see `follow_profile`),
            // or the rendezvous telling us our control connection moved (a
            // renumbered router, a rebinding NAT): where it sees us now. A
            // move is a network change (`crate::netchange`).
            let moved = lock(&inner.observed).replace(observed) != Some(observed);
            if moved {
                tracing::debug!("signal: the rendezvous now sees us at {observed}");
            }
            if inner.role == Role::Primary {
                inner.node.reflexive().observe(observed);
            }
            if let Some(basis) = contiguity_basis(inner, &current_info(inner)) {
                inner.alloc.clone().refresh(basis, conn.rtt());
            }
        }
        m => {
            let Some(s) = m.session() else { return };
            let tx = lock(&inner.sessions).get(&s).cloned();
            if let Some(tx) = tx {
                let _ = tx.send(m);
            }
        }
    }
}

/// Follows the node's published profile for as long as the signal lives:
/// after every detection (first, periodic, forced, network change) the
/// registration is refreshed. The rendezvous keeps no profile of ours, only
/// the control connection and the address it sees it at (profile and
/// candidates travel in each session's `Connect` / `Answer`, read when
/// sent), so a refresh is a repeated `Hello(Control)`: the rendezvous
/// answers `Registered` with the address it sees now, which becomes our
/// reflexive address (and, behind a contiguous allocator, the basis of the
/// next measurement of its counter).
///
/// The same refresh answers a suspicion that our address moved
/// ([`crate::netchange::Reflexive::suspect`]), at most once per
/// [`SUSPICION_EVERY`] (whoever raises them, they cost the rendezvous one
/// message per interval).
pub(super) async fn follow_profile(weak: std::sync::Weak<Inner>, mut profiles: watch::Receiver<ProfileState>) {
    let mut suspicions = match weak.upgrade() {
        Some(inner) => inner.node.reflexive().suspicions(),
        None => return,
    };
    let mut asked = None::<tokio::time::Instant>;
    loop {
        tokio::select! {
            r = profiles.changed() => {
                if r.is_err() {
                    return;
                }
                if !matches!(*profiles.borrow_and_update(), ProfileState::Known(_)) {
                    continue;
                }
            }
            r = suspicions.changed() => {
                if r.is_err() {
                    return;
                }
                suspicions.borrow_and_update();
                if let Some(at) = asked {
                    tokio::time::sleep_until(at + SUSPICION_EVERY).await;
                }
                asked = Some(tokio::time::Instant::now());
                tracing::debug!("signal: our address may have moved; asking the rendezvous");
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        if let Ok(ctl) = control(&inner) {
            if let Err(e) = ctl.send(Msg::Hello(HelloKind::Control).encode()).await {
                tracing::debug!("signal: registration refresh failed: {e}");
            }
        }
    }
}

/// See [`follow_profile`].
pub(super) const SUSPICION_EVERY: Duration = Duration::from_secs(1);
