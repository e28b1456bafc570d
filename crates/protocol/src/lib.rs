//! The messages that travel between the Pyxis supervisor, the Python zygote and
//! the sandboxed kernels, and their framing.
//!
//! Every message is one frame: a 4-byte big-endian length followed by that many
//! bytes of a UTF-8 JSON object with a `"type"` tag. The message names follow the
//! Jupyter messaging spec (`execute_request`, `stream`, `display_data`,
//! `execute_result`, `error`, `execute_reply`) so a Jupyter front door can map
//! them one to one. This crate does no I/O: it encodes and decodes byte buffers.
//! The Python side (`runtime/python/pyxis_runtime/framing.py`) implements the
//! same frames.
//!
//! ```
//! use pyxis_protocol::{encode, FrameDecoder, KernelRequest};
//!
//! let req = KernelRequest::ExecuteRequest {
//!     id: "1".into(),
//!     code: "1 + 1".into(),
//!     max_output_bytes: 1 << 20,
//!     silent: false,
//!     allow_stdin: false,
//!     store_history: None,
//!     user_expressions: Default::default(),
//! };
//! let bytes = encode(&req).unwrap();
//! let mut dec = FrameDecoder::new(1 << 20);
//! dec.extend(&bytes);
//! let back: KernelRequest = dec.next_message().unwrap().unwrap();
//! assert!(matches!(back, KernelRequest::ExecuteRequest { .. }));
//! ```
#![deny(missing_docs)]

mod framing;
mod messages;

pub use framing::{encode, FrameDecoder, FrameError, HEADER_LEN};
pub use messages::{
    JsonMap, KernelEvent, KernelExec, KernelRequest, MimeBundle, ReplyStatus, ZygoteEvent,
    ZygoteRequest,
};
