//! Every layer of the HTTP stack, in one place: tracing, panic catching, the
//! body size limit, and token authentication.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::app::{App, AppState};
use crate::error::ApiError;

/// Paths that answer without a token.
/// The function runner's health routes are open like `/healthz`.
const OPEN_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/api/health",
    "/health/ready",
    "/health/alive",
];

/// Wrap the router with every layer.
pub fn apply(router: Router<AppState>, app: Arc<App>) -> Router {
    let limit = app.config.max_body_bytes;
    router
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a handler panicked").into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

/// Accept `Authorization: Bearer <secret>` (or Jupyter's `token <secret>`) or
/// `X-Auth-Token: <secret>`, where the secret is the token or a key of the keys file; on the
/// Jupyter WebSocket, whose browser clients cannot set headers, also `?token=<secret>`
/// (nowhere else: a secret in a URL ends up in logs and browser history).
///
/// The rest of the request runs as the tenant the secret names (`tenants.rs`): in a
/// task-local scope, which the session service reads, and in the request's extensions.
async fn auth(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&req.uri().path())
        || crate::doors::playground::is_open(req.uri().path())
        || crate::doors::pool::is_open(&app, &req)
    {
        let tenant = app.tenants.anonymous();
        req.extensions_mut().insert(tenant.clone());
        return crate::tenants::scope(tenant, next.run(req)).await;
    }
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .or_else(|| v.strip_prefix("token "))
                .or_else(|| v.strip_prefix("Token "))
        });
    let x_auth = headers.get("x-auth-token").and_then(|v| v.to_str().ok());
    let path = req.uri().path();
    let query_token = (path.starts_with("/api/kernels/") && path.ends_with("/channels"))
        .then(|| {
            url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
        .flatten();
    let tenant = [bearer, x_auth, query_token.as_deref()]
        .into_iter()
        .flatten()
        .find_map(|given| app.tenants.authenticate(given));
    match tenant {
        Some(tenant) => {
            req.extensions_mut().insert(tenant.clone());
            crate::tenants::scope(tenant, next.run(req)).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}
