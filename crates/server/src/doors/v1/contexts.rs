//! Contexts: more kernels (Python, JavaScript, TypeScript, bash) in one session's sandbox,
//! each with its own state, sharing the workspace and limits. `execute` takes `context`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::doors::v1::model::ErrorBody;
use crate::error::ApiError;
use crate::services::contexts::{ContextView, Language};

/// The routes of contexts and commands.
pub fn routes() -> Router<AppState> {
    use crate::doors::v1::commands;
    Router::new()
        .route(
            "/v1/sessions/{id}/contexts",
            post(create_context).get(list_contexts),
        )
        .route("/v1/sessions/{id}/contexts/{ctx}", delete(delete_context))
        .route(
            "/v1/sessions/{id}/contexts/{ctx}/restart",
            post(restart_context),
        )
        .route(
            "/v1/sessions/{id}/contexts/{ctx}/interrupt",
            post(interrupt_context),
        )
        .route(
            "/v1/sessions/{id}/commands",
            post(commands::run_command).get(commands::list_commands),
        )
        .route(
            "/v1/sessions/{id}/commands/{pid}/stdin",
            post(commands::write_stdin),
        )
        .route(
            "/v1/sessions/{id}/commands/{pid}/kill",
            post(commands::kill_command),
        )
        .route(
            "/v1/sessions/{id}/commands/{pid}",
            get(commands::get_command),
        )
}

/// `POST /v1/sessions/{id}/contexts` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContext {
    /// `python`, `javascript` (`js`), `typescript` (`ts`) or `bash`.
    pub language: String,
    /// Working directory inside the sandbox (absolute, or under `/workspace`; default
    /// `/workspace`).
    pub cwd: Option<String>,
}

/// One context of a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ContextInfo {
    /// Its id (`default` for the session's first context); `execute`'s `context`.
    pub id: String,
    /// Its language.
    pub language: String,
    /// Its working directory.
    pub cwd: String,
    /// `idle` or `busy`.
    pub state: String,
    /// Cells executed.
    pub execution_count: u64,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
}

impl From<ContextView> for ContextInfo {
    fn from(v: ContextView) -> Self {
        ContextInfo {
            id: v.id,
            language: v.language.into(),
            cwd: v.cwd,
            state: if v.busy { "busy" } else { "idle" }.into(),
            execution_count: v.execution_count,
            created_at: crate::services::sessions::rfc3339(v.created),
        }
    }
}

/// The contexts of a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ContextList {
    /// The first context first.
    pub contexts: Vec<ContextInfo>,
}

/// Start a context: a kernel of `language` in the session's sandbox, with its own state
/// and execution count. Its files, `/tmp`, network namespace and limits are the session's,
/// so it sees what the other contexts write and can reach their servers on `localhost`. At
/// most 8 contexts per session (429 beyond). Python contexts after the first start cold
/// (about a second); JavaScript, TypeScript and bash in a few tens of milliseconds.
#[utoipa::path(post, path = "/v1/sessions/{id}/contexts", params(("id" = String, Path)),
    request_body = CreateContext,
    responses(
        (status = 201, body = ContextInfo, description = "the new context"),
        (status = 422, body = ErrorBody, description = "unknown language, bad cwd"),
        (status = 429, body = ErrorBody, description = "too many contexts"),
    ), security(("token" = [])), tag = "contexts")]
pub async fn create_context(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<CreateContext>, JsonRejection>,
) -> Result<(StatusCode, Json<ContextInfo>), ApiError> {
    let Json(req) = body?;
    let session = app.sessions.get(&id)?;
    let language = Language::parse(&req.language)?;
    let ctx = app
        .sessions
        .create_context(&session, language, req.cwd.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(ctx.view().into())))
}

/// List a session's contexts, its first one first.
#[utoipa::path(get, path = "/v1/sessions/{id}/contexts", params(("id" = String, Path)),
    responses((status = 200, body = ContextList)),
    security(("token" = [])), tag = "contexts")]
pub async fn list_contexts(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ContextList>, ApiError> {
    let session = app.sessions.get(&id)?;
    let contexts = app
        .sessions
        .list_contexts(&session)
        .into_iter()
        .map(ContextInfo::from)
        .collect();
    Ok(Json(ContextList { contexts }))
}

/// End a context: its kernel and whatever it started are killed; a cell of it still
/// queued is answered `ContextDeleted`. The session's first context cannot be deleted
/// (409: delete the session).
#[utoipa::path(delete, path = "/v1/sessions/{id}/contexts/{ctx}",
    params(("id" = String, Path), ("ctx" = String, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = ErrorBody, description = "no such session or context"),
        (status = 409, body = ErrorBody, description = "the first context"),
    ), security(("token" = [])), tag = "contexts")]
pub async fn delete_context(
    State(app): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let session = app.sessions.get(&id)?;
    app.sessions.delete_context(&session, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A fresh kernel for one context: its state is lost (a running cell of it ends with
/// `state_lost`), every other context keeps its own.
#[utoipa::path(post, path = "/v1/sessions/{id}/contexts/{ctx}/restart",
    params(("id" = String, Path), ("ctx" = String, Path)),
    responses(
        (status = 200, body = ContextInfo, description = "restarted"),
        (status = 404, body = ErrorBody, description = "no such session or context"),
    ), security(("token" = [])), tag = "contexts")]
pub async fn restart_context(
    State(app): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<Json<ContextInfo>, ApiError> {
    let session = app.sessions.get(&id)?;
    app.sessions.restart_context(&session, &ctx).await?;
    Ok(Json(session.context(Some(&ctx))?.view().into()))
}

/// Whether an interrupt found a running cell.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ContextInterrupted {
    /// A cell of the context was running and was interrupted.
    pub interrupted: bool,
}

/// Interrupt the running cell of one context (SIGINT: `KeyboardInterrupt` in Python and
/// JavaScript, the running command in bash).
#[utoipa::path(post, path = "/v1/sessions/{id}/contexts/{ctx}/interrupt",
    params(("id" = String, Path), ("ctx" = String, Path)),
    responses(
        (status = 200, body = ContextInterrupted),
        (status = 404, body = ErrorBody, description = "no such session or context"),
    ), security(("token" = [])), tag = "contexts")]
pub async fn interrupt_context(
    State(app): State<AppState>,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<Json<ContextInterrupted>, ApiError> {
    let session = app.sessions.get(&id)?;
    let interrupted = app.sessions.interrupt_context(&session, &ctx)?;
    Ok(Json(ContextInterrupted { interrupted }))
}
