//! PCP (RFC 6887) codec: the common header, the MAP opcode (and ANNOUNCE),
//! result codes. Options are skipped on decode (none are sent).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const VERSION: u8 = 2;
pub const OP_ANNOUNCE: u8 = 0;
pub const OP_MAP: u8 = 1;
pub const OP_PEER: u8 = 2;
/// IANA protocol number for UDP, the only one we map.
pub const PROTO_UDP: u8 = 17;
const HEADER: usize = 24;
const MAP_PAYLOAD: usize = 36;
/// RFC 6887 §7: a PCP message is at most 1100 bytes.
pub const MAX_MESSAGE: usize = 1100;

/// Result codes (RFC 6887 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    Success,
    UnsuppVersion,
    NotAuthorized,
    MalformedRequest,
    UnsuppOpcode,
    UnsuppOption,
    MalformedOption,
    NetworkFailure,
    NoResources,
    UnsuppProtocol,
    UserExQuota,
    CannotProvideExternal,
    AddressMismatch,
    ExcessiveRemotePeers,
    Other(u8),
}

impl ResultCode {
    pub fn from_u8(v: u8) -> ResultCode {
        use ResultCode::*;
        match v {
            0 => Success,
            1 => UnsuppVersion,
            2 => NotAuthorized,
            3 => MalformedRequest,
            4 => UnsuppOpcode,
            5 => UnsuppOption,
            6 => MalformedOption,
            7 => NetworkFailure,
            8 => NoResources,
            9 => UnsuppProtocol,
            10 => UserExQuota,
            11 => CannotProvideExternal,
            12 => AddressMismatch,
            13 => ExcessiveRemotePeers,
            n => Other(n),
        }
    }

    pub fn to_u8(self) -> u8 {
        use ResultCode::*;
        match self {
            Success => 0,
            UnsuppVersion => 1,
            NotAuthorized => 2,
            MalformedRequest => 3,
            UnsuppOpcode => 4,
            UnsuppOption => 5,
            MalformedOption => 6,
            NetworkFailure => 7,
            NoResources => 8,
            UnsuppProtocol => 9,
            UserExQuota => 10,
            CannotProvideExternal => 11,
            AddressMismatch => 12,
            ExcessiveRemotePeers => 13,
            Other(n) => n,
        }
    }

    /// RFC 6887 §7.4: short-lifetime errors are worth a retry soon.
    pub fn is_transient(self) -> bool {
        matches!(self, ResultCode::NetworkFailure | ResultCode::NoResources | ResultCode::UserExQuota | ResultCode::ExcessiveRemotePeers)
    }
}

/// IPv4 addresses travel as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
pub fn to_wire(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn from_wire(b: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A MAP request (RFC 6887 §11.1). `lifetime_s == 0` deletes the mapping
/// of `nonce` (same nonce as when it was made, §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    pub lifetime_s: u32,
    /// Our own address as the server sees the request come from (a
    /// mismatch is answered ADDRESS_MISMATCH).
    pub client_ip: IpAddr,
    pub nonce: [u8; 12],
    pub protocol: u8,
    pub internal_port: u16,
    pub suggested_external_port: u16,
    /// `0.0.0.0` / `::` for no preference (kept in its family).
    pub suggested_external_ip: IpAddr,
}

impl MapRequest {
    /// A UDP mapping of `internal_port`, suggesting the same external port.
    pub fn udp(client_ip: IpAddr, nonce: [u8; 12], internal_port: u16, lifetime_s: u32) -> MapRequest {
        let any = match client_ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        MapRequest { lifetime_s, client_ip, nonce, protocol: PROTO_UDP, internal_port, suggested_external_port: internal_port, suggested_external_ip: any }
    }

    /// The request deleting what `self` made.
    pub fn delete(&self) -> MapRequest {
        MapRequest { lifetime_s: 0, suggested_external_port: 0, ..*self }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + MAP_PAYLOAD);
        b.extend_from_slice(&[VERSION, OP_MAP, 0, 0]);
        b.extend_from_slice(&self.lifetime_s.to_be_bytes());
        b.extend_from_slice(&to_wire(self.client_ip));
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&[self.protocol, 0, 0, 0]);
        b.extend_from_slice(&self.internal_port.to_be_bytes());
        b.extend_from_slice(&self.suggested_external_port.to_be_bytes());
        b.extend_from_slice(&to_wire(self.suggested_external_ip));
        b
    }

    /// Server side (tests, a fake gateway).
    pub fn decode(b: &[u8]) -> Option<MapRequest> {
        if b.len() < HEADER + MAP_PAYLOAD || b.len() > MAX_MESSAGE || b.len() % 4 != 0 || b[0] != VERSION || b[1] != OP_MAP {
            return None;
        }
        let p = &b[HEADER..];
        Some(MapRequest {
            lifetime_s: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            client_ip: from_wire(b[8..24].try_into().ok()?),
            nonce: p[0..12].try_into().ok()?,
            protocol: p[12],
            internal_port: u16::from_be_bytes([p[16], p[17]]),
            suggested_external_port: u16::from_be_bytes([p[18], p[19]]),
            suggested_external_ip: from_wire(p[20..36].try_into().ok()?),
        })
    }
}

/// An ANNOUNCE request (§14.1): what a client sends to learn whether a
/// PCP server is there, and a server multicasts after a restart.
pub fn announce_request(client_ip: IpAddr) -> Vec<u8> {
    let mut b = vec![VERSION, OP_ANNOUNCE, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&to_wire(client_ip));
    b
}

/// A response's common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub opcode: u8,
    pub result: ResultCode,
    pub lifetime_s: u32,
    pub epoch_s: u32,
}

/// A MAP response's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapResponse {
    pub nonce: [u8; 12],
    pub protocol: u8,
    pub internal_port: u16,
    pub external_port: u16,
    pub external_ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub header: Header,
    /// Present for a MAP response with its full payload.
    pub map: Option<MapResponse>,
}

impl Response {
    /// Parses a response. Anything of version 2 with the R bit and a
    /// header is a response; a NAT-PMP server answers a PCP request with
    /// a version 0 UNSUPP_VERSION (RFC 6887 §9), returned with version 0.
    pub fn decode(b: &[u8]) -> Option<Response> {
        if b.len() >= 4 && b[0] == 0 && b[1] & 128 != 0 {
            // NAT-PMP's answer: "I speak version 0 only".
            let result = ResultCode::from_u8(u16::from_be_bytes([b[2], b[3]]).min(255) as u8);
            let header = Header { version: 0, opcode: b[1] & 127, result, lifetime_s: 0, epoch_s: 0 };
            return Some(Response { header, map: None });
        }
        if b.len() < HEADER || b.len() > MAX_MESSAGE || b[0] != VERSION || b[1] & 128 == 0 {
            return None;
        }
        let header = Header {
            version: b[0],
            opcode: b[1] & 127,
            result: ResultCode::from_u8(b[3]),
            lifetime_s: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            epoch_s: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        };
        let map = (header.opcode == OP_MAP && b.len() >= HEADER + MAP_PAYLOAD).then(|| {
            let p = &b[HEADER..HEADER + MAP_PAYLOAD];
            MapResponse {
                nonce: p[0..12].try_into().unwrap(),
                protocol: p[12],
                internal_port: u16::from_be_bytes([p[16], p[17]]),
                external_port: u16::from_be_bytes([p[18], p[19]]),
                external_ip: from_wire(p[20..36].try_into().unwrap()),
            }
        });
        Some(Response { header, map })
    }

    /// Server side (tests, a fake gateway): a MAP response.
    pub fn encode_map(result: ResultCode, lifetime_s: u32, epoch_s: u32, m: &MapResponse) -> Vec<u8> {
        let mut b = vec![VERSION, 128 | OP_MAP, 0, result.to_u8()];
        b.extend_from_slice(&lifetime_s.to_be_bytes());
        b.extend_from_slice(&epoch_s.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&m.nonce);
        b.extend_from_slice(&[m.protocol, 0, 0, 0]);
        b.extend_from_slice(&m.internal_port.to_be_bytes());
        b.extend_from_slice(&m.external_port.to_be_bytes());
        b.extend_from_slice(&to_wire(m.external_ip));
        b
    }

    /// Whether this answers `req`: a MAP response with its nonce, protocol
    /// and internal port (§11.3), or a version/opcode error to it.
    pub fn answers(&self, req: &MapRequest) -> bool {
        match &self.map {
            Some(m) => self.header.opcode == OP_MAP && m.nonce == req.nonce && m.protocol == req.protocol && m.internal_port == req.internal_port,
            None => self.header.result != ResultCode::Success && (self.header.version == 0 || self.header.opcode == OP_MAP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn req() -> MapRequest {
        MapRequest::udp("198.18.1.2".parse().unwrap(), NONCE, 4433, 7200)
    }

    #[test]
    fn map_request_layout() {
        let b = req().encode();
        assert_eq!(b.len(), 60);
        assert_eq!(&b[0..4], &[2, 1, 0, 0]);
        assert_eq!(&b[4..8], &7200u32.to_be_bytes());
        assert_eq!(&b[8..24], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 2]);
        assert_eq!(&b[24..36], &NONCE);
        assert_eq!(&b[36..40], &[17, 0, 0, 0]);
        assert_eq!(&b[40..42], &4433u16.to_be_bytes());
        assert_eq!(&b[42..44], &4433u16.to_be_bytes());
        assert_eq!(&b[44..60], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(MapRequest::decode(&b), Some(req()));
    }

    #[test]
    fn delete_keeps_the_nonce_and_zeroes_lifetime() {
        let d = req().delete();
        assert_eq!(d.lifetime_s, 0);
        assert_eq!(d.nonce, NONCE);
        assert_eq!(d.internal_port, 4433);
        assert_eq!(d.suggested_external_port, 0);
        assert_eq!(MapRequest::decode(&d.encode()), Some(d));
    }

    #[test]
    fn ipv6_client_round_trips() {
        let r = MapRequest::udp("2001:db8::2".parse().unwrap(), NONCE, 1, 2);
        assert_eq!(r.suggested_external_ip, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(MapRequest::decode(&r.encode()), Some(r));
    }

    #[test]
    fn bad_requests_are_rejected() {
        let b = req().encode();
        assert_eq!(MapRequest::decode(&b[..59]), None);
        let mut v = b.clone();
        v[0] = 1;
        assert_eq!(MapRequest::decode(&v), None);
        let mut v = b.clone();
        v[1] = OP_PEER;
        assert_eq!(MapRequest::decode(&v), None);
        let mut v = b.clone();
        v.push(0);
        assert_eq!(MapRequest::decode(&v), None);
    }

    #[test]
    fn announce_is_a_bare_header() {
        let b = announce_request("198.18.1.2".parse().unwrap());
        assert_eq!(b.len(), 24);
        assert_eq!(&b[0..2], &[2, 0]);
    }

    #[test]
    fn map_response_round_trips_and_matches() {
        let m = MapResponse { nonce: NONCE, protocol: 17, internal_port: 4433, external_port: 4433, external_ip: "203.0.113.12".parse().unwrap() };
        let b = Response::encode_map(ResultCode::Success, 7200, 42, &m);
        assert_eq!(b.len(), 60);
        let r = Response::decode(&b).unwrap();
        assert_eq!(r.header, Header { version: 2, opcode: OP_MAP, result: ResultCode::Success, lifetime_s: 7200, epoch_s: 42 });
        assert_eq!(r.map, Some(m));
        assert!(r.answers(&req()));
        assert!(r.answers(&req().delete()));
        let mut other = req();
        other.nonce[0] = 99;
        assert!(!r.answers(&other));
        other = req();
        other.internal_port = 1;
        assert!(!r.answers(&other));
    }

    #[test]
    fn responses_with_options_decode() {
        let m = MapResponse { nonce: NONCE, protocol: 17, internal_port: 1, external_port: 2, external_ip: "203.0.113.1".parse().unwrap() };
        let mut b = Response::encode_map(ResultCode::Success, 10, 1, &m);
        b.extend_from_slice(&[1, 0, 0, 16]); // THIRD_PARTY, 16 bytes
        b.extend_from_slice(&[0; 16]);
        assert_eq!(Response::decode(&b).unwrap().map, Some(m));
    }

    #[test]
    fn error_responses() {
        // An error MAP response still carries the payload (§7.2).
        let m = MapResponse { nonce: NONCE, protocol: 17, internal_port: 4433, external_port: 0, external_ip: "::".parse().unwrap() };
        let b = Response::encode_map(ResultCode::NotAuthorized, 0, 1, &m);
        let r = Response::decode(&b).unwrap();
        assert_eq!(r.header.result, ResultCode::NotAuthorized);
        assert!(r.answers(&req()));
        // A header-only error (e.g. UNSUPP_OPCODE).
        let mut h = b[..24].to_vec();
        h[3] = 4;
        let r = Response::decode(&h).unwrap();
        assert_eq!((r.header.result, r.map), (ResultCode::UnsuppOpcode, None));
        assert!(r.answers(&req()));
        // NAT-PMP's UNSUPPORTED_VERSION to a PCP request.
        let r = Response::decode(&[0, 129, 0, 1, 0, 0, 0, 5]).unwrap();
        assert_eq!((r.header.version, r.header.result), (0, ResultCode::UnsuppVersion));
        assert!(r.answers(&req()));
    }

    #[test]
    fn not_responses() {
        assert_eq!(Response::decode(&req().encode()), None); // no R bit
        assert_eq!(Response::decode(&[2, 129, 0, 0]), None); // short
        assert_eq!(Response::decode(&[3; 24]), None);
        assert_eq!(Response::decode(&vec![2u8, 129].into_iter().chain(std::iter::repeat(0).take(1200)).collect::<Vec<_>>()), None);
    }

    #[test]
    fn result_codes_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(ResultCode::from_u8(v).to_u8(), v);
        }
        assert!(ResultCode::NoResources.is_transient());
        assert!(!ResultCode::NotAuthorized.is_transient());
    }

    #[test]
    fn addresses_on_the_wire() {
        for s in ["203.0.113.5", "2001:db8::1", "0.0.0.0"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from_wire(&to_wire(ip)), ip);
        }
    }
}
