//! Signalling messages (`signal::Msg`) arrive from any peer on a control or
//! session connection. Decoding must never panic; whatever decodes must
//! re-encode to the bytes it was read from (the decoder ignores what
//! follows a whole message, so the encoding is a prefix of the input) and
//! decode again to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use macula_nat_proto::signal::Msg;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::decode(data) {
        let bytes = m.encode();
        assert!(data.starts_with(&bytes), "re-encoding differs from the bytes decoded");
        assert_eq!(Msg::decode(&bytes).expect("re-encoded message must decode"), m);
        let _ = m.session();
    }
});
