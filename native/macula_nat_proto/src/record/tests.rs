use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sample() -> RecordBody {
    RecordBody {
        node_id: [7; 32],
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
    }
}

#[test]
fn body_roundtrips() {
    let b = sample();
    let bytes = b.encode().unwrap();
    assert_eq!(RecordBody::decode(&bytes).unwrap(), b);
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
    assert_eq!(RecordBody::decode(&bytes).unwrap(), b);
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
                    assert_eq!(RecordBody::decode(&b.encode().unwrap()).unwrap(), b);
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
    let rec = frame(&body, &[0; 64]);
    assert!(rec.len() <= 1000, "{} bytes", rec.len());
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
    assert_eq!(RecordBody::decode(&bytes), Err(RecordError::TooManyAddrs));
}

#[test]
fn frame_unframe() {
    let body = sample().encode().unwrap();
    let rec = frame(&body, &[9; 64]);
    let (b, s) = unframe(&rec).unwrap();
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
    let body = sample().encode().unwrap();
    for n in 0..body.len() {
        assert!(RecordBody::decode(&body[..n]).is_err(), "prefix {n}");
    }
    let mut longer = body.clone();
    longer.push(1);
    assert_eq!(RecordBody::decode(&longer), Err(RecordError::TrailingBytes));
}

#[test]
fn every_single_byte_corruption_is_safe() {
    // Decoding arbitrary corruptions must never panic; when it succeeds the
    // result must re-encode to the same bytes (canonical form).
    let body = sample().encode().unwrap();
    for i in 0..body.len() {
        for v in [0u8, 1, 2, 3, 4, 6, 7, 0x80, 0xff] {
            let mut c = body.clone();
            c[i] = v;
            if let Ok(d) = RecordBody::decode(&c) {
                assert_eq!(d.encode().unwrap(), c, "byte {i} = {v}");
            }
        }
    }
}

#[test]
fn signing_input_is_domain_separated() {
    let body = sample().encode().unwrap();
    let m = signing_input(&body);
    assert!(m.starts_with(SIGNING_CONTEXT));
    assert_eq!(&m[SIGNING_CONTEXT.len()..], &body[..]);
}

#[test]
fn acceptance_rule() {
    let b = sample();
    let now = b.issued_at + 10;
    assert_eq!(check(&b, &[7; 32], now, None), Ok(()));
    assert_eq!(check(&b, &[8; 32], now, None), Err(Rejection::WrongNode));
    assert_eq!(check(&b, &[7; 32], b.expires_at(), None), Err(Rejection::Expired));
    assert_eq!(check(&b, &[7; 32], b.issued_at - MAX_SKEW_S - 1, None), Err(Rejection::FromTheFuture));
    assert_eq!(check(&b, &[7; 32], b.issued_at - MAX_SKEW_S, None), Ok(()));
    assert_eq!(check(&b, &[7; 32], now, Some(b.seq + 1)), Err(Rejection::Replayed));
    // The same record again is not a replay (a refresh may fetch it twice).
    assert_eq!(check(&b, &[7; 32], now, Some(b.seq)), Ok(()));
}
