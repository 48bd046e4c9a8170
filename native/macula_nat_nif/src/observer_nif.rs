//! The observer server resource, owned (and monitored) by the process that
//! started it.

use crate::{atoms, convert, guard, owner};
use macula_nat_core::detect::observer_server::ObserverServer;
use rustler::{Encoder, Env, LocalPid, Monitor, ResourceArc, Term};

pub struct ObserverRes {
    server: ObserverServer,
}

#[rustler::resource_impl]
impl rustler::Resource for ObserverRes {
    const IMPLEMENTS_DOWN: bool = true;
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _mon: Monitor) {
        owner::Owned::close(self);
    }
}

impl owner::Owned for ObserverRes {
    fn close(&self) {
        self.server.stop();
    }
}

/// `observer_start({Ip,Port}, {Ip,Port} | undefined)`.
#[rustler::nif]
fn observer_start<'a>(env: Env<'a>, primary: Term<'a>, alternate: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let Some(primary) = convert::decode_addr(primary) else {
            return (atoms::error(), atoms::badarg()).encode(env);
        };
        let alternate = if alternate.is_atom() {
            None
        } else {
            match convert::decode_addr(alternate) {
                Some(a) => Some(a),
                None => return (atoms::error(), atoms::badarg()).encode(env),
            }
        };
        let software = Some(format!("macula_nat {}", env!("CARGO_PKG_VERSION")));
        match ObserverServer::start(primary, alternate, software) {
            Ok(server) => owner::owned_by_caller(env, ObserverRes { server }),
            Err(e) => convert::encode_error(env, &e),
        }
    })
}

#[rustler::nif]
fn observer_stop<'a>(env: Env<'a>, res: ResourceArc<ObserverRes>) -> Term<'a> {
    guard::guard(env, || {
        res.server.stop();
        atoms::ok().encode(env)
    })
}

/// `#{primary, alternate, answered, dropped => #{Reason => Count}}`
#[rustler::nif]
fn observer_info<'a>(env: Env<'a>, res: ResourceArc<ObserverRes>) -> Term<'a> {
    guard::guard(env, || {
        let s = &res.server;
        let (answered, dropped) = s.stats.snapshot();
        let dk: Vec<Term> = dropped.iter().map(|(k, _)| convert::binary(env, k.as_bytes())).collect();
        let dv: Vec<Term> = dropped.iter().map(|(_, v)| v.encode(env)).collect();
        let dropped = Term::map_from_arrays(env, &dk, &dv).unwrap_or_else(|_| atoms::error().encode(env));
        let alternate = match s.alternate() {
            Some(a) => convert::encode_addr(env, a),
            None => atoms::undefined().encode(env),
        };
        let keys = [atoms::primary(), atoms::alternate(), atoms::answered(), atoms::dropped()];
        let keys: Vec<Term> = keys.iter().map(|k| k.encode(env)).collect();
        let vals = [convert::encode_addr(env, s.primary()), alternate, answered.encode(env), dropped];
        Term::map_from_arrays(env, &keys, &vals).unwrap_or_else(|_| atoms::error().encode(env))
    })
}
