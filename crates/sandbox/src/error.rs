//! The crate-level error, gathering each module's error.

use crate::cgroup::CgroupError;
use crate::process::EnterError;
use crate::seccomp::SeccompError;
use crate::spec::SpecError;
use crate::workspace::WorkspaceError;

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A step of making a sandbox failed.
    #[error(transparent)]
    Enter(#[from] EnterError),
    /// The seccomp policy could not be compiled or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A workspace operation failed.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
}
