//! The supervisor's end of one kernel's socket: send requests, read events.
//!
//! Everything the kernel sends is untrusted — user code runs in the kernel's
//! process and can write anything to this socket — so frames are bounded and a
//! malformed one ends the connection (and, above, the kernel).

use pyxis_protocol::{encode, FrameDecoder, FrameError, KernelEvent, KernelRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Why talking to a kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel closed its socket (it exited or was killed).
    #[error("the kernel exited")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("kernel socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel sent something that is not a valid frame.
    #[error("kernel protocol violation: {0}")]
    Protocol(#[from] FrameError),
}

/// One kernel connection.
#[derive(Debug)]
pub struct KernelConn {
    stream: UnixStream,
    dec: FrameDecoder,
    buf: Vec<u8>,
}

impl KernelConn {
    /// Wrap the supervisor's end of a kernel socket.
    pub fn new(stream: UnixStream, max_frame: usize) -> Self {
        Self {
            stream,
            dec: FrameDecoder::new(max_frame),
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// Send one request.
    pub async fn send(&mut self, req: &KernelRequest) -> Result<(), KernelError> {
        let frame = encode(req)?;
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Read the next event. Cancel-safe: a partly received frame stays
    /// buffered for the next call.
    pub async fn next_event(&mut self) -> Result<KernelEvent, KernelError> {
        loop {
            if let Some(ev) = self.dec.next_message::<KernelEvent>()? {
                return Ok(ev);
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                return Err(KernelError::Closed);
            }
            self.dec.extend(&self.buf[..n]);
        }
    }
}
