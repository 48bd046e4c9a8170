//! Peer records are fetched from the DHT, where anyone can store anything.
//! Opening one the way `macula_nat_core::peer_record::open` does (unframe,
//! verify the ed25519 signature against the key asked for, decode the
//! body, apply the acceptance rule) must never panic, whatever the bytes,
//! the key asked for or the clock. Whatever body decodes re-encodes to the
//! same bytes (what was signed is what is read). A record signed here with
//! a key from the input must open, and must stop verifying when one byte
//! of it changes.
#![no_main]
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use macula_nat_proto::id::NodeId;
use macula_nat_proto::record::{self, RecordBody, Version};

/// `macula_nat_core::identity::verify`, which the fuzz crate cannot link
/// without the whole runtime.
fn verify(key: &NodeId, msg: &[u8], sig: &[u8; 64]) -> bool {
    match VerifyingKey::from_bytes(key.as_bytes()) {
        Ok(vk) => vk.verify(msg, &Signature::from_bytes(sig)).is_ok(),
        Err(_) => false,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 40 {
        return;
    }
    let asked = NodeId::from_slice(&data[..32]).unwrap();
    let now_s = u64::from_be_bytes(data[32..40].try_into().unwrap());
    let rest = &data[40..];

    if let Ok((version, body, sig)) = record::unframe(rest) {
        let _ = verify(&asked, &record::signing_input(version, body), &sig);
        if let Ok(b) = RecordBody::decode(version, body) {
            assert_eq!(b.version(), version);
            assert_eq!(b.encode().expect("a decoded body encodes"), body);
            let _ = record::check(&b, &asked, now_s, Some(now_s));
            let _ = record::check(&b, &b.node_id, now_s, None);
        }
    }

    for version in [Version::V1, Version::V2] {
        let Ok(body) = RecordBody::decode(version, rest) else { continue };
        let bytes = body.encode().expect("a decoded body encodes");
        assert_eq!(bytes, rest);
        let key = SigningKey::from_bytes(asked.as_bytes());
        let signed = key.sign(&record::signing_input(version, &bytes)).to_bytes();
        let framed = record::frame(version, &bytes, &signed);
        let (v, b, s) = record::unframe(&framed).expect("a framed record unframes");
        assert_eq!((v, b, s), (version, &bytes[..], signed));
        let me = NodeId::from_bytes(key.verifying_key().to_bytes());
        assert!(verify(&me, &record::signing_input(v, b), &s));
        let mut forged = framed.clone();
        let i = now_s as usize % forged.len();
        forged[i] ^= 1;
        if let Ok((fv, fb, fs)) = record::unframe(&forged) {
            assert!(!verify(&me, &record::signing_input(fv, fb), &fs), "a changed record still verifies");
        }
    }
});
