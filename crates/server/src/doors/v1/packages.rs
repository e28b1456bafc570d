//! `/v1/sessions/{id}/packages`: install into the session (through its egress policy),
//! list what it added, remove one.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::doors::v1::model::ErrorBody;
use crate::error::ApiError;
use crate::services::packages::{self, PackagesOutcome};

/// `POST /v1/sessions/{id}/packages` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// Requirements: a project name with optional extras and version specifiers
    /// (`pandas`, `requests[socks]==2.32.3`); no options, URLs or paths.
    pub packages: Vec<String>,
}

/// Install packages into the session, from the configured index through the session's
/// egress policy (which must reach the index's host) and the server's wheel cache. They go
/// to `/workspace/.pyxis/packages` (counted in the workspace quota), import at once, and
/// stay across restarts.
#[utoipa::path(post, path = "/v1/sessions/{id}/packages", params(("id" = String, Path)),
    request_body = InstallRequest,
    responses(
        (status = 200, body = PackagesOutcome),
        (status = 403, body = ErrorBody, description = "the session's network policy cannot reach the index"),
        (status = 409, body = ErrorBody, description = "the session has no Python context (`no_python_context`)"),
        (status = 422, body = ErrorBody, description = "not a requirement (`invalid_request`), or the install failed (the installer's output says why)"),
    ), security(("token" = [])), tag = "packages")]
pub async fn install_packages(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<InstallRequest>, JsonRejection>,
) -> Result<Json<PackagesOutcome>, ApiError> {
    let Json(req) = body?;
    let session = app.sessions.get(&id)?;
    Ok(Json(
        packages::install(&app.sessions, &session, &req.packages).await?,
    ))
}

/// The packages the session added (not the runtime's own).
#[utoipa::path(get, path = "/v1/sessions/{id}/packages", params(("id" = String, Path)),
    responses(
        (status = 200, body = PackagesOutcome),
        (status = 409, body = ErrorBody, description = "the session has no Python context (`no_python_context`)"),
        (status = 422, body = ErrorBody, description = "the package call failed"),
    ),
    security(("token" = [])), tag = "packages")]
pub async fn list_packages(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PackagesOutcome>, ApiError> {
    let session = app.sessions.get(&id)?;
    Ok(Json(packages::list(&app.sessions, &session).await?))
}

/// Remove a package the session added.
#[utoipa::path(delete, path = "/v1/sessions/{id}/packages/{name}",
    params(("id" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, body = PackagesOutcome),
        (status = 404, body = ErrorBody, description = "no such session, or the session added no such package"),
        (status = 409, body = ErrorBody, description = "the session has no Python context (`no_python_context`)"),
        (status = 422, body = ErrorBody, description = "not a package name, or the removal failed"),
    ), security(("token" = [])), tag = "packages")]
pub async fn remove_package(
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<PackagesOutcome>, ApiError> {
    let session = app.sessions.get(&id)?;
    Ok(Json(
        packages::remove(&app.sessions, &session, &name).await?,
    ))
}
