//! `POST /v1/sessions/{id}/files/export`: send workspace files to URLs, by
//! `PUT` (raw body) or by `POST` (a multipart form, as S3 presigned POSTs
//! want).
//!
//! Everything that can be refused is refused before a byte is sent: every
//! URL is checked like an import's (http/https, every address public or
//! allow-listed; the connection goes to the address checked), every path is
//! opened beneath the workspace without following symlinks, every header is
//! validated. Then the files are streamed from the descriptors opened, a few
//! at a time, each within `PYXIS_EXPORT_TIMEOUT_S`. Redirects are not
//! followed (the body cannot be sent twice): a 3xx is reported like any other
//! non-2xx answer.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio_util::io::ReaderStream;

use crate::app::AppState;
use crate::error::ApiError;
use crate::handlers::files::{blocking, parse};
use crate::model::{
    ErrorBody, ErrorDetail, ExportItem, ExportMethod, ExportRequest, ExportResult, ExportResults,
};
use crate::sessions::Session;
use crate::url_import::{without_url, ImportPolicy};

/// Most files in one export request.
const MAX_EXPORTS: usize = 64;
/// Files of one request sent at the same time.
const PER_REQUEST: usize = 4;
/// Files sent at the same time by the whole server.
const SERVER_WIDE: usize = 32;
/// Read size of the files sent.
const CHUNK: usize = 256 * 1024;
/// Most bytes of an upstream error answer quoted in the result.
const UPSTREAM_SNIPPET: usize = 1024;

/// Headers a client may not set: the server frames the request and picks
/// the connection.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-authorization",
    "proxy-connection",
];

fn server_wide() -> &'static Semaphore {
    static SEM: OnceLock<Semaphore> = OnceLock::new();
    SEM.get_or_init(|| Semaphore::new(SERVER_WIDE))
}

/// One file ready to go: open, checked, with its client.
struct Job {
    path: String,
    url: reqwest::Url,
    raw_url: String,
    method: ExportMethod,
    fields: Vec<(String, String)>,
    headers: HeaderMap,
    client: reqwest::Client,
    file: std::fs::File,
    size: u64,
}

fn headers_of(item: &ExportItem) -> Result<HeaderMap, ApiError> {
    let mut out = HeaderMap::new();
    for (k, v) in &item.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ApiError::bad_request(format!("{k:?} is not a header name")))?;
        if FORBIDDEN_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("proxy-") {
            return Err(ApiError::bad_request(format!(
                "the header {k:?} is set by the server"
            )));
        }
        if name == header::CONTENT_TYPE && item.method == ExportMethod::Post {
            return Err(ApiError::bad_request(
                "a POST export is multipart/form-data; give the file's type as a field",
            ));
        }
        let value = HeaderValue::from_str(v)
            .map_err(|_| ApiError::bad_request(format!("the value of header {k:?} is invalid")))?;
        out.append(name, value);
    }
    Ok(out)
}

/// Send workspace files to URLs: `PUT` sends the file as the raw body (with
/// its `Content-Length`), `POST` sends a `multipart/form-data` form with the
/// `fields` first and the file last as the field `file` (S3 presigned POST).
/// URLs follow the import rules (403 `forbidden_url` for non-public
/// addresses unless in `PYXIS_IMPORT_ALLOW`); paths never go through
/// symlinks (403 `forbidden_path`). Nothing is sent unless every file and URL
/// passes. Then the answer is 200 with one result per file: `status` is the
/// upstream HTTP status, and `error` is set when there was no answer or it
/// was not a 2xx (redirects are not followed).
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
pub async fn export_files(
    app: &AppState,
    session: &Arc<Session>,
    body: &Bytes,
) -> Result<ExportResults, ApiError> {
    let req: ExportRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid export request: {e}")))?;
    if req.files.is_empty() || req.files.len() > MAX_EXPORTS {
        return Err(ApiError::bad_request(format!(
            "give between 1 and {MAX_EXPORTS} files"
        )));
    }
    session.touch();
    let policy = ImportPolicy {
        allow: app.config.import_allow.clone(),
        timeout: app.config.export_timeout,
    };
    let mut jobs = Vec::with_capacity(req.files.len());
    for item in req.files {
        let rel = parse(&item.path, false)?;
        if item.method == ExportMethod::Put && !item.fields.is_empty() {
            return Err(ApiError::bad_request("`fields` go with method POST only"));
        }
        if item.fields.contains_key("file") {
            return Err(ApiError::bad_request("the field `file` is the file itself"));
        }
        let headers = headers_of(&item)?;
        let url = reqwest::Url::parse(&item.url).map_err(|e| {
            ApiError::from_export(crate::url_import::ImportError::InvalidUrl(format!(
                "{:?}: {e}",
                item.url
            )))
        })?;
        let client = policy
            .pinned_client(&url)
            .await
            .map_err(ApiError::from_export)?;
        let (s, r) = (session.clone(), rel.clone());
        let (file, size) = blocking(move || s.workspace()?.open_read(&r))
            .await
            .map_err(|e| ApiError::from_fs(e, rel.as_str(), 0))?;
        jobs.push(Job {
            path: rel.as_str().to_string(),
            url,
            raw_url: item.url,
            method: item.method,
            fields: item.fields.into_iter().collect(),
            headers,
            client,
            file,
            size,
        });
    }
    let timeout = app.config.export_timeout;
    let results = futures_util::stream::iter(jobs)
        .map(|job| send(job, timeout))
        .buffered(PER_REQUEST)
        .collect::<Vec<_>>()
        .await;
    session.touch();
    Ok(ExportResults { results })
}

async fn send(job: Job, timeout: std::time::Duration) -> ExportResult {
    let _permit = server_wide().acquire().await;
    let mut result = ExportResult {
        path: job.path.clone(),
        url: job.raw_url.clone(),
        status: None,
        size: job.size,
        error: None,
    };
    let failed = |message: String| {
        Some(ErrorDetail {
            code: "export_failed".into(),
            message,
        })
    };
    match tokio::time::timeout(timeout, send_inner(job)).await {
        Err(_) => {
            result.error = failed(format!(
                "the export took longer than {} s",
                timeout.as_secs_f64()
            ))
        }
        Ok(Err(message)) => result.error = failed(message),
        Ok(Ok((status, snippet))) => {
            result.status = Some(status.as_u16());
            if !status.is_success() {
                let mut message = format!("the server answered {status}");
                if status.is_redirection() {
                    message.push_str(" (redirects are not followed)");
                }
                if !snippet.trim().is_empty() {
                    message.push_str(": ");
                    message.push_str(snippet.trim());
                }
                result.error = failed(message);
            }
        }
    }
    result
}

/// Send one file; the status and the start of the answer's body (for errors).
async fn send_inner(job: Job) -> Result<(reqwest::StatusCode, String), String> {
    // Never send more than the size announced, even if the file grows.
    let reader = tokio::fs::File::from_std(job.file).take(job.size);
    let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(reader, CHUNK));
    let request = match job.method {
        ExportMethod::Put => job
            .client
            .put(job.url)
            .headers(job.headers)
            .header(header::CONTENT_LENGTH, job.size)
            .body(body),
        ExportMethod::Post => {
            let name = job.path.rsplit('/').next().unwrap_or(&job.path).to_string();
            let mime = mime_guess::from_path(&name).first_or_octet_stream();
            let part = Part::stream_with_length(body, job.size)
                .file_name(name)
                .mime_str(mime.as_ref())
                .map_err(|e| format!("form: {}", without_url(&e)))?;
            let mut form = Form::new();
            for (k, v) in job.fields {
                form = form.text(k, v);
            }
            form = form.part("file", part);
            job.client
                .post(job.url)
                .headers(job.headers)
                .multipart(form)
        }
    };
    let mut resp = request
        .send()
        .await
        .map_err(|e| format!("sending the file: {}", error_chain(&e)))?;
    let status = resp.status();
    let mut snippet = Vec::new();
    if !status.is_success() {
        while snippet.len() < UPSTREAM_SNIPPET {
            match resp.chunk().await {
                Ok(Some(c)) => snippet.extend_from_slice(&c),
                _ => break,
            }
        }
        snippet.truncate(UPSTREAM_SNIPPET);
    }
    Ok((status, String::from_utf8_lossy(&snippet).into_owned()))
}

/// A reqwest error and its causes, without the URL (a presigned URL's
/// signature stays out of logs and messages).
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = without_url(e);
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
