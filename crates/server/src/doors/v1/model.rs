//! The JSON shapes of the v1 API (requests and responses), with their OpenAPI
//! schemas, and their conversions from the services' typed values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Per-session resource limits a client may ask for (each at most the
/// server's default).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Memory limit in MiB.
    pub memory_mb: Option<u64>,
    /// Process limit.
    pub pids: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
}

/// `POST /v1/sessions` body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Only `python` is supported.
    pub language: Option<String>,
    /// Environment variables of the interpreter.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Default time limit of this session's executions, in seconds.
    pub timeout_s: Option<f64>,
    /// Resource limits (lower than the server's defaults).
    pub limits: Option<LimitsRequest>,
    /// Free-form client data, returned as given.
    pub metadata: Option<serde_json::Value>,
    /// What the session may reach through the server's egress proxy (default: the
    /// operator's, `none` unless configured).
    pub network: Option<NetworkRequest>,
}

/// A session's network policy as a client asks for it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// `none` (nothing), `allow` (the allow-list) or `public` (any public address), at
    /// most the server's `PYXIS_EGRESS_MAX`.
    pub egress: Option<String>,
    /// Host names, `*.wildcards`, networks and `host:port`s (with `allow`).
    #[serde(default)]
    pub allow: Vec<String>,
}

/// Effective limits of a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Process limit.
    pub pids: u64,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Workspace quota in bytes.
    pub disk_bytes: u64,
    /// Default execution time limit in seconds.
    pub timeout_s: f64,
}

/// Current resource use of a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    /// Memory in use (bytes).
    pub memory_bytes: u64,
    /// Highest memory use seen (bytes).
    pub memory_peak_bytes: u64,
    /// Live processes.
    pub pids: u64,
    /// CPU time used (microseconds).
    pub cpu_usec: u64,
    /// Workspace bytes used.
    pub disk_bytes: u64,
}

/// A session as `GET /v1/sessions/{id}` describes it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// Always `python`.
    pub language: String,
    /// `idle` or `busy`.
    pub state: String,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
    /// Last execution or creation time (RFC 3339, UTC).
    pub last_active_at: String,
    /// Cells executed.
    pub execution_count: u64,
    /// Effective limits.
    pub limits: Limits,
    /// Resource use, when it could be read.
    pub usage: Option<Usage>,
    /// Client data given at creation.
    pub metadata: Option<serde_json::Value>,
    /// What it may reach through the egress proxy.
    pub network: crate::services::egress::NetworkView,
}

/// `GET /v1/sessions` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionList {
    /// Live sessions.
    pub sessions: Vec<SessionInfo>,
}

/// `POST /v1/sessions/{id}/execute` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Source of one cell, in the context's language.
    pub code: String,
    /// Time limit in seconds (default: the session's).
    pub timeout_s: Option<f64>,
    /// The context to run in (`GET …/contexts`; default: the session's first).
    pub context: Option<String>,
}

/// The `Accept` header asks for server-sent events.
pub fn wants_sse(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("text/event-stream"))
        })
}

/// `POST /v1/execute` body: one cell in a fresh sandbox, destroyed after.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OneShotRequest {
    /// Python source.
    pub code: String,
    /// Time limit in seconds.
    pub timeout_s: Option<f64>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files downloaded into the fresh workspace before the code runs (the
    /// rules of `POST /v1/sessions/{id}/files/import`): URLs, or `{url, path}`.
    #[serde(default)]
    pub files: Vec<OneShotFile>,
}

/// A file of a one-shot execution: a URL (named after its last segment) or
/// `{url, path}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneShotFile {
    /// An `http` or `https` URL.
    Url(String),
    /// A URL and where to write it.
    Item(ImportItem),
}

impl From<OneShotFile> for ImportItem {
    fn from(f: OneShotFile) -> Self {
        match f {
            OneShotFile::Url(url) => ImportItem { url, path: None },
            OneShotFile::Item(item) => item,
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecStatus {
    /// The cell ran to the end.
    Ok,
    /// The cell raised (see `error`), or was interrupted.
    Error,
    /// The time limit was reached.
    Timeout,
    /// The interpreter was killed (out of memory, or it exited).
    Killed,
}

/// One rich output.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResultItem {
    /// `execute_result` (the last expression) or `display_data`.
    pub kind: String,
    /// MIME bundle: `text/plain`, `text/html`, `image/png` (base64), …
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Per-MIME metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// An error raised by the code (or reported for it).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecError {
    /// Exception name, e.g. `ZeroDivisionError`; `OutOfMemory`, `Timeout`,
    /// `KernelDied` for what the service reports.
    pub name: String,
    /// Exception value.
    pub value: String,
    /// Plain-text traceback lines.
    pub traceback: Vec<String>,
}

/// The outcome of one cell.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Execution {
    /// How it ended.
    pub status: ExecStatus,
    /// The session's execution counter after this cell.
    pub execution_count: u64,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// Rich outputs in order.
    pub results: Vec<ResultItem>,
    /// The error, when `status` is not `ok`.
    pub error: Option<ExecError>,
    /// Wall time of the execution in milliseconds.
    pub duration_ms: f64,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    /// The interpreter was restarted: variables are gone (files stay).
    pub state_lost: bool,
    /// Workspace files the cell created or changed (regular files, found by
    /// a bounded walk of the workspace before and after the cell).
    pub files: Vec<FileChange>,
    /// Every stream chunk and rich result in the order the kernel sent them
    /// (`stdout`, `stderr` and `results` are the same content grouped); adjacent
    /// chunks of one stream are merged.
    #[schema(value_type = Vec<Object>)]
    pub outputs: Vec<crate::services::OutputItem>,
}

/// The `data` of the last SSE event, `execute_reply`: the Execution without its outputs
/// (they came as events before it).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecuteReply {
    /// How it ended.
    pub status: ExecStatus,
    /// The session's execution counter after this cell.
    pub execution_count: u64,
    /// The error, when `status` is not `ok`.
    pub error: Option<ExecError>,
    /// Workspace files the cell created or changed.
    pub files: Vec<FileChange>,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    /// The interpreter was restarted: variables are gone (files stay).
    pub state_lost: bool,
    /// Wall time of the execution in milliseconds.
    pub duration_ms: f64,
}

impl From<crate::services::CellStatus> for ExecStatus {
    fn from(s: crate::services::CellStatus) -> Self {
        use crate::services::CellStatus as C;
        match s {
            C::Ok => ExecStatus::Ok,
            C::Error => ExecStatus::Error,
            C::Timeout => ExecStatus::Timeout,
            C::Killed => ExecStatus::Killed,
        }
    }
}

impl From<crate::services::events::CellError> for ExecError {
    fn from(e: crate::services::events::CellError) -> Self {
        ExecError {
            name: e.name,
            value: e.value,
            traceback: e.traceback,
        }
    }
}

impl From<crate::services::CellSummary> for ExecuteReply {
    fn from(s: crate::services::CellSummary) -> Self {
        ExecuteReply {
            status: s.status.into(),
            execution_count: s.execution_count,
            error: s.error.map(Into::into),
            files: s
                .files
                .into_iter()
                .map(|f| FileChange {
                    path: f.path,
                    size: f.size,
                })
                .collect(),
            truncated: s.truncated,
            state_lost: s.state_lost,
            duration_ms: s.duration_ms,
        }
    }
}

impl From<crate::services::CellOutcome> for Execution {
    fn from(o: crate::services::CellOutcome) -> Self {
        let reply = ExecuteReply::from(o.summary);
        Execution {
            status: reply.status,
            execution_count: reply.execution_count,
            stdout: o.stdout,
            stderr: o.stderr,
            results: o
                .results
                .into_iter()
                .map(|r| ResultItem {
                    kind: r.kind.into(),
                    data: r.data,
                    metadata: r.metadata,
                })
                .collect(),
            error: reply.error,
            duration_ms: reply.duration_ms,
            truncated: reply.truncated,
            state_lost: reply.state_lost,
            files: reply.files,
            outputs: o.outputs,
        }
    }
}

impl From<crate::services::SessionView> for SessionInfo {
    fn from(v: crate::services::SessionView) -> Self {
        SessionInfo {
            id: v.id,
            language: v.language,
            state: if v.busy { "busy" } else { "idle" }.into(),
            created_at: crate::services::sessions::rfc3339(v.created),
            last_active_at: crate::services::sessions::rfc3339(v.last_active),
            execution_count: v.execution_count,
            limits: v.limits.into(),
            usage: v.usage.map(|u| Usage {
                memory_bytes: u.memory_bytes,
                memory_peak_bytes: u.memory_peak_bytes,
                pids: u.pids,
                cpu_usec: u.cpu_usec,
                disk_bytes: u.disk_bytes,
            }),
            metadata: v.metadata,
            network: v.network,
        }
    }
}

impl From<crate::services::sessions::EffectiveLimits> for Limits {
    fn from(l: crate::services::sessions::EffectiveLimits) -> Self {
        Limits {
            memory_bytes: l.memory_bytes,
            pids: l.pids,
            cpus: l.cpus,
            disk_bytes: l.disk_bytes,
            timeout_s: l.timeout_s,
        }
    }
}

impl From<crate::services::sessions::TableStatus> for Status {
    fn from(s: crate::services::sessions::TableStatus) -> Self {
        Status {
            sessions: s.sessions,
            busy_sessions: s.busy_sessions,
            max_sessions: s.max_sessions,
            pool_idle: s.pool_idle,
            pool_min_idle: s.pool_min_idle,
            pool: s
                .pool_lanes
                .iter()
                .map(|l| {
                    let lane = PoolLane {
                        idle: l.idle,
                        min_idle: l.min_idle,
                        max_idle: l.max_idle,
                        target: l.target,
                    };
                    (l.language.name().to_string(), lane)
                })
                .collect(),
            uptime_s: s.uptime_s,
            executions_total: s.executions_total,
        }
    }
}

impl From<CreateSession> for crate::services::NewSession {
    fn from(c: CreateSession) -> Self {
        let l = c.limits.unwrap_or_default();
        crate::services::NewSession {
            language: c.language,
            env: c.env,
            timeout_s: c.timeout_s,
            memory_mb: l.memory_mb,
            pids: l.pids,
            cpus: l.cpus,
            metadata: c.metadata,
            network: c.network.map(|n| crate::services::egress::NetworkRequest {
                egress: n.egress,
                allow: n.allow,
            }),
        }
    }
}

impl From<ImportItem> for crate::services::files::ImportItem {
    fn from(i: ImportItem) -> Self {
        crate::services::files::ImportItem {
            url: i.url,
            path: i.path,
        }
    }
}

impl From<crate::services::files::Written> for UploadedFile {
    fn from(w: crate::services::files::Written) -> Self {
        UploadedFile {
            path: w.path,
            size: w.size,
        }
    }
}

impl From<ExportItem> for crate::services::export::ExportItem {
    fn from(i: ExportItem) -> Self {
        crate::services::export::ExportItem {
            path: i.path,
            url: i.url,
            method: match i.method {
                ExportMethod::Put => crate::services::export::ExportMethod::Put,
                ExportMethod::Post => crate::services::export::ExportMethod::Post,
            },
            fields: i.fields,
            headers: i.headers,
        }
    }
}

impl From<crate::services::export::ExportOutcome> for ExportResult {
    fn from(o: crate::services::export::ExportOutcome) -> Self {
        ExportResult {
            path: o.path,
            url: o.url,
            status: o.status,
            size: o.size,
            error: o.error.map(|message| ErrorDetail {
                code: "export_failed".into(),
                message,
            }),
        }
    }
}

/// A workspace file a cell created or changed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileChange {
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a workspace entry is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (the server never follows it).
    Symlink,
    /// A fifo, socket or device.
    Other,
}

/// One entry of a workspace directory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileEntry {
    /// File name.
    pub name: String,
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, RFC 3339.
    pub modified: String,
    /// What it is.
    pub kind: FileKind,
}

/// `GET /v1/sessions/{id}/files` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileList {
    /// The directory listed, relative to the workspace (`""` is the root).
    pub path: String,
    /// Its entries, sorted by name.
    pub entries: Vec<FileEntry>,
    /// More entries exist than were listed.
    pub truncated: bool,
}

/// Query of the directory routes: a directory relative to the workspace.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirQuery {
    /// Directory relative to the workspace; the root when absent.
    pub path: Option<String>,
}

/// One URL to import.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportItem {
    /// An `http` or `https` URL.
    pub url: String,
    /// Where to write it, relative to the workspace (default: the last
    /// segment of the URL's path, in the workspace root).
    pub path: Option<String>,
}

/// `POST /v1/sessions/{id}/files/import` request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The URLs to fetch, in order.
    pub files: Vec<ImportItem>,
}

/// How an export sends a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
pub enum ExportMethod {
    /// The file is the raw request body (e.g. an S3 presigned PUT URL).
    #[serde(rename = "PUT", alias = "put")]
    Put,
    /// A `multipart/form-data` form: the `fields` first, then the file as
    /// the field `file` (e.g. an S3 presigned POST).
    #[serde(rename = "POST", alias = "post")]
    Post,
}

/// One workspace file to send to a URL.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportItem {
    /// The workspace file (relative path; never through a symlink).
    pub path: String,
    /// An `http` or `https` URL.
    pub url: String,
    /// `PUT` (default) or `POST`.
    #[serde(default = "default_export_method")]
    pub method: ExportMethod,
    /// Form fields sent before the file (`POST` only).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Extra request headers (not `Host`, `Content-Length`,
    /// `Transfer-Encoding` or other connection headers; no `Content-Type`
    /// with `POST`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_export_method() -> ExportMethod {
    ExportMethod::Put
}

/// `POST /v1/sessions/{id}/files/export` request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The files to send.
    pub files: Vec<ExportItem>,
}

/// What became of one file of an export.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExportResult {
    /// The workspace file.
    pub path: String,
    /// The URL it was sent to.
    pub url: String,
    /// The upstream HTTP status, when there was an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes of the file sent.
    pub size: u64,
    /// Why the export of this file failed (no answer, or a status other
    /// than 2xx); absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// `POST /v1/sessions/{id}/files/export` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExportResults {
    /// One result per file, in the order of the request.
    pub results: Vec<ExportResult>,
}

/// A file written by an upload.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UploadedFile {
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// `POST /v1/sessions/{id}/files` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UploadedFiles {
    /// The files written, in the order they were sent.
    pub files: Vec<UploadedFile>,
}

/// `POST /v1/sessions/{id}/interrupt` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InterruptReply {
    /// Whether a cell was running and was sent the interrupt.
    pub interrupted: bool,
}

/// `GET /v1/status` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Status {
    /// Live sessions.
    pub sessions: usize,
    /// Sessions running a cell now.
    pub busy_sessions: usize,
    /// Most live sessions.
    pub max_sessions: usize,
    /// Sandboxes ready in the warm pool.
    pub pool_idle: usize,
    /// Target size of the warm pool.
    pub pool_min_idle: usize,
    /// The warm pool by the language of its sandboxes' first kernel (`PYXIS_POOL_LANGUAGES`;
    /// `javascript` serves TypeScript sessions too). `pool_idle` and `pool_min_idle` are
    /// their totals.
    pub pool: BTreeMap<String, PoolLane>,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Cells executed since start.
    pub executions_total: u64,
}

/// One language's part of the warm pool.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolLane {
    /// Sandboxes ready now.
    pub idle: usize,
    /// Kept ready at least.
    pub min_idle: usize,
    /// Most it grows to.
    pub max_idle: usize,
    /// How many it fills up to now (raised by creates that found it empty).
    pub target: usize,
}

/// `GET /v1/capabilities` answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Capabilities {
    /// Supported languages (of a session's first context and of its other contexts).
    pub languages: Vec<String>,
    /// The interpreter version of each language (TypeScript runs on the Node.js kernel).
    pub language_versions: BTreeMap<String, String>,
    /// Languages whose sessions the warm pool serves with a ready first kernel (the others
    /// take a pooled Python sandbox and start their kernel in it).
    pub pool_languages: Vec<String>,
    /// Python version.
    pub python_version: String,
    /// Preinstalled libraries and versions.
    pub libraries: BTreeMap<String, String>,
    /// Default limits of a session.
    pub limits: Limits,
    /// Bytes of output kept per execution.
    pub max_output_bytes: u64,
    /// Highest time limit a client may ask for, in seconds.
    pub max_timeout_s: f64,
    /// Network policy inside sandboxes.
    pub network: String,
    /// Cgroup version used on this host.
    pub cgroup_version: String,
    /// How to add this server to an MCP client.
    pub mcp: McpInfo,
}

/// How to add Pyxis to an MCP client: over Streamable HTTP, or over stdio with the
/// `pyxis mcp` bridge.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct McpInfo {
    /// The Streamable HTTP endpoint.
    pub url: String,
    /// The header every request carries.
    pub auth_header: String,
    /// A client configuration (`mcpServers`) for Streamable HTTP.
    pub http_config: serde_json::Value,
    /// A client configuration for stdio through `pyxis mcp`.
    pub stdio_config: serde_json::Value,
}

/// The single error envelope: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `session_not_found`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}
