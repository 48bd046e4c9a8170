//! Resources owned by the process that created them: the owner is
//! monitored from Rust and the resource is closed the moment it dies, so a
//! supervisor restart always starts from a clean slate.

use crate::atoms;
use rustler::{Encoder, Env, Resource, ResourceArc, Term};

/// A resource with an idempotent close, called when its owner dies (from
/// `Resource::down`) or when it cannot be monitored at all.
pub trait Owned: Resource {
    fn close(&self);
}

/// Wraps `value` in a resource owned by the calling process:
/// `{ok, Resource}`, or `{error, closed}` when the caller is already exiting.
pub fn owned_by_caller<'a, T: Owned>(env: Env<'a>, value: T) -> Term<'a> {
    let res = ResourceArc::new(value);
    if env.monitor(&res, &env.pid()).is_none() {
        res.close();
        return (atoms::error(), atoms::closed()).encode(env);
    }
    (atoms::ok(), res).encode(env)
}
