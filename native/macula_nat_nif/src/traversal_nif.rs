//! Rendezvous and signalling resources, and connecting through them.
//! The signal resource is owned by the coordinator process; connects and
//! accepts run in the calling process, which owns the connection it gets.

use crate::conn_nif::{adopt, adopted_in, decode_mode, method_atom};
use crate::cache_nif::CacheRes;
use crate::node_nif::NodeRes;
use crate::profile_term::decode_peer_info;
use crate::relay_nif::refusal_atom;
use crate::{atoms, convert, guard, owner, reply};
use macula_nat_core::connect::{public_profile, SignalConfig};
use macula_nat_proto::record::Contact;
use macula_nat_core::{connect, ConnectError, ConnectOpts, Rendezvous, Signal};
use rustler::types::map::MapIterator;
use rustler::{Encoder, Env, LocalPid, Monitor, ResourceArc, Term};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct RendezvousRes {
    rv: Mutex<Option<Rendezvous>>,
}

#[rustler::resource_impl]
impl rustler::Resource for RendezvousRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        owner::Owned::close(self);
    }
}

impl owner::Owned for RendezvousRes {
    fn close(&self) {
        if let Ok(mut g) = self.rv.lock() {
            if let Some(rv) = g.take() {
                rv.stop();
            }
        }
    }
}

pub struct SignalRes {
    signal: Arc<Signal>,
}

#[rustler::resource_impl]
impl rustler::Resource for SignalRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        owner::Owned::close(self);
    }
}

impl owner::Owned for SignalRes {
    fn close(&self) {
        self.signal.close();
    }
}

/// `rendezvous_serve(Node) -> {ok, Rv} | {error, Reason}`, owned by the caller.
#[rustler::nif]
fn rendezvous_serve<'a>(env: Env<'a>, node: ResourceArc<NodeRes>) -> Term<'a> {
    guard::guard(env, || match Rendezvous::serve(node.node.clone()) {
        Ok(rv) => owner::owned_by_caller(env, RendezvousRes { rv: Mutex::new(Some(rv)) }),
        Err(e) => (atoms::error(), (atoms::quic(), convert::binary(env, e.kind().as_bytes()))).encode(env),
    })
}

/// `rendezvous_peers(Rv) -> [{NodeId, <<"ip:port">>}]`.
#[rustler::nif]
fn rendezvous_peers<'a>(env: Env<'a>, rv: ResourceArc<RendezvousRes>) -> Term<'a> {
    guard::guard(env, || {
        let peers = rv.rv.lock().ok().and_then(|g| g.as_ref().map(|r| r.peers())).unwrap_or_default();
        peers
            .iter()
            .map(|(id, a)| (convert::binary(env, id), convert::binary(env, a.to_string().as_bytes())).encode(env))
            .collect::<Vec<Term>>()
            .encode(env)
    })
}

/// `signal_join(Ref, Node, {Ip, Port}, RvId, Profile | undefined) ->
/// {ok, Pending}`; replies `{ok, Signal}` (owned by the caller) or
/// `{error, Reason}`.
#[rustler::nif]
fn signal_join<'a>(
    env: Env<'a>,
    reference: Term<'a>,
    node: ResourceArc<NodeRes>,
    addr: Term<'a>,
    rv_id: Term<'a>,
    profile: Term<'a>,
) -> Term<'a> {
    guard::guard(env, || {
        let (Some(addr), Some(node_id)) = (convert::decode_addr(addr), convert::decode_node_id(rv_id)) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        join(env, reference, node, vec![Contact { node_id, addr }], profile)
    })
}

/// `signal_join_homes(Ref, Node, [{{Ip, Port}, RvId}], Profile | undefined)
/// -> {ok, Pending}`: joins every rendezvous of the list (preferred first,
/// at most `MAX_HOMES`) in one signal; replies as `signal_join`.
#[rustler::nif]
fn signal_join_homes<'a>(env: Env<'a>, reference: Term<'a>, node: ResourceArc<NodeRes>, homes: Term<'a>, profile: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Ok(list) = homes.decode::<Vec<(Term, Term)>>() else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let decoded: Option<Vec<Contact>> = list
            .iter()
            .map(|(a, id)| Some(Contact { node_id: convert::decode_node_id(*id)?, addr: convert::decode_addr(*a)? }))
            .collect();
        match decoded {
            Some(h) if !h.is_empty() => join(env, reference, node, h, profile),
            _ => (atoms::error(), atoms::badarg()).encode(env),
        }
    })
}

fn join<'a>(env: Env<'a>, reference: Term<'a>, node: ResourceArc<NodeRes>, homes: Vec<Contact>, profile: Term<'a>) -> Term<'a> {
    let info = if profile.is_atom() {
        public_profile()
    } else {
        match decode_peer_info(profile, 0) {
            Ok(i) => i,
            Err(key) => return (atoms::error(), (atoms::bad_profile(), key)).encode(env),
        }
    };
    let owner_pid = env.pid();
    let node = node.node.clone();
    reply::spawn_reply(env, reference, async move {
        match Signal::join_homes(node, &homes, SignalConfig::new(info)).await {
            Ok(sig) => {
                let res = ResourceArc::new(SignalRes { signal: Arc::new(sig) });
                match res.monitor(None, &owner_pid) {
                    Some(_) => reply::ok_with(res),
                    None => {
                        owner::Owned::close(&*res);
                        connect_error(ConnectError::Closed)
                    }
                }
            }
            Err(e) => connect_error(e),
        }
    })
}

/// `signal_close(Signal) -> ok`: leaves its rendezvous, relays and guests
/// now (a replaced signal would otherwise keep writing the node's record
/// until collected).
#[rustler::nif]
fn signal_close<'a>(env: Env<'a>, sig: ResourceArc<SignalRes>) -> Term<'a> {
    guard::guard(env, || {
        owner::Owned::close(&*sig);
        atoms::ok().encode(env)
    })
}

/// `signal_homes(Signal) -> [{NodeId, <<"ip:port">>, Live}]`: the
/// rendezvous the signal joins, in the configured order, and whether each
/// control connection is up.
#[rustler::nif]
fn signal_homes<'a>(env: Env<'a>, sig: ResourceArc<SignalRes>) -> Term<'a> {
    guard::guard(env, || {
        sig.signal
            .homes()
            .iter()
            .map(|(c, live)| (convert::binary(env, c.node_id.as_bytes()), convert::binary(env, c.addr.to_string().as_bytes()), *live).encode(env))
            .collect::<Vec<Term>>()
            .encode(env)
    })
}

/// `signal_set_profile(Signal, Profile) -> ok | {error, {bad_profile, Key}}`.
#[rustler::nif]
fn signal_set_profile<'a>(env: Env<'a>, sig: ResourceArc<SignalRes>, profile: Term<'a>) -> Term<'a> {
    guard::guard(env, || match decode_peer_info(profile, 0) {
        Ok(i) => {
            sig.signal.set_profile(i);
            atoms::ok().encode(env)
        }
        Err(key) => (atoms::error(), (atoms::bad_profile(), key)).encode(env),
    })
}

fn connect_error(e: ConnectError) -> reply::Encode {
    reply::encode_with(move |env| {
        let reason = match &e {
            ConnectError::PunchFailed => atoms::punch_failed().encode(env),
            ConnectError::SymmetricNat => atoms::symmetric_nat().encode(env),
            ConnectError::NoRelay => atoms::no_relay().encode(env),
            ConnectError::RelayRefused(r) => refusal_atom(*r).encode(env),
            ConnectError::Timeout => atoms::timeout().encode(env),
            ConnectError::UnknownPeer => atoms::unknown_peer().encode(env),
            ConnectError::NoRendezvous => atoms::no_rendezvous().encode(env),
            ConnectError::Closed => atoms::closed().encode(env),
            ConnectError::Rejected(_) => atoms::rejected().encode(env),
            ConnectError::Quic(m) => (atoms::quic(), convert::binary(env, m.as_bytes())).encode(env),
        };
        (atoms::error(), reason).encode(env)
    })
}

/// Longest first wait before a relayed connection tries to upgrade.
const MAX_UPGRADE_INTERVAL_MS: u32 = 3_600_000;

/// Connect options; `Err(Some(Key))` names the first bad one, `Err(None)`:
/// not a map. Keys this layer does not know are left to the Erlang side.
fn decode_connect_opts(t: Term) -> Result<ConnectOpts, Option<Term>> {
    let mut o = ConnectOpts::default();
    let iter = MapIterator::new(t).ok_or(None)?;
    for (k, v) in iter {
        let Ok(key) = k.atom_to_string() else { continue };
        let ok = match key.as_str() {
            "timeout" => convert::decode_int::<u32>(v)
                .filter(|t| *t > 0)
                .map(|t| o.timeout = Duration::from_millis(t as u64))
                .is_some(),
            "max_punch_attempts" | "max_attempts" => {
                convert::decode_int::<u32>(v).filter(|n| *n > 0).map(|n| o.max_punch_attempts = n).is_some()
            }
            "allow_relay" | "fallback_relay" => v.decode().map(|b| o.allow_relay = b).is_ok(),
            "prefer_direct" => v.decode().map(|b| o.prefer_direct = b).is_ok(),
            "relay_only" => v.decode().map(|b| o.relay_only = b).is_ok(),
            "upgrade_interval" => {
                if v.decode::<rustler::Atom>().is_ok_and(|a| a == atoms::infinity()) {
                    o.upgrade_interval = None;
                    true
                } else {
                    convert::decode_int::<u32>(v)
                        .filter(|ms| (1..=MAX_UPGRADE_INTERVAL_MS).contains(ms))
                        .map(|ms| o.upgrade_interval = Some(Duration::from_millis(ms as u64)))
                        .is_some()
                }
            }
            _ => true,
        };
        if !ok {
            return Err(Some(k));
        }
    }
    Ok(o)
}

/// `signal_connect(Ref, Signal, TargetId, Opts) -> {ok, Pending}`; replies
/// `{ok, Method, Conn}` (Conn owned by the caller) or `{error, Reason}`.
#[rustler::nif]
fn signal_connect<'a>(env: Env<'a>, reference: Term<'a>, sig: ResourceArc<SignalRes>, target: Term<'a>, opts: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(target) = convert::decode_node_id(target) else {
            return (atoms::error(), atoms::bad_node_id()).encode(env);
        };
        let opts = match decode_connect_opts(opts) {
            Ok(o) => o,
            Err(None) => return (atoms::error(), atoms::badarg()).encode(env),
            Err(Some(key)) => return (atoms::error(), (atoms::bad_option(), key)).encode(env),
        };
        let owner_pid = env.pid();
        let signal = sig.signal.clone();
        reply::spawn_reply(env, reference, async move {
            match connect(&signal, target, opts).await {
                Ok((conn, method)) => match adopt(conn, signal.node(), owner_pid) {
                    Some(res) => {
                        let m = method_atom(method);
                        reply::encode_with(move |env| (atoms::ok(), m, res).encode(env))
                    }
                    None => connect_error(ConnectError::Closed),
                },
                Err(e) => connect_error(e),
            }
        })
    })
}

/// `signal_accept(Ref, Signal, Active) -> {ok, Pending}`; replies `{ok,
/// Conn}`, starting in mode `Active` (see `conn_nif::decode_mode`).
#[rustler::nif]
fn signal_accept<'a>(env: Env<'a>, reference: Term<'a>, sig: ResourceArc<SignalRes>, active: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(mode) = decode_mode(active) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let owner_pid = env.pid();
        let signal = sig.signal.clone();
        reply::spawn_reply(env, reference, async move {
            match signal.accept().await {
                Some(conn) => adopted_in(conn, signal.node(), owner_pid, mode),
                None => connect_error(ConnectError::Closed),
            }
        })
    })
}

/// `signal_set_relays(Signal, [{NodeId, Endpoint}]) -> ok | {error, badarg}`:
/// the relays to hold reservations at, best first; an endpoint is
/// `<<"ip:port">>` or `{Ip, Port}`.
#[rustler::nif]
fn signal_set_relays<'a>(env: Env<'a>, sig: ResourceArc<SignalRes>, relays: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Ok(relays) = relays.decode::<Vec<(Term, Term)>>() else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let decoded: Option<Vec<_>> = relays
            .iter()
            .map(|(id, ep)| Some((convert::decode_node_id(*id)?, convert::decode_endpoint(*ep)?)))
            .collect();
        match decoded {
            Some(r) => {
                sig.signal.set_relays(r);
                atoms::ok().encode(env)
            }
            None => (atoms::error(), atoms::badarg()).encode(env),
        }
    })
}

/// `signal_set_directory(Signal, Cache) -> ok`: a connect to a node that
/// our rendezvous does not know looks its signed record up in `Cache` (the
/// node's profile cache and DHT) and signals through the rendezvous it
/// names; and our record (`Cache`'s advertiser) names the signal's live
/// homes and the relays it holds live reservations at.
#[rustler::nif]
fn signal_set_directory<'a>(env: Env<'a>, sig: ResourceArc<SignalRes>, cache: ResourceArc<CacheRes>) -> Term<'a> {
    guard::guard(env, || {
        sig.signal.set_directory(Some(cache.cache.clone()));
        sig.signal.advertise_reservations(cache.adv.clone());
        sig.signal.advertise_homes(cache.adv.clone());
        atoms::ok().encode(env)
    })
}

/// `signal_reserved_relays(Signal) -> [{NodeId, <<"ip:port">>}]`: the
/// relays this node holds a live reservation at (and advertises).
#[rustler::nif]
fn signal_reserved_relays<'a>(env: Env<'a>, sig: ResourceArc<SignalRes>) -> Term<'a> {
    guard::guard(env, || {
        sig.signal
            .reserved_relays()
            .iter()
            .map(|(id, a)| (convert::binary(env, id), convert::binary(env, a.to_string().as_bytes())).encode(env))
            .collect::<Vec<Term>>()
            .encode(env)
    })
}
