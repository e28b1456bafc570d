//! The join path: `pyxis-sandbox-exec` starts one process inside an existing sandbox.
//!
//! The supervisor runs the program (as root, with a clean environment) with these
//! descriptors:
//!
//! - 0, 1, 2: the new process's stdin, stdout and stderr (the program itself keeps none of
//!   them once the process exists, so end-of-file reaches the supervisor when the process and
//!   its own children are done);
//! - [`EXEC_SPEC_FD`]: a pipe carrying one [`ExecSpec`] as JSON, read to its end;
//! - [`EXEC_STATUS_FD`]: a pipe on which the program reports, one JSON [`ExecStatus`] per
//!   line, `started` (host pid and pid inside the sandbox), then `exited`, or `failed`;
//! - [`EXEC_INIT_FD`]: a pidfd of the sandbox's init (B), whose namespaces are joined;
//! - any further descriptors the spec's `fds` hand to the process at other numbers (a
//!   kernel's framed socket at 3).
//!
//! The program enters B's pid namespace (`setns` with the pidfd) and forks. The child joins
//! the sandbox's cgroups and its other namespaces and then takes exactly the kernel's steps
//! (see `process.rs`): rlimits, [`credentials::drop_to`] (capabilities, ids, `no_new_privs`,
//! death signal), a session of its own, seccomp last, and `execve`. The parent reports,
//! waits, reports the exit and exits. If the supervisor goes away (the status pipe's reader
//! closes), the parent kills the process's group; the process has the parent's death as its
//! `PDEATHSIG`, and anything it leaves behind is an orphan of B, so nothing outlives the
//! sandbox's cgroup kill.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::credentials;
use crate::process::{join_cgroups, namespaces, EnterError, RESET_SIGNALS};
use crate::seccomp;
use crate::spec::Rlimits;
use crate::sys::{self, Forked};

/// Where `pyxis-sandbox-exec` reads its [`ExecSpec`].
pub const EXEC_SPEC_FD: RawFd = 3;
/// Where it writes its [`ExecStatus`] lines.
pub const EXEC_STATUS_FD: RawFd = 4;
/// A pidfd of the sandbox's init.
pub const EXEC_INIT_FD: RawFd = 5;
/// The first descriptor free for [`ExecSpec::fds`].
pub const EXEC_FIRST_EXTRA_FD: RawFd = 6;

/// The highest number [`ExecSpec::fds`] may move a descriptor to.
pub const MAX_TARGET_FD: RawFd = 63;

/// Longest spec accepted (the arguments and environment are bounded by the server too).
const MAX_SPEC: u64 = 4 << 20;

/// What to run inside the sandbox, and as whom.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ExecSpec {
    /// Host paths of the sandbox's `cgroup.procs` files, joined before the namespaces.
    pub cgroup_procs: Vec<PathBuf>,
    /// The sandbox's uid (never 0).
    pub uid: u32,
    /// The sandbox's gid (never 0).
    pub gid: u32,
    /// Resource limits, as the kernel gets them.
    pub rlimits: Rlimits,
    /// The program and its arguments; a program without `/` is looked up in the `PATH` of
    /// `env` (inside the sandbox).
    pub argv: Vec<String>,
    /// The whole environment of the process.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (entered as the sandbox's uid).
    pub cwd: PathBuf,
    /// Further descriptors: `(number in pyxis-sandbox-exec, number in the process)`; the
    /// first is at least [`EXEC_FIRST_EXTRA_FD`], the second above 2.
    #[serde(default)]
    pub fds: Vec<(RawFd, RawFd)>,
    /// The process's `oom_score_adj`, 0 (as the first kernel's) to 1000: a context or
    /// command started later is the OOM killer's first choice in the sandbox's cgroup,
    /// so the first kernel's state outlives it.
    #[serde(default)]
    pub oom_score_adj: i32,
}

/// One report line of `pyxis-sandbox-exec`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecStatus {
    /// The process runs the program.
    Started {
        /// Its pid on the host.
        pid: i32,
        /// Its pid inside the sandbox.
        ns_pid: i32,
    },
    /// The process ended.
    Exited {
        /// Its exit code, when it exited.
        code: Option<i32>,
        /// The signal that killed it, when one did.
        signal: Option<i32>,
    },
    /// It could not be started; nothing runs.
    Failed {
        /// Why.
        message: String,
    },
}

impl ExecStatus {
    /// The report as one line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self)
            .unwrap_or_else(|_| b"{\"type\":\"failed\",\"message\":\"unencodable\"}".to_vec());
        line.push(b'\n');
        line
    }

    /// Parses one line (without its newline).
    pub fn decode(line: &str) -> Result<ExecStatus, String> {
        serde_json::from_str(line).map_err(|_| {
            let shown: String = line.chars().take(200).collect();
            format!("unexpected exec status {shown:?}")
        })
    }
}

impl ExecSpec {
    /// Checks what the program relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.uid == 0 || self.gid == 0 {
            return Err("the uid and gid must not be 0".into());
        }
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("argv must name a program".into());
        }
        let nul = |s: &str| s.contains('\0');
        if self.argv.iter().any(|a| nul(a))
            || self
                .env
                .iter()
                .any(|(k, v)| nul(k) || nul(v) || k.contains('='))
        {
            return Err("argv and env must not contain NUL (nor a name '=')".into());
        }
        if !self.cwd.is_absolute() {
            return Err("cwd must be absolute".into());
        }
        if !(0..=1000).contains(&self.oom_score_adj) {
            return Err("oom_score_adj must be between 0 and 1000".into());
        }
        for &(from, to) in &self.fds {
            if from < EXEC_FIRST_EXTRA_FD || !(3..=MAX_TARGET_FD).contains(&to) {
                return Err(format!("descriptor ({from}, {to}) out of range"));
            }
        }
        Ok(())
    }
}

/// `main` of `pyxis-sandbox-exec` (see the module docs). Never returns.
pub fn main() -> ! {
    let code = match run() {
        Ok(code) => code,
        Err(message) => {
            let _ = sys::write_all_raw(EXEC_STATUS_FD, &ExecStatus::Failed { message }.encode());
            1
        }
    };
    sys::exit_now(code)
}

fn run() -> Result<i32, String> {
    let mut text = Vec::new();
    sys::file_from_raw(EXEC_SPEC_FD)
        .take(MAX_SPEC)
        .read_to_end(&mut text)
        .map_err(|e| format!("read the spec: {e}"))?;
    let spec: ExecSpec = serde_json::from_slice(&text).map_err(|e| format!("spec: {e}"))?;
    spec.validate()?;
    let filters = seccomp::filters().map_err(|e| e.to_string())?;
    // The program, and the environment, prepared before the fork.
    let program = CString::new(spec.argv[0].as_bytes()).map_err(|e| e.to_string())?;
    let args = to_cstrings(spec.argv.iter().map(String::as_str))?;
    let env = to_cstrings(
        spec.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    )?;
    let path = spec
        .env
        .get("PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", String::as_str);
    let candidates = candidates(&program, path)?;
    let (report_read, report_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // Above every number the spec may move a descriptor to, so no move clobbers it.
    let report_write = {
        use nix::fcntl::{fcntl, FcntlArg};
        let high = fcntl(
            report_write.as_raw_fd(),
            FcntlArg::F_DUPFD_CLOEXEC(MAX_TARGET_FD + 1),
        )
        .map_err(|e| format!("dup: {e}"))?;
        drop(report_write);
        sys::owned_from_raw(high)
    };
    sys::setns(EXEC_INIT_FD, libc::CLONE_NEWPID)
        .map_err(|e| format!("join the pid namespace: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        Forked::Child => {
            drop(report_read);
            let error = match become_process(&spec, filters, report_write.as_raw_fd()) {
                Ok(()) => exec(&candidates, &args, &env),
                Err(e) => e.to_string(),
            };
            let _ = sys::write_all_raw(report_write.as_raw_fd(), error.as_bytes());
            sys::exit_now(127)
        }
        Forked::Parent(child) => {
            drop(report_write);
            supervise(child, report_read)
        }
    }
}

fn to_cstrings<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<CString>, String> {
    items
        .map(|s| CString::new(s).map_err(|e| e.to_string()))
        .collect()
}

/// The paths `execve` tries, in order: the program itself if it names a path, else each
/// directory of `path` (looked up inside the sandbox, after the namespaces are joined).
fn candidates(program: &CString, path: &str) -> Result<Vec<CString>, String> {
    let bytes = program.as_bytes();
    if bytes.contains(&b'/') {
        return Ok(vec![program.clone()]);
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| {
            let mut full = dir.as_bytes().to_vec();
            full.push(b'/');
            full.extend_from_slice(bytes);
            CString::new(full).map_err(|e| e.to_string())
        })
        .collect()
}

/// `execve` of the first candidate that exists; the error of the most telling failure.
fn exec(candidates: &[CString], args: &[CString], env: &[CString]) -> String {
    let mut last = nix::errno::Errno::ENOENT;
    for path in candidates {
        let Err(errno) = nix::unistd::execve(path, args, env);
        // As execvp: a missing file means "try the next directory", anything else is kept.
        if errno != nix::errno::Errno::ENOENT || last == nix::errno::Errno::ENOENT {
            last = errno;
        }
    }
    let name = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    match last {
        nix::errno::Errno::ENOENT => format!("{name}: command not found"),
        errno => format!("{name}: {}", errno.desc()),
    }
}

/// In the child: the sandbox's cgroups and namespaces, its descriptors, then the kernel's
/// steps of dropping privileges, seccomp last.
fn become_process(
    spec: &ExecSpec,
    filters: &[seccompiler::BpfProgram],
    report: RawFd,
) -> Result<(), EnterError> {
    credentials::set_parent_death_kill().map_err(EnterError::SetParentDeathSignal)?;
    if spec.oom_score_adj != 0 {
        // Still as root and in the host's mount namespace (its /proc): a process may not
        // lower its own score later, and this one is never lower than its parent's.
        std::fs::write(
            "/proc/self/oom_score_adj",
            spec.oom_score_adj.to_string().as_bytes(),
        )
        .map_err(|e| EnterError::Setup {
            who: "the process",
            message: format!("set its oom_score_adj: {e}"),
        })?;
    }
    for signal in RESET_SIGNALS {
        sys::default_action(signal).map_err(EnterError::Signals)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| EnterError::Signals(e.into()))?;
    let mut procs = Vec::new();
    for path in &spec.cgroup_procs {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| EnterError::JoinCgroup { fd: -1, source })?;
        procs.push(OwnedFd::from(file));
    }
    let raw: Vec<RawFd> = procs
        .into_iter()
        .map(std::os::fd::IntoRawFd::into_raw_fd)
        .collect();
    join_cgroups(&raw)?;
    sys::setns(EXEC_INIT_FD, namespaces().bits()).map_err(EnterError::JoinNamespaces)?;
    let mut moves = vec![(0, 0), (1, 1), (2, 2)];
    moves.extend(spec.fds.iter().copied());
    sys::move_fds(&moves).map_err(EnterError::MoveFds)?;
    let mut keep: Vec<RawFd> = vec![0, 1, 2];
    keep.extend(spec.fds.iter().map(|&(_, to)| to));
    // The report pipe closes on exec by itself; every other descriptor goes now.
    keep.push(report);
    sys::close_fds_except(&keep).map_err(EnterError::CloseFds)?;
    credentials::set_rlimits(&spec.rlimits)?;
    credentials::drop_to(spec.uid, spec.gid)?;
    // As the sandbox's uid: a directory the workspace's owner cannot enter is refused.
    nix::unistd::chdir(spec.cwd.as_path()).map_err(|e| EnterError::Chdir(e.into()))?;
    // Its own session and process group: a context's or command's whole group is signalled
    // at once, and the supervisor's terminal signals never reach it.
    nix::unistd::setsid().map_err(|e| EnterError::Signals(e.into()))?;
    // Seccomp goes last: after it, the namespace calls above would fail.
    seccomp::install(filters)?;
    Ok(())
}

/// In the parent: `started` (or the child's setup error), then the exit.
fn supervise(child: Pid, report: OwnedFd) -> Result<i32, String> {
    let mut error = Vec::new();
    let _ = std::fs::File::from(report).read_to_end(&mut error);
    if !error.is_empty() {
        let _ = waitpid(child, None);
        return Err(String::from_utf8_lossy(&error).into_owned());
    }
    // The process has its own copies; ours would hold its pipes open.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    let ns_pid = ns_pid(child).unwrap_or(0);
    let started = ExecStatus::Started {
        pid: child.as_raw(),
        ns_pid,
    };
    sys::write_all_raw(EXEC_STATUS_FD, &started.encode()).map_err(|e| e.to_string())?;
    let pidfd = sys::pidfd_open(child).map_err(|e| format!("pidfd_open: {e}"))?;
    let status = std::mem::ManuallyDrop::new(sys::file_from_raw(EXEC_STATUS_FD));
    loop {
        use std::os::fd::AsFd;
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(status.as_fd(), PollFlags::empty()),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let gone = fds[1].revents().is_some_and(|r| !r.is_empty());
        if gone {
            // Nobody listens any more: the process and its group go.
            let _ = kill(Pid::from_raw(-child.as_raw()), Signal::SIGKILL);
            let _ = kill(child, Signal::SIGKILL);
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                let line = ExecStatus::Exited {
                    code: Some(code),
                    signal: None,
                };
                let _ = sys::write_all_raw(EXEC_STATUS_FD, &line.encode());
                return Ok(0);
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                let line = ExecStatus::Exited {
                    code: None,
                    signal: Some(signal as i32),
                };
                let _ = sys::write_all_raw(EXEC_STATUS_FD, &line.encode());
                return Ok(0);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    }
}

/// The pid of host process `pid` in its own (innermost) pid namespace.
fn ns_pid(pid: Pid) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        for status in [
            ExecStatus::Started { pid: 10, ns_pid: 3 },
            ExecStatus::Exited {
                code: Some(2),
                signal: None,
            },
            ExecStatus::Exited {
                code: None,
                signal: Some(9),
            },
            ExecStatus::Failed {
                message: "x\ny".into(),
            },
        ] {
            let line = status.encode();
            let text = std::str::from_utf8(&line[..line.len() - 1]).expect("utf-8");
            assert!(!text.contains('\n'));
            assert_eq!(ExecStatus::decode(text), Ok(status));
        }
        assert!(ExecStatus::decode("nope").is_err());
    }

    #[test]
    fn program_lookup_follows_path() {
        let prog = CString::new("ls").expect("no NUL");
        let found = candidates(&prog, "/a:/b::").expect("candidates");
        assert_eq!(
            found,
            vec![
                CString::new("/a/ls").unwrap(),
                CString::new("/b/ls").unwrap()
            ]
        );
        let prog = CString::new("./x").expect("no NUL");
        assert_eq!(candidates(&prog, "/a").expect("candidates"), vec![prog]);
    }
}
