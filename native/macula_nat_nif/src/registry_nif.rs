//! The relay registry resource. Every call returns at once: reads take one
//! short lock, registrations only record and wake the registry's own task.
//! Changes of the choice reach the owner as
//! `{macula_relay_registry, relays_changed}`.

use crate::cache_nif::CacheRes;
use crate::node_nif::NodeRes;
use crate::profile_term::endpoint;
use crate::{atoms, convert, guard, owner};
use macula_nat_core::relay_registry::{RegistryConfig, RelayInfo, RelayRegistry, Sources};
use macula_nat_core::runtime;
use rustler::types::map::MapIterator;
use rustler::{Atom, Encoder, Env, LocalPid, Monitor, OwnedEnv, ResourceArc, Term};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

pub struct RegistryRes {
    reg: Arc<RelayRegistry>,
    notifier: Mutex<Option<JoinHandle<()>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for RegistryRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        owner::Owned::close(self);
    }
}

impl owner::Owned for RegistryRes {
    fn close(&self) {
        self.reg.close();
        if let Some(t) = self.notifier.lock().ok().and_then(|mut n| n.take()) {
            t.abort();
        }
    }
}

fn sources(node: &NodeRes, cache: &CacheRes) -> Sources {
    Sources { node: node.node.clone(), cache: cache.cache.clone(), adv: cache.adv.clone() }
}

fn ms(t: Term) -> Option<Duration> {
    convert::decode_int::<u32>(t).filter(|v| *v > 0).map(|v| Duration::from_millis(v as u64))
}

/// `#{refresh_ms => R, probe_timeout_ms => P}`, both optional.
fn decode_opts(term: Term) -> Option<RegistryConfig> {
    let (mut refresh, mut probe) = (None, None);
    for (k, v) in MapIterator::new(term)? {
        match k.atom_to_string().ok()?.as_str() {
            "refresh_ms" => refresh = Some(ms(v)?),
            "probe_timeout_ms" => probe = Some(ms(v)?),
            _ => {}
        }
    }
    let mut cfg = refresh.map(RegistryConfig::with_refresh).unwrap_or_default();
    if let Some(p) = probe {
        cfg.probe_timeout = p;
    }
    Some(cfg)
}

/// `relay_registry_new(Node, Cache, Opts) -> {ok, Registry} | {error,
/// badarg}`, owned by the caller, which also gets the change messages.
#[rustler::nif]
fn relay_registry_new<'a>(
    env: Env<'a>,
    node: ResourceArc<NodeRes>,
    cache: ResourceArc<CacheRes>,
    opts: Term<'a>,
) -> Term<'a> {
    guard::guard(env, || {
        let Some(cfg) = decode_opts(opts) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let reg = RelayRegistry::new(sources(&node, &cache), cfg);
        let mut changes = reg.subscribe();
        let pid = env.pid();
        // Holds only the receiver, so it never keeps the registry alive;
        // aborted when the resource closes.
        let notifier = runtime::spawn(async move {
            let mut msg = OwnedEnv::new();
            while changes.changed().await.is_ok() {
                let sent = msg.send_and_clear(&pid, |env| {
                    (atoms::macula_relay_registry(), atoms::relays_changed()).encode(env)
                });
                if sent.is_err() {
                    return;
                }
            }
        });
        owner::owned_by_caller(env, RegistryRes { reg, notifier: Mutex::new(Some(notifier)) })
    })
}

/// `relay_registry_register(Registry, NodeId, {Ip, Port}) -> ok | {error, _}`.
#[rustler::nif]
fn relay_registry_register<'a>(env: Env<'a>, res: ResourceArc<RegistryRes>, id: Term<'a>, addr: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(id) = convert::decode_node_id(id) else {
            return (atoms::error(), atoms::bad_node_id()).encode(env);
        };
        let Some(addr) = convert::decode_addr(addr).filter(|a| a.port() != 0) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        res.reg.register(id, addr);
        atoms::ok().encode(env)
    })
}

/// `relay_registry_unregister(Registry, NodeId) -> ok | {error, bad_node_id}`.
#[rustler::nif]
fn relay_registry_unregister<'a>(env: Env<'a>, res: ResourceArc<RegistryRes>, id: Term<'a>) -> Term<'a> {
    guard::guard(env, || match convert::decode_node_id(id) {
        Some(id) => {
            res.reg.unregister(&id);
            atoms::ok().encode(env)
        }
        None => (atoms::error(), atoms::bad_node_id()).encode(env),
    })
}

/// `relay_registry_report_failure(Registry, NodeId) -> ok | {error, bad_node_id}`.
#[rustler::nif]
fn relay_registry_report_failure<'a>(env: Env<'a>, res: ResourceArc<RegistryRes>, id: Term<'a>) -> Term<'a> {
    guard::guard(env, || match convert::decode_node_id(id) {
        Some(id) => {
            res.reg.report_failure(&id);
            atoms::ok().encode(env)
        }
        None => (atoms::error(), atoms::bad_node_id()).encode(env),
    })
}

/// `relay_registry_set_load(Registry, Load) -> ok | {error, badarg}`; Load
/// a number in 0.0 ..= 1.0.
#[rustler::nif]
fn relay_registry_set_load<'a>(env: Env<'a>, res: ResourceArc<RegistryRes>, load: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let l = load.decode::<f64>().ok().or_else(|| load.decode::<i64>().ok().map(|i| i as f64));
        match l.filter(|l| (0.0..=1.0).contains(l)) {
            Some(l) => {
                res.reg.set_own_load(l as f32);
                atoms::ok().encode(env)
            }
            None => (atoms::error(), atoms::badarg()).encode(env),
        }
    })
}

fn relay_map<'a>(env: Env<'a>, r: &RelayInfo) -> Term<'a> {
    // Keys in term order (endpoint, latency_ms, load, node_id) so the VM
    // need not sort them.
    let keys = [atoms::endpoint(), atoms::latency_ms(), atoms::load(), atoms::node_id()].map(|k| k.encode(env));
    let latency_ms = (r.latency.as_secs_f64() * 1000.0).round() as u64;
    // Loads are advertised in per mille: give them back as such, not as
    // the nearest f32 (0.3 rather than 0.30000001192092896).
    let load = (r.load as f64 * 1000.0).round() / 1000.0;
    let vals = [endpoint(env, &r.addr), latency_ms.encode(env), load.encode(env), convert::binary(env, &r.node_id)];
    Term::map_from_term_arrays(env, &keys, &vals).unwrap_or_else(|_| atoms::error().encode(env))
}

/// `relay_registry_find(Registry, Target | undefined) -> {ok, Relay} |
/// {error, no_relay | bad_node_id}`.
#[rustler::nif]
fn relay_registry_find<'a>(env: Env<'a>, res: ResourceArc<RegistryRes>, target: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let target = if target.decode::<Atom>().is_ok_and(|a| a == atoms::undefined()) {
            None
        } else {
            match convert::decode_node_id(target) {
                Some(t) => Some(t),
                None => return (atoms::error(), atoms::bad_node_id()).encode(env),
            }
        };
        match res.reg.find(target.as_ref()) {
            Some(r) => (atoms::ok(), relay_map(env, &r)).encode(env),
            None => (atoms::error(), atoms::no_relay()).encode(env),
        }
    })
}

/// `relay_registry_best(Registry, N) -> [Relay]`, best first.
#[rustler::nif]
fn relay_registry_best<'a>(env: Env<'a>, res: ResourceArc<RegistryRes>, n: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(n) = convert::decode_int::<u32>(n) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        res.reg.best(n as usize).iter().map(|r| relay_map(env, r)).collect::<Vec<Term>>().encode(env)
    })
}

#[rustler::nif]
fn relay_registry_close<'a>(env: Env<'a>, res: ResourceArc<RegistryRes>) -> Term<'a> {
    guard::guard(env, || {
        owner::Owned::close(&*res);
        atoms::ok().encode(env)
    })
}
