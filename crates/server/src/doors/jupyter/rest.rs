//! `/api/kernelspecs` and `/api/kernels`: the REST half of Jupyter's kernels API, as
//! jupyter_server's gateway client calls it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::KERNEL_NAME;
use crate::app::{App, AppState};
use crate::error::ApiError;
use crate::services::{session_options, NewSession};

/// `POST /api/kernels` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StartKernel {
    /// Kernel spec name (`python3`; absent means the default).
    pub name: Option<String>,
    /// Environment variables of the kernel.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Ignored (Jupyter's working directory hint); the kernel runs in its workspace.
    pub path: Option<String>,
}

/// A kernel as Jupyter describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KernelModel {
    /// Kernel id (the Pyxis session id).
    pub id: String,
    /// Kernel spec name.
    pub name: String,
    /// Last activity, `%Y-%m-%dT%H:%M:%S.%fZ` (UTC).
    pub last_activity: String,
    /// `idle` or `busy`.
    pub execution_state: String,
    /// Open WebSocket connections.
    pub connections: usize,
}

fn spec() -> Value {
    json!({
        "name": KERNEL_NAME,
        "spec": {
            "argv": ["python", "-m", "pyxis_runtime.kernel", "-f", "{connection_file}"],
            "display_name": "Python 3 (Pyxis)",
            "language": "python",
            "interrupt_mode": "message",
            "env": {},
            "metadata": {"pyxis": true},
        },
        "resources": {},
    })
}

/// The kernel specs: one, `python3`, a Pyxis session.
#[utoipa::path(get, path = "/api/kernelspecs",
    responses((status = 200, description = "`{default, kernelspecs: {name: {name, spec, resources}}}`")),
    security(("token" = [])), tag = "jupyter")]
pub async fn list_kernelspecs() -> Json<Value> {
    Json(json!({ "default": KERNEL_NAME, "kernelspecs": { KERNEL_NAME: spec() } }))
}

/// One kernel spec.
#[utoipa::path(get, path = "/api/kernelspecs/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "`{name, spec, resources}`"), (status = 404)),
    security(("token" = [])), tag = "jupyter")]
pub async fn get_kernelspec(Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    if name != KERNEL_NAME {
        return Err(no_such_spec(&name));
    }
    Ok(Json(spec()))
}

fn no_such_spec(name: &str) -> ApiError {
    ApiError::with_status(
        StatusCode::NOT_FOUND,
        "kernelspec_not_found",
        format!("no kernel spec {name:?}; this server has {KERNEL_NAME:?}"),
    )
}

/// The model of kernel `id`, or 404.
pub fn model(app: &App, id: &str) -> Result<KernelModel, ApiError> {
    let session = app.sessions.get(id)?;
    let view = app.sessions.info(&session);
    let connections = app
        .jupyter
        .get(id)
        .map(|k| k.connections.load(Ordering::Acquire))
        .unwrap_or(0);
    Ok(KernelModel {
        id: view.id,
        name: KERNEL_NAME.into(),
        last_activity: humantime::format_rfc3339_micros(view.last_active).to_string(),
        execution_state: if view.busy { "busy" } else { "idle" }.into(),
        connections,
    })
}

/// The kernels started through this door.
#[utoipa::path(get, path = "/api/kernels", responses((status = 200, body = Vec<KernelModel>)),
    security(("token" = [])), tag = "jupyter")]
pub async fn list_kernels(State(app): State<AppState>) -> Json<Vec<KernelModel>> {
    let ids = app.jupyter.ids(|id| app.sessions.get(id).is_ok());
    Json(ids.iter().filter_map(|id| model(&app, id).ok()).collect())
}

/// Start a kernel: a new Pyxis session.
#[utoipa::path(post, path = "/api/kernels", request_body = StartKernel,
    responses((status = 201, body = KernelModel), (status = 404, description = "unknown kernel spec"),
        (status = 503, description = "no capacity")),
    security(("token" = [])), tag = "jupyter")]
pub async fn start_kernel(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<KernelModel>), ApiError> {
    // The gateway client may send no body at all, or fields of its own; what it sends
    // must be a JSON object (422 in the usual envelope otherwise).
    let req: StartKernel = if body.iter().all(u8::is_ascii_whitespace) {
        StartKernel::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?
    };
    if let Some(name) = req.name.as_deref().filter(|n| !n.is_empty()) {
        if name != KERNEL_NAME {
            return Err(no_such_spec(name));
        }
    }
    // Jupyter servers pass their own variables (JPY_*, KERNEL_*): keep only valid names.
    let env = req
        .env
        .into_iter()
        .filter(|(k, _)| {
            crate::services::validate_env(&BTreeMap::from([(k.clone(), String::new())])).is_ok()
        })
        .collect();
    let opts = session_options(
        &app.config,
        NewSession {
            env,
            ..Default::default()
        },
    )?;
    let session = app.sessions.create(opts).await?;
    app.jupyter.register(&session.id);
    Ok((StatusCode::CREATED, Json(model(&app, &session.id)?)))
}

/// A kernel's model.
#[utoipa::path(get, path = "/api/kernels/{id}", params(("id" = String, Path)),
    responses((status = 200, body = KernelModel), (status = 404)),
    security(("token" = [])), tag = "jupyter")]
pub async fn get_kernel(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KernelModel>, ApiError> {
    Ok(Json(model(&app, &id)?))
}

/// Shut a kernel down: its session is released.
#[utoipa::path(delete, path = "/api/kernels/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404)), security(("token" = [])), tag = "jupyter")]
pub async fn delete_kernel(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.jupyter.remove(&id);
    if app.sessions.delete(&id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::session_not_found(&id))
    }
}

/// Interrupt the running cell (KeyboardInterrupt in it).
#[utoipa::path(post, path = "/api/kernels/{id}/interrupt", params(("id" = String, Path)),
    responses((status = 204), (status = 404)), security(("token" = [])), tag = "jupyter")]
pub async fn interrupt_kernel(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let session = app.sessions.get(&id)?;
    app.sessions.interrupt(&session);
    Ok(StatusCode::NO_CONTENT)
}

/// Restart the kernel: a fresh interpreter in the same workspace.
#[utoipa::path(post, path = "/api/kernels/{id}/restart", params(("id" = String, Path)),
    responses((status = 200, body = KernelModel), (status = 404)),
    security(("token" = [])), tag = "jupyter")]
pub async fn restart_kernel(
    State(app): State<AppState>,
    Path(id): Path<String>,
    _body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<KernelModel>, ApiError> {
    let session = app.sessions.get(&id)?;
    app.sessions.restart(&session).await?;
    let kernel = app.jupyter.register(&id);
    // Clients watch iopub for the restart to finish.
    for state in ["restarting", "idle"] {
        let _ = kernel.iopub.send(
            super::messages::message(
                "iopub",
                "status",
                &kernel.jupyter_session,
                &json!({}),
                json!({ "execution_state": state }),
            )
            .into(),
        );
    }
    Ok(Json(model(&app, &id)?))
}
