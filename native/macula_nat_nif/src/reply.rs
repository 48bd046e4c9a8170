//! Answers by message. A NIF that waits on the network spawns its work on
//! the runtime and returns `{ok, Pending}` at once; the work later sends
//! `{macula_nat_reply, Ref, Result}` to the caller.
//!
//! `Pending` lets the caller cancel without ever waiting on a lock held by a
//! runtime thread (a descheduled holder would stall the BEAM scheduler): its
//! state is one atomic, PENDING -> SENDING -> SENT or PENDING -> CANCELLED.
//! `cancel/1` answers `ok` when it won (no reply will ever arrive) or `sent`
//! when the reply is already on its way (the caller then simply waits for
//! it), so a caller never loses a reply and never gets a late one.

use crate::{atoms, guard};
use macula_nat_core::runtime;
use rustler::{Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::task::AbortHandle;

const PENDING: u8 = 0;
const SENDING: u8 = 1;
const CANCELLED: u8 = 2;

#[derive(Default)]
struct Shared {
    state: AtomicU8,
    abort: OnceLock<AbortHandle>,
}

impl Shared {
    /// True when the cancel won the race: nothing will be sent.
    fn cancel(&self) -> bool {
        let won = self
            .state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            if let Some(a) = self.abort.get() {
                a.abort();
            }
        }
        won
    }
}

pub struct Pending {
    shared: Arc<Shared>,
}

#[rustler::resource_impl]
impl rustler::Resource for Pending {}

impl Drop for Pending {
    // The caller dropped its handle (it returned or died): the work is no
    // longer wanted.
    fn drop(&mut self) {
        self.shared.cancel();
    }
}

pub type Encode = Box<dyn for<'a> FnOnce(Env<'a>) -> Term<'a> + Send>;

/// Spawns `work` and arranges the reply. `work` yields a closure that builds
/// the result term, since terms can only be made inside the reply's env.
pub fn spawn_reply<'a, F>(env: Env<'a>, reference: Term<'a>, work: F) -> Term<'a>
where
    F: Future<Output = Encode> + Send + 'static,
{
    let pid: LocalPid = env.pid();
    let owned = OwnedEnv::new();
    let saved_ref = owned.save(reference);
    let shared = Arc::new(Shared::default());
    let task_shared = shared.clone();
    let handle = runtime::spawn(async move {
        let result = CatchUnwind(Box::pin(work)).await;
        if task_shared
            .state
            .compare_exchange(PENDING, SENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let mut owned = owned;
        let _ = owned.send_and_clear(&pid, |env| {
            let value = match result {
                Ok(encode) => encode(env),
                Err(msg) => guard::internal_error(env, &msg),
            };
            (atoms::macula_nat_reply(), saved_ref.load(env), value).encode(env)
        });
    });
    let _ = shared.abort.set(handle.abort_handle());
    let pending = ResourceArc::new(Pending { shared });
    (atoms::ok(), pending).encode(env)
}

/// `ok`: cancelled, no reply will come. `sent`: the reply is (or is about
/// to be) in the caller's mailbox.
#[rustler::nif]
fn cancel<'a>(env: Env<'a>, pending: ResourceArc<Pending>) -> Term<'a> {
    guard::guard(env, || {
        if pending.shared.cancel() {
            atoms::ok().encode(env)
        } else {
            atoms::sent().encode(env)
        }
    })
}

/// A future that turns a panic while polling into `Err(message)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(guard::panic_message(&*p))),
        }
    }
}

/// `{ok, Value}` builder for the common case.
pub fn ok_with<T: Encoder + Send + 'static>(value: T) -> Encode {
    Box::new(move |env| (atoms::ok(), value).encode(env))
}

/// Boxes a term builder; going through a function with the higher-ranked
/// bound lets closures infer their lifetimes.
pub fn encode_with<F>(f: F) -> Encode
where
    F: for<'a> FnOnce(Env<'a>) -> Term<'a> + Send + 'static,
{
    Box::new(f)
}
