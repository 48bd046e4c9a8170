//! The Erlang-behaviour DHT backend: each put/get becomes a message to the
//! bridge process (the `macula_nat_cache' server), which runs the host
//! module's callback in a worker and answers through `cache_dht_reply/3`.
//! Requests that get no answer within the timeout fail with `Timeout` and
//! are forgotten, so a hung host DHT never leaks waiters.

use crate::atoms;
use macula_nat_core::dht::{BoxFuture, DhtBackend, DhtError};
use macula_nat_core::{Identity, NodeId};
use rustler::{Encoder, LocalPid, OwnedEnv};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

pub type Answer = Result<Option<Vec<u8>>, DhtError>;

pub struct ErlangDht {
    pid: LocalPid,
    timeout: Duration,
    /// TTL passed to the host's `put/3`: the record's own validity.
    record_ttl_s: u32,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    closed: AtomicBool,
}

impl ErlangDht {
    pub fn new(pid: LocalPid, timeout: Duration, record_ttl_s: u32) -> Arc<Self> {
        Arc::new(ErlangDht {
            pid,
            timeout,
            record_ttl_s,
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        })
    }

    /// Completes request `id`; false when it is unknown (late or forged).
    pub fn answer(&self, id: u64, answer: Answer) -> bool {
        match self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            Some(tx) => tx.send(answer).is_ok(),
            None => false,
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for (_, tx) in self.pending.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            let _ = tx.send(Err(DhtError::Closed));
        }
    }

    fn request<F>(self: &Arc<Self>, build: F) -> BoxFuture<Answer>
    where
        F: for<'a> FnOnce(rustler::Env<'a>, u64) -> rustler::Term<'a> + Send + 'static,
    {
        let me = self.clone();
        Box::pin(async move {
            if me.closed.load(Ordering::Acquire) {
                return Err(DhtError::Closed);
            }
            let id = me.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            me.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
            // Runs on a runtime thread, never a scheduler: sending from an
            // OwnedEnv is allowed here.
            let mut env = OwnedEnv::new();
            if env.send_and_clear(&me.pid, |env| build(env, id)).is_err() {
                me.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                return Err(DhtError::Closed);
            }
            match tokio::time::timeout(me.timeout, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(DhtError::Closed),
                Err(_) => {
                    me.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    Err(DhtError::Timeout)
                }
            }
        })
    }
}

/// The trait is implemented on the Arc so requests can outlive the call.
pub struct Bridge(pub Arc<ErlangDht>);

impl DhtBackend for Bridge {
    fn put(&self, signer: &Identity, _seq: u64, value: Vec<u8>) -> BoxFuture<Result<(), DhtError>> {
        let key = signer.node_id();
        let ttl = self.0.record_ttl_s;
        let fut = self.0.request(move |env, id| {
            (atoms::macula_nat_dht(), id, atoms::put(), crate::convert::binary(env, &key), crate::convert::binary(env, &value), ttl)
                .encode(env)
        });
        Box::pin(async move { fut.await.map(|_| ()) })
    }

    fn get(&self, node_id: NodeId) -> BoxFuture<Result<Option<Vec<u8>>, DhtError>> {
        self.0.request(move |env, id| {
            (atoms::macula_nat_dht(), id, atoms::get(), crate::convert::binary(env, &node_id)).encode(env)
        })
    }

    fn name(&self) -> &'static str {
        "erlang"
    }
}
