use super::*;
use crate::nat::{Allocation, Confidence, Filtering, Mapping};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sample() -> RecordBody {
    RecordBody {
        node_id: NodeId::from_bytes([7; 32]),
        seq: 1_700_000_000_123_456,
        issued_at: 1_700_000_000,
        ttl_s: 3600,
        info: PeerInfo {
            mapping: Mapping::Ei,
            filtering: Filtering::Pd,
            allocation: Allocation::Pc,
            confidence: Confidence::High,
            public_addr: Some(addr("203.0.113.5:4433")),
            port_delta: Some(-2),
            no_nat: false,
            detected_at: 1_699_999_990,
            endpoints: vec![addr("203.0.113.5:4433"), addr("[2001:db8::1]:9")],
            rendezvous: vec![addr("198.51.100.1:3478")],
        },
        relay: None,
        contacts: Contacts::default(),
    }
}

fn relay_sample() -> RecordBody {
    RecordBody { relay: Some(RelayAd { addr: addr("203.0.113.5:4433"), load_permille: 350 }), ..sample() }
}

#[test]
fn body_roundtrips() {
    let b = sample();
    let bytes = b.encode().unwrap();
    assert_eq!(RecordBody::decode(Version::V1, &bytes).unwrap(), b);
}

#[test]
fn minimal_body_roundtrips() {
    let mut b = sample();
    b.info.public_addr = None;
    b.info.port_delta = None;
    b.info.no_nat = true;
    b.info.endpoints.clear();
    b.info.rendezvous.clear();
    let bytes = b.encode().unwrap();
    assert_eq!(RecordBody::decode(Version::V1, &bytes).unwrap(), b);
}

#[test]
fn every_enum_value_roundtrips() {
    for m in Mapping::ALL {
        for f in Filtering::ALL {
            for a in Allocation::ALL {
                for c in [Confidence::Low, Confidence::Medium, Confidence::High] {
                    let mut b = sample();
                    b.info.mapping = m;
                    b.info.filtering = f;
                    b.info.allocation = a;
                    b.info.confidence = c;
                    assert_eq!(RecordBody::decode(Version::V1, &b.encode().unwrap()).unwrap(), b);
                }
            }
        }
    }
}

#[test]
fn largest_record_fits_bep44() {
    let mut b = sample();
    b.info.public_addr = Some(addr("[2001:db8::1]:1"));
    b.info.endpoints = vec![addr("[2001:db8::1]:1"); MAX_ADDRS];
    b.info.rendezvous = vec![addr("[2001:db8::2]:2"); MAX_ADDRS];
    let body = b.encode().unwrap();
    let rec = frame(Version::V1, &body, &[0; 64]);
    assert!(rec.len() <= 1000, "{} bytes", rec.len());
    b.relay = Some(RelayAd { addr: addr("[2001:db8::3]:3"), load_permille: 1000 });
    let body = b.encode().unwrap();
    let rec = frame(Version::V2, &body, &[0; 64]);
    assert!(rec.len() <= 1000, "v2: {} bytes", rec.len());
}

#[test]
fn too_many_addrs_refused_both_ways() {
    let mut b = sample();
    b.info.endpoints = vec![addr("1.2.3.4:5"); MAX_ADDRS + 1];
    assert_eq!(b.encode(), Err(RecordError::TooManyAddrs));
    // A hand-made body that claims 17 addresses.
    let mut ok = sample();
    ok.info.endpoints.clear();
    ok.info.rendezvous.clear();
    let mut bytes = ok.encode().unwrap();
    let n = bytes.len();
    bytes[n - 2] = (MAX_ADDRS + 1) as u8;
    assert_eq!(RecordBody::decode(Version::V1, &bytes), Err(RecordError::TooManyAddrs));
}

#[test]
fn frame_unframe() {
    let body = sample().encode().unwrap();
    let rec = frame(Version::V1, &body, &[9; 64]);
    let (v, b, s) = unframe(&rec).unwrap();
    assert_eq!(v, Version::V1);
    assert_eq!(b, &body[..]);
    assert_eq!(s, [9; 64]);
    assert_eq!(unframe(&rec[..rec.len() - 1]), Err(RecordError::Truncated));
    let mut longer = rec.clone();
    longer.push(0);
    assert_eq!(unframe(&longer), Err(RecordError::TrailingBytes));
    let mut bad = rec.clone();
    bad[0] = b'X';
    assert_eq!(unframe(&bad), Err(RecordError::BadMagic));
    assert_eq!(unframe(&[]), Err(RecordError::Truncated));
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    for b in [sample(), relay_sample()] {
        let (v, body) = (b.version(), b.encode().unwrap());
        for n in 0..body.len() {
            assert!(RecordBody::decode(v, &body[..n]).is_err(), "{v:?} prefix {n}");
        }
        let mut longer = body.clone();
        longer.push(1);
        assert_eq!(RecordBody::decode(v, &longer), Err(RecordError::TrailingBytes));
    }
}

#[test]
fn every_single_byte_corruption_is_safe() {
    // Decoding arbitrary corruptions must never panic; when it succeeds the
    // result must re-encode to the same bytes (canonical form) in the
    // same version.
    for b in [sample(), relay_sample()] {
        let (ver, body) = (b.version(), b.encode().unwrap());
        for i in 0..body.len() {
            for v in [0u8, 1, 2, 3, 4, 6, 7, 0x80, 0xff] {
                let mut c = body.clone();
                c[i] = v;
                if let Ok(d) = RecordBody::decode(ver, &c) {
                    assert_eq!(d.version(), ver, "byte {i} = {v}");
                    assert_eq!(d.encode().unwrap(), c, "byte {i} = {v}");
                }
            }
        }
    }
}

#[test]
fn signing_input_is_domain_separated() {
    let body = sample().encode().unwrap();
    let m = signing_input(Version::V1, &body);
    assert!(m.starts_with(SIGNING_CONTEXT));
    assert_eq!(&m[SIGNING_CONTEXT.len()..], &body[..]);
    // The versions sign different messages for the same bytes.
    let m2 = signing_input(Version::V2, &body);
    assert!(m2.starts_with(SIGNING_CONTEXT_V2));
    assert_ne!(m, m2);
    assert_eq!(SIGNING_CONTEXT.len(), SIGNING_CONTEXT_V2.len());
}

#[test]
fn acceptance_rule() {
    let b = sample();
    let now = b.issued_at + 10;
    assert_eq!(check(&b, &NodeId::from_bytes([7; 32]), now, None), Ok(()));
    assert_eq!(check(&b, &NodeId::from_bytes([8; 32]), now, None), Err(Rejection::WrongNode));
    assert_eq!(check(&b, &NodeId::from_bytes([7; 32]), b.expires_at(), None), Err(Rejection::Expired));
    assert_eq!(check(&b, &NodeId::from_bytes([7; 32]), b.issued_at - MAX_SKEW_S - 1, None), Err(Rejection::FromTheFuture));
    assert_eq!(check(&b, &NodeId::from_bytes([7; 32]), b.issued_at - MAX_SKEW_S, None), Ok(()));
    assert_eq!(check(&b, &NodeId::from_bytes([7; 32]), now, Some(b.seq + 1)), Err(Rejection::Replayed));
    // The same record again is not a replay (a refresh may fetch it twice).
    assert_eq!(check(&b, &NodeId::from_bytes([7; 32]), now, Some(b.seq)), Ok(()));
}

#[test]
fn a_relay_advertisement_makes_the_body_v2_and_roundtrips() {
    let b = relay_sample();
    assert_eq!(b.version(), Version::V2);
    assert_eq!(sample().version(), Version::V1);
    let bytes = b.encode().unwrap();
    assert_eq!(RecordBody::decode(Version::V2, &bytes).unwrap(), b);
    // v2 = the v1 body of the same fields plus the extension: a node that
    // stops relaying goes back to exactly the v1 bytes.
    let v1 = sample().encode().unwrap();
    let mut ext = vec![1, 0x01, 0x5e];
    ext.extend_from_slice(&[4, 203, 0, 113, 5, 0x11, 0x51]);
    assert_eq!(bytes, [v1.clone(), ext].concat());
    // Read in the wrong layout, neither is accepted.
    assert_eq!(RecordBody::decode(Version::V1, &bytes), Err(RecordError::TrailingBytes));
    assert_eq!(RecordBody::decode(Version::V2, &v1), Err(RecordError::Truncated));
    for load in [0, 1000] {
        let mut b = relay_sample();
        b.relay.as_mut().unwrap().load_permille = load;
        b.relay.as_mut().unwrap().addr = addr("[2001:db8::7]:1");
        assert_eq!(RecordBody::decode(Version::V2, &b.encode().unwrap()).unwrap(), b);
    }
}

#[test]
fn relay_extension_is_canonical() {
    let mut b = relay_sample();
    b.relay.as_mut().unwrap().load_permille = 1001;
    assert_eq!(b.encode(), Err(RecordError::BadLoad));
    let good = relay_sample().encode().unwrap();
    let ext_at = sample().encode().unwrap().len();
    // ext 0 would be a v2 body saying nothing more than v1 (a second
    // encoding), bits above the contact lists are undefined.
    for ext in [0u8, 8, 0x80, 0xff] {
        let mut c = good.clone();
        c[ext_at] = ext;
        assert_eq!(RecordBody::decode(Version::V2, &c), Err(RecordError::BadEnum), "ext {ext}");
    }
    // The contact bits are defined, but a relay advertisement does not
    // read as a contact list.
    for ext in [2u8, 3] {
        let mut c = good.clone();
        c[ext_at] = ext;
        assert!(RecordBody::decode(Version::V2, &c).is_err(), "ext {ext}");
    }
    let mut c = good.clone();
    c[ext_at + 1..ext_at + 3].copy_from_slice(&1001u16.to_be_bytes());
    assert_eq!(RecordBody::decode(Version::V2, &c), Err(RecordError::BadLoad));
    let mut c = good.clone();
    c[ext_at + 3] = 5;
    assert_eq!(RecordBody::decode(Version::V2, &c), Err(RecordError::BadAddress));
}

#[test]
fn v2_frames_under_its_own_magic() {
    let body = relay_sample().encode().unwrap();
    let rec = frame(Version::V2, &body, &[3; 64]);
    assert_eq!(&rec[..4], b"MNR2");
    let (v, b, s) = unframe(&rec).unwrap();
    assert_eq!((v, b, s), (Version::V2, &body[..], [3; 64]));
    let mut other = rec.clone();
    other[3] = b'3';
    assert_eq!(unframe(&other), Err(RecordError::BadMagic));
}

#[test]
fn a_mapping_the_rendezvous_sees_at_another_port_is_not_endpoint_independent() {
    let info = sample().info;
    assert_eq!(info.mapping, Mapping::Ei);
    // Same address as detected: unchanged but for the public address.
    let same = info.as_seen_by_rendezvous(Some(addr("203.0.113.5:4433")), None);
    assert_eq!(same, info);
    // Another port at the same IP (port overloading): per destination.
    let moved = info.as_seen_by_rendezvous(Some(addr("203.0.113.5:39929")), None);
    assert_eq!(moved.mapping, Mapping::Hd);
    assert_eq!(moved.confidence, Confidence::Medium);
    assert_eq!(moved.public_addr, Some(addr("203.0.113.5:39929")));
    assert_eq!((moved.filtering, moved.allocation), (info.filtering, info.allocation));
    // Another IP (a NAT with several public addresses, or a move): only
    // the address is taken; the detector follows network changes.
    let other_ip = info.as_seen_by_rendezvous(Some(addr("198.51.100.1:4433")), None);
    assert_eq!(other_ip.mapping, Mapping::Ei);
    // Not observed yet, or no detection: nothing to compare.
    assert_eq!(info.as_seen_by_rendezvous(None, Some(1)).mapping, Mapping::Ei);
    let mut undetected = info.clone();
    undetected.public_addr = None;
    assert_eq!(undetected.as_seen_by_rendezvous(Some(addr("203.0.113.5:1")), None).mapping, Mapping::Ei);
    // A per-destination mapping stays what it is.
    let mut pd = info.clone();
    pd.mapping = Mapping::Pd;
    assert_eq!(pd.as_seen_by_rendezvous(Some(addr("203.0.113.5:1")), Some(4433)).mapping, Mapping::Pd);
    // A port-preserving NAT that did not keep the socket's own port: taken.
    let mut pp = info.clone();
    pp.allocation = Allocation::Pp;
    let seen = Some(addr("203.0.113.5:4433"));
    assert_eq!(pp.as_seen_by_rendezvous(seen, Some(4433)).mapping, Mapping::Ei);
    assert_eq!(pp.as_seen_by_rendezvous(seen, Some(4500)).mapping, Mapping::Hd);
    // ... not for other allocations (they never keep it), nor public hosts.
    assert_eq!(info.as_seen_by_rendezvous(seen, Some(4500)).mapping, Mapping::Ei);
    pp.no_nat = true;
    assert_eq!(pp.as_seen_by_rendezvous(seen, Some(4500)).mapping, Mapping::Ei);
}

fn contact(b: u8, a: &str) -> Contact {
    Contact { node_id: NodeId::from_bytes([b; 32]), addr: addr(a) }
}

fn contacts_sample() -> RecordBody {
    RecordBody {
        contacts: Contacts {
            rendezvous: vec![contact(1, "198.51.100.1:3478"), contact(2, "[2001:db8::2]:3478")],
            reserved: vec![contact(3, "203.0.113.9:4433")],
        },
        ..sample()
    }
}

#[test]
fn contacts_make_the_body_v2_and_roundtrip_with_or_without_a_relay_ad() {
    let b = contacts_sample();
    assert_eq!(b.version(), Version::V2);
    assert_eq!(RecordBody::decode(Version::V2, &b.encode().unwrap()).unwrap(), b);
    let both = RecordBody { relay: relay_sample().relay, ..contacts_sample() };
    assert_eq!(RecordBody::decode(Version::V2, &both.encode().unwrap()).unwrap(), both);
    // Only one of the lists: only its bit.
    let mut only = contacts_sample();
    only.contacts.rendezvous.clear();
    let bytes = only.encode().unwrap();
    let v1_len = sample().encode().unwrap().len();
    assert_eq!(bytes[v1_len], 4);
    assert_eq!(RecordBody::decode(Version::V2, &bytes).unwrap(), only);
    // A relay-only record keeps exactly the bytes it had before contacts.
    assert_eq!(relay_sample().encode().unwrap()[v1_len], 1);
}

#[test]
fn contact_lists_are_capped_and_never_empty_under_their_bit() {
    let mut b = contacts_sample();
    b.contacts.rendezvous = vec![contact(1, "198.51.100.1:1"); MAX_CONTACTS + 1];
    assert_eq!(b.encode(), Err(RecordError::TooManyAddrs));
    let ok = contacts_sample();
    let v1_len = sample().encode().unwrap().len();
    let mut bytes = ok.encode().unwrap();
    // The rendezvous count, right after ext.
    bytes[v1_len + 1] = (MAX_CONTACTS + 1) as u8;
    assert_eq!(RecordBody::decode(Version::V2, &bytes), Err(RecordError::TooManyAddrs));
    bytes[v1_len + 1] = 0;
    assert_eq!(RecordBody::decode(Version::V2, &bytes), Err(RecordError::BadEnum));
    // Unknown ext bits are refused.
    let mut bytes = ok.encode().unwrap();
    bytes[v1_len] |= 8;
    assert_eq!(RecordBody::decode(Version::V2, &bytes), Err(RecordError::BadEnum));
}

#[test]
fn contact_corruptions_are_safe_and_canonical() {
    let b = contacts_sample();
    let body = b.encode().unwrap();
    for i in 0..body.len() {
        for v in [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 0x80, 0xff] {
            let mut c = body.clone();
            c[i] = v;
            if let Ok(d) = RecordBody::decode(Version::V2, &c) {
                assert_eq!(d.encode().unwrap(), c, "byte {i} = {v}");
            }
        }
    }
    for n in 0..body.len() {
        assert!(RecordBody::decode(Version::V2, &body[..n]).is_err(), "prefix {n}");
    }
}

#[test]
fn fit_trims_the_largest_body_to_bep44_keeping_one_of_each() {
    let mut b = sample();
    b.info.public_addr = Some(addr("[2001:db8::1]:1"));
    b.info.endpoints = vec![addr("[2001:db8::1]:1"); MAX_ADDRS + 3];
    b.info.rendezvous = vec![addr("[2001:db8::2]:2"); MAX_ADDRS];
    b.relay = Some(RelayAd { addr: addr("[2001:db8::3]:3"), load_permille: 1000 });
    b.contacts.rendezvous = vec![contact(1, "[2001:db8::4]:4"); MAX_CONTACTS + 2];
    b.contacts.reserved = vec![contact(2, "[2001:db8::5]:5"); MAX_CONTACTS];
    assert!(b.encode().is_err());
    b.fit();
    let body = b.encode().unwrap();
    assert!(framed_len(body.len()) <= MAX_RECORD);
    assert_eq!(b.contacts.rendezvous.len(), MAX_CONTACTS, "rendezvous contacts are what a reader needs most");
    assert!(!b.contacts.reserved.is_empty() && !b.info.endpoints.is_empty());
    // A body that fits is left alone.
    let mut small = contacts_sample();
    small.fit();
    assert_eq!(small, contacts_sample());
    // A decoded body is never over the bound (so it always encodes again).
    let mut big = vec![0u8; MAX_RECORD];
    big[0] = 1;
    assert_eq!(RecordBody::decode(Version::V2, &big), Err(RecordError::TooLarge));
}
