//! The code interpreter's API (port 49999; e2b-dev/code-interpreter `template/server/`):
//! `POST /execute` answers one JSON object per line as the kernel runs — `stdout`, `stderr`,
//! `result`, `error`, `number_of_executions`, `keepalive` every few seconds of silence — and
//! `{"type": "end_of_execution"}` last; `/contexts` lists, creates, restarts and removes
//! contexts. Errors are plain text with their status, as that server answers.
//!
//! Contexts are the session's contexts (kernels of python, javascript, typescript, bash in
//! the same sandbox); the first one, `default`, is Python. As in E2B's server, `/execute`
//! with a `language` runs in that language's default context, made on first use. A client
//! that goes away while its cell runs interrupts the cell, as E2B's server does, so the
//! next one is not stuck behind it.

use std::collections::BTreeMap;
use std::sync::Arc;
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
use crate::services::contexts::{Language, DEFAULT_CONTEXT};
use crate::services::events::JsonMap;
use crate::services::{CellEvent, CellRequest, ServiceError, Session};

/// Seconds of silence after which `/execute` sends a keepalive line (E2B's
/// `KEEPALIVE_INTERVAL`).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// The door's default context per language (E2B's `default_websockets`): the context
/// `/execute {language}` runs in. Python's is the session's first context.
#[derive(Default)]
pub struct Contexts {
    by_language: tokio::sync::Mutex<BTreeMap<&'static str, String>>,
}

/// One context as the API shows it.
#[derive(Clone, Serialize)]
struct Context {
    id: String,
    language: String,
    cwd: String,
}

/// A context's working directory as E2B shows it (`/workspace` is `/home/user`).
fn e2b_cwd(cwd: &str) -> String {
    match cwd.strip_prefix("/workspace") {
        Some("") => HOME.to_string(),
        Some(rest) if rest.starts_with('/') => format!("{HOME}{rest}"),
        _ => cwd.to_string(),
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
        ServiceError::TooMany(_) => text(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
        ServiceError::NotFound { .. } => text(StatusCode::NOT_FOUND, e.to_string()),
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
    let env = req.env_vars.unwrap_or_default();
    if let Err(e) = crate::services::validate_env(&env) {
        return service_text(e);
    }
    let ctx = match (&req.context_id, &req.language) {
        (Some(id), _) => match t.session.context(Some(id)) {
            Ok(c) => c,
            Err(_) => return text(StatusCode::NOT_FOUND, format!("Context {id} not found")),
        },
        (None, language) => {
            let name = normalize_language(language.as_deref());
            let language = match Language::parse(&name) {
                Ok(l) => l,
                Err(e) => return service_text(e),
            };
            match default_context(&app, &t, language).await {
                Ok(c) => c,
                Err(e) => return service_text(e),
            }
        }
    };
    run_cell(&app, &t.session, &ctx, req.code, &env)
}

/// The default context of `language`: the session's first for Python, else the one this
/// door made for it, made now if there is none (or it was removed).
async fn default_context(
    app: &Arc<App>,
    t: &Target,
    language: Language,
) -> Result<Arc<crate::services::contexts::Context>, ServiceError> {
    if language == Language::Python {
        return t.session.context(None);
    }
    let mut map = t.sbx.contexts.by_language.lock().await;
    if let Some(id) = map.get(language.name()) {
        if let Ok(c) = t.session.context(Some(id)) {
            return Ok(c);
        }
    }
    let ctx = app
        .sessions
        .create_context(&t.session, language, None)
        .await?;
    map.insert(language.name(), ctx.id.clone());
    Ok(ctx)
}

/// Python that sets `env` for the next cell and remembers what it replaced, and Python that
/// puts it back (E2B's server does the same around a cell with `env_vars`). JSON string
/// literals are Python string literals.
fn env_cells(language: Language, env: &BTreeMap<String, String>) -> Option<(String, String)> {
    let map = serde_json::to_string(env).unwrap_or_else(|_| "{}".into());
    match language {
        Language::Python => Some(python_env_cells(&map)),
        Language::JavaScript | Language::TypeScript => Some((
            format!(
                "globalThis.__pyxis_e2b_env = Object.fromEntries(Object.keys({map}).map(\
                 (k) => [k, process.env[k]])); Object.assign(process.env, {map});"
            ),
            "for (const [k, v] of Object.entries(globalThis.__pyxis_e2b_env)) { if (v === \
             undefined) delete process.env[k]; else process.env[k] = v; } delete \
             globalThis.__pyxis_e2b_env;"
                .to_string(),
        )),
        Language::Bash => None,
    }
}

fn python_env_cells(map: &str) -> (String, String) {
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

fn cell(code: String, timeout: Duration, context: &str, silent: bool) -> CellRequest {
    CellRequest {
        silent,
        store_history: silent.then_some(false),
        context: (context != DEFAULT_CONTEXT).then(|| context.to_string()),
        ..CellRequest::new(code, timeout)
    }
}

fn run_cell(
    app: &Arc<App>,
    session: &Arc<Session>,
    ctx: &crate::services::contexts::Context,
    code: String,
    env: &BTreeMap<String, String>,
) -> Response {
    let timeout = app.config.max_exec_timeout;
    let cells = if env.is_empty() {
        None
    } else {
        match env_cells(ctx.language, env) {
            Some(c) => Some(c),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "env_vars are served for python and javascript contexts, not {}",
                        ctx.language.name()
                    ),
                )
            }
        }
    };
    // Cells of a context run in the order they are asked for: set, run, reset.
    if let Some((set, _)) = &cells {
        match app
            .sessions
            .execute(session, cell(set.clone(), timeout, &ctx.id, true))
        {
            Ok(h) => drain(h),
            Err(e) => return service_text(e),
        }
    }
    let handle = match app
        .sessions
        .execute(session, cell(code, timeout, &ctx.id, false))
    {
        Ok(h) => h,
        Err(e) => return service_text(e),
    };
    if let Some((_, reset)) = cells {
        if let Ok(h) = app
            .sessions
            .execute(session, cell(reset, timeout, &ctx.id, true))
        {
            drain(h);
        }
    }
    let guard = Interrupter {
        app: app.clone(),
        session: session.clone(),
        context: ctx.id.clone(),
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
    context: String,
    running: bool,
    done: bool,
}

impl Drop for Interrupter {
    fn drop(&mut self) {
        if self.running && !self.done {
            tracing::info!(session = %self.session.id, "e2b: client left during a cell; interrupting it");
            let _ = self
                .app
                .sessions
                .interrupt_context(&self.session, &self.context);
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

fn view(c: &crate::services::contexts::ContextView) -> Context {
    Context {
        id: c.id.clone(),
        language: c.language.to_string(),
        cwd: e2b_cwd(&c.cwd),
    }
}

/// `GET /contexts`.
async fn list_contexts(State(app): State<AppState>, Extension(t): Extension<Target>) -> Response {
    let all: Vec<Context> = app
        .sessions
        .list_contexts(&t.session)
        .iter()
        .map(view)
        .collect();
    Json(all).into_response()
}

/// `POST /contexts {language?, cwd?}`: a new context (kernel) in the sandbox.
async fn create_context(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    body: Result<Json<CreateContext>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad_json(e),
    };
    let language = match Language::parse(&normalize_language(req.language.as_deref())) {
        Ok(l) => l,
        Err(e) => return service_text(e),
    };
    let cwd = match req.cwd.as_deref().map(super::workspace_path) {
        None => None,
        Some(Ok(rel)) if rel.is_empty() => Some("/workspace".to_string()),
        Some(Ok(rel)) => Some(format!("/workspace/{rel}")),
        Some(Err(m)) => return text(StatusCode::BAD_REQUEST, m),
    };
    match app
        .sessions
        .create_context(&t.session, language, cwd.as_deref())
        .await
    {
        Ok(ctx) => Json(view(&ctx.view())).into_response(),
        Err(e) => service_text(e),
    }
}

/// `POST /contexts/{id}/restart`: a fresh interpreter, same files.
async fn restart_context(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    Path(id): Path<String>,
) -> Response {
    match app.sessions.restart_context(&t.session, &id).await {
        Ok(()) => Json(Value::Null).into_response(),
        Err(ServiceError::NotFound { .. }) => {
            text(StatusCode::NOT_FOUND, format!("Context {id} not found"))
        }
        Err(e) => service_text(e),
    }
}

/// `DELETE /contexts/{id}`.
async fn remove_context(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    Path(id): Path<String>,
) -> Response {
    match app.sessions.delete_context(&t.session, &id).await {
        Ok(()) => Json(Value::Null).into_response(),
        Err(ServiceError::NotFound { .. }) => {
            text(StatusCode::NOT_FOUND, format!("Context {id} not found"))
        }
        Err(ServiceError::Conflict { .. }) => text(
            StatusCode::BAD_REQUEST,
            "the default python context is the sandbox's first kernel and stays",
        ),
        Err(e) => service_text(e),
    }
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
        let (set, reset) = env_cells(Language::Python, &env).unwrap();
        assert!(set.contains(r#"{"A":"it's \"q\"\n"}"#));
        assert!(reset.contains("del __pyxis_e2b_env"));
    }
}
