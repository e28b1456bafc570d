//! envd's `process.Process` Connect service (`spec/envd/process/process.proto`) on the
//! commands service: `Start` and `Connect` stream a process's events (`start` with its pid
//! first, `data` with base64 `stdout`/`stderr`, `end` with the exit code last, `keepalive`
//! in silences); `List`, `SendSignal`, `SendInput`, `CloseStdin` are unary. PTYs, tags and
//! client-streamed input (`StreamInput`, `Update`) are not served.
//!
//! A command's time limit is the call's Connect deadline (`Connect-Timeout-Ms`, which the
//! SDKs set from their `timeout`); without one it runs until it ends or is killed. A client
//! that goes away does not stop the process (E2B's background commands outlive their
//! stream; `Connect` follows them again).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::connect::{self, ConnectError};
use super::{connect_error, Target, HOME};
use crate::app::{App, AppState};
use crate::services::commands::{self, CommandEvent, CommandRequest, CommandStream};
use crate::services::ServiceError;

/// Keepalive interval when the client names none (`Keepalive-Ping-Interval`, seconds; the
/// SDKs ask for 50).
const DEFAULT_KEEPALIVE_S: u64 = 50;

pub fn routes(_app: &Arc<App>) -> Router<AppState> {
    Router::new().route("/process.Process/{method}", post(process))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ProcessConfig {
    #[serde(default)]
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    cwd: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    #[serde(default)]
    process: ProcessConfig,
    pty: Option<serde_json::Value>,
    tag: Option<String>,
    stdin: Option<bool>,
}

/// `ProcessSelector`: a pid (a number, or a string as proto JSON allows) or a tag.
#[derive(Deserialize, Default)]
struct Selector {
    pid: Option<serde_json::Value>,
    tag: Option<String>,
}

impl Selector {
    fn pid(&self) -> Result<u32, ConnectError> {
        if self.tag.is_some() {
            return Err(ConnectError::not_found(
                "processes are selected by pid: Pyxis does not tag them",
            ));
        }
        let pid = match &self.pid {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        pid.and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| ConnectError::invalid("process.pid is missing or not a pid"))
    }
}

#[derive(Deserialize, Default)]
struct SelectorRequest {
    #[serde(default)]
    process: Selector,
    signal: Option<serde_json::Value>,
    input: Option<ProcessInput>,
}

#[derive(Deserialize)]
struct ProcessInput {
    stdin: Option<String>,
    pty: Option<String>,
}

#[derive(Serialize)]
struct ProcessEvent {
    event: serde_json::Value,
}

fn event(v: serde_json::Value) -> Bytes {
    connect::data_frame(&ProcessEvent { event: v })
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// `POST /process.Process/{method}`.
async fn process(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let streaming = connect::content_type(&headers) == connect::STREAM_JSON;
    let max = app.config.max_body_bytes;
    match (method.as_str(), streaming) {
        ("Start", true) => match connect::decode_request::<StartRequest>(&body, max) {
            Ok(req) => start(&app, &t, req, &headers).await,
            Err(e) => e.stream(),
        },
        ("Connect", true) => match connect::decode_request::<SelectorRequest>(&body, max) {
            Ok(req) => match req.process.pid().and_then(|pid| {
                commands::subscribe(&t.session, pid).map_err(|e| not_found_pid(e, pid))
            }) {
                Ok(stream) => events(stream, keepalive(&headers), false),
                Err(e) => e.stream(),
            },
            Err(e) => e.stream(),
        },
        ("Start" | "Connect", false) => ConnectError::invalid(format!(
            "process.Process/{method} is server-streaming: send application/connect+json"
        ))
        .unary(),
        (_, true) => ConnectError::unimplemented(format!(
            "process.Process/{method} is not a server-streaming method of Pyxis"
        ))
        .stream(),
        (m, false) => {
            if connect::content_type(&headers) != connect::UNARY_JSON {
                return ConnectError::invalid("send application/json (Connect JSON)").unary();
            }
            let answer = match connect::decode_message::<SelectorRequest>(&body) {
                Err(e) => Err(e),
                Ok(req) => unary(&t, m, req).await,
            };
            match answer {
                Ok(v) => connect::unary_ok(&v),
                Err(e) => e.unary(),
            }
        }
    }
}

fn not_found_pid(e: ServiceError, pid: u32) -> ConnectError {
    match e {
        ServiceError::NotFound { .. } => {
            ConnectError::not_found(format!("process with pid {pid} not found"))
        }
        e => connect_error(e),
    }
}

async fn unary(
    t: &Target,
    method: &str,
    req: SelectorRequest,
) -> Result<serde_json::Value, ConnectError> {
    match method {
        "List" => {
            let processes: Vec<serde_json::Value> = commands::list(&t.session)
                .into_iter()
                .filter(|c| c.exit.is_none())
                .map(|c| {
                    serde_json::json!({
                        "config": {"cmd": c.cmd, "args": c.args, "envs": {}, "cwd": c.cwd},
                        "pid": c.pid,
                    })
                })
                .collect();
            Ok(serde_json::json!({ "processes": processes }))
        }
        "SendSignal" => {
            let pid = req.process.pid()?;
            let signal = match &req.signal {
                Some(serde_json::Value::String(s)) if s == "SIGNAL_SIGKILL" => "SIGKILL",
                Some(serde_json::Value::String(s)) if s == "SIGNAL_SIGTERM" => "SIGTERM",
                Some(serde_json::Value::Number(n)) if n.as_u64() == Some(9) => "SIGKILL",
                Some(serde_json::Value::Number(n)) if n.as_u64() == Some(15) => "SIGTERM",
                _ => {
                    return Err(ConnectError::invalid(
                        "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM",
                    ))
                }
            };
            let sig = commands::parse_signal(signal).map_err(connect_error)?;
            match commands::signal(&t.session, pid, sig) {
                Ok(true) => Ok(serde_json::json!({})),
                // Ended already: as gone as a process that never was.
                Ok(false) => Err(ConnectError::not_found(format!(
                    "process with pid {pid} not found"
                ))),
                Err(e) => Err(not_found_pid(e, pid)),
            }
        }
        "SendInput" => {
            let pid = req.process.pid()?;
            let input = req
                .input
                .ok_or_else(|| ConnectError::invalid("input is missing"))?;
            if input.pty.is_some() {
                return Err(ConnectError::unimplemented("PTYs are not served by Pyxis"));
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(input.stdin.unwrap_or_default())
                .map_err(|_| ConnectError::invalid("input.stdin is not base64"))?;
            commands::write_stdin(&t.session, pid, &data)
                .await
                .map_err(|e| not_found_pid(e, pid))?;
            Ok(serde_json::json!({}))
        }
        "CloseStdin" => {
            let pid = req.process.pid()?;
            commands::close_stdin(&t.session, pid)
                .await
                .map_err(|e| not_found_pid(e, pid))?;
            Ok(serde_json::json!({}))
        }
        "Update" | "StreamInput" => Err(ConnectError::unimplemented(format!(
            "process.Process/{method} (PTYs, streamed input) is not served by Pyxis"
        ))),
        m => Err(ConnectError::unimplemented(format!(
            "process.Process/{m} does not exist"
        ))),
    }
}

/// The keepalive interval the client asks for.
fn keepalive(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_KEEPALIVE_S);
    Duration::from_secs(secs.clamp(1, DEFAULT_KEEPALIVE_S))
}

/// The call's deadline (`Connect-Timeout-Ms`).
fn deadline(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

async fn start(app: &Arc<App>, t: &Target, req: StartRequest, headers: &HeaderMap) -> Response {
    if req.pty.is_some() {
        return ConnectError::unimplemented("PTYs are not served by Pyxis").stream();
    }
    if req.tag.is_some() {
        tracing::debug!("e2b process start: tag ignored");
    }
    let cwd = match req.process.cwd.as_deref() {
        None | Some("") => None,
        Some(c) => match super::workspace_path(c) {
            Ok(rel) if rel.is_empty() => Some("/workspace".to_string()),
            Ok(rel) if c.starts_with('/') || c.starts_with('~') => {
                Some(format!("/workspace/{rel}"))
            }
            Ok(_) => Some(c.to_string()),
            // Elsewhere in the sandbox (`/tmp`, `/`): the command goes there itself.
            Err(_) => Some(c.to_string()),
        },
    };
    let mut env = req.process.envs;
    env.entry("HOME".into()).or_insert_with(|| HOME.into());
    env.entry("USER".into()).or_insert_with(|| "user".into());
    let cmd = CommandRequest {
        cmd: req.process.cmd,
        args: req.process.args,
        env,
        cwd,
        stdin: None,
        timeout: deadline(headers),
        // stdin: true keeps the command's stdin open for SendInput; such commands are the
        // service's background ones.
        background: req.stdin == Some(true),
    };
    let max_output = app.config.max_output_bytes;
    match commands::run(&t.session, cmd, max_output).await {
        Ok(stream) => events(stream, keepalive(headers), true),
        Err(e) => connect_error(e).stream(),
    }
}

/// A command's events as `ProcessEvent` envelopes, ended by the end-of-stream envelope.
fn events(stream: CommandStream, keepalive: Duration, started: bool) -> Response {
    let pid = stream.pid;
    let first = (!started).then(|| event(serde_json::json!({"start": {"pid": pid}})));
    let frames = futures_util::stream::unfold(Some((stream, first)), move |state| async move {
        let (mut stream, first) = state?;
        if let Some(f) = first {
            return Some((f, Some((stream, None))));
        }
        let ev = match tokio::time::timeout(keepalive, stream.next()).await {
            Err(_) => {
                let f = event(serde_json::json!({"keepalive": {}}));
                return Some((f, Some((stream, None))));
            }
            Ok(None) => return Some((connect::end_frame(None), None)),
            Ok(Some(ev)) => ev,
        };
        let frame = match ev {
            CommandEvent::Started { pid } => event(serde_json::json!({"start": {"pid": pid}})),
            CommandEvent::Stdout(s) => event(serde_json::json!({"data": {"stdout": b64(&s)}})),
            CommandEvent::Stderr(s) => event(serde_json::json!({"data": {"stderr": b64(&s)}})),
            CommandEvent::Exit(exit) if exit.timed_out => {
                let e = ConnectError::new(
                    "deadline_exceeded",
                    "the command ran past its timeout and was killed",
                );
                return Some((connect::end_frame(Some(&e)), None));
            }
            CommandEvent::Exit(exit) => {
                let (code, status) = match (exit.exit_code, exit.signal) {
                    (Some(c), _) => (c, format!("exit status {c}")),
                    (None, Some(s)) => (-1, format!("signal: {}", signal_name(s))),
                    (None, None) => (-1, "signal: killed".to_string()),
                };
                let mut end = event(serde_json::json!({"end": {
                    "exitCode": code,
                    "exited": exit.exit_code.is_some(),
                    "status": status,
                }}))
                .to_vec();
                end.extend_from_slice(&connect::end_frame(None));
                return Some((Bytes::from(end), None));
            }
        };
        Some((frame, Some((stream, None))))
    });
    connect::stream_response(frames)
}

/// Go's name of a signal, as envd's `status` says it.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "killed",
        libc::SIGTERM => "terminated",
        libc::SIGINT => "interrupt",
        libc::SIGHUP => "hangup",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGABRT => "aborted",
        libc::SIGPIPE => "broken pipe",
        _ => "signal",
    }
}
