//! Contexts: the kernels of one session, each with its own language, state, execution
//! count, queue of cells and history, all sharing the session's sandbox (its workspace,
//! `/tmp`, network namespace, limits and lifetime). No HTTP here.
//!
//! The first context is made with the session (`SessionOptions::language`, default
//! Python): it is the kernel process the zygote forked with the sandbox, which runs the
//! Python kernel it was forked with or executes another language's ([`first_kernel`]).
//! Every other kernel joins the live sandbox through the join path (`sandboxes::joined`):
//!
//! - `python`: the same driver, started cold (`python -m pyxis_runtime.kernel`), about a
//!   second of imports, since a fork of the zygote cannot join an existing sandbox;
//! - `javascript`/`js` and `typescript`/`ts`: the Node.js kernel (`runtime/node`), TypeScript
//!   cells transpiled by it;
//! - `bash`: `pyxis_runtime.bash_kernel`, which keeps one `bash` so `cd`, variables and
//!   functions persist.
//!
//! The API, for doors (on [`crate::services::Sessions`], see `sessions.rs`): `create_context`,
//! `list_contexts`, `delete_context`, `restart_context`, and `execute` with
//! `CellRequest::context`. Interrupt, time limit, OOM, output cap and restart hold per
//! context: a context's restart kills its own process group only, and `state_lost` is about
//! that context alone. At most [`MAX_CONTEXTS`] per session.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::sandboxes::joined::{ExecRequest, ExitInfo};
use crate::sandboxes::kernel::KernelConn;
use crate::services::error::{Result, ServiceError};
use crate::services::events::OutputItem;
use crate::services::sessions::CellRecord;

/// Most contexts in one session (the first included).
pub const MAX_CONTEXTS: usize = 8;

/// Set by a `configure` request, switches a Node kernel's language (`javascript` or
/// `typescript`): how a pooled JavaScript kernel serves a TypeScript session. The kernel
/// removes it from its environment.
pub(crate) const KERNEL_LANGUAGE_VAR: &str = "PYXIS_KERNEL_LANGUAGE";

/// The `oom_score_adj` of the kernels of contexts started after the first (whose kernel
/// keeps 0): when a session runs out of memory, the OOM killer takes one of them (or a
/// command, at 1000) before the first context's kernel, unless that one holds nine tenths
/// of the limit more than they do. What they start inherits it and cannot lower it.
pub(crate) const CONTEXT_OOM_SCORE_ADJ: i32 = 900;

/// A context's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// IPython-based Python.
    Python,
    /// Node.js.
    JavaScript,
    /// TypeScript on the Node.js kernel.
    TypeScript,
    /// GNU bash.
    Bash,
}

impl Language {
    /// Every language, by its canonical name.
    pub const ALL: [Language; 4] = [
        Language::Python,
        Language::JavaScript,
        Language::TypeScript,
        Language::Bash,
    ];

    /// Parses a client's name (`python`, `javascript`/`js`, `typescript`/`ts`,
    /// `bash`/`sh`), case-insensitively.
    pub fn parse(name: &str) -> Result<Language> {
        match name.trim().to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Language::Python),
            "javascript" | "js" | "node" | "nodejs" => Ok(Language::JavaScript),
            "typescript" | "ts" => Ok(Language::TypeScript),
            "bash" | "sh" | "shell" => Ok(Language::Bash),
            _ => Err(ServiceError::Invalid(format!(
                "unsupported language {name:?}: one of python, javascript (js), typescript (ts), bash"
            ))),
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Bash => "bash",
        }
    }
}

/// The connection to a context's kernel and its execution count.
pub(crate) struct KernelSlot {
    pub(crate) conn: Option<KernelConn>,
    pub(crate) execution_count: u64,
    /// `Context::interrupts` as the running cell became busy: the cell interrupts its
    /// kernel when the count moves past it.
    pub(crate) interrupts_seen: u64,
}

/// Cells of a context as kept for notebook export, bounded in bytes.
#[derive(Default)]
pub(crate) struct History {
    pub(crate) cells: VecDeque<(CellRecord, u64)>,
    bytes: u64,
}

impl History {
    pub(crate) fn push(&mut self, mut rec: CellRecord, max_bytes: u64) {
        let size_of = |rec: &CellRecord| {
            rec.code.len() as u64 + rec.outputs.iter().map(OutputItem::size).sum::<u64>()
        };
        let mut size = size_of(&rec);
        if size > max_bytes {
            // Too large to keep whole: drop the outputs, and keep at most half the cap of
            // the code (a cell's code alone can be larger than the whole history).
            rec.outputs = vec![OutputItem::Stream {
                name: "stderr".into(),
                text: "[pyxis: this cell's outputs were too large for the history]\n".into(),
            }];
            let keep = usize::try_from(max_bytes / 2).unwrap_or(usize::MAX);
            if rec.code.len() > keep {
                let mut end = keep;
                while !rec.code.is_char_boundary(end) {
                    end -= 1;
                }
                rec.code.truncate(end);
                rec.code.push_str(
                    "\n# [pyxis: the rest of this cell's code was too large for the history]\n",
                );
            }
            size = size_of(&rec);
        }
        self.bytes += size;
        self.cells.push_back((rec, size));
        while self.bytes > max_bytes {
            match self.cells.pop_front() {
                Some((_, n)) => self.bytes -= n,
                None => break,
            }
        }
    }
}

/// Which process runs a context's kernel.
#[derive(Debug, Clone)]
pub(crate) enum KernelProcess {
    /// The kernel process the zygote forked with the sandbox (the first context's, Python
    /// or a program it executed, see [`first_kernel`]).
    Zygote,
    /// A kernel started through the join path: the leader of its own process group.
    Joined {
        pid: i32,
        exit: watch::Receiver<Option<ExitInfo>>,
    },
    /// None runs (being restarted).
    None,
}

/// One context of a session.
pub struct Context {
    /// Its id (`default` for the first one).
    pub id: String,
    /// Its language.
    pub language: Language,
    /// The working directory it started in.
    pub cwd: String,
    /// When it was made.
    pub created: SystemTime,
    pub(crate) kernel: tokio::sync::Mutex<KernelSlot>,
    pub(crate) waiting: AtomicUsize,
    pub(crate) busy: AtomicBool,
    /// Interrupts asked for: a cell interrupts its kernel when this count moves past the
    /// one it read as it became busy (see [`Context::request_interrupt`]).
    pub(crate) interrupts: AtomicU64,
    /// Wakes a running cell when `interrupts` moves.
    pub(crate) interrupt: Notify,
    pub(crate) executions: AtomicU64,
    pub(crate) history: Mutex<History>,
    /// Cells run in the order `execute` was called: each takes a ticket, and waits until
    /// `serving` reaches it.
    pub(crate) tickets: AtomicU64,
    pub(crate) serving: watch::Sender<u64>,
    pub(crate) process: Mutex<KernelProcess>,
    /// Deleted: queued cells are answered as such.
    pub(crate) deleted: AtomicBool,
}

/// A context as doors show it.
#[derive(Debug, Clone)]
pub struct ContextView {
    /// Its id.
    pub id: String,
    /// Its language.
    pub language: &'static str,
    /// Its working directory.
    pub cwd: String,
    /// Running a cell now.
    pub busy: bool,
    /// Cells executed (its execution count).
    pub execution_count: u64,
    /// When it was made.
    pub created: SystemTime,
}

/// The id of a session's first context.
pub const DEFAULT_CONTEXT: &str = "default";

impl Context {
    /// A context whose kernel is `conn`, run by `process`.
    pub(crate) fn new(
        id: String,
        language: Language,
        cwd: String,
        conn: KernelConn,
        process: KernelProcess,
    ) -> Context {
        Context {
            id,
            language,
            cwd,
            created: SystemTime::now(),
            kernel: tokio::sync::Mutex::new(KernelSlot {
                conn: Some(conn),
                execution_count: 0,
                interrupts_seen: 0,
            }),
            waiting: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            interrupts: AtomicU64::new(0),
            interrupt: Notify::new(),
            executions: AtomicU64::new(0),
            history: Mutex::new(History::default()),
            tickets: AtomicU64::new(0),
            serving: watch::channel(0).0,
            process: Mutex::new(process),
            deleted: AtomicBool::new(false),
        }
    }

    /// Asks the running cell, if any, to interrupt its kernel. Counted, not only notified:
    /// a cell between two waits (writing its request, handling an event) sees the count
    /// at its next wait, where a bare `Notify::notify_waiters` would have been lost.
    pub(crate) fn request_interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::SeqCst);
        self.interrupt.notify_waiters();
    }

    /// How doors show it.
    pub fn view(&self) -> ContextView {
        let execution_count = match self.kernel.try_lock() {
            Ok(slot) => slot.execution_count,
            Err(_) => self.executions.load(Ordering::Relaxed),
        };
        ContextView {
            id: self.id.clone(),
            language: self.language.name(),
            cwd: self.cwd.clone(),
            busy: self.busy.load(Ordering::Acquire),
            execution_count,
            created: self.created,
        }
    }

    /// The process running the kernel now.
    pub(crate) fn process(&self) -> KernelProcess {
        self.process
            .lock()
            .map(|p| p.clone())
            .unwrap_or(KernelProcess::None)
    }

    pub(crate) fn set_process(&self, process: KernelProcess) {
        if let Ok(mut p) = self.process.lock() {
            *p = process;
        }
    }

    /// Sends `signal` to a joined kernel's process group (false for the zygote's kernel,
    /// which the sandbox signals itself).
    pub(crate) fn signal_joined(&self, signal: nix::sys::signal::Signal, group: bool) -> bool {
        match self.process() {
            KernelProcess::Joined { pid, exit } => {
                if group {
                    crate::sandboxes::joined::signal_group(pid, &exit, signal);
                } else if exit.borrow().is_none() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
                }
                true
            }
            KernelProcess::Zygote | KernelProcess::None => false,
        }
    }
}

/// The process to start for a context of `language` in `cwd`, with the session's `env`.
pub(crate) fn kernel_request(
    cfg: &Config,
    language: Language,
    cwd: &str,
    env: &std::collections::BTreeMap<String, String>,
    memory_bytes: u64,
) -> ExecRequest {
    let rt = crate::runtime::Runtime::new(&cfg.runtime_dir);
    let python = rt.python().display().to_string();
    let argv: Vec<String> = match language {
        Language::Python => vec![
            python,
            "-m".into(),
            "pyxis_runtime.kernel".into(),
            "3".into(),
        ],
        Language::Bash => vec![
            python,
            "-m".into(),
            "pyxis_runtime.bash_kernel".into(),
            "3".into(),
        ],
        Language::JavaScript | Language::TypeScript => vec![
            crate::runtime::NODE.into(),
            // Above the cgroup's limit: the OOM killer, not V8's own heap limit, ends a
            // memory bomb, and is reported as out of memory.
            format!("--max-old-space-size={}", 2 * memory_bytes / (1024 * 1024)),
            rt.node_kernel().display().to_string(),
            language.name().into(),
        ],
    };
    let mut env = env.clone();
    env.insert("PYXIS_WORKSPACE".into(), cwd.to_string());
    ExecRequest {
        argv,
        env,
        cwd: Some(cwd.into()),
        stdio: false,
        kernel_socket: true,
        oom_score_adj: 0,
    }
}

/// What a new sandbox's kernel process runs for a first context of `language`: `None` for
/// Python (the zygote's own kernel, already loaded), otherwise the program of
/// [`kernel_request`] in `/workspace`, executed by that process in place of the Python
/// kernel, so that no Python kernel starts only to be killed and no join is needed. Built
/// from the configuration and the language alone: the session's environment is given to
/// the kernel by `configure` once it is ready (as to a pooled kernel), so nothing a client
/// sends reaches the program's arguments or the environment it starts with.
pub(crate) fn first_kernel(
    cfg: &Config,
    language: Language,
    memory_bytes: u64,
) -> Option<crate::sandboxes::KernelExec> {
    if language == Language::Python {
        return None;
    }
    let no_env = std::collections::BTreeMap::new();
    let req = kernel_request(cfg, language, "/workspace", &no_env, memory_bytes);
    Some(crate::sandboxes::KernelExec {
        argv: req.argv,
        env: req.env,
    })
}

/// Set in a pooled kernel's environment: the Node kernel runs its execute path once before
/// it says it is ready (see `runtime/node/kernel.js`), off the path of a session's first
/// cell. A cold kernel does without: its first cell would pay the same, plus the warm-up's.
pub(crate) const KERNEL_WARM_UP_VAR: &str = "PYXIS_KERNEL_WARM_UP";

/// [`first_kernel`] for a sandbox the warm pool keeps: with the warm-up.
pub(crate) fn pooled_kernel(
    cfg: &Config,
    language: Language,
    memory_bytes: u64,
) -> Option<crate::sandboxes::KernelExec> {
    let mut kernel = first_kernel(cfg, language, memory_bytes)?;
    kernel.env.insert(KERNEL_WARM_UP_VAR.into(), "1".into());
    Some(kernel)
}

/// Gives a new sandbox a first kernel of `language` (not Python): the zygote's Python
/// kernel (`conn`) is killed and the other one started by the join path in `/workspace`,
/// with `env` and a V8 heap bound above `memory_bytes`. Returns once it is ready.
pub(crate) async fn replace_first_kernel(
    cfg: &Config,
    sandbox: &std::sync::Arc<dyn crate::sandboxes::SandboxHandle>,
    conn: KernelConn,
    language: Language,
    env: &std::collections::BTreeMap<String, String>,
    memory_bytes: u64,
) -> std::result::Result<(KernelConn, KernelProcess), crate::sandboxes::SandboxError> {
    sandbox.kill_first_kernel();
    drop(conn);
    let req = kernel_request(cfg, language, "/workspace", env, memory_bytes);
    let (conn, joined) = sandbox.clone().start_context(req).await?;
    Ok((
        conn,
        KernelProcess::Joined {
            pid: joined.pid,
            exit: joined.exit,
        },
    ))
}

/// The languages contexts can have on this host, with the version of each interpreter
/// (`python` given by the zygote; node and bash asked once).
pub fn languages(python_version: &str) -> Vec<(&'static str, String)> {
    use std::sync::OnceLock;
    static VERSIONS: OnceLock<(Option<String>, Option<String>)> = OnceLock::new();
    let (node, bash) = VERSIONS.get_or_init(|| {
        let bash = std::process::Command::new("/bin/bash")
            .arg("-c")
            .arg("echo $BASH_VERSION")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        (crate::runtime::node_version(), bash)
    });
    let mut out = vec![("python", python_version.to_string())];
    if let Some(node) = node {
        let node = node.trim_start_matches('v').to_string();
        out.push(("javascript", node.clone()));
        out.push(("typescript", node));
    }
    if let Some(bash) = bash {
        out.push(("bash", bash.clone()));
    }
    out
}

/// A context's working directory: absolute inside the sandbox, `/workspace` by default.
pub(crate) fn context_cwd(cwd: Option<&str>) -> Result<String> {
    let cwd = match cwd.map(str::trim).filter(|c| !c.is_empty()) {
        None => return Ok("/workspace".into()),
        Some(c) => c,
    };
    if cwd.contains('\0') || cwd.len() > 4096 {
        return Err(ServiceError::Invalid("cwd is not a valid path".into()));
    }
    let path = std::path::Path::new(cwd);
    Ok(if path.is_absolute() {
        cwd.to_string()
    } else {
        format!("/workspace/{cwd}")
    })
}

/// The 404 of an unknown context.
pub(crate) fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound {
        code: "context_not_found",
        message: format!("no context {id:?} in this session"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::CellStatus;

    #[test]
    fn languages_parse_by_name_and_alias() {
        assert_eq!(Language::parse("JS").ok(), Some(Language::JavaScript));
        assert_eq!(Language::parse("ts").ok(), Some(Language::TypeScript));
        assert_eq!(Language::parse("bash").ok(), Some(Language::Bash));
        assert_eq!(Language::parse("Python").ok(), Some(Language::Python));
        assert!(Language::parse("cobol").is_err());
        for l in Language::ALL {
            assert_eq!(Language::parse(l.name()).ok(), Some(l));
        }
    }

    #[test]
    fn a_cell_larger_than_the_history_is_kept_truncated() {
        let mut history = History::default();
        let code = "é".repeat(1 << 20);
        let rec = CellRecord {
            code,
            execution_count: 1,
            status: CellStatus::Ok,
            outputs: vec![OutputItem::Stream {
                name: "stdout".into(),
                text: "x".repeat(1 << 20),
            }],
        };
        history.push(rec, 1 << 20);
        let (kept, size) = history.cells.back().expect("an entry");
        assert!(*size <= 1 << 20, "{size}");
        assert!(kept.code.ends_with("too large for the history]\n"));
        assert!(history.bytes <= 1 << 20);
    }

    #[test]
    fn working_directories_are_absolute() {
        assert_eq!(context_cwd(None).ok().as_deref(), Some("/workspace"));
        assert_eq!(
            context_cwd(Some("src")).ok().as_deref(),
            Some("/workspace/src")
        );
        assert_eq!(context_cwd(Some("/tmp")).ok().as_deref(), Some("/tmp"));
        assert!(context_cwd(Some("a\0")).is_err());
    }
}
