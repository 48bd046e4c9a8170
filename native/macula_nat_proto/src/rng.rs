//! The one small deterministic generator of the sans-IO crate (xorshift64):
//! transaction ids, probe order and test inputs come from a seed the caller
//! gives, so every run can be replayed. Not for secrets.

#[derive(Clone, Copy, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// A generator from any seed (zero would be a fixed point).
    pub fn seeded(seed: u64) -> XorShift {
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
