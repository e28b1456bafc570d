//! `/v1/sessions/{id}/files`: download, upload, delete and list the files of
//! a session's workspace.
//!
//! Every path is validated and then resolved by the kernel beneath the
//! workspace root without following any symlink (see `workspace_fs`), so user
//! code that plants or swaps symlinks can never make the server read or write
//! outside the workspace. Bodies are streamed to and from disk, never held in
//! memory; uploads are limited by the workspace quota, not the body limit.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::app::AppState;
use crate::error::ApiError;
use crate::model::{
    DirQuery, ErrorBody, FileEntry, FileKind, FileList, ImportItem, ImportRequest, UploadedFile,
    UploadedFiles,
};
use crate::sessions::{rfc3339, Session};
use crate::url_import::ImportPolicy;
use crate::workspace_fs::{EntryKind, RelPath, WorkspaceFsError};

/// Most URLs in one import request.
const MAX_IMPORTS: usize = 64;

/// Read size of downloads.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

/// Run blocking file-system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WorkspaceFsError> + Send + 'static,
) -> Result<T, WorkspaceFsError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(WorkspaceFsError::Io {
            op: "spawn_blocking",
            source: std::io::Error::other(e),
        })
    })
}

pub(crate) fn parse(raw: &str, allow_root: bool) -> Result<RelPath, ApiError> {
    RelPath::parse(raw, allow_root).map_err(|e| ApiError::from_fs(e, raw, 0))
}

/// Download a workspace file (raw bytes; `Content-Type` guessed from the
/// name). Symlinks are never followed (403), and only regular files are
/// served (409 for directories, fifos, sockets).
#[utoipa::path(get, path = "/v1/sessions/{id}/files/{path}",
    params(("id" = String, Path), ("path" = String, Path, description = "file path relative to the workspace")),
    responses(
        (status = 200, description = "the file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, body = ErrorBody, description = "the path goes through a symbolic link"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not a regular file"),
        (status = 422, body = ErrorBody, description = "invalid path"),
    ), security(("token" = [])), tag = "files")]
pub async fn download_file(
    State(app): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let session = app.sessions.get(&id)?;
    let rel = parse(&path, false)?;
    session.touch();
    let (s, r) = (session.clone(), rel.clone());
    let (file, size) = blocking(move || s.workspace()?.open_read(&r))
        .await
        .map_err(|e| ApiError::from_fs(e, &path, 0))?;
    // Never send more than the size announced, even if the file grows.
    let reader = tokio::fs::File::from_std(file).take(size);
    let body = Body::from_stream(ReaderStream::with_capacity(reader, DOWNLOAD_CHUNK));
    let mime = mime_guess::from_path(rel.as_str()).first_or_octet_stream();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, mime.as_ref())
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_DISPOSITION, attachment(rel.as_str()))
        .header(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        )
        .body(body)
        .map_err(ApiError::internal)
}

/// `Content-Disposition` naming the file (RFC 6266 `filename*`, every byte
/// outside a safe set percent-encoded, so no header injection is possible).
fn attachment(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut out = String::from("attachment; filename*=UTF-8''");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Stream `body` into the workspace file `rel`: a temporary file beside it,
/// renamed over it once complete. On any error (the client went away, the
/// quota is full) the temporary file is removed and the old file stays.
async fn write_file<S, E>(
    session: &Arc<Session>,
    rel: &RelPath,
    body: S,
    quota: u64,
) -> Result<u64, ApiError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let fs_err = |e| match e {
        WorkspaceFsError::NotADirectory => ApiError::conflict(
            "not_a_directory",
            format!("a parent of {:?} is not a directory", rel.as_str()),
        ),
        e => ApiError::from_fs(e, rel.as_str(), quota),
    };
    let (s, r) = (session.clone(), rel.clone());
    let mut pending = blocking(move || s.workspace()?.begin_write(&r))
        .await
        .map_err(fs_err)?;
    let std_file = pending
        .take_file()
        .ok_or_else(|| ApiError::internal("upload without a file"))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut written = 0u64;
    futures_util::pin_mut!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the upload of {:?} was cut off: {e}", rel.as_str()))
        })?;
        written += chunk.len() as u64;
        if written > quota {
            return Err(ApiError::quota_exceeded(quota));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| fs_err(WorkspaceFsError::from_io("write", e)))?;
    }
    // tokio writes in the background: flush to see the last write's error.
    file.flush()
        .await
        .map_err(|e| fs_err(WorkspaceFsError::from_io("write", e)))?;
    drop(file);
    blocking(move || pending.commit()).await.map_err(fs_err)?;
    session.forget_scan();
    session.touch();
    Ok(written)
}

/// Upload one file: the raw request body becomes the file at `path`,
/// replacing it atomically; missing directories are created. Files belong to
/// the session's user (mode 0644, directories 0755). Limited by the workspace
/// quota (507 `quota_exceeded`), not by the request body limit.
#[utoipa::path(put, path = "/v1/sessions/{id}/files/{path}",
    params(("id" = String, Path), ("path" = String, Path, description = "file path relative to the workspace")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = UploadedFile),
        (status = 403, body = ErrorBody, description = "the path goes through a symbolic link"),
        (status = 409, body = ErrorBody, description = "a directory is in the way"),
        (status = 422, body = ErrorBody, description = "invalid path"),
        (status = 507, body = ErrorBody, description = "workspace quota exhausted"),
    ), security(("token" = [])), tag = "files")]
pub async fn upload_file(
    State(app): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<UploadedFile>), ApiError> {
    let session = app.sessions.get(&id)?;
    let rel = parse(&path, false)?;
    let quota = app.config.disk_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > quota) {
        return Err(ApiError::quota_exceeded(quota));
    }
    session.touch();
    let size = write_file(&session, &rel, body.into_data_stream(), quota).await?;
    Ok((
        StatusCode::CREATED,
        Json(UploadedFile {
            path: rel.as_str().to_string(),
            size,
        }),
    ))
}

/// Upload several files as `multipart/form-data`: each part named `file`
/// is written to its filename, relative to the `path` directory (the
/// workspace root when absent). Files are written one by one; each replaces
/// its target atomically.
#[utoipa::path(post, path = "/v1/sessions/{id}/files",
    params(("id" = String, Path), DirQuery),
    request_body(content = String, content_type = "multipart/form-data",
        description = "parts named `file`, each with a filename"),
    responses(
        (status = 201, body = UploadedFiles),
        (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 507, body = ErrorBody, description = "workspace quota exhausted"),
    ), security(("token" = [])), tag = "files")]
pub async fn upload_files(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DirQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<UploadedFiles>), ApiError> {
    let session = app.sessions.get(&id)?;
    let dir = parse(q.path.as_deref().unwrap_or(""), true)?;
    let mut multipart = multipart.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let quota = app.config.disk_bytes;
    session.touch();
    let mut files = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let Some(name) = field.file_name().map(str::to_string) else {
            return Err(ApiError::invalid_path("every `file` part needs a filename"));
        };
        let rel = dir
            .join(&parse(&name, false)?)
            .map_err(|e| ApiError::from_fs(e, &name, quota))?;
        let size = write_file(&session, &rel, field, quota).await?;
        files.push(UploadedFile {
            path: rel.as_str().to_string(),
            size,
        });
    }
    if files.is_empty() {
        return Err(ApiError::bad_request(
            "no part named `file` with a filename",
        ));
    }
    Ok((StatusCode::CREATED, Json(UploadedFiles { files })))
}

/// Delete a workspace file, symlink (the link itself) or empty directory.
#[utoipa::path(delete, path = "/v1/sessions/{id}/files/{path}",
    params(("id" = String, Path), ("path" = String, Path, description = "path relative to the workspace")),
    responses(
        (status = 204),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "directory not empty"),
        (status = 422, body = ErrorBody),
    ), security(("token" = [])), tag = "files")]
pub async fn delete_file(
    State(app): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let session = app.sessions.get(&id)?;
    let rel = parse(&path, false)?;
    session.touch();
    let s = session.clone();
    blocking(move || s.workspace()?.remove(&rel))
        .await
        .map_err(|e| ApiError::from_fs(e, &path, 0))?;
    session.forget_scan();
    Ok(StatusCode::NO_CONTENT)
}

/// List a workspace directory (the root when `path` is absent). Symlinks are
/// listed as such and never followed.
#[utoipa::path(get, path = "/v1/sessions/{id}/files",
    params(("id" = String, Path), DirQuery),
    responses(
        (status = 200, body = FileList),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not a directory"),
        (status = 422, body = ErrorBody),
    ), security(("token" = [])), tag = "files")]
pub async fn list_files(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DirQuery>,
) -> Result<Json<FileList>, ApiError> {
    let session = app.sessions.get(&id)?;
    let raw = q.path.unwrap_or_default();
    let rel = parse(&raw, true)?;
    session.touch();
    let max = app.config.files_list_max_entries;
    let (s, r) = (session.clone(), rel.clone());
    let (entries, truncated) = blocking(move || s.workspace()?.list(&r, max))
        .await
        .map_err(|e| match e {
            WorkspaceFsError::NotADirectory => {
                ApiError::conflict("not_a_directory", format!("{raw:?} is not a directory"))
            }
            e => ApiError::from_fs(e, &raw, 0),
        })?;
    let entries = entries
        .into_iter()
        .map(|e| FileEntry {
            path: if rel.is_root() {
                e.name.clone()
            } else {
                format!("{}/{}", rel.as_str(), e.name)
            },
            name: e.name,
            size: e.size,
            modified: rfc3339(e.modified),
            kind: match e.kind {
                EntryKind::File => FileKind::File,
                EntryKind::Dir => FileKind::Dir,
                EntryKind::Symlink => FileKind::Symlink,
                EntryKind::Other => FileKind::Other,
            },
        })
        .collect();
    Ok(Json(FileList {
        path: rel.as_str().to_string(),
        entries,
        truncated,
    }))
}

/// Import files from URLs into the workspace (`POST …/files/import`; a POST
/// to any other file path is 405). Only `http`/`https`; hosts that resolve to
/// loopback, private, link-local (cloud metadata), CGNAT, multicast or other
/// non-public addresses are refused (403 `forbidden_url`) unless allowed by
/// `PYXIS_IMPORT_ALLOW`; every redirect is checked the same way. Each file is
/// written like an upload (atomic, owned by the session's user), limited by
/// `PYXIS_IMPORT_MAX_MB`, the quota and `PYXIS_IMPORT_TIMEOUT_S`.
#[utoipa::path(post, path = "/v1/sessions/{id}/files/import",
    params(("id" = String, Path)),
    request_body = ImportRequest,
    responses(
        (status = 201, body = UploadedFiles),
        (status = 403, body = ErrorBody, description = "a URL resolves to a non-public address"),
        (status = 422, body = ErrorBody, description = "invalid URL or path"),
        (status = 502, body = ErrorBody, description = "the fetch failed"),
        (status = 507, body = ErrorBody, description = "workspace quota exhausted"),
    ), security(("token" = [])), tag = "files")]
pub async fn post_file_path(
    State(app): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    body: Body,
) -> Result<(StatusCode, Json<PostFileReply>), ApiError> {
    match path.as_str() {
        "import" => {}
        "export" => {
            let session = app.sessions.get(&id)?;
            let bytes = read_body(&app, body).await?;
            let results = super::export::export_files(&app, &session, &bytes).await?;
            return Ok((StatusCode::OK, Json(PostFileReply::Export(results))));
        }
        _ => {
            return Err(ApiError::with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "POST is for …/files (multipart), …/files/import and …/files/export",
            ))
        }
    }
    let session = app.sessions.get(&id)?;
    let bytes = read_body(&app, body).await?;
    let req: ImportRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid import request: {e}")))?;
    if req.files.is_empty() || req.files.len() > MAX_IMPORTS {
        return Err(ApiError::bad_request(format!(
            "give between 1 and {MAX_IMPORTS} files"
        )));
    }
    session.touch();
    let files = import_urls(&app, &session, req.files).await?;
    Ok((
        StatusCode::CREATED,
        Json(PostFileReply::Import(UploadedFiles { files })),
    ))
}

/// The answer of a POST to a file path: an import or an export.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum PostFileReply {
    /// `…/files/import`.
    Import(UploadedFiles),
    /// `…/files/export`.
    Export(crate::model::ExportResults),
}

async fn read_body(app: &AppState, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, app.config.max_body_bytes)
        .await
        .map_err(|_| ApiError::too_large("request body too large"))
}

/// Where each imported URL is written: its `path`, or else the last segment
/// of its URL in the workspace root. A name taken by another file of the same
/// request gets `-1`, `-2`, … before its extension (`data.csv`, `data-1.csv`);
/// a `path` given twice is refused.
pub(crate) fn import_targets(items: &[ImportItem]) -> Result<Vec<RelPath>, ApiError> {
    if items.len() > MAX_IMPORTS {
        return Err(ApiError::bad_request(format!(
            "give at most {MAX_IMPORTS} files"
        )));
    }
    for item in items {
        let invalid =
            |m: String| ApiError::from_import(crate::url_import::ImportError::InvalidUrl(m));
        let u = url::Url::parse(&item.url).map_err(|e| invalid(format!("{:?}: {e}", item.url)))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "only http and https URLs are supported, not {:?}",
                u.scheme()
            )));
        }
    }
    let mut taken = std::collections::HashSet::new();
    for item in items {
        if let Some(p) = &item.path {
            let rel = parse(p, false)?;
            if !taken.insert(rel.as_str().to_string()) {
                return Err(ApiError::invalid_path(format!("{p:?} is given twice")));
            }
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(p) = &item.path {
            out.push(parse(p, false)?);
            continue;
        }
        let name = url::Url::parse(&item.url)
            .ok()
            .and_then(|u| {
                u.path_segments()
                    .and_then(|mut s| s.next_back().map(str::to_string))
            })
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::invalid_path(format!(
                    "cannot name the file of {:?}; give a path",
                    item.url
                ))
            })?;
        let rel = parse(&name, false)?;
        let mut candidate = rel.as_str().to_string();
        let (stem, ext) = match candidate.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem.to_string(), format!(".{ext}")),
            _ => (candidate.clone(), String::new()),
        };
        let mut n = 1;
        while taken.contains(&candidate) {
            candidate = format!("{stem}-{n}{ext}");
            n += 1;
        }
        taken.insert(candidate.clone());
        out.push(parse(&candidate, false)?);
    }
    Ok(out)
}

/// Fetch `items` into the session's workspace, in order (see
/// [`post_file_path`] for the rules); the files written.
pub async fn import_urls(
    app: &AppState,
    session: &Arc<Session>,
    items: Vec<ImportItem>,
) -> Result<Vec<UploadedFile>, ApiError> {
    let targets = import_targets(&items)?;
    let cap = app.config.import_max_bytes.min(app.config.disk_bytes);
    let policy = ImportPolicy {
        allow: app.config.import_allow.clone(),
        timeout: app.config.import_timeout,
    };
    let mut files = Vec::new();
    for (item, rel) in items.into_iter().zip(targets) {
        // One time limit for the whole import: request, redirects and body.
        let deadline = tokio::time::Instant::now() + policy.timeout;
        let (_, resp) = policy
            .fetch(&item.url)
            .await
            .map_err(ApiError::from_import)?;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(ApiError::too_large(format!(
                "{:?} is larger than the import limit of {} MiB",
                item.url,
                cap / (1024 * 1024)
            )));
        }
        let stream = futures_util::stream::unfold(resp, move |mut resp| async move {
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Ok(Ok(Some(chunk))) => Some((Ok(chunk), resp)),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((Err(e.to_string()), resp)),
                Err(_) => Some((Err("the import time limit was reached".to_string()), resp)),
            }
        });
        let size = write_file(session, &rel, stream, cap).await?;
        files.push(UploadedFile {
            path: rel.as_str().to_string(),
            size,
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(url: &str, path: Option<&str>) -> ImportItem {
        ImportItem {
            url: url.into(),
            path: path.map(str::to_string),
        }
    }

    #[test]
    fn default_names_that_clash_are_renamed() {
        let got = import_targets(&[
            item("http://a/x/data.csv", None),
            item("http://b/data.csv?v=2", None),
            item("http://c/y", Some("data-1.csv")),
            item("http://d/data.csv", None),
            item("http://e/README", None),
            item("http://f/README", None),
            item("http://g/.env", None),
            item("http://h/.env", None),
        ])
        .unwrap();
        let got: Vec<&str> = got.iter().map(RelPath::as_str).collect();
        assert_eq!(
            got,
            [
                "data.csv",
                "data-2.csv",
                "data-1.csv",
                "data-3.csv",
                "README",
                "README-1",
                ".env",
                ".env-1"
            ]
        );
        assert!(import_targets(&[item("http://a/", None)]).is_err());
        assert!(
            import_targets(&[item("http://a/x", Some("p")), item("http://b/y", Some("p"))])
                .is_err()
        );
        assert!(import_targets(&[item("file:///etc/passwd", Some("p"))]).is_err());
        assert!(import_targets(&[item("http://a/x", Some("../p"))]).is_err());
    }
}
