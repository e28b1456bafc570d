//! The sandbox daemon's API (envd, port 49983; `spec/envd/envd.yaml` and
//! `spec/envd/filesystem/filesystem.proto` of e2b-dev/E2B) on the workspace files service:
//! `GET /health`, `GET /files` (raw bytes), `POST /files` (multipart field `file`, or an
//! `application/octet-stream` body), and the unary Connect methods of
//! `filesystem.Filesystem` (`ListDir`, `Stat`, `MakeDir`, `Move`, `Remove`). Directory
//! watching is not served. Paths are the sandbox's: `/home/user/…` is the workspace.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::connect::{self, ConnectError};
use super::{connect_error, error, sandbox_path, service_error, workspace_path, Refusal, Target};
use crate::app::{App, AppState};
use crate::services::files::Entry;
use crate::services::workspace_fs::EntryKind;
use crate::services::{ServiceError, Session};

/// Deepest `ListDir` depth served.
const MAX_DEPTH: u32 = 16;

pub fn routes(app: &Arc<App>) -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route(
            "/files",
            get(download)
                .post(upload)
                // Uploads are bounded by the workspace quota, not the body limit.
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/filesystem.Filesystem/{method}", post(filesystem))
        .merge(super::process::routes(app))
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .fallback(|uri: axum::http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                format!("envd has no route {}", uri.path()),
            )
        })
}

/// `GET /health`: 204 while the sandbox runs (the door answers 502 once it is gone).
async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct FileQuery {
    path: Option<String>,
    /// E2B's user to act as; Pyxis has one user per sandbox.
    #[serde(rename = "username")]
    _username: Option<String>,
}

fn rel_or_400(raw: &str) -> Result<String, Refusal> {
    workspace_path(raw).map_err(|m| Refusal::new(StatusCode::BAD_REQUEST, m))
}

/// `GET /files?path=`: the file's bytes, streamed.
async fn download(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    Query(q): Query<FileQuery>,
) -> Response {
    let Some(raw) = q.path.filter(|p| !p.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "path is required");
    };
    let rel = match rel_or_400(&raw) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let (file, size, _) = match app.files.open_read(&t.session, &rel).await {
        Ok(f) => f,
        Err(ServiceError::FileNotFound(_)) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("path '{raw}' does not exist"),
            )
        }
        Err(e) => return service_error(e),
    };
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut resp = Response::new(axum::body::Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

/// One file written, as envd reports it.
#[derive(Serialize)]
struct WriteInfo {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
}

fn write_info(rel: &str) -> WriteInfo {
    WriteInfo {
        name: rel.rsplit('/').next().unwrap_or(rel).to_string(),
        kind: "file",
        path: sandbox_path(rel),
    }
}

/// `POST /files?path=`: multipart (each part `file`; its file name is the path when the
/// query names none), or the raw body as `application/octet-stream`. Answers the files
/// written.
async fn upload(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    if let Some(enc) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        if !enc.eq_ignore_ascii_case("identity") {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {enc} is not accepted: upload uncompressed"),
            );
        }
    }
    let ct = connect::content_type(&headers);
    let path = q.path.filter(|p| !p.is_empty());
    if ct == "multipart/form-data" {
        let mp = match <Multipart as axum::extract::FromRequest<AppState>>::from_request(req, &app)
            .await
        {
            Ok(m) => m,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
        };
        return upload_multipart(&app, &t.session, path, mp).await;
    }
    let Some(raw) = path else {
        return error(
            StatusCode::BAD_REQUEST,
            "path is required for an application/octet-stream upload",
        );
    };
    let rel = match rel_or_400(&raw) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let body = req.into_body().into_data_stream();
    match write(&app, &t.session, &rel, body).await {
        Ok(()) => Json(vec![write_info(&rel)]).into_response(),
        Err(e) => e,
    }
}

async fn write<S, E>(app: &App, session: &Arc<Session>, rel: &str, body: S) -> Result<(), Response>
where
    S: futures_util::Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let parsed = app.files.parse(rel, false).map_err(service_error)?;
    app.files
        .write_stream(session, &parsed, body, app.files.quota())
        .await
        .map(|_| ())
        .map_err(|e| match e {
            ServiceError::QuotaExceeded(_) => error(
                StatusCode::INSUFFICIENT_STORAGE,
                "not enough disk space in the sandbox's workspace",
            ),
            e => service_error(e),
        })
}

async fn upload_multipart(
    app: &App,
    session: &Arc<Session>,
    path: Option<String>,
    mut mp: Multipart,
) -> Response {
    let mut written = Vec::new();
    let mut path = path;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
        };
        if field.name() != Some("file") {
            continue;
        }
        // The query's path names the first file; the others (and the first, without a
        // query path) are named by their part's file name, as envd does.
        let Some(raw) = path
            .take()
            .or_else(|| field.file_name().map(str::to_string))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "a file part needs a file name (its path) when the query has no path",
            );
        };
        let rel = match rel_or_400(&raw) {
            Ok(r) => r,
            Err(r) => return r.into_response(),
        };
        let body = field.map(|c| c.map_err(|e| e.body_text()));
        if let Err(r) = write(app, session, &rel, body).await {
            return r;
        }
        written.push(write_info(&rel));
    }
    if written.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no part named file in the upload");
    }
    Json(written).into_response()
}

/// `filesystem.EntryInfo` in the protobuf JSON mapping.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryInfo {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
    /// int64: a string in JSON.
    size: String,
    mode: u32,
    permissions: String,
    owner: &'static str,
    group: &'static str,
    modified_time: String,
}

/// Go's `FileMode.String()` for the kinds a workspace holds, as envd reports it.
fn permissions(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'L',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn entry_info(e: &Entry) -> EntryInfo {
    let name = if e.name.is_empty() {
        "user".to_string()
    } else {
        e.name.clone()
    };
    EntryInfo {
        name,
        kind: match e.kind {
            EntryKind::File => "FILE_TYPE_FILE",
            EntryKind::Dir => "FILE_TYPE_DIRECTORY",
            EntryKind::Symlink => "FILE_TYPE_SYMLINK",
            EntryKind::Other => "FILE_TYPE_UNSPECIFIED",
        },
        path: sandbox_path(&e.path),
        size: e.size.to_string(),
        mode: e.mode,
        permissions: permissions(e.kind, e.mode),
        owner: "user",
        group: "user",
        modified_time: rfc3339_nanos(e.modified),
    }
}

fn rfc3339_nanos(t: SystemTime) -> String {
    super::rfc3339(t)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathRequest {
    #[serde(default)]
    path: String,
    #[serde(default)]
    depth: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoveRequest {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

fn rel(raw: &str) -> Result<String, ConnectError> {
    workspace_path(raw).map_err(ConnectError::invalid)
}

/// `POST /filesystem.Filesystem/{method}`: the unary methods.
async fn filesystem(
    State(app): State<AppState>,
    Extension(t): Extension<Target>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = connect::content_type(&headers);
    if ct == connect::STREAM_JSON {
        return ConnectError::unimplemented(format!(
            "filesystem.Filesystem/{method} (watching directories) is not served by Pyxis"
        ))
        .stream();
    }
    if ct != connect::UNARY_JSON {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {ct:?} is not served: use application/json (Connect JSON)"),
        )
            .into_response();
    }
    let answer = match method.as_str() {
        "ListDir" => list_dir(&app, &t.session, &body).await,
        "Stat" => stat(&app, &t.session, &body).await,
        "MakeDir" => make_dir(&app, &t.session, &body).await,
        "Move" => move_entry(&app, &t.session, &body).await,
        "Remove" => remove(&app, &t.session, &body).await,
        "CreateWatcher" | "GetWatcherEvents" | "RemoveWatcher" => Err(ConnectError::unimplemented(
            "watching directories is not served by Pyxis",
        )),
        m => Err(ConnectError::new(
            "unimplemented",
            format!("filesystem.Filesystem/{m} does not exist"),
        )),
    };
    match answer {
        Ok(v) => connect::unary_ok(&v),
        Err(e) => e.unary(),
    }
}

/// A service error of a path operation, as envd words them.
fn fs_error(e: ServiceError, raw: &str) -> ConnectError {
    match e {
        ServiceError::FileNotFound(_) => {
            ConnectError::not_found(format!("path '{raw}' does not exist"))
        }
        ServiceError::Conflict {
            code: "not_a_directory",
            ..
        } => ConnectError::invalid(format!("path '{raw}' is not a directory")),
        e => connect_error(e),
    }
}

async fn list_dir(
    app: &App,
    session: &Arc<Session>,
    body: &[u8],
) -> Result<serde_json::Value, ConnectError> {
    let req: PathRequest = connect::decode_message(body)?;
    let root = rel(&req.path)?;
    let depth = req.depth.unwrap_or(1).clamp(1, MAX_DEPTH);
    let max = app.config.files_list_max_entries;
    let mut entries = Vec::new();
    let mut dirs = vec![(root.clone(), 1u32)];
    while let Some((dir, level)) = dirs.pop() {
        let listing = app
            .files
            .list(session, &dir)
            .await
            .map_err(|e| fs_error(e, &sandbox_path(&dir)))?;
        for e in listing.entries {
            if entries.len() >= max {
                return Err(ConnectError::new(
                    "resource_exhausted",
                    format!("more than {max} entries: list a smaller depth or directory"),
                ));
            }
            if e.kind == EntryKind::Dir && level < depth {
                dirs.push((e.path.clone(), level + 1));
            }
            entries.push(entry_info(&e));
        }
    }
    Ok(serde_json::json!({"entries": entries}))
}

async fn stat(
    app: &App,
    session: &Arc<Session>,
    body: &[u8],
) -> Result<serde_json::Value, ConnectError> {
    let req: PathRequest = connect::decode_message(body)?;
    let r = rel(&req.path)?;
    let e = app
        .files
        .stat(session, &r)
        .await
        .map_err(|e| fs_error(e, &req.path))?;
    Ok(serde_json::json!({"entry": entry_info(&e)}))
}

async fn make_dir(
    app: &App,
    session: &Arc<Session>,
    body: &[u8],
) -> Result<serde_json::Value, ConnectError> {
    let req: PathRequest = connect::decode_message(body)?;
    let r = rel(&req.path)?;
    let made = app.files.make_dir(session, &r).await.map_err(|e| match e {
        ServiceError::Conflict { code: "exists", .. } => ConnectError::new(
            "already_exists",
            format!("path '{}' already exists and is not a directory", req.path),
        ),
        e => fs_error(e, &req.path),
    })?;
    if !made {
        return Err(ConnectError::new(
            "already_exists",
            format!("directory '{}' already exists", req.path),
        ));
    }
    let e = app
        .files
        .stat(session, &r)
        .await
        .map_err(|e| fs_error(e, &req.path))?;
    Ok(serde_json::json!({"entry": entry_info(&e)}))
}

async fn move_entry(
    app: &App,
    session: &Arc<Session>,
    body: &[u8],
) -> Result<serde_json::Value, ConnectError> {
    let req: MoveRequest = connect::decode_message(body)?;
    let (from, to) = (rel(&req.source)?, rel(&req.destination)?);
    app.files
        .rename(session, &from, &to)
        .await
        .map_err(|e| fs_error(e, &req.source))?;
    let e = app
        .files
        .stat(session, &to)
        .await
        .map_err(|e| fs_error(e, &req.destination))?;
    Ok(serde_json::json!({"entry": entry_info(&e)}))
}

/// Most entries one `Remove` of a directory tree deletes.
const MAX_REMOVE: usize = 100_000;

async fn remove(
    app: &App,
    session: &Arc<Session>,
    body: &[u8],
) -> Result<serde_json::Value, ConnectError> {
    let req: PathRequest = connect::decode_message(body)?;
    let r = rel(&req.path)?;
    if r.is_empty() {
        return Err(ConnectError::invalid(
            "the workspace itself cannot be removed",
        ));
    }
    // envd removes whole trees (`os.RemoveAll`): children first, never following a link.
    let top = app
        .files
        .stat(session, &r)
        .await
        .map_err(|e| fs_error(e, &req.path))?;
    let mut stack = vec![(top.path.clone(), top.kind == EntryKind::Dir, false)];
    let mut budget = MAX_REMOVE;
    while let Some((path, is_dir, expanded)) = stack.pop() {
        if is_dir && !expanded {
            stack.push((path.clone(), true, true));
            let listing = app
                .files
                .list(session, &path)
                .await
                .map_err(|e| fs_error(e, &sandbox_path(&path)))?;
            for e in listing.entries {
                stack.push((e.path, e.kind == EntryKind::Dir, false));
            }
            continue;
        }
        budget = budget.checked_sub(1).ok_or_else(|| {
            ConnectError::new(
                "resource_exhausted",
                format!("more than {MAX_REMOVE} entries to remove"),
            )
        })?;
        match app.files.remove(session, &path).await {
            Ok(()) | Err(ServiceError::FileNotFound(_)) => {}
            Err(e) => return Err(fs_error(e, &sandbox_path(&path))),
        }
    }
    Ok(serde_json::json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_go() {
        assert_eq!(permissions(EntryKind::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(EntryKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(EntryKind::Symlink, 0o777), "Lrwxrwxrwx");
    }
}
