//! The zygotes: Python processes with the heavy libraries already imported that fork one
//! sandboxed kernel per request and never run user code themselves.
//!
//! There are several (`PYXIS_ZYGOTES`, one per core by default) so that sandboxes are made
//! on every core at once. Only the first is started from scratch; each other one is a fork
//! of a running zygote (a `clone` request), so its preloaded pages stay shared with the
//! first's and it is ready in a few milliseconds instead of seconds of imports.
//!
//! Each zygote is owned by one dedicated thread, a [`Worker`], with its control socket.
//! It must be a thread that lives as long as the server: the first zygote is started with
//! `PR_SET_PDEATHSIG`, which fires when the *thread* that forked it exits, so a short-lived
//! blocking-pool thread would take the zygote down with it. Every zygote, forked or not,
//! also exits when its control socket closes, so a server killed with SIGKILL leaves none.
//!
//! Spawn requests go to the worker with the fewest requests waiting; a request whose
//! zygote died under it is sent again to another one. A worker whose zygote died replaces
//! it with a fork of a living sibling (or, when none is left, a fresh start).

use std::collections::BTreeMap;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use pyxis_protocol::{encode, FrameDecoder, KernelExec, ZygoteEvent, ZygoteRequest};
use tokio::sync::oneshot;

use crate::runtime::Runtime;

/// Largest control frame accepted from the zygote.
const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Most zygotes (`PYXIS_ZYGOTES` is clamped to it).
pub const MAX_ZYGOTES: usize = 64;
/// How often an idle worker checks that its zygote is still there.
const IDLE_CHECK: Duration = Duration::from_millis(100);
/// Pause before a worker tries again after it could not get a zygote at all.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// Why a kernel could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The zygote is not running (it is starting or failed to start).
    #[error("the interpreter zygote is unavailable: {0}")]
    Unavailable(String),
    /// The sandbox could not be built.
    #[error("the sandbox could not be built: {0}")]
    Failed(String),
}

/// What the zygote reported about its Python.
#[derive(Debug, Clone, Default)]
pub struct ZygoteInfo {
    /// Python version.
    pub python: String,
    /// Preinstalled libraries and versions.
    pub libraries: BTreeMap<String, String>,
}

/// Which zygote made a kernel: if that zygote has died since, so has the kernel (its
/// death signal is bound to the zygote), and a caller still waiting for the kernel's
/// first message knows to try again (see [`Zygote::lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpawnTicket {
    worker: usize,
    generation: u64,
}

struct SpawnJob {
    spec: serde_json::Value,
    exec: Option<KernelExec>,
    fds: Vec<OwnedFd>,
    reply: oneshot::Sender<Result<(i32, u64), SpawnError>>,
}

/// A request for a sibling: the new zygote's control socket and pid.
struct CloneJob {
    reply: mpsc::Sender<anyhow::Result<(UnixStream, i32)>>,
}

enum Job {
    Spawn(SpawnJob),
    Clone(CloneJob),
}

/// One zygote's thread, as the other threads see it.
struct Worker {
    index: usize,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Requests sent to this worker and not yet answered.
    pending: AtomicUsize,
    /// Whether a zygote is serving (false while it is being replaced).
    alive: AtomicBool,
    /// Bumped each time the worker's zygote is replaced.
    generation: AtomicU64,
    /// Host pid of the zygote (0 when none).
    pid: AtomicI32,
    /// Kernels spawned by this worker.
    spawned: AtomicU64,
}

/// Counters of one zygote, for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZygoteStats {
    /// Its index (0 is the one started first).
    pub index: usize,
    /// Whether it is serving now.
    pub alive: bool,
    /// Host pid of its current process.
    pub pid: i32,
    /// How many times it was replaced.
    pub restarts: u64,
    /// Kernels it spawned.
    pub spawned: u64,
}

/// How a worker ranks for the next request (lower is better): dead, the one to avoid,
/// requests waiting.
type PickKey = (bool, bool, usize);

/// Handle to the zygote threads.
pub struct Zygote {
    workers: Vec<Arc<Worker>>,
    info: Arc<Mutex<Option<ZygoteInfo>>>,
    /// Round-robin start of the search for the least busy worker.
    next: AtomicUsize,
}

/// How to start the zygote process.
#[derive(Debug, Clone)]
pub struct ZygoteCommand {
    /// The runtime (interpreter and driver).
    pub runtime: Runtime,
    /// libpyxis_sandbox.so.
    pub sandbox_lib: std::path::PathBuf,
    /// How long the first import of the scientific stack may take
    /// (`PYXIS_ZYGOTE_READY_TIMEOUT_S`).
    pub ready_timeout: Duration,
    /// How long one spawn (or one clone) may take before the zygote is considered stuck
    /// (`PYXIS_SPAWN_TIMEOUT_S`).
    pub spawn_timeout: Duration,
    /// Environment the zygote, and so every kernel forked from it, starts with (the egress
    /// proxy's, see [`super::kernel_egress_env`]).
    pub kernel_env: std::collections::BTreeMap<String, String>,
}

impl Zygote {
    /// Start one zygote thread; returns once its zygote is ready (or failed to become
    /// ready). Same as [`Zygote::start_many`] with one zygote.
    pub fn start(cmd: ZygoteCommand) -> anyhow::Result<Arc<Zygote>> {
        Self::start_many(cmd, 1)
    }

    /// Start `count` zygote threads: the first zygote from scratch, the others as forks of
    /// it. Returns once all are ready; fails if the first could not start.
    pub fn start_many(cmd: ZygoteCommand, count: usize) -> anyhow::Result<Arc<Zygote>> {
        let count = count.clamp(1, MAX_ZYGOTES);
        // The workers report to the metrics recorder from their first moment.
        crate::metrics::handle();
        let info = Arc::new(Mutex::new(None));
        let mut receivers = Vec::with_capacity(count);
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::channel::<Job>();
            receivers.push(rx);
            workers.push(Arc::new(Worker {
                index,
                jobs: Mutex::new(tx),
                pending: AtomicUsize::new(0),
                alive: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                pid: AtomicI32::new(0),
                spawned: AtomicU64::new(0),
            }));
        }
        let workers: Arc<[Arc<Worker>]> = workers.into();
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
        // The first worker starts alone: the others fork its zygote.
        let mut receivers = receivers.into_iter();
        for index in 0..count {
            let Some(rx) = receivers.next() else { break };
            let ctx = ThreadCtx {
                cmd: cmd.clone(),
                me: workers[index].clone(),
                peers: workers.clone(),
                info: info.clone(),
            };
            let ready = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("pyxis-zygote-{index}"))
                .spawn(move || run_thread(ctx, rx, ready))?;
            if index == 0 {
                match ready_rx.recv() {
                    Ok((_, Ok(()))) => {}
                    Ok((_, Err(e))) => anyhow::bail!("the Python zygote did not start: {e}"),
                    Err(_) => anyhow::bail!("the zygote thread ended"),
                }
            }
        }
        drop(ready_tx);
        for _ in 1..count {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(e))) => {
                    // It keeps trying in its thread; the others serve meanwhile.
                    tracing::warn!(index, error = %e, "a zygote did not start; retrying");
                }
                Err(_) => break,
            }
        }
        tracing::info!(zygotes = count, "zygotes ready");
        Ok(Arc::new(Zygote {
            workers: workers.to_vec(),
            info,
            next: AtomicUsize::new(0),
        }))
    }

    /// The zygote's report on its Python and libraries.
    pub fn info(&self) -> ZygoteInfo {
        self.info
            .lock()
            .map(|i| i.clone().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Counters of every zygote.
    pub fn stats(&self) -> Vec<ZygoteStats> {
        self.workers
            .iter()
            .map(|w| ZygoteStats {
                index: w.index,
                alive: w.alive.load(Ordering::Acquire),
                pid: w.pid.load(Ordering::Acquire),
                restarts: w.generation.load(Ordering::Acquire),
                spawned: w.spawned.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// How many zygotes there are.
    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// The worker to send the next request to: a living one with the fewest requests
    /// waiting (ties go round-robin), avoiding `not` when another is alive.
    fn pick(&self, not: Option<usize>) -> &Arc<Worker> {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(&Arc<Worker>, PickKey)> = None;
        for k in 0..n {
            let w = &self.workers[(start + k) % n];
            // Lower is better: alive first, then not the excluded one, then least pending.
            let key = (
                !w.alive.load(Ordering::Acquire),
                Some(w.index) == not,
                w.pending.load(Ordering::Acquire),
            );
            if best.as_ref().is_none_or(|(_, b)| key < *b) {
                best = Some((w, key));
            }
        }
        // `n >= 1`, so there is always a best.
        best.map_or(&self.workers[0], |(w, _)| w)
    }

    /// Fork a kernel into a sandbox built from `spec`, handing it `fds` (the kernel
    /// socket's peer first, then what the spec expects, in the zygote's order).
    /// Returns the host pid of the sandbox's kernel.
    pub async fn spawn(
        &self,
        spec: serde_json::Value,
        fds: Vec<OwnedFd>,
    ) -> Result<i32, SpawnError> {
        self.spawn_tracked(spec, fds, None)
            .await
            .map(|(pid, _)| pid)
    }

    /// [`Zygote::spawn`], also saying which zygote made the kernel, whose process runs
    /// `exec` instead of the Python kernel when given. A request whose zygote dies before it
    /// answers is sent again to another zygote, with copies of the same descriptors.
    pub async fn spawn_tracked(
        &self,
        spec: serde_json::Value,
        fds: Vec<OwnedFd>,
        exec: Option<KernelExec>,
    ) -> Result<(i32, SpawnTicket), SpawnError> {
        let attempts = self.workers.len() + 1;
        let mut last = None;
        let mut not = None;
        for _ in 0..attempts {
            let copies = fds
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| SpawnError::Unavailable(format!("dup: {e}")))?;
            let worker = self.pick(not);
            let (reply, rx) = oneshot::channel();
            let job = Job::Spawn(SpawnJob {
                spec: spec.clone(),
                exec: exec.clone(),
                fds: copies,
                reply,
            });
            worker.pending.fetch_add(1, Ordering::AcqRel);
            let sent = worker
                .jobs
                .lock()
                .map_err(|_| SpawnError::Unavailable("zygote handle poisoned".into()))?
                .send(job);
            let answer = match sent {
                Ok(()) => rx.await.unwrap_or_else(|_| {
                    Err(SpawnError::Unavailable(
                        "zygote thread dropped the request".into(),
                    ))
                }),
                Err(_) => {
                    worker.pending.fetch_sub(1, Ordering::AcqRel);
                    Err(SpawnError::Unavailable("zygote thread ended".into()))
                }
            };
            match answer {
                Ok((pid, generation)) => {
                    let ticket = SpawnTicket {
                        worker: worker.index,
                        generation,
                    };
                    return Ok((pid, ticket));
                }
                Err(SpawnError::Unavailable(e)) => {
                    tracing::warn!(zygote = worker.index, error = %e, "spawn retried on another zygote");
                    not = Some(worker.index);
                    last = Some(SpawnError::Unavailable(e));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| SpawnError::Unavailable("no zygote answered".into())))
    }

    /// Whether the zygote that made the kernel of `ticket` has died (and so the kernel).
    pub fn lost(&self, ticket: SpawnTicket) -> bool {
        self.workers.get(ticket.worker).is_none_or(|w| {
            w.generation.load(Ordering::Acquire) != ticket.generation
                || !w.alive.load(Ordering::Acquire)
        })
    }
}

/// A running zygote: the first one is our child; a fork of another zygote is not, and is
/// killed through a pidfd.
struct Running {
    process: Process,
    pid: i32,
    sock: UnixStream,
    dec: FrameDecoder,
}

enum Process {
    Child(Child),
    Sibling { pidfd: Option<OwnedFd> },
}

impl Running {
    fn new(process: Process, pid: i32, sock: UnixStream) -> Self {
        Self {
            process,
            pid,
            sock,
            dec: FrameDecoder::new(MAX_CONTROL_FRAME),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        match &mut self.process {
            Process::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            // Its parent (another zygote) reaps it.
            Process::Sibling { pidfd: Some(fd) } => pidfd_kill(fd),
            Process::Sibling { pidfd: None } => {}
        }
    }
}

/// A pidfd of `pid`, taken right after the zygote that forked it named it (it cannot have
/// been reaped and reused before: the sibling has not exited, or its control socket would
/// have said so first).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    let fd = i32::try_from(fd).ok()?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIGKILL through a pidfd (never hits a reused pid).
fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, a signal number, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// What one worker thread needs.
struct ThreadCtx {
    cmd: ZygoteCommand,
    me: Arc<Worker>,
    peers: Arc<[Arc<Worker>]>,
    info: Arc<Mutex<Option<ZygoteInfo>>>,
}

impl ThreadCtx {
    /// A new zygote for this worker: a fork of a living sibling, else a fresh start.
    fn obtain(&self) -> anyhow::Result<Running> {
        let n = self.peers.len();
        for k in 1..n {
            let peer = &self.peers[(self.me.index + k) % n];
            if !peer.alive.load(Ordering::Acquire) {
                continue;
            }
            match clone_from(peer, self.cmd.spawn_timeout) {
                Ok(z) => return Ok(z),
                Err(e) => {
                    tracing::warn!(from = peer.index, error = %e, "forking a zygote failed");
                }
            }
        }
        let (z, zi) = start_process(&self.cmd)?;
        if let Ok(mut slot) = self.info.lock() {
            *slot = Some(zi);
        }
        Ok(z)
    }
}

/// Ask `peer`'s zygote for a fork of itself.
fn clone_from(peer: &Worker, timeout: Duration) -> anyhow::Result<Running> {
    let (tx, rx) = mpsc::channel();
    peer.pending.fetch_add(1, Ordering::AcqRel);
    let sent = peer
        .jobs
        .lock()
        .map_err(|_| anyhow::anyhow!("zygote handle poisoned"))?
        .send(Job::Clone(CloneJob { reply: tx }));
    if sent.is_err() {
        peer.pending.fetch_sub(1, Ordering::AcqRel);
        anyhow::bail!("the zygote thread ended");
    }
    let (sock, pid) = rx.recv_timeout(timeout * 2)??;
    let pidfd = pidfd_open(pid);
    sock.set_read_timeout(Some(timeout))?;
    let mut z = Running::new(Process::Sibling { pidfd }, pid, sock);
    match read_event(&mut z)? {
        ZygoteEvent::Ready { .. } => Ok(z),
        other => anyhow::bail!("unexpected first message from a forked zygote: {other:?}"),
    }
}

fn run_thread(
    ctx: ThreadCtx,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<(usize, Result<(), String>)>,
) {
    let me = ctx.me.clone();
    let mut first = Some(ready);
    let mut next_id: u64 = 0;
    loop {
        let mut z = match ctx.obtain() {
            Ok(z) => z,
            Err(e) => {
                tracing::error!(zygote = me.index, error = %e, "zygote failed to start");
                if let Some(r) = first.take() {
                    let _ = r.send((me.index, Err(e.to_string())));
                    if me.index == 0 {
                        return;
                    }
                }
                fail_queued(&me, &jobs, &e.to_string());
                std::thread::sleep(RESTART_BACKOFF);
                continue;
            }
        };
        let pid = z.pid;
        me.pid.store(pid, Ordering::Release);
        me.alive.store(true, Ordering::Release);
        crate::metrics::zygote_alive(me.index, true);
        tracing::info!(zygote = me.index, pid, "zygote serving");
        if let Some(r) = first.take() {
            let _ = r.send((me.index, Ok(())));
        }
        loop {
            let job = match jobs.recv_timeout(IDLE_CHECK) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // A zygote that died while idle is replaced now, not at the next
                    // request (which would wait for the replacement).
                    match check_idle(&mut z) {
                        Ok(()) => continue,
                        Err(e) => {
                            replace(&me, z, &jobs, &e);
                            break;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return, // server shutting down
            };
            next_id += 1;
            let lost = match job {
                Job::Spawn(job) => {
                    let generation = me.generation.load(Ordering::Acquire);
                    let res = spawn_one(&mut z, next_id, job.spec, job.exec, &job.fds);
                    me.pending.fetch_sub(1, Ordering::AcqRel);
                    match res {
                        Ok(result) => {
                            if result.is_ok() {
                                me.spawned.fetch_add(1, Ordering::Relaxed);
                                crate::metrics::zygote_spawned(me.index);
                            }
                            let _ = job.reply.send(result.map(|pid| (pid, generation)));
                            None
                        }
                        Err(e) => {
                            let _ = job
                                .reply
                                .send(Err(SpawnError::Unavailable("the zygote died".into())));
                            Some(e)
                        }
                    }
                }
                Job::Clone(job) => {
                    let res = clone_one(&mut z, next_id);
                    me.pending.fetch_sub(1, Ordering::AcqRel);
                    match res {
                        Ok(result) => {
                            let _ = job.reply.send(result);
                            None
                        }
                        Err(e) => {
                            let _ = job.reply.send(Err(anyhow::anyhow!("the zygote died")));
                            Some(e)
                        }
                    }
                }
            };
            if let Some(e) = lost {
                replace(&me, z, &jobs, &e);
                break;
            }
        }
    }
}

/// The worker's zygote is gone: mark it so, kill what is left of it, and send what was
/// queued for it elsewhere (the callers retry).
fn replace(me: &Worker, z: Running, jobs: &mpsc::Receiver<Job>, e: &anyhow::Error) {
    me.alive.store(false, Ordering::Release);
    me.pid.store(0, Ordering::Release);
    me.generation.fetch_add(1, Ordering::AcqRel);
    crate::metrics::zygote_alive(me.index, false);
    tracing::error!(zygote = me.index, error = %e, "zygote connection lost; replacing it");
    drop(z);
    fail_queued(me, jobs, "the zygote died");
}

/// Between requests: has the zygote closed its socket (died)?
fn check_idle(z: &mut Running) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(z.sock.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::ZERO)? == 0 {
        return Ok(());
    }
    // Readable between requests: EOF (an error here), or a stray message.
    let ev = read_event(z)?;
    tracing::warn!(?ev, "unexpected zygote message between requests");
    Ok(())
}

/// Answer every queued request with an error, so its caller tries another zygote.
fn fail_queued(me: &Worker, jobs: &mpsc::Receiver<Job>, why: &str) {
    while let Ok(job) = jobs.try_recv() {
        me.pending.fetch_sub(1, Ordering::AcqRel);
        match job {
            Job::Spawn(j) => {
                let _ = j.reply.send(Err(SpawnError::Unavailable(why.to_string())));
            }
            Job::Clone(j) => {
                let _ = j.reply.send(Err(anyhow::anyhow!("{why}")));
            }
        }
    }
}

fn start_process(cmd: &ZygoteCommand) -> anyhow::Result<(Running, ZygoteInfo)> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs_fd = theirs.as_raw_fd();
    let rt = &cmd.runtime;
    let mut command = Command::new(rt.python());
    command
        .args(["-m", "pyxis_runtime.zygote"])
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:/usr/local/bin:/usr/bin:/bin",
                rt.dir.join("venv/bin").display()
            ),
        )
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("HOME", rt.mpl_dir())
        .env("MPLBACKEND", "Agg")
        .env("MPLCONFIGDIR", rt.mpl_dir())
        .env("PYTHONPATH", rt.lib_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYXIS_SANDBOX_LIB", &cmd.sandbox_lib)
        .envs(&cmd.kernel_env)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, dup2, fcntl).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if theirs_fd == 3 {
                // Already in place: just clear close-on-exec.
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(theirs);
    ours.set_read_timeout(Some(cmd.ready_timeout))?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    let mut z = Running::new(Process::Child(child), pid, ours);
    let first = read_event(&mut z).map_err(|e| {
        match e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) {
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => anyhow::anyhow!(
                "it did not report ready within {:?} (PYXIS_ZYGOTE_READY_TIMEOUT_S)",
                cmd.ready_timeout
            ),
            _ => e,
        }
    })?;
    match first {
        ZygoteEvent::Ready {
            pid,
            python,
            libraries,
        } => {
            tracing::info!(pid, %python, "zygote ready");
            z.sock.set_read_timeout(Some(cmd.spawn_timeout))?;
            Ok((z, ZygoteInfo { python, libraries }))
        }
        other => anyhow::bail!("unexpected first message from the zygote: {other:?}"),
    }
}

fn read_event(z: &mut Running) -> anyhow::Result<ZygoteEvent> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(ev) = z.dec.next_message::<ZygoteEvent>()? {
            return Ok(ev);
        }
        let n = z.sock.read(&mut buf)?;
        if n == 0 {
            anyhow::bail!("the zygote closed its control socket");
        }
        z.dec.extend(&buf[..n]);
    }
}

/// One frame with descriptors attached.
fn send_with_fds(z: &mut Running, req: &ZygoteRequest, fds: &[i32]) -> anyhow::Result<()> {
    let frame = encode(req)?;
    let cmsg = [ControlMessage::ScmRights(fds)];
    let sent = sendmsg::<()>(
        z.sock.as_raw_fd(),
        &[IoSlice::new(&frame)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent < frame.len() {
        z.sock.write_all(&frame[sent..])?;
    }
    Ok(())
}

fn spawn_one(
    z: &mut Running,
    id: u64,
    spec: serde_json::Value,
    exec: Option<KernelExec>,
    fds: &[OwnedFd],
) -> anyhow::Result<Result<i32, SpawnError>> {
    let id = id.to_string();
    let fds: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    send_with_fds(
        z,
        &ZygoteRequest::Spawn {
            id: id.clone(),
            spec,
            exec,
        },
        &fds,
    )?;
    loop {
        match read_event(z)? {
            ZygoteEvent::Spawned { id: got, pid } if got == id => return Ok(Ok(pid)),
            ZygoteEvent::SpawnFailed { id: got, error } if got == id => {
                return Ok(Err(SpawnError::Failed(error)))
            }
            ZygoteEvent::Error { error } => {
                tracing::warn!(%error, "zygote reported an error");
            }
            other => tracing::warn!(?other, "unexpected zygote message"),
        }
    }
}

/// Ask this zygote to fork a sibling: its control socket and pid.
fn clone_one(z: &mut Running, id: u64) -> anyhow::Result<anyhow::Result<(UnixStream, i32)>> {
    let id = id.to_string();
    let (ours, theirs) = UnixStream::pair()?;
    send_with_fds(
        z,
        &ZygoteRequest::Clone { id: id.clone() },
        &[theirs.as_raw_fd()],
    )?;
    drop(theirs);
    loop {
        match read_event(z)? {
            ZygoteEvent::Cloned { id: got, pid } if got == id => return Ok(Ok((ours, pid))),
            ZygoteEvent::SpawnFailed { id: got, error } if got == id => {
                return Ok(Err(anyhow::anyhow!("{error}")))
            }
            ZygoteEvent::Error { error } => {
                tracing::warn!(%error, "zygote reported an error");
            }
            other => tracing::warn!(?other, "unexpected zygote message"),
        }
    }
}
