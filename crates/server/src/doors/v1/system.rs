//! Health, readiness, status, capabilities and the OpenAPI document.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use utoipa::OpenApi;

use crate::app::AppState;
use crate::doors::v1::model::{Capabilities, McpInfo, Status};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")), tag = "ops")]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: sessions can be created now.
#[utoipa::path(get, path = "/readyz",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready")), tag = "ops")]
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, &'static str) {
    if app.sessions.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Sessions and warm pool counters.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = Status)),
    security(("token" = [])), tag = "ops")]
pub async fn status(State(app): State<AppState>) -> Json<Status> {
    Json(app.sessions.status().into())
}

/// Languages, preinstalled libraries, default limits and network policy.
#[utoipa::path(get, path = "/v1/capabilities", responses((status = 200, body = Capabilities)),
    security(("token" = [])), tag = "ops")]
pub async fn capabilities(
    State(app): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Json<Capabilities> {
    let info = app.sessions.launcher().runtime_info();
    let cfg = &app.config;
    let defaults = app.sessions.default_options();
    let langs = crate::services::contexts::languages(&info.python);
    let max_egress = format!("{:?}", cfg.egress.max).to_lowercase();
    Json(Capabilities {
        languages: langs.iter().map(|(l, _)| l.to_string()).collect(),
        language_versions: langs.into_iter().map(|(l, v)| (l.to_string(), v)).collect(),
        pool_languages: pool_languages(&app.sessions.pool_languages()),
        python_version: info.python,
        libraries: info.libraries,
        limits: app.sessions.limits_of(&defaults).into(),
        max_output_bytes: cfg.max_output_bytes,
        max_timeout_s: cfg.max_exec_timeout.as_secs_f64(),
        network: format!(
            "sandboxes have only a loopback interface; egress through the server's proxy: \
             policy {} by default, at most {} (a session asks with `network`)",
            crate::services::egress::NetworkView::of(&cfg.egress.default).egress,
            max_egress,
        ),
        cgroup_version: app.sessions.launcher().cgroup_version(),
        mcp: mcp_info(&headers, cfg.listen),
    })
}

/// The languages whose sessions the pool serves (TypeScript with JavaScript's lane).
fn pool_languages(lanes: &[crate::services::contexts::Language]) -> Vec<String> {
    use crate::services::contexts::Language;
    let mut out: Vec<String> = lanes.iter().map(|l| l.name().to_string()).collect();
    if lanes.contains(&Language::JavaScript) {
        out.push(Language::TypeScript.name().into());
    }
    out
}

/// The MCP endpoint as this client reached the server (its `Host`), else the listen address.
fn mcp_info(headers: &axum::http::HeaderMap, listen: std::net::SocketAddr) -> McpInfo {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .map_or_else(|| listen.to_string(), str::to_string);
    let base = format!("http://{host}");
    McpInfo {
        url: format!("{base}/mcp"),
        auth_header: "Authorization: Bearer <token>".into(),
        http_config: serde_json::json!({"mcpServers": {"pyxis": {
            "type": "http",
            "url": format!("{base}/mcp"),
            "headers": {"Authorization": "Bearer <token>"},
        }}}),
        stdio_config: serde_json::json!({"mcpServers": {"pyxis": {
            "command": "pyxis",
            "args": ["mcp", "--url", base, "--token", "<token>"],
        }}}),
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")),
    security(("token" = [])), tag = "ops")]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::router::ApiDoc::openapi())
}

/// Prometheus metrics in the text exposition format (see the README for the names).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "metrics", content_type = "text/plain")),
    security(("token" = [])), tag = "ops")]
pub async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}
