//! Relay control messages (`relay::msg`) arrive from any client of a relay
//! and from the relay at its clients. Decoding must never panic; whatever
//! decodes re-encodes to exactly the same bytes (trailing bytes are
//! refused, so nothing is ignored).
#![no_main]
use libfuzzer_sys::fuzz_target;
use macula_nat_proto::relay::msg::RelayMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = RelayMsg::decode(data) {
        assert_eq!(m.encode(), data, "re-encoding differs from the bytes decoded");
    }
});
