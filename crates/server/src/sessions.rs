//! Sessions: the session table, the warm pool, idle reaping, and running cells
//! one at a time per session with time limits, interrupts and restarts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pyxis_protocol::{KernelEvent, KernelRequest, ReplyStatus};
use pyxis_sandbox::ResourceLimits;
use tokio::sync::Notify;

use crate::config::Config;
use crate::error::ApiError;
use crate::kernel::{KernelConn, KernelError};
use crate::model::{
    ExecError, ExecStatus, Execution, FileChange, Limits, ResultItem, SessionInfo, Usage,
};
use crate::sandboxes::{Sandbox, SandboxFactory};
use crate::workspace_fs::{Snapshot, WorkspaceFs, WorkspaceFsError};

/// Options of a new session, validated.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Interpreter environment.
    pub env: std::collections::BTreeMap<String, String>,
    /// Default execution time limit.
    pub timeout: Duration,
    /// Cgroup limits.
    pub limits: ResourceLimits,
    /// Client data.
    pub metadata: Option<serde_json::Value>,
}

struct KernelSlot {
    conn: Option<KernelConn>,
    execution_count: u64,
}

/// One live session.
pub struct Session {
    /// Session id.
    pub id: String,
    sandbox: Arc<Sandbox>,
    opts: SessionOptions,
    created: SystemTime,
    last_active: Mutex<(Instant, SystemTime)>,
    kernel: tokio::sync::Mutex<KernelSlot>,
    waiting: AtomicUsize,
    busy: AtomicBool,
    closed: AtomicBool,
    interrupt: Notify,
    executions: AtomicU64,
    /// The workspace as the last cell left it (see `execute`).
    last_scan: Mutex<Option<Snapshot>>,
}

struct Ready {
    sandbox: Arc<Sandbox>,
    conn: KernelConn,
}

/// The session table and the warm pool.
pub struct Sessions {
    cfg: Arc<Config>,
    factory: SandboxFactory,
    table: Mutex<HashMap<String, Arc<Session>>>,
    pool: Mutex<VecDeque<Ready>>,
    refill: Notify,
    /// Sandboxes being created or held outside the table (one-shots).
    in_flight: AtomicUsize,
    executions_total: AtomicU64,
    started: Instant,
    shutting_down: AtomicBool,
}

impl Sessions {
    /// A session manager over `factory`.
    pub fn new(cfg: Arc<Config>, factory: SandboxFactory) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            factory,
            table: Mutex::new(HashMap::new()),
            pool: Mutex::new(VecDeque::new()),
            refill: Notify::new(),
            in_flight: AtomicUsize::new(0),
            executions_total: AtomicU64::new(0),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The sandbox factory (for capabilities).
    pub fn factory(&self) -> &SandboxFactory {
        &self.factory
    }

    /// Start the background tasks: pool refill and idle reaping.
    pub fn start_background(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.refill_loop().await });
        let me = self.clone();
        tokio::spawn(async move { me.reap_loop().await });
    }

    fn live(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Sandboxes ready in the pool.
    pub fn pool_idle(&self) -> usize {
        self.pool.lock().map(|p| p.len()).unwrap_or(0)
    }

    async fn refill_loop(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let want = self.cfg.pool_min_idle;
            if self.pool_idle() < want && self.live() < self.cfg.max_sessions {
                match self.factory.create(&self.factory.default_limits()).await {
                    Ok((sandbox, conn)) => {
                        failures = 0;
                        if self.shutting_down.load(Ordering::Acquire) {
                            self.factory.destroy(sandbox).await;
                            return;
                        }
                        if let Ok(mut p) = self.pool.lock() {
                            p.push_back(Ready { sandbox, conn });
                        }
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, "warm pool: creating a sandbox failed");
                        let backoff = Duration::from_millis(200 * u64::from(failures.min(25)));
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
            }
            self.refill.notified().await;
        }
    }

    async fn reap_loop(self: Arc<Self>) {
        let period =
            (self.cfg.idle_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            tokio::time::sleep(period).await;
            let now = Instant::now();
            let idle: Vec<String> = match self.table.lock() {
                Ok(t) => t
                    .values()
                    .filter(|s| {
                        !s.busy.load(Ordering::Acquire)
                            && s.waiting.load(Ordering::Acquire) == 0
                            && s.last_active
                                .lock()
                                .map(|la| now.duration_since(la.0) > self.cfg.idle_timeout)
                                .unwrap_or(false)
                    })
                    .map(|s| s.id.clone())
                    .collect(),
                Err(_) => continue,
            };
            for id in idle {
                tracing::info!(%id, "releasing idle session");
                self.delete(&id).await;
            }
        }
    }

    /// Take a ready sandbox from the pool, or make one.
    async fn acquire(&self, limits: &ResourceLimits) -> Result<Ready, ApiError> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop_front());
        self.refill.notify_one();
        if let Some(r) = pooled {
            if *limits != self.factory.default_limits() {
                if let Err(e) = r.sandbox.set_limits(limits) {
                    self.factory.destroy(r.sandbox).await;
                    return Err(ApiError::internal(e));
                }
            }
            return Ok(r);
        }
        match self.factory.create(limits).await {
            Ok((sandbox, conn)) => Ok(Ready { sandbox, conn }),
            Err(crate::sandboxes::SandboxError::NoSlot) => {
                Err(ApiError::exhausted("no sandbox is free; retry shortly"))
            }
            Err(e) => Err(ApiError::internal(e)),
        }
    }

    /// Reserve capacity for one more session (live + in flight ≤ max).
    fn reserve(&self) -> Result<Reservation<'_>, ApiError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ApiError::exhausted("the server is shutting down"));
        }
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if self.live() + n > self.cfg.max_sessions {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::exhausted(format!(
                "all {} sessions are in use; release one or retry later",
                self.cfg.max_sessions
            )));
        }
        Ok(Reservation(&self.in_flight))
    }

    /// Create a session.
    pub async fn create(&self, opts: SessionOptions) -> Result<Arc<Session>, ApiError> {
        let _reservation = self.reserve()?;
        let session = self.make_session(opts).await?;
        if let Ok(mut t) = self.table.lock() {
            t.insert(session.id.clone(), session.clone());
        }
        Ok(session)
    }

    async fn make_session(&self, opts: SessionOptions) -> Result<Arc<Session>, ApiError> {
        let Ready { sandbox, mut conn } = self.acquire(&opts.limits).await?;
        if !opts.env.is_empty() {
            let req = KernelRequest::Configure {
                id: "env".into(),
                env: opts.env.clone(),
            };
            let ok = async {
                conn.send(&req).await?;
                loop {
                    if let KernelEvent::ConfigureReply { .. } = conn.next_event().await? {
                        return Ok::<(), KernelError>(());
                    }
                }
            };
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), ok)
                .await
                .unwrap_or(Err(KernelError::Closed))
            {
                self.factory.destroy(sandbox).await;
                return Err(ApiError::internal(e));
            }
        }
        let now = (Instant::now(), SystemTime::now());
        Ok(Arc::new(Session {
            id: sandbox.id.clone(),
            sandbox,
            opts,
            created: now.1,
            last_active: Mutex::new(now),
            kernel: tokio::sync::Mutex::new(KernelSlot {
                conn: Some(conn),
                execution_count: 0,
            }),
            waiting: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            interrupt: Notify::new(),
            executions: AtomicU64::new(0),
            last_scan: Mutex::new(None),
        }))
    }

    /// Look a session up.
    pub fn get(&self, id: &str) -> Result<Arc<Session>, ApiError> {
        self.table
            .lock()
            .ok()
            .and_then(|t| t.get(id).cloned())
            .ok_or_else(|| ApiError::session_not_found(id))
    }

    /// All live sessions.
    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<Arc<Session>> = self
            .table
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|s| s.created);
        v
    }

    /// Release a session: kill its sandbox, delete its workspace. Returns
    /// whether it existed.
    pub async fn delete(&self, id: &str) -> bool {
        let Some(session) = self.table.lock().ok().and_then(|mut t| t.remove(id)) else {
            return false;
        };
        self.teardown(session).await;
        self.refill.notify_one();
        true
    }

    async fn teardown(&self, session: Arc<Session>) {
        session.closed.store(true, Ordering::Release);
        // Stop a running cell: its execute call sees the kernel die.
        session.sandbox.kill_processes().await;
        session.interrupt.notify_waiters();
        self.factory.destroy(session.sandbox.clone()).await;
    }

    /// Run a cell in a fresh sandbox that is destroyed afterwards.
    pub async fn one_shot<F, Fut>(
        &self,
        opts: SessionOptions,
        code: String,
        timeout: Duration,
        prepare: F,
    ) -> Result<Execution, ApiError>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<(), ApiError>>,
    {
        let _reservation = self.reserve()?;
        let session = self.make_session(opts).await?;
        // `prepare` fills the workspace (the one-shot's files) before the
        // code runs; the cell's `files` then list only what the code wrote.
        let result = match prepare(session.clone()).await {
            Ok(()) => self.execute(&session, code, timeout).await,
            Err(e) => Err(e),
        };
        self.teardown(session).await;
        self.refill.notify_one();
        result
    }

    /// Run one cell. Cells of a session run one at a time, in order of
    /// arrival; at most `max_queue` may wait.
    pub async fn execute(
        &self,
        session: &Arc<Session>,
        code: String,
        timeout: Duration,
    ) -> Result<Execution, ApiError> {
        if session.waiting.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_queue {
            session.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::busy());
        }
        let mut slot = session.kernel.lock().await;
        session.waiting.fetch_sub(1, Ordering::AcqRel);
        if session.closed.load(Ordering::Acquire) {
            return Err(ApiError::session_not_found(&session.id));
        }
        session.busy.store(true, Ordering::Release);
        let started = Instant::now();
        // The walk after the previous cell serves as this one's "before",
        // unless the files API changed the workspace since.
        let cached = session.last_scan.lock().ok().and_then(|mut s| s.take());
        let before = match cached {
            Some(snap) => Some(snap),
            None => self.scan_workspace(session).await,
        };
        let mut exec = self.run_cell(session, &mut slot, code, timeout).await;
        if let Some(before) = before {
            if let Some(after) = self.scan_workspace(session).await {
                exec.files = before
                    .changed(&after)
                    .into_iter()
                    .map(|(path, size)| FileChange { path, size })
                    .collect();
                if let Ok(mut last) = session.last_scan.lock() {
                    *last = Some(after);
                }
            }
        }
        session.busy.store(false, Ordering::Release);
        exec.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        session.touch();
        session.executions.fetch_add(1, Ordering::Relaxed);
        self.executions_total.fetch_add(1, Ordering::Relaxed);
        if session.closed.load(Ordering::Acquire) {
            return Err(ApiError::session_not_found(&session.id));
        }
        Ok(exec)
    }

    /// The regular files of the session's workspace (bounded walk), for the
    /// `files` of an execution; `None` when the report is turned off. An
    /// empty workspace (only its root inode in use) is not walked at all.
    async fn scan_workspace(&self, session: &Arc<Session>) -> Option<Snapshot> {
        let max_entries = self.cfg.files_scan_max_entries;
        if max_entries == 0 {
            return None;
        }
        let path = session.sandbox.workspace_path().to_path_buf();
        if workspace_is_empty(&path) {
            return Some(Snapshot::default());
        }
        let max_depth = self.cfg.files_scan_max_depth;
        let uid = session.sandbox.uid();
        tokio::task::spawn_blocking(move || {
            WorkspaceFs::open(&path, uid, uid)
                .ok()
                .map(|ws| ws.snapshot(max_entries, max_depth))
        })
        .await
        .ok()
        .flatten()
    }

    async fn run_cell(
        &self,
        session: &Arc<Session>,
        slot: &mut KernelSlot,
        code: String,
        timeout: Duration,
    ) -> Execution {
        let mut out = Collector::new(self.cfg.max_output_bytes);
        // A kernel lost earlier (restart failed) is brought back first.
        if slot.conn.is_none() {
            if let Err(e) = self.restart_kernel(session, slot).await {
                return out.finish_failure(
                    ExecStatus::Killed,
                    "KernelDied",
                    &format!("the interpreter could not be restarted: {e}"),
                    slot.execution_count,
                    true,
                );
            }
            out.state_lost = true;
        }
        // Unguessable: user code can write frames to its own socket, and must
        // not be able to forge the reply of a cell it has not seen yet.
        let id = crate::sandboxes::new_id();
        let Some(conn) = slot.conn.as_mut() else {
            return out.finish_failure(ExecStatus::Killed, "KernelDied", "no interpreter", 0, true);
        };
        let oom_before = session.sandbox.oom_kills();
        let req = KernelRequest::ExecuteRequest {
            id: id.clone(),
            code,
            max_output_bytes: self.cfg.max_output_bytes,
            silent: false,
        };
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut timed_out = false;
        let mut interrupted = false;
        let mut failure: Option<KernelError> = None;
        if let Err(e) = conn.send(&req).await {
            failure = Some(e);
        }
        while failure.is_none() {
            tokio::select! {
                ev = conn.next_event() => match ev {
                    Ok(ev) => {
                        if out.event(&id, ev) {
                            break;
                        }
                    }
                    Err(e) => failure = Some(e),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if timed_out || interrupted {
                        // The grace period is over: the cell ignored SIGINT.
                        failure = Some(KernelError::Closed);
                        session.sandbox.kill_processes().await;
                    } else {
                        timed_out = true;
                        session.sandbox.interrupt();
                        deadline = tokio::time::Instant::now() + self.cfg.interrupt_grace;
                    }
                },
                _ = session.interrupt.notified(), if !interrupted && !timed_out => {
                    interrupted = true;
                    session.sandbox.interrupt();
                    deadline = tokio::time::Instant::now() + self.cfg.interrupt_grace;
                },
            }
        }
        if let Some(reply_count) = out.reply_count {
            slot.execution_count = reply_count;
        }
        match failure {
            None => {
                if timed_out {
                    out.status = ExecStatus::Timeout;
                    out.error = Some(ExecError {
                        name: "Timeout".into(),
                        value: format!(
                            "execution exceeded its time limit of {:.1} s and was interrupted",
                            timeout.as_secs_f64()
                        ),
                        traceback: out.error.take().map(|e| e.traceback).unwrap_or_default(),
                    });
                }
                out.finish(slot.execution_count)
            }
            Some(err) => {
                // The kernel is gone or misbehaved: kill what is left, start a
                // fresh interpreter in the same sandbox, report the loss.
                if session.closed.load(Ordering::Acquire) {
                    return out.finish_failure(
                        ExecStatus::Killed,
                        "SessionDeleted",
                        "the session was deleted",
                        slot.execution_count,
                        true,
                    );
                }
                session.sandbox.kill_processes().await;
                let oom = session.sandbox.oom_kills() > oom_before;
                tracing::info!(id = %session.id, error = %err, oom, "kernel lost; restarting");
                let (status, name, value) = if oom {
                    (
                        ExecStatus::Killed,
                        "OutOfMemory",
                        format!(
                            "the interpreter ran out of memory (limit {} MiB) and was restarted",
                            session.opts.limits.memory_bytes / (1024 * 1024)
                        ),
                    )
                } else if timed_out {
                    (
                        ExecStatus::Timeout,
                        "Timeout",
                        format!(
                            "execution exceeded its time limit of {:.1} s, did not stop when interrupted, and the interpreter was restarted",
                            timeout.as_secs_f64()
                        ),
                    )
                } else if interrupted {
                    (
                        ExecStatus::Killed,
                        "Interrupted",
                        "the cell did not stop when interrupted; the interpreter was restarted"
                            .to_string(),
                    )
                } else if matches!(err, KernelError::Protocol(_)) {
                    (
                        ExecStatus::Killed,
                        "ProtocolViolation",
                        "the interpreter sent an invalid or oversized message; it was restarted"
                            .to_string(),
                    )
                } else {
                    (
                        ExecStatus::Killed,
                        "KernelDied",
                        "the interpreter exited; it was restarted".to_string(),
                    )
                };
                slot.conn = None;
                slot.execution_count = 0;
                if let Err(e) = self.restart_kernel(session, slot).await {
                    tracing::error!(id = %session.id, error = %e, "restart failed");
                }
                out.finish_failure(status, name, &value, slot.execution_count, true)
            }
        }
    }

    async fn restart_kernel(
        &self,
        session: &Arc<Session>,
        slot: &mut KernelSlot,
    ) -> Result<(), crate::sandboxes::SandboxError> {
        slot.conn = None;
        slot.execution_count = 0;
        session.sandbox.kill_processes().await;
        let mut conn = self.factory.start_kernel(&session.sandbox).await?;
        if !session.opts.env.is_empty() {
            conn.send(&KernelRequest::Configure {
                id: "env".into(),
                env: session.opts.env.clone(),
            })
            .await?;
            while !matches!(conn.next_event().await?, KernelEvent::ConfigureReply { .. }) {}
        }
        slot.conn = Some(conn);
        Ok(())
    }

    /// Interrupt the running cell. Returns whether one was running.
    pub fn interrupt(&self, session: &Arc<Session>) -> bool {
        if session.busy.load(Ordering::Acquire) {
            session.interrupt.notify_waiters();
            true
        } else {
            false
        }
    }

    /// A fresh interpreter in the same workspace; a running cell is killed.
    pub async fn restart(&self, session: &Arc<Session>) -> Result<(), ApiError> {
        session.sandbox.kill_processes().await;
        let mut slot = session.kernel.lock().await;
        if session.closed.load(Ordering::Acquire) {
            return Err(ApiError::session_not_found(&session.id));
        }
        // A concurrent restart or delete kills through the cgroup without the
        // lock, and can hit the kernel this one is starting: try again, and
        // answer 404 if the session went away meanwhile.
        let mut attempt = 0;
        loop {
            match self.restart_kernel(session, &mut slot).await {
                Ok(()) => break,
                Err(_) if session.closed.load(Ordering::Acquire) => {
                    return Err(ApiError::session_not_found(&session.id));
                }
                Err(e) if attempt >= 2 => return Err(ApiError::internal(e)),
                Err(e) => {
                    tracing::warn!(id = %session.id, error = %e, "restart failed; retrying");
                    attempt += 1;
                }
            }
        }
        session.touch();
        Ok(())
    }

    /// Describe a session.
    pub async fn info(&self, session: &Arc<Session>) -> SessionInfo {
        let execution_count = match session.kernel.try_lock() {
            Ok(slot) => slot.execution_count,
            Err(_) => session.executions.load(Ordering::Relaxed),
        };
        let usage = session.sandbox.usage().map(|u| Usage {
            memory_bytes: u.memory_bytes,
            memory_peak_bytes: u.memory_peak_bytes,
            pids: u.pids,
            cpu_usec: u.cpu_usec,
            disk_bytes: session.sandbox.disk_usage().map(|d| d.0).unwrap_or(0),
        });
        let last = session
            .last_active
            .lock()
            .map(|l| l.1)
            .unwrap_or(session.created);
        SessionInfo {
            id: session.id.clone(),
            language: "python".into(),
            state: if session.busy.load(Ordering::Acquire) {
                "busy".into()
            } else {
                "idle".into()
            },
            created_at: rfc3339(session.created),
            last_active_at: rfc3339(last),
            execution_count,
            limits: self.limits_of(&session.opts),
            usage,
            metadata: session.opts.metadata.clone(),
        }
    }

    /// The limits of a session as the API shows them.
    pub fn limits_of(&self, opts: &SessionOptions) -> Limits {
        Limits {
            memory_bytes: opts.limits.memory_bytes,
            pids: opts.limits.pids,
            cpus: opts.limits.cpu_millicores as f64 / 1000.0,
            disk_bytes: self.cfg.disk_bytes,
            timeout_s: opts.timeout.as_secs_f64(),
        }
    }

    /// Counters for `/v1/status`.
    pub fn status(&self) -> crate::model::Status {
        let sessions = self.list();
        crate::model::Status {
            busy_sessions: sessions
                .iter()
                .filter(|s| s.busy.load(Ordering::Acquire))
                .count(),
            sessions: sessions.len(),
            max_sessions: self.cfg.max_sessions,
            pool_idle: self.pool_idle(),
            pool_min_idle: self.cfg.pool_min_idle,
            uptime_s: self.started.elapsed().as_secs_f64(),
            executions_total: self.executions_total.load(Ordering::Relaxed),
        }
    }

    /// Whether the server can create sessions now.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire)
            && (self.cfg.pool_min_idle == 0 || self.pool_idle() > 0 || self.live() > 0)
    }

    /// Release everything: every session and every pooled sandbox.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.refill.notify_one();
        let sessions: Vec<Arc<Session>> = self
            .table
            .lock()
            .map(|mut t| t.drain().map(|(_, s)| s).collect())
            .unwrap_or_default();
        for s in sessions {
            self.teardown(s).await;
        }
        let pooled: Vec<Ready> = self
            .pool
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default();
        for r in pooled {
            self.factory.destroy(r.sandbox).await;
        }
        // A creation in flight (the pool's refill) destroys its sandbox when it sees the
        // shutdown; whatever is still there after the wait is killed with the rest.
        if !self.factory.wait_all_released(Duration::from_secs(5)).await {
            tracing::warn!("sandboxes still being created at shutdown; killing them");
        }
        self.factory.cleanup_all().await;
    }
}

impl Session {
    /// The session's default execution time limit.
    pub fn default_timeout(&self) -> Duration {
        self.opts.timeout
    }

    /// Open the session's workspace (a fresh descriptor of its root; blocking).
    pub fn workspace(&self) -> Result<WorkspaceFs, WorkspaceFsError> {
        let uid = self.sandbox.uid();
        WorkspaceFs::open(self.sandbox.workspace_path(), uid, uid)
    }

    /// The files API changed the workspace: the next cell walks it afresh
    /// rather than comparing with what the previous cell left.
    pub fn forget_scan(&self) {
        if let Ok(mut last) = self.last_scan.lock() {
            *last = None;
        }
    }

    /// Mark the session as used now (so it is not reaped as idle).
    pub fn touch(&self) {
        if let Ok(mut la) = self.last_active.lock() {
            *la = (Instant::now(), SystemTime::now());
        }
    }
}

/// Decrements the in-flight counter when dropped.
struct Reservation<'a>(&'a AtomicUsize);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Gathers a cell's events into an `Execution`, enforcing the output cap.
struct Collector {
    cap: u64,
    used: u64,
    stdout: String,
    stderr: String,
    results: Vec<ResultItem>,
    error: Option<ExecError>,
    status: ExecStatus,
    truncated: bool,
    state_lost: bool,
    reply_count: Option<u64>,
}

impl Collector {
    fn new(cap: u64) -> Self {
        Self {
            cap,
            used: 0,
            stdout: String::new(),
            stderr: String::new(),
            results: Vec::new(),
            error: None,
            status: ExecStatus::Ok,
            truncated: false,
            state_lost: false,
            reply_count: None,
        }
    }

    fn room(&self) -> u64 {
        self.cap.saturating_sub(self.used)
    }

    /// Handle one event; returns true on the cell's final reply.
    fn event(&mut self, id: &str, ev: KernelEvent) -> bool {
        match ev {
            KernelEvent::Stream {
                id: got,
                name,
                text,
            } if got == id => {
                let room = self.room() as usize;
                let take = if text.len() > room {
                    self.truncated = true;
                    floor_char_boundary(&text, room)
                } else {
                    text.len()
                };
                self.used += take as u64;
                let target = if name == "stderr" {
                    &mut self.stderr
                } else {
                    &mut self.stdout
                };
                target.push_str(&text[..take]);
            }
            KernelEvent::DisplayData {
                id: got,
                data,
                metadata,
            } if got == id => self.rich("display_data", data, metadata),
            KernelEvent::ExecuteResult {
                id: got,
                data,
                metadata,
                ..
            } if got == id => self.rich("execute_result", data, metadata),
            KernelEvent::Error {
                id: got,
                ename,
                evalue,
                traceback,
            } if got == id => {
                self.status = ExecStatus::Error;
                self.error = Some(ExecError {
                    name: ename,
                    value: evalue,
                    traceback,
                });
            }
            KernelEvent::ExecuteReply {
                id: got,
                status,
                execution_count,
                truncated,
            } if got == id => {
                if status == ReplyStatus::Error && self.error.is_none() {
                    self.status = ExecStatus::Error;
                }
                self.truncated |= truncated;
                self.reply_count = Some(execution_count);
                return true;
            }
            // Events of an earlier, abandoned request, or stray messages.
            _ => {}
        }
        false
    }

    fn rich(
        &mut self,
        kind: &str,
        data: serde_json::Map<String, serde_json::Value>,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) {
        let size: u64 = data
            .values()
            .map(|v| match v {
                serde_json::Value::String(s) => s.len() as u64,
                other => other.to_string().len() as u64,
            })
            .sum();
        if size > self.room() {
            self.truncated = true;
            return;
        }
        self.used += size;
        self.results.push(ResultItem {
            kind: kind.into(),
            data,
            metadata,
        });
    }

    fn finish(self, execution_count: u64) -> Execution {
        Execution {
            status: self.status,
            execution_count,
            stdout: self.stdout,
            stderr: self.stderr,
            results: self.results,
            error: self.error,
            duration_ms: 0.0,
            truncated: self.truncated,
            state_lost: self.state_lost,
            files: Vec::new(),
        }
    }

    fn finish_failure(
        mut self,
        status: ExecStatus,
        name: &str,
        value: &str,
        execution_count: u64,
        state_lost: bool,
    ) -> Execution {
        self.status = status;
        self.error = Some(ExecError {
            name: name.into(),
            value: value.into(),
            traceback: Vec::new(),
        });
        self.state_lost |= state_lost;
        self.finish(execution_count)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Whether only the root inode of a workspace is in use: one `statvfs`, much
/// cheaper than opening and reading the directory.
fn workspace_is_empty(path: &std::path::Path) -> bool {
    nix::sys::statvfs::statvfs(path)
        .map(|v| v.files().saturating_sub(v.files_free()) <= 1)
        .unwrap_or(false)
}

/// RFC 3339 UTC timestamp with second precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_caps_stream_text_on_a_char_boundary() {
        let mut c = Collector::new(5);
        let done = c.event(
            "1",
            KernelEvent::Stream {
                id: "1".into(),
                name: "stdout".into(),
                text: "abcdé€".into(),
            },
        );
        assert!(!done);
        assert_eq!(c.stdout, "abcd");
        assert!(c.truncated);
        // Events of another request are ignored.
        c.event(
            "1",
            KernelEvent::Stream {
                id: "0".into(),
                name: "stdout".into(),
                text: "x".into(),
            },
        );
        assert_eq!(c.stdout, "abcd");
    }
}
