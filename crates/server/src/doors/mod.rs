//! The doors: each protocol Pyxis speaks, one module (or folder) each, side by side, none
//! importing another. A door only translates: its requests become typed service calls
//! (`crate::services`), the services' events and values become its answers.
//!
//! - [`v1`]: the native API (JSON, server-sent events);
//! - [`jupyter`]: Jupyter's kernels REST and WebSocket API (JupyterLab, nbclient through a
//!   jupyter server's gateway client);
//! - [`gateway`]: the Jupyter-kernel gateway service Pyxis replaces (stateful, per
//!   `user_uuid`);
//! - [`mcp`]: the Model Context Protocol (Streamable HTTP at `/mcp`), for LLM agents;
//! - [`e2b`]: E2B's control plane, sandbox daemon and code interpreter (its SDKs unmodified);
//!   it sits in front of the router, as E2B addresses sandboxes by header or host name;
//! - [`runner`]: the function runner (one-shot);
//! - [`tools`]: the function runner's document tools (OCR, barcodes, conversion, data).
//! - [`pool`]: the Docker-pool interpreter (stateless, files in and out).
//!
//! `POST /api/v1/execute` is claimed by both the gateway (`?user_uuid=U`) and the
//! Docker-pool interpreter (no query): `router.rs` dispatches on the presence of
//! `user_uuid`. The helpers below are shared plumbing, not a door.

pub mod e2b;
pub mod gateway;
pub mod jupyter;
pub mod mcp;
pub mod playground;
pub mod pool;
pub mod runner;
pub mod tools;
pub mod v1;

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::error::ApiError;
use crate::services::{CellOutcome, CellRequest, Session};

/// Run a cell and fold it into one value (the doors that answer once per cell).
pub async fn run_cell(
    app: &App,
    session: &Arc<Session>,
    code: String,
    timeout: Duration,
) -> Result<CellOutcome, ApiError> {
    let handle = app
        .sessions
        .execute(session, CellRequest::new(code, timeout))?;
    Ok(handle.collect().await?)
}

/// Whether a `POST /api/v1/execute` is the gateway's: its query has a `user_uuid` key
/// (decoded as the handlers decode it). The auth middleware uses the same test, so the open
/// pool door can never reach the gateway.
pub fn wants_gateway(query: Option<&str>) -> bool {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).any(|(k, _)| k == "user_uuid")
}

/// Strict percent-decoding (any `%XX`, `+` kept): `None` for a bad escape or bytes that are
/// not UTF-8 (the `percent-encoding` crate passes bad escapes through instead).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
