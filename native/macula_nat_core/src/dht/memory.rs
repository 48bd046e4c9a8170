//! The embedded default: one in-memory table for the whole OS process.
//!
//! "Single node" means no network: every node in this VM (and every test
//! in this process) publishes into and reads from the same table, which is
//! what a one-machine deployment or a test needs.

use crate::lock::lock;
use super::{BoxFuture, DhtBackend, DhtError, MAX_VALUE};
use crate::identity::{Identity, NodeId};
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::Mutex;

static TABLE: Lazy<Mutex<HashMap<NodeId, (u64, Vec<u8>)>>> = Lazy::new(Default::default);

#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryDht;

impl DhtBackend for MemoryDht {
    fn put(&self, signer: &Identity, seq: u64, value: Vec<u8>) -> BoxFuture<Result<(), DhtError>> {
        let key = signer.node_id();
        Box::pin(async move {
            if value.len() > MAX_VALUE {
                return Err(DhtError::TooLarge(value.len()));
            }
            let mut table = lock(&TABLE);
            match table.get(&key) {
                // Same rule as BEP 44: an older sequence number never
                // replaces a newer one.
                Some((old, _)) if *old > seq => {}
                _ => {
                    table.insert(key, (seq, value));
                }
            }
            Ok(())
        })
    }

    fn get(&self, node_id: NodeId) -> BoxFuture<Result<Option<Vec<u8>>, DhtError>> {
        Box::pin(async move {
            let table = lock(&TABLE);
            Ok(table.get(&node_id).map(|(_, v)| v.clone()))
        })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

impl MemoryDht {
    /// Test hook: plants `value` under `node_id` as if some node had
    /// published it (used to check that forged records are rejected).
    pub fn plant(node_id: NodeId, seq: u64, value: Vec<u8>) {
        lock(&TABLE).insert(node_id, (seq, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_seq_wins_older_never_replaces() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let id = Identity::generate();
        let dht = MemoryDht;
        rt.block_on(async {
            dht.put(&id, 5, b"five".to_vec()).await.unwrap();
            dht.put(&id, 3, b"three".to_vec()).await.unwrap();
            assert_eq!(dht.get(id.node_id()).await.unwrap(), Some(b"five".to_vec()));
            dht.put(&id, 6, b"six".to_vec()).await.unwrap();
            assert_eq!(dht.get(id.node_id()).await.unwrap(), Some(b"six".to_vec()));
            assert_eq!(dht.get(NodeId::from_bytes([9; 32])).await.unwrap(), None);
            assert_eq!(dht.put(&id, 7, vec![0; MAX_VALUE + 1]).await, Err(DhtError::TooLarge(MAX_VALUE + 1)));
        });
    }
}
