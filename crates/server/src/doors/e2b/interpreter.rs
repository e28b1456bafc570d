//! The code interpreter's API (port 49999; e2b-dev/code-interpreter `template/server/`):
//! `POST /execute` answers one JSON object per line as the kernel runs — `stdout`, `stderr`,
//! `result`, `error`, `number_of_executions`, `keepalive` every few seconds of silence — and
//! `{"type": "end_of_execution"}` last; `/contexts` lists, creates, restarts and removes
//! contexts. Errors are plain text with their status, as that server answers.
//!
//! The default Python context is the session's own kernel. A client that goes away while
//! its cell runs interrupts the cell, as E2B's server does, so the next one is not stuck
//! behind it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Target, HOME};
use crate::app::{App, AppState};
use crate::services::events::JsonMap;
use crate::services::{CellEvent, CellRequest, ServiceError, Session};

/// Seconds of silence after which `/execute` sends a keepalive line (E2B's
/// `KEEPALIVE_INTERVAL`).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// The id of the default Python context: the session's own kernel.
const DEFAULT_PYTHON: &str = "python";

/// The contexts of one sandbox.
#[derive(Default)]
pub struct Contexts {
    inner: Mutex<Vec<Context>>,
}

/// One context as the API shows it.
#[derive(Clone, Serialize)]
struct Context {
    id: String,
    language: String,
    cwd: String,
}

impl Contexts {
    fn list(&self) -> Vec<Context> {
        let mut v = vec![Context {
            id: DEFAULT_PYTHON.into(),
            language: "python".into(),
            cwd: HOME.into(),
        }];
        if let Ok(inner) = self.inner.lock() {
            v.extend(inner.iter().cloned());
        }
        v
    }
}

pub fn routes(app: &Arc<App>) -> Router<AppState> {
    Router::new()
        .route("/health", get(|| async { Json("OK") }))
        .route("/execute", post(execute))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}/restart", post(restart_context))
        .route("/contexts/{id}", delete(remove_context))
        .layer(axum::extract::DefaultBodyLimit::max(
            app.config.max_body_bytes,
        ))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "Not Found") })
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

fn bad_json(e: JsonRejection) -> Response {
    text(e.status(), e.body_text())
}

fn service_text(e: ServiceError) -> Response {
    match e {
        ServiceError::SessionNotFound(id) => super::sandbox_not_found(&id),
        ServiceError::Busy => text(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        ServiceError::Exhausted(_) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        ServiceError::Invalid(_) => text(StatusCode::BAD_REQUEST, e.to_string()),
        e => {
            tracing::error!(error = %e, "e2b interpreter: service error");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// E2B's language names (`normalize_language` of the template's server).
fn normalize_language(language: Option<&str>) -> String {
    match language.map(|l| l.trim().to_ascii_lowercase()) {
        None => "python".into(),
        Some(l) if l.is_empty() => "python".into(),
        Some(l) if l == "js" => "javascript".into(),
        Some(l) if l == "ts" => "typescript".into(),
        Some(l) => l,
    }
}

#[derive(Deserialize)]
struct ExecuteRequest {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
}

/// `POST /execute`.
async fn execute(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    body: Result<Json<ExecuteRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad_json(e),
    };
    if req.context_id.is_some() && req.language.is_some() {
        return text(
            StatusCode::BAD_REQUEST,
            "Only one of context_id or language can be provided",
        );
    }
    if let Some(id) = &req.context_id {
        if id != DEFAULT_PYTHON {
            return text(StatusCode::NOT_FOUND, format!("Context {id} not found"));
        }
    }
    let language = normalize_language(req.language.as_deref());
    if language != "python" {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            format!("language {language} is not served by this Pyxis: python only"),
        );
    }
    let env = req.env_vars.unwrap_or_default();
    if let Err(e) = crate::services::validate_env(&env) {
        return service_text(e);
    }
    run_python(&app, &t.session, req.code, &env)
}

/// Python that sets `env` for the next cell and remembers what it replaced, and Python that
/// puts it back (E2B's server does the same around a cell with `env_vars`). JSON string
/// literals are Python string literals.
fn env_cells(env: &BTreeMap<String, String>) -> (String, String) {
    let map = serde_json::to_string(env).unwrap_or_else(|_| "{}".into());
    let set = format!(
        "import os as __pyxis_os\n\
         __pyxis_e2b_env = {{k: __pyxis_os.environ.get(k) for k in {map}}}\n\
         __pyxis_os.environ.update({map})\n"
    );
    let reset = "for __k, __v in __pyxis_e2b_env.items():\n    \
         (__pyxis_os.environ.pop(__k, None) if __v is None else \
         __pyxis_os.environ.__setitem__(__k, __v))\n\
         del __pyxis_e2b_env, __k, __v\n"
        .to_string();
    (set, reset)
}

fn silent(code: String, timeout: Duration) -> CellRequest {
    CellRequest {
        silent: true,
        store_history: Some(false),
        ..CellRequest::new(code, timeout)
    }
}

fn run_python(
    app: &Arc<App>,
    session: &Arc<Session>,
    code: String,
    env: &BTreeMap<String, String>,
) -> Response {
    let timeout = app.config.max_exec_timeout;
    // Cells run in the order they are asked for: set, run, reset.
    if !env.is_empty() {
        let (set, _) = env_cells(env);
        match app.sessions.execute(session, silent(set, timeout)) {
            Ok(h) => drain(h),
            Err(e) => return service_text(e),
        }
    }
    let handle = match app
        .sessions
        .execute(session, CellRequest::new(code, timeout))
    {
        Ok(h) => h,
        Err(e) => return service_text(e),
    };
    if !env.is_empty() {
        let (_, reset) = env_cells(env);
        if let Ok(h) = app.sessions.execute(session, silent(reset, timeout)) {
            drain(h);
        }
    }
    let guard = Interrupter {
        app: app.clone(),
        session: session.clone(),
        running: false,
        done: false,
    };
    let state = (handle, guard, false);
    let lines = futures_util::stream::unfold(Some(state), |state| async move {
        let (mut handle, mut guard, mut errored) = state?;
        loop {
            let ev = match tokio::time::timeout(KEEPALIVE, handle.events.recv()).await {
                Err(_) => {
                    let line = line(&serde_json::json!({"type": "keepalive"}));
                    return Some((line, Some((handle, guard, errored))));
                }
                Ok(None) => {
                    guard.done = true;
                    let end = line(&serde_json::json!({"type": "end_of_execution"}));
                    return Some((end, None));
                }
                Ok(Some(ev)) => ev,
            };
            let out = match ev {
                CellEvent::ExecuteInput {
                    execution_count, ..
                } => {
                    guard.running = true;
                    Some(serde_json::json!({
                        "type": "number_of_executions",
                        "execution_count": execution_count,
                    }))
                }
                CellEvent::Stream { name, text } => Some(serde_json::json!({
                    "type": if name == "stderr" { "stderr" } else { "stdout" },
                    "text": text,
                    "timestamp": now(),
                })),
                CellEvent::DisplayData { data, .. } => Some(result(data, false)),
                CellEvent::ExecuteResult { data, .. } => Some(result(data, true)),
                CellEvent::Error(e) if !errored => {
                    errored = true;
                    Some(error_line(&e.name, &e.value, &e.traceback))
                }
                CellEvent::Reply(summary) => {
                    guard.done = true;
                    let mut tail = String::new();
                    if let (false, Some(e)) = (errored, summary.error.as_ref()) {
                        tail.push_str(&line(&error_line(&e.name, &e.value, &e.traceback)));
                    }
                    tail.push_str(&line(&serde_json::json!({"type": "end_of_execution"})));
                    return Some((tail, None));
                }
                _ => None,
            };
            if let Some(v) = out {
                return Some((line(&v), Some((handle, guard, errored))));
            }
        }
    });
    use futures_util::StreamExt;
    let body = axum::body::Body::from_stream(
        lines.map(|l| Ok::<_, std::convert::Infallible>(Bytes::from(l))),
    );
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

/// Interrupts the cell when the client goes away before its end (the stream is dropped).
struct Interrupter {
    app: Arc<App>,
    session: Arc<Session>,
    running: bool,
    done: bool,
}

impl Drop for Interrupter {
    fn drop(&mut self) {
        if self.running && !self.done {
            tracing::info!(session = %self.session.id, "e2b: client left during a cell; interrupting it");
            self.app.sessions.interrupt(&self.session);
        }
    }
}

/// Consume a helper cell's events in the background.
fn drain(mut h: crate::services::CellHandle) {
    tokio::spawn(async move { while h.events.recv().await.is_some() {} });
}

fn line(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

fn now() -> String {
    super::rfc3339(std::time::SystemTime::now())
}

fn error_line(name: &str, value: &str, traceback: &[String]) -> Value {
    serde_json::json!({
        "type": "error",
        "name": name,
        "value": value,
        "traceback": traceback.join("\n"),
    })
}

/// A MIME bundle as E2B's `Result`: the known types by name, the rest in `extra`; `text`
/// loses the quotes of a string's repr, as E2B's server does.
fn result(mut data: JsonMap, is_main_result: bool) -> Value {
    let mut take = |mime: &str| data.remove(mime).unwrap_or(Value::Null);
    let mut text = take("text/plain");
    if let Value::String(s) = &text {
        let quoted = s.len() >= 2
            && ((s.starts_with('\'') && s.ends_with('\''))
                || (s.starts_with('"') && s.ends_with('"')));
        if quoted {
            text = Value::String(s[1..s.len() - 1].to_string());
        }
    }
    let fields = [
        ("html", "text/html"),
        ("markdown", "text/markdown"),
        ("svg", "image/svg+xml"),
        ("png", "image/png"),
        ("jpeg", "image/jpeg"),
        ("pdf", "application/pdf"),
        ("latex", "text/latex"),
        ("json", "application/json"),
        ("javascript", "application/javascript"),
        ("data", "e2b/data"),
        ("chart", "e2b/chart"),
    ];
    let mut out = serde_json::Map::new();
    out.insert("type".into(), "result".into());
    out.insert("text".into(), text);
    for (name, mime) in fields {
        out.insert(name.into(), take(mime));
    }
    out.insert("extra".into(), Value::Object(data.into_iter().collect()));
    out.insert("is_main_result".into(), is_main_result.into());
    Value::Object(out)
}

#[derive(Deserialize, Default)]
struct CreateContext {
    language: Option<String>,
    cwd: Option<String>,
}

/// `GET /contexts`.
async fn list_contexts(Extension(t): Extension<Target>) -> Response {
    Json(t.sbx.contexts.list()).into_response()
}

/// `POST /contexts {language?, cwd?}`.
async fn create_context(
    Extension(_t): Extension<Target>,
    body: Result<Json<CreateContext>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad_json(e),
    };
    let language = normalize_language(req.language.as_deref());
    let _cwd = req.cwd;
    text(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "creating a {language} context is not served by this Pyxis yet: the sandbox's \
             default python context runs the code"
        ),
    )
}

/// `POST /contexts/{id}/restart`: a fresh interpreter, same files.
async fn restart_context(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    Path(id): Path<String>,
) -> Response {
    if id != DEFAULT_PYTHON {
        return text(StatusCode::NOT_FOUND, format!("Context {id} not found"));
    }
    match app.sessions.restart(&t.session).await {
        Ok(()) => Json(Value::Null).into_response(),
        Err(e) => service_text(e),
    }
}

/// `DELETE /contexts/{id}`.
async fn remove_context(Extension(_t): Extension<Target>, Path(id): Path<String>) -> Response {
    if id == DEFAULT_PYTHON {
        return text(
            StatusCode::BAD_REQUEST,
            "the default python context is the sandbox's own kernel and stays",
        );
    }
    text(StatusCode::NOT_FOUND, format!("Context {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_mime_types_like_e2b() {
        let mut data = JsonMap::new();
        data.insert("text/plain".into(), "'abc'".into());
        data.insert("image/png".into(), "iVBOR".into());
        data.insert("application/x-custom".into(), "x".into());
        let r = result(data, true);
        assert_eq!(r["text"], "abc");
        assert_eq!(r["png"], "iVBOR");
        assert_eq!(r["html"], Value::Null);
        assert_eq!(r["extra"]["application/x-custom"], "x");
        assert_eq!(r["is_main_result"], true);
        assert_eq!(r["type"], "result");
    }

    #[test]
    fn languages_normalize() {
        assert_eq!(normalize_language(None), "python");
        assert_eq!(normalize_language(Some("JS")), "javascript");
        assert_eq!(normalize_language(Some("ts")), "typescript");
    }

    #[test]
    fn env_cells_are_python_literals() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "it's \"q\"\n".to_string());
        let (set, reset) = env_cells(&env);
        assert!(set.contains(r#"{"A":"it's \"q\"\n"}"#));
        assert!(reset.contains("del __pyxis_e2b_env"));
    }
}
