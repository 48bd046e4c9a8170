//! Health and fault-injection entry points, used by tests and by
//! `macula_nat_system:ping/0`.

use crate::{atoms, guard, reply};
use rustler::{Atom, Encoder, Env, Term};
use std::time::Instant;

/// Round trip through the runtime: `{ok, Pending}`, then
/// `{macula_nat_reply, Ref, {ok, Micros}}`.
#[rustler::nif]
fn runtime_ping<'a>(env: Env<'a>, reference: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        let t0 = Instant::now();
        reply::spawn_reply(env, reference, async move {
            reply::ok_with(t0.elapsed().as_micros() as u64)
        })
    })
}

/// `debug_panic(sync)` panics inside the NIF; `debug_panic_async(Ref)` panics
/// inside a runtime task. Both must come back as `{error, {internal, _}}`.
#[rustler::nif]
fn debug_panic<'a>(env: Env<'a>, _where: Atom) -> Term<'a> {
    guard::guard(env, || panic!("deliberate panic (sync)"))
}

#[rustler::nif]
fn debug_panic_async<'a>(env: Env<'a>, reference: Term<'a>) -> Term<'a> {
    guard::guard(env, || {
        reply::spawn_reply(env, reference, async move {
            if std::hint::black_box(true) {
                panic!("deliberate panic (async)");
            }
            reply::ok_with(atoms::ok())
        })
    })
}

#[rustler::nif]
fn runtime_tasks<'a>(env: Env<'a>) -> Term<'a> {
    guard::guard(env, || (atoms::ok(), macula_nat_core::runtime::alive_tasks()).encode(env))
}
