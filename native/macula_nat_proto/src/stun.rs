//! STUN message codec (RFC 8489) with the RFC 5780 behaviour-discovery
//! attributes.
//!
//! # Why our own codec instead of a crate
//!
//! The issue asks for a well-kept crate if one fits. The candidates
//! (`stun-rs`, `stun_codec`/`bytecodec`, `webrtc-stun`) either pull in a
//! large dependency tree (async runtimes, `bytecodec`, crypto for
//! MESSAGE-INTEGRITY we do not use), or do not cover the RFC 5780 attributes
//! (CHANGE-REQUEST, RESPONSE-PORT, PADDING, OTHER-ADDRESS, RESPONSE-ORIGIN)
//! as first-class values. What we need is small and security relevant:
//!
//! * exactly the Binding method and the attributes NAT behaviour discovery
//!   uses, nothing else to audit;
//! * a decoder that never panics on hostile input and reports *why* a
//!   datagram was dropped ([`StunError`] has one variant per reason so the
//!   runtime can count drops by reason);
//! * std only, so the fuzz target and the in-crate randomized test cover the
//!   whole parser;
//! * a cheap [`is_stun`] demultiplexer: one UDP socket carries STUN, hole
//!   punching packets and QUIC.
//!
//! That is a few hundred lines, so we keep it here.
//!
//! It also knows the handful of TURN attributes (RFC 8656) a TURN client
//! needs to allocate and bind a channel (CHANNEL-NUMBER, LIFETIME,
//! XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS, REQUESTED-TRANSPORT) and the
//! Allocate, Refresh and ChannelBind methods: the relay benchmark measures
//! our relay side by side with coturn through them. No TURN server logic
//! lives here; ChannelData framing is not STUN and stays with its user.
//!
//! # RFC 3489 ("classic") messages
//!
//! RFC 3489 had no magic cookie: its transaction id is 128 bits, the first
//! 32 of which sit where RFC 8489 puts the cookie. [`Message::decode`]
//! accepts only RFC 8489 messages (what the detector, the punch code and the
//! demultiplexer want); [`Message::decode_any`] also accepts a classic one
//! and keeps those first 4 bytes in [`Message::classic`], so that a server
//! can answer it in kind (RFC 8489 §12: same transaction id, MAPPED-ADDRESS
//! instead of XOR-MAPPED-ADDRESS). [`is_classic_binding_request`] is the
//! demultiplexer's check for such a request.
//!
//! MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 are *parsed* (so the RFC 5769
//! vectors decode) but not verified: NAT discovery runs without credentials.
//! Attributes that follow MESSAGE-INTEGRITY (other than FINGERPRINT) are
//! ignored as RFC 8489 §14.5 requires.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use crate::id::{NodeId, SessionId};

/// The fixed magic cookie of every RFC 5389+ STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header in bytes.
pub const HEADER_LEN: usize = 20;
/// XOR constant applied to the CRC-32 in FINGERPRINT ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// The Binding method, the only one NAT discovery needs.
pub const METHOD_BINDING: u16 = 0x001;
/// TURN (RFC 8656 §18) methods.
pub const METHOD_ALLOCATE: u16 = 0x003;
pub const METHOD_REFRESH: u16 = 0x004;
pub const METHOD_CHANNEL_BIND: u16 = 0x009;

/// 96-bit transaction id.
pub type TransactionId = [u8; 12];

/// Most attributes a message may carry (FINGERPRINT and attributes after
/// MESSAGE-INTEGRITY included); more is [`StunError::TooManyAttributes`].
/// Real messages carry far fewer: a Binding answer of ours at most 8, a
/// coturn one 7, an ICE connectivity check about 10, a TURN Allocate
/// answer about 9. Without a cap a 64 KiB datagram holds 16,371 empty
/// attributes; with it, no datagram costs the decoder more than 64
/// attribute steps (the worst case went from 4.1 ms to a few µs).
pub const MAX_ATTRIBUTES: usize = 64;

/// Attribute type codes we understand.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// RFC 3489 only; decoded so that legacy responses are not rejected.
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// RFC 3489 only; the ancestor of OTHER-ADDRESS.
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// TURN (RFC 8656 §18).
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;
    /// macula_nat hole-punch token (see [`super::PunchToken`]). Taken from
    /// the comprehension-optional private range (0xC000-0xFFFF) so that any
    /// other STUN agent ignores it instead of answering 420.
    pub const PUNCH_TOKEN: u16 = 0xC4A1;

    /// Attributes below 0x8000 must be understood by the receiver
    /// (RFC 8489 §14).
    pub fn is_comprehension_required(t: u16) -> bool {
        t < 0x8000
    }
}

/// STUN message class (the two class bits of the message type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    SuccessResponse,
    ErrorResponse,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::SuccessResponse => 0b10,
            Class::ErrorResponse => 0b11,
        }
    }
    fn from_bits(b: u16) -> Class {
        match b & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

/// One decoded attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribute {
    MappedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    /// RFC 5780 §7.2: ask the server to answer from another IP and/or port.
    ChangeRequest { change_ip: bool, change_port: bool },
    /// RFC 5780 §7.4: the server's alternate address (other IP, other port).
    OtherAddress(SocketAddr),
    /// RFC 5780 §7.3: where the response was sent from.
    ResponseOrigin(SocketAddr),
    /// RFC 5780 §7.5: send the response to this port of the source IP.
    ResponsePort(u16),
    /// RFC 5780 §7.6: `len` bytes of padding (content ignored, encoded as 0).
    Padding(u16),
    Software(String),
    /// `code` is class*100 + number, 300..=699.
    ErrorCode { code: u16, reason: String },
    UnknownAttributes(Vec<u16>),
    /// RFC 3489 CHANGED-ADDRESS (legacy OTHER-ADDRESS).
    ChangedAddress(SocketAddr),
    /// RFC 3489 SOURCE-ADDRESS (legacy RESPONSE-ORIGIN).
    SourceAddress(SocketAddr),
    /// Parsed, not verified (see module docs).
    Username(Vec<u8>),
    /// Parsed, not verified (see module docs). Raw HMAC bytes.
    MessageIntegrity(Vec<u8>),
    /// Parsed, not verified (see module docs). Raw HMAC bytes.
    MessageIntegritySha256(Vec<u8>),
    /// macula_nat hole-punch token ([`attr::PUNCH_TOKEN`]).
    PunchToken(PunchToken),
    /// TURN: a channel number, 0x4000..=0x4FFF when valid (the codec
    /// carries any value; the server judges).
    ChannelNumber(u16),
    /// TURN: an allocation's lifetime in seconds (0 releases it).
    Lifetime(u32),
    /// TURN: a peer of the allocation.
    XorPeerAddress(SocketAddr),
    /// TURN: the address the server relays from.
    XorRelayedAddress(SocketAddr),
    /// TURN: the transport to allocate, an IP protocol number (17: UDP).
    RequestedTransport(u8),
}

impl Attribute {
    /// Bytes this attribute takes in a message (header, value, padding).
    pub fn encoded_len(&self) -> usize {
        let mut v = Vec::new();
        encode_attribute(&mut v, self, &[0; 12]);
        v.len()
    }
}

/// What a client's Binding request should weigh so that a responder that
/// answers no more bytes than it received (ours: `reply_budget`) can give
/// the full answer: ours is at most 124 bytes without SOFTWARE (IPv6: four
/// addresses and FINGERPRINT), 96 with it over IPv4.
pub const ANSWER_ROOM: usize = 128;

/// Value of the PUNCH-TOKEN attribute carried by hole-punch Binding
/// requests and their responses: which punch session the packet belongs to
/// and which node sent it.
///
/// Wire format (52 bytes): session (16) | sender NodeId (32) | flags (1) |
/// reserved (3, sent as zero, ignored on receipt).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PunchToken {
    /// Shared secret of the punch session, handed to both peers by the
    /// rendezvous; it is what keeps off-path senders out.
    pub session: SessionId,
    /// NodeId of the node that sent this packet.
    pub sender: NodeId,
    /// [`PunchToken::NOMINATE`] and reserved bits.
    pub flags: u8,
}

impl PunchToken {
    /// Encoded value length.
    pub const LEN: usize = 52;
    /// The sender (the initiator) has chosen the path this packet travels on.
    pub const NOMINATE: u8 = 0x01;

    pub fn nominate(&self) -> bool {
        self.flags & PunchToken::NOMINATE != 0
    }

    fn encode(&self) -> [u8; PunchToken::LEN] {
        let mut v = [0u8; PunchToken::LEN];
        v[..16].copy_from_slice(self.session.as_bytes());
        v[16..48].copy_from_slice(self.sender.as_bytes());
        v[48] = self.flags;
        v
    }

    fn decode(v: &[u8]) -> Option<PunchToken> {
        if v.len() != PunchToken::LEN {
            return None;
        }
        let t = PunchToken { session: SessionId::from_slice(&v[..16])?, sender: NodeId::from_slice(&v[16..48])?, flags: v[48] };
        Some(t)
    }
}

/// A STUN message.
///
/// `fingerprint` is true when a (verified) FINGERPRINT was present on decode,
/// and requests one on encode. `unknown_required` lists comprehension-required
/// attribute types the decoder did not understand, so a server can answer 420
/// with UNKNOWN-ATTRIBUTES; it is ignored by the encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub class: Class,
    pub method: u16,
    pub transaction_id: TransactionId,
    pub attributes: Vec<Attribute>,
    pub fingerprint: bool,
    pub unknown_required: Vec<u16>,
    /// `Some(head)` for an RFC 3489 message: `head` are the first 4 bytes
    /// of its 128-bit transaction id (where RFC 8489 has the magic cookie),
    /// `transaction_id` the other 12. The encoder writes `head` instead of
    /// the cookie. `None` for RFC 8489 messages.
    pub classic: Option<[u8; 4]>,
}

/// Why a datagram was not accepted as a STUN message. One variant per reason
/// so the runtime can count drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StunError {
    /// Shorter than the 20-byte header.
    TooShort,
    /// The two most significant bits are not zero (QUIC, punch packets...).
    NotStun,
    /// Magic cookie is not 0x2112A442.
    BadMagicCookie,
    /// The header length is not a multiple of 4.
    UnalignedLength,
    /// The header length does not match the datagram size.
    LengthMismatch,
    /// An attribute header or value runs past the end of the message.
    TruncatedAttribute,
    /// A known attribute has a length its type does not allow.
    BadAttributeLength(u16),
    /// Address attribute with a family other than IPv4 (1) / IPv6 (2).
    BadAddressFamily,
    /// ERROR-CODE class outside 3..=6 or number >= 100.
    BadErrorCode,
    /// An attribute follows FINGERPRINT, which must be last.
    AttributeAfterFingerprint,
    /// FINGERPRINT present but its CRC does not match.
    BadFingerprint,
    /// More than [`MAX_ATTRIBUTES`] attributes.
    TooManyAttributes,
}

impl StunError {
    /// Stable short name, suitable as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            StunError::TooShort => "too_short",
            StunError::NotStun => "not_stun",
            StunError::BadMagicCookie => "bad_magic_cookie",
            StunError::UnalignedLength => "unaligned_length",
            StunError::LengthMismatch => "length_mismatch",
            StunError::TruncatedAttribute => "truncated_attribute",
            StunError::BadAttributeLength(_) => "bad_attribute_length",
            StunError::BadAddressFamily => "bad_address_family",
            StunError::BadErrorCode => "bad_error_code",
            StunError::AttributeAfterFingerprint => "attribute_after_fingerprint",
            StunError::BadFingerprint => "bad_fingerprint",
            StunError::TooManyAttributes => "too_many_attributes",
        }
    }
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StunError::BadAttributeLength(t) => write!(f, "bad attribute length (type {t:#06x})"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for StunError {}

/// Cheap demultiplexing check for a datagram arriving on a socket shared
/// with QUIC and punch packets: top two bits zero (QUIC always sets the
/// top bit or the fixed bit 0x40), magic cookie, and a 4-aligned length that
/// matches the datagram. Does not look at attributes.
pub fn is_stun(data: &[u8]) -> bool {
    if data.len() < HEADER_LEN || data[0] & 0xC0 != 0 {
        return false;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let cookie = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    cookie == MAGIC_COOKIE && len & 3 == 0 && HEADER_LEN + len == data.len()
}

/// Whether a datagram is an RFC 3489 Binding request (no magic cookie): the
/// Binding request type, a 4-aligned length that matches the datagram, and
/// anything but the cookie where RFC 8489 has it. For a socket shared with
/// QUIC this is as strict as [`is_stun`] (QUIC sets 0x80 or 0x40 in the
/// first byte, this needs 0x00 0x01 in the first two). Does not look at
/// attributes.
pub fn is_classic_binding_request(data: &[u8]) -> bool {
    if data.len() < HEADER_LEN || data[0] != 0 || data[1] != 0x01 {
        return false;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let cookie = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    cookie != MAGIC_COOKIE && len & 3 == 0 && HEADER_LEN + len == data.len()
}

/// CRC-32 (IEEE 802.3, reflected, as used by FINGERPRINT).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn encode_type(class: Class, method: u16) -> u16 {
    let m = method & 0x0FFF;
    let c = class.bits();
    ((m & 0x0F80) << 2) | ((m & 0x0070) << 1) | (m & 0x000F) | ((c & 0b10) << 7) | ((c & 0b01) << 4)
}

fn decode_type(t: u16) -> (Class, u16) {
    let class = Class::from_bits(((t >> 7) & 0b10) | ((t >> 4) & 0b01));
    let method = ((t >> 2) & 0x0F80) | ((t >> 1) & 0x0070) | (t & 0x000F);
    (class, method)
}

impl Message {
    /// A message with no attributes.
    pub fn new(class: Class, method: u16, transaction_id: TransactionId) -> Message {
        Message {
            class,
            method,
            transaction_id,
            attributes: Vec::new(),
            fingerprint: false,
            unknown_required: Vec::new(),
            classic: None,
        }
    }

    /// The full 128-bit transaction id of an RFC 3489 message.
    pub fn classic_transaction_id(&self) -> Option<[u8; 16]> {
        let head = self.classic?;
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&head);
        id[4..].copy_from_slice(&self.transaction_id);
        Some(id)
    }

    /// An RFC 3489 message with the 128-bit transaction id `id` (its first
    /// 4 bytes must not be the magic cookie, else it is an RFC 8489 one).
    pub fn classic(class: Class, method: u16, id: [u8; 16]) -> Message {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&id[4..]);
        let head = [id[0], id[1], id[2], id[3]];
        let mut m = Message::new(class, method, tid);
        if u32::from_be_bytes(head) != MAGIC_COOKIE {
            m.classic = Some(head);
        }
        m
    }

    /// A Binding request.
    pub fn binding_request(transaction_id: TransactionId) -> Message {
        Message::new(Class::Request, METHOD_BINDING, transaction_id)
    }

    /// Builder-style attribute append.
    pub fn with(mut self, a: Attribute) -> Message {
        self.attributes.push(a);
        self
    }

    /// Builder-style: make the encoded request at least [`ANSWER_ROOM`]
    /// bytes, so that responders that answer no more than they received
    /// give the full answer. The filler is a SOFTWARE attribute naming us
    /// and padded with spaces to a multiple of 4 (RFC 3489 parsers want
    /// that), not PADDING: SOFTWARE is comprehension-optional in RFC 3489
    /// and RFC 8489, so every server skips what it does not parse, whereas
    /// PADDING is comprehension-required (an RFC 3489 server such as stund
    /// drops the request).
    pub fn sized_for_answer(mut self) -> Message {
        let len = self.encode().len();
        if len + 4 + 12 <= ANSWER_ROOM {
            let mut sw = String::from("macula_nat");
            sw.extend(std::iter::repeat(' ').take((ANSWER_ROOM - len - 4) & !3).skip(sw.len()));
            self.attributes.push(Attribute::Software(sw));
        }
        self
    }

    /// Builder-style: request a FINGERPRINT on encode.
    pub fn with_fingerprint(mut self) -> Message {
        self.fingerprint = true;
        self
    }

    /// First XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 8489 §14.2 prefers
    /// the XOR form because some NATs rewrite addresses they find in payloads).
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::XorMappedAddress(s) => Some(*s),
            _ => None,
        })
        .or_else(|| {
            self.find(|a| match a {
                Attribute::MappedAddress(s) => Some(*s),
                _ => None,
            })
        })
    }

    /// XOR-RELAYED-ADDRESS (a TURN Allocate answer).
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::XorRelayedAddress(s) => Some(*s),
            _ => None,
        })
    }

    /// OTHER-ADDRESS, falling back to the RFC 3489 CHANGED-ADDRESS.
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::OtherAddress(s) => Some(*s),
            _ => None,
        })
        .or_else(|| {
            self.find(|a| match a {
                Attribute::ChangedAddress(s) => Some(*s),
                _ => None,
            })
        })
    }

    /// CHANGE-REQUEST flags `(change_ip, change_port)` if present.
    pub fn change_request(&self) -> Option<(bool, bool)> {
        self.find(|a| match a {
            Attribute::ChangeRequest { change_ip, change_port } => Some((*change_ip, *change_port)),
            _ => None,
        })
    }

    /// RESPONSE-PORT if present.
    pub fn response_port(&self) -> Option<u16> {
        self.find(|a| match a {
            Attribute::ResponsePort(p) => Some(*p),
            _ => None,
        })
    }

    /// PADDING length if present.
    pub fn padding(&self) -> Option<u16> {
        self.find(|a| match a {
            Attribute::Padding(n) => Some(*n),
            _ => None,
        })
    }

    /// PUNCH-TOKEN if present.
    pub fn punch_token(&self) -> Option<PunchToken> {
        self.find(|a| match a {
            Attribute::PunchToken(t) => Some(*t),
            _ => None,
        })
    }

    /// ERROR-CODE `(code, reason)` if present.
    pub fn error_code(&self) -> Option<(u16, &str)> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ErrorCode { code, reason } => Some((*code, reason.as_str())),
            _ => None,
        })
    }

    fn find<T>(&self, f: impl Fn(&Attribute) -> Option<T>) -> Option<T> {
        self.attributes.iter().find_map(f)
    }

    /// Serialize. Attributes are written in order, each padded to 4 bytes;
    /// FINGERPRINT is appended last when `self.fingerprint` is set.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&encode_type(self.class, self.method).to_be_bytes());
        out.extend_from_slice(&[0, 0]); // length, patched below
        match self.classic {
            Some(head) => out.extend_from_slice(&head),
            None => out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes()),
        }
        out.extend_from_slice(&self.transaction_id);
        for a in &self.attributes {
            encode_attribute(&mut out, a, &self.transaction_id);
        }
        if self.fingerprint {
            // The length must already include the FINGERPRINT attribute
            // when the CRC is computed (RFC 8489 §14.7).
            let body = out.len() - HEADER_LEN + 8;
            set_len(&mut out, body);
            let crc = crc32(&out) ^ FINGERPRINT_XOR;
            out.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&crc.to_be_bytes());
        }
        let body = out.len() - HEADER_LEN;
        set_len(&mut out, body);
        out
    }

    /// Parse and validate an RFC 8489 datagram (magic cookie required).
    /// Never panics.
    pub fn decode(data: &[u8]) -> Result<Message, StunError> {
        decode(data, false)
    }

    /// Like [`Message::decode`], but an RFC 3489 message (no magic cookie)
    /// is accepted too, with [`Message::classic`] set. Address attributes
    /// are read as they are written; an XOR attribute in a classic message
    /// is undone with the RFC 8489 key (RFC 3489 has none). Never panics.
    pub fn decode_any(data: &[u8]) -> Result<Message, StunError> {
        decode(data, true)
    }
}

fn set_len(out: &mut [u8], len: usize) {
    // STUN bodies are bounded by UDP datagrams; saturate rather than wrap if
    // a caller builds something absurd (the peer will then reject it).
    let l = u16::try_from(len).unwrap_or(u16::MAX);
    out[2..4].copy_from_slice(&l.to_be_bytes());
}

fn put_header(out: &mut Vec<u8>, t: u16, len: usize) {
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

fn encode_address(out: &mut Vec<u8>, t: u16, addr: SocketAddr, xor: Option<&TransactionId>) {
    let mut port = addr.port();
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match addr.ip() {
        IpAddr::V4(ip) => {
            put_header(out, t, 8);
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&port.to_be_bytes());
            let mut b = ip.octets();
            if xor.is_some() {
                for (x, k) in b.iter_mut().zip(MAGIC_COOKIE.to_be_bytes()) {
                    *x ^= k;
                }
            }
            out.extend_from_slice(&b);
        }
        IpAddr::V6(ip) => {
            put_header(out, t, 20);
            out.extend_from_slice(&[0, 2]);
            out.extend_from_slice(&port.to_be_bytes());
            let mut b = ip.octets();
            if let Some(tid) = xor {
                for (x, k) in b.iter_mut().zip(xor_key(tid)) {
                    *x ^= k;
                }
            }
            out.extend_from_slice(&b);
        }
    }
}

fn xor_key(tid: &TransactionId) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    k[4..].copy_from_slice(tid);
    k
}

fn encode_bytes(out: &mut Vec<u8>, t: u16, v: &[u8]) {
    put_header(out, t, v.len());
    out.extend_from_slice(v);
    pad4(out);
}

fn encode_attribute(out: &mut Vec<u8>, a: &Attribute, tid: &TransactionId) {
    match a {
        Attribute::MappedAddress(s) => encode_address(out, attr::MAPPED_ADDRESS, *s, None),
        Attribute::XorMappedAddress(s) => encode_address(out, attr::XOR_MAPPED_ADDRESS, *s, Some(tid)),
        Attribute::OtherAddress(s) => encode_address(out, attr::OTHER_ADDRESS, *s, None),
        Attribute::ResponseOrigin(s) => encode_address(out, attr::RESPONSE_ORIGIN, *s, None),
        Attribute::ChangedAddress(s) => encode_address(out, attr::CHANGED_ADDRESS, *s, None),
        Attribute::SourceAddress(s) => encode_address(out, attr::SOURCE_ADDRESS, *s, None),
        Attribute::ChangeRequest { change_ip, change_port } => {
            let flags = (u32::from(*change_ip) << 2) | (u32::from(*change_port) << 1);
            encode_bytes(out, attr::CHANGE_REQUEST, &flags.to_be_bytes());
        }
        Attribute::ResponsePort(p) => {
            let p = p.to_be_bytes();
            encode_bytes(out, attr::RESPONSE_PORT, &[p[0], p[1], 0, 0]);
        }
        Attribute::Padding(n) => {
            put_header(out, attr::PADDING, *n as usize);
            out.resize(out.len() + *n as usize, 0);
            pad4(out);
        }
        Attribute::Software(s) => encode_bytes(out, attr::SOFTWARE, s.as_bytes()),
        Attribute::ErrorCode { code, reason } => {
            let class = (code / 100) as u8;
            let number = (code % 100) as u8;
            let mut v = vec![0, 0, class & 0x07, number];
            v.extend_from_slice(reason.as_bytes());
            encode_bytes(out, attr::ERROR_CODE, &v);
        }
        Attribute::UnknownAttributes(list) => {
            let v: Vec<u8> = list.iter().flat_map(|t| t.to_be_bytes()).collect();
            encode_bytes(out, attr::UNKNOWN_ATTRIBUTES, &v);
        }
        Attribute::Username(v) => encode_bytes(out, attr::USERNAME, v),
        Attribute::MessageIntegrity(v) => encode_bytes(out, attr::MESSAGE_INTEGRITY, v),
        Attribute::MessageIntegritySha256(v) => encode_bytes(out, attr::MESSAGE_INTEGRITY_SHA256, v),
        Attribute::PunchToken(t) => encode_bytes(out, attr::PUNCH_TOKEN, &t.encode()),
        Attribute::ChannelNumber(n) => {
            let n = n.to_be_bytes();
            encode_bytes(out, attr::CHANNEL_NUMBER, &[n[0], n[1], 0, 0]);
        }
        Attribute::Lifetime(secs) => encode_bytes(out, attr::LIFETIME, &secs.to_be_bytes()),
        Attribute::XorPeerAddress(s) => encode_address(out, attr::XOR_PEER_ADDRESS, *s, Some(tid)),
        Attribute::XorRelayedAddress(s) => encode_address(out, attr::XOR_RELAYED_ADDRESS, *s, Some(tid)),
        Attribute::RequestedTransport(proto) => encode_bytes(out, attr::REQUESTED_TRANSPORT, &[*proto, 0, 0, 0]),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn decode(data: &[u8], classic_ok: bool) -> Result<Message, StunError> {
    if data.len() < HEADER_LEN {
        return Err(StunError::TooShort);
    }
    if data[0] & 0xC0 != 0 {
        return Err(StunError::NotStun);
    }
    let head = [data[4], data[5], data[6], data[7]];
    let classic = u32::from_be_bytes(head) != MAGIC_COOKIE;
    if classic && !classic_ok {
        return Err(StunError::BadMagicCookie);
    }
    let len = be16(data, 2) as usize;
    if len & 3 != 0 {
        return Err(StunError::UnalignedLength);
    }
    if HEADER_LEN + len != data.len() {
        return Err(StunError::LengthMismatch);
    }
    let (class, method) = decode_type(be16(data, 0));
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&data[8..20]);
    let mut msg = Message::new(class, method, tid);
    if classic {
        msg.classic = Some(head);
    }

    let mut pos = HEADER_LEN;
    let mut after_integrity = false;
    let mut count = 0;
    while pos < data.len() {
        if msg.fingerprint {
            return Err(StunError::AttributeAfterFingerprint);
        }
        // Checked before the attribute is looked at, so that everything
        // below (the duplicate check of `unknown_required` included) runs
        // at most MAX_ATTRIBUTES times per datagram.
        count += 1;
        if count > MAX_ATTRIBUTES {
            return Err(StunError::TooManyAttributes);
        }
        if data.len() - pos < 4 {
            return Err(StunError::TruncatedAttribute);
        }
        let t = be16(data, pos);
        let vlen = be16(data, pos + 2) as usize;
        let start = pos + 4;
        let padded = (vlen + 3) & !3;
        if data.len() - start < padded {
            return Err(StunError::TruncatedAttribute);
        }
        let value = &data[start..start + vlen];
        if t == attr::FINGERPRINT {
            if vlen != 4 {
                return Err(StunError::BadAttributeLength(t));
            }
            let want = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
            // CRC covers everything before the attribute; the header length
            // already includes FINGERPRINT because it must be last.
            if crc32(&data[..pos]) ^ FINGERPRINT_XOR != want {
                return Err(StunError::BadFingerprint);
            }
            msg.fingerprint = true;
        } else if !after_integrity {
            match decode_attribute(t, value, &tid)? {
                Some(a) => {
                    if matches!(a, Attribute::MessageIntegrity(_) | Attribute::MessageIntegritySha256(_)) {
                        after_integrity = true;
                    }
                    msg.attributes.push(a);
                }
                None => {
                    if attr::is_comprehension_required(t) && !msg.unknown_required.contains(&t) {
                        msg.unknown_required.push(t);
                    }
                }
            }
        }
        pos = start + padded;
    }
    Ok(msg)
}

fn decode_address(t: u16, v: &[u8], xor: Option<&TransactionId>) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::BadAttributeLength(t));
    }
    let mut port = be16(v, 2);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match v[1] {
        1 => {
            if v.len() != 8 {
                return Err(StunError::BadAttributeLength(t));
            }
            let mut b = [v[4], v[5], v[6], v[7]];
            if xor.is_some() {
                for (x, k) in b.iter_mut().zip(MAGIC_COOKIE.to_be_bytes()) {
                    *x ^= k;
                }
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b)), port))
        }
        2 => {
            if v.len() != 20 {
                return Err(StunError::BadAttributeLength(t));
            }
            let mut b = [0u8; 16];
            b.copy_from_slice(&v[4..20]);
            if let Some(tid) = xor {
                for (x, k) in b.iter_mut().zip(xor_key(tid)) {
                    *x ^= k;
                }
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port))
        }
        _ => Err(StunError::BadAddressFamily),
    }
}

/// `v` if it is `len` bytes long.
fn exactly(t: u16, v: &[u8], len: usize) -> Result<&[u8], StunError> {
    if v.len() == len {
        Ok(v)
    } else {
        Err(StunError::BadAttributeLength(t))
    }
}

/// `Ok(None)` means "type not understood".
fn decode_attribute(t: u16, v: &[u8], tid: &TransactionId) -> Result<Option<Attribute>, StunError> {
    let a = match t {
        attr::MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(t, v, None)?),
        attr::XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(decode_address(t, v, Some(tid))?),
        attr::OTHER_ADDRESS => Attribute::OtherAddress(decode_address(t, v, None)?),
        attr::RESPONSE_ORIGIN => Attribute::ResponseOrigin(decode_address(t, v, None)?),
        attr::CHANGED_ADDRESS => Attribute::ChangedAddress(decode_address(t, v, None)?),
        attr::SOURCE_ADDRESS => Attribute::SourceAddress(decode_address(t, v, None)?),
        attr::CHANGE_REQUEST => {
            if v.len() != 4 {
                return Err(StunError::BadAttributeLength(t));
            }
            Attribute::ChangeRequest { change_ip: v[3] & 0x04 != 0, change_port: v[3] & 0x02 != 0 }
        }
        attr::RESPONSE_PORT => {
            if v.len() != 4 {
                return Err(StunError::BadAttributeLength(t));
            }
            Attribute::ResponsePort(be16(v, 0))
        }
        // Length is bounded by the u16 length field, so the cast is lossless.
        attr::PADDING => Attribute::Padding(v.len() as u16),
        attr::SOFTWARE => Attribute::Software(String::from_utf8_lossy(v).into_owned()),
        attr::ERROR_CODE => {
            if v.len() < 4 {
                return Err(StunError::BadAttributeLength(t));
            }
            let class = (v[2] & 0x07) as u16;
            let number = v[3] as u16;
            if !(3..=6).contains(&class) || number >= 100 {
                return Err(StunError::BadErrorCode);
            }
            Attribute::ErrorCode {
                code: class * 100 + number,
                reason: String::from_utf8_lossy(&v[4..]).into_owned(),
            }
        }
        attr::UNKNOWN_ATTRIBUTES => {
            if v.len() & 1 != 0 {
                return Err(StunError::BadAttributeLength(t));
            }
            Attribute::UnknownAttributes(v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
        }
        attr::USERNAME => Attribute::Username(v.to_vec()),
        attr::MESSAGE_INTEGRITY => {
            if v.len() != 20 {
                return Err(StunError::BadAttributeLength(t));
            }
            Attribute::MessageIntegrity(v.to_vec())
        }
        attr::MESSAGE_INTEGRITY_SHA256 => {
            if !(16..=32).contains(&v.len()) || v.len() & 3 != 0 {
                return Err(StunError::BadAttributeLength(t));
            }
            Attribute::MessageIntegritySha256(v.to_vec())
        }
        attr::PUNCH_TOKEN => Attribute::PunchToken(PunchToken::decode(v).ok_or(StunError::BadAttributeLength(t))?),
        attr::CHANNEL_NUMBER => Attribute::ChannelNumber(be16(exactly(t, v, 4)?, 0)),
        attr::LIFETIME => {
            let v = exactly(t, v, 4)?;
            Attribute::Lifetime(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        }
        attr::XOR_PEER_ADDRESS => Attribute::XorPeerAddress(decode_address(t, v, Some(tid))?),
        attr::XOR_RELAYED_ADDRESS => Attribute::XorRelayedAddress(decode_address(t, v, Some(tid))?),
        attr::REQUESTED_TRANSPORT => Attribute::RequestedTransport(exactly(t, v, 4)?[0]),
        _ => return Ok(None),
    };
    Ok(Some(a))
}

#[cfg(test)]
mod tests;
