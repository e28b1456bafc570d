//! Exporting workspace files to URLs, by `PUT` (raw body) or by `POST` (a multipart
//! form, as S3 presigned POSTs want).
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

use std::collections::BTreeMap;

use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::multipart::{Form, Part};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio_util::io::ReaderStream;

use crate::metrics;
use crate::services::error::{Result, ServiceError};
use crate::services::files::{blocking, Files};
use crate::services::sessions::Session;
use crate::services::url_import::{without_url, ImportError, ImportPolicy};

/// How an export sends a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportMethod {
    /// The file is the raw request body (e.g. an S3 presigned PUT URL).
    Put,
    /// A `multipart/form-data` form: the `fields` first, then the file as the field `file`.
    Post,
}

/// One workspace file to send to a URL.
#[derive(Debug, Clone)]
pub struct ExportItem {
    /// The workspace file.
    pub path: String,
    /// An `http` or `https` URL.
    pub url: String,
    /// `PUT` or `POST`.
    pub method: ExportMethod,
    /// Form fields sent before the file (`POST` only).
    pub fields: BTreeMap<String, String>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
}

/// What became of one file of an export.
#[derive(Debug, Clone)]
pub struct ExportOutcome {
    /// The workspace file.
    pub path: String,
    /// The URL it was sent to.
    pub url: String,
    /// The upstream HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Bytes of the file sent.
    pub size: u64,
    /// Why the export of this file failed; `None` on success.
    pub error: Option<String>,
}

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

fn headers_of(item: &ExportItem) -> Result<HeaderMap> {
    let mut out = HeaderMap::new();
    for (k, v) in &item.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ServiceError::Invalid(format!("{k:?} is not a header name")))?;
        if FORBIDDEN_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("proxy-") {
            return Err(ServiceError::Invalid(format!(
                "the header {k:?} is set by the server"
            )));
        }
        if name == header::CONTENT_TYPE && item.method == ExportMethod::Post {
            return Err(ServiceError::Invalid(
                "a POST export is multipart/form-data; give the file's type as a field".into(),
            ));
        }
        let value = HeaderValue::from_str(v)
            .map_err(|_| ServiceError::Invalid(format!("the value of header {k:?} is invalid")))?;
        out.append(name, value);
    }
    Ok(out)
}

impl Files {
    /// Send workspace files to URLs: `PUT` sends the file as the raw body (with its
    /// `Content-Length`), `POST` sends a `multipart/form-data` form with the `fields` first
    /// and the file last as the field `file` (S3 presigned POST). URLs follow the import
    /// rules; paths never go through symlinks. Nothing is sent unless every file and URL
    /// passes; then one outcome per file, in order (redirects are not followed).
    pub async fn export(
        &self,
        session: &Arc<Session>,
        items: Vec<ExportItem>,
    ) -> Result<Vec<ExportOutcome>> {
        let timeout = self.config().export_timeout;
        let allow = self.config().import_allow.clone();
        if items.is_empty() || items.len() > MAX_EXPORTS {
            return Err(ServiceError::Invalid(format!(
                "give between 1 and {MAX_EXPORTS} files"
            )));
        }
        session.touch();
        let policy = ImportPolicy { allow, timeout };
        let mut jobs = Vec::with_capacity(items.len());
        for item in items {
            let rel = self.parse(&item.path, false)?;
            if item.method == ExportMethod::Put && !item.fields.is_empty() {
                return Err(ServiceError::Invalid(
                    "`fields` go with method POST only".into(),
                ));
            }
            if item.fields.contains_key("file") {
                return Err(ServiceError::Invalid(
                    "the field `file` is the file itself".into(),
                ));
            }
            let headers = headers_of(&item)?;
            let url = reqwest::Url::parse(&item.url).map_err(|e| {
                ServiceError::from_export(ImportError::InvalidUrl(format!("{:?}: {e}", item.url)))
            })?;
            let client = policy
                .pinned_client(&url)
                .await
                .map_err(ServiceError::from_export)?;
            let (s, r) = (session.clone(), rel.clone());
            let (file, size) = blocking(move || s.workspace()?.open_read(&r))
                .await
                .map_err(|e| ServiceError::from_fs(e, rel.as_str(), 0))?;
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
        let results = futures_util::stream::iter(jobs)
            .map(|job| send(job, timeout))
            .buffered(PER_REQUEST)
            .collect::<Vec<_>>()
            .await;
        for r in &results {
            metrics::export_done(r.error.is_none(), r.size);
        }
        session.touch();
        Ok(results)
    }
}

async fn send(job: Job, timeout: std::time::Duration) -> ExportOutcome {
    let _permit = server_wide().acquire().await;
    let mut result = ExportOutcome {
        path: job.path.clone(),
        url: job.raw_url.clone(),
        status: None,
        size: job.size,
        error: None,
    };
    let failed = Some;
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
async fn send_inner(job: Job) -> std::result::Result<(reqwest::StatusCode, String), String> {
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
