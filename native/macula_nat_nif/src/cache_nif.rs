//! The profile cache resource. Reads (`cache_get`) run on the calling
//! scheduler: one shard lock, a pointer copy, a map built from cached atoms.
//! DHT work (`cache_fetch`, `cache_advertise`) runs on the runtime and
//! answers by message.

use crate::dht_bridge::{Bridge, ErlangDht};
use crate::node_nif::NodeRes;
use crate::profile_term::{decode_peer_info, encode_peer_info};
use crate::{atoms, convert, guard, owner, reply};
use macula_nat_core::advertiser::Advertiser;
use macula_nat_core::dht::deferred::Deferred;
use macula_nat_core::dht::mainline::{MainlineConfig, MainlineDht};
use macula_nat_core::dht::memory::MemoryDht;
use macula_nat_core::dht::{DhtBackend, DhtError};
use macula_nat_core::peer_record::unix_now;
use macula_nat_core::profile_cache::{CacheConfig, FetchError, ProfileCache};
use macula_nat_core::NodeId;
use macula_nat_proto::cache::{CachePolicy, Lookup};
use macula_nat_proto::record::Rejection;
use rustler::types::map::MapIterator;
use rustler::{Atom, Binary, Encoder, Env, LocalPid, Monitor, ResourceArc, Term};
use std::sync::Arc;
use std::time::Duration;

pub struct CacheRes {
    pub(crate) cache: Arc<ProfileCache>,
    pub(crate) adv: Arc<Advertiser>,
    dht: Arc<dyn DhtBackend>,
    bridge: Option<Arc<ErlangDht>>,
}

#[rustler::resource_impl]
impl rustler::Resource for CacheRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        owner::Owned::close(self);
    }
}

impl owner::Owned for CacheRes {
    fn close(&self) {
        self.cache.close();
        self.adv.close();
        self.dht.close();
        if let Some(b) = &self.bridge {
            b.close();
        }
    }
}

struct Opts {
    cfg: CacheConfig,
    record_ttl: Duration,
    backend: Backend,
}

enum Backend {
    Memory,
    Mainline(MainlineConfig),
    Erlang(LocalPid),
}

/// `#{bootstrap => [<<"ip:port">>], port => P, server_mode => B,
/// request_timeout_ms => T}`, every key optional.
fn decode_mainline(term: Term) -> Option<MainlineConfig> {
    let mut cfg = MainlineConfig::default();
    for (k, v) in MapIterator::new(term)? {
        match k.atom_to_string().ok()?.as_str() {
            "bootstrap" => {
                let items: Vec<Binary> = v.decode().ok()?;
                cfg.bootstrap = items
                    .iter()
                    .map(|b| std::str::from_utf8(b.as_slice()).ok().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()?;
            }
            "port" => cfg.port = Some(convert::decode_int::<u16>(v)?),
            "server_mode" => cfg.server_mode = v.decode().ok()?,
            "request_timeout_ms" => {
                cfg.request_timeout = Some(Duration::from_millis(convert::decode_int::<u32>(v).filter(|t| *t > 0)? as u64))
            }
            _ => return None,
        }
    }
    Some(cfg)
}

fn decode_opts(term: Term) -> Option<Opts> {
    let mut cfg = CacheConfig::default();
    let mut policy = CachePolicy::default();
    let mut record_ttl = Duration::from_secs(3600);
    let mut backend = Backend::Memory;
    for (k, v) in MapIterator::new(term)? {
        let name = k.atom_to_string().ok()?;
        match name.as_str() {
            "max_entries" => cfg.max_entries = convert::decode_int::<u32>(v).filter(|n| *n > 0)? as usize,
            "ttl_s" => cfg.default_ttl = Duration::from_secs(convert::decode_int::<u32>(v).filter(|n| *n > 0)? as u64),
            "grace_s" => policy.grace = Duration::from_secs(convert::decode_int::<u32>(v)? as u64),
            "dht_timeout_ms" => {
                cfg.dht_timeout = Duration::from_millis(convert::decode_int::<u32>(v).filter(|n| *n > 0)? as u64)
            }
            "record_ttl_s" => record_ttl = Duration::from_secs(convert::decode_int::<u32>(v).filter(|n| *n >= 2)? as u64),
            "dht" => {
                backend = if let Ok(a) = v.decode::<Atom>() {
                    if a != atoms::memory() {
                        return None;
                    }
                    Backend::Memory
                } else {
                    let (tag, cfg): (Atom, Term) = v.decode().ok()?;
                    if tag != atoms::mainline() {
                        return None;
                    }
                    Backend::Mainline(decode_mainline(cfg)?)
                }
            }
            "bridge" => backend = Backend::Erlang(v.decode().ok()?),
            _ => {}
        }
    }
    cfg.policy = policy;
    Some(Opts { cfg, record_ttl, backend })
}

/// `cache_new(Node, Opts) -> {ok, Cache} | {error, badarg}`, owned by the
/// caller. Opts: `max_entries`, `ttl_s`, `grace_s`, `dht_timeout_ms`,
/// `record_ttl_s`, and either `dht => memory` or `bridge => Pid` (the
/// Erlang-behaviour backend, served by that process).
#[rustler::nif]
fn cache_new<'a>(env: Env<'a>, node: ResourceArc<NodeRes>, opts: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(o) = decode_opts(opts) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let (dht, bridge): (Arc<dyn DhtBackend>, _) = match o.backend {
            Backend::Memory => (Arc::new(MemoryDht), None),
            Backend::Mainline(cfg) => (Arc::new(Deferred::spawn("mainline", MainlineDht::start(cfg))), None),
            Backend::Erlang(pid) => {
                let b = ErlangDht::new(pid, o.cfg.dht_timeout, o.record_ttl.as_secs() as u32);
                (Arc::new(Bridge(b.clone())), Some(b))
            }
        };
        let dht_for_res = dht.clone();
        let adv = Advertiser::new(node.node.identity().clone(), dht.clone(), o.record_ttl);
        let cache = ProfileCache::new(o.cfg, dht);
        owner::owned_by_caller(env, CacheRes { cache, adv, dht: dht_for_res, bridge })
    })
}

fn node_id(b: &Binary) -> Option<NodeId> {
    NodeId::from_slice(b.as_slice())
}

/// `cache_get(Cache, NodeId) -> {ok, P} | {stale, P} | {error, not_found}`.
#[rustler::nif]
fn cache_get<'a>(env: Env<'a>, res: ResourceArc<CacheRes>, id: Binary<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(id) = node_id(&id) else {
            return (atoms::error(), atoms::not_found()).encode(env);
        };
        res.cache.read(&id, |found| match found {
            Lookup::Fresh(e) => (atoms::ok(), encode_peer_info(env, &e.info)).encode(env),
            Lookup::Stale { value, .. } => (atoms::stale(), encode_peer_info(env, &value.info)).encode(env),
            Lookup::Miss => (atoms::error(), atoms::not_found()).encode(env),
        })
    })
}

/// `cache_put(Cache, NodeId, Profile, TtlSeconds) -> ok | {error, Reason}`.
#[rustler::nif]
fn cache_put<'a>(env: Env<'a>, res: ResourceArc<CacheRes>, id: Term<'a>, profile: Term<'a>, ttl: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(id) = convert::decode_node_id(id) else {
            return (atoms::error(), atoms::bad_node_id()).encode(env);
        };
        let Some(ttl) = convert::decode_int::<u32>(ttl).filter(|t| *t > 0) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        match decode_peer_info(profile, unix_now()) {
            Ok(info) => {
                res.cache.put(id, info, Duration::from_secs(ttl as u64));
                atoms::ok().encode(env)
            }
            Err(key) => (atoms::error(), (atoms::bad_profile(), key)).encode(env),
        }
    })
}

#[rustler::nif]
fn cache_invalidate<'a>(env: Env<'a>, res: ResourceArc<CacheRes>, id: Binary<'a>) -> Term<'a> {
    guard::guard(env, || {
        if let Some(id) = node_id(&id) {
            res.cache.invalidate(&id);
        }
        atoms::ok().encode(env)
    })
}

#[rustler::nif]
fn cache_stats<'a>(env: Env<'a>, res: ResourceArc<CacheRes>) -> Term<'a> {
    guard::guard(env, || {
        let s = res.cache.stats();
        let a = res.adv.stats();
        let pairs: [(Atom, u64); 11] = [
            (atoms::size(), s.cache.size),
            (atoms::hits(), s.cache.hits),
            (atoms::misses(), s.cache.misses),
            (atoms::stale_hits(), s.cache.stale_hits),
            (atoms::evictions(), s.cache.evictions),
            (atoms::expirations(), s.cache.expirations),
            (atoms::forged(), s.forged),
            (atoms::replayed(), s.replayed),
            (atoms::dht_fetches(), s.dht_fetches),
            (atoms::refreshes(), s.refreshes),
            (atoms::published(), a.published),
        ];
        let keys: Vec<Term> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
        let vals: Vec<Term> = pairs.iter().map(|(_, v)| v.encode(env)).collect();
        Term::map_from_arrays(env, &keys, &vals).unwrap_or_else(|_| atoms::error().encode(env))
    })
}

fn dht_reason(e: &DhtError) -> Atom {
    match e {
        DhtError::Timeout => atoms::timeout(),
        DhtError::TooLarge(_) => atoms::too_large(),
        DhtError::Closed => atoms::closed(),
        DhtError::Backend(_) => atoms::backend(),
    }
}

fn fetch_reason(e: &FetchError) -> Atom {
    match e {
        FetchError::NotFound => atoms::not_found(),
        FetchError::Forged => atoms::forged(),
        FetchError::Rejected(Rejection::Replayed) => atoms::replayed(),
        FetchError::Rejected(Rejection::Expired) => atoms::expired(),
        FetchError::Rejected(Rejection::WrongNode) => atoms::wrong_node(),
        FetchError::Rejected(Rejection::FromTheFuture) => atoms::from_the_future(),
        FetchError::Dht(d) => dht_reason(d),
        FetchError::Closed => atoms::closed(),
    }
}

/// `cache_fetch(Ref, Cache, NodeId) -> {ok, Pending}`; replies `{ok, P}` or
/// `{error, not_found | forged | replayed | expired | timeout | ...}`.
#[rustler::nif]
fn cache_fetch<'a>(env: Env<'a>, reference: Term<'a>, res: ResourceArc<CacheRes>, id: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(id) = convert::decode_node_id(id) else {
            return (atoms::error(), atoms::bad_node_id()).encode(env);
        };
        let cache = res.cache.clone();
        reply::spawn_reply(env, reference, async move {
            match cache.get_or_fetch(id).await {
                Ok(e) => reply::encode_with(move |env| (atoms::ok(), encode_peer_info(env, &e.info)).encode(env)),
                Err(err) => {
                    let r = fetch_reason(&err);
                    reply::encode_with(move |env| (atoms::error(), r).encode(env))
                }
            }
        })
    })
}

/// `cache_advertise(Ref, Cache, Profile) -> {ok, Pending}`; publishes the
/// signed record now and keeps it refreshed; replies `{ok, Seq}`.
#[rustler::nif]
fn cache_advertise<'a>(env: Env<'a>, reference: Term<'a>, res: ResourceArc<CacheRes>, profile: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let info = match decode_peer_info(profile, unix_now()) {
            Ok(i) => i,
            Err(key) => return (atoms::error(), (atoms::bad_profile(), key)).encode(env),
        };
        let adv = res.adv.clone();
        reply::spawn_reply(env, reference, async move {
            match adv.publish(info).await {
                Ok(seq) => reply::ok_with(seq),
                Err(e) => {
                    let r = dht_reason(&e);
                    reply::encode_with(move |env| (atoms::error(), r).encode(env))
                }
            }
        })
    })
}

/// `cache_set_contacts(Cache, Rendezvous, Reserved) -> ok | {error,
/// badarg}`: where this node's record says it can be signalled (the
/// rendezvous it joins, with their node ids) and relayed (relays holding
/// its reservation); both `[{NodeId, Endpoint}]`, best first, at most
/// `MAX_CONTACTS` each kept. Republished soon if it changes the record.
#[rustler::nif]
fn cache_set_contacts<'a>(env: Env<'a>, res: ResourceArc<CacheRes>, rendezvous: Term<'a>, reserved: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let (Some(mut rendezvous), Some(mut reserved)) =
            (convert::decode_contacts(rendezvous), convert::decode_contacts(reserved))
        else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        rendezvous.truncate(macula_nat_proto::record::MAX_CONTACTS);
        reserved.truncate(macula_nat_proto::record::MAX_CONTACTS);
        res.adv.set_contacts(macula_nat_proto::record::Contacts { rendezvous, reserved });
        atoms::ok().encode(env)
    })
}

/// `cache_contacts(Cache) -> {Rendezvous, Reserved}`, each `[{NodeId,
/// <<"ip:port">>}]`: what this node's record names now (its live homes,
/// its live reservations), published within a second of a change.
#[rustler::nif]
fn cache_contacts<'a>(env: Env<'a>, res: ResourceArc<CacheRes>) -> Term<'a> {
    guard::guard(env, || {
        let c = res.adv.contacts();
        let list = |v: &[macula_nat_proto::record::Contact]| {
            v.iter()
                .map(|c| (convert::binary(env, c.node_id.as_bytes()), convert::binary(env, c.addr.to_string().as_bytes())).encode(env))
                .collect::<Vec<Term>>()
                .encode(env)
        };
        (list(&c.rendezvous), list(&c.reserved)).encode(env)
    })
}

/// `cache_dht_reply(Cache, Id, Answer) -> ok`. Answer: `ok` (put done),
/// `{ok, Record}`, `{error, not_found}` or `{error, _}`.
#[rustler::nif]
fn cache_dht_reply<'a>(env: Env<'a>, res: ResourceArc<CacheRes>, id: Term<'a>, answer: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let (Some(bridge), Some(id)) = (&res.bridge, convert::decode_int::<u64>(id)) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let decoded = if answer.decode::<Atom>().map(|a| a == atoms::ok()).unwrap_or(false) {
            Ok(None)
        } else if let Ok((tag, val)) = answer.decode::<(Atom, Term)>() {
            if tag == atoms::ok() {
                match val.decode::<Binary>() {
                    Ok(b) => Ok(Some(b.as_slice().to_vec())),
                    Err(_) => Err(DhtError::Backend("get/1 returned a non-binary".into())),
                }
            } else if val.decode::<Atom>().map(|a| a == atoms::not_found()).unwrap_or(false) {
                Ok(None)
            } else {
                Err(DhtError::Backend("host dht error".into()))
            }
        } else {
            Err(DhtError::Backend("bad answer from host dht".into()))
        };
        bridge.answer(id, decoded);
        atoms::ok().encode(env)
    })
}

#[rustler::nif]
fn cache_close<'a>(env: Env<'a>, res: ResourceArc<CacheRes>) -> Term<'a> {
    guard::guard(env, || {
        owner::Owned::close(&*res);
        atoms::ok().encode(env)
    })
}
