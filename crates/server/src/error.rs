//! The HTTP layer's one error type. Every error answers with the same JSON
//! envelope; unexpected ones are logged in full and answered with a bare 500,
//! so host paths and errno values never reach clients.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::doors::v1::model::{ErrorBody, ErrorDetail};
use crate::services::url_import::ImportError;
use crate::services::ServiceError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// 400 or 422 for input that is not acceptable.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong token: send Authorization: Bearer <token> or X-Auth-Token",
        )
    }

    /// 404 for an unknown session.
    pub fn session_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("no session with id {id:?}"),
        )
    }

    /// 404 for an unknown route.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 405 for a route that exists, asked with a method it does not take (the
    /// `Allow` header lists the ones it does).
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method; see the Allow header",
        )
    }

    /// 409 when too many requests already wait for a session.
    pub fn busy() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "session_busy",
            "the session is running a cell and its queue is full; retry later",
        )
    }

    /// 503 with `Retry-After` when no sandbox can be had.
    pub fn exhausted(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "capacity_exhausted",
                message,
            )
        }
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 422 for a workspace path that is not acceptable.
    pub fn invalid_path(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_path", message)
    }

    /// 403 for a path through a symlink or out of the workspace.
    pub fn forbidden_path(path: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden_path",
            format!("{path:?} goes through a symbolic link or leaves the workspace; symbolic links are never followed"),
        )
    }

    /// 404 for a missing workspace file.
    pub fn file_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no file or directory {path:?} in the workspace"),
        )
    }

    /// 409 when the entry at a path is of the wrong kind or in the way.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 507 when the workspace quota is exhausted.
    pub fn quota_exceeded(quota_bytes: u64) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
            format!(
                "the session's workspace quota of {} MiB is exhausted; delete files and retry",
                quota_bytes / (1024 * 1024)
            ),
        )
    }

    /// Any other answer.
    pub fn with_status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, code, message)
    }

    /// Answer for a URL that could not be imported.
    pub fn from_import(err: ImportError) -> Self {
        match err {
            ImportError::InvalidUrl(m) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_url", m)
            }
            e @ ImportError::Forbidden { .. } => Self::new(
                StatusCode::FORBIDDEN,
                "forbidden_url",
                format!("{e}; such addresses can be allowed with PYXIS_IMPORT_ALLOW"),
            ),
            ImportError::Failed(m) => Self::new(StatusCode::BAD_GATEWAY, "import_failed", m),
        }
    }

    /// 500: logs the cause, tells the client nothing about it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::SessionNotFound(id) => Self::session_not_found(&id),
            ServiceError::Busy => Self::busy(),
            ServiceError::Exhausted(m) => Self::exhausted(m),
            ServiceError::Invalid(m) => Self::bad_request(m),
            ServiceError::InvalidPath(m) => Self::invalid_path(m),
            ServiceError::ForbiddenPath(p) => Self::forbidden_path(&p),
            ServiceError::FileNotFound(p) => Self::file_not_found(&p),
            ServiceError::Conflict { code, message } => Self::conflict(code, message),
            ServiceError::QuotaExceeded(q) => Self::quota_exceeded(q),
            ServiceError::TooLarge(m) => Self::too_large(m),
            ServiceError::Import(e) => Self::from_import(e),
            ServiceError::ExportFailed(m) => Self::new(StatusCode::BAD_GATEWAY, "export_failed", m),
            ServiceError::NotFound { code, message } => {
                Self::new(StatusCode::NOT_FOUND, code, message)
            }
            ServiceError::TooMany(m) => Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many", m),
            ServiceError::Refused { code, message } => {
                Self::new(StatusCode::FORBIDDEN, code, message)
            }
            ServiceError::Failed { code, message } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            ServiceError::Limited(l) => Self {
                retry_after: l.retry_after,
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "limit_reached", l.message)
            },
            // Logged where it happened.
            ServiceError::Internal(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Turn axum's body rejections into the envelope (422 for bad JSON, 413 for
/// too large, 415 for a wrong content type).
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rej: axum::extract::rejection::JsonRejection) -> Self {
        let status = rej.status();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::too_large("request body too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                status,
                "unsupported_media_type",
                "send a JSON body with Content-Type: application/json",
            ),
            _ => Self::bad_request(rej.body_text()),
        }
    }
}
