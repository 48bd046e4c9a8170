//! Message framing on every connection's stream (`macula_nat_proto::frame`,
//! used by the runtime's reader): whatever the bytes and however they are
//! split into reads, the decoder never panics, never hands out a message
//! over its limit, consumes exactly what it reports, and the messages it
//! returns re-encode to the bytes it consumed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use macula_nat_proto::frame::{header, FrameDecoder, STREAM_VERSION};

fuzz_target!(|data: &[u8]| {
    // First byte: the limit (0..=255 bytes, so large announced lengths are
    // refused) and whether a version byte is expected; second: read size.
    let (Some(&knobs), Some(&step)) = (data.first(), data.get(1)) else { return };
    let max = usize::from(knobs >> 1);
    let version = knobs & 1 == 1;
    let step = usize::from(step).max(1);
    let stream = &data[2..];
    let mut d = FrameDecoder::new(max, version);
    let mut at = 0;
    let mut again = Vec::new();
    if version && !stream.is_empty() && stream[0] == STREAM_VERSION {
        again.push(STREAM_VERSION);
    }
    while at < stream.len() {
        let want = d.want();
        assert!(want > 0);
        let n = want.min(step).min(stream.len() - at);
        match d.push(&stream[at..at + n]) {
            Ok((used, msg)) => {
                assert_eq!(used, n);
                at += used;
                if let Some(m) = msg {
                    assert!(m.len() <= max);
                    again.extend_from_slice(&header(m.len(), max).unwrap());
                    again.extend_from_slice(&m);
                }
            }
            Err(_) => {
                assert_eq!(d.want(), 0);
                return;
            }
        }
    }
    // Everything consumed that completed messages re-encodes byte for byte.
    assert_eq!(&stream[..again.len()], &again[..]);
});
