//! The relay data frame.
//!
//! ```text
//! frame = 0x90 session(u64, big-endian) payload
//! ```
//!
//! Why 0x90: the node socket already carries STUN (first byte 0x00-0x3F,
//! RFC 8489's two zero bits) and QUIC, whose packets all have the fixed bit
//! 0x40 set (QUIC-bit greasing, RFC 9287, is off on our endpoints), so
//! 0x80-0xBF never starts a STUN message or one of our QUIC packets. A
//! frame is recognised by its first byte alone, on the receive path of
//! every datagram.

/// First byte of every relay frame.
pub const TAG: u8 = 0x90;
/// Bytes before the payload.
pub const HEADER: usize = 9;

/// Whether `data` is a relay frame (tag and a whole header).
pub fn is_frame(data: &[u8]) -> bool {
    data.len() >= HEADER && data[0] == TAG
}

/// The session a frame belongs to.
pub fn session_of(data: &[u8]) -> Option<u64> {
    if !is_frame(data) {
        return None;
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&data[1..HEADER]);
    Some(u64::from_be_bytes(s))
}

/// The payload of a frame.
pub fn payload(data: &[u8]) -> Option<&[u8]> {
    is_frame(data).then(|| &data[HEADER..])
}

/// Writes the header for `session` into `out` (cleared first) and appends
/// `payload`.
pub fn encode_into(out: &mut Vec<u8>, session: u64, payload: &[u8]) {
    out.clear();
    out.reserve(HEADER + payload.len());
    out.push(TAG);
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn encode(session: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_into(&mut v, session, payload);
    v
}
