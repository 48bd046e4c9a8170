//! The one way this crate takes a lock.
//!
//! A lock is poisoned when a thread panicked while holding it. Nothing here
//! keeps an invariant across a panic that a later holder could trip on (the
//! maps and queues behind these locks are valid after every single
//! operation), so a poisoned lock is taken like any other instead of each
//! caller choosing its own poison branch.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, also when a panicking holder poisoned it.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, also when poisoned.
pub(crate) fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `l`, also when poisoned.
pub(crate) fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
