//! The function runner's package routes (`/api/pypkg/…`), onto the server's runner package
//! set ([`RunnerSet`]): every runner call runs in a fresh sandbox, so what these install is
//! one set for the server, unpacked into each runner call's sandbox before its code runs.
//!
//! - `POST /api/pypkg/install {"package": "name", "version"?: "1.0"}` or
//!   `{"packages": ["name==1.0", …]}` → `{"status": "success", "packages": [{name, version}],
//!   "log", "duration_ms"}`;
//! - `GET /api/pypkg/list` → `{"status": "success", "packages": […]}`;
//! - `DELETE /api/pypkg/uninstall {"package": "name"}` (or `?package=name`) → the set left.
//!
//! Errors are the runner's `{"detail", "code"}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{RunnerError, RunnerErrorBody};
use crate::app::AppState;
use crate::error::ApiError;
use crate::services::packages::{Package, PackagesOutcome, RunnerSet};
use crate::services::ServiceError;

/// `POST /api/pypkg/install` body: one `package` (with an optional `version`) or a list of
/// `packages`; each a project name with optional extras and version specifiers, no options,
/// URLs or paths.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PypkgInstall {
    /// One requirement (`requests`, `requests==2.32.3`).
    #[serde(default, alias = "package_name", alias = "name")]
    package: Option<String>,
    /// Its exact version (`package==version`).
    #[serde(default)]
    version: Option<String>,
    /// Several requirements.
    #[serde(default)]
    packages: Option<Vec<String>>,
}

/// `DELETE /api/pypkg/uninstall` body (or query): the package to remove.
#[derive(Debug, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PypkgRemove {
    /// Its name.
    #[serde(default, alias = "package_name", alias = "name")]
    package: Option<String>,
}

/// What the runner's package set holds after a call.
#[derive(Debug, Serialize, ToSchema)]
pub struct PypkgReply {
    /// `success`.
    status: &'static str,
    /// Every package in the set, by name.
    packages: Vec<Package>,
    /// The installer's output (its last 16 KiB), absent for a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
    /// Time taken, in milliseconds (absent for a list).
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
}

impl From<PackagesOutcome> for PypkgReply {
    fn from(o: PackagesOutcome) -> Self {
        PypkgReply {
            status: "success",
            packages: o.packages,
            log: Some(o.log),
            duration_ms: Some(o.duration_ms),
        }
    }
}

fn invalid(detail: impl Into<String>) -> RunnerError {
    RunnerError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "CodeRunner.InvalidParameter",
        detail,
    )
}

/// A service error as the runner's `{"detail", "code"}`, with the native status.
fn runner_error(e: ServiceError) -> RunnerError {
    let e = ApiError::from(e);
    let code = match (e.status(), e.code()) {
        (StatusCode::FORBIDDEN, _) => "CodeRunner.EgressRefused",
        (StatusCode::NOT_FOUND, _) => "CodeRunner.PackageNotFound",
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request") => "CodeRunner.InvalidParameter",
        (StatusCode::UNPROCESSABLE_ENTITY, _) => "CodeRunner.InstallFailed",
        (StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS, _) => {
            "CodeRunner.Unavailable"
        }
        _ => "CodeRunner.InternalError",
    };
    RunnerError::new(e.status(), code, e.message())
}

fn json_error(e: JsonRejection) -> RunnerError {
    let e = ApiError::from(e);
    RunnerError::new(e.status(), "CodeRunner.InvalidParameter", e.message())
}

/// Install packages into the function runner's package set, from the configured index
/// through the egress proxy and the server's wheel cache (in a sandbox of its own whose
/// policy reaches only the index). Every later runner call can import them.
#[utoipa::path(post, path = "/api/pypkg/install", request_body = PypkgInstall,
    responses(
        (status = 200, body = PypkgReply),
        (status = 403, body = RunnerErrorBody, description = "the operator's egress settings cannot reach the index (`CodeRunner.EgressRefused`)"),
        (status = 413, body = RunnerErrorBody), (status = 415, body = RunnerErrorBody),
        (status = 422, body = RunnerErrorBody, description = "not a requirement (`CodeRunner.InvalidParameter`), or the install failed (`CodeRunner.InstallFailed`; the installer's output says why)"),
        (status = 429, body = RunnerErrorBody, description = "a limit of this server or key"),
        (status = 500, body = RunnerErrorBody, description = "internal error"),
        (status = 503, body = RunnerErrorBody, description = "no capacity"),
    ), security(("token" = [])), tag = "runner")]
pub async fn install(
    State(app): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<PypkgReply>, RunnerError> {
    let Json(v) = body.map_err(json_error)?;
    let req: PypkgInstall =
        serde_json::from_value(v).map_err(|e| invalid(format!("invalid request: {e}")))?;
    let given = match (req.package, req.version, req.packages) {
        (Some(p), None, None) => vec![p],
        (Some(p), Some(v), None) => vec![format!("{}=={}", p.trim(), v.trim())],
        (None, None, Some(list)) => list,
        _ => {
            return Err(invalid(
                "give `package` (and optionally `version`) or `packages`, not both",
            ))
        }
    };
    let set = RunnerSet::of(&app.sessions);
    let outcome = set
        .install(&app.sessions, &app.files, &given)
        .await
        .map_err(runner_error)?;
    Ok(Json(outcome.into()))
}

/// The packages in the function runner's package set.
#[utoipa::path(get, path = "/api/pypkg/list",
    responses((status = 200, body = PypkgReply)),
    security(("token" = [])), tag = "runner")]
pub async fn list(State(app): State<AppState>) -> Json<PypkgReply> {
    Json(PypkgReply {
        status: "success",
        packages: RunnerSet::of(&app.sessions).list(),
        log: None,
        duration_ms: None,
    })
}

/// Remove a package from the function runner's package set.
#[utoipa::path(delete, path = "/api/pypkg/uninstall", params(PypkgRemove),
    request_body(content = PypkgRemove, description = "or the `package` query parameter"),
    responses(
        (status = 200, body = PypkgReply),
        (status = 403, body = RunnerErrorBody, description = "the operator's egress settings forbid the sandbox that changes the set"),
        (status = 404, body = RunnerErrorBody, description = "the set holds no such package (`CodeRunner.PackageNotFound`)"),
        (status = 413, body = RunnerErrorBody), (status = 415, body = RunnerErrorBody),
        (status = 422, body = RunnerErrorBody, description = "not a package name, or the removal failed"),
        (status = 429, body = RunnerErrorBody, description = "a limit of this server or key"),
        (status = 500, body = RunnerErrorBody, description = "internal error"),
        (status = 503, body = RunnerErrorBody, description = "no capacity"),
    ), security(("token" = [])), tag = "runner")]
pub async fn uninstall(
    State(app): State<AppState>,
    query: Result<Query<PypkgRemove>, axum::extract::rejection::QueryRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<PypkgReply>, RunnerError> {
    let Query(query) = query.map_err(|e| invalid(format!("invalid query: {e}")))?;
    let name = match (query.package, body) {
        (Some(name), Err(JsonRejection::MissingJsonContentType(_))) => name,
        (None, Err(JsonRejection::MissingJsonContentType(_))) => {
            return Err(invalid(
                "`package` is required (in the query or a JSON body)",
            ))
        }
        (None, body) => {
            let Json(v) = body.map_err(json_error)?;
            let req: PypkgRemove =
                serde_json::from_value(v).map_err(|e| invalid(format!("invalid request: {e}")))?;
            req.package
                .ok_or_else(|| invalid("`package` is required"))?
        }
        (Some(_), _) => return Err(invalid("give `package` in the query or the body, not both")),
    };
    let set = RunnerSet::of(&app.sessions);
    let outcome = set
        .remove(&app.sessions, &app.files, &name)
        .await
        .map_err(runner_error)?;
    Ok(Json(outcome.into()))
}
