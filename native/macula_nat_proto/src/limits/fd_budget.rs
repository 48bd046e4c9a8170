//! The budget of file descriptors a node may spend on sockets besides its
//! node socket: birthday probing (a hard side opens hundreds), the fresh
//! socket of a port-preserving side and detection's probe sockets.
//!
//! Why a budget: descriptors are the process's, shared with the rest of the
//! VM (`gen_tcp`, files, distribution, the logger). Without one, a peer
//! that asks for enough birthday sessions at once drives the process to
//! EMFILE, and everything else in the VM fails with it.

/// How many descriptors are out, and how many may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    limit: usize,
    used: usize,
}

/// The default budget for a process whose soft `RLIMIT_NOFILE` is `nofile`:
/// a quarter of it, at most 4096. A quarter leaves three quarters to the
/// rest of the VM whatever the limit; 4096 is eight full birthday sessions
/// (~511 sockets each), more than a node runs at once.
pub fn default_limit(nofile: u64) -> usize {
    (nofile / 4).min(4096) as usize
}

impl FdBudget {
    pub fn new(limit: usize) -> FdBudget {
        FdBudget { limit, used: 0 }
    }

    /// Takes up to `want` descriptors, but none unless at least `min` are
    /// free (fewer than `min` sockets would be useless to the caller):
    /// the number granted, 0 or in `min.max(1)..=want`. Every grant is
    /// given back with [`FdBudget::give_back`].
    pub fn take(&mut self, want: usize, min: usize) -> usize {
        let free = self.limit.saturating_sub(self.used);
        let n = want.min(free);
        if n == 0 || n < min {
            return 0;
        }
        self.used += n;
        n
    }

    pub fn give_back(&mut self, n: usize) {
        self.used = self.used.saturating_sub(n);
    }

    /// A new limit; descriptors out stay out (a lower limit only stops new
    /// grants until enough come back).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub fn used(&self) -> usize {
        self.used
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}
