//! `/v1/sessions`: create, list, describe, release, interrupt, restart.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use crate::app::AppState;
use crate::doors::v1::model::{CreateSession, ErrorBody, InterruptReply, SessionInfo, SessionList};
use crate::error::ApiError;
use crate::services::session_options;

/// Create a session: a fresh sandboxed interpreter with its own workspace.
#[utoipa::path(post, path = "/v1/sessions", request_body = CreateSession,
    responses(
        (status = 201, body = SessionInfo),
        (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "no capacity; see Retry-After"),
    ), security(("token" = [])), tag = "sessions")]
pub async fn create_session(
    State(app): State<AppState>,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> Result<(StatusCode, Json<SessionInfo>), ApiError> {
    let Json(req) = body?;
    let opts = session_options(&app.config, req.into())?;
    let session = app.sessions.create(opts).await?;
    Ok((
        StatusCode::CREATED,
        Json(app.sessions.info(&session).into()),
    ))
}

/// List live sessions.
#[utoipa::path(get, path = "/v1/sessions", responses((status = 200, body = SessionList)),
    security(("token" = [])), tag = "sessions")]
pub async fn list_sessions(State(app): State<AppState>) -> Json<SessionList> {
    let sessions = app
        .sessions
        .list()
        .iter()
        .map(|s| app.sessions.info(s).into())
        .collect();
    Json(SessionList { sessions })
}

/// Describe a session: state, times, limits, resource use.
#[utoipa::path(get, path = "/v1/sessions/{id}", params(("id" = String, Path)),
    responses((status = 200, body = SessionInfo), (status = 404, body = ErrorBody)),
    security(("token" = [])), tag = "sessions")]
pub async fn get_session(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    let s = app.sessions.get(&id)?;
    Ok(Json(app.sessions.info(&s).into()))
}

/// Release a session: kill its sandbox and delete its workspace.
#[utoipa::path(delete, path = "/v1/sessions/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("token" = [])), tag = "sessions")]
pub async fn delete_session(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.sessions.delete(&id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::session_not_found(&id))
    }
}

/// Interrupt the running cell (KeyboardInterrupt inside it). A cell that does
/// not stop within the grace period is killed and the interpreter restarted.
#[utoipa::path(post, path = "/v1/sessions/{id}/interrupt", params(("id" = String, Path)),
    responses((status = 200, body = InterruptReply), (status = 404, body = ErrorBody)),
    security(("token" = [])), tag = "sessions")]
pub async fn interrupt_session(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<InterruptReply>, ApiError> {
    let s = app.sessions.get(&id)?;
    Ok(Json(InterruptReply {
        interrupted: app.sessions.interrupt(&s),
    }))
}

/// Restart the interpreter: variables are lost, the workspace stays.
#[utoipa::path(post, path = "/v1/sessions/{id}/restart", params(("id" = String, Path)),
    responses((status = 200, body = SessionInfo), (status = 404, body = ErrorBody)),
    security(("token" = [])), tag = "sessions")]
pub async fn restart_session(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    let s = app.sessions.get(&id)?;
    app.sessions.restart(&s).await?;
    Ok(Json(app.sessions.info(&s).into()))
}
