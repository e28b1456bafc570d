//! Running code: a cell in a session, or one-shot in a throwaway sandbox.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;

use crate::app::AppState;
use crate::error::ApiError;
use crate::handlers::files::{import_targets, import_urls};
use crate::handlers::sessions::{session_options, validate_env};
use crate::handlers::timeout_from;
use crate::model::{
    CreateSession, ErrorBody, ExecuteRequest, Execution, ImportItem, OneShotRequest,
};

/// Run one cell in the session. State (variables, imports) carries over to
/// the next cell. A Python error is a 200 with `status: "error"`.
#[utoipa::path(post, path = "/v1/sessions/{id}/execute", params(("id" = String, Path)),
    request_body = ExecuteRequest,
    responses(
        (status = 200, body = Execution),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "too many cells waiting"),
        (status = 422, body = ErrorBody),
    ), security(("token" = [])), tag = "execute")]
pub async fn execute_cell(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ExecuteRequest>, JsonRejection>,
) -> Result<Json<Execution>, ApiError> {
    let Json(req) = body?;
    let session = app.sessions.get(&id)?;
    let timeout = timeout_from(
        req.timeout_s,
        session_timeout(&app, &session),
        app.config.max_exec_timeout,
    )?;
    Ok(Json(
        app.sessions.execute(&session, req.code, timeout).await?,
    ))
}

fn session_timeout(
    app: &AppState,
    s: &std::sync::Arc<crate::sessions::Session>,
) -> std::time::Duration {
    s.default_timeout().min(app.config.max_exec_timeout)
}

/// Run code once in a fresh sandbox that is destroyed afterwards. `files`
/// (URLs, or `{url, path}`) are downloaded into its workspace first, with the
/// rules of `POST /v1/sessions/{id}/files/import`; the Execution's `files`
/// then list what the code wrote.
#[utoipa::path(post, path = "/v1/execute", request_body = OneShotRequest,
    responses(
        (status = 200, body = Execution),
        (status = 403, body = ErrorBody, description = "a file URL resolves to a non-public address"),
        (status = 413, body = ErrorBody, description = "a file is larger than the import limit"),
        (status = 422, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "a file could not be fetched"),
        (status = 503, body = ErrorBody),
        (status = 507, body = ErrorBody, description = "workspace quota exhausted"),
    ), security(("token" = [])), tag = "execute")]
pub async fn execute_one_shot(
    State(app): State<AppState>,
    body: Result<Json<OneShotRequest>, JsonRejection>,
) -> Result<Json<Execution>, ApiError> {
    let Json(req) = body?;
    validate_env(&req.env)?;
    let opts = session_options(
        &app,
        CreateSession {
            env: req.env,
            timeout_s: req.timeout_s,
            ..Default::default()
        },
    )?;
    let timeout = opts.timeout;
    let files: Vec<ImportItem> = req.files.into_iter().map(Into::into).collect();
    // Refuse what can be refused before a sandbox is taken.
    import_targets(&files)?;
    let prepare = {
        let app = app.clone();
        move |session| async move {
            if !files.is_empty() {
                import_urls(&app, &session, files).await?;
            }
            Ok(())
        }
    };
    Ok(Json(
        app.sessions
            .one_shot(opts, req.code, timeout, prepare)
            .await?,
    ))
}
