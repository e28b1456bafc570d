//! Commands: plain processes in a session's sandbox, beside its contexts; collected into
//! one answer, or streamed as server-sent events with `Accept: text/event-stream`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::doors::v1::model::{wants_sse, ErrorBody};
use crate::error::ApiError;
use crate::services::commands::{
    self, CommandEvent, CommandExit, CommandInfo, CommandRequest, CommandStream,
};
use crate::services::{timeout_from, ServiceError};

/// Seconds between SSE keep-alive comments.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `POST /v1/sessions/{id}/commands` body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// Without `args`: a shell command line, run by `/bin/bash -c`. With `args`: the
    /// program (looked up in the sandbox's `PATH`), run without a shell.
    pub cmd: String,
    /// The program's arguments (then `cmd` is not given to a shell).
    pub args: Option<Vec<String>>,
    /// Environment variables added to the session's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute, or under `/workspace`; default `/workspace`).
    pub cwd: Option<String>,
    /// Text written to its stdin (then closed, unless `background`).
    pub stdin: Option<String>,
    /// Time limit in seconds (default: the session's for a foreground command, none for a
    /// background one); the process group is killed when it strikes.
    pub timeout_s: Option<f64>,
    /// Return at once with its pid; the command stays listed, its stdin open.
    #[serde(default)]
    pub background: bool,
}

/// A finished command (or, for a background one, one that started).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandResult {
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// What it wrote to stdout (up to the output cap).
    pub stdout: String,
    /// What it wrote to stderr (up to the output cap).
    pub stderr: String,
    /// Exit code; `null` while it runs or when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Wall time in milliseconds.
    pub duration_ms: f64,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    /// The time limit struck.
    pub timed_out: bool,
    /// Still running (a background command).
    pub running: bool,
}

/// A command as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandEntry {
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// The program (or command line).
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory.
    pub cwd: String,
    /// Started in the background.
    pub background: bool,
    /// Still running.
    pub running: bool,
    /// Exit code once ended.
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Start time (RFC 3339, UTC).
    pub started_at: String,
}

impl From<CommandInfo> for CommandEntry {
    fn from(c: CommandInfo) -> Self {
        CommandEntry {
            pid: c.pid,
            cmd: c.cmd,
            args: c.args,
            cwd: c.cwd,
            background: c.background,
            running: c.exit.is_none(),
            exit_code: c.exit.and_then(|e| e.exit_code),
            signal: c.exit.and_then(|e| e.signal),
            started_at: crate::services::sessions::rfc3339(c.started),
        }
    }
}

/// The commands of a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandList {
    /// Running commands and ended background ones, oldest first.
    pub commands: Vec<CommandEntry>,
}

/// `POST …/commands/{pid}/stdin` body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinRequest {
    /// Text to write.
    #[serde(default)]
    pub data: String,
    /// Close stdin after writing (the process reads end-of-file).
    #[serde(default)]
    pub close: bool,
}

/// `POST …/commands/{pid}/kill` body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillRequest {
    /// Signal name (`SIGTERM`, `TERM`) or number; default `SIGKILL`.
    pub signal: Option<String>,
}

/// Whether a signal was sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KillReply {
    /// False if the command had ended already.
    pub signalled: bool,
}

/// Run a process in the session's sandbox (its namespaces, cgroups, uid and seccomp, as
/// its kernels), while cells of any context may run. Collected into one CommandResult; with
/// `Accept: text/event-stream`, events `start` (`{pid}`), `stdout` and `stderr`
/// (`{text}`) as they come, and `exit` last (the CommandResult without output). A
/// non-zero exit is a 200. `background: true` answers 201 at once with the pid; then
/// `GET …/commands`, `…/stdin` and `…/kill`. At most 16 commands run at once per session
/// (429 beyond); output is capped like a cell's.
#[utoipa::path(post, path = "/v1/sessions/{id}/commands", params(("id" = String, Path)),
    request_body = RunCommand,
    responses(
        (status = 200, body = CommandResult, description = "the finished command (JSON), or \
            its events (`text/event-stream`)",
            content((CommandResult = "application/json"), (String = "text/event-stream"))),
        (status = 201, body = CommandResult, description = "a background command, started"),
        (status = 422, body = ErrorBody, description = "bad input, or the program cannot be started"),
        (status = 429, body = ErrorBody, description = "too many commands running"),
    ), security(("token" = [])), tag = "commands")]
pub async fn run_command(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<RunCommand>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let session = app.sessions.get(&id)?;
    let timeout = match req.timeout_s {
        None => None,
        given => Some(timeout_from(
            given,
            session.default_timeout(),
            app.config.max_exec_timeout,
        )?),
    };
    if req.cmd.trim().is_empty() {
        return Err(ServiceError::Invalid("cmd must not be empty".into()).into());
    }
    let (cmd, args) = match req.args {
        Some(args) => (req.cmd, args),
        None => ("/bin/bash".to_string(), vec!["-c".to_string(), req.cmd]),
    };
    let background = req.background;
    let stream = commands::run(
        &session,
        CommandRequest {
            cmd,
            args,
            env: req.env,
            cwd: req.cwd,
            stdin: req.stdin.map(String::into_bytes),
            timeout,
            background,
        },
        app.config.max_output_bytes,
    )
    .await?;
    if background {
        let result = CommandResult {
            pid: stream.pid,
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
            signal: None,
            duration_ms: 0.0,
            truncated: false,
            timed_out: false,
            running: true,
        };
        return Ok((StatusCode::CREATED, Json(result)).into_response());
    }
    if wants_sse(&headers) {
        return Ok(Sse::new(event_stream(stream))
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
            .into_response());
    }
    let out = stream.collect().await;
    Ok(Json(result(out.pid, out.stdout, out.stderr, out.exit)).into_response())
}

fn result(pid: u32, stdout: String, stderr: String, exit: CommandExit) -> CommandResult {
    CommandResult {
        pid,
        stdout,
        stderr,
        exit_code: exit.exit_code,
        signal: exit.signal,
        duration_ms: exit.duration_ms,
        truncated: exit.truncated,
        timed_out: exit.timed_out,
        running: false,
    }
}

/// One SSE event per command event, numbered from 1; `exit` last.
fn event_stream(stream: CommandStream) -> impl Stream<Item = Result<Event, Infallible>> {
    let guard = crate::metrics::stream_open("sse");
    futures_util::stream::unfold(
        (stream, 0u64, false, guard),
        |(mut stream, seq, done, guard)| async move {
            if done {
                return None;
            }
            let ev = stream.next().await?;
            let seq = seq + 1;
            let (name, data, last) = match ev {
                CommandEvent::Started { pid } => {
                    ("start", serde_json::json!({ "pid": pid }), false)
                }
                CommandEvent::Stdout(text) => {
                    ("stdout", serde_json::json!({ "text": text }), false)
                }
                CommandEvent::Stderr(text) => {
                    ("stderr", serde_json::json!({ "text": text }), false)
                }
                CommandEvent::Exit(exit) => (
                    "exit",
                    serde_json::to_value(result(stream.pid, String::new(), String::new(), exit))
                        .unwrap_or_default(),
                    true,
                ),
            };
            let event = Event::default()
                .event(name)
                .id(seq.to_string())
                .data(data.to_string());
            Some((Ok(event), (stream, seq, last, guard)))
        },
    )
}

/// List the session's running commands and its ended background ones.
#[utoipa::path(get, path = "/v1/sessions/{id}/commands", params(("id" = String, Path)),
    responses((status = 200, body = CommandList)),
    security(("token" = [])), tag = "commands")]
pub async fn list_commands(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CommandList>, ApiError> {
    let session = app.sessions.get(&id)?;
    let commands = commands::list(&session)
        .into_iter()
        .map(CommandEntry::from)
        .collect();
    Ok(Json(CommandList { commands }))
}

/// One command, running or ended (background ones stay listed after they end).
#[utoipa::path(get, path = "/v1/sessions/{id}/commands/{pid}",
    params(("id" = String, Path), ("pid" = u32, Path)),
    responses(
        (status = 200, body = CommandEntry),
        (status = 404, body = ErrorBody, description = "no such session or command"),
    ), security(("token" = [])), tag = "commands")]
pub async fn get_command(
    State(app): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Json<CommandEntry>, ApiError> {
    let session = app.sessions.get(&id)?;
    let pid = parse_pid(&pid)?;
    commands::list(&session)
        .into_iter()
        .find(|c| c.pid == pid)
        .map(|c| Json(CommandEntry::from(c)))
        .ok_or_else(|| not_found(pid).into())
}

/// Write to a running command's stdin, and optionally close it. 409 once its stdin is
/// closed (or it does not read it within 10 s).
#[utoipa::path(post, path = "/v1/sessions/{id}/commands/{pid}/stdin",
    params(("id" = String, Path), ("pid" = u32, Path)),
    request_body = StdinRequest,
    responses(
        (status = 204, description = "written"),
        (status = 404, body = ErrorBody, description = "no such session or command"),
        (status = 409, body = ErrorBody, description = "its stdin is closed"),
    ), security(("token" = [])), tag = "commands")]
pub async fn write_stdin(
    State(app): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    body: Result<Json<StdinRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(req) = body?;
    let session = app.sessions.get(&id)?;
    let pid = parse_pid(&pid)?;
    if !commands::list(&session).iter().any(|c| c.pid == pid) {
        return Err(not_found(pid).into());
    }
    if !req.data.is_empty() {
        commands::write_stdin(&session, pid, req.data.as_bytes()).await?;
    }
    if req.close {
        commands::close_stdin(&session, pid).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Send a signal (default `SIGKILL`) to a command's process group.
#[utoipa::path(post, path = "/v1/sessions/{id}/commands/{pid}/kill",
    params(("id" = String, Path), ("pid" = u32, Path)),
    request_body = KillRequest,
    responses(
        (status = 200, body = KillReply),
        (status = 422, body = ErrorBody, description = "unknown signal"),
        (status = 404, body = ErrorBody, description = "no such session or command"),
    ), security(("token" = [])), tag = "commands")]
pub async fn kill_command(
    State(app): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<KillReply>, ApiError> {
    // The body is optional (no body: SIGKILL), so it is parsed here rather than by `Json`,
    // whose rejections would not be this API's JSON errors.
    let body: Option<KillRequest> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?,
        )
    };
    let session = app.sessions.get(&id)?;
    let pid = parse_pid(&pid)?;
    let signal = match body.and_then(|b| b.signal) {
        Some(name) => commands::parse_signal(&name)?,
        None => nix::sys::signal::Signal::SIGKILL,
    };
    let signalled = commands::signal(&session, pid, signal)?;
    Ok(Json(KillReply { signalled }))
}

fn parse_pid(pid: &str) -> Result<u32, ApiError> {
    pid.parse::<u32>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| not_found_text(pid).into())
}

fn not_found(pid: u32) -> ServiceError {
    not_found_text(&pid.to_string())
}

fn not_found_text(pid: &str) -> ServiceError {
    ServiceError::NotFound {
        code: "command_not_found",
        message: format!("no command with pid {pid:?} in this session"),
    }
}
