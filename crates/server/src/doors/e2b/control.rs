//! E2B's control plane (`spec/openapi.yml` of e2b-dev/E2B), on Pyxis sessions: create,
//! list, describe, kill, connect and time out sandboxes. Errors are E2B's `{code, message}`.
//!
//! A sandbox is a session made with the server's default limits and the sandbox's
//! `envVars`; its `timeout` is absolute (from creation, or from the last
//! `POST /sandboxes/{id}/timeout`), as in E2B, and ends the session when it passes.
//! Templates, pause/resume, snapshots, volumes, metrics and logs are not served.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{error, new_secret, rfc3339, service_error, Refusal, Sandbox, ENVD_VERSION};
use crate::app::{App, AppState};
use crate::doors::percent_decode;
use crate::services::SessionOptions;

/// The templates a sandbox may be asked with: Pyxis serves one sandbox image, which is both
/// E2B's `base` and its code interpreter.
const TEMPLATES: &[&str] = &["base", "code-interpreter-v1", "code-interpreter"];
/// E2B's SDKs' default timeout, used when a create names none.
const DEFAULT_TIMEOUT_S: u64 = 300;
/// Longest metadata key or value, and most entries.
const MAX_METADATA_LEN: usize = 1024;
const MAX_METADATA_ENTRIES: usize = 64;

pub fn routes(_app: &Arc<App>) -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(create_sandbox).get(list_sandboxes))
        .route("/v2/sandboxes", post(create_sandbox).get(list_sandboxes_v2))
        .route("/sandboxes/{id}", get(get_sandbox).delete(kill_sandbox))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/connect", post(connect_sandbox))
        .route("/v2/sandboxes/{id}/connect", post(connect_sandbox))
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .fallback(not_served)
}

/// What the control plane has that Pyxis does not serve: 501 for E2B's known routes (pause,
/// resume, snapshots, …), 404 for anything else.
async fn not_served(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let known = [
        "/pause",
        "/resume",
        "/snapshots",
        "/refreshes",
        "/metrics",
        "/logs",
        "/network",
        "/fork",
    ];
    if path.starts_with("/sandboxes/") && known.iter().any(|k| path.ends_with(k))
        || path == "/sandboxes/metrics"
    {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "not served by Pyxis: sandboxes run on one machine without a VM, so there is no \
             pause, resume, snapshot, fork or volume; metrics are at /metrics",
        );
    }
    error(StatusCode::NOT_FOUND, format!("no route {path}"))
}

/// `POST /sandboxes` and `/v2/sandboxes`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    auto_pause: Option<bool>,
}

/// The `Sandbox` answer of a create or connect.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxCreated<'a> {
    #[serde(rename = "templateID")]
    template_id: &'a str,
    #[serde(rename = "sandboxID")]
    sandbox_id: &'a str,
    #[serde(rename = "clientID")]
    client_id: &'a str,
    envd_version: &'static str,
    envd_access_token: &'a str,
    traffic_access_token: &'a str,
    domain: Option<&'a str>,
}

/// `ListedSandbox`, and with the detail fields `SandboxDetail`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed<'a> {
    #[serde(rename = "templateID")]
    template_id: &'a str,
    #[serde(rename = "sandboxID")]
    sandbox_id: &'a str,
    #[serde(rename = "clientID")]
    client_id: &'a str,
    started_at: String,
    end_at: String,
    cpu_count: u64,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    state: &'static str,
    envd_version: &'static str,
    metadata: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_internet_access: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
}

fn created<'a>(app: &'a App, sbx: &'a Sandbox) -> SandboxCreated<'a> {
    SandboxCreated {
        template_id: &sbx.template_id,
        sandbox_id: &sbx.id,
        client_id: &sbx.client_id,
        envd_version: ENVD_VERSION,
        envd_access_token: &sbx.envd_token,
        traffic_access_token: &sbx.traffic_token,
        domain: app.config.e2b_domain.as_deref(),
    }
}

fn listed<'a>(app: &'a App, sbx: &'a Sandbox, detail: bool) -> Listed<'a> {
    let limits = app.sessions.limits_of(&app.sessions.default_options());
    Listed {
        template_id: &sbx.template_id,
        sandbox_id: &sbx.id,
        client_id: &sbx.client_id,
        started_at: rfc3339(sbx.started),
        end_at: rfc3339(sbx.end_at()),
        cpu_count: (limits.cpus.ceil() as u64).max(1),
        memory_mb: limits.memory_bytes / (1024 * 1024),
        disk_size_mb: limits.disk_bytes / (1024 * 1024),
        state: "running",
        envd_version: ENVD_VERSION,
        metadata: &sbx.metadata,
        envd_access_token: detail.then_some(sbx.envd_token.as_str()),
        allow_internet_access: detail.then_some(sbx.internet),
        domain: if detail {
            app.config.e2b_domain.as_deref()
        } else {
            None
        },
    }
}

fn bad_json(e: JsonRejection) -> Response {
    let status = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, format!("invalid request body: {}", e.body_text()))
}

/// The timeout asked for, checked against the door's bounds.
fn timeout_of(app: &App, secs: Option<i64>) -> Result<Duration, Refusal> {
    let max = app.config.e2b_max_timeout;
    let secs = secs.unwrap_or(DEFAULT_TIMEOUT_S.min(max.as_secs()) as i64);
    if secs < 1 || secs as u64 > max.as_secs() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "timeout must be between 1 and {} seconds (PYXIS_E2B_MAX_TIMEOUT_S)",
                max.as_secs()
            ),
        ));
    }
    Ok(Duration::from_secs(secs as u64))
}

fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), Refusal> {
    if m.len() > MAX_METADATA_ENTRIES
        || m.iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_METADATA_LEN || v.len() > MAX_METADATA_LEN)
    {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "metadata: at most {MAX_METADATA_ENTRIES} entries, keys not empty, keys and \
                 values at most {MAX_METADATA_LEN} bytes"
            ),
        ));
    }
    Ok(())
}

/// `POST /sandboxes`, `POST /v2/sandboxes`: a new sandbox, 201.
async fn create_sandbox(
    State(app): State<AppState>,
    body: Result<Json<NewSandbox>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return bad_json(e),
    };
    if !TEMPLATES.contains(&req.template_id.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "template '{}' not found: Pyxis serves one sandbox, as the templates {}",
                req.template_id,
                TEMPLATES.join(", ")
            ),
        );
    }
    if req.auto_pause == Some(true) {
        return error(
            StatusCode::BAD_REQUEST,
            "autoPause is not served by Pyxis: a sandbox ends at its timeout",
        );
    }
    let timeout = match timeout_of(&app, req.timeout) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let metadata = req.metadata.unwrap_or_default();
    if let Err(r) = check_metadata(&metadata) {
        return r.into_response();
    }
    let env = req.env_vars.unwrap_or_default();
    if let Err(e) = crate::services::validate_env(&env) {
        return service_error(e);
    }
    let mut opts: SessionOptions = app.sessions.default_options();
    // E2B's `allow_internet_access` (the SDKs send true by default) onto the egress policy:
    // false is `none`; true is `public` where the operator's PYXIS_EGRESS_MAX allows it,
    // else the operator's default (the most this server grants without a list).
    use pyxis_egress::{EgressMode, EgressPolicy};
    let wanted = match req.allow_internet_access {
        Some(false) => Some(EgressMode::None),
        Some(true) if app.config.egress.max >= EgressMode::Public => Some(EgressMode::Public),
        Some(true) => {
            tracing::debug!(
                max = ?app.config.egress.max,
                "e2b create: allow_internet_access=true beyond PYXIS_EGRESS_MAX; default policy"
            );
            None
        }
        None => None,
    };
    if let Some(mode) = wanted {
        match EgressPolicy::new::<&str>(mode, &[]) {
            Ok(policy) => opts.network = policy,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("network: {e}")),
        }
    }
    let internet = opts.network.mode() == EgressMode::Public;
    opts.env = env;
    opts.metadata = Some(serde_json::json!({"e2b": &metadata}));
    let session = match app.sessions.create(opts).await {
        Ok(s) => s,
        Err(e) => return service_error(e),
    };
    let now = SystemTime::now();
    let sbx = Arc::new(Sandbox {
        id: session.id.clone(),
        template_id: req.template_id,
        client_id: "pyxis".into(),
        envd_token: new_secret(),
        traffic_token: new_secret(),
        metadata,
        started: now,
        end: Mutex::new(now + timeout),
        contexts: Default::default(),
        owner: crate::tenants::current(),
        internet,
    });
    app.e2b.insert(sbx.clone());
    (StatusCode::CREATED, Json(created(&app, &sbx))).into_response()
}

/// The `metadata` query: `k=v&k2=v2`, form-encoded, each side percent-encoded once more
/// (the SDKs quote keys and values before encoding the pairs).
fn metadata_filter(query: &str) -> Result<Vec<(String, String)>, Refusal> {
    let Some(raw) = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "metadata")
        .map(|(_, v)| v.into_owned())
    else {
        return Ok(Vec::new());
    };
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "metadata: not a valid encoded query",
            )
        })
    };
    url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| Ok((decode(&k)?, decode(&v)?)))
        .collect()
}

/// The sandboxes matching the query's `metadata` and `state`.
fn matching(app: &App, query: &str) -> Result<Vec<Arc<Sandbox>>, Refusal> {
    let filter = metadata_filter(query)?;
    let states: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "state")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = states.iter().find(|s| *s != "running" && *s != "paused") {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("state: {bad:?} is neither running nor paused"),
        ));
    }
    // Pyxis sandboxes are never paused: a query for paused ones only finds none.
    if !(states.is_empty() || states.iter().any(|s| s == "running")) {
        return Ok(Vec::new());
    }
    Ok(app
        .e2b
        .all()
        .into_iter()
        .filter(|s| super::live(app, &s.id).is_some())
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.metadata.get(k).is_some_and(|have| have == v))
        })
        .collect())
}

/// `GET /sandboxes`: the running sandboxes (all of them).
async fn list_sandboxes(State(app): State<AppState>, RawQuery(q): RawQuery) -> Response {
    match matching(&app, q.as_deref().unwrap_or("")) {
        Ok(v) => Json(v.iter().map(|s| listed(&app, s, false)).collect::<Vec<_>>()).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `GET /v2/sandboxes`: a page of them (`limit`, `nextToken`; the next page's token in the
/// `x-next-token` header).
async fn list_sandboxes_v2(State(app): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let q = q.unwrap_or_default();
    let all = match matching(&app, &q) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let param = |name: &str| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let limit = match param("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 100"),
    };
    let descending = param("order").as_deref() == Some("desc");
    let mut all = all;
    if descending {
        all.reverse();
    }
    // The token is the id of the first sandbox of the next page.
    let start = match param("nextToken") {
        None => 0,
        Some(t) => match all.iter().position(|s| s.id == t) {
            Some(i) => i,
            None => return error(StatusCode::BAD_REQUEST, "nextToken is not valid (anymore)"),
        },
    };
    let page: Vec<_> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|s| listed(&app, s, false))
        .collect();
    let mut resp = Json(page).into_response();
    if let Some(next) = all.get(start + limit) {
        if let Ok(v) = HeaderValue::from_str(&next.id) {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    resp
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
    )
}

/// `GET /sandboxes/{id}`.
async fn get_sandbox(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match super::live(&app, &id) {
        Some((sbx, _)) => Json(listed(&app, &sbx, true)).into_response(),
        None => not_found(&id),
    }
}

/// `DELETE /sandboxes/{id}`: 204, or 404 when it is gone already.
async fn kill_sandbox(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    if super::live(&app, &id).is_none() {
        return not_found(&id);
    }
    app.e2b.remove(&id);
    app.sessions.delete(&id).await;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct TimeoutBody {
    timeout: i64,
}

/// `POST /sandboxes/{id}/timeout`: the sandbox now ends `timeout` seconds from now; 204.
async fn set_timeout(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<TimeoutBody>, JsonRejection>,
) -> Response {
    let secs = match body {
        Ok(Json(b)) => b.timeout,
        Err(e) => return bad_json(e),
    };
    let Some((sbx, session)) = super::live(&app, &id) else {
        return not_found(&id);
    };
    let timeout = match timeout_of(&app, Some(secs)) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    sbx.set_end(SystemTime::now() + timeout);
    session.touch();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize, Default)]
struct ConnectBody {
    timeout: Option<i64>,
}

/// `POST /sandboxes/{id}/connect` and `/v2/…`: the sandbox's tokens again (200: it is
/// running); its deadline only ever moves later.
async fn connect_sandbox(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ConnectBody>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(b)) => b,
        Err(JsonRejection::MissingJsonContentType(_)) => ConnectBody::default(),
        Err(e) => return bad_json(e),
    };
    let Some((sbx, session)) = super::live(&app, &id) else {
        return not_found(&id);
    };
    if let Some(secs) = req.timeout {
        let timeout = match timeout_of(&app, Some(secs)) {
            Ok(t) => t,
            Err(r) => return r.into_response(),
        };
        let end = SystemTime::now() + timeout;
        if end > sbx.end_at() {
            sbx.set_end(end);
        }
    }
    session.touch();
    Json(created(&app, &sbx)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_decode_twice() {
        // What the Python SDK sends for {"user": "a b", "k": "x=y"}: each side quoted, then
        // the pairs form-encoded (and the whole once more as the query value).
        let inner = "user=a%2520b&k=x%253Dy";
        let q = format!(
            "metadata={}",
            url::form_urlencoded::byte_serialize(inner.as_bytes()).collect::<String>()
        );
        let f = metadata_filter(&q).unwrap();
        assert_eq!(
            f,
            vec![
                ("user".to_string(), "a b".to_string()),
                ("k".to_string(), "x=y".to_string())
            ]
        );
        assert!(metadata_filter("state=running").unwrap().is_empty());
        assert!(percent_decode("%zz").is_none());
    }
}
