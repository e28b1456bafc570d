//! `enter`: turns the calling single-threaded process into a sandboxed one.
//!
//! Three processes come out of it:
//!
//! - **A**, the caller: joins the cgroups, unshares the namespaces, forks B, reports B's host
//!   pid, then only waits for B and exits with its status.
//! - **B**, pid 1 of the new pid namespace: builds the root filesystem, drops every privilege,
//!   installs seccomp, forks C, then runs a tiny init (see [`crate::init`]).
//! - **C**, pid 2: the only process in which `enter` returns `Ok(())`; it runs the kernel.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};

use nix::sched::CloneFlags;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

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
    /// The parent (the zygote) died before the death signal was armed.
    #[error("parent process exited during setup")]
    ParentDied,
    /// `unshare` failed.
    #[error("unshare namespaces: {0}")]
    Unshare(#[source] io::Error),
    /// Creating the start-up pipe failed.
    #[error("create pipe: {0}")]
    Pipe(#[source] io::Error),
    /// `fork` failed.
    #[error("fork: {0}")]
    Fork(#[source] io::Error),
    /// Writing to or reading from the report or start-up pipe failed.
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

/// Longest `err ...` line written to the report fd.
const MAX_REPORT_MESSAGE: usize = 400;

/// Namespaces of every sandbox. No user namespace: the ids are real host ids, never 0.
fn namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP
}

/// Turns the calling process into a sandboxed one, as described by `spec`.
///
/// The caller must be single-threaded (a fresh fork child; this is checked) with fds 0, 1, 2,
/// `spec.kernel_fd` and `spec.report_fd` open; every other fd is closed.
///
/// Returns `Ok(())` only in the sandboxed kernel process (C). Returns `Err` in the caller when
/// a step before the first fork fails. In every other case the calling process never returns:
/// it waits for the sandbox and exits with its status. Failures after the fork are written to
/// `report_fd` as `err <message>`.
///
/// # Example
///
/// ```no_run
/// # fn spec() -> pyxis_sandbox::SandboxSpec { unimplemented!() }
/// pyxis_sandbox::prepare()?; // in the zygote, before forking
/// // ... in a fresh fork child:
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
    // First clean the process up: nothing inherited from the zygote but our own fds.
    let mut keep = vec![0, 1, 2];
    keep.extend(spec.fds());
    sys::close_fds_except(&keep).map_err(EnterError::CloseFds)?;

    let pid = nix::unistd::getpid().to_string();
    for &fd in &spec.cgroup_fds {
        sys::write_all_raw(fd, pid.as_bytes())
            .map_err(|source| EnterError::JoinCgroup { fd, source })?;
        // B and C must not inherit a way into the host's cgroup tree.
        sys::close_raw(fd).map_err(EnterError::CloseFds)?;
    }

    // Taken in the host's mount namespace; B attaches it in the new one, where neither a
    // path nor a bind from this fd would work.
    sys::detach_tree_in_place(spec.workspace_fd).map_err(EnterError::DetachWorkspace)?;

    let parent = nix::unistd::getppid();
    credentials::set_parent_death_kill().map_err(EnterError::SetParentDeathSignal)?;
    if nix::unistd::getppid() != parent {
        return Err(EnterError::ParentDied);
    }

    nix::sched::unshare(namespaces()).map_err(|e| EnterError::Unshare(e.into()))?;
    // B waits on this pipe until A has reported B's pid, so `pid` is always the first line.
    let (start_read, start_write) = nix::unistd::pipe().map_err(|e| EnterError::Pipe(e.into()))?;

    match sys::fork().map_err(EnterError::Fork)? {
        Forked::Parent(b) => {
            drop(start_read);
            supervise(spec, b, start_write)
        }
        Forked::Child => drop(start_write),
    }

    let outcome = catch_unwind(AssertUnwindSafe(|| setup_init(spec, filters, start_read)));
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => fail(spec.report_fd, &err.to_string()),
        Err(_) => fail(spec.report_fd, "panic during sandbox setup"),
    }
}

/// Process A after the fork: report B's pid, then wait for B and exit with its status.
fn supervise(spec: &SandboxSpec, b: Pid, start_write: OwnedFd) -> ! {
    let line = format!("pid {b}\n");
    if sys::write_all_raw(spec.report_fd, line.as_bytes()).is_err() {
        // Nobody would know which process to signal: do not start at all.
        let _ = nix::sys::signal::kill(b, nix::sys::signal::Signal::SIGKILL);
    }
    drop(start_write);
    let _ = sys::close_fds_except(&[]);
    sys::exit_now(wait_exit_code(b))
}

/// Waits for `child` and turns its end into an exit code (128 + signal when killed).
fn wait_exit_code(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// Process B: build the sandbox, fork C; returns only in C.
fn setup_init(
    spec: &SandboxSpec,
    filters: &[seccompiler::BpfProgram],
    start: OwnedFd,
) -> Result<()> {
    wait_for_eof(&start).map_err(EnterError::Report)?;
    drop(start);

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

/// Reads `fd` until end of file.
fn wait_for_eof(fd: &OwnedFd) -> io::Result<()> {
    let mut buf = [0u8; 16];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reports `message` on the report fd and exits with status 1.
fn fail(report_fd: i32, message: &str) -> ! {
    let line = report_line(message);
    let _ = sys::write_all_raw(report_fd, line.as_bytes());
    sys::exit_now(1)
}

/// `err <message>\n`, on one line and at most [`MAX_REPORT_MESSAGE`] bytes of message.
fn report_line(message: &str) -> String {
    let mut clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() > MAX_REPORT_MESSAGE {
        let mut cut = MAX_REPORT_MESSAGE;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    format!("err {clean}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_are_single_bounded_lines() {
        assert_eq!(report_line("a\nb"), "err a b\n");
        let long = "é".repeat(1000);
        let line = report_line(&long);
        assert!(line.len() <= MAX_REPORT_MESSAGE + 5);
        assert_eq!(line.matches('\n').count(), 1);
    }
}
