//! The function runner's API (COMPAT.md §3). Every call is one-shot: a fresh
//! sandbox through `Sessions::one_shot`, destroyed afterwards.
//!
//! - `POST /api/runner/execute {code, timeout}` → `{result, status}`;
//! - `POST /api/coderunner/v1/pycode/run-by-params` → the selected keys of
//!   the dict the function returns; `…/async-run-by-params` answers 202 and
//!   POSTs `{"res", "type": "pythoncode"}` to `callback` later;
//! - `GET /api/health`, `/health/ready`, `/health/alive` (open, like
//!   `/healthz`);
//! - `/api/pypkg/install|list|uninstall` ([`packages`]): the runner's package set, unpacked
//!   into every runner call's sandbox before its code runs.

pub mod packages;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::app::{App, AppState};
use crate::doors::v1::model::ErrorBody;
use crate::error::ApiError;
use crate::services::timeout_from;
use crate::services::url_import::{without_url, ImportPolicy};
use crate::services::{
    session_options, CellOutcome as Execution, CellRequest, CellStatus as ExecStatus, NewSession,
};

/// Most input parameters of one call.
const MAX_PARAMS: usize = 256;

/// A health answer: `{"status": "ok"}` (or `"not ready"`, `"accepted"`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerStatus {
    /// `ok`, `not ready` or `accepted`.
    status: &'static str,
}

/// `GET /api/health`: the process answers.
#[utoipa::path(get, path = "/api/health", responses((status = 200, body = RunnerStatus)),
    tag = "runner")]
pub async fn health() -> Json<RunnerStatus> {
    Json(RunnerStatus { status: "ok" })
}

/// `GET /health/alive`: the process answers.
#[utoipa::path(get, path = "/health/alive", responses((status = 200, body = RunnerStatus)),
    tag = "runner")]
pub async fn alive() -> Json<RunnerStatus> {
    health().await
}

/// `GET /health/ready`: sessions can be created.
#[utoipa::path(get, path = "/health/ready",
    responses(
        (status = 200, body = RunnerStatus),
        (status = 503, body = RunnerStatus, description = "the pool is not ready"),
    ), tag = "runner")]
pub async fn ready(State(app): State<AppState>) -> Response {
    if app.sessions.is_ready() {
        Json(RunnerStatus { status: "ok" }).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(RunnerStatus {
                status: "not ready",
            }),
        )
            .into_response()
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<T, ApiError> {
    let Json(v) = body?;
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

/// Run `code` once in a fresh sandbox, with the server's default time limit
/// or `timeout_s`.
async fn one_shot(app: &App, code: String, timeout_s: Option<f64>) -> Result<Execution, ApiError> {
    let opts = session_options(&app.config, NewSession::default())?;
    // The runner's clients send their own limit: capped, not refused.
    let max = app.config.max_exec_timeout;
    let given = timeout_s.filter(|t| t.is_finite() && *t > 0.0);
    let timeout = timeout_from(given.map(|t| t.min(max.as_secs_f64())), opts.timeout, max)?;
    let set = crate::services::packages::RunnerSet::of(&app.sessions);
    let handle = app
        .sessions
        .one_shot(
            opts,
            CellRequest::new(code, timeout),
            |session| async move { set.prepare(&app.sessions, &app.files, &session).await },
        )
        .await?;
    Ok(handle.collect().await?)
}

/// `POST /api/runner/execute` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecuteBody {
    /// The Python code.
    code: String,
    /// Time limit in seconds (capped at the server's maximum).
    timeout: Option<f64>,
}

/// `POST /api/runner/execute` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerReply {
    /// Everything the code printed.
    result: String,
    /// `success`, `error` or `timeout`.
    status: &'static str,
    /// The traceback, when the code failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// `POST /api/runner/execute {code, timeout}` → `{"result": stdout,
/// "status": "success"}`; a Python error is `{"result": stdout, "status":
/// "error", "message": traceback}` (`"timeout"` for the time limit).
#[utoipa::path(post, path = "/api/runner/execute", request_body = ExecuteBody,
    responses(
        (status = 200, body = RunnerReply, description = "also when the code failed"),
        (status = 503, body = ErrorBody, description = "no capacity"),
    ), security(("token" = [])), tag = "runner")]
pub async fn execute(
    State(app): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<RunnerReply>, ApiError> {
    let ExecuteBody { code, timeout } = parse(body)?;
    let out = one_shot(&app, code, timeout).await?;
    let (status, message) = match out.summary.status {
        ExecStatus::Ok => ("success", None),
        ExecStatus::Timeout => ("timeout", Some(out.error_text())),
        ExecStatus::Error | ExecStatus::Killed => ("error", Some(out.error_text())),
    };
    Ok(Json(RunnerReply {
        result: out.stdout,
        status,
        message,
    }))
}

/// An input of the function, converted by `type`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InputParam {
    /// `int`, `float`, `bool`, `string`, `array`, `object`, … (absent: as given).
    #[serde(rename = "type", default)]
    kind: Option<String>,
    /// The value.
    #[serde(default)]
    value: Value,
}

/// A key of the function's result to return.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OutputParam {
    /// The key.
    key: String,
}

/// `run-by-params` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ByParams {
    /// Python code that defines `func`.
    code: String,
    /// The function to call (default `main`); it must return a dict.
    #[serde(default = "default_func")]
    func: String,
    /// Its positional arguments.
    #[serde(default)]
    input_params: Vec<InputParam>,
    /// The keys of its result to return (none: all).
    #[serde(default)]
    output_params: Vec<OutputParam>,
    /// Time limit in seconds (capped at the server's maximum).
    timeout: Option<f64>,
    /// Where `async-run-by-params` POSTs the result (required there).
    callback: Option<String>,
}

fn default_func() -> String {
    "main".into()
}

/// A run-by-params error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerErrorBody {
    /// What went wrong (for a Python error, its traceback).
    detail: String,
    /// `CodeRunner.ExecuteError`, `CodeRunner.Timeout`, `CodeRunner.InvalidParameter` or
    /// `CodeRunner.Unavailable`.
    code: &'static str,
}

/// A run-by-params error: `{"detail", "code"}`, 500 for a failed run.
pub struct RunnerError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl RunnerError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn body(self) -> RunnerErrorBody {
        RunnerErrorBody {
            detail: self.detail,
            code: self.code,
        }
    }
}

impl IntoResponse for RunnerError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl RunnerError {
    /// A refused request, with the native status and message.
    async fn from_api(e: ApiError) -> Self {
        let (status, msg) = (e.status(), e.message().to_string());
        let code = if status == StatusCode::SERVICE_UNAVAILABLE {
            "CodeRunner.Unavailable"
        } else {
            "CodeRunner.InvalidParameter"
        };
        Self::new(status, code, msg)
    }
}

/// The Python program that defines `code`, calls `func` with the typed
/// inputs and prints the selected keys of its result, as JSON, on one line
/// after `marker`. Code and inputs travel base64-encoded, so nothing the
/// client sends is spliced into Python source.
fn program(req: &ByParams, marker: &str) -> Result<String, RunnerError> {
    if !is_identifier(&req.func) {
        return Err(RunnerError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "CodeRunner.InvalidParameter",
            format!("func {:?} is not a Python identifier", req.func),
        ));
    }
    if req.input_params.len() > MAX_PARAMS || req.output_params.len() > MAX_PARAMS {
        return Err(RunnerError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "CodeRunner.InvalidParameter",
            format!("at most {MAX_PARAMS} input and output parameters"),
        ));
    }
    let inputs: Vec<Value> = req
        .input_params
        .iter()
        .map(|p| json!([p.kind.as_deref().unwrap_or(""), p.value]))
        .collect();
    let keys: Option<Vec<&str>> = (!req.output_params.is_empty())
        .then(|| req.output_params.iter().map(|p| p.key.as_str()).collect());
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let code = b64(req.code.as_bytes());
    let inputs = b64(Value::from(inputs).to_string().as_bytes());
    let keys = b64(json!(keys).to_string().as_bytes());
    let func = &req.func;
    Ok(format!(
        r#"def __pyxis_runner():
    import base64, json
    def _conv(kind, v):
        kind = (kind or "").lower()
        if v is None:
            return None
        if kind in ("int", "integer"):
            return int(v)
        if kind in ("float", "number", "double"):
            return float(v)
        if kind in ("bool", "boolean"):
            return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
        if kind in ("string", "str"):
            return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        if kind in ("array", "list", "object", "dict") and isinstance(v, str):
            return json.loads(v)
        return v
    ns = {{"__name__": "__pyxis_runner__"}}
    exec(compile(base64.b64decode("{code}").decode(), "<code>", "exec"), ns)
    if "{func}" not in ns or not callable(ns["{func}"]):
        raise NameError("function '{func}' is not defined by the code")
    args = [_conv(k, v) for k, v in json.loads(base64.b64decode("{inputs}"))]
    res = ns["{func}"](*args)
    keys = json.loads(base64.b64decode("{keys}"))
    if not isinstance(res, dict):
        raise TypeError("function '{func}' must return a dict, not " + type(res).__name__)
    out = dict(res) if keys is None else {{k: res.get(k) for k in keys}}
    print("\n{marker}" + json.dumps(out, ensure_ascii=False, default=str), flush=True)
__pyxis_runner()
"#
    ))
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
        && c.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn marker() -> String {
    let n: u128 = rand::thread_rng().gen();
    format!("__PYXIS_RESULT_{n:032x}__:")
}

/// Run the function; its selected outputs.
async fn run_params(app: &App, req: &ByParams) -> Result<Map<String, Value>, RunnerError> {
    let marker = marker();
    let code = program(req, &marker)?;
    let out = match one_shot(app, code, req.timeout).await {
        Ok(out) => out,
        Err(e) => return Err(RunnerError::from_api(e).await),
    };
    match out.summary.status {
        ExecStatus::Ok => {}
        ExecStatus::Timeout => {
            return Err(RunnerError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CodeRunner.Timeout",
                out.error_text(),
            ))
        }
        ExecStatus::Error | ExecStatus::Killed => {
            return Err(RunnerError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CodeRunner.ExecuteError",
                out.error_text(),
            ))
        }
    }
    let line = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(marker.as_str()))
        .ok_or_else(|| {
            RunnerError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "CodeRunner.ExecuteError",
                if out.summary.truncated {
                    "the output was too large and the result was cut off"
                } else {
                    "the function produced no result"
                },
            )
        })?;
    match serde_json::from_str(line) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(RunnerError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "CodeRunner.ExecuteError",
            "the function's result could not be read",
        )),
    }
}

/// `POST /api/coderunner/v1/pycode/run-by-params`.
#[utoipa::path(post, path = "/api/coderunner/v1/pycode/run-by-params", request_body = ByParams,
    responses(
        (status = 200, body = Object, description = "the selected keys of the dict the function returned"),
        (status = 413, body = RunnerErrorBody), (status = 415, body = RunnerErrorBody),
        (status = 422, body = RunnerErrorBody, description = "invalid request"),
        (status = 500, body = RunnerErrorBody, description = "the code failed or timed out (as the runner answers)"),
        (status = 503, body = RunnerErrorBody, description = "no capacity"),
    ), security(("token" = [])), tag = "runner")]
pub async fn run_by_params(
    State(app): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Map<String, Value>>, RunnerError> {
    let req: ByParams = match parse(body) {
        Ok(r) => r,
        Err(e) => return Err(RunnerError::from_api(e).await),
    };
    Ok(Json(run_params(&app, &req).await?))
}

/// `POST /api/coderunner/v1/pycode/async-run-by-params`: 202 now, the
/// result POSTed to `callback` later as `{"res": {…}, "type":
/// "pythoncode"}` (on failure `res` is `{"detail", "code"}`). The callback
/// obeys the same address rules as URL imports (`PYXIS_IMPORT_ALLOW`).
#[utoipa::path(post, path = "/api/coderunner/v1/pycode/async-run-by-params", request_body = ByParams,
    responses(
        (status = 202, body = RunnerStatus, description = "accepted; the result goes to `callback`"),
        (status = 413, body = RunnerErrorBody), (status = 415, body = RunnerErrorBody),
        (status = 422, body = RunnerErrorBody, description = "invalid request or callback"),
        (status = 503, body = RunnerErrorBody, description = "no capacity"),
    ), security(("token" = [])), tag = "runner")]
pub async fn async_run_by_params(
    State(app): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, RunnerError> {
    let req: ByParams = match parse(body) {
        Ok(r) => r,
        Err(e) => return Err(RunnerError::from_api(e).await),
    };
    let Some(callback) = req.callback.clone() else {
        return Err(RunnerError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "CodeRunner.InvalidParameter",
            "callback is required",
        ));
    };
    let url = reqwest::Url::parse(&callback)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            RunnerError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "CodeRunner.InvalidParameter",
                "callback must be an http or https URL",
            )
        })?;
    // Check the generated program now, so a bad func is answered at once.
    program(&req, "x")?;
    // The run keeps the request's tenant (its sandbox counts for it).
    tokio::spawn(crate::tenants::propagate(async move {
        let res = match run_params(&app, &req).await {
            Ok(m) => Value::Object(m),
            Err(e) => json!(e.body()),
        };
        let body = json!({ "res": res, "type": "pythoncode" });
        if let Err(e) = post_callback(&app, &url, &body).await {
            tracing::warn!(
                callback = %crate::services::url_import::redacted(&url),
                error = %e,
                "runner callback failed"
            );
        }
    }));
    Ok((
        StatusCode::ACCEPTED,
        Json(RunnerStatus { status: "accepted" }),
    )
        .into_response())
}

/// POST `body` to `url` with the import rules' checked client: every
/// address the host resolves to public or in `PYXIS_IMPORT_ALLOW`, the
/// connection pinned to the address checked, no redirects, no proxies,
/// bounded in time.
async fn post_callback(app: &Arc<App>, url: &reqwest::Url, body: &Value) -> Result<(), String> {
    let policy = ImportPolicy {
        allow: app.config.import_allow.clone(),
        timeout: app.config.import_timeout.min(Duration::from_secs(60)),
    };
    let client = policy.pinned_client(url).await.map_err(|e| e.to_string())?;
    let resp = client
        .post(url.clone())
        .json(body)
        .send()
        .await
        .map_err(|e| without_url(&e))?;
    if !resp.status().is_success() {
        return Err(format!("the callback answered {}", resp.status()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("main"));
        assert!(is_identifier("_f2"));
        assert!(!is_identifier("2f"));
        assert!(!is_identifier("a\"); import os; (\""));
        assert!(!is_identifier(""));
    }
}
