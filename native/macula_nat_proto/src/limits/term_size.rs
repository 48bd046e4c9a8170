//! What an Erlang external term will cost to decode, read from its first
//! bytes.
//!
//! A compressed term (`131, 80, Size:32, Zlib/binary`) is inflated by the
//! VM into a buffer of the size it declares, before anything else is
//! checked: ~4 MiB of zlib can declare (and produce) 4 GiB. So the declared
//! size is compared with the bound first. An uncompressed term is at most
//! as large as the message that carried it, which the framing bounds.

/// The external term format's version byte.
const VERSION: u8 = 131;
/// `COMPRESSED`: a 4-byte uncompressed size and zlib data follow.
const COMPRESSED: u8 = 80;

/// Whether a term may be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermCheck {
    /// Decode it.
    Fits,
    /// A compressed term declaring `declared` bytes once inflated, more
    /// than the bound: refuse it without inflating.
    TooLarge { declared: u64 },
}

/// The size a compressed term declares it inflates to; `None` for anything
/// that is not a compressed term (or too short to say).
pub fn compressed_size(bytes: &[u8]) -> Option<u64> {
    match bytes {
        [VERSION, COMPRESSED, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d]) as u64),
        _ => None,
    }
}

/// May `bytes` be decoded when a decoded term may take at most `max`
/// bytes of external format?
pub fn check(bytes: &[u8], max: u64) -> TermCheck {
    match compressed_size(bytes) {
        Some(declared) if declared > max => TermCheck::TooLarge { declared },
        _ => TermCheck::Fits,
    }
}
