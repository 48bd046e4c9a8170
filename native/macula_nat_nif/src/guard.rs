//! Panic containment for synchronous NIFs.

use crate::atoms;
use rustler::{Encoder, Env, Term};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// `{error, {internal, <<Message>>}}`
pub fn internal_error<'a>(env: Env<'a>, msg: &str) -> Term<'a> {
    (atoms::error(), (atoms::internal(), msg_binary(env, msg))).encode(env)
}

pub fn msg_binary<'a>(env: Env<'a>, msg: &str) -> Term<'a> {
    let mut bin = rustler::NewBinary::new(env, msg.len());
    bin.as_mut_slice().copy_from_slice(msg.as_bytes());
    Term::from(bin)
}

/// Runs a NIF body, turning a panic into `{error, {internal, Reason}}`.
pub fn guard<'a, F>(env: Env<'a>, body: F) -> Term<'a>
where
    F: FnOnce() -> Term<'a>,
{
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(t) => t,
        Err(payload) => internal_error(env, &panic_message(&*payload)),
    }
}
