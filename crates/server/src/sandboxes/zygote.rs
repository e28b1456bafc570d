//! The zygote: a Python process with the heavy libraries already imported that
//! forks one sandboxed kernel per request and never runs user code itself.
//!
//! One dedicated thread owns the zygote process and its control socket. It must
//! be a thread that lives as long as the server: the zygote is started with
//! `PR_SET_PDEATHSIG`, which fires when the *thread* that forked it exits, so a
//! short-lived blocking-pool thread would take the zygote down with it. Spawn
//! requests reach the thread over a channel; if the zygote dies, the thread
//! starts a new one.

use std::collections::BTreeMap;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use pyxis_protocol::{encode, FrameDecoder, ZygoteEvent, ZygoteRequest};
use tokio::sync::oneshot;

use crate::runtime::Runtime;

/// Largest control frame accepted from the zygote.
const MAX_CONTROL_FRAME: usize = 1 << 20;
/// How long one spawn may take before the zygote is considered stuck.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

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

struct SpawnJob {
    spec: serde_json::Value,
    fds: Vec<OwnedFd>,
    reply: oneshot::Sender<Result<i32, SpawnError>>,
}

/// Handle to the zygote thread.
pub struct Zygote {
    jobs: Mutex<mpsc::Sender<SpawnJob>>,
    info: Arc<Mutex<Option<ZygoteInfo>>>,
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
}

impl Zygote {
    /// Start the zygote thread; returns once the first zygote is ready (or
    /// failed to become ready).
    pub fn start(cmd: ZygoteCommand) -> anyhow::Result<Arc<Zygote>> {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let info = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let info2 = info.clone();
        std::thread::Builder::new()
            .name("pyxis-zygote".into())
            .spawn(move || run_thread(cmd, rx, info2, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Arc::new(Zygote {
                jobs: Mutex::new(tx),
                info,
            })),
            Ok(Err(e)) => anyhow::bail!("the Python zygote did not start: {e}"),
            Err(_) => anyhow::bail!("the zygote thread ended"),
        }
    }

    /// The zygote's report on its Python and libraries.
    pub fn info(&self) -> ZygoteInfo {
        self.info
            .lock()
            .map(|i| i.clone().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Fork a kernel into a sandbox built from `spec`, handing it `fds` (the kernel
    /// socket's peer first, then what the spec expects, in the zygote's order).
    /// Returns the host pid of the sandbox's kernel.
    pub async fn spawn(
        &self,
        spec: serde_json::Value,
        fds: Vec<OwnedFd>,
    ) -> Result<i32, SpawnError> {
        let (reply, rx) = oneshot::channel();
        let job = SpawnJob { spec, fds, reply };
        self.jobs
            .lock()
            .map_err(|_| SpawnError::Unavailable("zygote handle poisoned".into()))?
            .send(job)
            .map_err(|_| SpawnError::Unavailable("zygote thread ended".into()))?;
        rx.await
            .map_err(|_| SpawnError::Unavailable("zygote thread dropped the request".into()))?
    }
}

struct Running {
    child: Child,
    sock: UnixStream,
    dec: FrameDecoder,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_thread(
    cmd: ZygoteCommand,
    jobs: mpsc::Receiver<SpawnJob>,
    info: Arc<Mutex<Option<ZygoteInfo>>>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let mut first = Some(ready);
    let mut next_id: u64 = 0;
    loop {
        let mut z = match start_process(&cmd) {
            Ok((z, zi)) => {
                if let Ok(mut slot) = info.lock() {
                    *slot = Some(zi);
                }
                if let Some(r) = first.take() {
                    let _ = r.send(Ok(()));
                }
                z
            }
            Err(e) => {
                tracing::error!(error = %e, "zygote failed to start");
                if let Some(r) = first.take() {
                    let _ = r.send(Err(e.to_string()));
                    return;
                }
                // Fail queued requests rather than leave them hanging, then retry.
                while let Ok(job) = jobs.try_recv() {
                    let _ = job.reply.send(Err(SpawnError::Unavailable(e.to_string())));
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            let Ok(job) = jobs.recv() else {
                return; // server shutting down
            };
            next_id += 1;
            match spawn_one(&mut z, next_id, job.spec, &job.fds) {
                Ok(result) => {
                    let _ = job.reply.send(result);
                }
                Err(e) => {
                    tracing::error!(error = %e, "zygote connection lost; restarting it");
                    let _ = job
                        .reply
                        .send(Err(SpawnError::Unavailable("the zygote restarted".into())));
                    break;
                }
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
    let mut z = Running {
        child,
        sock: ours,
        dec: FrameDecoder::new(MAX_CONTROL_FRAME),
    };
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
            z.sock.set_read_timeout(Some(SPAWN_TIMEOUT))?;
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

fn spawn_one(
    z: &mut Running,
    id: u64,
    spec: serde_json::Value,
    fds: &[OwnedFd],
) -> anyhow::Result<Result<i32, SpawnError>> {
    let id = id.to_string();
    let frame = encode(&ZygoteRequest::Spawn {
        id: id.clone(),
        spec,
    })?;
    let fds: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
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
