//! Decoder must never panic; whatever it accepts must pass the cheap demux
//! check and survive a re-encode/decode round trip unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use macula_nat_proto::stun::{is_stun, Message};

fuzz_target!(|data: &[u8]| {
    let demux = is_stun(data);
    if let Ok(m) = Message::decode(data) {
        assert!(demux, "decode accepted what is_stun rejects");
        let again = Message::decode(&m.encode()).expect("re-encoded message must decode");
        assert_eq!(again.attributes, m.attributes);
        assert_eq!(again.transaction_id, m.transaction_id);
        assert_eq!((again.class, again.method), (m.class, m.method));
    }
});
