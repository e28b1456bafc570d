//! The MCP tools: each one a translation of its arguments into a service call and of the
//! answer into MCP content (text, images, embedded resources) plus `structuredContent`.
//!
//! Failures of the call itself (an unknown session, a bad path, a full queue) are tool
//! results with `isError: true` and a message, as the specification asks, so that a model
//! can read and correct them; arguments that do not match the input schema are JSON-RPC
//! `invalid params` errors (rmcp's deserialisation), and an unknown tool is a JSON-RPC error.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::resources;
use crate::app::App;
use crate::services::events::Accumulator;
use crate::services::files::ImportItem;
use crate::services::{
    session_options, timeout_from, CellEvent, CellOutcome, CellRequest, CellStatus, NewSession,
    ServiceError, Session,
};

/// At most this much of the output so far goes into one progress notification (its tail).
const PROGRESS_TAIL_BYTES: usize = 4096;

/// The MCP server of one MCP session: a handle on the services, nothing more (kernels
/// belong to Pyxis sessions, whose ids travel in the arguments).
#[derive(Clone)]
pub struct PyxisMcp {
    app: Arc<App>,
    tool_router: ToolRouter<PyxisMcp>,
}

// ---- arguments -------------------------------------------------------------------------

/// `create_session` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionArgs {
    /// Language of the session's interpreter (only `python` for now).
    pub language: Option<String>,
    /// Default time limit of the session's cells, in seconds.
    pub timeout_s: Option<f64>,
}

/// Arguments naming a session by `id`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseSessionArgs {
    /// The session's id (from `create_session` or `list_sessions`).
    pub id: String,
}

/// Arguments naming a session by `session_id`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// The session's id (from `create_session` or `list_sessions`).
    pub session_id: String,
}

/// `run_code` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCodeArgs {
    /// Python source of the cell (IPython syntax: the last expression's value is returned).
    pub code: String,
    /// The session to run in (its variables, imports and files persist between calls).
    /// Without it the code runs one-shot in a fresh sandbox that is destroyed after.
    pub session_id: Option<String>,
    /// Time limit of this cell, in seconds.
    pub timeout_s: Option<f64>,
}

/// `upload_file` arguments: exactly one of `content_base64` and `text`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadFileArgs {
    /// The session whose workspace receives the file.
    pub session_id: String,
    /// Path relative to the workspace (`/workspace` in the sandbox); parents are created.
    pub path: String,
    /// The file's bytes, base64-encoded (standard alphabet).
    pub content_base64: Option<String>,
    /// The file's content as UTF-8 text.
    pub text: Option<String>,
}

/// `download_file` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadFileArgs {
    /// The session whose workspace holds the file.
    pub session_id: String,
    /// Path relative to the workspace.
    pub path: String,
}

/// `import_url` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportUrlArgs {
    /// The session whose workspace receives the file.
    pub session_id: String,
    /// An `http` or `https` URL on the public internet (hosts that resolve to loopback,
    /// private or metadata addresses are refused unless the operator allows them).
    pub url: String,
    /// Where to write it, relative to the workspace (default: the URL's last segment).
    pub path: Option<String>,
}

/// `list_files` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesArgs {
    /// The session whose workspace is listed.
    pub session_id: String,
    /// Directory relative to the workspace (default: its root).
    pub path: Option<String>,
}

// ---- structured results ----------------------------------------------------------------

/// A session as the tools describe it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionOut {
    /// Session id: pass it as `session_id` to the other tools.
    pub id: String,
    /// Language of its interpreter.
    pub language: String,
    /// Running a cell now.
    pub busy: bool,
    /// Cells executed so far.
    pub execution_count: u64,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Last use (RFC 3339).
    pub last_active: String,
}

/// `list_sessions` result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionListOut {
    /// Live sessions, oldest first.
    pub sessions: Vec<SessionOut>,
}

/// Result of a tool that acts on a session.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DoneOut {
    /// The session acted on.
    pub session_id: String,
    /// Whether it had an effect (`interrupt`: a cell was running).
    pub done: bool,
}

/// An error raised by the code.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorOut {
    /// Exception name, e.g. `ZeroDivisionError`.
    pub name: String,
    /// Exception value.
    pub value: String,
    /// Traceback lines.
    pub traceback: Vec<String>,
}

/// A file the cell created or changed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileOut {
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// One rich result of the cell.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ResultOut {
    /// `execute_result` (the last value) or `display_data`.
    pub kind: String,
    /// MIME bundle (`text/plain`, `text/html`, `image/png` base64, …).
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// The Execution: how a cell ended and everything it produced (as `/v1` returns it).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionOut {
    /// `ok`, `error`, `timeout` or `killed`.
    pub status: String,
    /// The session's execution counter after this cell.
    pub execution_count: u64,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
    /// Rich results in order.
    pub results: Vec<ResultOut>,
    /// The error, when `status` is not `ok`.
    pub error: Option<ErrorOut>,
    /// Workspace files the cell created or changed.
    pub files: Vec<FileOut>,
    /// Wall time in milliseconds.
    pub duration_ms: f64,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    /// The interpreter was restarted: variables are gone (files stay).
    pub state_lost: bool,
}

/// `upload_file` result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UploadOut {
    /// Path written, relative to the workspace.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// `download_file` result (the content itself is in the content blocks).
#[derive(Debug, Serialize, JsonSchema)]
pub struct DownloadOut {
    /// Path read, relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type guessed from the name.
    pub mime_type: String,
}

/// One entry of a listing.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EntryOut {
    /// File name.
    pub name: String,
    /// Path relative to the workspace.
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
}

/// `list_files` result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ListingOut {
    /// The directory listed (`""`: the root).
    pub path: String,
    /// Its entries, sorted by name.
    pub entries: Vec<EntryOut>,
    /// More entries exist than were listed.
    pub truncated: bool,
}

// ---- translation helpers ---------------------------------------------------------------

/// A service failure as a tool error the model can read.
fn failed(e: ServiceError) -> CallToolResult {
    let text = match e {
        ServiceError::Internal(_) => "internal error".to_string(),
        e => e.to_string(),
    };
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// A tool error from a message.
fn refused(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// A success carrying `value` as `structuredContent` and as JSON text (for clients that
/// only read content blocks).
fn structured<T: Serialize>(value: &T) -> Result<CallToolResult, McpError> {
    let v =
        serde_json::to_value(value).map_err(|e| McpError::internal_error(e.to_string(), None))?;
    let mut r = CallToolResult::success(vec![ContentBlock::text(v.to_string())]);
    r.structured_content = Some(v);
    Ok(r)
}

fn status_name(s: CellStatus) -> &'static str {
    match s {
        CellStatus::Ok => "ok",
        CellStatus::Error => "error",
        CellStatus::Timeout => "timeout",
        CellStatus::Killed => "killed",
    }
}

fn execution(o: &CellOutcome) -> ExecutionOut {
    let s = &o.summary;
    ExecutionOut {
        status: status_name(s.status).into(),
        execution_count: s.execution_count,
        stdout: o.stdout.clone(),
        stderr: o.stderr.clone(),
        results: o
            .results
            .iter()
            .map(|r| ResultOut {
                kind: r.kind.into(),
                data: r.data.clone(),
            })
            .collect(),
        error: s.error.as_ref().map(|e| ErrorOut {
            name: e.name.clone(),
            value: e.value.clone(),
            traceback: e.traceback.clone(),
        }),
        files: s
            .files
            .iter()
            .map(|f| FileOut {
                path: f.path.clone(),
                size: f.size,
            })
            .collect(),
        duration_ms: s.duration_ms,
        truncated: s.truncated,
        state_lost: s.state_lost,
    }
}

/// The content blocks of a finished cell: one text block with what was printed and the
/// last value, an image block per PNG (or JPEG), HTML as text, and the error's traceback.
fn cell_content(o: &CellOutcome) -> Vec<ContentBlock> {
    let mut text = String::new();
    if !o.stdout.is_empty() {
        text.push_str(&o.stdout);
        if !o.stdout.ends_with('\n') {
            text.push('\n');
        }
    }
    if !o.stderr.is_empty() {
        text.push_str("[stderr]\n");
        text.push_str(&o.stderr);
        if !o.stderr.ends_with('\n') {
            text.push('\n');
        }
    }
    let mut blocks = Vec::new();
    for r in &o.results {
        let mut shown = false;
        for mime in ["image/png", "image/jpeg"] {
            if let Some(b64) = r.data.get(mime).and_then(|v| v.as_str()) {
                // The kernel's base64 may carry line breaks; MCP clients decode strictly.
                let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                blocks.push(ContentBlock::image(clean, mime));
                shown = true;
            }
        }
        if let Some(html) = r.data.get("text/html").and_then(|v| v.as_str()) {
            blocks.push(ContentBlock::text(html.to_string()));
            shown = true;
        }
        let plain = r.data.get("text/plain").and_then(|v| v.as_str());
        if let Some(p) = plain {
            // The last value always shows; a display of an image or HTML needs no
            // `<Figure size …>` beside it.
            if r.kind == "execute_result" || !shown {
                if r.kind == "execute_result" {
                    text.push_str(&format!("Out[{}]: ", o.summary.execution_count));
                }
                text.push_str(p);
                text.push('\n');
            }
        }
    }
    if o.summary.status != CellStatus::Ok {
        text.push_str(&o.error_text());
        text.push('\n');
    }
    let mut out = Vec::with_capacity(blocks.len() + 1);
    if !text.is_empty() || blocks.is_empty() {
        out.push(ContentBlock::text(text));
    }
    out.extend(blocks);
    out
}

/// The tail of `s` of at most `max` bytes, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// How often, and how many times, a cancelled cell is interrupted before the services'
/// own time limit is left to end it (an interrupt that lands before the kernel watches for
/// it is lost, so one is not enough).
const CANCEL_INTERRUPT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const CANCEL_INTERRUPT_TRIES: u32 = 40;

/// Interrupt `session`'s running cell until its events end (the cancelled request's cell).
async fn interrupt_until_done(
    app: Arc<App>,
    session: Arc<Session>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<CellEvent>,
) {
    for _ in 0..CANCEL_INTERRUPT_TRIES {
        app.sessions.interrupt(&session);
        let end = tokio::time::timeout(CANCEL_INTERRUPT_EVERY, async {
            while let Some(ev) = events.recv().await {
                if matches!(ev, CellEvent::Reply(_)) {
                    return;
                }
            }
        });
        if end.await.is_ok() {
            return;
        }
    }
    tracing::warn!(session = %session.id, "a cancelled cell did not stop when interrupted");
}

fn kind_name(k: crate::services::workspace_fs::EntryKind) -> &'static str {
    use crate::services::workspace_fs::EntryKind;
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Other => "other",
    }
}

// ---- the tools -------------------------------------------------------------------------

#[tool_router]
impl PyxisMcp {
    /// The server over the services.
    pub fn new(app: Arc<App>) -> Self {
        Self {
            app,
            tool_router: Self::tool_router(),
        }
    }

    fn session(&self, id: &str) -> Result<Arc<Session>, CallToolResult> {
        self.app.sessions.get(id).map_err(failed)
    }

    fn view(&self, s: &Arc<Session>) -> SessionOut {
        let v = self.app.sessions.info(s);
        SessionOut {
            id: v.id,
            language: v.language,
            busy: v.busy,
            execution_count: v.execution_count,
            created: crate::services::sessions::rfc3339(v.created),
            last_active: crate::services::sessions::rfc3339(v.last_active),
        }
    }

    #[tool(
        title = "Create a session",
        description = "Start a stateful Python session in its own sandbox (no network, its own \
                       /workspace). Variables, imports and files persist across run_code calls \
                       that pass its id as session_id. Close it with close_session when done.",
        output_schema = schema_for_output::<SessionOut>(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false,
                    open_world_hint = false)
    )]
    async fn create_session(
        &self,
        Parameters(args): Parameters<CreateSessionArgs>,
    ) -> Result<CallToolResult, McpError> {
        let req = NewSession {
            language: args.language,
            timeout_s: args.timeout_s,
            ..Default::default()
        };
        let opts = match session_options(&self.app.config, req) {
            Ok(o) => o,
            Err(e) => return Ok(failed(e)),
        };
        match self.app.sessions.create(opts).await {
            Ok(s) => structured(&self.view(&s)),
            Err(e) => Ok(failed(e)),
        }
    }

    #[tool(
        title = "List sessions",
        description = "List the live sessions with their ids, state and cell counts.",
        output_schema = schema_for_output::<SessionListOut>(),
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true,
                    open_world_hint = false)
    )]
    async fn list_sessions(&self) -> Result<CallToolResult, McpError> {
        let sessions = self
            .app
            .sessions
            .list()
            .iter()
            .map(|s| self.view(s))
            .collect();
        structured(&SessionListOut { sessions })
    }

    #[tool(
        title = "Close a session",
        description = "Release a session: stop its interpreter, destroy its sandbox and delete \
                       its workspace files.",
        output_schema = schema_for_output::<DoneOut>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true,
                    open_world_hint = false)
    )]
    async fn close_session(
        &self,
        Parameters(args): Parameters<CloseSessionArgs>,
    ) -> Result<CallToolResult, McpError> {
        if self.app.sessions.delete(&args.id).await {
            structured(&DoneOut {
                session_id: args.id,
                done: true,
            })
        } else {
            Ok(failed(ServiceError::SessionNotFound(args.id)))
        }
    }

    #[tool(
        title = "Run Python code",
        description = "Run a Python cell (IPython: the last expression's value is shown, \
                       matplotlib figures come back as PNG images, DataFrames as HTML). With \
                       session_id it runs in that session and keeps its state; without, in a \
                       fresh sandbox destroyed after. Errors come back with their traceback \
                       and isError. Cancelling the request interrupts the cell.",
        output_schema = schema_for_output::<ExecutionOut>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false,
                    open_world_hint = false)
    )]
    async fn run_code(
        &self,
        Parameters(args): Parameters<RunCodeArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let sessions = &self.app.sessions;
        let cfg = &self.app.config;
        // The session the cell runs in: the named one, or the one-shot's own sandbox.
        let mut target: Option<Arc<Session>> = None;
        let handle = match &args.session_id {
            Some(id) => {
                let session = match self.session(id) {
                    Ok(s) => s,
                    Err(r) => return Ok(r),
                };
                let timeout = match timeout_from(
                    args.timeout_s,
                    session.default_timeout(),
                    cfg.max_exec_timeout,
                ) {
                    Ok(t) => t,
                    Err(e) => return Ok(failed(e)),
                };
                match sessions.execute(&session, CellRequest::new(args.code, timeout)) {
                    Ok(h) => {
                        target = Some(session);
                        h
                    }
                    Err(e) => return Ok(failed(e)),
                }
            }
            None => {
                let req = NewSession {
                    timeout_s: args.timeout_s,
                    ..Default::default()
                };
                let opts = match session_options(cfg, req) {
                    Ok(o) => o,
                    Err(e) => return Ok(failed(e)),
                };
                let timeout = opts.timeout;
                let cell = CellRequest::new(args.code, timeout);
                let prepared = sessions
                    .one_shot(opts, cell, |s| {
                        target = Some(s);
                        async { Ok(()) }
                    })
                    .await;
                match prepared {
                    Ok(h) => h,
                    Err(e) => return Ok(failed(e)),
                }
            }
        };
        let progress = ctx.meta.get_progress_token();
        let mut events = handle.events;
        let mut acc = Accumulator::default();
        let mut printed = String::new();
        let mut step = 0u32;
        // Whether this cell has started (a queued one must not interrupt the cell before it).
        let mut started = false;
        let outcome = loop {
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        break None;
                    };
                    started |= matches!(ev, CellEvent::ExecuteInput { .. });
                    if let (Some(token), CellEvent::Stream { text, .. }) = (&progress, &ev) {
                        printed.push_str(text);
                        if printed.len() > 4 * PROGRESS_TAIL_BYTES {
                            let keep = tail(&printed, PROGRESS_TAIL_BYTES).to_string();
                            printed = keep;
                        }
                        step += 1;
                        let note = ProgressNotificationParam::new(token.clone(), f64::from(step))
                            .with_message(tail(&printed, PROGRESS_TAIL_BYTES).to_string());
                        // A client that went away must not stop the cell's fold.
                        let _ = ctx.peer.notify_progress(note).await;
                    }
                    if let Some(done) = acc.push(ev) {
                        break Some(done);
                    }
                }
                () = ctx.ct.cancelled() => {
                    // notifications/cancelled (2025 revisions), or the client closed the
                    // request's stream (2026-07-28, served statelessly). A queued cell is
                    // dropped with its receiver (the services never run it); a running one
                    // is interrupted until it ends.
                    if let (true, Some(s)) = (started, target) {
                        tokio::spawn(interrupt_until_done(self.app.clone(), s, events));
                    }
                    // The specification has no answer to a cancelled request (the client
                    // ignores one); this error is what rmcp drops.
                    return Err(McpError::internal_error("the request was cancelled", None));
                }
            }
        };
        let Some(outcome) = outcome.filter(|o| !o.summary.session_deleted()) else {
            return Ok(refused("the session was closed while the cell ran"));
        };
        let mut result = CallToolResult::success(cell_content(&outcome));
        result.is_error = Some(outcome.summary.status != CellStatus::Ok);
        result.structured_content = Some(
            serde_json::to_value(execution(&outcome))
                .map_err(|e| McpError::internal_error(e.to_string(), None))?,
        );
        Ok(result)
    }

    #[tool(
        title = "Upload a file",
        description = "Write a file into a session's workspace (/workspace in the sandbox), \
                       from content_base64 (bytes) or text (UTF-8); replaces an existing file.",
        output_schema = schema_for_output::<UploadOut>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true,
                    open_world_hint = false)
    )]
    async fn upload_file(
        &self,
        Parameters(args): Parameters<UploadFileArgs>,
    ) -> Result<CallToolResult, McpError> {
        let bytes = match (args.content_base64, args.text) {
            (Some(b64), None) => {
                let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                match base64::engine::general_purpose::STANDARD.decode(clean) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => return Ok(refused(format!("content_base64 is not base64: {e}"))),
                }
            }
            (None, Some(t)) => Bytes::from(t),
            _ => return Ok(refused("give exactly one of content_base64 and text")),
        };
        let session = match self.session(&args.session_id) {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        match self
            .app
            .files
            .write_bytes(&session, &args.path, bytes)
            .await
        {
            Ok(w) => structured(&UploadOut {
                path: w.path,
                size: w.size,
            }),
            Err(e) => Ok(failed(e)),
        }
    }

    #[tool(
        title = "Download a file",
        description = "Read a file of a session's workspace: text files come back as text, \
                       images as image blocks, anything else as a base64 blob resource.",
        output_schema = schema_for_output::<DownloadOut>(),
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true,
                    open_world_hint = false)
    )]
    async fn download_file(
        &self,
        Parameters(args): Parameters<DownloadFileArgs>,
    ) -> Result<CallToolResult, McpError> {
        let session = match self.session(&args.session_id) {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let bytes = match self
            .app
            .files
            .read_all(&session, &args.path, resources::MAX_READ_BYTES)
            .await
        {
            Ok(b) => b,
            Err(e) => return Ok(failed(e)),
        };
        let mime = resources::mime_of(&args.path);
        let uri = resources::file_uri(&session.id, &args.path);
        let size = bytes.len() as u64;
        let b64 = || base64::engine::general_purpose::STANDARD.encode(&bytes);
        let textual = mime.starts_with("text/")
            || matches!(
                mime.as_str(),
                "application/json" | "application/xml" | "application/javascript"
            );
        let block = if mime.starts_with("image/") && mime != "image/svg+xml" {
            ContentBlock::image(b64(), mime.clone())
        } else if textual || mime == "image/svg+xml" || mime == "application/octet-stream" {
            match std::str::from_utf8(&bytes) {
                Ok(t) if textual || mime == "image/svg+xml" || !t.contains('\0') => {
                    ContentBlock::text(t.to_string())
                }
                _ => ContentBlock::resource(
                    ResourceContents::blob(b64(), uri).with_mime_type(mime.clone()),
                ),
            }
        } else {
            ContentBlock::resource(ResourceContents::blob(b64(), uri).with_mime_type(mime.clone()))
        };
        let meta = DownloadOut {
            path: args.path,
            size,
            mime_type: mime,
        };
        let mut r = CallToolResult::success(vec![block]);
        r.structured_content = Some(
            serde_json::to_value(meta)
                .map_err(|e| McpError::internal_error(e.to_string(), None))?,
        );
        Ok(r)
    }

    #[tool(
        title = "Import a file from a URL",
        description = "Fetch an http(s) URL into a session's workspace (the sandbox itself has \
                       no network). Hosts that resolve to loopback, private or metadata \
                       addresses are refused; redirects are checked the same way; size and \
                       time are limited. path defaults to the URL's last segment.",
        output_schema = schema_for_output::<UploadOut>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true,
                    open_world_hint = true)
    )]
    async fn import_url(
        &self,
        Parameters(args): Parameters<ImportUrlArgs>,
    ) -> Result<CallToolResult, McpError> {
        let session = match self.session(&args.session_id) {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let item = ImportItem {
            url: args.url,
            path: args.path,
        };
        match self.app.files.import(&session, vec![item]).await {
            Ok(mut written) => match written.pop() {
                Some(w) => structured(&UploadOut {
                    path: w.path,
                    size: w.size,
                }),
                None => Err(McpError::internal_error("nothing was imported", None)),
            },
            Err(e) => Ok(failed(e)),
        }
    }

    #[tool(
        title = "List files",
        description = "List a directory of a session's workspace (default: its root).",
        output_schema = schema_for_output::<ListingOut>(),
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true,
                    open_world_hint = false)
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
    ) -> Result<CallToolResult, McpError> {
        let session = match self.session(&args.session_id) {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let path = args.path.unwrap_or_default();
        match self.app.files.list(&session, &path).await {
            Ok(l) => structured(&ListingOut {
                path: l.path,
                entries: l
                    .entries
                    .into_iter()
                    .map(|e| EntryOut {
                        name: e.name,
                        path: e.path,
                        kind: kind_name(e.kind).into(),
                        size: e.size,
                    })
                    .collect(),
                truncated: l.truncated,
            }),
            Err(e) => Ok(failed(e)),
        }
    }

    #[tool(
        title = "Interrupt the running cell",
        description = "Interrupt the cell running in a session (KeyboardInterrupt in it); the \
                       session's state stays. done is false when no cell was running.",
        output_schema = schema_for_output::<DoneOut>(),
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true,
                    open_world_hint = false)
    )]
    async fn interrupt(
        &self,
        Parameters(args): Parameters<SessionArgs>,
    ) -> Result<CallToolResult, McpError> {
        let session = match self.session(&args.session_id) {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let done = self.app.sessions.interrupt(&session);
        structured(&DoneOut {
            session_id: args.session_id,
            done,
        })
    }

    #[tool(
        title = "Restart the interpreter",
        description = "Restart a session's interpreter: variables and imports are lost, the \
                       workspace files stay.",
        output_schema = schema_for_output::<DoneOut>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true,
                    open_world_hint = false)
    )]
    async fn restart(
        &self,
        Parameters(args): Parameters<SessionArgs>,
    ) -> Result<CallToolResult, McpError> {
        let session = match self.session(&args.session_id) {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        match self.app.sessions.restart(&session).await {
            Ok(()) => structured(&DoneOut {
                session_id: args.session_id,
                done: true,
            }),
            Err(e) => Ok(failed(e)),
        }
    }
}

/// What the server tells a client at `initialize` (and `server/discover`).
const INSTRUCTIONS: &str = "Pyxis runs Python in sandboxes (no network, a private /workspace). \
create_session gives a session id; pass it as session_id to run_code, upload_file, \
download_file, list_files, import_url, interrupt and restart, and close it with \
close_session when done. Variables, imports and files persist in a session between \
run_code calls; run_code without session_id runs one-shot in a fresh sandbox. Plots come \
back as PNG images, DataFrames as HTML, errors with their traceback and isError. \
Cancelling a run_code request interrupts its cell. Workspace files are also resources: \
pyxis://sessions/{session_id}/files/{path}.";

/// The tenant of the HTTP request that carried an MCP message. rmcp serves a session's
/// messages in a task of its own, outside the auth middleware's tenant scope, so each
/// handler below runs in the scope of its own request (see `tenants.rs`).
fn tenant_of(ctx: &RequestContext<RoleServer>) -> Option<Arc<crate::tenants::Tenant>> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Arc<crate::tenants::Tenant>>().cloned())
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for PyxisMcp {
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, McpError> {
        let tenant = tenant_of(&context);
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        crate::tenants::within(tenant, self.tool_router.call(call)).await
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(
            Implementation::new("pyxis", env!("CARGO_PKG_VERSION"))
                .with_title("Pyxis code interpreter")
                .with_description(
                    "Stateful, sandboxed Python: sessions, plots as images, workspace files",
                ),
        )
        .with_instructions(INSTRUCTIONS.to_string())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        crate::tenants::within(tenant_of(&context), resources::list(&self.app)).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        crate::tenants::within(
            tenant_of(&context),
            resources::read(&self.app, &request.uri),
        )
        .await
        .map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cuts_at_char_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    fn schemas_are_objects() {
        for s in [
            schema_for_output::<ExecutionOut>(),
            schema_for_output::<SessionOut>(),
            schema_for_output::<ListingOut>(),
        ] {
            assert_eq!(s.get("type").and_then(|t| t.as_str()), Some("object"));
        }
    }
}
