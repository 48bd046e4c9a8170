//! STUN transaction ids from the OS CSPRNG (`getrandom`), the one read of
//! randomness the sans-IO state machines need (see
//! `macula_nat_proto::rng`): an on-path observer who could predict an id
//! could answer a detection test before the observer does and flip a verdict.

use macula_nat_proto::rng::Txids;
use macula_nat_proto::stun::TransactionId;

/// What the runtime hands to `Detection` and `Punch`.
pub const CSPRNG: Txids = Txids::Csprng(csprng);

/// A fresh 96-bit transaction id from the OS CSPRNG. `getrandom` fails only
/// where the OS has no random source at all; `rand`'s thread generator
/// (ChaCha seeded from the same source) is then as good as anything.
pub fn csprng() -> TransactionId {
    let mut tid = [0u8; 12];
    if getrandom::getrandom(&mut tid).is_err() {
        tid = rand::random();
    }
    tid
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| super::csprng()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
