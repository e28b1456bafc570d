//! `/v1/sessions`: create, list, describe, release, interrupt, restart.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use pyxis_sandbox::ResourceLimits;

use crate::app::{App, AppState};
use crate::error::ApiError;
use crate::handlers::timeout_from;
use crate::model::{CreateSession, ErrorBody, InterruptReply, SessionInfo, SessionList};
use crate::sessions::SessionOptions;

const MAX_ENV_VARS: usize = 256;
const MAX_ENV_BYTES: usize = 64 * 1024;

/// Check client-given environment variables.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if env.len() > MAX_ENV_VARS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ENV_VARS} environment variables"
        )));
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        return Err(ApiError::bad_request("environment too large"));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(ApiError::bad_request(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "environment variable {k} contains NUL"
            )));
        }
    }
    Ok(())
}

/// Validate a creation request into session options.
pub fn session_options(app: &App, req: CreateSession) -> Result<SessionOptions, ApiError> {
    if let Some(lang) = &req.language {
        if !lang.eq_ignore_ascii_case("python") {
            return Err(ApiError::bad_request(format!(
                "unsupported language {lang:?}: only python"
            )));
        }
    }
    validate_env(&req.env)?;
    let cfg = &app.config;
    let timeout = timeout_from(req.timeout_s, cfg.exec_timeout, cfg.max_exec_timeout)?;
    let mut limits = ResourceLimits {
        memory_bytes: cfg.memory_bytes,
        pids: cfg.pids,
        cpu_millicores: cfg.cpu_millicores,
    };
    if let Some(l) = req.limits {
        if let Some(mb) = l.memory_mb {
            let bytes = mb.saturating_mul(1024 * 1024);
            if mb < 64 || bytes > cfg.memory_bytes {
                return Err(ApiError::bad_request(format!(
                    "limits.memory_mb must be between 64 and {}",
                    cfg.memory_bytes / (1024 * 1024)
                )));
            }
            limits.memory_bytes = bytes;
        }
        if let Some(p) = l.pids {
            if !(8..=cfg.pids).contains(&p) {
                return Err(ApiError::bad_request(format!(
                    "limits.pids must be between 8 and {}",
                    cfg.pids
                )));
            }
            limits.pids = p;
        }
        if let Some(c) = l.cpus {
            let max = cfg.cpu_millicores as f64 / 1000.0;
            if !(c.is_finite() && c >= 0.01 && c <= max) {
                return Err(ApiError::bad_request(format!(
                    "limits.cpus must be between 0.01 and {max}"
                )));
            }
            limits.cpu_millicores = (c * 1000.0).round() as u64;
        }
    }
    Ok(SessionOptions {
        env: req.env,
        timeout,
        limits,
        metadata: req.metadata,
    })
}

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
    let opts = session_options(&app, req)?;
    let session = app.sessions.create(opts).await?;
    Ok((StatusCode::CREATED, Json(app.sessions.info(&session).await)))
}

/// List live sessions.
#[utoipa::path(get, path = "/v1/sessions", responses((status = 200, body = SessionList)),
    security(("token" = [])), tag = "sessions")]
pub async fn list_sessions(State(app): State<AppState>) -> Json<SessionList> {
    let mut sessions = Vec::new();
    for s in app.sessions.list() {
        sessions.push(app.sessions.info(&s).await);
    }
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
    Ok(Json(app.sessions.info(&s).await))
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
    Ok(Json(app.sessions.info(&s).await))
}
