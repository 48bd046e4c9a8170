//! Message framing on a connection's one stream, as a pure decoder: the
//! dialler's version byte (when this side expects one), then messages, each a
//! 4-byte big-endian length and that many bytes.
//!
//! The runtime reads at most [`FrameDecoder::want`] bytes at a time and
//! feeds them in; the length is checked against the limit on its header,
//! before any body is allocated, so a peer announcing 4 GiB costs nothing.
//! A body is allocated as it arrives (at most [`INITIAL_BODY_CAPACITY`]
//! ahead), so a peer that announces the limit and sends a byte makes us hold
//! that byte and one capacity step, not the limit.

/// The version byte the dialler writes first (and the acceptor answers).
pub const STREAM_VERSION: u8 = 1;

/// Body bytes reserved ahead when a message starts.
pub const INITIAL_BODY_CAPACITY: usize = 1 << 20;

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 4;

/// Why a stream cannot go on: the connection is closed with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The peer speaks another stream version.
    Version(u8),
    /// A message longer than the limit was announced.
    TooLarge { len: u64, max: u64 },
}

/// Encodes a message's header; `None` when `len` exceeds `max` (or `u32`).
pub fn header(len: usize, max: usize) -> Option<[u8; HEADER_LEN]> {
    if len > max {
        return None;
    }
    u32::try_from(len).ok().map(u32::to_be_bytes)
}

/// Reads frames from a byte stream fed in pieces of any size.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    version_pending: bool,
    header: [u8; HEADER_LEN],
    header_len: usize,
    body: Option<Vec<u8>>,
    body_len: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder refusing messages over `max` bytes; `expect_version` when
    /// the stream starts with the peer's [`STREAM_VERSION`] byte.
    pub fn new(max: usize, expect_version: bool) -> FrameDecoder {
        FrameDecoder {
            max,
            version_pending: expect_version,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: None,
            body_len: 0,
            failed: None,
        }
    }

    /// The limit now (a connection found to be a control connection lowers
    /// it; a message already under way keeps the limit it was checked
    /// against).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// How many bytes to read next: never past the end of the current
    /// piece (version byte, header, or body), so `push` of that many bytes
    /// consumes them all. 0 once the decoder has failed.
    pub fn want(&self) -> usize {
        if self.failed.is_some() {
            0
        } else if self.version_pending {
            1
        } else if let Some(body) = &self.body {
            self.body_len - body.len()
        } else {
            HEADER_LEN - self.header_len
        }
    }

    /// True between messages (nothing of a next message read yet; a
    /// stream that ends here, even before the version byte, ends cleanly).
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body.is_none()
    }

    /// Feeds bytes; consumes up to the end of one message and answers how
    /// many bytes it took and the message if one completed. Call again with
    /// the rest. After an error every call answers that error.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut used = 0;
        if self.version_pending {
            let Some(&v) = input.first() else { return Ok((0, None)) };
            used = 1;
            self.version_pending = false;
            if v != STREAM_VERSION {
                return Err(self.fail(FrameError::Version(v)));
            }
        }
        if self.body.is_none() {
            let n = (HEADER_LEN - self.header_len).min(input.len() - used);
            self.header[self.header_len..self.header_len + n].copy_from_slice(&input[used..used + n]);
            self.header_len += n;
            used += n;
            if self.header_len < HEADER_LEN {
                return Ok((used, None));
            }
            let len = u32::from_be_bytes(self.header) as usize;
            if len > self.max {
                return Err(self.fail(FrameError::TooLarge { len: len as u64, max: self.max as u64 }));
            }
            self.body = Some(Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY)));
            self.body_len = len;
        }
        let body = self.body.as_mut().expect("a body is under way");
        let n = (self.body_len - body.len()).min(input.len() - used);
        body.extend_from_slice(&input[used..used + n]);
        used += n;
        if body.len() < self.body_len {
            return Ok((used, None));
        }
        self.header_len = 0;
        Ok((used, self.body.take()))
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e);
        self.body = None;
        e
    }
}

#[cfg(test)]
mod tests;
