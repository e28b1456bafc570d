//! The Docker-pool interpreter's API (COMPAT.md §1): stateless runs with
//! input files from URLs and output files served back.
//!
//! - `POST /api/v1/execute {code, files?}` (without `?user_uuid=`, which
//!   selects the gateway) → always 200 `{result, error, execution_time,
//!   image_url, files, inputs}`;
//! - `GET /images/{f}`, `GET /files/{f}`: what runs stored;
//! - `GET /capabilities`.
//!
//! A run is a session created, executed once and deleted (the native
//! `create`, `execute`, `delete`): the inputs are imported before the code
//! runs and the outputs read before the sandbox goes, which a one-shot does
//! not allow. Routes need the token unless `PYXIS_COMPAT_OPEN_POOL_API`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::app::{App, AppState};
use crate::doors::v1::model::ErrorBody;
use crate::error::ApiError;
use crate::services::files::blocking;
use crate::services::files::ImportItem;
use crate::services::Session;
use crate::services::{
    session_options, CellOutcome as Execution, CellStatus as ExecStatus, NewSession,
};

/// `INPUT_MAX_FILES`.
const INPUT_MAX_FILES: usize = 10;
/// `OUTPUT_MAX_FILES`.
const OUTPUT_MAX_FILES: usize = 20;
/// `OUTPUT_FILE_MAX_BYTES`.
const OUTPUT_FILE_MAX_BYTES: u64 = 5 * 1024 * 1024;
/// `OUTPUT_TOTAL_MAX_BYTES`.
const OUTPUT_TOTAL_MAX_BYTES: u64 = 20 * 1024 * 1024;

/// Whether `req` is a pool route the operator opened with
/// `PYXIS_COMPAT_OPEN_POOL_API`.
pub fn is_open(app: &App, req: &Request) -> bool {
    if !app.config.compat_open_pool_api {
        return false;
    }
    let path = req.uri().path();
    (path == "/api/v1/execute" && !super::wants_gateway(req.uri().query()))
        || path == "/capabilities"
        || path.starts_with("/images/")
        || path.starts_with("/files/")
}

fn store_dir(app: &App, kind: &str) -> PathBuf {
    app.config.data_dir.join("compat-pool").join(kind)
}

fn public_url(app: &App, kind: &str, name: &str) -> String {
    format!(
        "{}/{kind}/{name}",
        app.config.compat_public_base_url.as_deref().unwrap_or("")
    )
}

fn token() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// A file name safe on disk and in a URL.
fn safe_name(raw: &str) -> String {
    let s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "file".into()
    } else {
        s.chars().take(128).collect()
    }
}

fn valid_stored(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Keep the store within its bounds before adding `incoming` bytes to `dir`:
/// delete files past retention, then the oldest until the rest and the new
/// file fit the size bound.
fn prune(dir: &std::path::Path, ttl: Duration, max_bytes: u64, incoming: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    let mut kept: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        let modified = meta.modified().unwrap_or(now);
        let expired = now.duration_since(modified).is_ok_and(|age| age > ttl);
        if expired {
            let _ = std::fs::remove_file(e.path());
        } else {
            kept.push((modified, meta.len(), e.path()));
        }
    }
    kept.sort_by_key(|(t, _, _)| *t);
    let mut total: u64 = kept.iter().map(|(_, n, _)| n).sum::<u64>() + incoming;
    for (_, size, path) in kept {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= size;
        }
    }
}

/// `POST /api/v1/execute` body (the gateway, with `?user_uuid=`, reads only `code`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct PoolRequest {
    /// The Python code; input file URLs in it are replaced by their local paths.
    code: String,
    /// URLs of input files (at most 10), downloaded to `/code/input/` before the code runs.
    #[serde(default)]
    files: Vec<String>,
}

/// `POST /api/v1/execute` answer of the Docker-pool interpreter (always 200).
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolReply {
    /// Everything the code printed.
    result: String,
    /// The traceback, or why the run failed; null on success.
    error: Option<String>,
    /// Seconds the code ran.
    execution_time: f64,
    /// URL of the first PNG the code displayed.
    image_url: Option<String>,
    /// The files the code wrote to `/code/output/`, as stored.
    files: Vec<PoolOutputFile>,
    /// The input files, as downloaded.
    inputs: Vec<PoolInput>,
}

/// An output file of a run, served at `GET /files/{filename}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolOutputFile {
    /// Name in the file store.
    filename: String,
    /// Name the code gave it.
    original_name: String,
    /// Size in bytes.
    size_bytes: u64,
    /// Where to download it.
    url: String,
}

/// An input file of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolInput {
    /// The URL it came from.
    url: String,
    /// The last segment of that URL.
    original_name: String,
    /// Its name under `/code/input/`.
    local_name: String,
    /// Its path in the sandbox.
    local_path: String,
    /// Size in bytes.
    size_bytes: u64,
}

struct Input {
    url: String,
    original_name: String,
    local_name: String,
}

/// `POST /api/v1/execute {code, files?}` without `user_uuid`. Documented on
/// `router::execute_dispatch`, which shares the route with the gateway.
pub async fn execute(
    app: AppState,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(v) = body?;
    let req: PoolRequest = serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))?;
    if req.files.len() > INPUT_MAX_FILES {
        return Ok(Json(reply_error(
            format!("at most {INPUT_MAX_FILES} input files"),
            0.0,
        ))
        .into_response());
    }
    let opts = session_options(&app.config, NewSession::default())?;
    let timeout = opts.timeout;
    let session = app.sessions.create(opts).await?;
    let out = run(&app, &session, req, timeout).await;
    app.sessions.delete(&session.id).await;
    Ok(Json(out?).into_response())
}

fn reply_error(error: String, secs: f64) -> PoolReply {
    PoolReply {
        result: String::new(),
        error: Some(error),
        execution_time: secs,
        image_url: None,
        files: Vec::new(),
        inputs: Vec::new(),
    }
}

async fn run(
    app: &AppState,
    session: &std::sync::Arc<Session>,
    req: PoolRequest,
    timeout: Duration,
) -> Result<PoolReply, ApiError> {
    // Inputs: /code/input/<name>, a clash becoming 2_<name>, 3_<name>, …
    let mut inputs: Vec<Input> = Vec::new();
    for url in &req.files {
        let original = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| {
                u.path_segments()
                    .and_then(|mut s| s.next_back().map(str::to_string))
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "input".into());
        let base = safe_name(&original);
        let mut local = base.clone();
        let mut n = 2;
        while inputs.iter().any(|i| i.local_name == local) {
            local = format!("{n}_{base}");
            n += 1;
        }
        inputs.push(Input {
            url: url.clone(),
            original_name: original,
            local_name: local,
        });
    }
    let items = inputs
        .iter()
        .map(|i| ImportItem {
            url: i.url.clone(),
            path: Some(format!("input/{}", i.local_name)),
        })
        .collect::<Vec<_>>();
    let mut sizes = Vec::new();
    if !items.is_empty() {
        match app.files.import(session, items).await {
            Ok(done) => sizes = done.into_iter().map(|f| f.size).collect(),
            Err(e) => {
                let msg = crate::error::ApiError::from(e).message().to_string();
                return Ok(reply_error(
                    format!("downloading the input files: {msg}"),
                    0.0,
                ));
            }
        }
    }
    let mut code = req.code;
    // Longest URLs first, so a URL that prefixes another is not replaced
    // inside it.
    let mut by_len: Vec<&Input> = inputs.iter().collect();
    by_len.sort_by_key(|i| std::cmp::Reverse(i.url.len()));
    for i in by_len {
        code = code.replace(&i.url, &format!("/code/input/{}", i.local_name));
    }
    // `/code/output/` exists, and with inputs the code runs in
    // `/code/input`, as in the original (one line before the code).
    let chdir = if inputs.is_empty() {
        ""
    } else {
        " _pyxis_os.chdir('/code/input');"
    };
    code = format!(
        "import os as _pyxis_os; _pyxis_os.makedirs('/code/output', exist_ok=True);{chdir} del _pyxis_os\n{code}"
    );
    let out = super::run_cell(app, session, code, timeout).await?;
    let image_url = store_image(app, &out).await;
    let files = collect_outputs(app, session, &out).await;
    let error = match out.summary.status {
        ExecStatus::Ok => None,
        _ => Some(out.error_text()),
    };
    let inputs = inputs
        .into_iter()
        .zip(sizes.into_iter().chain(std::iter::repeat(0)))
        .map(|(i, size_bytes)| PoolInput {
            local_path: format!("/code/input/{}", i.local_name),
            url: i.url,
            original_name: i.original_name,
            local_name: i.local_name,
            size_bytes,
        })
        .collect();
    Ok(PoolReply {
        result: out.stdout,
        error,
        execution_time: out.summary.duration_ms / 1000.0,
        image_url,
        files,
        inputs,
    })
}

/// Store the first PNG the cell displayed; its URL.
async fn store_image(app: &App, out: &Execution) -> Option<String> {
    let b64 = out
        .results
        .iter()
        .find_map(|r| r.data.get("image/png").and_then(|v| v.as_str()))?;
    let clean: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
    let png = base64::engine::general_purpose::STANDARD
        .decode(clean)
        .ok()?;
    let dir = store_dir(app, "images");
    let name = format!("plot_{}.png", token());
    let path = dir.join(&name);
    let (ttl, max) = (
        app.config.compat_store_ttl,
        app.config.compat_store_max_bytes,
    );
    let ok = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        prune(&dir, ttl, max, png.len() as u64);
        std::fs::write(path, png)
    })
    .await;
    match ok {
        Ok(Ok(())) => Some(public_url(app, "images", &name)),
        other => {
            tracing::warn!(?other, "storing an image failed");
            None
        }
    }
}

/// Copy the allowed `/code/output/` files the cell wrote to the file store.
async fn collect_outputs(
    app: &App,
    session: &std::sync::Arc<Session>,
    out: &Execution,
) -> Vec<PoolOutputFile> {
    let allowed = &app.config.compat_output_extensions;
    let mut total = 0u64;
    let mut files = Vec::new();
    let dir = store_dir(app, "files");
    for f in &out.summary.files {
        if files.len() >= OUTPUT_MAX_FILES {
            break;
        }
        let Some(rest) = f.path.strip_prefix("output/") else {
            continue;
        };
        let original = rest.rsplit('/').next().unwrap_or(rest).to_string();
        let ext = original
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        if !allowed.contains(&ext)
            || f.size > OUTPUT_FILE_MAX_BYTES
            || total + f.size > OUTPUT_TOTAL_MAX_BYTES
        {
            continue;
        }
        let Ok(rel) = app.files.parse(&f.path, false) else {
            continue;
        };
        let stored = format!("{}_{}", token(), safe_name(&original));
        let (s, d, name) = (session.clone(), dir.clone(), stored.clone());
        let (ttl, max) = (
            app.config.compat_store_ttl,
            app.config.compat_store_max_bytes,
        );
        let copied = blocking(move || {
            let (mut src, size) = s.workspace()?.open_read(&rel)?;
            if size > OUTPUT_FILE_MAX_BYTES {
                return Ok(None);
            }
            let io = |e| crate::services::workspace_fs::WorkspaceFsError::from_io("store", e);
            std::fs::create_dir_all(&d).map_err(io)?;
            prune(&d, ttl, max, size);
            let mut dst = std::fs::File::create(d.join(&name)).map_err(io)?;
            let n =
                std::io::copy(&mut (&mut src).take(OUTPUT_FILE_MAX_BYTES), &mut dst).map_err(io)?;
            Ok(Some(n))
        })
        .await;
        if let Ok(Some(size)) = copied {
            total += size;
            files.push(PoolOutputFile {
                url: public_url(app, "files", &stored),
                filename: stored,
                original_name: original,
                size_bytes: size,
            });
        }
    }
    files
}

use std::io::Read;

async fn serve(app: &App, kind: &str, name: &str) -> Result<Response, ApiError> {
    if !valid_stored(name) {
        return Err(ApiError::not_found());
    }
    let path = store_dir(app, kind).join(name);
    let data = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::file_not_found(name))?;
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    Ok((
        [
            (header::CONTENT_TYPE, mime.essence_str().to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        Body::from(data),
    )
        .into_response())
}

/// `GET /images/{name}`: a stored plot.
#[utoipa::path(get, path = "/images/{name}", params(("name" = String, Path)),
    responses(
        (status = 200, description = "the PNG", content_type = "image/png", body = Vec<u8>),
        (status = 404, body = ErrorBody, description = "no such image"),
    ), security(("token" = [])), tag = "pool")]
pub async fn get_image(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    serve(&app, "images", &name).await
}

/// `GET /files/{name}`: a stored output file.
#[utoipa::path(get, path = "/files/{name}", params(("name" = String, Path)),
    responses(
        (status = 200, description = "the file's bytes, typed by its extension", content_type = "*/*", body = Vec<u8>),
        (status = 404, body = ErrorBody, description = "no such file"),
    ), security(("token" = [])), tag = "pool")]
pub async fn get_file(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    serve(&app, "files", &name).await
}

/// `GET /capabilities`.
#[utoipa::path(get, path = "/capabilities",
    responses((status = 200, body = Object,
        description = "`{pythonVersion, installedPackages, limits, networkPolicy}`")),
    security(("token" = [])), tag = "pool")]
pub async fn capabilities(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let info = app.sessions.launcher().runtime_info();
    let cfg = &app.config;
    let limits = app.sessions.launcher().default_limits();
    (
        StatusCode::OK,
        Json(json!({
            "pythonVersion": info.python,
            "installedPackages": info.libraries.iter().map(|(k, v)| format!("{k}=={v}")).collect::<Vec<_>>(),
            "limits": {
                "maxConcurrency": cfg.max_sessions,
                "executionTimeoutSeconds": cfg.exec_timeout.as_secs_f64(),
                "container": {
                    "memoryBytes": limits.memory_bytes,
                    "cpus": limits.cpu_millicores as f64 / 1000.0,
                    "pidsLimit": limits.pids,
                },
                "input": {
                    "maxFiles": INPUT_MAX_FILES,
                    "fileMaxBytes": cfg.import_max_bytes.min(cfg.disk_bytes),
                    "totalMaxBytes": cfg.disk_bytes,
                },
                "output": {
                    "maxFiles": OUTPUT_MAX_FILES,
                    "fileMaxBytes": OUTPUT_FILE_MAX_BYTES,
                    "totalMaxBytes": OUTPUT_TOTAL_MAX_BYTES,
                    "allowedExtensions": cfg.compat_output_extensions,
                },
            },
            "networkPolicy": {
                "mode": "none",
                "description": "sandboxes have only a loopback interface; input files are downloaded by the server under its import rules",
                "packageInstall": false,
            },
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &std::path::Path, name: &str, age_s: u64) {
        let path = dir.join(name);
        std::fs::write(&path, [0u8; 10]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(age_s);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_store_drops_expired_files_then_the_oldest_beyond_its_size() {
        let dir = tempfile::tempdir().unwrap();
        file(dir.path(), "expired", 1000);
        file(dir.path(), "old", 30);
        file(dir.path(), "mid", 20);
        file(dir.path(), "new", 10);
        // 3 live files of 10 bytes + 10 incoming = 40 > 25: the two oldest go.
        prune(dir.path(), Duration::from_secs(100), 25, 10);
        assert_eq!(names(dir.path()), ["new"]);
        // Within bounds nothing more is removed.
        prune(dir.path(), Duration::from_secs(100), 25, 10);
        assert_eq!(names(dir.path()), ["new"]);
    }
}
