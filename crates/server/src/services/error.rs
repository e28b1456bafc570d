//! The services' one error type: what went wrong, in terms of sessions, cells and files,
//! never of HTTP. Each door turns it into its own protocol's error (the v1 door's `ApiError`
//! keeps the status codes and the JSON envelope).

use crate::services::url_import::ImportError;
use crate::services::workspace_fs::WorkspaceFsError;

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// No live session has this id (or the session was deleted meanwhile).
    #[error("no session with id {0:?}")]
    SessionNotFound(String),
    /// The session's queue of waiting cells is full.
    #[error("the session is running a cell and its queue is full; retry later")]
    Busy,
    /// No sandbox can be had now (every slot in use, or shutting down).
    #[error("{0}")]
    Exhausted(String),
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A workspace path is not acceptable.
    #[error("{0}")]
    InvalidPath(String),
    /// A workspace path goes through a symlink or leaves the workspace.
    #[error("{0:?} goes through a symbolic link or leaves the workspace; symbolic links are never followed")]
    ForbiddenPath(String),
    /// No such workspace file.
    #[error("no file or directory {0:?} in the workspace")]
    FileNotFound(String),
    /// The entry at a path is of the wrong kind or in the way.
    #[error("{message}")]
    Conflict {
        /// Machine-readable code, e.g. `not_a_file`.
        code: &'static str,
        /// What is in the way.
        message: String,
    },
    /// The workspace quota is exhausted.
    #[error("the session's workspace quota of {} MiB is exhausted; delete files and retry", .0 / (1024 * 1024))]
    QuotaExceeded(u64),
    /// Something is larger than its limit.
    #[error("{0}")]
    TooLarge(String),
    /// A URL could not be imported (or exported to).
    #[error(transparent)]
    Import(ImportError),
    /// An export's URL failed before anything was sent.
    #[error("{0}")]
    ExportFailed(String),
    /// No such thing in a live session (a context, a command).
    #[error("{message}")]
    NotFound {
        /// Machine-readable code, e.g. `context_not_found`.
        code: &'static str,
        /// What is missing.
        message: String,
    },
    /// A per-session bound is reached (contexts, running commands).
    #[error("{0}")]
    TooMany(String),
    /// A policy refuses it (the session's network policy, for an install).
    #[error("{message}")]
    Refused {
        /// Machine-readable code, e.g. `egress_refused`.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// The work was done and failed (a package install).
    #[error("{message}")]
    Failed {
        /// Machine-readable code, e.g. `install_failed`.
        code: &'static str,
        /// What went wrong, as the tool said it.
        message: String,
    },
    /// A limit of the caller's key (live sessions, cells per minute, memory).
    #[error("{}", .0.message)]
    Limited(crate::tenants::LimitError),
    /// Anything unexpected: logged in full, never shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result of a service call.
pub type Result<T> = std::result::Result<T, ServiceError>;

impl ServiceError {
    /// An unexpected failure; the cause is logged here, where it happened.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::Internal(cause.to_string())
    }

    /// A failed workspace operation on `path`.
    pub fn from_fs(err: WorkspaceFsError, path: &str, quota_bytes: u64) -> Self {
        match err {
            WorkspaceFsError::InvalidPath(why) => {
                Self::InvalidPath(format!("invalid path {path:?}: {why}"))
            }
            WorkspaceFsError::NotFound | WorkspaceFsError::NotADirectory => {
                Self::FileNotFound(path.to_string())
            }
            WorkspaceFsError::Forbidden => Self::ForbiddenPath(path.to_string()),
            WorkspaceFsError::NotAFile => Self::Conflict {
                code: "not_a_file",
                message: format!("{path:?} is not a regular file"),
            },
            WorkspaceFsError::IsADirectory => Self::Conflict {
                code: "is_a_directory",
                message: format!("{path:?} is a directory"),
            },
            WorkspaceFsError::NotEmpty => Self::Conflict {
                code: "directory_not_empty",
                message: format!("{path:?} is a directory that is not empty"),
            },
            WorkspaceFsError::Quota => Self::QuotaExceeded(quota_bytes),
            e @ WorkspaceFsError::Io { .. } => Self::internal(e),
        }
    }

    /// A URL that cannot be exported to (checked before anything is sent).
    pub fn from_export(err: ImportError) -> Self {
        match err {
            ImportError::Failed(m) => Self::ExportFailed(m),
            e => Self::Import(e),
        }
    }
}

impl From<ImportError> for ServiceError {
    fn from(e: ImportError) -> Self {
        Self::Import(e)
    }
}

impl From<crate::tenants::LimitError> for ServiceError {
    fn from(e: crate::tenants::LimitError) -> Self {
        Self::Limited(e)
    }
}
