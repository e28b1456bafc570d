//! `/v1/sessions/{id}/files`: download, upload, delete, list, import and export the files
//! of a session's workspace, over the file service (see `services::files` for the rules:
//! symlinks are never followed, bodies are streamed, uploads are limited by the quota).

use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::app::AppState;
use crate::doors::v1::model::{
    DirQuery, ErrorBody, ExportRequest, ExportResults, FileEntry, FileKind, FileList,
    ImportRequest, UploadedFile, UploadedFiles,
};
use crate::error::ApiError;
use crate::services::files::MAX_IMPORTS;
use crate::services::sessions::rfc3339;
use crate::services::workspace_fs::EntryKind;

/// Read size of downloads.
const DOWNLOAD_CHUNK: usize = 256 * 1024;

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
    let (file, size, rel) = app.files.open_read(&session, &path).await?;
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
    let rel = app.files.parse(&path, false)?;
    let quota = app.files.quota();
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > quota) {
        return Err(ApiError::quota_exceeded(quota));
    }
    session.touch();
    let size = app
        .files
        .write_stream(&session, &rel, body.into_data_stream(), quota)
        .await?;
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
    let dir = app.files.parse(q.path.as_deref().unwrap_or(""), true)?;
    let mut multipart = multipart.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let quota = app.files.quota();
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
            .join(&app.files.parse(&name, false)?)
            .map_err(|e| crate::services::ServiceError::from_fs(e, &name, quota))?;
        let size = app.files.write_stream(&session, &rel, field, quota).await?;
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
    app.files.remove(&session, &path).await?;
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
    let listing = app
        .files
        .list(&session, &q.path.unwrap_or_default())
        .await?;
    let entries = listing
        .entries
        .into_iter()
        .map(|e| FileEntry {
            path: e.path,
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
        path: listing.path,
        entries,
        truncated: listing.truncated,
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
            let results = export_files(&app, &id, body).await?;
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
    let items = req.files.into_iter().map(Into::into).collect();
    let files = app.files.import(&session, items).await?;
    let files = files.into_iter().map(Into::into).collect();
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
    Export(ExportResults),
}

/// Send workspace files to URLs: `PUT` sends the file as the raw body (with its
/// `Content-Length`), `POST` sends a `multipart/form-data` form with the `fields` first and
/// the file last as the field `file` (S3 presigned POST). URLs follow the import rules (403
/// `forbidden_url` for non-public addresses unless in `PYXIS_IMPORT_ALLOW`); paths never go
/// through symlinks (403 `forbidden_path`). Nothing is sent unless every file and URL
/// passes. Then the answer is 200 with one result per file: `status` is the upstream HTTP
/// status, and `error` is set when there was no answer or it was not a 2xx (redirects are
/// not followed).
#[utoipa::path(post, path = "/v1/sessions/{id}/files/export",
    params(("id" = String, Path)),
    request_body = ExportRequest,
    responses(
        (status = 200, body = ExportResults, description = "one result per file; check each `error`"),
        (status = 403, body = ErrorBody, description = "a URL resolves to a non-public address, or a path goes through a symlink"),
        (status = 404, body = ErrorBody, description = "no such file"),
        (status = 409, body = ErrorBody, description = "not a regular file"),
        (status = 422, body = ErrorBody, description = "invalid URL, path, header or field"),
        (status = 502, body = ErrorBody, description = "a URL's host cannot be resolved"),
    ), security(("token" = [])), tag = "files")]
pub async fn export_files(app: &AppState, id: &str, body: Body) -> Result<ExportResults, ApiError> {
    let session = app.sessions.get(id)?;
    let bytes = read_body(app, body).await?;
    let req: ExportRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid export request: {e}")))?;
    let items = req.files.into_iter().map(Into::into).collect();
    let results = app.files.export(&session, items).await?;
    Ok(ExportResults {
        results: results.into_iter().map(Into::into).collect(),
    })
}

async fn read_body(app: &AppState, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, app.config.max_body_bytes)
        .await
        .map_err(|_| ApiError::too_large("request body too large"))
}
