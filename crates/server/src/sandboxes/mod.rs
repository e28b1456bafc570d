//! Sandboxes: a cgroup, a workspace and a uid, with a kernel forked into them
//! by the zygote. This is the supervisor: it turns "a sandbox with these
//! limits" into a `SandboxSpec` and hands it off; the sandbox crate and the
//! zygote do the privileged work.
//!
//! The services see sandboxes through two traits, [`Launcher`] (makes them) and
//! [`SandboxHandle`] (one of them), so that handlers and doors can be tested in-process
//! against a fake launcher; [`SandboxFactory`] is the real one.

#[cfg(test)]
pub mod fake;
pub mod joined;
pub mod kernel;
pub mod zygote;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use pyxis_protocol::KernelEvent;
use pyxis_sandbox::{
    Cgroup, CgroupRoot, CgroupUsage, ResourceLimits, Rlimits, SandboxSpec, Workspace,
};

use futures_util::future::BoxFuture;

use crate::config::Config;
use crate::services::egress::{Proxy, SessionEgress, EGRESS_PORT};
use joined::{ExecRequest, Joined};
use kernel::{KernelConn, KernelError};
use zygote::{SpawnError, Zygote, ZygoteInfo};

pub use pyxis_protocol::KernelExec;

/// A new sandbox and the connection to its kernel, which has said it is ready.
pub type Created = (Arc<dyn SandboxHandle>, KernelConn);

/// Makes and destroys sandboxes (the real one is [`SandboxFactory`]).
pub trait Launcher: Send + Sync {
    /// Make a sandbox with a running kernel: the zygote's Python kernel, or `kernel`, which
    /// the sandbox's kernel process executes in its place (see [`KernelExec`]).
    fn create<'a>(
        &'a self,
        limits: &'a ResourceLimits,
        kernel: Option<&'a KernelExec>,
    ) -> BoxFuture<'a, Result<Created, SandboxError>>;
    /// Kill everything in the sandbox and remove its cgroup and workspace.
    fn destroy(&self, sb: Arc<dyn SandboxHandle>) -> BoxFuture<'_, ()>;
    /// The default resource limits.
    fn default_limits(&self) -> ResourceLimits;
    /// The cgroup version in use, for capabilities (`v1`, `v2`).
    fn cgroup_version(&self) -> String;
    /// The interpreter's version and preinstalled libraries.
    fn runtime_info(&self) -> ZygoteInfo;
    /// Waits, up to `limit`, until every sandbox made so far has been destroyed.
    fn wait_all_released(&self, limit: std::time::Duration) -> BoxFuture<'_, bool>;
    /// Kill and remove every sandbox of this instance (at shutdown).
    fn cleanup_all(&self) -> BoxFuture<'_, ()>;
    /// The egress proxy the sandboxes reach, if there is one.
    fn egress_proxy(&self) -> Option<Proxy> {
        None
    }
}

/// One sandbox, as the services use it.
pub trait SandboxHandle: Send + Sync {
    /// Random id; also the session id.
    fn id(&self) -> &str;
    /// Send SIGINT to the kernel.
    fn interrupt(&self);
    /// Kill every process in the sandbox (the workspace stays).
    fn kill_processes(self: Arc<Self>) -> BoxFuture<'static, ()>;
    /// Fork a fresh kernel into the sandbox (first start or restart): the zygote's Python
    /// kernel, or `kernel` executed in its place.
    fn start_kernel(
        self: Arc<Self>,
        kernel: Option<KernelExec>,
    ) -> BoxFuture<'static, Result<KernelConn, SandboxError>>;
    /// How many times the OOM killer struck in this sandbox.
    fn oom_kills(&self) -> u64;
    /// Memory, processes and CPU used.
    fn usage(&self) -> Option<CgroupUsage>;
    /// The uid (and gid) the sandbox runs as and owns its workspace with.
    fn uid(&self) -> u32;
    /// Host path of the workspace.
    fn workspace_path(&self) -> &Path;
    /// Bytes used and quota of the workspace.
    fn disk_usage(&self) -> Option<(u64, u64)>;
    /// Change the cgroup limits (a pooled sandbox taken with custom limits).
    fn set_limits(&self, limits: &ResourceLimits) -> Result<(), SandboxError>;
    /// The handle as `Any`, for the launcher that made it.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
    /// The sandbox's side of the egress proxy (policy, limits), if it has one.
    fn egress(&self) -> Option<Arc<SessionEgress>> {
        None
    }
    /// Start one more process inside the sandbox (the join path, see [`joined`]): a
    /// command, or the kernel of another context.
    fn exec(self: Arc<Self>, req: ExecRequest) -> BoxFuture<'static, Result<Joined, SandboxError>> {
        let _ = req;
        Box::pin(async {
            Err(SandboxError::Exec(
                "this sandbox cannot start processes".into(),
            ))
        })
    }
    /// [`SandboxHandle::exec`] of a kernel (with a framed socket at its fd 3): returns once
    /// it has said it is ready.
    fn start_context(
        self: Arc<Self>,
        req: ExecRequest,
    ) -> BoxFuture<'static, Result<(KernelConn, Joined), SandboxError>> {
        let _ = req;
        Box::pin(async {
            Err(SandboxError::Exec(
                "this sandbox cannot start contexts".into(),
            ))
        })
    }
    /// Kill only the kernel the zygote forked (the first context), not the sandbox.
    fn kill_first_kernel(&self) {}
}

/// Read-only host paths every sandbox sees at the same place.
const HOST_RO_BINDS: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/alternatives",
    "/etc/fonts",
    "/etc/localtime",
    "/etc/mime.types",
    // The document tools' own configuration (ImageMagick's delegates and policy,
    // LibreOffice's sofficerc and registry, Ghostscript's font maps) and fontconfig's
    // system cache, so fonts are not scanned again in every sandbox. Writable state
    // goes to the sandbox's /tmp (see runtime/python/pyxis_runtime/sysenv.py).
    "/etc/ImageMagick-6",
    "/etc/libreoffice",
    "/etc/ghostscript",
    "/var/cache/fontconfig",
];
/// Paths inside the sandbox that lead to the workspace (names used by the
/// services Pyxis replaces, and E2B's home directory).
const WORKSPACE_ALIASES: &[&str] = &["/sandbox", "/code", "/home/user"];
/// Inodes per MiB of workspace quota (bounds inode exhaustion).
const INODES_PER_MIB: u64 = 64;
/// The empty host directory every sandbox mounts its root tmpfs on (each in its own mount
/// namespace, so one directory serves them all).
const ROOT_MOUNTPOINT: &str = "/run/pyxis/root";

/// Why a sandbox could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Creating or changing the cgroup failed.
    #[error("cgroup: {0}")]
    Cgroup(#[from] pyxis_sandbox::CgroupError),
    /// Creating the workspace failed.
    #[error("workspace: {0}")]
    Workspace(#[from] pyxis_sandbox::WorkspaceError),
    /// Forking the kernel failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The kernel did not come up.
    #[error("kernel did not start: {0}")]
    Kernel(#[from] KernelError),
    /// Socket setup failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// No uid is free (more sandboxes than configured).
    #[error("no free sandbox slot")]
    NoSlot,
    /// A blocking task failed.
    #[error("internal: {0}")]
    Internal(String),
    /// A process could not be started inside the sandbox (the program is missing, the
    /// directory cannot be entered, …): the message is the client's.
    #[error("{0}")]
    Exec(String),
    /// A context's kernel started but did not report ready (it died, often of the
    /// session's memory limit, or timed out): the message is the client's.
    #[error("{0}")]
    ContextStart(String),
}

/// Makes and destroys sandboxes.
pub struct SandboxFactory {
    shared: Arc<Shared>,
    cgroups: CgroupRoot,
    /// Which uid slots are in use, and where the next search starts.
    slots: Mutex<(Vec<bool>, usize)>,
    workspaces: PathBuf,
}

/// What every sandbox needs to (re)start its kernel.
struct Shared {
    cfg: Arc<Config>,
    zygote: Arc<Zygote>,
    root_mountpoint: PathBuf,
    ro_binds: Vec<PathBuf>,
    /// The egress proxy every sandbox's listener leads to.
    egress: Option<Proxy>,
}

/// One sandbox: its cgroup, workspace and uid. The kernel process lives in it
/// and can be replaced (restart) without losing the workspace.
pub struct Sandbox {
    /// Random id; also the session id.
    pub id: String,
    slot: usize,
    uid: u32,
    cgroup: Cgroup,
    workspace: Workspace,
    kernel_pid: AtomicI32,
    /// A pidfd of the sandbox's init, found when its first kernel started.
    init: Mutex<Option<Arc<OwnedFd>>>,
    shared: Arc<Shared>,
    /// Its side of the egress proxy: outlives kernel restarts, closed with the sandbox.
    egress: Option<Arc<SessionEgress>>,
}

impl Sandbox {
    /// Host pid of the sandbox's kernel (0 when none runs).
    pub fn kernel_pid(&self) -> i32 {
        self.kernel_pid.load(Ordering::Acquire)
    }
}

impl SandboxHandle for Sandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn interrupt(&self) {
        let pid = self.kernel_pid();
        if pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
    }

    fn kill_processes(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.kernel_pid.store(0, Ordering::Release);
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = self.cgroup.kill() {
                    tracing::error!(error = %e, id = %self.id, "killing the sandbox failed");
                }
            })
            .await;
        })
    }

    fn start_kernel(
        self: Arc<Self>,
        kernel: Option<KernelExec>,
    ) -> BoxFuture<'static, Result<KernelConn, SandboxError>> {
        Box::pin(async move {
            self.shared
                .clone()
                .start_kernel(&self, kernel.as_ref())
                .await
        })
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.oom_kills().unwrap_or(0)
    }

    fn usage(&self) -> Option<CgroupUsage> {
        self.cgroup.usage().ok()
    }

    fn uid(&self) -> u32 {
        self.uid
    }

    fn workspace_path(&self) -> &Path {
        self.workspace.path()
    }

    fn disk_usage(&self) -> Option<(u64, u64)> {
        self.workspace.usage().ok()
    }

    fn set_limits(&self, limits: &ResourceLimits) -> Result<(), SandboxError> {
        Ok(self.cgroup.set_limits(limits)?)
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    fn egress(&self) -> Option<Arc<SessionEgress>> {
        self.egress.clone()
    }

    fn exec(self: Arc<Self>, req: ExecRequest) -> BoxFuture<'static, Result<Joined, SandboxError>> {
        Box::pin(async move { self.exec_joined(req).await })
    }

    fn start_context(
        self: Arc<Self>,
        mut req: ExecRequest,
    ) -> BoxFuture<'static, Result<(KernelConn, Joined), SandboxError>> {
        Box::pin(async move {
            req.kernel_socket = true;
            let mut joined = self.exec_joined(req).await?;
            let stream = joined
                .kernel
                .take()
                .ok_or_else(|| SandboxError::Internal("no kernel socket".into()))?;
            let mut conn = KernelConn::new(stream, self.shared.max_frame());
            let first =
                tokio::time::timeout(std::time::Duration::from_secs(30), conn.next_event()).await;
            match first {
                Ok(Ok(KernelEvent::Ready {})) => Ok((conn, joined)),
                other => {
                    joined.signal_group(nix::sys::signal::Signal::SIGKILL);
                    tracing::warn!(?other, "a context's kernel did not start");
                    let why = match other {
                        Err(_) => "it did not report ready within 30 s",
                        Ok(Err(_)) => "it exited before it was ready",
                        Ok(Ok(_)) => "it sent something other than ready",
                    };
                    Err(SandboxError::ContextStart(format!(
                        "the context's kernel did not start: {why}"
                    )))
                }
            }
        })
    }

    fn kill_first_kernel(&self) {
        let pid = self.kernel_pid.swap(0, Ordering::AcqRel);
        if pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Sandbox {
    /// Starts `req` inside this sandbox through `pyxis-sandbox-exec`.
    async fn exec_joined(&self, req: ExecRequest) -> Result<Joined, SandboxError> {
        let init = self
            .init
            .lock()
            .ok()
            .and_then(|i| i.clone())
            .ok_or_else(|| SandboxError::Exec("the sandbox is not running".into()))?;
        let program = self.shared.cfg.sandbox_exec();
        let mut env = self.shared.joined_env();
        if self.egress.is_some() {
            env.extend(pyxis_egress::sandbox_env(EGRESS_PORT));
        }
        let target = joined::JoinTarget {
            program: &program,
            init: &init,
            cgroup_procs: self.cgroup.procs_files(),
            uid: self.uid,
            rlimits: self.shared.rlimits(),
            env,
        };
        joined::exec(target, req).await
    }
}

impl SandboxFactory {
    /// Prepare the instance's cgroup tree and directories, and clean up what an
    /// earlier, killed run of this instance left behind.
    pub fn new(cfg: Arc<Config>, zygote: Arc<Zygote>) -> anyhow::Result<Self> {
        use anyhow::Context;
        if cfg.cgroup_favordynmods {
            match pyxis_sandbox::favor_dynamic_modifications() {
                Ok(state) => tracing::info!(?state, "cgroup favordynmods"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not set favordynmods on the cgroup2 mount; creating a sandbox \
                     waits for an RCU grace period"
                ),
            }
        }
        let cgroups = CgroupRoot::detect(&format!("pyxis/{}", instance_name(&cfg.data_dir)))
            .context("setting up cgroups")?;
        if let Err(e) = cgroups.set_cpu_weight(cfg.sandbox_cpu_weight) {
            tracing::warn!(error = %e, "could not set the sandboxes' CPU weight");
        }
        let left = cgroups
            .cleanup_leftovers()
            .context("cleaning up leftover cgroups")?;
        let workspaces = cfg.data_dir.join("workspaces");
        std::fs::create_dir_all(&workspaces).context("creating the workspaces dir")?;
        let left_ws =
            Workspace::cleanup_leftovers(&workspaces).context("cleaning up leftover workspaces")?;
        if left + left_ws > 0 {
            tracing::warn!(
                cgroups = left,
                workspaces = left_ws,
                "cleaned up what an earlier run left behind"
            );
        }
        // Outside the data dir: the path travels to the zygote, and so into every kernel's
        // memory. Each sandbox mounts its root there in its own mount namespace only.
        let root_mountpoint = PathBuf::from(ROOT_MOUNTPOINT);
        std::fs::create_dir_all(&root_mountpoint).context("creating the root mountpoint")?;
        let mut ro_binds: Vec<PathBuf> = HOST_RO_BINDS.iter().map(PathBuf::from).collect();
        ro_binds.push(cfg.runtime_dir.clone());
        // One-shot sessions and the pool need slots beyond max_sessions.
        let slots = cfg.max_sessions + cfg.pool_max_idle + 8;
        tracing::info!(version = ?cgroups.version(), "cgroups ready");
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                zygote,
                root_mountpoint,
                ro_binds,
                egress: None,
            }),
            cgroups,
            slots: Mutex::new((vec![false; slots], 0)),
            workspaces,
        })
    }

    /// Every sandbox gets an egress listener leading to `proxy` (policy `none` until a
    /// session sets its own).
    pub fn with_egress(mut self, proxy: Proxy) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.egress = Some(proxy);
        }
        self
    }

    /// Take a free slot (and so a uid), searching round-robin from the one
    /// after the last taken, so a just-released uid is not handed out again
    /// at once.
    fn take_slot(&self) -> Result<usize, SandboxError> {
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| SandboxError::Internal("slot table poisoned".into()))?;
        let (used, next) = &mut *slots;
        let n = used.len();
        let i = (0..n)
            .map(|k| (*next + k) % n)
            .find(|&i| !used[i])
            .ok_or(SandboxError::NoSlot)?;
        used[i] = true;
        *next = (i + 1) % n;
        Ok(i)
    }

    fn free_slot(&self, slot: usize) {
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(s) = slots.0.get_mut(slot) {
                *s = false;
            }
        }
    }

    /// Make a sandbox with a running kernel (`kernel`, or the zygote's Python one).
    async fn create_sandbox(
        &self,
        limits: &ResourceLimits,
        kernel: Option<&KernelExec>,
    ) -> Result<(Arc<Sandbox>, KernelConn), SandboxError> {
        let cfg = &self.shared.cfg;
        let slot = self.take_slot()?;
        let id = crate::ids::new_uuid();
        let uid = cfg.uid_base + slot as u32;
        let cg_name = id.clone();
        let ws_path = self.workspaces.join(&id);
        let limits2 = *limits;
        let disk = cfg.disk_bytes;
        let cgroups = self.cgroups.clone();
        let t0 = std::time::Instant::now();
        let made = tokio::task::spawn_blocking(move || -> Result<_, SandboxError> {
            let cgroup = cgroups.create(&cg_name, &limits2)?;
            let inodes = (disk / (1024 * 1024)).max(16) * INODES_PER_MIB;
            match Workspace::create(&ws_path, uid, uid, disk, inodes) {
                Ok(ws) => Ok((cgroup, ws)),
                Err(e) => {
                    let _ = cgroup.remove();
                    Err(e.into())
                }
            }
        })
        .await
        .map_err(|e| SandboxError::Internal(e.to_string()));
        let (cgroup, workspace) = match made {
            Ok(Ok(x)) => x,
            Ok(Err(e)) | Err(e) => {
                self.free_slot(slot);
                return Err(e);
            }
        };
        let egress = self
            .shared
            .egress
            .as_ref()
            .map(|proxy| proxy.session(&id, pyxis_egress::EgressPolicy::none()));
        let sb = Arc::new(Sandbox {
            id,
            slot,
            uid,
            cgroup,
            workspace,
            kernel_pid: AtomicI32::new(0),
            init: Mutex::new(None),
            shared: self.shared.clone(),
            egress,
        });
        let t1 = std::time::Instant::now();
        match self.shared.start_kernel(&sb, kernel).await {
            Ok(conn) => {
                tracing::debug!(
                    id = %sb.id,
                    cgroup_and_workspace_ms = (t1 - t0).as_secs_f64() * 1e3,
                    kernel_ms = t1.elapsed().as_secs_f64() * 1e3,
                    "sandbox created"
                );
                Ok((sb, conn))
            }
            Err(e) => {
                self.destroy_sandbox(sb).await;
                Err(e)
            }
        }
    }
}

impl Shared {
    /// Fork a fresh kernel into an existing sandbox (first start or restart), running
    /// `kernel` when given. A kernel whose zygote died before the kernel said it was ready
    /// died with it (its death signal is bound to the zygote): it is forked again, by
    /// another zygote.
    async fn start_kernel(
        &self,
        sb: &Arc<Sandbox>,
        kernel: Option<&KernelExec>,
    ) -> Result<KernelConn, SandboxError> {
        let mut tries = 0;
        loop {
            let mut ticket = None;
            let res = self.start_kernel_once(sb, kernel, &mut ticket).await;
            let Some(t) = ticket.filter(|_| res.is_err() && tries < 2) else {
                return res;
            };
            if !self.zygote_lost(t).await {
                return res;
            }
            tries += 1;
            tracing::warn!(id = %sb.id, "the kernel's zygote died while it started; again");
            let cg = sb.clone();
            let _ = tokio::task::spawn_blocking(move || cg.cgroup.kill()).await;
        }
    }

    /// Whether the zygote of `ticket` died, given a moment to notice it (the kernel's
    /// socket can close before the zygote's does).
    async fn zygote_lost(&self, ticket: zygote::SpawnTicket) -> bool {
        for _ in 0..25 {
            if self.zygote.lost(ticket) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }

    async fn start_kernel_once(
        &self,
        sb: &Arc<Sandbox>,
        kernel: Option<&KernelExec>,
        ticket: &mut Option<zygote::SpawnTicket>,
    ) -> Result<KernelConn, SandboxError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        // The zygote receives the workspace and the cgroups as descriptors, never as paths
        // (see `SandboxSpec`): kernel socket, workspace, then one per cgroup.procs file.
        let mut fds = vec![OwnedFd::from(theirs), open_path_dir(sb.workspace.path())?];
        for procs in sb.cgroup.procs_files() {
            fds.push(OwnedFd::from(
                std::fs::OpenOptions::new().write(true).open(procs)?,
            ));
        }
        let cgroups = fds.len() - 2;
        // The egress channel: the init passes each connection to 127.0.0.1:EGRESS_PORT
        // over it, the sandbox's SessionEgress serves them (until the init dies with this
        // kernel, or the sandbox is destroyed).
        let egress_channel = match &sb.egress {
            Some(_) => {
                let (server_end, init_end) = std::os::unix::net::UnixStream::pair()?;
                fds.push(OwnedFd::from(init_end));
                Some(OwnedFd::from(server_end))
            }
            None => None,
        };
        let mut spec = SandboxSpec {
            uid: sb.uid,
            gid: sb.uid,
            hostname: "pyxis".into(),
            // Numbered below, by the sandbox crate, which owns the layout.
            cgroup_fds: Vec::new(),
            root_mountpoint: self.root_mountpoint.clone(),
            ro_binds: self.ro_binds.clone(),
            workspace_fd: 0,
            workspace_aliases: WORKSPACE_ALIASES.iter().map(PathBuf::from).collect(),
            tmp_bytes: self.cfg.tmp_bytes,
            rlimits: self.rlimits(),
            kernel_fd: 0,
            report_fd: 0,
            loopback: true,
            // Contexts and commands join the sandbox beside this kernel (see `joined`).
            outlive_kernel: true,
            egress: egress_channel
                .as_ref()
                .map(|_| pyxis_sandbox::EgressListener {
                    channel_fd: 0,
                    port: EGRESS_PORT,
                }),
            // The zygote's own answer may take `spawn_timeout`: the setup a third of it
            // (within what a spec may ask for, an hour).
            setup_timeout_ms: Some(
                (self.cfg.spawn_timeout.as_millis() / 3).clamp(1, 3_600_000) as u64
            ),
        };
        spec.number_descriptors(cgroups);
        let spec = serde_json::to_value(&spec)
            .map_err(|e| SandboxError::Internal(format!("spec: {e}")))?;
        let t0 = std::time::Instant::now();
        let exec = kernel.map(|k| self.kernel_exec(sb, k));
        let (pid, t) = self.zygote.spawn_tracked(spec, fds, exec).await?;
        *ticket = Some(t);
        if let (Some(session), Some(channel)) = (&sb.egress, egress_channel) {
            let session = session.clone();
            tokio::spawn(async move {
                if let Err(err) = session.clone().serve_channel(channel).await {
                    tracing::warn!(id = %session.id(), error = %err, "egress channel failed");
                }
            });
        }
        let spawned_ms = t0.elapsed().as_secs_f64() * 1e3;
        sb.kernel_pid.store(pid, Ordering::Release);
        // The init, for the join path; a sandbox without it still runs its first kernel.
        let init = match sb.cgroup.procs_files().first() {
            Some(p) => joined::open_init(p).map(Arc::new),
            None => Err(std::io::Error::other("no cgroup.procs file")),
        };
        match init {
            Ok(init) => {
                if let Ok(mut slot) = sb.init.lock() {
                    *slot = Some(init);
                }
            }
            Err(e) => tracing::warn!(id = %sb.id, error = %e, "the sandbox's init was not found"),
        }
        ours.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(ours)?;
        let mut conn = KernelConn::new(stream, self.max_frame());
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), conn.next_event())
            .await
            .map_err(|_| SandboxError::Internal("kernel start timed out".into()))??;
        match first {
            KernelEvent::Ready {} => {
                // A forked kernel has the proxy's environment from its zygote (see
                // `kernel_egress_env`); an executed one got it with the rest of its own.
                tracing::debug!(
                    spawned_ms,
                    ready_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "kernel started"
                );
                Ok(conn)
            }
            other => Err(SandboxError::Internal(format!(
                "unexpected first kernel message {other:?}"
            ))),
        }
    }

    /// The rlimits of every process of a sandbox.
    fn rlimits(&self) -> Rlimits {
        Rlimits {
            fsize_bytes: self.cfg.disk_bytes,
            nofile: 1024,
            nproc: self.cfg.pids,
        }
    }

    /// The environment every joined process starts with (requests add to it): the
    /// runtime's interpreter first on `PATH`, the workspace as home, the driver importable.
    fn joined_env(&self) -> std::collections::BTreeMap<String, String> {
        let rt = crate::runtime::Runtime::new(&self.cfg.runtime_dir);
        let pairs = [
            (
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin",
                    rt.dir.join("venv/bin").display()
                ),
            ),
            ("HOME", "/workspace".into()),
            ("LANG", "C.UTF-8".into()),
            ("LC_ALL", "C.UTF-8".into()),
            ("TMPDIR", "/tmp".into()),
            ("PYTHONPATH", rt.lib_dir().display().to_string()),
            ("PYTHONDONTWRITEBYTECODE", "1".into()),
            ("MPLBACKEND", "Agg".into()),
            ("MPLCONFIGDIR", "/tmp/.matplotlib".into()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// `kernel` as the sandbox's kernel process executes it: with the environment of every
    /// process started in the sandbox (and the egress proxy's) under its own, as
    /// [`Sandbox::exec_joined`] starts one.
    fn kernel_exec(&self, sb: &Sandbox, kernel: &KernelExec) -> KernelExec {
        let mut env = self.joined_env();
        if sb.egress.is_some() {
            env.extend(pyxis_egress::sandbox_env(EGRESS_PORT));
        }
        env.extend(kernel.env.clone());
        KernelExec {
            argv: kernel.argv.clone(),
            env,
        }
    }

    /// Largest frame accepted from a kernel: the output cap plus room for JSON
    /// escaping and base64.
    fn max_frame(&self) -> usize {
        (self.cfg.max_output_bytes as usize).saturating_mul(2) + (1 << 20)
    }
}

impl SandboxFactory {
    /// Waits, up to `limit`, until every sandbox made so far has been destroyed; false if
    /// some are still there. At shutdown this lets creations still in flight (the warm
    /// pool's refill) finish and destroy their own sandbox before [`Self::cleanup_all`]
    /// removes the instance cgroup, which it could not while one of theirs was in it.
    async fn wait_until_released(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let in_use = self
                .slots
                .lock()
                .map(|s| s.0.iter().any(|&used| used))
                .unwrap_or(false);
            if !in_use {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Kill and remove every sandbox of this instance, including any still
    /// being created, and then the instance cgroup itself (used at shutdown, after the
    /// orderly teardown).
    async fn remove_all(&self) {
        let cgroups = self.cgroups.clone();
        let workspaces = self.workspaces.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = cgroups.remove() {
                tracing::error!(error = %e, "final cgroup cleanup failed");
            }
            if let Err(e) = Workspace::cleanup_leftovers(&workspaces) {
                tracing::error!(error = %e, "final workspace cleanup failed");
            }
        })
        .await;
    }

    /// Kill everything in the sandbox and remove its cgroup and workspace.
    async fn destroy_sandbox(&self, sb: Arc<Sandbox>) {
        sb.kernel_pid.store(0, Ordering::Release);
        if let Ok(mut init) = sb.init.lock() {
            init.take();
        }
        if let Some(egress) = &sb.egress {
            egress.close();
        }
        let slot = sb.slot;
        let res = tokio::task::spawn_blocking(move || {
            if let Err(e) = sb.cgroup.remove() {
                tracing::error!(error = %e, id = %sb.id, "removing the cgroup failed");
            }
            if let Err(e) = sb.workspace.remove() {
                tracing::error!(error = %e, id = %sb.id, "removing the workspace failed");
            }
        })
        .await;
        if res.is_ok() {
            self.free_slot(slot);
        }
    }
}

/// The environment of the egress proxy every forked kernel gets (see
/// [`pyxis_egress::sandbox_env`]), the install time limit and the auto-install list; a
/// session's own `env` is applied after it. Server-wide values: the zygotes are started with
/// them ([`zygote::ZygoteCommand::kernel_env`]), so a new kernel has them from its fork, with
/// no configure round trip on the create's path.
pub fn kernel_egress_env(cfg: &Config) -> std::collections::BTreeMap<String, String> {
    let mut env: std::collections::BTreeMap<String, String> =
        pyxis_egress::sandbox_env(EGRESS_PORT).into_iter().collect();
    env.insert(
        "PYX_INSTALL_TIMEOUT_S".into(),
        cfg.egress.install_timeout.as_secs_f64().to_string(),
    );
    if !cfg.egress.auto_install.is_empty() {
        let wanted: serde_json::Map<String, serde_json::Value> = cfg
            .egress
            .auto_install
            .iter()
            .map(|(module, requirement)| (module.clone(), requirement.clone().into()))
            .collect();
        env.insert(
            "PYX_AUTO_INSTALL".into(),
            serde_json::Value::Object(wanted).to_string(),
        );
    }
    env
}

/// An `O_PATH` descriptor of the directory `path`.
fn open_path_dir(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)?;
    Ok(OwnedFd::from(dir))
}

/// A stable short name for this server instance, derived from its data
/// directory, so that two servers on one host never clean up each other's
/// cgroups.
fn instance_name(data_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let canon = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(canon.as_os_str().as_encoded_bytes());
    crate::ids::hex(&digest[..6])
}

impl Launcher for SandboxFactory {
    fn create<'a>(
        &'a self,
        limits: &'a ResourceLimits,
        kernel: Option<&'a KernelExec>,
    ) -> BoxFuture<'a, Result<Created, SandboxError>> {
        Box::pin(async move {
            let (sb, conn) = self.create_sandbox(limits, kernel).await?;
            Ok((sb as Arc<dyn SandboxHandle>, conn))
        })
    }

    fn destroy(&self, sb: Arc<dyn SandboxHandle>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Every handle the services hold was made by this factory.
            let id = sb.id().to_string();
            match sb.into_any().downcast::<Sandbox>() {
                Ok(real) => self.destroy_sandbox(real).await,
                Err(_) => tracing::error!(%id, "destroy of a sandbox this factory did not make"),
            }
        })
    }

    fn default_limits(&self) -> ResourceLimits {
        self.shared.cfg.default_limits()
    }

    fn cgroup_version(&self) -> String {
        format!("{:?}", self.cgroups.version()).to_lowercase()
    }

    fn runtime_info(&self) -> ZygoteInfo {
        self.shared.zygote.info()
    }

    fn wait_all_released(&self, limit: std::time::Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.wait_until_released(limit))
    }

    fn cleanup_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.remove_all())
    }

    fn egress_proxy(&self) -> Option<Proxy> {
        self.shared.egress.clone()
    }
}
