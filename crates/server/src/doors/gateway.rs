//! The Jupyter-kernel gateway's API (COMPAT.md §2): one stateful session per
//! `user_uuid`, created on first use.
//!
//! - current version: `POST /api/v1/execute?user_uuid=U`, `POST
//!   /api/v1/release?user_uuid=U`, `GET /api/v1/status`;
//! - earlier version: `POST /execute {user_uuid, code}`, `POST /release
//!   {user_uuid}`, `GET /status`.
//!
//! Every call goes to the same `Sessions` methods as the native API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::{App, AppState};
use crate::error::ApiError;
use crate::services::export::{ExportItem, ExportMethod};
use crate::services::{
    session_options, CellOutcome as Execution, CellStatus as ExecStatus, NewSession,
};
use crate::services::{ServiceError, Session};

/// Longest accepted `user_uuid`.
const MAX_USER_LEN: usize = 256;

/// `user_uuid → session id`. Each user has its own slot, locked while its
/// session is looked up or created, so two first calls of one user create
/// one session.
#[derive(Default)]
pub struct GatewayUsers {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<String>>>>>,
}

/// The map's key of `user`: users are per tenant (`tenants.rs`), so one key's `user_uuid`
/// never reaches, replaces or releases another key's session.
fn user_key(user: &str) -> String {
    let tenant = crate::tenants::current();
    let name = tenant.as_ref().map_or("", |t| t.name());
    format!("{name}\n{user}")
}

impl GatewayUsers {
    fn slot(&self, user: &str) -> Arc<tokio::sync::Mutex<Option<String>>> {
        let mut map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(user_key(user)).or_default().clone()
    }

    fn remove(&self, user: &str) -> Option<Arc<tokio::sync::Mutex<Option<String>>>> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&user_key(user))
    }

    /// Forget users whose session is gone (reaped for idleness, deleted
    /// through the native API) and that nobody is using now.
    fn prune(&self, app: &App) {
        let mut map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() <= app.config.max_sessions {
            return;
        }
        // Only the current tenant's users: the others' sessions are not visible from here.
        let mine = user_key("");
        map.retain(|key, slot| match slot.try_lock() {
            Ok(_) if !key.starts_with(&mine) => true,
            Ok(g) => g.as_deref().is_some_and(|id| app.sessions.get(id).is_ok()),
            Err(_) => true,
        });
    }
}

/// `POST /api/v1/release?user_uuid=U`.
#[utoipa::path(post, path = "/api/v1/release",
    params(("user_uuid" = String, Query, description = "the user whose session is released")),
    responses(
        (status = 204, description = "released (also when there was nothing to release)"),
        (status = 422, body = GatewayDetail, description = "user_uuid missing or invalid"),
    ), security(("token" = [])), tag = "gateway")]
pub async fn release_v1_route(s: State<AppState>, q: QueryResult) -> Response {
    detailed(release_v1(s, q).await).await
}

/// `POST /execute {user_uuid, code}` (the earlier version).
#[utoipa::path(post, path = "/execute", request_body = UserCode,
    responses(
        (status = 200, body = ExecuteReply, description = "an image wins over text"),
        (status = 400, body = GatewayDetail, description = "a Python error or a timeout"),
        (status = 413, body = GatewayDetail), (status = 415, body = GatewayDetail),
        (status = 422, body = GatewayDetail, description = "invalid request"),
        (status = 503, body = GatewayDetail, description = "no capacity"),
    ), security(("token" = [])), tag = "gateway")]
pub async fn execute_v0_route(s: State<AppState>, b: JsonBody) -> Response {
    detailed(execute_v0(s, b).await).await
}

/// `POST /release {user_uuid}` (the earlier version).
#[utoipa::path(post, path = "/release", request_body = UserOnly,
    responses(
        (status = 200, body = ReleasedV0),
        (status = 413, body = GatewayDetail), (status = 415, body = GatewayDetail),
        (status = 422, body = GatewayDetail, description = "invalid request"),
    ), security(("token" = [])), tag = "gateway")]
pub async fn release_v0_route(s: State<AppState>, b: JsonBody) -> Response {
    detailed(release_v0(s, b).await).await
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "user_uuid must be 1 to {MAX_USER_LEN} printable characters"
        )));
    }
    Ok(())
}

/// The user's session, created on first use (or after it was destroyed).
async fn session_of(app: &App, user: &str) -> Result<Arc<Session>, ApiError> {
    check_user(user)?;
    let slot = app.gateway.slot(user);
    let mut id = slot.lock().await;
    if let Some(s) = id.as_deref().and_then(|id| app.sessions.get(id).ok()) {
        return Ok(s);
    }
    let opts = session_options(&app.config, NewSession::default())?;
    let session = app.sessions.create(opts).await?;
    *id = Some(session.id.clone());
    drop(id);
    app.gateway.prune(app);
    Ok(session)
}

/// Destroy the user's session; returns whether there was one.
async fn release_user(app: &App, user: &str) -> bool {
    let Some(slot) = app.gateway.remove(user) else {
        return false;
    };
    let id = slot.lock().await.take();
    match id {
        Some(id) => app.sessions.delete(&id).await,
        None => false,
    }
}

/// Run `code` in the user's session. A timeout or a killed interpreter
/// destroys the session (the next call gets a fresh one), as the gateway
/// destroys its worker.
async fn run(app: &App, user: &str, code: String) -> Result<(String, Execution), ApiError> {
    let session = session_of(app, user).await?;
    let timeout = session.default_timeout().min(app.config.max_exec_timeout);
    let out = super::run_cell(app, &session, code, timeout).await?;
    if matches!(out.summary.status, ExecStatus::Timeout | ExecStatus::Killed) {
        // Only if the user is still bound to this session.
        let slot = app.gateway.slot(user);
        let mut id = slot.lock().await;
        if id.as_deref() == Some(session.id.as_str()) {
            *id = None;
        }
        drop(id);
        app.sessions.delete(&session.id).await;
    }
    Ok((session.id.clone(), out))
}

/// Text output of a cell: stdout and the `text/plain` of its last
/// expression, in the order the kernel sent them (stdout first: the
/// execute result is produced when the cell ends).
fn text_of(out: &Execution) -> String {
    let mut text = out.stdout.clone();
    for r in &out.results {
        if r.kind == "execute_result" {
            if let Some(t) = r.data.get("text/plain").and_then(|v| v.as_str()) {
                text.push_str(t);
            }
        }
    }
    text
}

fn png_of(out: &Execution) -> Option<String> {
    out.results.iter().find_map(|r| {
        r.data
            .get("image/png")
            .and_then(|v| v.as_str())
            .map(|s| s.chars().filter(|c| !c.is_whitespace()).collect())
    })
}

/// The error line as the gateway's kernel manager writes it:
/// `"{ename}: {evalue}"`.
fn error_line(out: &Execution) -> Option<String> {
    out.summary
        .error
        .as_ref()
        .map(|e| format!("{}: {}", e.name, e.value))
}

fn failure_message(out: &Execution) -> String {
    out.summary
        .error
        .as_ref()
        .map(|e| e.value.clone())
        .unwrap_or_else(|| "the interpreter failed".into())
}

/// A gateway error answer: `{"detail": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GatewayDetail {
    /// What went wrong.
    detail: String,
}

/// A gateway error answer: `{"detail": …}`.
fn detail(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(GatewayDetail { detail: msg.into() })).into_response()
}

/// Query of the current version's routes.
#[derive(Debug, Deserialize)]
pub struct UserQuery {
    /// The user.
    pub user_uuid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CodeBody {
    code: String,
}

/// `POST /api/v1/execute?user_uuid=U` and `POST /execute` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteReply {
    /// The session's id (the current version's README shows it; absent on `/execute`).
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_id: Option<String>,
    /// stdout and the last expression's `text/plain` (and the error line).
    result_text: Option<String>,
    /// The first PNG displayed, base64.
    result_base64: Option<String>,
}

/// `POST /api/v1/execute?user_uuid=U` (current version). Called by
/// `router::execute_dispatch`, which sends requests without `user_uuid` to
/// the Docker-pool door.
pub async fn execute_v1(
    app: AppState,
    user: String,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let CodeBody { code } = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    let (worker, out) = run(&app, &user, code).await?;
    match out.summary.status {
        ExecStatus::Timeout | ExecStatus::Killed => Ok(detail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{}; the environment was destroyed and the next call gets a fresh one",
                failure_message(&out)
            ),
        )),
        ExecStatus::Ok | ExecStatus::Error => {
            let mut text = text_of(&out);
            if let Some(line) = error_line(&out) {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&line);
            }
            Ok(Json(ExecuteReply {
                worker_id: Some(worker),
                result_text: (!text.is_empty()).then_some(text),
                result_base64: png_of(&out),
            })
            .into_response())
        }
    }
}

fn user_from_query(
    q: Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<String, ApiError> {
    let user = q
        .ok()
        .and_then(|Query(q)| q.user_uuid)
        .ok_or_else(|| ApiError::bad_request("the user_uuid query parameter is required"))?;
    check_user(&user)?;
    Ok(user)
}

/// `POST /api/v1/release?user_uuid=U` → 204 (also when there was nothing to
/// release, as the gateway does).
async fn release_v1(
    State(app): State<AppState>,
    q: Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let user = user_from_query(q)?;
    release_user(&app, &user).await;
    Ok(StatusCode::NO_CONTENT)
}

fn counts(app: &App) -> (usize, usize, usize, bool) {
    // A worker is a sandbox: live sessions are bound (busy), pooled ones idle.
    let st = app.sessions.status();
    (
        st.sessions + st.pool_idle,
        st.sessions,
        st.pool_idle,
        !app.sessions.is_ready(),
    )
}

/// The gateway's worker counts: a worker is a sandbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerStatus {
    /// Live sessions and idle pooled sandboxes.
    total_workers: usize,
    /// Live sessions.
    busy_workers: usize,
    /// Idle pooled sandboxes (`GET /status` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_workers_in_pool: Option<usize>,
    /// Whether the pool is still filling.
    is_initializing: bool,
}

/// `GET /api/v1/status`.
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = WorkerStatus)),
    security(("token" = [])), tag = "gateway")]
pub async fn status_v1(State(app): State<AppState>) -> Json<WorkerStatus> {
    let (total, busy, _, init) = counts(&app);
    Json(WorkerStatus {
        total_workers: total,
        busy_workers: busy,
        idle_workers_in_pool: None,
        is_initializing: init,
    })
}

/// `GET /status` (earlier version).
#[utoipa::path(get, path = "/status", responses((status = 200, body = WorkerStatus)),
    security(("token" = [])), tag = "gateway")]
pub async fn status_v0(State(app): State<AppState>) -> Json<WorkerStatus> {
    let (total, busy, idle, init) = counts(&app);
    Json(WorkerStatus {
        total_workers: total,
        busy_workers: busy,
        idle_workers_in_pool: Some(idle),
        is_initializing: init,
    })
}

/// `POST /execute` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserCode {
    /// The user (1 to 256 printable characters); their session is created on first use.
    user_uuid: String,
    /// The Python code.
    code: String,
}

/// `POST /release` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserOnly {
    /// The user whose session is released.
    user_uuid: String,
}

/// `POST /release` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleasedV0 {
    /// `ok`.
    status: String,
    /// `Worker for user U has been released.`
    detail: String,
}

/// `POST /execute {user_uuid, code}` (earlier version): an image wins over
/// text, a Python error or a timeout is a 400 with `detail`, as its worker
/// answered.
async fn execute_v0(
    State(app): State<AppState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let UserCode { user_uuid, code } = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    let (_, out) = run(&app, &user_uuid, code).await?;
    Ok(match out.summary.status {
        ExecStatus::Timeout => detail(
            StatusCode::BAD_REQUEST,
            format!(
                "Code execution timed out after {} seconds. Environment has been reset.",
                app.config
                    .exec_timeout
                    .min(app.config.max_exec_timeout)
                    .as_secs()
            ),
        ),
        ExecStatus::Killed | ExecStatus::Error => detail(
            StatusCode::BAD_REQUEST,
            format!(
                "Python Execution Error: {}",
                error_line(&out).unwrap_or_else(|| failure_message(&out))
            ),
        ),
        ExecStatus::Ok => {
            let png = png_of(&out);
            Json(ExecuteReply {
                worker_id: None,
                result_text: png.is_none().then(|| text_of(&out)),
                result_base64: png,
            })
            .into_response()
        }
    })
}

/// `POST /release {user_uuid}` (earlier version).
async fn release_v0(
    State(app): State<AppState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<ReleasedV0>, ApiError> {
    let Json(body) = body?;
    let UserOnly { user_uuid } = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    check_user(&user_uuid)?;
    release_user(&app, &user_uuid).await;
    Ok(Json(ReleasedV0 {
        status: "ok".into(),
        detail: format!("Worker for user {user_uuid} has been released."),
    }))
}

/// The `user_uuid` of a `POST /api/v1/execute`, if it has one.
pub fn user_of(
    q: &Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Option<String> {
    q.as_ref().ok().and_then(|Query(q)| q.user_uuid.clone())
}

/// Query of `POST /api/v1/execute`.
pub type ExecQuery = Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>;

// ---- Files (`/api/v1/files`): the native import, export and delete. ----

/// Most files of one gateway files request (the gateway's limit).
const MAX_FILES: usize = 100;
/// Files handed to the native import/export at a time (below their limit).
const BATCH: usize = 32;

/// A gateway answer for a refused files request: `{"detail": message}` with
/// the native status.
/// A JSON body, or why it was refused.
pub type JsonBody = Result<Json<serde_json::Value>, JsonRejection>;

/// Errors in the gateway's shape, `{"detail": …}`.
pub async fn detailed<R: IntoResponse>(r: Result<R, ApiError>) -> Response {
    match r {
        Ok(r) => r.into_response(),
        Err(e) => as_detail(e).await,
    }
}

async fn as_detail(e: ApiError) -> Response {
    let (status, msg) = (e.status(), e.message().to_string());
    detail(status, msg)
}

/// The workspace path of the gateway's `{path, name}`: `path` is a
/// directory under `/sandbox/` (the workspace; `/sandbox` is an alias of it
/// inside the sandbox too), `name` a plain file name.
fn rel_of(path: &str, name: &str) -> Result<String, ApiError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(ApiError::bad_request(format!(
            "invalid file name {name:?}: no '/' or '\\'"
        )));
    }
    let dir = path.trim().trim_end_matches('/');
    let rest = dir
        .strip_prefix("/sandbox")
        .ok_or_else(|| ApiError::invalid_path(format!("{path:?} is not under /sandbox/")))?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(ApiError::invalid_path(format!(
            "{path:?} is not under /sandbox/"
        )));
    }
    let rel = format!("{}/{name}", rest.trim_start_matches('/'));
    let rel = rel.trim_start_matches('/').to_string();
    app_files_parse(&rel)?;
    Ok(rel)
}

/// Validate a workspace path the way the file service will.
fn app_files_parse(rel: &str) -> Result<(), ApiError> {
    crate::services::workspace_fs::RelPath::parse(rel, false)
        .map(|_| ())
        .map_err(|e| ServiceError::from_fs(e, rel, 0).into())
}

fn check_count(n: usize) -> Result<(), ApiError> {
    if n == 0 || n > MAX_FILES {
        return Err(ApiError::bad_request(format!(
            "give between 1 and {MAX_FILES} files"
        )));
    }
    Ok(())
}

/// A file to download into the session.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UploadItem {
    /// Where to download it from (the native URL import's rules).
    download_url: String,
    /// A directory under `/sandbox/`.
    path: String,
    /// A plain file name.
    name: String,
}

/// A file to upload out of the session.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExportFileItem {
    /// A directory under `/sandbox/`.
    path: String,
    /// A plain file name.
    name: String,
    /// Where to upload it: a PUT, or a presigned POST form with `upload_fields`.
    upload_url: String,
    /// The presigned POST form's fields.
    #[serde(default)]
    upload_fields: Option<std::collections::BTreeMap<String, String>>,
}

/// A file to delete.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteItem {
    /// A directory under `/sandbox/`.
    path: String,
    /// A plain file name.
    name: String,
}

/// A files request: 1 to 100 files.
#[derive(Debug, Deserialize, ToSchema)]
pub struct FilesBody<T> {
    /// The files.
    files: Vec<T>,
}

/// A file downloaded into the session.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedItem {
    /// `/sandbox/<path>/<name>`.
    full_path: String,
    /// Size in bytes.
    size: u64,
}

/// A file uploaded out of the session.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportedItem {
    /// As requested.
    path: String,
    /// As requested.
    name: String,
    /// Bytes uploaded.
    size: u64,
}

/// A files answer: `{"success": true, "results": […]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FilesReply<T> {
    /// Always true (a failure is an error answer).
    success: bool,
    /// One per file, in order.
    results: Vec<T>,
}

/// The `user_uuid` query, or why it is missing.
pub type QueryResult = Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>;

fn body_of<T: serde::de::DeserializeOwned>(
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Vec<T>, ApiError> {
    let Json(v) = body?;
    let FilesBody { files } = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    check_count(files.len())?;
    Ok(files)
}

/// `POST /api/v1/files?user_uuid=U {"files": [{download_url, path, name}]}`
/// → 201 `{"success": true, "results": [{full_path, size}]}`, through the
/// native URL import (same SSRF rules, `PYXIS_IMPORT_ALLOW`).
#[utoipa::path(post, path = "/api/v1/files",
    params(("user_uuid" = String, Query, description = "the user")),
    request_body = FilesBody<UploadItem>,
    responses(
        (status = 201, body = FilesReply<UploadedItem>),
        (status = 403, body = GatewayDetail, description = "an address the import rules refuse"),
        (status = 409, body = GatewayDetail), (status = 413, body = GatewayDetail),
        (status = 415, body = GatewayDetail),
        (status = 422, body = GatewayDetail, description = "invalid request, path or URL"),
        (status = 502, body = GatewayDetail, description = "a download failed"),
        (status = 503, body = GatewayDetail, description = "no capacity"),
        (status = 504, body = GatewayDetail, description = "a download timed out"),
        (status = 507, body = GatewayDetail, description = "workspace quota exhausted"),
    ), security(("token" = [])), tag = "gateway")]
pub async fn upload_files(
    State(app): State<AppState>,
    q: QueryResult,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let run = async {
        let user = user_from_query(q)?;
        let items: Vec<UploadItem> = body_of(body)?;
        let mut imports = Vec::with_capacity(items.len());
        for it in items {
            let rel = rel_of(&it.path, &it.name)?;
            imports.push(crate::services::files::ImportItem {
                url: it.download_url,
                path: Some(rel),
            });
        }
        let session = session_of(&app, &user).await?;
        let mut results = Vec::new();
        let mut rest = imports;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(BATCH));
            let done = app.files.import(&session, rest).await?;
            results.extend(done.into_iter().map(|f| UploadedItem {
                full_path: format!("/sandbox/{}", f.path),
                size: f.size,
            }));
            rest = tail;
        }
        Ok::<_, ApiError>(
            (
                StatusCode::CREATED,
                Json(FilesReply {
                    success: true,
                    results,
                }),
            )
                .into_response(),
        )
    };
    match run.await {
        Ok(r) => r,
        Err(e) => as_detail(e).await,
    }
}

/// `POST /api/v1/files/export?user_uuid=U {"files": [{path, name,
/// upload_url, upload_fields?}]}` → 200 `{"success": true, "results":
/// [{path, name, size}]}`, through the native export (PUT, or a presigned
/// POST form when `upload_fields` is present). A failed upload answers 502.
#[utoipa::path(post, path = "/api/v1/files/export",
    params(("user_uuid" = String, Query, description = "the user")),
    request_body = FilesBody<ExportFileItem>,
    responses(
        (status = 200, body = FilesReply<ExportedItem>),
        (status = 403, body = GatewayDetail, description = "an address the export rules refuse"),
        (status = 404, body = GatewayDetail, description = "no such file"),
        (status = 409, body = GatewayDetail), (status = 413, body = GatewayDetail),
        (status = 415, body = GatewayDetail),
        (status = 422, body = GatewayDetail, description = "invalid request, path or URL"),
        (status = 502, body = GatewayDetail, description = "an upload failed"),
        (status = 503, body = GatewayDetail, description = "no capacity"),
        (status = 504, body = GatewayDetail, description = "an upload timed out"),
    ), security(("token" = [])), tag = "gateway")]
pub async fn export_files(
    State(app): State<AppState>,
    q: QueryResult,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let run = async {
        let user = user_from_query(q)?;
        let items: Vec<ExportFileItem> = body_of(body)?;
        let mut native = Vec::with_capacity(items.len());
        for it in &items {
            let rel = rel_of(&it.path, &it.name)?;
            native.push(ExportItem {
                path: rel,
                url: it.upload_url.clone(),
                method: if it.upload_fields.is_some() {
                    ExportMethod::Post
                } else {
                    ExportMethod::Put
                },
                fields: it.upload_fields.clone().unwrap_or_default(),
                headers: Default::default(),
            });
        }
        let session = session_of(&app, &user).await?;
        let mut results = Vec::new();
        for (chunk, originals) in native.chunks(BATCH).zip(items.chunks(BATCH)) {
            let done = app.files.export(&session, chunk.to_vec()).await?;
            for (r, it) in done.into_iter().zip(originals) {
                if let Some(err) = r.error {
                    return Err(ApiError::with_status(
                        StatusCode::BAD_GATEWAY,
                        "export_failed",
                        format!("exporting {}: {err}", it.name),
                    ));
                }
                results.push(ExportedItem {
                    path: it.path.clone(),
                    name: it.name.clone(),
                    size: r.size,
                });
            }
        }
        Ok::<_, ApiError>(
            Json(FilesReply {
                success: true,
                results,
            })
            .into_response(),
        )
    };
    match run.await {
        Ok(r) => r,
        Err(e) => as_detail(e).await,
    }
}

/// `DELETE /api/v1/files?user_uuid=U {"files": [{path, name}]}` → 204. A
/// file that is already gone is not an error.
#[utoipa::path(delete, path = "/api/v1/files",
    params(("user_uuid" = String, Query, description = "the user")),
    request_body = FilesBody<DeleteItem>,
    responses(
        (status = 204, description = "deleted (or already gone)"),
        (status = 403, body = GatewayDetail), (status = 409, body = GatewayDetail),
        (status = 413, body = GatewayDetail), (status = 415, body = GatewayDetail),
        (status = 422, body = GatewayDetail, description = "invalid request or path"),
        (status = 503, body = GatewayDetail, description = "no capacity"),
    ), security(("token" = [])), tag = "gateway")]
pub async fn delete_files(
    State(app): State<AppState>,
    q: QueryResult,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let run = async {
        let user = user_from_query(q)?;
        let items: Vec<DeleteItem> = body_of(body)?;
        let mut rels = Vec::with_capacity(items.len());
        for it in &items {
            let rel = rel_of(&it.path, &it.name)?;
            rels.push(rel);
        }
        let session = session_of(&app, &user).await?;
        for rel in rels {
            match app.files.remove(&session, &rel).await {
                Ok(()) | Err(ServiceError::FileNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        session.touch();
        Ok::<_, ApiError>(StatusCode::NO_CONTENT.into_response())
    };
    match run.await {
        Ok(r) => r,
        Err(e) => as_detail(e).await,
    }
}
