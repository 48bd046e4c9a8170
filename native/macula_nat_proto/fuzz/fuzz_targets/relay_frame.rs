//! Relay data frames are recognised by their first byte on the receive path
//! of every datagram of the node socket. The accessors must never panic and
//! must agree with each other; a frame re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use macula_nat_proto::relay::frame;

fuzz_target!(|data: &[u8]| {
    let is = frame::is_frame(data);
    let session = frame::session_of(data);
    let payload = frame::payload(data);
    assert_eq!(is, session.is_some());
    assert_eq!(is, payload.is_some());
    if let (Some(s), Some(p)) = (session, payload) {
        assert_eq!(p.len() + frame::HEADER, data.len());
        assert_eq!(frame::encode(s, p), data);
        let mut reused = vec![0xAA; 3];
        frame::encode_into(&mut reused, s, p);
        assert_eq!(reused, data);
    }
});
