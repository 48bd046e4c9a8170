//! Signing and opening peer records with the node key.
//!
//! The record format and the acceptance rule are sans-IO
//! (`macula_nat_proto::record`); this adds the ed25519 part and the clock.

use crate::identity::{self, Identity, NodeId};
use macula_nat_proto::record::{self, Contacts, PeerInfo, RecordBody, RecordError, Rejection, RelayAd};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a fetched record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a well-formed record, or its signature does not verify against
    /// the NodeId it was fetched for.
    Forged,
    /// Well signed but not acceptable (wrong node, expired, replayed).
    Rejected(Rejection),
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A sequence number from the wall clock in microseconds, strictly above
/// `last`: survives restarts (no stored counter) and never repeats.
pub fn next_seq(last: u64) -> u64 {
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    now_us.max(last.saturating_add(1))
}

/// Builds and signs the record for `info` (and `relay`, if this node
/// relays), in the oldest layout that can say it.
pub fn sign(
    identity: &Identity,
    seq: u64,
    ttl_s: u32,
    info: PeerInfo,
    relay: Option<RelayAd>,
) -> Result<Vec<u8>, RecordError> {
    sign_with(identity, seq, ttl_s, info, relay, Contacts::default())
}

/// Like [`sign`], also naming where the node can be signalled and relayed
/// ([`Contacts`]); trimmed to fit BEP 44 ([`RecordBody::fit`]).
pub fn sign_with(
    identity: &Identity,
    seq: u64,
    ttl_s: u32,
    info: PeerInfo,
    relay: Option<RelayAd>,
    contacts: Contacts,
) -> Result<Vec<u8>, RecordError> {
    let mut body = RecordBody { node_id: identity.node_id(), seq, issued_at: unix_now(), ttl_s, info, relay, contacts };
    body.fit();
    let version = body.version();
    let bytes = body.encode()?;
    let sig = identity.sign(&record::signing_input(version, &bytes));
    Ok(record::frame(version, &bytes, &sig))
}

/// Verifies `bytes` as a record of `asked` and applies the acceptance rule.
pub fn open(bytes: &[u8], asked: &NodeId, now_s: u64, last_seq: Option<u64>) -> Result<RecordBody, Refusal> {
    let (version, body_bytes, sig) = record::unframe(bytes).map_err(|_| Refusal::Forged)?;
    // The signature is checked against the key we asked for, not the one
    // the body names, so a record signed by any other key is a forgery.
    if !identity::verify(asked, &record::signing_input(version, body_bytes), &sig) {
        return Err(Refusal::Forged);
    }
    let body = RecordBody::decode(version, body_bytes).map_err(|_| Refusal::Forged)?;
    record::check(&body, asked, now_s, last_seq).map_err(Refusal::Rejected)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use macula_nat_proto::nat::{Allocation, Confidence, Filtering, Mapping};

    fn info() -> PeerInfo {
        PeerInfo {
            mapping: Mapping::Ei,
            filtering: Filtering::Pd,
            allocation: Allocation::Pp,
            confidence: Confidence::High,
            public_addr: Some("203.0.113.5:4433".parse().unwrap()),
            port_delta: None,
            no_nat: false,
            detected_at: 1,
            endpoints: vec!["203.0.113.5:4433".parse().unwrap()],
            rendezvous: vec![],
        }
    }

    #[test]
    fn signed_record_opens_for_its_node_only() {
        let a = Identity::generate();
        let b = Identity::generate();
        let rec = sign(&a, 10, 3600, info(), None).unwrap();
        let body = open(&rec, &a.node_id(), unix_now(), None).unwrap();
        assert_eq!(body.info, info());
        assert_eq!(open(&rec, &b.node_id(), unix_now(), None), Err(Refusal::Forged));
    }

    #[test]
    fn any_flipped_bit_is_a_forgery() {
        let a = Identity::generate();
        let rec = sign(&a, 10, 3600, info(), None).unwrap();
        for i in 0..rec.len() {
            let mut c = rec.clone();
            c[i] ^= 0x01;
            assert_eq!(open(&c, &a.node_id(), unix_now(), None), Err(Refusal::Forged), "byte {i}");
        }
    }

    #[test]
    fn a_body_signed_by_another_key_for_our_id_is_a_forgery() {
        // The attacker writes our NodeId into the body and signs with its key.
        let victim = Identity::generate();
        let attacker = Identity::generate();
        let body =
            RecordBody { node_id: victim.node_id(), seq: 1, issued_at: unix_now(), ttl_s: 60, info: info(), relay: None, contacts: Contacts::default() };
        let bytes = body.encode().unwrap();
        let rec = record::frame(record::Version::V1, &bytes, &attacker.sign(&record::signing_input(record::Version::V1, &bytes)));
        assert_eq!(open(&rec, &victim.node_id(), unix_now(), None), Err(Refusal::Forged));
    }

    #[test]
    fn replay_and_expiry_are_rejected() {
        let a = Identity::generate();
        let old = sign(&a, 10, 3600, info(), None).unwrap();
        assert_eq!(
            open(&old, &a.node_id(), unix_now(), Some(11)),
            Err(Refusal::Rejected(Rejection::Replayed))
        );
        assert_eq!(
            open(&old, &a.node_id(), unix_now() + 3601, None),
            Err(Refusal::Rejected(Rejection::Expired))
        );
    }

    fn relay() -> Option<RelayAd> {
        Some(RelayAd { addr: "203.0.113.5:4433".parse().unwrap(), load_permille: 250 })
    }

    #[test]
    fn relay_record_is_v2_signed_and_opens() {
        let a = Identity::generate();
        let rec = sign(&a, 10, 3600, info(), relay()).unwrap();
        assert_eq!(&rec[..4], b"MNR2");
        let body = open(&rec, &a.node_id(), unix_now(), None).unwrap();
        assert_eq!((body.info, body.relay), (info(), relay()));
        for i in 0..rec.len() {
            let mut c = rec.clone();
            c[i] ^= 0x01;
            assert_eq!(open(&c, &a.node_id(), unix_now(), None), Err(Refusal::Forged), "byte {i}");
        }
        // Not relaying any more: the record is v1 again.
        let plain = sign(&a, 11, 3600, info(), None).unwrap();
        assert_eq!(&plain[..4], b"MNR1");
        assert_eq!(open(&plain, &a.node_id(), unix_now(), Some(10)).unwrap().relay, None);
    }

    #[test]
    fn a_version_swap_is_a_forgery() {
        // Relabelling a signed v1 record as v2 with a forged extension
        // appended (to claim "I relay" for someone), or a v2 one as v1
        // with the extension cut off, must not verify.
        let a = Identity::generate();
        let v1 = sign(&a, 10, 3600, info(), None).unwrap();
        let (_, body, sig) = record::unframe(&v1).unwrap();
        let mut longer = body.to_vec();
        longer.extend_from_slice(&[1, 0, 0, 4, 203, 0, 113, 66, 0, 1]);
        let fake = record::frame(record::Version::V2, &longer, &sig);
        assert_eq!(open(&fake, &a.node_id(), unix_now(), None), Err(Refusal::Forged));
        let v2 = sign(&a, 10, 3600, info(), relay()).unwrap();
        let (_, body, sig) = record::unframe(&v2).unwrap();
        let v1_len = info_body_len(&a);
        let fake = record::frame(record::Version::V1, &body[..v1_len], &sig);
        assert_eq!(open(&fake, &a.node_id(), unix_now(), None), Err(Refusal::Forged));
        // Same body bytes under the other magic: the signing context differs.
        let fake = record::frame(record::Version::V1, body, &sig);
        assert_eq!(open(&fake, &a.node_id(), unix_now(), None), Err(Refusal::Forged));
    }

    fn info_body_len(a: &Identity) -> usize {
        let rec = sign(a, 1, 60, info(), None).unwrap();
        record::unframe(&rec).unwrap().1.len()
    }

    #[test]
    fn seq_is_strictly_increasing() {
        let s1 = next_seq(0);
        assert!(next_seq(s1) > s1);
        assert_eq!(next_seq(u64::MAX - 1), u64::MAX);
    }
}
