//! The join path: one more process inside a live sandbox, started with the
//! `pyxis-sandbox-exec` program (see `pyxis_sandbox::ExecSpec`), beside the kernel the
//! zygote forked. Contexts of other languages and commands are made this way.
//!
//! The server only prepares descriptors and a spec: the program joins the sandbox's
//! namespaces and cgroups, drops privileges exactly as a kernel does, installs seccomp and
//! execs. It reports the process's pids and then its exit on a status pipe, read here.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use pyxis_sandbox::{ExecSpec, ExecStatus, Rlimits, EXEC_FIRST_EXTRA_FD};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::watch;

use super::SandboxError;

/// How long the program may take to report that the process runs.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A process to start inside a sandbox.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Program and arguments (a program without `/` is looked up in `PATH` of `env`).
    pub argv: Vec<String>,
    /// Variables added to (or replacing) the sandbox's base environment.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (`/workspace` when `None`).
    pub cwd: Option<PathBuf>,
    /// Pipes for stdin, stdout and stderr; `/dev/null` otherwise.
    pub stdio: bool,
    /// A framed socket at the process's fd 3, as the kernels expect it.
    pub kernel_socket: bool,
    /// Its `oom_score_adj` (0, as the first kernel's, to 1000).
    pub oom_score_adj: i32,
}

/// How a joined process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
}

/// A process running inside a sandbox.
#[derive(Debug)]
pub struct Joined {
    /// Its pid on the host (the leader of its own process group and session).
    pub pid: i32,
    /// Its pid inside the sandbox.
    pub ns_pid: i32,
    /// Its stdin, with [`ExecRequest::stdio`].
    pub stdin: Option<ChildStdin>,
    /// Its stdout, with [`ExecRequest::stdio`].
    pub stdout: Option<ChildStdout>,
    /// Its stderr, with [`ExecRequest::stdio`].
    pub stderr: Option<ChildStderr>,
    /// The supervisor's end of its kernel socket, with [`ExecRequest::kernel_socket`].
    pub kernel: Option<tokio::net::UnixStream>,
    /// `Some` once it has ended.
    pub exit: watch::Receiver<Option<ExitInfo>>,
}

impl Joined {
    /// Sends `signal` to the process's whole group (what it started and did not move
    /// elsewhere), unless it has ended.
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) {
        signal_group(self.pid, &self.exit, signal);
    }
}

/// Sends `signal` to the group led by `pid` unless `exit` says it has ended (the helper
/// reaps the leader only after the group's leader is gone, so its number is not reused
/// before `exit` is set).
pub fn signal_group(
    pid: i32,
    exit: &watch::Receiver<Option<ExitInfo>>,
    signal: nix::sys::signal::Signal,
) {
    if pid > 0 && exit.borrow().is_none() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), signal);
    }
}

/// What every joined process of a sandbox shares: the program, the sandbox's identity.
pub struct JoinTarget<'a> {
    /// The `pyxis-sandbox-exec` program.
    pub program: &'a Path,
    /// A pidfd of the sandbox's init.
    pub init: &'a OwnedFd,
    /// Host paths of the sandbox's `cgroup.procs` files.
    pub cgroup_procs: Vec<PathBuf>,
    /// Its uid (and gid).
    pub uid: u32,
    /// Its rlimits.
    pub rlimits: Rlimits,
    /// Its base environment.
    pub env: BTreeMap<String, String>,
}

/// Starts `req` inside the sandbox `target`; returns once the process runs the program.
pub async fn exec(target: JoinTarget<'_>, req: ExecRequest) -> Result<Joined, SandboxError> {
    let mut env = target.env;
    env.extend(req.env);
    let mut spec = ExecSpec {
        cgroup_procs: target.cgroup_procs,
        uid: target.uid,
        gid: target.uid,
        rlimits: target.rlimits,
        argv: req.argv,
        env,
        cwd: req.cwd.unwrap_or_else(|| PathBuf::from("/workspace")),
        fds: Vec::new(),
        oom_score_adj: req.oom_score_adj,
    };
    let (kernel_ours, kernel_theirs) = if req.kernel_socket {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        spec.fds
            .push((EXEC_FIRST_EXTRA_FD, pyxis_sandbox::KERNEL_FD));
        (Some(a), Some(OwnedFd::from(b)))
    } else {
        (None, None)
    };
    spec.validate()
        .map_err(|e| SandboxError::Internal(format!("exec spec: {e}")))?;
    let json = serde_json::to_vec(&spec).map_err(|e| SandboxError::Internal(e.to_string()))?;

    let (spec_read, spec_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SandboxError::Io(e.into()))?;
    let (status_read, status_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SandboxError::Io(e.into()))?;
    let mut sources: Vec<RawFd> = vec![
        spec_read.as_raw_fd(),
        status_write.as_raw_fd(),
        target.init.as_raw_fd(),
    ];
    sources.extend(kernel_theirs.as_ref().map(AsRawFd::as_raw_fd));
    let mut cmd = tokio::process::Command::new(target.program);
    cmd.env_clear().arg0("pyxis-sandbox-exec");
    let stdio = || {
        if req.stdio {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    cmd.stdin(stdio()).stdout(stdio()).stderr(stdio());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (fcntl, dup2) on descriptors it owns as numbers.
    unsafe {
        cmd.pre_exec(move || place_fds(&sources));
    }
    let mut child = cmd.spawn()?;
    drop((spec_read, status_write, kernel_theirs));
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let mut spec_pipe = tokio::net::unix::pipe::Sender::from_owned_fd(spec_write)?;
    let status = tokio::net::unix::pipe::Receiver::from_owned_fd(status_read)?;
    let mut lines = BufReader::new(status).lines();
    let started = async {
        spec_pipe.write_all(&json).await?;
        drop(spec_pipe);
        lines.next_line().await
    };
    let first = match tokio::time::timeout(START_TIMEOUT, started).await {
        Ok(Ok(Some(line))) => ExecStatus::decode(&line).map_err(SandboxError::Internal)?,
        Ok(Ok(None)) => {
            let _ = child.wait().await;
            return Err(SandboxError::Internal(
                "the exec helper exited without a report".into(),
            ));
        }
        Ok(Err(e)) => {
            let _ = child.kill().await;
            return Err(e.into());
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(SandboxError::Internal("the exec helper timed out".into()));
        }
    };
    let (pid, ns_pid) = match first {
        ExecStatus::Started { pid, ns_pid } => (pid, ns_pid),
        ExecStatus::Failed { message } => {
            let _ = child.wait().await;
            drop(stdin.take());
            return Err(SandboxError::Exec(message));
        }
        other => {
            let _ = child.kill().await;
            return Err(SandboxError::Internal(format!(
                "unexpected exec report {other:?}"
            )));
        }
    };
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut exit = ExitInfo {
            code: None,
            signal: Some(libc::SIGKILL),
        };
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(ExecStatus::Exited { code, signal }) = ExecStatus::decode(&line) {
                exit = ExitInfo { code, signal };
                break;
            }
        }
        let _ = child.wait().await;
        let _ = exit_tx.send(Some(exit));
    });
    let kernel = match kernel_ours {
        Some(sock) => {
            sock.set_nonblocking(true)?;
            Some(tokio::net::UnixStream::from_std(sock)?)
        }
        None => None,
    };
    Ok(Joined {
        pid,
        ns_pid,
        stdin,
        stdout,
        stderr,
        kernel,
        exit: exit_rx,
    })
}

/// In the forked child: `sources` to `EXEC_SPEC_FD`, `EXEC_STATUS_FD`, `EXEC_INIT_FD` and
/// then the extra descriptors from `EXEC_FIRST_EXTRA_FD`, inheritable. Each is first copied
/// above every target, so no move clobbers a source not yet moved.
fn place_fds(sources: &[RawFd]) -> std::io::Result<()> {
    const PARK: RawFd = 64;
    let mut parked = [0 as RawFd; 8];
    for (i, &fd) in sources.iter().enumerate().take(parked.len()) {
        // SAFETY: fcntl on a descriptor this process has; async-signal-safe.
        let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, PARK) };
        if high < 0 {
            return Err(std::io::Error::last_os_error());
        }
        parked[i] = high;
    }
    for (i, &high) in parked.iter().enumerate().take(sources.len()) {
        let target = pyxis_sandbox::EXEC_SPEC_FD + i as RawFd;
        // SAFETY: dup2 on descriptors this process has; async-signal-safe. The copy at
        // `target` is inheritable, the parked one closes on exec.
        if unsafe { libc::dup2(high, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Finds the sandbox's init (pid 1 of its pid namespace) among the processes of its cgroup
/// and opens a pidfd of it.
pub fn open_init(procs: &Path) -> std::io::Result<OwnedFd> {
    let text = std::fs::read_to_string(procs)?;
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if ns_pid(pid) != Some(1) {
            continue;
        }
        let fd = pidfd(pid)?;
        // Checked again with the pidfd open: the number now names this process for good.
        if ns_pid(pid) == Some(1) {
            return Ok(fd);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the sandbox's init is not running",
    ))
}

/// `pidfd_open(pid, 0)`.
fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The pid of host process `pid` in its innermost pid namespace.
fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    // A host process has one field: it is not in a sandbox at all.
    if fields.len() < 2 {
        return None;
    }
    fields.last()?.parse().ok()
}
