//! The identifiers every layer shares, declared once.
//!
//! * [`NodeId`]: a node's ed25519 public key, the name peers dial, sign
//!   records with and authenticate QUIC by.
//! * [`SessionId`]: a connect session, 16 random bytes chosen by the
//!   initiator; it names the signalling session, the punch (its
//!   PUNCH-TOKEN) and the session's first QUIC message.
//! * [`RelaySessionId`]: a relay session, the number a relay gives the
//!   session it joins and every data frame carries (not a connect session).
//!
//! `NodeId` and `SessionId` are newtypes rather than byte arrays so that a
//! node key cannot be passed where a session is expected (both were plain
//! arrays once, and a 32-byte key fits many `&[u8]` parameters). Bytes go in
//! and out only at the edges: wire codecs, the NIF's binaries, record
//! signing, hex on the command line.

use std::fmt;

/// A node's ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId([u8; 32]);

/// A connect session (signalling, punch, the session's connection).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionId([u8; 16]);

/// A relay session, as the relay numbers it in its frames.
pub type RelaySessionId = u64;

/// Hex digits shown by `Display`/`Debug`: 8 bytes tell nodes (and sessions)
/// apart in a log line without flooding it; `to_hex` gives all of them.
const SHORT: usize = 8;

macro_rules! id_bytes {
    ($name:ident, $len:expr) => {
        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            /// `None` unless `bytes` is exactly [`Self::LEN`] long.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map($name)
            }

            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub const fn to_bytes(self) -> [u8; $len] {
                self.0
            }

            /// Lowercase hex, every byte.
            pub fn to_hex(&self) -> String {
                hex_lower(&self.0)
            }

            /// Hex of exactly [`Self::LEN`] bytes, either case; ASCII
            /// whitespace around it is ignored (a pasted id may carry it),
            /// as `macula_nat_id:from_hex/1` does.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; $len];
                unhex_into(s.trim_matches(|c: char| c.is_ascii_whitespace()), &mut out)?;
                Some($name(out))
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }
        }

        impl From<$name> for [u8; $len] {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex_lower(&self.0[..SHORT]))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

id_bytes!(NodeId, 32);
id_bytes!(SessionId, 16);

impl SessionId {
    /// A fresh session id from the thread's CSPRNG (`rand::random`, as the
    /// initiator has always drawn them): a peer must not guess the next one.
    pub fn random() -> Self {
        SessionId(rand::random())
    }
}

/// Lowercase hex of any bytes (ids, transaction ids in log lines).
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn unhex_into(s: &str, out: &mut [u8]) -> Option<()> {
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_in_either_case_and_with_whitespace() {
        let id = NodeId::from_bytes(std::array::from_fn(|i| (i * 7) as u8));
        let hex = id.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(NodeId::from_hex(&hex), Some(id));
        assert_eq!(NodeId::from_hex(&hex.to_uppercase()), Some(id));
        assert_eq!(NodeId::from_hex(&format!(" {hex}\n")), Some(id));
        let s = SessionId::from_bytes([0xab; 16]);
        assert_eq!(SessionId::from_hex(&s.to_hex()), Some(s));
    }

    #[test]
    fn bad_hex_is_refused() {
        assert_eq!(NodeId::from_hex(""), None);
        assert_eq!(NodeId::from_hex(&"0".repeat(63)), None);
        assert_eq!(NodeId::from_hex(&"0".repeat(65)), None);
        assert_eq!(NodeId::from_hex(&"g".repeat(64)), None);
        // A multi-byte character must not split a digit pair into a panic.
        assert_eq!(NodeId::from_hex(&format!("{}é", "0".repeat(62))), None);
        // A session's hex is not a node's.
        assert_eq!(NodeId::from_hex(&SessionId::default().to_hex()), None);
    }

    #[test]
    fn slices_of_the_wrong_length_are_refused() {
        assert_eq!(NodeId::from_slice(&[1; 31]), None);
        assert_eq!(NodeId::from_slice(&[1; 32]), Some(NodeId::from_bytes([1; 32])));
        assert_eq!(SessionId::from_slice(&[1; 32]), None);
    }

    #[test]
    fn display_is_the_short_hex_and_debug_names_the_type() {
        let id = NodeId::from_bytes([0x5a; 32]);
        assert_eq!(id.to_string(), "5a".repeat(8));
        assert_eq!(format!("{id:?}"), format!("NodeId({})", "5a".repeat(8)));
        assert_eq!(format!("{:?}", SessionId::from_bytes([1; 16])), format!("SessionId({})", "01".repeat(8)));
    }

    #[test]
    fn random_sessions_differ() {
        assert_ne!(SessionId::random(), SessionId::random());
    }
}
