use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

const TID: TransactionId = [0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae];

// RFC 5769 §2.1
fn rfc5769_request() -> Vec<u8> {
    hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
         00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
         00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
         00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
         80 28 00 04 e5 7a 3b cf")
}

// RFC 5769 §2.2
fn rfc5769_ipv4_response() -> Vec<u8> {
    hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 08 00 01 a1 47 e1 12 a6 43
         00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
         80 28 00 04 c0 7d 4c 96")
}

// RFC 5769 §2.3
fn rfc5769_ipv6_response() -> Vec<u8> {
    hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
         00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
         80 28 00 04 c8 fb 0b 4c")
}

#[test]
fn rfc5769_request_parses_and_reports_unknown_required() {
    let data = rfc5769_request();
    assert!(is_stun(&data));
    let m = Message::decode(&data).unwrap();
    assert_eq!(m.class, Class::Request);
    assert_eq!(m.method, METHOD_BINDING);
    assert_eq!(m.transaction_id, TID);
    assert!(m.fingerprint);
    assert_eq!(m.attributes[0], Attribute::Software("STUN test client".into()));
    assert!(m.attributes.contains(&Attribute::Username(b"evtj:h6vY".to_vec())));
    assert!(matches!(m.attributes.last(), Some(Attribute::MessageIntegrity(v)) if v.len() == 20));
    // PRIORITY (0x0024) is comprehension-required and unknown to us; the
    // ICE-CONTROLLED attribute (0x8029) is optional and silently skipped.
    assert_eq!(m.unknown_required, vec![0x0024]);
}

#[test]
fn rfc5769_ipv4_response_parses() {
    let data = rfc5769_ipv4_response();
    assert!(is_stun(&data));
    let m = Message::decode(&data).unwrap();
    assert_eq!(m.class, Class::SuccessResponse);
    assert_eq!(m.transaction_id, TID);
    assert!(m.fingerprint);
    assert_eq!(m.attributes[0], Attribute::Software("test vector".into()));
    assert_eq!(m.mapped_address(), Some("192.0.2.1:32853".parse().unwrap()));
    assert!(m.unknown_required.is_empty());
}

#[test]
fn rfc5769_ipv6_response_parses() {
    let data = rfc5769_ipv6_response();
    let m = Message::decode(&data).unwrap();
    assert_eq!(m.class, Class::SuccessResponse);
    assert_eq!(m.mapped_address(), Some("[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap()));
    assert!(m.fingerprint);
}

#[test]
fn rfc5769_vectors_reject_any_flipped_bit_in_fingerprinted_region() {
    for data in [rfc5769_request(), rfc5769_ipv4_response(), rfc5769_ipv6_response()] {
        // Flip one bit in every attribute byte (header flips change other
        // checks first); the fingerprint must catch it or another check must.
        let fp_type = data.len() - 8..data.len() - 6;
        for i in HEADER_LEN..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x01;
            match Message::decode(&d) {
                Err(_) => {}
                // Turning the FINGERPRINT type into an unknown optional type
                // leaves a message without fingerprint: legal, and visible.
                Ok(m) => assert!(fp_type.contains(&i) && !m.fingerprint, "flip at {i} accepted"),
            }
        }
    }
}

#[test]
fn crc32_known_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn message_type_round_trips_all_classes_and_methods() {
    for class in [Class::Request, Class::Indication, Class::SuccessResponse, Class::ErrorResponse] {
        for method in [0x001, 0x002, 0x00F, 0x010, 0x07F, 0x080, 0xFFF] {
            let t = encode_type(class, method);
            assert_eq!(t & 0xC000, 0);
            assert_eq!(decode_type(t), (class, method));
        }
    }
    // Well-known values from RFC 8489.
    assert_eq!(encode_type(Class::Request, METHOD_BINDING), 0x0001);
    assert_eq!(encode_type(Class::SuccessResponse, METHOD_BINDING), 0x0101);
    assert_eq!(encode_type(Class::ErrorResponse, METHOD_BINDING), 0x0111);
    assert_eq!(encode_type(Class::Indication, METHOD_BINDING), 0x0011);
}

fn v4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 40123)
}
fn v6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 2, 3, 4, 5)), 65535)
}

fn every_attribute() -> Vec<Attribute> {
    vec![
        Attribute::MappedAddress(v4()),
        Attribute::MappedAddress(v6()),
        Attribute::XorMappedAddress(v4()),
        Attribute::XorMappedAddress(v6()),
        Attribute::ChangeRequest { change_ip: false, change_port: false },
        Attribute::ChangeRequest { change_ip: true, change_port: false },
        Attribute::ChangeRequest { change_ip: false, change_port: true },
        Attribute::ChangeRequest { change_ip: true, change_port: true },
        Attribute::OtherAddress(v4()),
        Attribute::OtherAddress(v6()),
        Attribute::ResponseOrigin(v4()),
        Attribute::ResponseOrigin(v6()),
        Attribute::ResponsePort(0),
        Attribute::ResponsePort(54321),
        Attribute::Padding(0),
        Attribute::Padding(1),
        Attribute::Padding(3),
        Attribute::Padding(4),
        Attribute::Padding(501),
        Attribute::Software(String::new()),
        Attribute::Software("macula_nat 0.1".into()),
        Attribute::Software("ünïcødé".into()),
        Attribute::ErrorCode { code: 420, reason: "Unknown Attribute".into() },
        Attribute::ErrorCode { code: 300, reason: String::new() },
        Attribute::ErrorCode { code: 699, reason: "x".into() },
        Attribute::UnknownAttributes(vec![]),
        Attribute::UnknownAttributes(vec![0x0024]),
        Attribute::UnknownAttributes(vec![0x0024, 0x0025, 0x7FFF]),
        Attribute::ChangedAddress(v4()),
        Attribute::SourceAddress(v6()),
        Attribute::Username(b"user".to_vec()),
        Attribute::PunchToken(PunchToken { session: SessionId::from_bytes([0; 16]), sender: NodeId::from_bytes([0; 32]), flags: 0 }),
        Attribute::PunchToken(PunchToken { session: SessionId::from_bytes([0xAB; 16]), sender: NodeId::from_bytes([7; 32]), flags: PunchToken::NOMINATE }),
        Attribute::ChannelNumber(0x4000),
        Attribute::ChannelNumber(0x4FFF),
        Attribute::Lifetime(0),
        Attribute::Lifetime(600),
        Attribute::Lifetime(u32::MAX),
        Attribute::XorPeerAddress(v4()),
        Attribute::XorPeerAddress(v6()),
        Attribute::XorRelayedAddress(v4()),
        Attribute::XorRelayedAddress(v6()),
        Attribute::RequestedTransport(17),
    ]
}

#[test]
fn every_attribute_round_trips_alone_with_and_without_fingerprint() {
    for (i, a) in every_attribute().into_iter().enumerate() {
        for fp in [false, true] {
            let mut tid = TID;
            tid[0] = i as u8;
            let mut m = Message::binding_request(tid).with(a.clone());
            m.fingerprint = fp;
            let bytes = m.encode();
            assert!(is_stun(&bytes), "{a:?}");
            assert_eq!(bytes.len() & 3, 0);
            let back = Message::decode(&bytes).unwrap_or_else(|e| panic!("{a:?}: {e}"));
            assert_eq!(back, m, "{a:?}");
        }
    }
}

#[test]
fn all_attributes_round_trip_together_in_every_class() {
    for class in [Class::Request, Class::Indication, Class::SuccessResponse, Class::ErrorResponse] {
        let mut m = Message::new(class, METHOD_BINDING, TID).with_fingerprint();
        m.attributes = every_attribute();
        let back = Message::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
    }
}

#[test]
fn integrity_is_parsed_and_later_attributes_ignored() {
    let m = Message::binding_request(TID)
        .with(Attribute::MessageIntegrity(vec![7; 20]))
        .with(Attribute::Software("ignored".into()))
        .with_fingerprint();
    let back = Message::decode(&m.encode()).unwrap();
    assert_eq!(back.attributes, vec![Attribute::MessageIntegrity(vec![7; 20])]);
    assert!(back.fingerprint);
    let m = Message::binding_request(TID).with(Attribute::MessageIntegritySha256(vec![1; 32]));
    assert_eq!(Message::decode(&m.encode()).unwrap(), m);
}

#[test]
fn xor_mapped_address_is_really_xored() {
    let m = Message::binding_request(TID).with(Attribute::XorMappedAddress(v4()));
    let b = m.encode();
    // port 40123 ^ 0x2112
    assert_eq!(u16::from_be_bytes([b[26], b[27]]), 40123 ^ 0x2112);
    assert_eq!(&b[28..32], &[203 ^ 0x21, 0x12, 113 ^ 0xA4, 7 ^ 0x42]);
}

fn sample() -> Vec<u8> {
    Message::new(Class::SuccessResponse, METHOD_BINDING, TID)
        .with(Attribute::XorMappedAddress(v6()))
        .with(Attribute::OtherAddress(v4()))
        .with(Attribute::Software("abc".into()))
        .with_fingerprint()
        .encode()
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    for data in [sample(), rfc5769_request(), rfc5769_ipv4_response(), rfc5769_ipv6_response()] {
        for cut in 0..data.len() {
            let r = Message::decode(&data[..cut]);
            assert!(r.is_err(), "prefix {cut} accepted");
            assert!(!is_stun(&data[..cut]));
        }
    }
}

#[test]
fn truncation_with_length_fixed_up_is_still_an_error_or_a_clean_subset() {
    // An attacker can patch the header length to match a truncated body.
    let data = sample();
    for cut in (HEADER_LEN..data.len()).step_by(1) {
        let mut d = data[..cut].to_vec();
        let len = (cut - HEADER_LEN) as u16;
        d[2..4].copy_from_slice(&len.to_be_bytes());
        match Message::decode(&d) {
            Ok(m) => assert!(!m.fingerprint && m.attributes.len() <= 3),
            Err(e) => assert_ne!(e, StunError::LengthMismatch),
        }
    }
}

#[test]
fn header_errors_are_distinct() {
    let good = sample();
    assert_eq!(Message::decode(&good[..19]), Err(StunError::TooShort));
    assert_eq!(Message::decode(&[]), Err(StunError::TooShort));

    let mut d = good.clone();
    d[0] |= 0x40;
    assert_eq!(Message::decode(&d), Err(StunError::NotStun));
    assert!(!is_stun(&d));

    let mut d = good.clone();
    d[4] = 0x21;
    d[7] = 0x43;
    assert_eq!(Message::decode(&d), Err(StunError::BadMagicCookie));
    assert!(!is_stun(&d));

    let mut d = good.clone();
    d[3] = d[3].wrapping_add(2);
    assert_eq!(Message::decode(&d), Err(StunError::UnalignedLength));
    assert!(!is_stun(&d));

    let mut d = good.clone();
    d[3] = d[3].wrapping_add(4);
    assert_eq!(Message::decode(&d), Err(StunError::LengthMismatch));
    assert!(!is_stun(&d));

    let mut d = good.clone();
    d.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(Message::decode(&d), Err(StunError::LengthMismatch));
}

fn raw_msg(attrs: &[u8]) -> Vec<u8> {
    let mut d = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    d.extend_from_slice(&TID);
    d.extend_from_slice(attrs);
    let len = (d.len() - HEADER_LEN) as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    d
}

#[test]
fn attribute_errors_are_distinct() {
    // Attribute header cut short (declared length 8 but only 4 bytes follow).
    assert_eq!(Message::decode(&raw_msg(&[0, 0x20, 0, 8, 0, 1, 0, 0])), Err(StunError::TruncatedAttribute));
    // Address with IPv4 family but IPv6 length.
    let mut a = vec![0, 0x01, 0, 20, 0, 1, 0, 1];
    a.extend_from_slice(&[0; 16]);
    assert_eq!(Message::decode(&raw_msg(&a)), Err(StunError::BadAttributeLength(attr::MAPPED_ADDRESS)));
    // Address shorter than its fixed part.
    assert_eq!(
        Message::decode(&raw_msg(&[0, 0x20, 0, 0])),
        Err(StunError::BadAttributeLength(attr::XOR_MAPPED_ADDRESS))
    );
    // Unknown family.
    assert_eq!(Message::decode(&raw_msg(&[0, 0x01, 0, 8, 0, 3, 0, 1, 1, 2, 3, 4])), Err(StunError::BadAddressFamily));
    // CHANGE-REQUEST of the wrong size.
    assert_eq!(
        Message::decode(&raw_msg(&[0, 0x03, 0, 8, 0, 0, 0, 6, 0, 0, 0, 0])),
        Err(StunError::BadAttributeLength(attr::CHANGE_REQUEST))
    );
    // RESPONSE-PORT of the wrong size.
    assert_eq!(
        Message::decode(&raw_msg(&[0, 0x27, 0, 2, 0, 1, 0, 0])),
        Err(StunError::BadAttributeLength(attr::RESPONSE_PORT))
    );
    // ERROR-CODE with class 2 and with number 100.
    assert_eq!(Message::decode(&raw_msg(&[0, 0x09, 0, 4, 0, 0, 2, 0])), Err(StunError::BadErrorCode));
    assert_eq!(Message::decode(&raw_msg(&[0, 0x09, 0, 4, 0, 0, 4, 100])), Err(StunError::BadErrorCode));
    assert_eq!(
        Message::decode(&raw_msg(&[0, 0x09, 0, 0])),
        Err(StunError::BadAttributeLength(attr::ERROR_CODE))
    );
    // UNKNOWN-ATTRIBUTES with an odd length.
    assert_eq!(
        Message::decode(&raw_msg(&[0, 0x0A, 0, 3, 0, 1, 2, 0])),
        Err(StunError::BadAttributeLength(attr::UNKNOWN_ATTRIBUTES))
    );
    // MESSAGE-INTEGRITY of the wrong size.
    assert_eq!(
        Message::decode(&raw_msg(&[0, 0x08, 0, 4, 0, 0, 0, 0])),
        Err(StunError::BadAttributeLength(attr::MESSAGE_INTEGRITY))
    );
}

#[test]
fn fingerprint_errors() {
    let good = sample();
    let n = good.len();
    // Corrupt the CRC value itself.
    let mut d = good.clone();
    d[n - 1] ^= 0xFF;
    assert_eq!(Message::decode(&d), Err(StunError::BadFingerprint));
    assert!(is_stun(&d), "is_stun is a cheap check and does not verify CRCs");
    // Corrupt the body (the SOFTWARE text) under the fingerprint.
    let mut d = good.clone();
    d[n - 12] ^= 0x20;
    assert_eq!(Message::decode(&d), Err(StunError::BadFingerprint));
    // Something after FINGERPRINT.
    // (The CRC must be computed with the final header length for the
    // ordering check, not the CRC check, to be the one that fires.)
    let mut d = good[..n - 8].to_vec();
    let len = (n - HEADER_LEN + 4) as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32(&d) ^ FINGERPRINT_XOR;
    d.extend_from_slice(&[0x80, 0x28, 0, 4]);
    d.extend_from_slice(&crc.to_be_bytes());
    d.extend_from_slice(&[0x80, 0x22, 0, 0]);
    assert_eq!(Message::decode(&d), Err(StunError::AttributeAfterFingerprint));
    // FINGERPRINT of the wrong size.
    assert_eq!(
        Message::decode(&raw_msg(&[0x80, 0x28, 0, 0])),
        Err(StunError::BadAttributeLength(attr::FINGERPRINT))
    );
}

#[test]
fn unknown_attributes_optional_skipped_required_reported_once() {
    let d = raw_msg(&[
        0x80, 0x99, 0, 3, 1, 2, 3, 0, // optional, odd length, padded
        0x00, 0x55, 0, 0, // required, empty
        0x00, 0x55, 0, 1, 9, 0, 0, 0, // same type again
        0x00, 0x56, 0, 4, 1, 2, 3, 4,
    ]);
    let m = Message::decode(&d).unwrap();
    assert!(m.attributes.is_empty());
    assert_eq!(m.unknown_required, vec![0x0055, 0x0056]);
}

#[test]
fn is_stun_rejects_quic_and_short_packets() {
    assert!(is_stun(&sample()));
    assert!(!is_stun(&[]));
    assert!(!is_stun(&[0u8; 19]));
    let mut quic_long = sample();
    quic_long[0] = 0xC3;
    assert!(!is_stun(&quic_long));
    let mut quic_short = sample();
    quic_short[0] = 0x43;
    assert!(!is_stun(&quic_short));
    assert!(!is_stun(b"macula punch packet.............."));
}

#[test]
fn error_display_and_reason_labels_are_distinct() {
    let all = [
        StunError::TooShort,
        StunError::NotStun,
        StunError::BadMagicCookie,
        StunError::UnalignedLength,
        StunError::LengthMismatch,
        StunError::TruncatedAttribute,
        StunError::BadAttributeLength(1),
        StunError::BadAddressFamily,
        StunError::BadErrorCode,
        StunError::AttributeAfterFingerprint,
        StunError::BadFingerprint,
        StunError::TooManyAttributes,
    ];
    let mut labels: Vec<_> = all.iter().map(|e| e.reason()).collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), all.len());
    assert!(StunError::BadAttributeLength(0x20).to_string().contains("0x0020"));
}

use crate::rng::XorShift;

/// Stand-in for the fuzz target on stable: many random and mutated inputs.
/// The decoder must never panic, and whatever it accepts must re-encode to
/// something that decodes to the same message.
#[test]
fn randomized_inputs_never_panic_and_accepted_ones_round_trip() {
    let seeds = [sample(), rfc5769_request(), rfc5769_ipv4_response(), rfc5769_ipv6_response(), {
        let mut m = Message::new(Class::SuccessResponse, METHOD_BINDING, TID);
        m.attributes = every_attribute();
        m.encode()
    }];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for i in 0..200_000u32 {
        let mut d = seeds[(i as usize) % seeds.len()].clone();
        match rng.next() % 6 {
            0 => {
                // Pure random bytes, sometimes with a valid header prefix.
                let n = (rng.next() % 120) as usize;
                d = (0..n).map(|_| rng.next() as u8).collect();
                if n >= HEADER_LEN && rng.next() % 2 == 0 {
                    d[0] &= 0x3F;
                    d[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                    let len = ((n - HEADER_LEN) & !3) as u16;
                    d.truncate(HEADER_LEN + len as usize);
                    d[2..4].copy_from_slice(&len.to_be_bytes());
                }
            }
            1 => {
                let flips = 1 + rng.next() % 4;
                for _ in 0..flips {
                    let at = (rng.next() as usize) % d.len();
                    d[at] ^= 1 << (rng.next() % 8);
                }
            }
            2 => {
                // Mutate an attribute length field region (after the header).
                let at = HEADER_LEN + (rng.next() as usize) % (d.len() - HEADER_LEN);
                d[at] = rng.next() as u8;
            }
            3 => {
                let cut = (rng.next() as usize) % d.len();
                d.truncate(cut);
            }
            4 => {
                // Drop the fingerprint and fix the length so attribute-level
                // mutations are reached without the CRC masking them.
                if d.len() >= HEADER_LEN + 8 && d[d.len() - 8..d.len() - 6] == [0x80, 0x28] {
                    d.truncate(d.len() - 8);
                }
                let at = HEADER_LEN + (rng.next() as usize) % (d.len() - HEADER_LEN).max(1);
                if at < d.len() {
                    d[at] = rng.next() as u8;
                }
                let len = (d.len().saturating_sub(HEADER_LEN)) as u16;
                if d.len() >= 4 {
                    d[2..4].copy_from_slice(&len.to_be_bytes());
                }
            }
            _ => {
                let extra = (rng.next() % 9) as usize;
                d.extend((0..extra).map(|_| rng.next() as u8));
            }
        }
        let ok_header = is_stun(&d);
        if let Ok(m) = Message::decode(&d) {
            accepted += 1;
            assert!(ok_header, "decode accepted what is_stun rejects");
            let again = Message::decode(&m.encode()).expect("re-encoded message must decode");
            assert_eq!(again.attributes, m.attributes);
            assert_eq!((again.class, again.method, again.transaction_id), (m.class, m.method, m.transaction_id));
        }
    }
    assert!(accepted > 1000, "mutations too destructive to be useful: {accepted}");
}


#[test]
fn punch_token_wire_format_and_errors() {
    let tok = PunchToken { session: SessionId::from_bytes([1; 16]), sender: NodeId::from_bytes([2; 32]), flags: PunchToken::NOMINATE };
    let m = Message::binding_request(TID).with(Attribute::PunchToken(tok)).with_fingerprint();
    let bytes = m.encode();
    // header, then type 0xC4A1, length 52, value, no padding needed
    assert_eq!(&bytes[20..24], &[0xC4, 0xA1, 0, 52]);
    assert_eq!(&bytes[24..40], &[1; 16]);
    assert_eq!(&bytes[40..72], &[2; 32]);
    assert_eq!(&bytes[72..76], &[1, 0, 0, 0]);
    let back = Message::decode(&bytes).unwrap();
    assert_eq!(back.punch_token(), Some(tok));
    assert!(back.punch_token().unwrap().nominate());
    assert!(back.unknown_required.is_empty());
    assert!(!attr::is_comprehension_required(attr::PUNCH_TOKEN));
    // reserved bytes are ignored on receipt
    let mut v = vec![9u8; PunchToken::LEN];
    v[48] = 0;
    let mut raw = Vec::new();
    raw.extend_from_slice(&attr::PUNCH_TOKEN.to_be_bytes());
    raw.extend_from_slice(&(PunchToken::LEN as u16).to_be_bytes());
    raw.extend_from_slice(&v);
    let m = Message::decode(&raw_msg(&raw)).unwrap();
    assert_eq!(m.punch_token(), Some(PunchToken { session: SessionId::from_bytes([9; 16]), sender: NodeId::from_bytes([9; 32]), flags: 0 }));
    // any other length is rejected
    for len in [0usize, 4, 48, 51, 56] {
        let mut raw = Vec::new();
        raw.extend_from_slice(&attr::PUNCH_TOKEN.to_be_bytes());
        raw.extend_from_slice(&(len as u16).to_be_bytes());
        raw.resize(4 + ((len + 3) & !3), 0);
        assert_eq!(Message::decode(&raw_msg(&raw)), Err(StunError::BadAttributeLength(attr::PUNCH_TOKEN)), "len {len}");
    }
}

/// RFC 8656 §18: the TURN attributes' values on the wire, checked by hand
/// against the RFC's layouts (what coturn reads and writes).
#[test]
fn turn_attributes_have_the_rfc_layout() {
    let tid = TID;
    let m = Message::new(Class::Request, METHOD_CHANNEL_BIND, tid)
        .with(Attribute::ChannelNumber(0x4001))
        .with(Attribute::XorPeerAddress("192.0.2.1:32853".parse().unwrap()))
        .with(Attribute::Lifetime(0))
        .with(Attribute::RequestedTransport(17));
    let b = m.encode();
    // ChannelBind request: method 0x009, class request.
    assert_eq!(&b[0..2], &[0x00, 0x09]);
    let body = &b[HEADER_LEN..];
    // CHANNEL-NUMBER: number, then RFFU zeros.
    assert_eq!(&body[0..8], &[0x00, 0x0C, 0x00, 0x04, 0x40, 0x01, 0x00, 0x00]);
    // XOR-PEER-ADDRESS: family 1, port ^ 0x2112, address ^ cookie.
    let port = 32853u16 ^ 0x2112;
    let ip = u32::from_be_bytes([192, 0, 2, 1]) ^ MAGIC_COOKIE;
    let mut want = vec![0x00, 0x12, 0x00, 0x08, 0x00, 0x01];
    want.extend_from_slice(&port.to_be_bytes());
    want.extend_from_slice(&ip.to_be_bytes());
    assert_eq!(&body[8..20], &want[..]);
    // LIFETIME: seconds, 32 bits.
    assert_eq!(&body[20..28], &[0x00, 0x0D, 0x00, 0x04, 0, 0, 0, 0]);
    // REQUESTED-TRANSPORT: protocol, then RFFU.
    assert_eq!(&body[28..36], &[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    // An Allocate answer's relayed address is found.
    let ok = Message::new(Class::SuccessResponse, METHOD_ALLOCATE, tid).with(Attribute::XorRelayedAddress(v4()));
    assert_eq!(Message::decode(&ok.encode()).unwrap().relayed_address(), Some(v4()));
    // Wrong lengths are refused, not guessed at.
    for (t, len) in [(attr::CHANNEL_NUMBER, 2usize), (attr::LIFETIME, 8), (attr::REQUESTED_TRANSPORT, 1)] {
        let mut raw = Message::binding_request(tid).encode();
        raw.extend_from_slice(&t.to_be_bytes());
        raw.extend_from_slice(&(len as u16).to_be_bytes());
        raw.resize(raw.len() + ((len + 3) & !3), 0);
        let l = (raw.len() - HEADER_LEN) as u16;
        raw[2..4].copy_from_slice(&l.to_be_bytes());
        assert_eq!(Message::decode(&raw), Err(StunError::BadAttributeLength(t)), "{t:#06x}");
    }
}

// RFC 3489 ("classic") messages: no magic cookie, a 128-bit transaction id.

const CLASSIC_ID: [u8; 16] = [0x5a, 0x01, 0x02, 0x03, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

// A Binding request as Debian's `stun` 0.97 client sends test II: 16-byte
// transaction id, CHANGE-REQUEST (change IP and port).
fn classic_request() -> Vec<u8> {
    hex("00 01 00 08 5a 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f
         00 03 00 04 00 00 00 06")
}

// An RFC 3489 Binding response: MAPPED-ADDRESS 203.0.113.5:40000,
// SOURCE-ADDRESS 198.51.100.1:3478, CHANGED-ADDRESS 198.51.100.2:3479.
fn classic_response() -> Vec<u8> {
    hex("01 01 00 24 5a 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f
         00 01 00 08 00 01 9c 40 cb 00 71 05
         00 04 00 08 00 01 0d 96 c6 33 64 01
         00 05 00 08 00 01 0d 97 c6 33 64 02")
}

#[test]
fn classic_request_bytes_decode_only_with_decode_any_and_round_trip() {
    let d = classic_request();
    assert_eq!(Message::decode(&d), Err(StunError::BadMagicCookie), "the strict decoder stays RFC 8489");
    let m = Message::decode_any(&d).unwrap();
    assert_eq!((m.class, m.method), (Class::Request, METHOD_BINDING));
    assert_eq!(m.classic, Some([0x5a, 1, 2, 3]));
    assert_eq!(m.classic_transaction_id(), Some(CLASSIC_ID));
    assert_eq!(m.change_request(), Some((true, true)));
    assert!(!m.fingerprint && m.unknown_required.is_empty());
    assert_eq!(m.encode(), d, "re-encodes byte for byte");
    let built = Message::classic(Class::Request, METHOD_BINDING, CLASSIC_ID)
        .with(Attribute::ChangeRequest { change_ip: true, change_port: true });
    assert_eq!(built, m);
    assert_eq!(built.encode(), d);
}

#[test]
fn classic_response_bytes_round_trip() {
    let d = classic_response();
    let m = Message::decode_any(&d).unwrap();
    assert_eq!(m.class, Class::SuccessResponse);
    assert_eq!(m.classic_transaction_id(), Some(CLASSIC_ID));
    let mapped: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    assert_eq!(m.mapped_address(), Some(mapped));
    assert_eq!(m.other_address(), Some("198.51.100.2:3479".parse().unwrap()), "CHANGED-ADDRESS stands in for OTHER-ADDRESS");
    assert_eq!(
        m.attributes,
        vec![
            Attribute::MappedAddress(mapped),
            Attribute::SourceAddress("198.51.100.1:3478".parse().unwrap()),
            Attribute::ChangedAddress("198.51.100.2:3479".parse().unwrap()),
        ]
    );
    assert_eq!(m.encode(), d);
    let built = Message::classic(Class::SuccessResponse, METHOD_BINDING, CLASSIC_ID)
        .with(Attribute::MappedAddress(mapped))
        .with(Attribute::SourceAddress("198.51.100.1:3478".parse().unwrap()))
        .with(Attribute::ChangedAddress("198.51.100.2:3479".parse().unwrap()));
    assert_eq!(built.encode(), d);
}

#[test]
fn classic_constructor_with_the_cookie_is_an_rfc8489_message() {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    id[4..].copy_from_slice(&TID);
    let m = Message::classic(Class::Request, METHOD_BINDING, id);
    assert_eq!(m.classic, None);
    assert_eq!(m, Message::binding_request(TID));
    assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    assert_eq!(Message::decode_any(&m.encode()).unwrap(), m);
    assert_eq!(Message::decode_any(&rfc5769_ipv4_response()).unwrap(), Message::decode(&rfc5769_ipv4_response()).unwrap());
}

#[test]
fn classic_messages_survive_truncation_and_errors_like_rfc8489_ones() {
    let d = classic_response();
    for cut in 0..d.len() {
        assert!(Message::decode_any(&d[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = d.clone();
    bad[2..4].copy_from_slice(&0x26u16.to_be_bytes());
    assert_eq!(Message::decode_any(&bad), Err(StunError::UnalignedLength));
    let mut quic = d.clone();
    quic[0] |= 0x40;
    assert_eq!(Message::decode_any(&quic), Err(StunError::NotStun));
    // An unknown comprehension-required attribute (RFC 3489's
    // RESPONSE-ADDRESS, 0x0002) is reported, as for RFC 8489 messages.
    let mut with_ra = classic_request();
    with_ra.extend_from_slice(&hex("00 02 00 08 00 01 13 88 c0 00 02 01"));
    let body = (with_ra.len() - 20) as u16;
    with_ra[2..4].copy_from_slice(&body.to_be_bytes());
    assert_eq!(Message::decode_any(&with_ra).unwrap().unknown_required, vec![0x0002]);
}

#[test]
fn classic_binding_request_demux() {
    assert!(is_classic_binding_request(&classic_request()));
    assert!(!is_stun(&classic_request()), "is_stun stays RFC 8489 only");
    let plain = hex("00 01 00 00 5a 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f");
    assert!(is_classic_binding_request(&plain));
    assert!(!is_classic_binding_request(&classic_response()), "responses are not requests");
    assert!(!is_classic_binding_request(&Message::binding_request(TID).encode()), "cookie: RFC 8489");
    assert!(!is_classic_binding_request(&plain[..19]));
    let mut long = plain.clone();
    long.extend_from_slice(&[0, 0, 0, 0]);
    assert!(!is_classic_binding_request(&long), "length must match");
    let mut quic = plain.clone();
    quic[0] = 0x40;
    assert!(!is_classic_binding_request(&quic));
}

/// The largest STUN datagram a UDP packet can carry (65,507 bytes of IPv4
/// payload), filled with 4-byte attributes of distinct unknown
/// comprehension-required types: the most attributes a peer can make us
/// look at in one datagram.
fn max_attribute_datagram() -> Vec<u8> {
    let body = (65_507 - HEADER_LEN) & !3;
    let mut d = Message::binding_request(TID).encode();
    for i in 0..body / 4 {
        // 0x0030.. skips every type we know below 0x8000.
        d.extend_from_slice(&(0x0030u16 + i as u16 % 0x7F00).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
    }
    let len = (d.len() - HEADER_LEN) as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    d
}

/// A message with `n` attributes of distinct unknown required types.
fn with_unknown_attributes(n: usize) -> Vec<u8> {
    let mut d = Message::binding_request(TID).encode();
    for i in 0..n {
        d.extend_from_slice(&(0x0030u16 + i as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
    }
    let len = (d.len() - HEADER_LEN) as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    d
}

#[test]
fn attribute_count_is_capped() {
    let m = Message::decode(&with_unknown_attributes(MAX_ATTRIBUTES)).unwrap();
    assert_eq!(m.unknown_required.len(), MAX_ATTRIBUTES);
    assert_eq!(Message::decode(&with_unknown_attributes(MAX_ATTRIBUTES + 1)), Err(StunError::TooManyAttributes));
    assert_eq!(Message::decode_any(&with_unknown_attributes(MAX_ATTRIBUTES + 1)), Err(StunError::TooManyAttributes));
    // FINGERPRINT counts too: 63 + FINGERPRINT is fine, 64 + FINGERPRINT not.
    let mut m = Message::binding_request(TID).with_fingerprint();
    m.attributes = (0..MAX_ATTRIBUTES as u16 - 1).map(Attribute::Padding).collect();
    assert!(Message::decode(&m.encode()).is_ok());
    m.attributes.push(Attribute::Padding(0));
    assert_eq!(Message::decode(&m.encode()), Err(StunError::TooManyAttributes));
    // Every message we build is far below the cap.
    let mut full = Message::new(Class::SuccessResponse, METHOD_BINDING, TID).with_fingerprint();
    full.attributes = every_attribute();
    assert!(full.attributes.len() < MAX_ATTRIBUTES);
    assert!(Message::decode(&full.encode()).is_ok());
}

/// Before the cap this took 4.1 ms (release, this machine): the duplicate
/// check of 16,371 unknown attributes is quadratic. Now it stops at
/// attribute 65. The bound asserted is generous (a loaded 2-core machine);
/// the figure is printed.
#[test]
fn worst_case_decode_time_is_bounded() {
    let d = max_attribute_datagram();
    assert!(is_stun(&d));
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..100 {
        let t = std::time::Instant::now();
        let r = Message::decode_any(std::hint::black_box(&d));
        worst = worst.max(t.elapsed());
        assert_eq!(r, Err(StunError::TooManyAttributes));
    }
    println!("STUN-DECODE-WORST {} bytes: {:?} (worst of 100)", d.len(), worst);
    assert!(worst < std::time::Duration::from_millis(1), "{worst:?}");
}
