//! Compatible front doors (COMPAT.md): the APIs of services Pyxis replaces,
//! as thin adapters over the same `Sessions` methods as the native API.
//!
//! - [`gateway`]: the Jupyter-kernel gateway (stateful, per `user_uuid`);
//! - [`runner`]: the function runner (one-shot);
//! - [`pool`]: the Docker-pool interpreter (stateless, files in and out).
//!
//! `POST /api/v1/execute` is claimed by both the gateway (`?user_uuid=U`)
//! and the Docker-pool interpreter (no query): the presence of `user_uuid`
//! in the query decides.

pub mod gateway;
pub mod pool;
pub mod runner;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};

use crate::app::AppState;
use crate::error::ApiError;

/// The status and message of a native error answer, for the doors that
/// answer errors in their own shape.
pub async fn message_of(e: ApiError) -> (axum::http::StatusCode, String) {
    use axum::response::IntoResponse;
    let resp = e.into_response();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let msg = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| status.to_string());
    (status, msg)
}

/// Every compat route, merged into the main router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/execute", post(execute_dispatch))
        .merge(gateway::routes())
        .merge(runner::routes())
        .merge(pool::routes())
}

/// Whether a `POST /api/v1/execute` is the gateway's: its query has a
/// `user_uuid` key (decoded as the handlers decode it). The auth middleware
/// uses the same test, so the open pool door can never reach the gateway.
pub fn wants_gateway(query: Option<&str>) -> bool {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).any(|(k, _)| k == "user_uuid")
}

/// `POST /api/v1/execute`: the gateway with `?user_uuid=`, else the
/// Docker-pool interpreter.
async fn execute_dispatch(
    State(app): State<AppState>,
    uri: axum::http::Uri,
    q: gateway::ExecQuery,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    if !wants_gateway(uri.query()) {
        return pool::execute(app, body).await;
    }
    let r = match gateway::user_of(&q) {
        Some(user) => gateway::execute_v1(app, user, body).await,
        None => Err(ApiError::bad_request(
            "user_uuid must be given once, as a string",
        )),
    };
    Ok(gateway::detailed(r).await)
}
