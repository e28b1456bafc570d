//! The E2B door: the parts of E2B's three APIs that its official SDKs call
//! (`e2b-code-interpreter` and `e2b` on PyPI, `@e2b/code-interpreter` and `e2b` on npm),
//! served on Pyxis sessions, so that code written for E2B runs unmodified against Pyxis.
//!
//! - [`control`]: the control plane (`/sandboxes`, `/v2/sandboxes`): a sandbox is a session,
//!   with E2B's absolute timeout, metadata and two per-sandbox tokens;
//! - [`envd`]: the sandbox daemon (port 49983): `/health`, `/files`, and the Connect services
//!   `filesystem.Filesystem/*` and `process.Process/*` ([`process`]);
//! - [`interpreter`]: the code interpreter (port 49999): `/execute` (NDJSON as the kernel
//!   runs), `/contexts`;
//! - [`connect`]: the Connect protocol's JSON codec and envelopes.
//!
//! **Routing.** E2B's SDK addresses a sandbox's port either with the headers
//! `E2b-Sandbox-Id` / `E2b-Sandbox-Port` (with `E2B_SANDBOX_URL` pointing at Pyxis), or with
//! the host name `{port}-{sandboxId}.{domain}` (with `E2B_DOMAIN`; Pyxis answers it when
//! `PYXIS_E2B_DOMAIN` is that domain). The same paths (`/health`, `/files`, `/execute`) mean
//! different things per port and clash with other doors' routes (`/execute` is also the
//! kernel gateway's), so [`front`] sits *before* the whole router: a request addressed to a
//! sandbox, or to the control plane's paths, goes to this door; any other request goes on
//! to the other doors untouched.
//!
//! **Auth.** The control plane takes `X-API-KEY` with the Pyxis token, or `e2b_` followed by
//! it (old SDKs insisted on the form `e2b_<hex>`, and a generated Pyxis token is 64 hex
//! digits). Sandbox ports take `X-Access-Token`: the sandbox's `envdAccessToken`, random per
//! sandbox, compared in constant time. The interpreter's port also takes
//! `E2B-Traffic-Access-Token` (the sandbox's `trafficAccessToken`): the SDKs send only that
//! one on the `/contexts` calls.

pub mod connect;
mod control;
mod envd;
mod interpreter;
mod process;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use subtle::ConstantTimeEq;
use tower::ServiceExt;

use crate::app::App;
use crate::services::{ServiceError, Session};

/// The sandbox daemon's port.
pub const ENVD_PORT: u16 = 49983;
/// The code interpreter's port.
pub const INTERPRETER_PORT: u16 = 49999;
/// The envd version Pyxis announces. The SDKs gate features on it (`e2b/envd/versions.py`,
/// `ENVD_*` in the JS SDK): from 0.4.0 they send no `Authorization: Basic user:` on each call
/// (Pyxis has one user per sandbox), 0.5.2 lets them close a command's stdin, 0.5.7 makes
/// them upload files as `application/octet-stream` when streaming; 0.6.2 (file metadata as
/// extended attributes) is not served, so they refuse metadata on the client side.
pub const ENVD_VERSION: &str = "0.5.7";
/// Where E2B's sandboxes keep the user's files; here, the session's workspace.
pub const HOME: &str = "/home/user";

/// The door's state: the sandboxes it made (their tokens, metadata and deadlines).
#[derive(Default)]
pub struct Sandboxes {
    table: Mutex<HashMap<String, Arc<Sandbox>>>,
    reaper: OnceLock<()>,
}

/// One E2B sandbox: a Pyxis session and what E2B adds to it.
pub struct Sandbox {
    /// The sandbox id, which is the session's id.
    pub id: String,
    /// The template asked for (Pyxis serves one).
    pub template_id: String,
    /// The "client" E2B reports (Pyxis: the server).
    pub client_id: String,
    /// `envdAccessToken`.
    envd_token: String,
    /// `trafficAccessToken`.
    traffic_token: String,
    /// Client metadata, filterable in the list.
    pub metadata: BTreeMap<String, String>,
    /// Creation time.
    pub started: SystemTime,
    /// When the sandbox ends (E2B's timeout is absolute, not idle time).
    end: Mutex<SystemTime>,
    /// The interpreter's contexts.
    contexts: interpreter::Contexts,
    /// The key (tenant) that made it: its requests, authenticated by the sandbox's own
    /// tokens, and the deadline keeper run as that tenant.
    pub owner: Option<Arc<crate::tenants::Tenant>>,
    /// Whether its egress policy is `public` (E2B's `allowInternetAccess`).
    pub internet: bool,
}

impl Sandbox {
    /// When it ends.
    pub fn end_at(&self) -> SystemTime {
        self.end.lock().map(|e| *e).unwrap_or(self.started)
    }

    fn set_end(&self, at: SystemTime) {
        if let Ok(mut e) = self.end.lock() {
            *e = at;
        }
    }
}

impl Sandboxes {
    fn insert(&self, sbx: Arc<Sandbox>) {
        if let Ok(mut t) = self.table.lock() {
            t.insert(sbx.id.clone(), sbx);
        }
    }

    fn remove(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.table.lock().ok().and_then(|mut t| t.remove(id))
    }

    fn all(&self) -> Vec<Arc<Sandbox>> {
        let mut v: Vec<Arc<Sandbox>> = self
            .table
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        v
    }
}

/// A live sandbox and its session, or `None` when it is gone (killed, timed out, or its
/// session released by other means: then the record is dropped too).
fn live(app: &App, id: &str) -> Option<(Arc<Sandbox>, Arc<Session>)> {
    let sbx = app.e2b.table.lock().ok()?.get(id).cloned()?;
    match app.sessions.get(id) {
        Ok(session) if SystemTime::now() < sbx.end_at() => Some((sbx, session)),
        _ => None,
    }
}

/// Start the deadline keeper once: it ends sandboxes whose timeout has passed, forgets those
/// whose session is gone, and keeps the others from being reaped as idle before their
/// deadline (E2B's timeout, not Pyxis's idle timeout, is what ends an E2B sandbox).
fn start_reaper(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    app.e2b.reaper.get_or_init(|| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(app) = weak.upgrade() else { return };
                let now = SystemTime::now();
                for sbx in app.e2b.all() {
                    let keep = async {
                        match app.sessions.get(&sbx.id) {
                            Err(_) => {
                                app.e2b.remove(&sbx.id);
                            }
                            Ok(_) if now >= sbx.end_at() => {
                                tracing::info!(id = %sbx.id, "e2b sandbox reached its timeout");
                                app.e2b.remove(&sbx.id);
                                app.sessions.delete(&sbx.id).await;
                            }
                            Ok(session) => session.touch(),
                        }
                    };
                    match sbx.owner.clone() {
                        Some(owner) => crate::tenants::scope(owner, keep).await,
                        None => keep.await,
                    }
                }
            }
        });
    });
}

/// What a request is addressed to.
#[derive(Debug, PartialEq, Eq)]
enum Addressed {
    /// Not this door's.
    Other,
    /// The control plane.
    Control,
    /// A port of a sandbox.
    Sandbox { id: String, port: Option<u16> },
}

/// The host name form `{port}-{sandboxId}.{domain}` (the `Host` header, port stripped).
fn parse_host(host: &str, domain: &str) -> Option<(String, Option<u16>)> {
    let name = match host.rsplit_once(':') {
        Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label = name.strip_suffix(&format!(".{}", domain.to_ascii_lowercase()))?;
    if label.contains('.') {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    if id.is_empty() {
        return None;
    }
    Some((id.to_string(), port.parse().ok()))
}

fn classify(app: &App, req: &Request) -> Addressed {
    let headers = req.headers();
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        let port = headers
            .get("e2b-sandbox-port")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.trim().parse().ok());
        return Addressed::Sandbox {
            id: id.trim().to_string(),
            port,
        };
    }
    if let (Some(domain), Some(host)) = (
        app.config.e2b_domain.as_deref(),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        if let Some((id, port)) = parse_host(host, domain) {
            return Addressed::Sandbox { id, port };
        }
    }
    if is_control_path(req.uri().path()) {
        Addressed::Control
    } else {
        Addressed::Other
    }
}

/// `/sandboxes` or `/v2/sandboxes`, or a path under them (E2B's control plane). Checked on
/// every request of the server, so without an allocation.
fn is_control_path(path: &str) -> bool {
    ["/sandboxes", "/v2/sandboxes"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The door's routers, one per API.
struct Door {
    app: Arc<App>,
    control: Router,
    envd: Router,
    interpreter: Router,
}

/// Put the E2B door in front of `rest` (every other route of the server): requests
/// addressed to an E2B sandbox or to the control plane are answered here, with their own
/// auth; all others go on to `rest` unchanged.
pub fn front(rest: Router, app: Arc<App>) -> Router {
    let layers = |r: Router<crate::app::AppState>| {
        r.layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            error(StatusCode::INTERNAL_SERVER_ERROR, "a handler panicked")
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app.clone())
    };
    let door = Arc::new(Door {
        app: app.clone(),
        control: layers(control::routes(&app)),
        envd: layers(envd::routes(&app)),
        interpreter: layers(interpreter::routes(&app)),
    });
    let svc = tower::Layer::layer(&axum::middleware::from_fn_with_state(door, dispatch), rest);
    Router::new().fallback_service(svc)
}

async fn dispatch(State(door): State<Arc<Door>>, req: Request, next: Next) -> Response {
    match classify(&door.app, &req) {
        Addressed::Other => next.run(req).await,
        Addressed::Control => {
            start_reaper(&door.app);
            let Some(tenant) = api_key(&door.app, req.headers()) else {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "Invalid API key: send X-API-KEY with a Pyxis key or token (or e2b_ and it)",
                );
            };
            let control = door.control.clone();
            into_response(crate::tenants::scope(tenant, control.oneshot(req)).await)
        }
        Addressed::Sandbox { id, port } => {
            let owner = door
                .app
                .e2b
                .table
                .lock()
                .ok()
                .and_then(|t| t.get(&id).cloned());
            match owner.and_then(|sbx| sbx.owner.clone()) {
                Some(owner) => {
                    crate::tenants::scope(owner, sandbox_request(door, req, id, port)).await
                }
                None => sandbox_request(door, req, id, port).await,
            }
        }
    }
}

/// A request to a port of sandbox `id`, run as the sandbox's owner.
async fn sandbox_request(
    door: Arc<Door>,
    mut req: Request,
    id: String,
    port: Option<u16>,
) -> Response {
    let Some((sbx, session)) = live(&door.app, &id) else {
        return sandbox_not_found(&id);
    };
    let router = match port {
        Some(ENVD_PORT) => &door.envd,
        Some(INTERPRETER_PORT) => &door.interpreter,
        Some(p) => return port_not_open(&id, p),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "E2b-Sandbox-Port is missing or not a port number",
            )
        }
    };
    let open = req.uri().path() == "/health";
    if !open && !access_ok(&sbx, port == Some(INTERPRETER_PORT), req.headers()) {
        return unauthorized(req.uri().path(), req.headers());
    }
    req.extensions_mut().insert(Target { sbx, session });
    into_response(router.clone().oneshot(req).await)
}

fn into_response(r: Result<Response, std::convert::Infallible>) -> Response {
    match r {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// The sandbox a request is addressed to (set by [`dispatch`] once its token is checked).
#[derive(Clone)]
pub struct Target {
    /// The door's record.
    pub sbx: Arc<Sandbox>,
    /// The session.
    pub session: Arc<Session>,
}

fn eq(given: &str, want: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(want.as_bytes()))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The tenant of `X-API-KEY: <key>` or `X-API-KEY: e2b_<key>` (or a bearer token, which the
/// SDKs send as `access_token`), where the key is the Pyxis token or a keys file's secret.
fn api_key(app: &App, headers: &HeaderMap) -> Option<Arc<crate::tenants::Tenant>> {
    let key = header_str(headers, "x-api-key").or_else(|| {
        header_str(headers, header::AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "))
    })?;
    app.tenants
        .authenticate(key)
        .or_else(|| app.tenants.authenticate(key.strip_prefix("e2b_")?))
}

fn access_ok(sbx: &Sandbox, interpreter: bool, headers: &HeaderMap) -> bool {
    let envd = header_str(headers, "x-access-token").is_some_and(|t| eq(t, &sbx.envd_token));
    let traffic = interpreter
        && header_str(headers, "e2b-traffic-access-token")
            .is_some_and(|t| eq(t, &sbx.traffic_token));
    envd || traffic
}

/// A refusal of this door: a status and a message, answered by [`error`].
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    /// A refusal with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

/// E2B's error shape on the control plane and on envd's plain routes: `{code, message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message.into()});
    (status, Json(body)).into_response()
}

/// What E2B's proxy answers for a sandbox that does not exist (anymore): 502 with a message
/// the SDKs recognise ("was not found") and turn into their sandbox-not-running errors.
fn sandbox_not_found(id: &str) -> Response {
    let body = serde_json::json!({
        "code": 502,
        "message": format!("The sandbox {id} was not found"),
        "sandboxId": id,
    });
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

fn port_not_open(id: &str, port: u16) -> Response {
    let body = serde_json::json!({
        "code": 502,
        "message": format!("The sandbox is running but port is not open: Pyxis serves ports \
            {ENVD_PORT} (envd) and {INTERPRETER_PORT} (code interpreter), not {port}"),
        "sandboxId": id,
        "port": port,
    });
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

fn unauthorized(path: &str, headers: &HeaderMap) -> Response {
    let message = "missing or wrong access token: send X-Access-Token with the sandbox's \
        envdAccessToken";
    if path.starts_with("/filesystem.") || path.starts_with("/process.") {
        let e = connect::ConnectError::new("unauthenticated", message);
        if connect::content_type(headers) == connect::STREAM_JSON {
            e.stream()
        } else {
            e.unary()
        }
    } else {
        error(StatusCode::UNAUTHORIZED, message)
    }
}

/// A service error in E2B's `{code, message}` shape, with the status E2B would use.
fn service_error(e: ServiceError) -> Response {
    let status = match &e {
        ServiceError::SessionNotFound(id) => return sandbox_not_found(id),
        ServiceError::Busy => StatusCode::TOO_MANY_REQUESTS,
        ServiceError::Exhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Invalid(_) | ServiceError::InvalidPath(_) => StatusCode::BAD_REQUEST,
        ServiceError::ForbiddenPath(_) => StatusCode::FORBIDDEN,
        ServiceError::FileNotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Conflict { .. } => StatusCode::BAD_REQUEST,
        ServiceError::QuotaExceeded(_) => StatusCode::INSUFFICIENT_STORAGE,
        ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ServiceError::Internal(_) | ServiceError::Import(_) | ServiceError::ExportFailed(_) => {
            tracing::error!(error = %e, "e2b door: service error");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// A service error as a Connect error.
fn connect_error(e: ServiceError) -> connect::ConnectError {
    use connect::ConnectError as C;
    match e {
        ServiceError::SessionNotFound(id) => {
            C::new("unavailable", format!("The sandbox {id} was not found"))
        }
        ServiceError::Busy | ServiceError::Exhausted(_) => {
            C::new("resource_exhausted", e.to_string())
        }
        ServiceError::Invalid(_) | ServiceError::InvalidPath(_) => C::invalid(e.to_string()),
        ServiceError::ForbiddenPath(_) => C::new("permission_denied", e.to_string()),
        ServiceError::FileNotFound(_) => C::not_found(e.to_string()),
        ServiceError::Conflict { code: "exists", .. } => C::new("already_exists", e.to_string()),
        ServiceError::Conflict { .. } => C::new("failed_precondition", e.to_string()),
        ServiceError::QuotaExceeded(_) | ServiceError::TooLarge(_) => {
            C::new("resource_exhausted", e.to_string())
        }
        e => {
            tracing::error!(error = %e, "e2b door: service error");
            C::internal("internal error")
        }
    }
}

/// A sandbox path as the SDKs give it (absolute, under `/home/user` — or the workspace's
/// own names `/workspace`, `/code`, `/sandbox` — or relative to the home, or `~/…`) as a path
/// relative to the workspace. Anything else is outside what the sandbox's files API serves.
pub fn workspace_path(raw: &str) -> Result<String, String> {
    const ROOTS: &[&str] = &[HOME, "/workspace", "/code", "/sandbox", "~"];
    for root in ROOTS {
        if raw == *root {
            return Ok(String::new());
        }
        if let Some(rest) = raw.strip_prefix(&format!("{root}/")) {
            return Ok(rest.to_string());
        }
    }
    if raw.is_empty() {
        return Ok(String::new());
    }
    if raw.starts_with('/') {
        return Err(format!(
            "{raw:?} is outside the sandbox's workspace: Pyxis serves the files under {HOME} \
             (also reachable as /workspace)"
        ));
    }
    Ok(raw.to_string())
}

/// The absolute sandbox path of a workspace-relative one.
pub fn sandbox_path(rel: &str) -> String {
    if rel.is_empty() {
        HOME.to_string()
    } else {
        format!("{HOME}/{rel}")
    }
}

/// A random token of 128 bits in hex.
fn new_secret() -> String {
    crate::ids::new_token()[..32].to_string()
}

/// RFC 3339 of a time (E2B's JSON times).
fn rfc3339(t: SystemTime) -> String {
    crate::services::sessions::rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_plane_is_its_paths_and_nothing_that_only_starts_alike() {
        for path in [
            "/sandboxes",
            "/sandboxes/",
            "/sandboxes/abc",
            "/v2/sandboxes/x/timeout",
        ] {
            assert!(is_control_path(path), "{path}");
        }
        for path in [
            "/sandboxesx",
            "/sandbox",
            "/v2/sandboxesx",
            "/v1/sessions",
            "/",
            "",
        ] {
            assert!(!is_control_path(path), "{path}");
        }
    }

    #[test]
    fn host_names_of_sandboxes_parse() {
        assert_eq!(
            parse_host("49983-abc-def.e2b.localhost:8080", "e2b.localhost"),
            Some(("abc-def".to_string(), Some(49983)))
        );
        assert_eq!(
            parse_host("49999-x.E2B.localhost", "e2b.localhost"),
            Some(("x".to_string(), Some(49999)))
        );
        assert_eq!(parse_host("api.e2b.localhost", "e2b.localhost"), None);
        assert_eq!(parse_host("49983-x.y.e2b.localhost", "e2b.localhost"), None);
        assert_eq!(parse_host("49983-x.other.test", "e2b.localhost"), None);
        assert_eq!(
            parse_host("80-.e2b.localhost", "e2b.localhost"),
            None,
            "an empty id is no sandbox"
        );
    }

    #[test]
    fn sandbox_paths_map_into_the_workspace() {
        assert_eq!(workspace_path("/home/user/a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(workspace_path("/home/user").unwrap(), "");
        assert_eq!(workspace_path("/workspace/x").unwrap(), "x");
        assert_eq!(workspace_path("~/x").unwrap(), "x");
        assert_eq!(workspace_path("rel/x").unwrap(), "rel/x");
        assert!(workspace_path("/etc/passwd").is_err());
        assert!(workspace_path("/home/username/x").is_err());
        assert_eq!(sandbox_path("a"), "/home/user/a");
        assert_eq!(sandbox_path(""), "/home/user");
    }
}
