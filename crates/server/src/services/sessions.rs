//! Sessions: the session table, the warm pool, idle reaping, and running cells one at a time
//! per session with time limits, interrupts and restarts. A cell is a stream of
//! [`CellEvent`]s (see `events.rs`); nothing here knows about HTTP.
//!
//! Cancel safety: a cell runs in a task of its own, never in the caller's future. A caller
//! that goes away (a client disconnects, a stream is dropped, a request times out) only drops
//! the receiving end of the events:
//! - a cell still *queued* behind another is then not run at all;
//! - a cell already *running* runs to its end, as in Jupyter, and its events are discarded
//!   (the history keeps it); interrupting it is the client's call (`interrupt`).
//!
//! Either way the queue count, the busy flag and the kernel connection are only ever changed
//! by that task, so they stay right whatever the caller does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use pyxis_protocol::{KernelEvent, KernelRequest, ReplyStatus};
use pyxis_sandbox::ResourceLimits;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics;
use crate::sandboxes::kernel::{KernelConn, KernelError};
use crate::sandboxes::{Launcher, SandboxError, SandboxHandle};
use crate::services::commands::CommandTable;
use crate::services::contexts::{
    self, Context, KernelProcess, KernelSlot, Language, DEFAULT_CONTEXT, MAX_CONTEXTS,
};
use crate::services::error::{Result, ServiceError};
use crate::services::events::{
    map_size, CellError, CellEvent, CellStatus, CellSummary, ExecutionState, FileChange, JsonMap,
    OutputBudget, OutputItem,
};
use crate::services::pool::{self as warm, LaneStatus, PoolBounds, PoolHost, Ready, WarmPool};
use crate::services::workspace_fs::{Snapshot, WorkspaceFs, WorkspaceFsError};

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
    /// What its sandbox may reach through the egress proxy.
    pub network: pyxis_egress::EgressPolicy,
    /// The language of its first context.
    pub language: Language,
}

/// One cell to run.
#[derive(Debug, Clone, Default)]
pub struct CellRequest {
    /// The source.
    pub code: String,
    /// Time limit.
    pub timeout: Duration,
    /// The caller can answer `input()` (see [`CellEvent::InputRequest`]).
    pub allow_stdin: bool,
    /// Jupyter's `silent`: not counted, nothing published but errors.
    pub silent: bool,
    /// Jupyter's `store_history` (`None`: `!silent`).
    pub store_history: Option<bool>,
    /// Jupyter's `user_expressions`.
    pub user_expressions: JsonMap,
    /// The context to run in (`None`: the session's first).
    pub context: Option<String>,
}

impl CellRequest {
    /// A plain cell with a time limit.
    pub fn new(code: impl Into<String>, timeout: Duration) -> Self {
        Self {
            code: code.into(),
            timeout,
            ..Default::default()
        }
    }
}

/// The caller's end of a running (or queued) cell.
pub struct CellHandle {
    /// The cell's events, [`CellEvent::Reply`] last.
    pub events: mpsc::UnboundedReceiver<CellEvent>,
    input: mpsc::Sender<String>,
    session: Arc<Session>,
}

impl CellHandle {
    /// Answer the cell's pending `input()`; false if the cell is gone.
    pub fn input(&self, value: String) -> bool {
        self.input.try_send(value).is_ok()
    }

    /// A sender for the cell's `input()` answers (kept by doors that route stdin).
    pub fn stdin(&self) -> mpsc::Sender<String> {
        self.input.clone()
    }

    /// Whether the session was deleted (while the cell was queued or running).
    pub fn session_gone(&self) -> bool {
        self.session.closed.load(Ordering::Acquire)
    }

    /// Fold the whole cell into one value.
    pub async fn collect(mut self) -> Result<crate::services::events::CellOutcome> {
        let out = crate::services::events::CellOutcome::collect(&mut self.events).await;
        match out {
            Some(o) if !o.summary.session_deleted() => Ok(o),
            _ => Err(ServiceError::SessionNotFound(self.session.id.clone())),
        }
    }
}

/// One cell as the session's history keeps it (for notebook export).
#[derive(Debug, Clone)]
pub struct CellRecord {
    /// The source.
    pub code: String,
    /// Its execution count (0 when not counted).
    pub execution_count: u64,
    /// How it ended.
    pub status: CellStatus,
    /// Its outputs in order.
    pub outputs: Vec<OutputItem>,
}

/// One live session.
pub struct Session {
    /// Session id.
    pub id: String,
    sandbox: Arc<dyn SandboxHandle>,
    opts: SessionOptions,
    created: SystemTime,
    last_active: Mutex<(Instant, SystemTime)>,
    closed: AtomicBool,
    /// Its place in the count of the tenant that made it, the only one that sees it
    /// (`tenants.rs`); given back at teardown.
    owner: crate::tenants::LiveSlot,
    /// The workspace as the last cell left it (see `execute`).
    last_scan: Mutex<Option<Snapshot>>,
    /// Its workspace root, for the check per cell (`cell_checks.rs`).
    workspace_root: super::cell_checks::WorkspaceRoot,
    /// The OOM killer's count before cells, read only now and then (`cell_checks.rs`).
    oom: super::cell_checks::OomBaseline,
    /// Its contexts, the first one first (see `contexts.rs`); never empty.
    contexts: Mutex<Vec<Arc<Context>>>,
    /// Numbers the ids of contexts made later.
    next_context: AtomicU64,
    /// Its commands (see `commands.rs`).
    commands: CommandTable,
}

/// What `GET` of a session shows.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// Language of its interpreter.
    pub language: String,
    /// Running a cell now.
    pub busy: bool,
    /// Creation time.
    pub created: SystemTime,
    /// Last use.
    pub last_active: SystemTime,
    /// Cells executed.
    pub execution_count: u64,
    /// Effective limits.
    pub limits: EffectiveLimits,
    /// Resource use, when it could be read.
    pub usage: Option<UsageView>,
    /// What it may reach through the egress proxy.
    pub network: crate::services::egress::NetworkView,
    /// Client data.
    pub metadata: Option<serde_json::Value>,
}

/// Effective limits of a session.
#[derive(Debug, Clone, Copy)]
pub struct EffectiveLimits {
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Process limit.
    pub pids: u64,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Workspace quota in bytes.
    pub disk_bytes: u64,
    /// Default execution time limit in seconds.
    pub timeout_s: f64,
}

/// Resource use of a session.
#[derive(Debug, Clone, Copy)]
pub struct UsageView {
    /// Memory in use (bytes).
    pub memory_bytes: u64,
    /// Highest memory use seen (bytes).
    pub memory_peak_bytes: u64,
    /// Live processes.
    pub pids: u64,
    /// CPU time used (microseconds).
    pub cpu_usec: u64,
    /// Workspace bytes used.
    pub disk_bytes: u64,
}

/// Counters of the whole table, for status routes.
#[derive(Debug, Clone)]
pub struct TableStatus {
    /// Live sessions.
    pub sessions: usize,
    /// Sessions running a cell now.
    pub busy_sessions: usize,
    /// Most live sessions.
    pub max_sessions: usize,
    /// Sandboxes ready in the warm pool.
    pub pool_idle: usize,
    /// Target size of the warm pool.
    pub pool_min_idle: usize,
    /// Each lane of the warm pool (one per language of `PYXIS_POOL_LANGUAGES`).
    pub pool_lanes: Vec<LaneStatus>,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Cells executed since start.
    pub executions_total: u64,
}

/// The session table and the warm pool.
pub struct Sessions {
    cfg: Arc<Config>,
    launcher: Arc<dyn Launcher>,
    table: Mutex<HashMap<String, Arc<Session>>>,
    pool: Arc<WarmPool>,
    /// Sandboxes being created or held outside the table (one-shots).
    in_flight: AtomicUsize,
    executions_total: AtomicU64,
    started: Instant,
    shutting_down: AtomicBool,
}

impl Sessions {
    /// A session manager over `launcher`.
    pub fn new(cfg: Arc<Config>, launcher: Arc<dyn Launcher>) -> Arc<Self> {
        let pool = Arc::new(WarmPool::new(PoolBounds {
            lanes: cfg.pool_languages.clone(),
            max_bytes: cfg.pool_max_bytes,
            shrink_after: cfg.pool_shrink_after,
        }));
        Arc::new(Self {
            cfg,
            launcher,
            table: Mutex::new(HashMap::new()),
            pool,
            in_flight: AtomicUsize::new(0),
            executions_total: AtomicU64::new(0),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The sandbox launcher (for capabilities).
    pub fn launcher(&self) -> &dyn Launcher {
        self.launcher.as_ref()
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Start the background tasks: pool refill and idle reaping.
    pub fn start_background(self: &Arc<Self>) {
        let pool = self.pool.clone();
        let launcher = self.launcher.clone();
        let host: Arc<dyn PoolHost> = self.clone();
        tokio::spawn(async move { pool.refill_loop(launcher, host).await });
        let me = self.clone();
        tokio::spawn(async move { me.reap_loop().await });
    }

    fn live(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Sandboxes ready in the pool.
    pub fn pool_idle(&self) -> usize {
        self.pool.idle()
    }

    /// The languages the warm pool keeps sandboxes for.
    pub fn pool_languages(&self) -> Vec<Language> {
        self.pool.languages()
    }

    fn gauges(&self) {
        metrics::sessions_live(self.live(), self.pool_idle());
        for lane in self.pool.lanes() {
            metrics::pool_lane_idle(lane.language.name(), lane.idle);
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
                        !s.is_busy()
                            && !s.any_waiting()
                            && s.commands.running() == 0
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
                self.release(&id).await;
            }
        }
    }

    /// Take a ready sandbox from the pool, or make one, for a session of `language`: from
    /// its lane when there is one, else a Python one (its kernel is replaced). Returns the
    /// language of its first kernel.
    async fn acquire(
        &self,
        language: Language,
        limits: &ResourceLimits,
    ) -> Result<(Ready, Language)> {
        let t0 = Instant::now();
        let lane = warm::lane_language(language);
        let taken = match self.pool.take(lane) {
            Some(r) => Some((r, lane)),
            // Without a lane of its own, a language is served by Python's, whose demand
            // it then is; with one that missed, it takes a spare Python sandbox if any.
            None if lane != Language::Python && !self.pool.serves(lane) => self
                .pool
                .take(Language::Python)
                .map(|r| (r, Language::Python)),
            None if lane != Language::Python => self
                .pool
                .take_spare(Language::Python)
                .map(|r| (r, Language::Python)),
            None => None,
        };
        if let Some((r, first)) = taken {
            if *limits != self.launcher.default_limits() {
                if let Err(e) = r.sandbox.set_limits(limits) {
                    self.launcher.destroy(r.sandbox).await;
                    return Err(ServiceError::internal(e));
                }
            }
            metrics::session_created(true, t0.elapsed());
            return Ok((r, first));
        }
        // A sandbox whose kernel process runs the language's kernel from the start.
        let kernel = contexts::first_kernel(&self.cfg, language, limits.memory_bytes);
        let made = {
            let _foreground = self.pool.foreground();
            self.launcher.create(limits, kernel.as_ref()).await
        };
        match made {
            Ok((sandbox, conn)) => {
                metrics::session_created(false, t0.elapsed());
                let process = KernelProcess::Zygote;
                Ok((
                    Ready {
                        sandbox,
                        conn,
                        process,
                    },
                    lane,
                ))
            }
            Err(SandboxError::NoSlot) => Err(ServiceError::Exhausted(
                "no sandbox is free; retry shortly".into(),
            )),
            Err(e) if crate::fdlimit::is_exhaustion(&e) => {
                tracing::warn!(error = %e, "a create ran out of file descriptors");
                Err(ServiceError::Exhausted(
                    "the server is out of file descriptors (its open files limit); retry shortly"
                        .into(),
                ))
            }
            Err(e) => Err(ServiceError::internal(e)),
        }
    }

    /// Reserve capacity for one more session (live + in flight ≤ max).
    fn reserve(&self) -> Result<Reservation<'_>> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ServiceError::Exhausted(
                "the server is shutting down".into(),
            ));
        }
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if self.live() + n > self.cfg.max_sessions {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ServiceError::Exhausted(format!(
                "all {} sessions are in use; release one or retry later",
                self.cfg.max_sessions
            )));
        }
        Ok(Reservation(&self.in_flight))
    }

    /// Create a session.
    pub async fn create(&self, opts: SessionOptions) -> Result<Arc<Session>> {
        let _reservation = self.reserve()?;
        let session = self.make_session(opts).await?;
        if let Ok(mut t) = self.table.lock() {
            t.insert(session.id.clone(), session.clone());
        }
        self.gauges();
        Ok(session)
    }

    async fn make_session(&self, mut opts: SessionOptions) -> Result<Arc<Session>> {
        let default_memory = self.launcher.default_limits().memory_bytes;
        let owner = crate::tenants::admit_new(&mut opts.limits.memory_bytes, default_memory)?;
        let (ready, first) = self.acquire(opts.language, &opts.limits).await?;
        let Ready {
            sandbox,
            mut conn,
            mut process,
        } = ready;
        if let Some(egress) = sandbox.egress() {
            egress.set_policy(opts.network.clone());
        }
        if first != warm::lane_language(opts.language) {
            // A Python sandbox for another language: its kernel gives way to that one's,
            // started with the session's environment.
            match contexts::replace_first_kernel(
                &self.cfg,
                &sandbox,
                conn,
                opts.language,
                &opts.env,
                opts.limits.memory_bytes,
            )
            .await
            {
                Ok(started) => (conn, process) = started,
                Err(e) => {
                    self.launcher.destroy(sandbox).await;
                    return Err(crate::services::commands::start_error(e));
                }
            }
        } else {
            // A pooled kernel of the session's language (or the zygote's Python one) gets
            // the session's environment now; a pooled JavaScript kernel serving TypeScript
            // switches its language first.
            let mut env = std::borrow::Cow::Borrowed(&opts.env);
            if opts.language == Language::TypeScript
                || (first == Language::JavaScript
                    && env.contains_key(contexts::KERNEL_LANGUAGE_VAR))
            {
                // The session's own language, whatever its env says.
                env.to_mut().insert(
                    contexts::KERNEL_LANGUAGE_VAR.into(),
                    opts.language.name().into(),
                );
            }
            if !env.is_empty() {
                let configured =
                    tokio::time::timeout(Duration::from_secs(10), configure(&mut conn, &env))
                        .await
                        .unwrap_or(Err(KernelError::Closed));
                if let Err(e) = configured {
                    self.launcher.destroy(sandbox).await;
                    return Err(ServiceError::internal(e));
                }
            }
        }
        let first = Context::new(
            DEFAULT_CONTEXT.into(),
            opts.language,
            "/workspace".into(),
            conn,
            process,
        );
        let now = (Instant::now(), SystemTime::now());
        Ok(Arc::new(Session {
            id: sandbox.id().to_string(),
            sandbox,
            opts,
            created: now.1,
            last_active: Mutex::new(now),
            closed: AtomicBool::new(false),
            owner,
            last_scan: Mutex::new(None),
            workspace_root: Default::default(),
            oom: Default::default(),
            contexts: Mutex::new(vec![Arc::new(first)]),
            next_context: AtomicU64::new(1),
            commands: CommandTable::default(),
        }))
    }

    /// Look a session up.
    pub fn get(&self, id: &str) -> Result<Arc<Session>> {
        self.table
            .lock()
            .ok()
            .and_then(|t| t.get(id).cloned())
            .filter(|s| crate::tenants::access().sees(s.owner.tenant().name()))
            .ok_or_else(|| ServiceError::SessionNotFound(id.to_string()))
    }

    /// All live sessions (of the current tenant), oldest first.
    pub fn list(&self) -> Vec<Arc<Session>> {
        let access = crate::tenants::access();
        let mut v: Vec<Arc<Session>> = self
            .table
            .lock()
            .map(|t| {
                t.values()
                    .filter(|s| access.sees(s.owner.tenant().name()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|s| s.created);
        v
    }

    /// Release a session: kill its sandbox, delete its workspace. Returns
    /// whether it existed (for the current tenant).
    pub async fn delete(&self, id: &str) -> bool {
        self.get(id).is_ok() && self.release(id).await
    }

    /// [`Sessions::delete`] whoever owns it (the reaper).
    async fn release(&self, id: &str) -> bool {
        let Some(session) = self.table.lock().ok().and_then(|mut t| t.remove(id)) else {
            return false;
        };
        self.teardown(session).await;
        self.pool.poke();
        self.gauges();
        true
    }

    async fn teardown(&self, session: Arc<Session>) {
        session.closed.store(true, Ordering::Release);
        session.owner.release();
        // Stop a running cell: its task sees the kernel die.
        session.sandbox.clone().kill_processes().await;
        for ctx in session.all_contexts() {
            ctx.request_interrupt();
        }
        self.launcher.destroy(session.sandbox.clone()).await;
        session.workspace_root.close();
    }

    /// Run a cell in a fresh sandbox that is destroyed after it. `prepare` fills the
    /// workspace first (the one-shot's files); the cell's `files` then list only what the
    /// code wrote. The sandbox lives until the cell's events have all been produced, whether
    /// or not anyone still reads them.
    pub async fn one_shot<F, Fut>(
        self: &Arc<Self>,
        opts: SessionOptions,
        req: CellRequest,
        prepare: F,
    ) -> Result<CellHandle>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let reservation = self.reserve()?;
        let session = self.make_session(opts).await?;
        if let Err(e) = prepare(session.clone()).await {
            self.teardown(session).await;
            self.pool.poke();
            return Err(e);
        }
        // The reservation moves into the cell's task: the sandbox counts as in flight
        // until it is torn down.
        std::mem::forget(reservation);
        let me = self.clone();
        let handle = self.execute_then(&session, req, move |session| async move {
            me.teardown(session).await;
            me.in_flight.fetch_sub(1, Ordering::AcqRel);
            me.pool.poke();
        });
        match handle {
            Ok(h) => Ok(h),
            Err(e) => {
                self.teardown(session).await;
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Run one cell. Cells of a session run one at a time, in order of arrival; at most
    /// `max_queue` may wait (beyond, [`ServiceError::Busy`]). Returns at once: the cell runs
    /// in a task of its own (see the module's notes on cancel safety).
    pub fn execute(
        self: &Arc<Self>,
        session: &Arc<Session>,
        req: CellRequest,
    ) -> Result<CellHandle> {
        self.execute_then(session, req, |_| async {})
    }

    fn execute_then<F, Fut>(
        self: &Arc<Self>,
        session: &Arc<Session>,
        req: CellRequest,
        after: F,
    ) -> Result<CellHandle>
    where
        F: FnOnce(Arc<Session>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        if session.closed.load(Ordering::Acquire) {
            return Err(ServiceError::SessionNotFound(session.id.clone()));
        }
        // Charged to the session's owner (only the owner can reach it).
        session.owner.tenant().charge_cell()?;
        let ctx = session.context(req.context.as_deref())?;
        if ctx.waiting.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_queue {
            ctx.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ServiceError::Busy);
        }
        let waiting = Waiting(ctx.clone());
        let ticket = Ticket(ctx.clone(), ctx.tickets.fetch_add(1, Ordering::AcqRel));
        let (tx, rx) = mpsc::unbounded_channel();
        let (input_tx, input_rx) = mpsc::channel(4);
        let me = self.clone();
        let s = session.clone();
        tokio::spawn(async move {
            let mut turn = ctx.serving.subscribe();
            let _ = turn.wait_for(|serving| *serving >= ticket.1).await;
            let mut slot = ctx.kernel.lock().await;
            drop(waiting);
            if tx.is_closed() {
                // The caller gave up while the cell was queued: it is not run.
                metrics::cell_abandoned();
            } else if s.closed.load(Ordering::Acquire) {
                let _ = tx.send(CellEvent::Reply(gone_summary(slot.execution_count)));
            } else if ctx.deleted.load(Ordering::Acquire) {
                let _ = tx.send(CellEvent::Reply(failure(
                    CellStatus::Killed,
                    "ContextDeleted",
                    "the context was deleted".into(),
                    slot.execution_count,
                )));
            } else {
                me.run_locked(&s, &ctx, &mut slot, req, tx, input_rx).await;
            }
            drop(slot);
            drop(ticket);
            after(s).await;
        });
        Ok(CellHandle {
            events: rx,
            input: input_tx,
            session: session.clone(),
        })
    }

    async fn run_locked(
        &self,
        session: &Arc<Session>,
        ctx: &Arc<Context>,
        slot: &mut KernelSlot,
        req: CellRequest,
        tx: mpsc::UnboundedSender<CellEvent>,
        input_rx: mpsc::Receiver<String>,
    ) {
        // Read before `busy` is set: an interrupt that saw this cell busy counts past it
        // (both sides are SeqCst), one asked for before (idle: refused) does not.
        slot.interrupts_seen = ctx.interrupts.load(Ordering::SeqCst);
        ctx.busy.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let code = req.code.clone();
        let silent = req.silent;
        // The walk after the previous cell serves as this one's "before",
        // unless the files API changed the workspace since.
        let cached = session.last_scan.lock().ok().and_then(|mut s| s.take());
        let before = match cached {
            Some(snap) => Some(snap),
            None => self.scan_workspace(session).await,
        };
        let mut out = Emitter::new(tx, self.cfg.max_output_bytes);
        out.status(ExecutionState::Busy);
        out.send_raw(CellEvent::ExecuteInput {
            code: code.clone(),
            execution_count: slot.execution_count + 1,
        });
        let mut summary = self
            .run_cell(session, ctx, slot, req, &mut out, input_rx)
            .await;
        if let Some(before) = before {
            if let Some(after) = self.scan_workspace(session).await {
                summary.files = before
                    .changed(&after)
                    .into_iter()
                    .map(|(path, size)| FileChange { path, size })
                    .collect();
                if let Ok(mut last) = session.last_scan.lock() {
                    *last = Some(after);
                }
            }
        }
        ctx.busy.store(false, Ordering::Release);
        summary.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        summary.truncated |= out.budget.truncated;
        session.touch();
        ctx.executions.fetch_add(1, Ordering::Relaxed);
        self.executions_total.fetch_add(1, Ordering::Relaxed);
        metrics::cell_finished(
            summary.status,
            summary.error.as_ref().map(|e| e.name.as_str()),
            started.elapsed(),
            out.bytes,
        );
        if !silent {
            let record = CellRecord {
                code,
                execution_count: summary.execution_count,
                status: summary.status,
                outputs: out.take_outputs(),
            };
            if let Ok(mut h) = ctx.history.lock() {
                h.push(record, self.cfg.history_max_bytes);
            }
        }
        out.status(ExecutionState::Idle);
        out.send_raw(CellEvent::Reply(summary));
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
        if session.workspace_root.is_empty(&path) {
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
        ctx: &Arc<Context>,
        slot: &mut KernelSlot,
        req: CellRequest,
        out: &mut Emitter,
        mut input_rx: mpsc::Receiver<String>,
    ) -> CellSummary {
        let mut state_lost = false;
        // A kernel lost earlier (restart failed) is brought back first.
        if slot.conn.is_none() {
            if let Err(e) = self.restart_kernel(session, ctx, slot).await {
                return failure(
                    CellStatus::Killed,
                    "KernelDied",
                    format!("the interpreter could not be restarted: {e}"),
                    slot.execution_count,
                );
            }
            state_lost = true;
        }
        // Unguessable: user code can write frames to its own socket, and must
        // not be able to forge the reply of a cell it has not seen yet.
        let id = crate::ids::new_id();
        let Some(conn) = slot.conn.as_mut() else {
            return failure(CellStatus::Killed, "KernelDied", "no interpreter".into(), 0);
        };
        let oom_before = session.oom.before_cell(|| session.sandbox.oom_kills());
        let timeout = req.timeout;
        let kreq = KernelRequest::ExecuteRequest {
            id: id.clone(),
            code: req.code,
            max_output_bytes: self.cfg.max_output_bytes,
            silent: req.silent,
            allow_stdin: req.allow_stdin,
            store_history: req.store_history,
            user_expressions: req.user_expressions,
        };
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut timed_out = false;
        let mut interrupted = false;
        let mut failure_cause: Option<KernelError> = None;
        let mut reply: Option<CellReply> = None;
        let mut error: Option<CellError> = None;
        let mut input_open = true;
        // Node.js can take a SIGINT without acting on it: one that arrives as vm's watched
        // run begins waits behind the cell's busy loop. Its kernel is signalled again until
        // the cell ends (see runtime/node/kernel.js).
        let node = matches!(ctx.language, Language::JavaScript | Language::TypeScript);
        let mut resend: Option<tokio::time::Instant> = None;
        let mut signal_due = false;
        let mut drained = 0;
        if let Err(e) = conn.send(&kreq).await {
            failure_cause = Some(e);
        }
        while failure_cause.is_none() && reply.is_none() {
            // Armed before the count is read, so an interrupt asked for after the read
            // wakes this wait; one asked for before (while the request was written or
            // the last event handled) is seen by the read.
            let wake = ctx.interrupt.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if !interrupted
                && !timed_out
                && ctx.interrupts.load(Ordering::SeqCst) != slot.interrupts_seen
            {
                interrupted = true;
                signal_due = true;
                deadline = tokio::time::Instant::now() + self.cfg.interrupt_grace;
            }
            if signal_due {
                // Events the kernel has already sent come first: a reply among them means
                // the cell is over, and a signal now would reach an idle kernel (a Node.js
                // one would take it for its next cell). A bounded number: a cell that
                // floods output is signalled all the same.
                if drained < MAX_DRAINED_BEFORE_SIGNAL {
                    if let Some(ev) = conn.next_event().now_or_never() {
                        drained += 1;
                        on_cell_event(out, &id, ev, &mut reply, &mut error, &mut failure_cause);
                        continue;
                    }
                }
                drained = 0;
                signal_due = false;
                interrupt_kernel(session, ctx);
                resend = node.then(|| tokio::time::Instant::now() + NODE_INTERRUPT_RESEND);
            }
            tokio::select! {
                ev = conn.next_event() => {
                    on_cell_event(out, &id, ev, &mut reply, &mut error, &mut failure_cause);
                },
                value = input_rx.recv(), if input_open => match value {
                    Some(value) => {
                        let r = KernelRequest::InputReply { id: id.clone(), value };
                        if let Err(e) = conn.send(&r).await {
                            failure_cause = Some(e);
                        }
                    }
                    None => input_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if timed_out || interrupted {
                        // The grace period is over: the cell ignored SIGINT.
                        failure_cause = Some(KernelError::Closed);
                        self.kill_context(session, ctx).await;
                    } else {
                        timed_out = true;
                        signal_due = true;
                        deadline = tokio::time::Instant::now() + self.cfg.interrupt_grace;
                    }
                },
                _ = sleep_until_some(resend) => {
                    resend = None;
                    signal_due = true;
                },
                // The count is read at the top of the loop.
                _ = &mut wake, if !interrupted && !timed_out => {},
            }
        }
        if let Some((_, count, _, _)) = &reply {
            slot.execution_count = *count;
        }
        match failure_cause {
            None => {
                let (status, count, truncated, user_expressions) = reply.unwrap_or((
                    ReplyStatus::Error,
                    slot.execution_count,
                    false,
                    JsonMap::new(),
                ));
                let mut summary = CellSummary {
                    status: if status == ReplyStatus::Error || error.is_some() {
                        CellStatus::Error
                    } else {
                        CellStatus::Ok
                    },
                    execution_count: count,
                    error,
                    files: Vec::new(),
                    truncated,
                    state_lost,
                    duration_ms: 0.0,
                    user_expressions,
                };
                if timed_out {
                    metrics::timeout();
                    summary.status = CellStatus::Timeout;
                    summary.error = Some(CellError {
                        name: "Timeout".into(),
                        value: format!(
                            "execution exceeded its time limit of {:.1} s and was interrupted",
                            timeout.as_secs_f64()
                        ),
                        traceback: summary
                            .error
                            .take()
                            .map(|e| e.traceback)
                            .unwrap_or_default(),
                    });
                }
                summary
            }
            Some(err) => {
                // The kernel is gone or misbehaved: kill what is left, start a
                // fresh interpreter in the same sandbox, report the loss.
                if session.closed.load(Ordering::Acquire) {
                    return gone_summary(slot.execution_count);
                }
                self.kill_context(session, ctx).await;
                let oom_now = session.sandbox.oom_kills();
                session.oom.note(oom_now);
                let oom = oom_now > oom_before;
                tracing::info!(id = %session.id, error = %err, oom, "kernel lost; restarting");
                let (status, name, value) = if oom {
                    metrics::oom_kill();
                    (
                        CellStatus::Killed,
                        "OutOfMemory",
                        format!(
                            "the interpreter ran out of memory (limit {} MiB) and was restarted",
                            session.opts.limits.memory_bytes / (1024 * 1024)
                        ),
                    )
                } else if timed_out {
                    metrics::timeout();
                    (
                        CellStatus::Timeout,
                        "Timeout",
                        format!(
                            "execution exceeded its time limit of {:.1} s, did not stop when interrupted, and the interpreter was restarted",
                            timeout.as_secs_f64()
                        ),
                    )
                } else if interrupted {
                    (
                        CellStatus::Killed,
                        "Interrupted",
                        "the cell did not stop when interrupted; the interpreter was restarted"
                            .to_string(),
                    )
                } else if matches!(err, KernelError::Protocol(_)) {
                    (
                        CellStatus::Killed,
                        "ProtocolViolation",
                        "the interpreter sent an invalid or oversized message; it was restarted"
                            .to_string(),
                    )
                } else {
                    (
                        CellStatus::Killed,
                        "KernelDied",
                        "the interpreter exited; it was restarted".to_string(),
                    )
                };
                slot.conn = None;
                slot.execution_count = 0;
                metrics::restart();
                if let Err(e) = self.restart_kernel(session, ctx, slot).await {
                    tracing::error!(id = %session.id, error = %e, "restart failed");
                }
                let mut s = failure(status, name, value, slot.execution_count);
                s.state_lost = true;
                s
            }
        }
    }

    /// Kills a context's kernel: the whole sandbox when the zygote's kernel is alone in it
    /// (and is then started afresh with a new sandbox init), its own process otherwise.
    async fn kill_context(&self, session: &Arc<Session>, ctx: &Arc<Context>) {
        match ctx.process() {
            KernelProcess::Zygote if session.shared_beyond(ctx) => {
                session.sandbox.kill_first_kernel()
            }
            KernelProcess::Zygote => session.sandbox.clone().kill_processes().await,
            KernelProcess::Joined { mut exit, .. } => {
                ctx.signal_joined(nix::sys::signal::Signal::SIGKILL, true);
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), exit.wait_for(|e| e.is_some()))
                        .await;
            }
            KernelProcess::None => {}
        }
    }

    async fn restart_kernel(
        &self,
        session: &Arc<Session>,
        ctx: &Arc<Context>,
        slot: &mut KernelSlot,
    ) -> std::result::Result<(), SandboxError> {
        slot.conn = None;
        slot.execution_count = 0;
        self.kill_context(session, ctx).await;
        ctx.set_process(KernelProcess::None);
        let first = session.is_first(ctx);
        if first && !session.shared_beyond(ctx) {
            // Alone in the sandbox: a fresh one from the zygote, the fast way (its kernel
            // process runs the context's kernel).
            session.sandbox.clone().kill_processes().await;
            let kernel =
                contexts::first_kernel(&self.cfg, ctx.language, session.opts.limits.memory_bytes);
            let mut conn = session.sandbox.clone().start_kernel(kernel).await?;
            if !session.opts.env.is_empty() {
                configure(&mut conn, &session.opts.env).await?;
            }
            ctx.set_process(KernelProcess::Zygote);
            slot.conn = Some(conn);
            return Ok(());
        }
        let mut req = contexts::kernel_request(
            &self.cfg,
            ctx.language,
            &ctx.cwd,
            &session.opts.env,
            session.opts.limits.memory_bytes,
        );
        if !first {
            req.oom_score_adj = contexts::CONTEXT_OOM_SCORE_ADJ;
        }
        let (conn, joined) = session.sandbox.clone().start_context(req).await?;
        ctx.set_process(KernelProcess::Joined {
            pid: joined.pid,
            exit: joined.exit,
        });
        slot.conn = Some(conn);
        Ok(())
    }

    /// Interrupt the running cells (of every context). Returns whether one was running.
    pub fn interrupt(&self, session: &Arc<Session>) -> bool {
        let mut any = false;
        for ctx in session.all_contexts() {
            if ctx.busy.load(Ordering::SeqCst) {
                ctx.request_interrupt();
                any = true;
            }
        }
        any
    }

    /// A fresh interpreter in the same workspace; a running cell is killed.
    pub async fn restart(&self, session: &Arc<Session>) -> Result<()> {
        let ctx = session.main();
        self.restart_context_locked(session, &ctx).await
    }

    /// A fresh kernel for `ctx`; its running cell is killed, the others' go on.
    async fn restart_context_locked(
        &self,
        session: &Arc<Session>,
        ctx: &Arc<Context>,
    ) -> Result<()> {
        self.kill_context(session, ctx).await;
        let mut slot = ctx.kernel.lock().await;
        if session.closed.load(Ordering::Acquire) {
            return Err(ServiceError::SessionNotFound(session.id.clone()));
        }
        // A concurrent restart or delete kills through the cgroup without the
        // lock, and can hit the kernel this one is starting: try again, and
        // answer 404 if the session went away meanwhile.
        let mut attempt = 0;
        loop {
            match self.restart_kernel(session, ctx, &mut slot).await {
                Ok(()) => break,
                Err(_) if session.closed.load(Ordering::Acquire) => {
                    return Err(ServiceError::SessionNotFound(session.id.clone()));
                }
                Err(e) if attempt >= 2 => return Err(ServiceError::internal(e)),
                Err(e) => {
                    tracing::warn!(id = %session.id, error = %e, "restart failed; retrying");
                    attempt += 1;
                }
            }
        }
        metrics::restart();
        session.touch();
        Ok(())
    }

    /// Send one request to the session's kernel and wait for the answer `pick` accepts
    /// (completion, inspection, …). Waits for a running cell to end first, as Jupyter's
    /// shell channel does.
    pub async fn kernel_query<T>(
        &self,
        session: &Arc<Session>,
        make: impl FnOnce(String) -> KernelRequest,
        mut pick: impl FnMut(&str, KernelEvent) -> Option<T>,
    ) -> Result<T> {
        let ctx = session.main();
        let mut slot = ctx.kernel.lock().await;
        if session.closed.load(Ordering::Acquire) {
            return Err(ServiceError::SessionNotFound(session.id.clone()));
        }
        let id = crate::ids::new_id();
        let Some(conn) = slot.conn.as_mut() else {
            return Err(ServiceError::internal("the session has no interpreter"));
        };
        let asked = async {
            conn.send(&make(id.clone())).await?;
            loop {
                if let Some(t) = pick(&id, conn.next_event().await?) {
                    return Ok::<T, KernelError>(t);
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), asked).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => {
                // The next cell brings a fresh interpreter.
                slot.conn = None;
                Err(ServiceError::internal(e))
            }
            Err(_) => Err(ServiceError::Invalid(
                "the interpreter did not answer in time".into(),
            )),
        }
    }

    /// Describe a session.
    pub fn info(&self, session: &Arc<Session>) -> SessionView {
        let main = session.main();
        let execution_count = main.view().execution_count;
        let usage = session.sandbox.usage().map(|u| UsageView {
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
        SessionView {
            id: session.id.clone(),
            language: main.language.name().into(),
            busy: session.is_busy(),
            created: session.created,
            last_active: last,
            execution_count,
            limits: self.limits_of(&session.opts),
            usage,
            metadata: session.opts.metadata.clone(),
            network: crate::services::egress::NetworkView::of(&session.opts.network),
        }
    }

    /// The effective limits of sessions made with `opts`.
    pub fn limits_of(&self, opts: &SessionOptions) -> EffectiveLimits {
        EffectiveLimits {
            memory_bytes: opts.limits.memory_bytes,
            pids: opts.limits.pids,
            cpus: opts.limits.cpu_millicores as f64 / 1000.0,
            disk_bytes: self.cfg.disk_bytes,
            timeout_s: opts.timeout.as_secs_f64(),
        }
    }

    /// The limits a session gets when it asks for none.
    pub fn default_options(&self) -> SessionOptions {
        SessionOptions {
            env: Default::default(),
            timeout: self.cfg.exec_timeout.min(self.cfg.max_exec_timeout),
            limits: self.launcher.default_limits(),
            metadata: None,
            language: Language::Python,
            network: self.cfg.egress.default.clone(),
        }
    }

    /// Counters of the table.
    pub fn status(&self) -> TableStatus {
        let sessions = self.list();
        TableStatus {
            busy_sessions: sessions.iter().filter(|s| s.is_busy()).count(),
            sessions: sessions.len(),
            max_sessions: self.cfg.max_sessions,
            pool_idle: self.pool_idle(),
            pool_min_idle: self.cfg.pool_min_idle,
            pool_lanes: self.pool.lanes(),
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
        self.pool.poke();
        let sessions: Vec<Arc<Session>> = self
            .table
            .lock()
            .map(|mut t| t.drain().map(|(_, s)| s).collect())
            .unwrap_or_default();
        for s in sessions {
            self.teardown(s).await;
        }
        for r in self.pool.drain() {
            self.launcher.destroy(r.sandbox).await;
        }
        // A creation in flight (the pool's refill) destroys its sandbox when it sees the
        // shutdown; whatever is still there after the wait is killed with the rest.
        if !self
            .launcher
            .wait_all_released(Duration::from_secs(5))
            .await
        {
            tracing::warn!("sandboxes still being created at shutdown; killing them");
        }
        self.launcher.cleanup_all().await;
    }
}

impl PoolHost for Sessions {
    fn has_room(&self) -> bool {
        self.live() + self.in_flight.load(Ordering::Acquire) < self.cfg.max_sessions
    }

    fn stopping(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.gauges();
    }

    fn make(
        &self,
        language: Language,
    ) -> futures_util::future::BoxFuture<'_, std::result::Result<Ready, SandboxError>> {
        Box::pin(async move {
            let limits = self.launcher.default_limits();
            let kernel = contexts::pooled_kernel(&self.cfg, language, limits.memory_bytes);
            let (sandbox, conn) = self.launcher.create(&limits, kernel.as_ref()).await?;
            Ok(Ready {
                sandbox,
                conn,
                process: KernelProcess::Zygote,
            })
        })
    }
}

impl Session {
    /// What the session may reach through the egress proxy.
    pub fn network(&self) -> &pyxis_egress::EgressPolicy {
        &self.opts.network
    }

    /// The session's default execution time limit.
    pub fn default_timeout(&self) -> Duration {
        self.opts.timeout
    }

    /// Open the session's workspace (a fresh descriptor of its root; blocking).
    pub fn workspace(&self) -> std::result::Result<WorkspaceFs, WorkspaceFsError> {
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

    /// Whether a cell is running (in any context).
    pub fn is_busy(&self) -> bool {
        self.all_contexts()
            .iter()
            .any(|c| c.busy.load(Ordering::Acquire))
    }

    fn any_waiting(&self) -> bool {
        self.all_contexts()
            .iter()
            .any(|c| c.waiting.load(Ordering::Acquire) > 0)
    }

    /// The cells the first context ran so far (bounded by `PYXIS_HISTORY_MAX_BYTES`,
    /// oldest dropped first).
    pub fn history(&self) -> Vec<CellRecord> {
        self.main()
            .history
            .lock()
            .map(|h| h.cells.iter().map(|(r, _)| r.clone()).collect())
            .unwrap_or_default()
    }

    /// Every context, the first one first.
    pub fn all_contexts(&self) -> Vec<Arc<Context>> {
        self.contexts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The first context.
    pub fn main(&self) -> Arc<Context> {
        let all = self.all_contexts();
        // Never empty: the first context is made with the session and never deleted.
        all.into_iter()
            .next()
            .unwrap_or_else(|| unreachable!("a session has a first context"))
    }

    /// The context `id` (`None`: the first).
    pub fn context(&self, id: Option<&str>) -> Result<Arc<Context>> {
        let all = self.all_contexts();
        match id {
            None => Ok(self.main()),
            Some(id) => all
                .into_iter()
                .find(|c| c.id == id)
                .ok_or_else(|| contexts::not_found(id)),
        }
    }

    fn is_first(&self, ctx: &Arc<Context>) -> bool {
        Arc::ptr_eq(&self.main(), ctx)
    }

    /// Whether anything but `ctx` runs in the sandbox (another context, a command).
    fn shared_beyond(&self, ctx: &Arc<Context>) -> bool {
        self.all_contexts().iter().any(|c| !Arc::ptr_eq(c, ctx)) || self.commands.running() > 0
    }

    /// The session's commands.
    pub fn commands(&self) -> &CommandTable {
        &self.commands
    }

    /// The environment the session was made with (its contexts' and commands').
    pub fn env(&self) -> &std::collections::BTreeMap<String, String> {
        &self.opts.env
    }

    /// The session's sandbox.
    pub fn sandbox(&self) -> &Arc<dyn SandboxHandle> {
        &self.sandbox
    }
}

/// Contexts (see `contexts.rs`): more kernels in one session's sandbox.
impl Sessions {
    /// Starts a context of `language` in `session`, its working directory `cwd`
    /// (`/workspace` by default). At most [`MAX_CONTEXTS`] per session.
    pub async fn create_context(
        &self,
        session: &Arc<Session>,
        language: Language,
        cwd: Option<&str>,
    ) -> Result<Arc<Context>> {
        if session.closed.load(Ordering::Acquire) {
            return Err(ServiceError::SessionNotFound(session.id.clone()));
        }
        let cwd = contexts::context_cwd(cwd)?;
        let n = session.next_context.fetch_add(1, Ordering::AcqRel);
        if session.all_contexts().len() >= MAX_CONTEXTS {
            return Err(ServiceError::TooMany(format!(
                "at most {MAX_CONTEXTS} contexts per session"
            )));
        }
        let mut req = contexts::kernel_request(
            &self.cfg,
            language,
            &cwd,
            &session.opts.env,
            session.opts.limits.memory_bytes,
        );
        req.oom_score_adj = contexts::CONTEXT_OOM_SCORE_ADJ;
        let oom_before = session.sandbox.oom_kills();
        let started = session.sandbox.clone().start_context(req).await;
        let oom_now = session.sandbox.oom_kills();
        session.oom.note(oom_now);
        let (conn, joined) = match started {
            Ok(started) => started,
            Err(SandboxError::ContextStart(why)) if oom_now > oom_before => {
                return Err(ServiceError::Failed {
                    code: "context_start_failed",
                    message: format!(
                        "{why}: the session ran out of memory (limit {} MiB) starting another \
                         {} interpreter",
                        session.opts.limits.memory_bytes >> 20,
                        language.name()
                    ),
                })
            }
            Err(e) => return Err(crate::services::commands::start_error(e)),
        };
        let process = KernelProcess::Joined {
            pid: joined.pid,
            exit: joined.exit.clone(),
        };
        let ctx = Arc::new(Context::new(
            format!("{}-{n}", language.name()),
            language,
            cwd,
            conn,
            process,
        ));
        let added = match session.contexts.lock() {
            Ok(mut all) if all.len() < MAX_CONTEXTS && !session.closed.load(Ordering::Acquire) => {
                all.push(ctx.clone());
                true
            }
            _ => false,
        };
        if !added {
            joined.signal_group(nix::sys::signal::Signal::SIGKILL);
            return Err(ServiceError::TooMany(format!(
                "at most {MAX_CONTEXTS} contexts per session"
            )));
        }
        session.touch();
        Ok(ctx)
    }

    /// The session's contexts, the first one first.
    pub fn list_contexts(&self, session: &Arc<Session>) -> Vec<contexts::ContextView> {
        session.all_contexts().iter().map(|c| c.view()).collect()
    }

    /// Ends a context: its kernel (process group) is killed, a queued cell is answered
    /// `ContextDeleted`. The first context cannot be deleted (delete the session).
    pub async fn delete_context(&self, session: &Arc<Session>, id: &str) -> Result<()> {
        let ctx = session.context(Some(id))?;
        if session.is_first(&ctx) {
            return Err(ServiceError::Conflict {
                code: "first_context",
                message: "the session's first context cannot be deleted; delete the session".into(),
            });
        }
        ctx.deleted.store(true, Ordering::Release);
        if let Ok(mut all) = session.contexts.lock() {
            all.retain(|c| !Arc::ptr_eq(c, &ctx));
        }
        self.kill_context(session, &ctx).await;
        ctx.request_interrupt();
        session.touch();
        Ok(())
    }

    /// A fresh kernel for context `id` (its state is lost, the others' is not).
    pub async fn restart_context(&self, session: &Arc<Session>, id: &str) -> Result<()> {
        let ctx = session.context(Some(id))?;
        self.restart_context_locked(session, &ctx).await
    }

    /// Interrupts the running cell of context `id`; whether one was running.
    pub fn interrupt_context(&self, session: &Arc<Session>, id: &str) -> Result<bool> {
        let ctx = session.context(Some(id))?;
        if ctx.busy.load(Ordering::SeqCst) {
            ctx.request_interrupt();
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

/// What a kernel answered a cell with: status, execution count, truncated, user expressions.
type CellReply = (ReplyStatus, u64, bool, JsonMap);

/// One event of a running cell's kernel: its output goes to `out`, its reply or error is
/// kept, a broken connection is the cell's failure.
fn on_cell_event(
    out: &mut Emitter,
    id: &str,
    ev: std::result::Result<KernelEvent, KernelError>,
    reply: &mut Option<CellReply>,
    error: &mut Option<CellError>,
    failure: &mut Option<KernelError>,
) {
    match ev {
        Ok(ev) => match out.kernel_event(id, ev) {
            Some(Handled::Reply(status, count, truncated, exprs)) => {
                *reply = Some((status, count, truncated, exprs));
            }
            Some(Handled::Error(e)) => *error = Some(e),
            None => {}
        },
        Err(e) => *failure = Some(e),
    }
}

/// At most this many events already sent are read before a due signal goes out.
const MAX_DRAINED_BEFORE_SIGNAL: usize = 256;

/// How often a Node.js kernel that was interrupted is signalled again while its cell runs.
const NODE_INTERRUPT_RESEND: Duration = Duration::from_millis(200);

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGINT to a context's kernel (a running cell becomes `KeyboardInterrupt`).
fn interrupt_kernel(session: &Session, ctx: &Context) {
    if !ctx.signal_joined(nix::sys::signal::Signal::SIGINT, false) {
        session.sandbox.interrupt();
    }
}

async fn configure(
    conn: &mut KernelConn,
    env: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<(), KernelError> {
    conn.send(&KernelRequest::Configure {
        id: "env".into(),
        env: env.clone(),
    })
    .await?;
    while !matches!(conn.next_event().await?, KernelEvent::ConfigureReply { .. }) {}
    Ok(())
}

fn failure(status: CellStatus, name: &str, value: String, execution_count: u64) -> CellSummary {
    CellSummary {
        status,
        execution_count,
        error: Some(CellError {
            name: name.into(),
            value,
            traceback: Vec::new(),
        }),
        files: Vec::new(),
        truncated: false,
        state_lost: false,
        duration_ms: 0.0,
        user_expressions: JsonMap::new(),
    }
}

fn gone_summary(execution_count: u64) -> CellSummary {
    let mut s = failure(
        CellStatus::Killed,
        crate::services::events::SESSION_DELETED,
        "the session was deleted".into(),
        execution_count,
    );
    s.state_lost = true;
    s
}

/// Decrements the in-flight counter when dropped.
struct Reservation<'a>(&'a AtomicUsize);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a cell as waiting until dropped (it got the kernel, or its task ended).
struct Waiting(Arc<Context>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A cell's place in its context's order; the next cell's turn comes when it is dropped.
struct Ticket(Arc<Context>, u64);

impl Drop for Ticket {
    fn drop(&mut self) {
        let n = self.1;
        self.0
            .serving
            .send_modify(|serving| *serving = (*serving).max(n + 1));
    }
}

/// What a kernel event meant for the cell's loop.
enum Handled {
    Reply(ReplyStatus, u64, bool, JsonMap),
    Error(CellError),
}

/// Turns the kernel's events into [`CellEvent`]s under the output cap, sends them to the
/// caller (if still there) and keeps them for the history.
struct Emitter {
    tx: mpsc::UnboundedSender<CellEvent>,
    budget: OutputBudget,
    acc: Vec<OutputItem>,
    bytes: u64,
}

impl Emitter {
    fn new(tx: mpsc::UnboundedSender<CellEvent>, cap: u64) -> Self {
        Self {
            tx,
            budget: OutputBudget::new(cap),
            acc: Vec::new(),
            bytes: 0,
        }
    }

    fn status(&mut self, s: ExecutionState) {
        self.send_raw(CellEvent::Status(s));
    }

    fn send_raw(&mut self, ev: CellEvent) {
        // A caller that went away no longer reads: the cell goes on regardless.
        let _ = self.tx.send(ev);
    }

    fn emit(&mut self, ev: CellEvent) {
        match &ev {
            CellEvent::Stream { name, text } => {
                match self.acc.last_mut() {
                    Some(OutputItem::Stream { name: n, text: t }) if n == name => t.push_str(text),
                    _ => self.acc.push(OutputItem::Stream {
                        name: name.clone(),
                        text: text.clone(),
                    }),
                }
                self.bytes += text.len() as u64;
            }
            CellEvent::DisplayData {
                data,
                metadata,
                transient,
            } => {
                self.bytes += map_size(data);
                self.acc.push(OutputItem::DisplayData {
                    data: data.clone(),
                    metadata: metadata.clone(),
                    transient: transient.clone(),
                })
            }
            CellEvent::ExecuteResult {
                execution_count,
                data,
                metadata,
            } => {
                self.bytes += map_size(data);
                self.acc.push(OutputItem::ExecuteResult {
                    execution_count: *execution_count,
                    data: data.clone(),
                    metadata: metadata.clone(),
                })
            }
            CellEvent::Error(e) => self.acc.push(OutputItem::Error {
                ename: e.name.clone(),
                evalue: e.value.clone(),
                traceback: e.traceback.clone(),
            }),
            CellEvent::ClearOutput { wait: false } => self.acc.clear(),
            _ => {}
        }
        self.send_raw(ev);
    }

    fn take_outputs(&mut self) -> Vec<OutputItem> {
        std::mem::take(&mut self.acc)
    }

    /// Handle one kernel event of the cell `id`; events of other requests are dropped.
    #[expect(
        clippy::collapsible_match,
        reason = "the cap is charged in the arm, only for this cell's events"
    )]
    fn kernel_event(&mut self, id: &str, ev: KernelEvent) -> Option<Handled> {
        let rich =
            |b: &mut OutputBudget, data: &JsonMap, metadata: &JsonMap, transient: &JsonMap| {
                b.take(map_size(data) + map_size(metadata) + map_size(transient))
            };
        match ev {
            KernelEvent::Stream {
                id: got,
                name,
                text,
            } if got == id => {
                let name = if name == "stderr" { "stderr" } else { "stdout" };
                if let Some(text) = self.budget.take_text(text) {
                    self.emit(CellEvent::Stream {
                        name: name.into(),
                        text,
                    });
                }
            }
            KernelEvent::DisplayData {
                id: got,
                data,
                metadata,
                transient,
            } if got == id => {
                if rich(&mut self.budget, &data, &metadata, &transient) {
                    self.emit(CellEvent::DisplayData {
                        data,
                        metadata,
                        transient,
                    });
                }
            }
            KernelEvent::UpdateDisplayData {
                id: got,
                data,
                metadata,
                transient,
            } if got == id => {
                if rich(&mut self.budget, &data, &metadata, &transient) {
                    self.emit(CellEvent::UpdateDisplayData {
                        data,
                        metadata,
                        transient,
                    });
                }
            }
            KernelEvent::ClearOutput { id: got, wait } if got == id => {
                if self.budget.take(0) {
                    self.emit(CellEvent::ClearOutput { wait });
                }
            }
            KernelEvent::ExecuteResult {
                id: got,
                execution_count,
                data,
                metadata,
            } if got == id => {
                if rich(&mut self.budget, &data, &metadata, &JsonMap::new()) {
                    self.emit(CellEvent::ExecuteResult {
                        execution_count,
                        data,
                        metadata,
                    });
                }
            }
            KernelEvent::Error {
                id: got,
                ename,
                evalue,
                traceback,
            } if got == id => {
                let e = self.budget.take_error(CellError {
                    name: ename,
                    value: evalue,
                    traceback,
                });
                self.emit(CellEvent::Error(e.clone()));
                return Some(Handled::Error(e));
            }
            KernelEvent::InputRequest {
                id: got,
                prompt,
                password,
            } if got == id => {
                if self.budget.take(prompt.len() as u64) {
                    self.emit(CellEvent::InputRequest { prompt, password });
                }
            }
            KernelEvent::ExecuteReply {
                id: got,
                status,
                execution_count,
                truncated,
                user_expressions,
            } if got == id => {
                let user_expressions = if self.budget.take(map_size(&user_expressions)) {
                    user_expressions
                } else {
                    JsonMap::new()
                };
                return Some(Handled::Reply(
                    status,
                    execution_count,
                    truncated,
                    user_expressions,
                ));
            }
            // Events of an earlier, abandoned request, or stray messages.
            _ => {}
        }
        None
    }
}

/// RFC 3339 UTC timestamp with second precision.
///
/// Times come from inside sandboxes too (a file's mtime is whatever its code set), so any
/// `SystemTime` is accepted: before 1970 shows as the epoch, after 9999 as its last second.
pub fn rfc3339(t: SystemTime) -> String {
    // humantime panics outside 1970..=9999.
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + since.min(LAST)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_formats_without_a_panic() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(rfc3339(epoch), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(epoch - Duration::from_secs(10)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(epoch + Duration::from_secs(1 << 40)),
            "9999-12-31T23:59:59Z"
        );
        for secs in [
            0u64,
            1,
            1 << 31,
            1 << 33,
            253_402_300_799,
            253_402_300_800,
            u32::MAX as u64 * 100,
        ] {
            let _ = rfc3339(epoch + Duration::from_secs(secs));
        }
    }
}
