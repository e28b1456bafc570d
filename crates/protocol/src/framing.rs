use serde::{de::DeserializeOwned, Serialize};

/// Length of the frame header: a big-endian `u32` byte count.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced more bytes than the reader accepts.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The payload is not the JSON message that was expected.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encode one message as a frame (header and JSON payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut buf, msg)?;
    let len = u32::try_from(buf.len() - HEADER_LEN).map_err(|_| FrameError::TooLarge {
        len: buf.len() - HEADER_LEN,
        limit: u32::MAX as usize,
    })?;
    buf[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Incremental decoder: feed it bytes as they arrive, take out whole messages.
///
/// The peer is untrusted (user code runs in the kernel's process and can write
/// anything to its socket), so every frame is bounded by `max_frame`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame,
        }
    }

    /// Append received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The payload of the next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            self.compact();
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&avail[..HEADER_LEN]);
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                limit: self.max_frame,
            });
        }
        if avail.len() < HEADER_LEN + len {
            self.compact();
            return Ok(None);
        }
        let begin = self.start + HEADER_LEN;
        self.start = begin + len;
        Ok(Some(&self.buf[begin..begin + len]))
    }

    /// The next complete message, decoded as `T`.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_frame()? {
            Some(payload) => Ok(Some(serde_json::from_slice(payload)?)),
            None => Ok(None),
        }
    }

    /// Drop consumed bytes once they dominate the buffer, so a long-lived
    /// decoder does not grow without bound.
    fn compact(&mut self) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KernelEvent;

    #[test]
    fn split_frames_are_reassembled() {
        let a = encode(&KernelEvent::Ready {}).unwrap();
        let b = encode(&KernelEvent::Stream {
            id: "x".into(),
            name: "stdout".into(),
            text: "hi\n".into(),
        })
        .unwrap();
        let all: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        let mut dec = FrameDecoder::new(1024);
        let mut got = Vec::new();
        for chunk in all.chunks(3) {
            dec.extend(chunk);
            while let Some(m) = dec.next_message::<KernelEvent>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[1], KernelEvent::Stream { text, .. } if text == "hi\n"));
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut dec = FrameDecoder::new(8);
        dec.extend(&100u32.to_be_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::TooLarge { len: 100, .. })
        ));
    }

    #[test]
    fn garbage_payload_is_an_error_not_a_panic() {
        let mut dec = FrameDecoder::new(64);
        dec.extend(&3u32.to_be_bytes());
        dec.extend(b"{{{");
        assert!(matches!(
            dec.next_message::<KernelEvent>(),
            Err(FrameError::Json(_))
        ));
    }
}
