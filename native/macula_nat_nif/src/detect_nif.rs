//! NAT detection entry point: starts a detection on the node's socket and
//! answers with the profile map by message.

use crate::profile_term::{allocation, confidence, filtering, mapping};
use crate::{atoms, convert, guard, node_nif::NodeRes, reply};
use macula_nat_core::detect::detector::{self, DetectFailure, Detected};
use macula_nat_core::detect::lifetime;
use macula_nat_proto::detect::lifetime::{LifetimeConfig, LifetimeVerdict};
use macula_nat_proto::detect::{DetectConfig, DetectError};
use rustler::{Atom, Encoder, Env, ResourceArc, Term};
use std::time::Duration;

fn encode_detected<'a>(env: Env<'a>, d: &Detected) -> Term<'a> {
    let p = &d.profile;
    let undefined = atoms::undefined().encode(env);
    let pairs: Vec<(Atom, Term<'a>)> = vec![
        (atoms::mapping(), mapping(p.mapping).encode(env)),
        (atoms::filtering(), filtering(p.filtering).encode(env)),
        (atoms::allocation(), allocation(p.allocation).encode(env)),
        (atoms::public_ip(), convert::encode_ip(env, p.public_addr.ip())),
        (atoms::public_port(), p.public_addr.port().encode(env)),
        (atoms::detected_at(), d.detected_at.encode(env)),
        (atoms::confidence(), confidence(p.confidence).encode(env)),
        (atoms::port_delta(), p.port_delta.map(|x| x.encode(env)).unwrap_or(undefined)),
        (atoms::mapping_lifetime(), p.mapping_lifetime.map(|x| (x.as_millis() as u64).encode(env)).unwrap_or(undefined)),
        (atoms::hairpin(), p.hairpin.map(|x| x.encode(env)).unwrap_or(undefined)),
        (atoms::no_nat(), p.no_nat.encode(env)),
        (atoms::local_ip(), convert::encode_ip(env, d.local_addr.ip())),
        (atoms::local_port(), d.local_addr.port().encode(env)),
        (atoms::detection_ms(), (d.elapsed.as_micros() as f64 / 1000.0).encode(env)),
    ];
    let keys: Vec<Term> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let vals: Vec<Term> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_arrays(env, &keys, &vals).unwrap_or_else(|_| atoms::error().encode(env))
}

/// `detect_start(Ref, Node, [{Ip, Port}], TimeoutMs) -> {ok, Pending}`; the
/// reply is `{ok, Profile}` or `{error, detection_timeout | no_observers | ...}`.
#[rustler::nif]
fn detect_start<'a>(
    env: Env<'a>,
    reference: Term<'a>,
    node: ResourceArc<NodeRes>,
    observers: Vec<Term<'a>>,
    timeout_ms: Term<'a>,
) -> Term<'a> {
    guard::guard(env, || {
        let Some(timeout_ms) = convert::decode_int::<u32>(timeout_ms).filter(|t| *t > 0) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let mut addrs = Vec::with_capacity(observers.len());
        for o in observers {
            match convert::decode_addr(o) {
                Some(a) => addrs.push(a),
                None => return (atoms::error(), atoms::badarg()).encode(env),
            }
        }
        let cfg = DetectConfig {
            observers: addrs,
            timeout: Duration::from_millis(timeout_ms as u64),
            ..DetectConfig::default()
        };
        let node = node.node.clone();
        reply::spawn_reply(env, reference, async move {
            match detector::detect(node, cfg).await {
                Ok(d) => reply::encode_with(move |env| (atoms::ok(), encode_detected(env, &d)).encode(env)),
                Err(DetectFailure::Detect(DetectError::Timeout)) => {
                    reply::encode_with(|env| (atoms::error(), atoms::detection_timeout()).encode(env))
                }
                Err(DetectFailure::Detect(DetectError::NoObservers)) => {
                    reply::encode_with(|env| (atoms::error(), atoms::no_observers()).encode(env))
                }
                Err(DetectFailure::Runtime(e)) => reply::encode_with(move |env| convert::encode_error(env, &e)),
            }
        })
    })
}

/// `lifetime_start(Ref, Node, {Ip, Port}, CapMs) -> {ok, Pending}`: measures
/// the mapping lifetime towards the observer, on sockets of its own bound
/// to the node's IP (RFC 5780 section 4.6, see
/// `macula_nat_core::detect::lifetime`). The reply, when it is done (about
/// 1.7 lifetimes; at most about 1.5 x the cap), is `{ok, Ms, Kind}` with
/// `Kind` `between` (`Ms` the estimate), `at_least` (alive at the cap) or
/// `below` (`Ms` half the lowest age probed), or `{error, not_measured}`.
#[rustler::nif]
fn lifetime_start<'a>(env: Env<'a>, reference: Term<'a>, node: ResourceArc<NodeRes>, observer: Term<'a>, cap_ms: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let (Some(observer), Some(cap_ms)) = (convert::decode_addr(observer), convert::decode_int::<u32>(cap_ms).filter(|c| *c >= 1000)) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let Ok(local) = node.node.local_addr() else {
            return (atoms::error(), atoms::closed()).encode(env);
        };
        let cfg = LifetimeConfig { cap: Duration::from_millis(cap_ms as u64), ..LifetimeConfig::default() };
        reply::spawn_reply(env, reference, async move {
            match lifetime::measure(observer, local.ip(), cfg).await {
                Some(r) => reply::encode_with(move |env| {
                    let kind = match r.verdict {
                        LifetimeVerdict::Between { .. } => atoms::between(),
                        LifetimeVerdict::AtLeast(_) => atoms::at_least(),
                        LifetimeVerdict::Below(_) => atoms::below(),
                    };
                    (atoms::ok(), r.verdict.estimate().as_millis() as u64, kind).encode(env)
                }),
                None => reply::encode_with(|env| (atoms::error(), atoms::not_measured()).encode(env)),
            }
        })
    })
}
