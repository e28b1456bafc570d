//! `spawn`: a new sandbox of two processes, made from the caller (the zygote).
//!
//! - **B**, the sandbox's init, is pid 1 of a new pid namespace. It is not a copy of the
//!   caller: it is started with `clone(CLONE_VM | CLONE_VFORK | CLONE_NEWPID)` and at once
//!   executes the small `pyxis-sandbox-init` program (see [`crate::init`]). Over its stdin, a
//!   Unix socket, it gets the spec; it joins the cgroups, makes the other namespaces, builds
//!   the root filesystem, drops every privilege, installs seccomp and says `ok`. Then it reaps
//!   orphans until the kernel exits.
//! - **C**, the kernel, is a fork of the caller made in B's pid namespace (pid 2). It joins
//!   B's cgroups and namespaces with `setns`, drops every privilege, installs seccomp, writes
//!   `ok` to the report pipe and returns [`Spawned::Kernel`] to the caller's code: the
//!   Python interpreter with everything preloaded.
//!
//! Every fork of the zygote copies the page tables of its heap, and every exit of such a copy
//! tears them down: about 3 ms of CPU each on the development machine. When B was a fork
//! too, a sandbox cost two of each; now it costs one, plus the start of a small program.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use crate::credentials::{self, CredentialsError};
use crate::error::SandboxError;
use crate::message::SetupMessage;
use crate::rootfs::RootfsError;
use crate::seccomp::{self, SeccompError};
use crate::spec::{InitSpec, SandboxSpec, SpecError};
use crate::sys::{self, Forked};

type Result<T> = std::result::Result<T, EnterError>;

/// A failure of one step of making a sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnterError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// [`crate::prepare`] was not called, so the init program is not known.
    #[error("the sandbox library was not prepared with its init program")]
    NotPrepared,
    /// Opening the init program failed.
    #[error("init program {path}: {source}")]
    InitProgram {
        /// Its path.
        path: std::path::PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Starting the init (B) failed.
    #[error("start the sandbox's init: {0}")]
    StartInit(#[source] io::Error),
    /// B or C reported a failure, went away, or did not answer in time.
    #[error("{who}: {message}")]
    Setup {
        /// "the sandbox's init" or "the kernel".
        who: &'static str,
        /// What it said, or what went wrong.
        message: String,
    },
    /// Talking to B failed.
    #[error("talk to the sandbox's init: {0}")]
    Channel(#[source] io::Error),
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
    /// Making the mount namespace sandboxes copy ([`crate::prepare`]) failed.
    #[error("make the sandboxes' mount namespace: {0}")]
    MountNamespace(#[source] io::Error),
    /// Entering that namespace (`setns`) failed.
    #[error("enter the sandboxes' mount namespace: {0}")]
    EnterMountNamespace(#[source] io::Error),
    /// `PR_SET_PDEATHSIG` failed.
    #[error("set parent death signal: {0}")]
    SetParentDeathSignal(#[source] io::Error),
    /// The init is not pid 1 of a new pid namespace.
    #[error("the sandbox's init must be pid 1 of a new pid namespace")]
    NotPidOne,
    /// `unshare` failed.
    #[error("unshare namespaces: {0}")]
    Unshare(#[source] io::Error),
    /// Setting a sysctl of the sandbox's network namespace failed.
    #[error(transparent)]
    NetSysctl(#[from] crate::netns::NetSysctlError),
    /// Joining the init's namespaces (`setns`) failed.
    #[error("join the sandbox's namespaces: {0}")]
    JoinNamespaces(#[source] io::Error),
    /// `chdir` to the workspace failed.
    #[error("chdir /workspace: {0}")]
    Chdir(#[source] io::Error),
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
    /// Opening the egress listener on `127.0.0.1` failed.
    #[error("egress listener on port {port}: {source}")]
    EgressListen {
        /// The port.
        port: u16,
        /// The error.
        source: io::Error,
    },
    /// Changing the signal mask or dispositions failed.
    #[error("signal setup: {0}")]
    Signals(#[source] io::Error),
    /// Wiping the inherited environment block failed.
    #[error("scrub inherited environment: {0}")]
    ScrubEnviron(#[source] io::Error),
    /// The descriptors handed to [`spawn`] do not match the spec.
    #[error("{given} descriptors handed over, the spec names {wanted}")]
    Handover {
        /// How many the spec needs: the kernel socket, the workspace, each cgroup, the
        /// egress channel.
        wanted: usize,
        /// How many were given.
        given: usize,
    },
    /// Moving a handed-over descriptor to its number failed.
    #[error("move descriptors: {0}")]
    MoveFds(#[source] io::Error),
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

/// Namespaces B makes; the pid namespace is made by its `clone`. No user namespace: the ids
/// are real host ids, never 0. The cgroup namespace comes after the cgroups are joined, so
/// its root is the sandbox's cgroup. C joins the same set.
pub(crate) fn namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP
}

/// Descriptors [`spawn`] hands to the new sandbox, numbered as in the caller.
#[derive(Debug, Clone)]
pub struct Handover {
    /// The kernel's socket, the workspace directory, one `cgroup.procs` file per entry of
    /// [`SandboxSpec::cgroup_fds`], then the egress channel if [`SandboxSpec::egress`] names
    /// one, in that order. B gets the workspace, the cgroups and the egress channel at the
    /// spec's numbers; C gets the socket at `kernel_fd`.
    pub fds: Vec<RawFd>,
    /// A pidfd of the caller, if it has one. C checks it right after arming its death
    /// signal: a caller that died before then would leave C orphaned.
    pub parent_pidfd: Option<RawFd>,
}

/// Where [`spawn`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spawned {
    /// In the caller, once both processes are ready: the host pids of the sandbox's init (B)
    /// and of its kernel (C).
    Caller {
        /// B, pid 1 of the sandbox's pid namespace.
        init: i32,
        /// C, pid 2: the process that returned [`Spawned::Kernel`].
        kernel: i32,
    },
    /// In the sandboxed kernel process (C), ready to run the kernel.
    Kernel,
}

/// Makes a sandbox described by `spec` from the calling process (see the module docs).
///
/// The caller must be single-threaded (checked), root, and must have called
/// [`crate::prepare`]. Both B and C are its children; it should reap them. C arms its death
/// signal, resets the signals the caller may have handled to their default action, empties its
/// signal mask and keeps only fds 0 to 2 (`/dev/null`), `kernel_fd` and `report_fd` (closed
/// once it is ready).
///
/// Returns [`Spawned::Caller`] in the caller once both B and C are ready; it still owns, and
/// should close, the handed-over descriptors. Returns [`Spawned::Kernel`] in C. Returns `Err`
/// only in the caller, after killing whatever it had started.
pub fn spawn(
    spec: &SandboxSpec,
    handover: &Handover,
) -> std::result::Result<Spawned, SandboxError> {
    spec.validate()?;
    let cgroups = spec.cgroup_fds.len();
    let wanted = 2 + cgroups + usize::from(spec.egress.is_some());
    if handover.fds.len() != wanted {
        return Err(EnterError::Handover {
            wanted,
            given: handover.fds.len(),
        }
        .into());
    }
    let filters = seccomp::filters()?;
    let program = crate::init_program().ok_or(EnterError::NotPrepared)?;
    // How long B and then C may take to report on their setup.
    let deadline = Instant::now() + spec.setup_timeout();

    // B: stdin is its channel to us; the workspace and cgroups go to the spec's numbers.
    let (ours, theirs) = UnixStream::pair().map_err(EnterError::StartInit)?;
    let mut moves = vec![
        (theirs.as_raw_fd(), 0),
        (handover.fds[1], spec.workspace_fd),
    ];
    moves.extend(
        handover.fds[2..2 + cgroups]
            .iter()
            .copied()
            .zip(spec.cgroup_fds.iter().copied()),
    );
    if let Some(egress) = spec.egress {
        moves.push((handover.fds[2 + cgroups], egress.channel_fd));
    }
    let namespace = crate::mount_namespace();
    let init_spec = InitSpec::new(spec, namespace.is_some());
    if let (Some(from), Some(to)) = (namespace, init_spec.mount_namespace_fd) {
        moves.push((from, to));
    }
    let init =
        sys::start_program_in_new_pid_namespace(program, &moves).map_err(EnterError::StartInit)?;
    drop(theirs);
    match make_kernel(&init_spec, handover, filters, init, &ours, deadline) {
        Ok(Some(kernel)) => Ok(Spawned::Caller {
            init: init.as_raw(),
            kernel: kernel.as_raw(),
        }),
        Ok(None) => {
            // Closed in C already (see `make_kernel`).
            std::mem::forget(ours);
            Ok(Spawned::Kernel)
        }
        Err(error) => {
            // B is pid 1 of the namespace: C, if it exists, dies with it.
            let _ = kill(init, Signal::SIGKILL);
            Err(error.into())
        }
    }
}

/// The caller's part after B started: hands B the spec, forks C into its namespaces, waits
/// for C. `Ok(None)` in C.
///
/// C is forked while B builds the sandbox, not after: the fork (copying the caller's page
/// tables, the larger part of a spawn's time in the caller) and B's setup run at once, on
/// two cores where there are two. C waits at a gate, a pipe, until B said `ok`: only then do
/// B's namespaces and root exist for it to join. C takes no step of its own setup that
/// depends on B before the gate opens; if B fails, the caller kills B, and with it C, which
/// is in B's pid namespace.
fn make_kernel(
    init_spec: &InitSpec,
    handover: &Handover,
    filters: &[seccompiler::BpfProgram],
    init: Pid,
    channel: &UnixStream,
    deadline: Instant,
) -> Result<Option<Pid>> {
    let json = serde_json::to_string(init_spec).map_err(SpecError::from)?;
    let spec = &init_spec.spec;
    let mut writer = channel;
    writer
        .write_all(format!("{json}\n").as_bytes())
        .map_err(EnterError::Channel)?;

    let init_fd = sys::pidfd_open(init).map_err(EnterError::StartInit)?;
    let own_pid_ns = File::open("/proc/self/ns/pid").map_err(EnterError::Fork)?;
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| EnterError::Fork(e.into()));
    let (report_read, report_write) = pipe()?;
    let (gate_read, gate_write) = pipe()?;
    if let Err(error) = sys::setns(init_fd.as_raw_fd(), libc::CLONE_NEWPID) {
        // B may have exited already: its report says why.
        expect_ok("the sandbox's init", channel, deadline)?;
        return Err(EnterError::Fork(error));
    }
    let forked = sys::fork();
    if let Ok(Forked::Child) = forked {
        // The caller's end: C must see the gate close when the caller drops it.
        drop(gate_write);
        let fds = KernelFds {
            init: init_fd.as_raw_fd(),
            gate: gate_read.as_raw_fd(),
        };
        kernel_child(spec, handover, filters, fds, report_write, deadline)?;
        // C closed every descriptor but its own by number: none of these may be closed
        // again, since the number may be taken by then.
        std::mem::forget((init_fd, own_pid_ns, report_read, gate_read));
        return Ok(None);
    }
    if let Err(err) = sys::setns(own_pid_ns.as_raw_fd(), libc::CLONE_NEWPID) {
        // Every later child would be made in this sandbox's pid namespace.
        eprintln!("pyxis sandbox: cannot return to the own pid namespace: {err}");
        sys::exit_now(3);
    }
    let kernel = match forked {
        Ok(Forked::Parent(kernel)) => kernel,
        Ok(Forked::Child) => unreachable!("the child returned above"),
        // A fork into the namespace of an init that has exited fails (ENOMEM): B's own
        // report says why it exited.
        Err(error) => {
            expect_ok("the sandbox's init", channel, deadline)?;
            return Err(EnterError::Fork(error));
        }
    };
    drop((report_write, gate_read));
    // A failure from here on drops the gate's write end: C, waiting at it, reads its end
    // and exits (and dies anyway with B, which the caller kills).
    expect_ok("the sandbox's init", channel, deadline)?;
    // C exists, as pid 2 of B's namespace.
    writer
        .write_all(&SetupMessage::Go.encode())
        .map_err(EnterError::Channel)?;
    File::from(gate_write)
        .write_all(&SetupMessage::Go.encode())
        .map_err(EnterError::Channel)?;
    expect_ok("the kernel", &File::from(report_read), deadline)?;
    Ok(Some(kernel))
}

/// C's descriptors from the caller, by number: a pidfd of B, and the gate C waits at until
/// B is ready.
#[derive(Debug, Clone, Copy)]
struct KernelFds {
    init: RawFd,
    gate: RawFd,
}

/// Reads the [`SetupMessage::Ok`] or [`SetupMessage::Err`] of `who` from `from`, until
/// `deadline`.
fn expect_ok(who: &'static str, from: impl AsFd + Read, deadline: Instant) -> Result<()> {
    let line = read_line(from, deadline).map_err(|message| EnterError::Setup { who, message })?;
    match SetupMessage::decode(&line) {
        Ok(SetupMessage::Ok) => Ok(()),
        Ok(SetupMessage::Err { message }) => Err(EnterError::Setup { who, message }),
        Ok(other) => Err(EnterError::Setup {
            who,
            message: format!("unexpected report {other:?}"),
        }),
        Err(message) => Err(EnterError::Setup { who, message }),
    }
}

/// Longest line [`read_line`] accepts (a spec is about 1 KiB).
const MAX_LINE: usize = 1 << 20;

/// One line from `from`, without its newline; waits until `deadline`. The peer must send
/// nothing after the line until it gets an answer (every exchange between the zygote, B and
/// C is one line each way), so reading in chunks consumes nothing that belongs to the next
/// line.
pub(crate) fn read_line(
    mut from: impl AsFd + Read,
    deadline: Instant,
) -> std::result::Result<String, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => return Err(err.to_string()),
        }
        match from.read(&mut chunk) {
            Ok(0) => return Err("exited during setup".into()),
            Ok(n) => line.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.to_string()),
        }
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() > MAX_LINE {
            return Err("line too long".into());
        }
    }
}

/// In C: becomes the sandboxed kernel, or reports why not and exits. Returns only on success.
fn kernel_child(
    spec: &SandboxSpec,
    handover: &Handover,
    filters: &[seccompiler::BpfProgram],
    fds: KernelFds,
    report: OwnedFd,
    deadline: Instant,
) -> Result<()> {
    // From here on this process owns its descriptors as numbers only.
    let mut report_fd = std::mem::ManuallyDrop::new(report).as_raw_fd();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        become_kernel(spec, handover, filters, fds, report_fd, deadline)?;
        report_fd = spec.report_fd;
        ready(spec.report_fd)
    }));
    let error = match outcome {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "panic in pyxis sandbox".to_owned(),
    };
    let _ = sys::write_all_raw(report_fd, &SetupMessage::err(error).encode());
    sys::exit_now(1)
}

/// Signals whose handlers a caller (the Python zygote) may have installed.
pub(crate) const RESET_SIGNALS: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGCHLD,
    Signal::SIGHUP,
];

/// C's setup, in order: die with the caller, reset signals, join B's cgroups, wait at the
/// gate until B is ready, join B's namespaces, take its descriptors' numbers, drop
/// privileges, seccomp.
fn become_kernel(
    spec: &SandboxSpec,
    handover: &Handover,
    filters: &[seccompiler::BpfProgram],
    fds: KernelFds,
    report: RawFd,
    deadline: Instant,
) -> Result<()> {
    credentials::set_parent_death_kill().map_err(EnterError::SetParentDeathSignal)?;
    if let Some(pidfd) = handover.parent_pidfd {
        // Readable once the caller has exited; nobody would read a report then.
        if sys::fd_readable_now(pidfd).unwrap_or(true) {
            sys::exit_now(1);
        }
    }
    for signal in RESET_SIGNALS {
        sys::default_action(signal).map_err(EnterError::Signals)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| EnterError::Signals(e.into()))?;

    // "0" is the writing process itself, whatever pid namespace it is in. The cgroup
    // namespace is joined after, so the move is checked against the host's view.
    join_cgroups(&handover.fds[2..2 + spec.cgroup_fds.len()])?;
    // Not closed here: the descriptors below are closed by number.
    let gate = std::mem::ManuallyDrop::new(sys::file_from_raw(fds.gate));
    match read_line(&*gate, deadline).map(|line| SetupMessage::decode(&line)) {
        Ok(Ok(SetupMessage::Go)) => {}
        // The caller gave up on this sandbox (B failed, or it timed out).
        _ => sys::exit_now(1),
    }
    sys::setns(fds.init, namespaces().bits()).map_err(EnterError::JoinNamespaces)?;
    // setns put the root and the working directory at the sandbox's root.
    nix::unistd::chdir("/workspace").map_err(|e| EnterError::Chdir(e.into()))?;
    sys::move_fds(&[(handover.fds[0], spec.kernel_fd), (report, spec.report_fd)])
        .map_err(EnterError::MoveFds)?;
    sys::close_fds_except(&[0, 1, 2, spec.kernel_fd, spec.report_fd])
        .map_err(EnterError::CloseFds)?;
    // C is a fork of the caller: `/proc/<pid>/environ` would show its environment (host paths
    // of the server's installation) to the sandbox. Needs the sandbox's `/proc`.
    sys::scrub_initial_environ().map_err(EnterError::ScrubEnviron)?;
    credentials::set_rlimits(&spec.rlimits)?;
    credentials::drop_to(spec.uid, spec.gid)?;
    // Seccomp goes last: after it, the namespace calls above would fail.
    seccomp::install(filters)?;
    Ok(())
}

/// Writes our pid into each open `cgroup.procs` file, then closes it: the sandbox must not
/// keep a way into the host's cgroup tree.
pub(crate) fn join_cgroups(fds: &[RawFd]) -> Result<()> {
    for &fd in fds {
        sys::write_all_raw(fd, b"0").map_err(|source| EnterError::JoinCgroup { fd, source })?;
        sys::close_raw(fd).map_err(EnterError::CloseFds)?;
    }
    Ok(())
}

/// C is ready: [`SetupMessage::Ok`] on the report pipe, which it then closes.
fn ready(report: RawFd) -> Result<()> {
    sys::write_all_raw(report, &SetupMessage::Ok.encode()).map_err(EnterError::Report)?;
    sys::close_raw(report).map_err(EnterError::Report)
}
