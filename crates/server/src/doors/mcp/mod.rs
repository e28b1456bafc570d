//! The MCP door: the Model Context Protocol over Streamable HTTP at `/mcp`, built on the
//! official Rust SDK (`rmcp`). Its tools are translations onto the services, like every
//! door's handlers: sessions, cells, workspace files, URL imports (`tools.rs`); the
//! workspace files are resources too (`resources.rs`). Session ids travel in the tools'
//! arguments, so a kernel is never tied to the MCP session: the handshake revisions
//! (`initialize`, up to 2025-11-25, with an `Mcp-Session-Id`) and the stateless one
//! (2026-07-28, `server/discover`, each request on its own) reach the same sessions.
//!
//! A cancelled `run_code` interrupts its cell, whichever way the client cancels: a
//! `notifications/cancelled` (handshake revisions) or closing the request's response
//! stream (2026-07-28); rmcp turns both into the request's cancellation token.
//!
//! `pyxis mcp` (`stdio.rs`) is the stdio transport, a bridge to a running server's `/mcp`.
//!
//! The route sits behind the same token as every other route (`middleware.rs`); this door
//! adds the `Origin` check the specification asks for (DNS rebinding): a request that
//! carries an `Origin` must come from the server's own origin or from loopback.

mod origin;
mod resources;
mod stdio;
mod tools;

use std::sync::Arc;

use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::app::{App, AppState};

pub use stdio::{main as stdio_main, McpArgs};
pub use tools::PyxisMcp;

/// The `/mcp` route: rmcp's Streamable HTTP service, with the `Origin` check.
pub fn routes(app: Arc<App>) -> Router<AppState> {
    let config = StreamableHttpServerConfig::default()
        // The Host header is not ours to police (the server may be reached under any
        // name); DNS rebinding is stopped by the Origin check of `origin.rs` and the token.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(app.config.max_body_bytes);
    let factory_app = app.clone();
    let service = StreamableHttpService::new(
        move || Ok(PyxisMcp::new(factory_app.clone())),
        LocalSessionManager::default().into(),
        config,
    );
    Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(origin::check_origin))
}
