use super::*;

fn encode(msgs: &[&[u8]], version: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if version {
        out.push(STREAM_VERSION);
    }
    for m in msgs {
        out.extend_from_slice(&header(m.len(), usize::MAX).unwrap());
        out.extend_from_slice(m);
    }
    out
}

/// Feeds `bytes` in pieces of `step` (at most `want()` each, as the runtime
/// does) and collects the messages.
fn decode_by_want(d: &mut FrameDecoder, bytes: &[u8], step: usize) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = d.want().min(step).min(bytes.len() - at);
        let (used, msg) = d.push(&bytes[at..at + n])?;
        assert_eq!(used, n, "a read of want() bytes is consumed whole");
        at += used;
        out.extend(msg);
    }
    Ok(out)
}

/// Feeds everything at once, looping on what is left.
fn decode_greedy(d: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (used, msg) = d.push(rest)?;
        assert!(used > 0 || msg.is_some());
        rest = &rest[used..];
        out.extend(msg);
    }
    Ok(out)
}

#[test]
fn messages_come_back_whatever_the_read_sizes() {
    let msgs: [&[u8]; 4] = [b"hello", b"", &[7u8; 300], b"x"];
    for version in [false, true] {
        let bytes = encode(&msgs, version);
        for step in [1, 2, 3, 4, 5, 7, 64, 1 << 20] {
            let mut d = FrameDecoder::new(1000, version);
            let got = decode_by_want(&mut d, &bytes, step).unwrap();
            assert_eq!(got, msgs.iter().map(|m| m.to_vec()).collect::<Vec<_>>(), "step {step}");
            assert!(d.at_boundary());
        }
        let mut d = FrameDecoder::new(1000, version);
        assert_eq!(decode_greedy(&mut d, &bytes).unwrap().len(), 4);
    }
}

#[test]
fn want_never_crosses_a_piece() {
    let mut d = FrameDecoder::new(10, true);
    assert_eq!(d.want(), 1);
    d.push(&[STREAM_VERSION]).unwrap();
    assert_eq!(d.want(), 4);
    d.push(&[0, 0]).unwrap();
    assert_eq!(d.want(), 2);
    d.push(&[0, 3]).unwrap();
    assert_eq!(d.want(), 3);
    assert!(!d.at_boundary());
    assert_eq!(d.push(b"abcdef").unwrap(), (3, Some(b"abc".to_vec())));
    assert_eq!(d.want(), 4);
    assert!(d.at_boundary());
}

#[test]
fn a_length_over_the_limit_is_refused_on_its_header() {
    let mut d = FrameDecoder::new(100, false);
    let e = d.push(&u32::MAX.to_be_bytes()).unwrap_err();
    assert_eq!(e, FrameError::TooLarge { len: u32::MAX as u64, max: 100 });
    // Nothing of the announced body was reserved, and the error sticks.
    assert!(d.body.is_none());
    assert_eq!(d.want(), 0);
    assert_eq!(d.push(b"more").unwrap_err(), e);
    // Exactly the limit is fine.
    let mut d = FrameDecoder::new(3, false);
    assert_eq!(d.push(&[0, 0, 0, 3, 1, 2, 3]).unwrap(), (7, Some(vec![1, 2, 3])));
    assert!(d.push(&[0, 0, 0, 4]).is_err());
}

#[test]
fn a_wrong_version_is_refused() {
    let mut d = FrameDecoder::new(100, true);
    assert_eq!(d.push(&[2, 0, 0, 0, 0]).unwrap_err(), FrameError::Version(2));
    assert_eq!(d.push(&[STREAM_VERSION]).unwrap_err(), FrameError::Version(2));
}

#[test]
fn a_huge_announced_body_reserves_one_step_only() {
    let mut d = FrameDecoder::new(usize::MAX, false);
    d.push(&(64u32 << 20).to_be_bytes()).unwrap();
    assert!(d.body.as_ref().unwrap().capacity() <= INITIAL_BODY_CAPACITY);
    assert_eq!(d.want(), 64 << 20);
}

#[test]
fn a_lowered_limit_applies_from_the_next_header() {
    let mut d = FrameDecoder::new(100, false);
    d.push(&[0, 0, 0, 50]).unwrap();
    d.set_max(10);
    assert_eq!(d.push(&[9; 50]).unwrap(), (50, Some(vec![9; 50])));
    assert_eq!(d.push(&[0, 0, 0, 11]).unwrap_err(), FrameError::TooLarge { len: 11, max: 10 });
}

#[test]
fn header_checks_the_limit_and_u32() {
    assert_eq!(header(5, 5), Some([0, 0, 0, 5]));
    assert_eq!(header(6, 5), None);
    assert_eq!(header(u32::MAX as usize, usize::MAX), Some([255; 4]));
    #[cfg(target_pointer_width = "64")]
    assert_eq!(header(u32::MAX as usize + 1, usize::MAX), None);
}

#[test]
fn empty_input_consumes_nothing() {
    let mut d = FrameDecoder::new(10, true);
    assert_eq!(d.push(&[]).unwrap(), (0, None));
    d.push(&[STREAM_VERSION]).unwrap();
    assert_eq!(d.push(&[]).unwrap(), (0, None));
}
