//! A backend that is still starting. Starting a network DHT binds a socket
//! and resolves bootstrap names, which must not happen on the caller's
//! thread (a BEAM scheduler): the start runs on the runtime and operations
//! issued meanwhile wait for it. `close` drops the inner backend at once,
//! so a closed cache releases its DHT socket without waiting for GC.

use crate::lock::lock;
use super::{BoxFuture, DhtBackend, DhtError};
use crate::identity::{Identity, NodeId};
use crate::runtime;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

enum State {
    Starting,
    Ready(Arc<dyn DhtBackend>),
    Failed(DhtError),
    Closed,
}

pub struct Deferred {
    name: &'static str,
    state: Arc<(Mutex<State>, Notify)>,
}

impl Deferred {
    pub fn spawn<F, B>(name: &'static str, start: F) -> Deferred
    where
        F: Future<Output = Result<B, DhtError>> + Send + 'static,
        B: DhtBackend,
    {
        let state = Arc::new((Mutex::new(State::Starting), Notify::new()));
        let st = state.clone();
        runtime::spawn(async move {
            let result = start.await;
            let mut s = lock(&st.0);
            if matches!(*s, State::Starting) {
                *s = match result {
                    Ok(b) => State::Ready(Arc::new(b)),
                    Err(e) => {
                        tracing::warn!(%e, "dht backend failed to start");
                        State::Failed(e)
                    }
                };
            }
            drop(s);
            st.1.notify_waiters();
        });
        Deferred { name, state }
    }

    fn ready(&self) -> BoxFuture<Result<Arc<dyn DhtBackend>, DhtError>> {
        let st = self.state.clone();
        Box::pin(async move {
            loop {
                // Register for the wake-up before looking, so a start that
                // finishes in between is not missed.
                let notified = st.1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match &*lock(&st.0) {
                    State::Ready(b) => return Ok(b.clone()),
                    State::Failed(e) => return Err(e.clone()),
                    State::Closed => return Err(DhtError::Closed),
                    State::Starting => {}
                }
                notified.await;
            }
        })
    }
}

impl DhtBackend for Deferred {
    fn put(&self, signer: &Identity, seq: u64, value: Vec<u8>) -> BoxFuture<Result<(), DhtError>> {
        let ready = self.ready();
        let signer = signer.clone();
        Box::pin(async move { ready.await?.put(&signer, seq, value).await })
    }

    fn get(&self, node_id: NodeId) -> BoxFuture<Result<Option<Vec<u8>>, DhtError>> {
        let ready = self.ready();
        Box::pin(async move { ready.await?.get(node_id).await })
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn close(&self) {
        *lock(&self.state.0) = State::Closed;
        self.state.1.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::memory::MemoryDht;
    use std::time::Duration;

    #[test]
    fn operations_wait_for_the_start_then_pass_through() {
        let d = Deferred::spawn("memory", async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(MemoryDht)
        });
        let id = Identity::generate();
        let h = runtime::handle();
        h.block_on(d.put(&id, 1, b"v".to_vec())).unwrap();
        assert_eq!(h.block_on(d.get(id.node_id())).unwrap(), Some(b"v".to_vec()));
        d.close();
        assert_eq!(h.block_on(d.get(id.node_id())), Err(DhtError::Closed));
    }

    #[test]
    fn a_failed_start_fails_every_operation() {
        let d = Deferred::spawn("x", async { Err::<MemoryDht, _>(DhtError::Backend("no".into())) });
        assert_eq!(runtime::handle().block_on(d.get(NodeId::from_bytes([0; 32]))), Err(DhtError::Backend("no".into())));
    }
}
