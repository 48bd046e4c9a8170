//! The relay server as a resource owned by the `macula_relay_node` process
//! (monitored: its death stops the server, so a restart starts clean).
//!
//! Session events reach the owner as messages, in order:
//! `{macula_relay_event, Relay, started, #{peer_a, peer_b, session}}`,
//! `{macula_relay_event, Relay, ended, #{peer_a, peer_b, session,
//! bytes_transferred, reason}}`, and once the server is gone and every
//! event was delivered, `{macula_relay_event, Relay, stopped}`. The
//! application's callbacks run on the Erlang side, off the data path.
//! Events wait in a channel of `EVENT_QUEUE` (the server drops and counts
//! what does not fit: `events_dropped` in the stats).

use crate::node_nif::NodeRes;
use crate::{atoms, convert, guard, owner};
use macula_nat_core::relay::{RelayEvent, RelayLimits, RelayServer, EVENT_QUEUE};
use macula_nat_proto::relay::msg::{EndReason, Refusal};
use rustler::types::map::MapIterator;
use rustler::{Atom, Encoder, Env, LocalPid, Monitor, OwnedEnv, ResourceArc, Term};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

const MAX_SESSIONS: u64 = 1_000_000;
/// 1 TB/s: above any real link, low enough that the token bucket's
/// arithmetic stays exact.
const MAX_BANDWIDTH: u64 = 1_000_000_000_000;
/// 30 days.
const MAX_SESSION_TIMEOUT_MS: u64 = 30 * 86_400_000;
const MAX_QUEUE_DELAY_MS: u64 = 10_000;
const MAX_PENDING_TIMEOUT_MS: u64 = 60_000;
const MAX_OPENS_PER_MINUTE: u64 = 1_000_000;

pub struct RelayRes {
    server: Mutex<Option<RelayServer>>,
}

#[rustler::resource_impl]
impl rustler::Resource for RelayRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        owner::Owned::close(self);
    }
}

impl owner::Owned for RelayRes {
    fn close(&self) {
        let server = self.server.lock().ok().and_then(|mut g| g.take());
        if let Some(mut s) = server {
            s.stop();
        }
    }
}

pub fn refusal_atom(r: Refusal) -> Atom {
    match r {
        Refusal::NoReservation => atoms::no_reservation(),
        Refusal::MaxSessions => atoms::max_sessions(),
        Refusal::Disabled => atoms::relay_disabled(),
        Refusal::Declined => atoms::declined(),
        Refusal::SelfSession => atoms::self_session(),
        Refusal::BadRequest => atoms::bad_request(),
        Refusal::TooManySessions => atoms::too_many_sessions(),
        Refusal::TooManyPending => atoms::too_many_pending(),
        Refusal::RateLimited => atoms::rate_limited(),
    }
}

fn end_reason_atom(r: EndReason) -> Atom {
    match r {
        EndReason::Inactive => atoms::inactive(),
        EndReason::Closed => atoms::closed(),
        EndReason::PeerGone => atoms::peer_gone(),
        EndReason::Disabled => atoms::relay_disabled(),
    }
}

/// A positive integer up to `max`.
fn bounded(v: Term, max: u64) -> Option<u64> {
    convert::decode_int::<u64>(v).filter(|n| (1..=max).contains(n))
}

/// Limits from `#{max_sessions, bandwidth_limit, session_timeout,
/// max_queue_delay, pending_timeout, max_sessions_per_key,
/// max_pending_per_key, max_opens_per_minute, max_reservations,
/// max_reservations_per_key}` (absent keys: defaults; times in ms). `Err(Some(Key))` names the
/// first bad option (the caller's own term: no atom is made), `Err(None)`:
/// not a map.
fn decode_limits(t: Term) -> Result<RelayLimits, Option<Term>> {
    let mut l = RelayLimits::default();
    let iter = MapIterator::new(t).ok_or(None)?;
    for (k, v) in iter {
        let ok = match k.atom_to_string().as_deref() {
            Ok("max_sessions") => bounded(v, MAX_SESSIONS).map(|n| l.max_sessions = n as usize).is_some(),
            Ok("bandwidth_limit") => {
                let unlimited = v.decode::<Atom>().is_ok_and(|a| {
                    a == atoms::unlimited() || a == atoms::infinity() || a == atoms::undefined()
                });
                if unlimited {
                    l.bandwidth_limit = None;
                    true
                } else {
                    bounded(v, MAX_BANDWIDTH).map(|n| l.bandwidth_limit = Some(n)).is_some()
                }
            }
            Ok("session_timeout") => bounded(v, MAX_SESSION_TIMEOUT_MS)
                .map(|ms| l.session_timeout = Duration::from_millis(ms))
                .is_some(),
            Ok("max_queue_delay") => bounded(v, MAX_QUEUE_DELAY_MS)
                .map(|ms| l.max_queue_delay = Duration::from_millis(ms))
                .is_some(),
            Ok("pending_timeout") => bounded(v, MAX_PENDING_TIMEOUT_MS)
                .map(|ms| l.pending_timeout = Duration::from_millis(ms))
                .is_some(),
            Ok("max_sessions_per_key") => bounded(v, MAX_SESSIONS).map(|n| l.max_sessions_per_key = n as usize).is_some(),
            Ok("max_pending_per_key") => bounded(v, MAX_SESSIONS).map(|n| l.max_pending_per_key = n as usize).is_some(),
            Ok("max_opens_per_minute") => bounded(v, MAX_OPENS_PER_MINUTE).map(|n| l.max_opens_per_minute = n as u32).is_some(),
            Ok("max_reservations") => bounded(v, MAX_SESSIONS).map(|n| l.max_reservations = n as usize).is_some(),
            Ok("max_reservations_per_key") => bounded(v, MAX_SESSIONS).map(|n| l.max_reservations_per_key = n as usize).is_some(),
            _ => false,
        };
        if !ok {
            return Err(Some(k));
        }
    }
    Ok(l)
}

fn limits_error<'a>(env: Env<'a>, e: Option<Term<'a>>) -> Term<'a> {
    match e {
        Some(key) => (atoms::error(), (atoms::bad_option(), key)).encode(env),
        None => (atoms::error(), atoms::badarg()).encode(env),
    }
}

/// `relay_enable(Node, Limits, Owner) -> {ok, Relay} | {error, Reason}`:
/// starts relaying on the node; `Owner` is monitored and gets the events.
#[rustler::nif]
fn relay_enable<'a>(env: Env<'a>, node: ResourceArc<NodeRes>, limits: Term<'a>, owner: LocalPid) -> Term<'a> {
    guard::guard(env, || {
        let limits = match decode_limits(limits) {
            Ok(l) => l,
            Err(e) => return limits_error(env, e),
        };
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let server = match RelayServer::start(&node.node, limits, tx) {
            Ok(s) => s,
            Err(e) => return (atoms::error(), (atoms::quic(), convert::binary(env, e.kind().as_bytes()))).encode(env),
        };
        let res = ResourceArc::new(RelayRes { server: Mutex::new(Some(server)) });
        if env.monitor(&res, &owner).is_none() {
            owner::Owned::close(&*res);
            return (atoms::error(), atoms::closed()).encode(env);
        }
        macula_nat_core::runtime::spawn(forward_events(res.clone(), rx, owner));
        (atoms::ok(), res).encode(env)
    })
}

/// Sends the server's events to the owner until the server is gone (its
/// last `Ended` events included), then says `stopped`.
async fn forward_events(res: ResourceArc<RelayRes>, mut rx: mpsc::Receiver<RelayEvent>, owner: LocalPid) {
    let mut env = OwnedEnv::new();
    while let Some(ev) = rx.recv().await {
        let r = res.clone();
        let _ = env.send_and_clear(&owner, move |env| {
            let (kind, map) = match ev {
                RelayEvent::Started { session, a, b } => {
                    let keys = [atoms::peer_a(), atoms::peer_b(), atoms::session()].map(|k| k.encode(env));
                    let vals = [convert::binary(env, &a), convert::binary(env, &b), session.encode(env)];
                    (atoms::started(), Term::map_from_term_arrays(env, &keys, &vals))
                }
                RelayEvent::Ended { session, a, b, bytes, reason } => {
                    let keys = [atoms::peer_a(), atoms::peer_b(), atoms::session(), atoms::bytes_transferred(), atoms::reason()]
                        .map(|k| k.encode(env));
                    let vals = [
                        convert::binary(env, &a),
                        convert::binary(env, &b),
                        session.encode(env),
                        bytes.encode(env),
                        end_reason_atom(reason).encode(env),
                    ];
                    (atoms::ended(), Term::map_from_term_arrays(env, &keys, &vals))
                }
            };
            let map = map.unwrap_or_else(|_| atoms::error().encode(env));
            (atoms::macula_relay_event(), r, kind, map).encode(env)
        });
    }
    let _ = env.send_and_clear(&owner, move |env| (atoms::macula_relay_event(), res, atoms::stopped()).encode(env));
}

/// `relay_set_limits(Relay, Limits) -> ok | {error, Reason}`: new limits
/// for the running relay; its sessions go on.
#[rustler::nif]
fn relay_set_limits<'a>(env: Env<'a>, res: ResourceArc<RelayRes>, limits: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let limits = match decode_limits(limits) {
            Ok(l) => l,
            Err(e) => return limits_error(env, e),
        };
        match res.server.lock().ok().as_ref().and_then(|g| g.as_ref()) {
            Some(s) => {
                s.set_limits(limits);
                atoms::ok().encode(env)
            }
            None => (atoms::error(), atoms::closed()).encode(env),
        }
    })
}

/// `relay_disable(Relay) -> {ok, [#{peer_a, peer_b, session,
/// bytes_transferred, reason}]}`: stops relaying; the sessions that were
/// running end (their peers are told, and their `ended` events follow as
/// messages). Disabling again answers `{ok, []}`.
#[rustler::nif]
fn relay_disable<'a>(env: Env<'a>, res: ResourceArc<RelayRes>) -> Term<'a> {
    guard::guard(env, || {
        let server = res.server.lock().ok().and_then(|mut g| g.take());
        let ended = server.map(|mut s| s.stop()).unwrap_or_default();
        let list: Vec<Term> = ended
            .iter()
            .filter(|e| e.was_active)
            .map(|e| {
                let keys = [atoms::peer_a(), atoms::peer_b(), atoms::session(), atoms::bytes_transferred(), atoms::reason()]
                    .map(|k| k.encode(env));
                let vals = [
                    convert::binary(env, &e.a),
                    convert::binary(env, &e.b),
                    e.session.encode(env),
                    e.bytes.encode(env),
                    end_reason_atom(e.reason).encode(env),
                ];
                Term::map_from_term_arrays(env, &keys, &vals).unwrap_or_else(|_| atoms::error().encode(env))
            })
            .collect();
        (atoms::ok(), list).encode(env)
    })
}

/// `relay_stats(Relay) -> {ok, Map} | {error, closed}`: sessions,
/// reservations, clients, forwarding counters, what was dropped or closed
/// at a bound (`control_dropped`, `clients_stalled`, `events_dropped`),
/// `legs_moved`, `load` (sessions per `max_sessions`, 0.0 .. 1.0) and the
/// limits in force.
#[rustler::nif]
fn relay_stats<'a>(env: Env<'a>, res: ResourceArc<RelayRes>) -> Term<'a> {
    guard::guard(env, || {
        let Ok(g) = res.server.lock() else {
            return (atoms::error(), atoms::internal()).encode(env);
        };
        let Some(s) = g.as_ref() else {
            return (atoms::error(), atoms::closed()).encode(env);
        };
        let st = s.stats();
        let l = s.limits();
        let load = s.load_permille() as f64 / 1000.0;
        drop(g);
        let keys = [
            atoms::sessions(),
            atoms::reservations(),
            atoms::clients(),
            atoms::frames_forwarded(),
            atoms::bytes_forwarded(),
            atoms::dropped_over_limit(),
            atoms::dropped_not_a_leg(),
            atoms::dropped_unknown(),
            atoms::control_dropped(),
            atoms::clients_stalled(),
            atoms::events_dropped(),
            atoms::legs_moved(),
            atoms::load(),
            atoms::max_sessions(),
            atoms::bandwidth_limit(),
            atoms::session_timeout(),
            atoms::pending_timeout(),
            atoms::max_sessions_per_key(),
            atoms::max_pending_per_key(),
            atoms::max_opens_per_minute(),
            atoms::max_reservations(),
            atoms::max_reservations_per_key(),
        ]
        .map(|k| k.encode(env));
        let vals = [
            st.sessions.encode(env),
            st.reservations.encode(env),
            st.clients.encode(env),
            st.frames_forwarded.encode(env),
            st.bytes_forwarded.encode(env),
            st.dropped_over_limit.encode(env),
            st.dropped_not_a_leg.encode(env),
            st.dropped_unknown.encode(env),
            st.control_dropped.encode(env),
            st.clients_stalled.encode(env),
            st.events_dropped.encode(env),
            st.legs_moved.encode(env),
            load.encode(env),
            l.max_sessions.encode(env),
            l.bandwidth_limit.map_or_else(|| atoms::unlimited().encode(env), |b| b.encode(env)),
            (l.session_timeout.as_millis() as u64).encode(env),
            (l.pending_timeout.as_millis() as u64).encode(env),
            l.max_sessions_per_key.encode(env),
            l.max_pending_per_key.encode(env),
            l.max_opens_per_minute.encode(env),
            l.max_reservations.encode(env),
            l.max_reservations_per_key.encode(env),
        ];
        match Term::map_from_term_arrays(env, &keys, &vals) {
            Ok(m) => (atoms::ok(), m).encode(env),
            Err(_) => (atoms::error(), atoms::internal()).encode(env),
        }
    })
}
