//! `enter`: turns pid 1 of a new pid namespace into a sandbox.
//!
//! The caller (the zygote) forks the process after `unshare(CLONE_NEWPID)`, so the child is
//! **B**, pid 1 of its own pid namespace, without an extra process in between. In B, `enter`
//! joins the cgroups, makes the other namespaces, builds the root filesystem, drops every
//! privilege, installs seccomp and forks **C** (pid 2), then runs a tiny init (see
//! [`crate::init`]). C is the only process in which `enter` returns `Ok(())`; it runs the
//! kernel. Each fork copies the page tables of the zygote's whole heap, so there is no third
//! process: that fork cost 3 to 8 ms of every new sandbox.

use std::io;

use nix::sched::CloneFlags;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};

use crate::credentials::{self, CredentialsError};
use crate::error::SandboxError;
use crate::init;
use crate::rootfs::{self, RootfsError};
use crate::seccomp::{self, SeccompError};
use crate::spec::SandboxSpec;
use crate::sys::{self, Forked};

type Result<T> = std::result::Result<T, EnterError>;

/// A failure of one step of `enter`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnterError {
    /// `close_range` failed.
    #[error("close inherited fds: {0}")]
    CloseFds(#[source] io::Error),
    /// Writing our pid into a `cgroup.procs` file failed.
    #[error("join cgroup (fd {fd}): {source}")]
    JoinCgroup {
        /// The open `cgroup.procs` file.
        fd: i32,
        /// The error.
        source: io::Error,
    },
    /// Copying the workspace's mount tree (`open_tree`) failed.
    #[error("detach workspace mount: {0}")]
    DetachWorkspace(#[source] io::Error),
    /// `PR_SET_PDEATHSIG` failed.
    #[error("set parent death signal: {0}")]
    SetParentDeathSignal(#[source] io::Error),
    /// The caller is not pid 1 of a new pid namespace.
    #[error("enter must run as pid 1 of a new pid namespace (fork after unshare(CLONE_NEWPID))")]
    NotPidOne,
    /// `unshare` failed.
    #[error("unshare namespaces: {0}")]
    Unshare(#[source] io::Error),
    /// `fork` failed.
    #[error("fork: {0}")]
    Fork(#[source] io::Error),
    /// Writing to the report fd failed.
    #[error("report: {0}")]
    Report(#[source] io::Error),
    /// `sethostname` failed.
    #[error("sethostname: {0}")]
    SetHostname(#[source] io::Error),
    /// Bringing `lo` up failed.
    #[error("bring lo up: {0}")]
    LoopbackUp(#[source] io::Error),
    /// Changing the signal mask or dispositions failed.
    #[error("signal setup: {0}")]
    Signals(#[source] io::Error),
    /// Wiping the inherited environment block failed.
    #[error("scrub inherited environment: {0}")]
    ScrubEnviron(#[source] io::Error),
    /// Building the root filesystem failed.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// Dropping privileges failed.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// Installing seccomp failed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Namespaces `enter` makes; the pid namespace is the caller's doing. No user namespace: the
/// ids are real host ids, never 0. The cgroup namespace comes after the cgroups are joined,
/// so its root is the sandbox's cgroup.
fn namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP
}

/// Turns the calling process into a sandboxed one, as described by `spec`.
///
/// The caller must be pid 1 of a new pid namespace (forked right after
/// `unshare(CLONE_NEWPID)`; this is checked), single-threaded (checked), in the host's mount
/// namespace, with fds 0, 1, 2 and every fd the spec names open; every other fd is closed.
/// It should have armed nothing else: `enter` sets `PDEATHSIG` itself, so the sandbox dies
/// with its parent.
///
/// Returns `Ok(())` only in the sandboxed kernel process (C). Returns `Err` in the caller when
/// a step before the fork of C fails, after which the caller should exit. Otherwise the
/// calling process never returns: it becomes the sandbox's init and exits with the kernel's
/// status. Failures in C before it runs are written to `report_fd` as `err <message>`; C
/// writes `ok` when it is ready.
///
/// # Example
///
/// ```no_run
/// # fn spec() -> pyxis_sandbox::SandboxSpec { unimplemented!() }
/// pyxis_sandbox::prepare()?; // in the zygote, before forking
/// // ... in the child of a fork made after unshare(CLONE_NEWPID):
/// pyxis_sandbox::enter(&spec())?;
/// // Only the sandboxed kernel gets here.
/// # Ok::<(), pyxis_sandbox::SandboxError>(())
/// ```
pub fn enter(spec: &SandboxSpec) -> std::result::Result<(), SandboxError> {
    spec.validate()?;
    let filters = seccomp::filters()?;
    enter_validated(spec, filters).map_err(SandboxError::from)
}

fn enter_validated(spec: &SandboxSpec, filters: &[seccompiler::BpfProgram]) -> Result<()> {
    if nix::unistd::getpid().as_raw() != 1 {
        return Err(EnterError::NotPidOne);
    }
    // The zygote has no other fds to give, but B must hold nothing it did not ask for.
    let mut keep = vec![0, 1, 2];
    keep.extend(spec.fds());
    sys::close_fds_except(&keep).map_err(EnterError::CloseFds)?;
    credentials::set_parent_death_kill().map_err(EnterError::SetParentDeathSignal)?;

    // "0" is the writing process itself, whatever pid namespace it is in.
    for &fd in &spec.cgroup_fds {
        sys::write_all_raw(fd, b"0").map_err(|source| EnterError::JoinCgroup { fd, source })?;
        // C must not inherit a way into the host's cgroup tree.
        sys::close_raw(fd).map_err(EnterError::CloseFds)?;
    }

    // Taken in the host's mount namespace; attached in the new one below, where neither a
    // path nor a bind from this fd would work.
    sys::detach_tree_in_place(spec.workspace_fd).map_err(EnterError::DetachWorkspace)?;
    nix::sched::unshare(namespaces()).map_err(|e| EnterError::Unshare(e.into()))?;

    setup_init(spec, filters)
}

/// Process B: build the sandbox, fork C; returns only in C.
fn setup_init(spec: &SandboxSpec, filters: &[seccompiler::BpfProgram]) -> Result<()> {
    rootfs::build(spec)?;
    // B and C are forks of the zygote: `/proc/<pid>/environ` would show its environment
    // (host paths of the server's installation) to the sandbox. Needs the fresh `/proc`.
    sys::scrub_initial_environ().map_err(EnterError::ScrubEnviron)?;
    nix::unistd::sethostname(&spec.hostname).map_err(|e| EnterError::SetHostname(e.into()))?;
    if spec.loopback {
        sys::set_interface_up("lo").map_err(EnterError::LoopbackUp)?;
    }
    credentials::set_rlimits(&spec.rlimits)?;
    credentials::drop_to(spec.uid, spec.gid)?;
    sys::close_fds_except(&[0, 1, 2, spec.kernel_fd, spec.report_fd])
        .map_err(EnterError::CloseFds)?;

    // Block the signals init handles before C exists, so none is lost in between.
    let signals = init::handled_signals();
    sys::default_sigchld().map_err(EnterError::Signals)?;
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| EnterError::Signals(e.into()))?;

    // Seccomp goes last: after it, the mounts and namespace calls above would fail.
    seccomp::install(filters)?;

    match sys::fork().map_err(EnterError::Fork)? {
        Forked::Parent(c) => {
            // The kernel's fds belong to C; init holding them would hide C's death.
            let _ = sys::close_raw(spec.kernel_fd);
            let _ = sys::close_raw(spec.report_fd);
            init::run(c, &signals)
        }
        Forked::Child => start_kernel(spec),
    }
}

/// Process C: undo init's signal mask, arm `PDEATHSIG`, report success.
fn start_kernel(spec: &SandboxSpec) -> Result<()> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| EnterError::Signals(e.into()))?;
    credentials::set_parent_death_kill().map_err(EnterError::SetParentDeathSignal)?;
    sys::write_all_raw(spec.report_fd, b"ok\n").map_err(EnterError::Report)?;
    sys::close_raw(spec.report_fd).map_err(EnterError::Report)
}
