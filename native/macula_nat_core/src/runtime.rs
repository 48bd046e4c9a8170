//! The one tokio runtime of the library.
//!
//! It is created on first use and lives as long as the OS process (the
//! BEAM). NIF calls never block on it: they spawn work here and return, and
//! the work answers the caller by message.

use once_cell::sync::Lazy;
use std::future::Future;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

static RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    // Two workers: the BEAM already owns one scheduler per core, and our work
    // is IO-bound (sockets, timers), so more threads would only compete.
    // They keep normal priority on purpose: a lowered priority was measured
    // to make things worse, because a descheduled worker can hold a lock a
    // scheduler needs (e.g. the receiving process's message queue).
    Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("macula-nat")
        .enable_all()
        .build()
        .expect("tokio runtime must start")
});

pub fn handle() -> &'static Handle {
    RUNTIME.handle()
}

pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    RUNTIME.spawn(fut)
}

/// Number of tasks alive on the runtime; exposed for leak tests.
pub fn alive_tasks() -> usize {
    RUNTIME.metrics().num_alive_tasks()
}
