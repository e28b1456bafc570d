//! Linux sandboxes for Pyxis.
//!
//! This crate turns a single-threaded process (a fork child of the Python zygote, pid 1 of a
//! new pid namespace) into an isolated, unprivileged one with [`enter`], and gives the supervisor what it needs around
//! that: per-sandbox cgroups ([`CgroupRoot`], [`Cgroup`]: memory without swap, pids, cpu,
//! kill, usage, OOM kills; v2, and v1 where a host only has v1), workspaces with a byte quota
//! ([`Workspace`]), and a host check for `pyxis doctor` ([`probe`]).
//!
//! What a sandbox gets (see `DESIGN.md`, "Sandbox: what each session gets"):
//!
//! - new mount, pid, net, ipc, uts and cgroup namespaces;
//! - a fresh tmpfs root entered with `pivot_root`, read-only, with read-only nosuid nodev
//!   binds of an allow-list, a generated `/etc`, `/workspace`, private `/tmp` and `/dev/shm`,
//!   a minimal `/dev`, a fresh `/proc` and no `/sys`;
//! - a distinct unprivileged uid, no capabilities, `no_new_privs`, rlimits, `PDEATHSIG`, no
//!   inherited fds, and a seccomp filter installed last;
//! - an init (pid 1) that reaps orphans and forwards `SIGINT` to the kernel (pid 2).
//!
//! The Python zygote calls the same code through a C ABI (`pyxis_sandbox_prepare`,
//! `pyxis_sandbox_enter`), built as `libpyxis_sandbox.so`.
//!
//! # Example
//!
//! ```no_run
//! use pyxis_sandbox::{CgroupRoot, ResourceLimits, Workspace};
//! use std::path::Path;
//!
//! let cgroups = CgroupRoot::detect("pyxis/ab12cd34")?;
//! cgroups.cleanup_leftovers()?;
//! let limits = ResourceLimits { memory_bytes: 1 << 30, pids: 256, cpu_millicores: 1000 };
//! let cgroup = cgroups.create("session-1", &limits)?;
//! let workspace = Workspace::create(Path::new("/var/lib/pyxis/ws/session-1"), 10_001, 10_001, 1 << 30, 100_000)?;
//! // ... hand cgroup.procs_files() and workspace.path() to the zygote in a SandboxSpec ...
//! cgroup.remove()?;
//! workspace.remove()?;
//! # Ok::<(), pyxis_sandbox::SandboxError>(())
//! ```

#![deny(missing_docs)]

mod cgroup;
mod credentials;
mod error;
mod ffi;
mod init;
mod probe;
mod process;
mod rootfs;
mod seccomp;
mod spec;
mod sys;
mod workspace;

pub use cgroup::{
    dynamic_modifications_favored, favor_dynamic_modifications, Cgroup, CgroupError, CgroupRoot,
    CgroupUsage, CgroupVersion, DynMods, ResourceLimits,
};
pub use credentials::CredentialsError;
pub use error::SandboxError;
pub use ffi::{pyxis_sandbox_enter, pyxis_sandbox_prepare};
pub use probe::{probe, HostReport, ProbeItem};
pub use process::{enter, EnterError};
pub use rootfs::RootfsError;
pub use seccomp::SeccompError;
pub use spec::{Rlimits, SandboxSpec, SpecError};
pub use workspace::{Workspace, WorkspaceError};

/// Compiles and caches the seccomp policy. Call it once in the zygote before forking, so that
/// each [`enter`] only installs the precompiled filters.
pub fn prepare() -> Result<(), SandboxError> {
    seccomp::filters()?;
    Ok(())
}
