//! The one small deterministic generator of the sans-IO crate (xorshift64)
//! and where STUN transaction ids come from ([`Txids`]).
//!
//! xorshift is for what must replay from a seed (probe order, birthday
//! ports, test inputs) and never for secrets: one output is its whole state.
//! Transaction ids are a secret of sorts: an on-path observer who can
//! predict the next one can forge the answer to a detection test before the
//! real one arrives and flip a verdict. So the state machines take their ids
//! from a [`Txids`] the runtime gives them, which in production reads the OS
//! CSPRNG; this crate stays free of IO because that read is a plain function
//! pointer handed in from the edge (`macula_nat_core::txid::CSPRNG`).

use crate::stun::TransactionId;

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

/// Source of STUN transaction ids for [`crate::detect::Detection`] and
/// [`crate::punch::Punch`].
#[derive(Clone, Copy, Debug)]
pub enum Txids {
    /// Unpredictable ids: each call of the function reads a fresh 96-bit id
    /// from a CSPRNG (the runtime passes one reading the OS's).
    Csprng(fn() -> TransactionId),
    /// Replayable ids from a seed, for simulations and tests. Anyone who saw
    /// one id predicts the rest: never for a real network.
    Seeded(XorShift),
}

impl Txids {
    /// Replayable ids from `seed` (tests and simulations only).
    pub fn seeded(seed: u64) -> Txids {
        Txids::Seeded(XorShift::seeded(seed))
    }

    pub fn next(&mut self) -> TransactionId {
        match self {
            Txids::Csprng(f) => f(),
            Txids::Seeded(rng) => {
                let mut tid = [0u8; 12];
                tid[..8].copy_from_slice(&rng.next().to_le_bytes());
                tid[8..].copy_from_slice(&rng.next().to_le_bytes()[..4]);
                tid
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_replay_and_csprng_ids_come_from_the_function() {
        let (mut a, mut b) = (Txids::seeded(7), Txids::seeded(7));
        let first = a.next();
        assert_eq!(first, b.next());
        assert_ne!(first, a.next());
        fn fixed() -> TransactionId {
            [9; 12]
        }
        let mut c = Txids::Csprng(fixed);
        assert_eq!(c.next(), [9; 12]);
    }
}
