//! The process's budget of file descriptors for sockets beyond the node
//! sockets (see `macula_nat_proto::limits::fd_budget` for why): every
//! birthday socket, fresh socket and detection probe socket holds an
//! [`FdPermit`] for as long as it is open.
//!
//! One budget per process, because descriptors are the process's: two
//! nodes in one VM share it.

use crate::lock::lock;
use macula_nat_proto::limits::fd_budget::{default_limit, FdBudget};
use once_cell::sync::Lazy;
use std::sync::Mutex;

static BUDGET: Lazy<Mutex<FdBudget>> = Lazy::new(|| Mutex::new(FdBudget::new(default_limit(nofile_soft_limit()))));

/// The process's soft `RLIMIT_NOFILE` (1024, the usual default, if it
/// cannot be read).
pub fn nofile_soft_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `r`, which lives on the stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur as u64
    } else {
        1024
    }
}

/// The error a socket site answers when the budget has none to spare.
pub fn exhausted() -> std::io::Error {
    std::io::Error::other("fd_budget exhausted")
}

/// Descriptors taken from the budget; given back when dropped.
#[derive(Debug)]
pub struct FdPermit {
    n: usize,
}

impl FdPermit {
    /// One permit per descriptor, so each socket gives its own back.
    pub fn into_singles(mut self) -> Vec<FdPermit> {
        let n = std::mem::take(&mut self.n);
        (0..n).map(|_| FdPermit { n: 1 }).collect()
    }

    pub fn count(&self) -> usize {
        self.n
    }
}

impl Drop for FdPermit {
    fn drop(&mut self) {
        if self.n > 0 {
            lock(&BUDGET).give_back(self.n);
        }
    }
}

/// Up to `want` descriptors, none unless `min` are free (see
/// `FdBudget::take`).
pub fn take(want: usize, min: usize) -> Option<FdPermit> {
    let n = lock(&BUDGET).take(want, min);
    (n > 0).then_some(FdPermit { n })
}

/// One descriptor, or the budget's error.
pub fn take_one() -> std::io::Result<FdPermit> {
    take(1, 1).ok_or_else(exhausted)
}

/// Sets the budget (the `fd_budget` option); descriptors out stay out.
pub fn set_limit(limit: usize) {
    lock(&BUDGET).set_limit(limit);
}

/// The budget's limit, and the descriptors out now.
pub fn usage() -> (usize, usize) {
    let b = lock(&BUDGET);
    (b.limit(), b.used())
}
