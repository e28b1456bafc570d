//! Linux sandboxes for Pyxis.
//!
//! This crate makes isolated, unprivileged processes from a single-threaded one (the Python
//! zygote) with [`spawn`]: a small init, pid 1 of the sandbox's namespaces, and a fork of
//! the caller, which runs in them. It gives the supervisor what it needs around that: per-sandbox cgroups ([`CgroupRoot`], [`Cgroup`]: memory without swap, pids, cpu,
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
//! - an init (pid 1, the small `pyxis-sandbox-init` program) that reaps orphans and ends the
//!   namespace when the kernel (pid 2, a fork of the caller) exits, or, with
//!   [`SandboxSpec::outlive_kernel`], lives on until the sandbox is killed;
//! - a join path, the `pyxis-sandbox-exec` program ([`ExecSpec`]), which starts one more
//!   process inside a live sandbox (its namespaces, cgroups, uid, the same privilege drop and
//!   seccomp filter as the kernel): commands, and kernels of other languages.
//!
//! The Python zygote calls the same code through a C ABI (`pyxis_sandbox_prepare`,
//! `pyxis_sandbox_spawn`), built as `libpyxis_sandbox.so`. The init is the
//! `pyxis-sandbox-init` program, which the build puts beside the library.
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

mod arena;
mod cgroup;
mod credentials;
mod error;
mod exec;
mod ffi;
mod init;
mod message;
mod netns;
mod probe;
mod process;
mod rootfs;
mod seccomp;
mod spec;
mod sys;
mod workspace;

pub use arena::{pyxis_sandbox_arena_alloc, pyxis_sandbox_arena_free, pyxis_sandbox_arena_reserve};
pub use cgroup::{
    dynamic_modifications_favored, favor_dynamic_modifications, Cgroup, CgroupError, CgroupRoot,
    CgroupUsage, CgroupVersion, DynMods, ResourceLimits,
};
pub use credentials::CredentialsError;
pub use error::SandboxError;
pub use exec::{
    ExecSpec, ExecStatus, EXEC_FIRST_EXTRA_FD, EXEC_INIT_FD, EXEC_SPEC_FD, EXEC_STATUS_FD,
    MAX_TARGET_FD,
};
pub use ffi::{pyxis_sandbox_prepare, pyxis_sandbox_spawn};
pub use message::SetupMessage;
pub use netns::NetSysctlError;
pub use probe::{probe, HostReport, ProbeItem};
pub use process::{spawn, EnterError, Handover, Spawned};
pub use rootfs::RootfsError;
pub use seccomp::SeccompError;
pub use spec::{
    EgressListener, Rlimits, SandboxSpec, SpecError, FIRST_CGROUP_FD, KERNEL_FD, REPORT_FD,
    WORKSPACE_FD,
};
pub use workspace::{Workspace, WorkspaceError};

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

/// The init program, opened by [`prepare`].
static INIT_PROGRAM: OnceLock<OwnedFd> = OnceLock::new();
/// The mount namespace every sandbox's init copies, made by [`prepare`].
static MOUNT_NAMESPACE: OnceLock<OwnedFd> = OnceLock::new();

/// Call once in the zygote before [`spawn`]: opens `init_program` (the `pyxis-sandbox-init`
/// executable, which [`spawn`] starts as each sandbox's init) and compiles the seccomp policy,
/// so that each [`spawn`] only installs the precompiled filters. Later calls keep the first
/// program.
///
/// It also makes, once, the mount namespace each sandbox's init copies for its own: a copy
/// of the caller's as it is now, with every mount private. Mounts the host makes later (one
/// workspace per live session) do not propagate into it, so a sandbox's namespace is as
/// small, and as quick to copy and tear down, with a thousand live sessions as with none.
/// Host mounts made after this call are not seen by sandboxes; the allow-listed paths (the
/// system's and the runtime's directories) are expected to be there already.
pub fn prepare(init_program: &Path) -> Result<(), SandboxError> {
    seccomp::filters()?;
    if MOUNT_NAMESPACE.get().is_none() {
        let namespace = sys::private_mount_namespace().map_err(EnterError::MountNamespace)?;
        let _ = MOUNT_NAMESPACE.set(namespace);
    }
    if INIT_PROGRAM.get().is_none() {
        let opened = nix::unistd::access(init_program, nix::unistd::AccessFlags::X_OK)
            .map_err(io::Error::from)
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH)
                    .open(init_program)
            })
            .map_err(|source| EnterError::InitProgram {
                path: init_program.to_path_buf(),
                source,
            })?;
        let _ = INIT_PROGRAM.set(opened.into());
    }
    Ok(())
}

/// The init program's descriptor, once [`prepare`] opened it.
fn init_program() -> Option<RawFd> {
    INIT_PROGRAM.get().map(AsRawFd::as_raw_fd)
}

/// The mount namespace [`prepare`] made, if it ran.
fn mount_namespace() -> Option<RawFd> {
    MOUNT_NAMESPACE.get().map(AsRawFd::as_raw_fd)
}

/// `main` of the `pyxis-sandbox-exec` program: starts one process inside an existing
/// sandbox (see [`ExecSpec`]). It only works as the server starts it.
pub fn exec_main() -> ! {
    exec::main()
}

/// `main` of the `pyxis-sandbox-init` program: the sandbox's init (see [`spawn`]). It only
/// works as started by [`spawn`]; run by hand, it fails at once.
pub fn init_main() -> ! {
    init::main()
}
