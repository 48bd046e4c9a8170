//! NAT-PMP (RFC 6886) codec: the external address request and UDP/TCP
//! mapping requests, their responses, result codes.

use std::net::Ipv4Addr;

/// NAT-PMP's version field.
pub const VERSION: u8 = 0;
/// Opcodes (requests; a response carries `128 + opcode`).
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
pub const OP_MAP_UDP: u8 = 1;
pub const OP_MAP_TCP: u8 = 2;

/// Result codes (RFC 6886 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    Success,
    UnsupportedVersion,
    NotAuthorized,
    NetworkFailure,
    OutOfResources,
    UnsupportedOpcode,
    Other(u16),
}

impl ResultCode {
    pub fn from_u16(v: u16) -> ResultCode {
        match v {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::NetworkFailure,
            4 => ResultCode::OutOfResources,
            5 => ResultCode::UnsupportedOpcode,
            n => ResultCode::Other(n),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            ResultCode::Success => 0,
            ResultCode::UnsupportedVersion => 1,
            ResultCode::NotAuthorized => 2,
            ResultCode::NetworkFailure => 3,
            ResultCode::OutOfResources => 4,
            ResultCode::UnsupportedOpcode => 5,
            ResultCode::Other(n) => n,
        }
    }
}

/// A request a client sends to the gateway's port 5351.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    ExternalAddress,
    /// Map (`lifetime_s > 0`) or delete (`lifetime_s == 0`; RFC 6886 §3.4:
    /// the suggested external port is then 0) a UDP or TCP port.
    Map { udp: bool, internal_port: u16, suggested_external_port: u16, lifetime_s: u32 },
}

impl Request {
    /// A UDP mapping of `internal_port`, asking for the same external port.
    pub fn map_udp(internal_port: u16, lifetime_s: u32) -> Request {
        Request::Map { udp: true, internal_port, suggested_external_port: internal_port, lifetime_s }
    }

    /// Deletes the UDP mapping of `internal_port`.
    pub fn delete_udp(internal_port: u16) -> Request {
        Request::Map { udp: true, internal_port, suggested_external_port: 0, lifetime_s: 0 }
    }

    pub fn opcode(&self) -> u8 {
        match self {
            Request::ExternalAddress => OP_EXTERNAL_ADDRESS,
            Request::Map { udp: true, .. } => OP_MAP_UDP,
            Request::Map { udp: false, .. } => OP_MAP_TCP,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Request::ExternalAddress => vec![VERSION, OP_EXTERNAL_ADDRESS],
            Request::Map { internal_port, suggested_external_port, lifetime_s, .. } => {
                let mut b = Vec::with_capacity(12);
                b.extend_from_slice(&[VERSION, self.opcode(), 0, 0]);
                b.extend_from_slice(&internal_port.to_be_bytes());
                b.extend_from_slice(&suggested_external_port.to_be_bytes());
                b.extend_from_slice(&lifetime_s.to_be_bytes());
                b
            }
        }
    }

    /// Server side (tests, a fake gateway): parses a request.
    pub fn decode(b: &[u8]) -> Option<Request> {
        if b.len() < 2 || b[0] != VERSION {
            return None;
        }
        match b[1] {
            OP_EXTERNAL_ADDRESS if b.len() == 2 => Some(Request::ExternalAddress),
            op @ (OP_MAP_UDP | OP_MAP_TCP) if b.len() == 12 => Some(Request::Map {
                udp: op == OP_MAP_UDP,
                internal_port: u16::from_be_bytes([b[4], b[5]]),
                suggested_external_port: u16::from_be_bytes([b[6], b[7]]),
                lifetime_s: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            }),
            _ => None,
        }
    }
}

/// A gateway's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    ExternalAddress { result: ResultCode, epoch_s: u32, addr: Ipv4Addr },
    Map { udp: bool, result: ResultCode, epoch_s: u32, internal_port: u16, external_port: u16, lifetime_s: u32 },
    /// A response with an error result too short for its opcode's body
    /// (RFC 6886 §3.5: an unsupported version or opcode is answered with
    /// the 8-byte header only), or to a request we did not send.
    Error { opcode: u8, result: ResultCode, epoch_s: u32 },
}

impl Response {
    pub fn result(&self) -> ResultCode {
        match *self {
            Response::ExternalAddress { result, .. } | Response::Map { result, .. } | Response::Error { result, .. } => result,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (op, result, epoch) = match *self {
            Response::ExternalAddress { result, epoch_s, .. } => (OP_EXTERNAL_ADDRESS, result, epoch_s),
            Response::Map { udp, result, epoch_s, .. } => (if udp { OP_MAP_UDP } else { OP_MAP_TCP }, result, epoch_s),
            Response::Error { opcode, result, epoch_s } => (opcode, result, epoch_s),
        };
        let mut b = vec![VERSION, 128 | op];
        b.extend_from_slice(&result.to_u16().to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        match *self {
            Response::ExternalAddress { addr, .. } => b.extend_from_slice(&addr.octets()),
            Response::Map { internal_port, external_port, lifetime_s, .. } => {
                b.extend_from_slice(&internal_port.to_be_bytes());
                b.extend_from_slice(&external_port.to_be_bytes());
                b.extend_from_slice(&lifetime_s.to_be_bytes());
            }
            Response::Error { .. } => {}
        }
        b
    }

    /// Parses a response; `None` when it is not one (wrong version, no
    /// response bit, too short).
    pub fn decode(b: &[u8]) -> Option<Response> {
        if b.len() < 8 || b[0] != VERSION || b[1] & 128 == 0 {
            return None;
        }
        let op = b[1] & 127;
        let result = ResultCode::from_u16(u16::from_be_bytes([b[2], b[3]]));
        let epoch_s = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        match op {
            OP_EXTERNAL_ADDRESS if b.len() >= 12 => {
                Some(Response::ExternalAddress { result, epoch_s, addr: Ipv4Addr::new(b[8], b[9], b[10], b[11]) })
            }
            OP_MAP_UDP | OP_MAP_TCP if b.len() >= 16 => Some(Response::Map {
                udp: op == OP_MAP_UDP,
                result,
                epoch_s,
                internal_port: u16::from_be_bytes([b[8], b[9]]),
                external_port: u16::from_be_bytes([b[10], b[11]]),
                lifetime_s: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            }),
            _ if result != ResultCode::Success => Some(Response::Error { opcode: op, result, epoch_s }),
            _ => None,
        }
    }

    /// Whether this answers `req` (same opcode; a mapping for the same
    /// internal port).
    pub fn answers(&self, req: &Request) -> bool {
        match (self, req) {
            (Response::ExternalAddress { .. }, Request::ExternalAddress) => true,
            (Response::Map { udp, internal_port, .. }, Request::Map { udp: u, internal_port: p, .. }) => udp == u && internal_port == p,
            (Response::Error { opcode, .. }, r) => *opcode == r.opcode(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_address_request_is_two_bytes() {
        assert_eq!(Request::ExternalAddress.encode(), vec![0, 0]);
        assert_eq!(Request::decode(&[0, 0]), Some(Request::ExternalAddress));
    }

    #[test]
    fn map_request_layout() {
        let r = Request::map_udp(4433, 7200);
        let b = r.encode();
        assert_eq!(b, vec![0, 1, 0, 0, 0x11, 0x51, 0x11, 0x51, 0, 0, 0x1c, 0x20]);
        assert_eq!(Request::decode(&b), Some(r));
        let tcp = Request::Map { udp: false, internal_port: 1, suggested_external_port: 2, lifetime_s: 3 };
        assert_eq!(tcp.encode()[1], OP_MAP_TCP);
        assert_eq!(Request::decode(&tcp.encode()), Some(tcp));
    }

    #[test]
    fn delete_request_has_zero_lifetime_and_external_port() {
        let b = Request::delete_udp(4433).encode();
        assert_eq!(&b[6..12], &[0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[4..6], &4433u16.to_be_bytes());
    }

    #[test]
    fn requests_with_bad_version_length_or_opcode_are_rejected() {
        assert_eq!(Request::decode(&[]), None);
        assert_eq!(Request::decode(&[2, 0]), None);
        assert_eq!(Request::decode(&[0, 1, 0, 0]), None);
        assert_eq!(Request::decode(&[0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(Request::decode(&[0, 0, 0]), None);
    }

    #[test]
    fn external_address_response_round_trips() {
        let r = Response::ExternalAddress { result: ResultCode::Success, epoch_s: 77, addr: Ipv4Addr::new(203, 0, 113, 12) };
        let b = r.encode();
        assert_eq!(b, vec![0, 128, 0, 0, 0, 0, 0, 77, 203, 0, 113, 12]);
        assert_eq!(Response::decode(&b), Some(r));
        assert!(r.answers(&Request::ExternalAddress));
        assert!(!r.answers(&Request::map_udp(1, 1)));
    }

    #[test]
    fn map_response_round_trips_and_matches_its_request() {
        let r = Response::Map { udp: true, result: ResultCode::Success, epoch_s: 5, internal_port: 4433, external_port: 40000, lifetime_s: 3600 };
        let b = r.encode();
        assert_eq!(b.len(), 16);
        assert_eq!(b[1], 129);
        assert_eq!(Response::decode(&b), Some(r));
        assert!(r.answers(&Request::map_udp(4433, 7200)));
        assert!(r.answers(&Request::delete_udp(4433)));
        assert!(!r.answers(&Request::map_udp(4434, 7200)));
        assert!(!r.answers(&Request::Map { udp: false, internal_port: 4433, suggested_external_port: 0, lifetime_s: 1 }));
        assert!(!r.answers(&Request::ExternalAddress));
    }

    #[test]
    fn short_error_responses_decode() {
        // An unsupported-version answer: the 8-byte header only.
        let b = [0, 129, 0, 1, 0, 0, 0, 9];
        let r = Response::decode(&b).unwrap();
        assert_eq!(r, Response::Error { opcode: 1, result: ResultCode::UnsupportedVersion, epoch_s: 9 });
        assert!(r.answers(&Request::map_udp(1, 1)));
        assert_eq!(Response::decode(&r.encode()), Some(r));
        // A short "success" is not a response.
        assert_eq!(Response::decode(&[0, 129, 0, 0, 0, 0, 0, 9]), None);
    }

    #[test]
    fn not_responses() {
        assert_eq!(Response::decode(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None); // a request
        assert_eq!(Response::decode(&[2, 129, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None); // PCP version
        assert_eq!(Response::decode(&[0, 128, 0, 0]), None);
    }

    #[test]
    fn result_codes_round_trip() {
        for v in 0..8u16 {
            assert_eq!(ResultCode::from_u16(v).to_u16(), v);
        }
        assert_eq!(ResultCode::from_u16(2), ResultCode::NotAuthorized);
        assert_eq!(ResultCode::from_u16(300), ResultCode::Other(300));
    }
}
