//! The sandbox's init (process B, pid 1 of the pid namespace): the `pyxis-sandbox-init`
//! program, started by [`crate::spawn`].
//!
//! Its stdin is a Unix socket to the zygote. It reads the spec (one JSON line), builds the
//! sandbox (cgroups, namespaces, root filesystem, hostname, loopback, rlimits, credentials,
//! seccomp) and answers `ok` or `err <message>`. After `go`, the kernel (C) is pid 2 of its
//! namespace: init then reaps every orphan (double-forked daemons end up here) and exits
//! when the kernel exits, which ends the pid namespace and kills whatever is left in it.
//! With [`SandboxSpec::outlive_kernel`] it does not watch the kernel: other processes joined
//! the sandbox (`pyxis-sandbox-exec`), and init lives until the server kills the sandbox's
//! cgroup, or its parent (the zygote) dies, its parent-death signal.
//!
//! The kernel is the zygote's child, not init's: init watches it through a pidfd, and the
//! supervisor signals it directly.
//!
//! With [`SandboxSpec::egress`], init also listens on `127.0.0.1:<port>` in the sandbox's
//! network namespace and passes each accepted connection, as a descriptor, to the server
//! over the egress channel (see [`crate::EgressListener`]). It never blocks on the channel:
//! a connection the server is not ready to take is closed.

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::credentials::{self, CredentialsError};
use crate::message::SetupMessage;
use crate::netns;
use crate::process::{join_cgroups, namespaces, read_line, EnterError};
use crate::rootfs;
use crate::seccomp;
use crate::spec::{InitSpec, SandboxSpec};
use crate::sys;

/// The channel to the zygote.
const CHANNEL: RawFd = 0;
/// How long init waits for the spec and for `go`.
const WAIT: Duration = Duration::from_secs(30);

/// The program's `main`: never returns.
pub fn main() -> ! {
    let code = match run() {
        Ok(code) => code,
        Err(error) => {
            let _ = sys::write_all_raw(CHANNEL, &SetupMessage::err(error).encode());
            1
        }
    };
    sys::exit_now(code)
}

fn run() -> Result<i32, EnterError> {
    credentials::set_parent_death_kill().map_err(EnterError::SetParentDeathSignal)?;
    if nix::unistd::getpid().as_raw() != 1 {
        return Err(EnterError::NotPidOne);
    }
    // Not closed on the way out: `main` reports errors on it.
    let channel = std::mem::ManuallyDrop::new(sys::file_from_raw(CHANNEL));
    let line =
        read_line(&*channel, Instant::now() + WAIT).map_err(|message| EnterError::Setup {
            who: "the zygote",
            message,
        })?;
    let InitSpec {
        spec,
        mount_namespace_fd,
    } = InitSpec::from_json(line.as_bytes())?;
    let filters = seccomp::filters()?;
    let (sigchld, mut egress) = build(&spec, mount_namespace_fd, filters)?;
    (&*channel)
        .write_all(&SetupMessage::Ok.encode())
        .map_err(EnterError::Report)?;
    match read_line(&*channel, Instant::now() + WAIT).map(|line| SetupMessage::decode(&line)) {
        Ok(Ok(SetupMessage::Go)) => {}
        // The zygote gave up on this sandbox.
        _ => return Ok(1),
    }
    drop(std::mem::ManuallyDrop::into_inner(channel));
    // C is pid 2. If it is gone already, so is the reason to exist, unless the sandbox is
    // to outlive its first kernel.
    let kernel = match sys::pidfd_open(Pid::from_raw(2)) {
        _ if spec.outlive_kernel => None,
        Ok(kernel) => Some(kernel),
        Err(_) => return Ok(0),
    };
    match supervise(kernel.as_ref().map(AsFd::as_fd), &sigchld, &mut egress) {
        Ok(never) => match never {},
        Err(_) => Ok(1),
    }
}

/// The egress listener and the channel its connections go to.
struct Egress {
    listener: TcpListener,
    channel: OwnedFd,
}

/// Everything before `ok`; returns the `SIGCHLD` signalfd and the egress listener.
fn build(
    spec: &SandboxSpec,
    mount_namespace_fd: Option<RawFd>,
    filters: &[seccompiler::BpfProgram],
) -> Result<(SignalFd, Option<Egress>), EnterError> {
    // Nothing but the channel, /dev/null and what the spec names.
    let mut keep = vec![0, 1, 2, spec.workspace_fd];
    keep.extend(&spec.cgroup_fds);
    keep.extend(spec.egress.map(|e| e.channel_fd));
    keep.extend(mount_namespace_fd);
    sys::close_fds_except(&keep).map_err(EnterError::CloseFds)?;
    join_cgroups(&spec.cgroup_fds)?;
    // Taken in the host's mount namespace (`open_tree` clones only a mount of the caller's
    // own namespace); attached in the new one, where neither a path nor a bind from this fd
    // would work.
    sys::detach_tree_in_place(spec.workspace_fd).map_err(EnterError::DetachWorkspace)?;
    if let Some(fd) = mount_namespace_fd {
        // The zygote's private copy of the host's mounts, without the workspaces of the
        // other live sessions: the `unshare` below copies it rather than the host's.
        sys::setns(fd, libc::CLONE_NEWNS).map_err(EnterError::EnterMountNamespace)?;
        sys::close_raw(fd).map_err(EnterError::CloseFds)?;
    }
    nix::sched::unshare(namespaces()).map_err(|e| EnterError::Unshare(e.into()))?;
    netns::bound_socket_buffers(std::path::Path::new("/proc/sys"))?;
    rootfs::build(spec)?;
    nix::unistd::sethostname(&spec.hostname).map_err(|e| EnterError::SetHostname(e.into()))?;
    if spec.loopback {
        sys::set_interface_up("lo").map_err(EnterError::LoopbackUp)?;
    }
    // Bound before the kernel exists, so no code of the sandbox can take the port first.
    let egress = spec.egress.map(listen_egress).transpose()?;
    credentials::set_rlimits(&spec.rlimits)?;
    credentials::drop_to(spec.uid, spec.gid)?;
    // Unlike the kernel, init has no use for its own `/proc/1/*`, and the sandbox's code,
    // with the same uid, must not read or write them (`mem`, `exe`, `environ`).
    nix::sys::prctl::set_dumpable(false).map_err(|e| CredentialsError::Prctl {
        what: "PR_SET_DUMPABLE",
        source: e.into(),
    })?;
    let mut keep = vec![0, 1, 2];
    if let Some(egress) = &egress {
        keep.extend([egress.listener.as_raw_fd(), egress.channel.as_raw_fd()]);
    }
    sys::close_fds_except(&keep).map_err(EnterError::CloseFds)?;
    // The zygote started us with every signal blocked; only SIGCHLD stays so, for the
    // signalfd.
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
    sys::default_action(Signal::SIGCHLD).map_err(EnterError::Signals)?;
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&sigchld), None)
        .map_err(|e| EnterError::Signals(e.into()))?;
    let signals = SignalFd::with_flags(&sigchld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| EnterError::Signals(e.into()))?;
    seccomp::install(filters)?;
    Ok((signals, egress))
}

/// Opens the egress listener on `127.0.0.1:port` (non-blocking, like the channel).
fn listen_egress(spec: crate::EgressListener) -> Result<Egress, EnterError> {
    let error = |source| EnterError::EgressListen {
        port: spec.port,
        source,
    };
    let channel = sys::file_from_raw(spec.channel_fd);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, spec.port)).map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    let channel = OwnedFd::from(channel);
    nix::fcntl::fcntl(
        channel.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| error(e.into()))?;
    Ok(Egress { listener, channel })
}

/// Most connections taken per wakeup, so that reaping is never starved.
const ACCEPT_BATCH: usize = 64;

/// Reaps orphans until the kernel (`kernel`, a pidfd; never without one) exits; passes
/// egress connections on.
fn supervise(
    kernel: Option<std::os::fd::BorrowedFd<'_>>,
    sigchld: &SignalFd,
    egress: &mut Option<Egress>,
) -> nix::Result<Infallible> {
    loop {
        let mut fds = vec![PollFd::new(sigchld.as_fd(), PollFlags::POLLIN)];
        if let Some(kernel) = kernel {
            fds.push(PollFd::new(kernel, PollFlags::POLLIN));
        }
        if let Some(egress) = egress.as_ref() {
            fds.push(PollFd::new(egress.listener.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err),
        }
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        let child_exited = ready(&fds[0]);
        let kernel_gone = kernel.is_some() && ready(&fds[1]);
        let connections = egress.is_some() && fds.last().is_some_and(ready);
        drop(fds);
        if kernel_gone {
            sys::exit_now(0);
        }
        if child_exited {
            while let Ok(Some(_)) = sigchld.read_signal() {}
            reap();
        }
        if connections && !egress.as_ref().is_some_and(pass_connections) {
            // The server closed its end: nobody will take a connection again, so the port
            // is closed and connecting to it is refused at once.
            *egress = None;
        }
    }
}

/// Accepts what is waiting and sends each connection to the server; false once the channel
/// is closed.
fn pass_connections(egress: &Egress) -> bool {
    for _ in 0..ACCEPT_BATCH {
        let connection = match egress.listener.accept() {
            Ok((connection, _)) => connection,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
            // ECONNABORTED, EMFILE and the like: this one is lost, the next may do.
            Err(_) => return true,
        };
        let fds = [connection.as_raw_fd()];
        let sent = sendmsg::<()>(
            egress.channel.as_raw_fd(),
            &[io::IoSlice::new(b"c")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        );
        // Ours is closed either way: the server holds its own copy, or the client sees the
        // connection closed. EAGAIN (the channel is full) and ETOOMANYREFS (as many
        // connections in flight as the init's RLIMIT_NOFILE) mean the server is not keeping
        // up: this connection is dropped, the next may pass.
        drop(connection);
        use nix::errno::Errno;
        if let Err(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN | Errno::EBADF) = sent {
            return false;
        }
    }
    true
}

/// Reaps every zombie.
fn reap() {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}
