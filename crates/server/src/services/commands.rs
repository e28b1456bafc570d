//! Commands: plain processes run inside a session's sandbox (its namespaces, cgroups, uid
//! and seccomp, through the same join path as the kernels of contexts), beside whatever its
//! contexts run. No HTTP here; the v1 door and the E2B door translate.
//!
//! The API, for doors:
//!
//! - [`run`] starts one process and returns a [`CommandStream`] of [`CommandEvent`]s:
//!   `Started` (its pid inside the sandbox), `Stdout`/`Stderr` chunks in the order they
//!   were read, then `Exit` (code or signal, duration, whether output was dropped at the
//!   cap, whether the time limit struck). [`CommandStream::collect`] folds it into one
//!   [`CommandOutput`]. Dropping the stream does not stop the process.
//! - A *background* command ([`CommandRequest::background`]) keeps its stdin open and stays
//!   in the session's table after it ends: [`list`] shows it, [`write_stdin`] feeds it,
//!   [`close_stdin`] ends its input, [`signal`] signals its process group, [`subscribe`]
//!   replays what it printed so far and follows the rest.
//! - At most [`MAX_RUNNING`] commands run per session at once ([`ServiceError::TooMany`]).
//!   Each command's output is bounded by the server's per-execution output cap; beyond it,
//!   output is read and dropped (the process never blocks on a full pipe) and `truncated`
//!   is set. Deleting the session kills every command with the rest of its sandbox.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, watch};

use crate::sandboxes::joined::{signal_group, ExecRequest, ExitInfo};
use crate::sandboxes::SandboxError;
use crate::services::error::{Result, ServiceError};
use crate::services::sessions::Session;

/// Most commands running at once in one session.
pub const MAX_RUNNING: usize = 16;
/// Most ended background commands a session keeps listed (oldest forgotten first).
const MAX_FINISHED: usize = 32;
/// Longest argument list (bytes, all arguments together) and stdin given at start.
const MAX_ARGS_BYTES: usize = 128 * 1024;
const MAX_STDIN_BYTES: usize = 8 << 20;
/// Read size of the output pumps.
const CHUNK: usize = 64 * 1024;
/// A command's `oom_score_adj`: above every kernel's, so a session that runs out of memory
/// loses a command before any context's state.
const COMMAND_OOM_SCORE_ADJ: i32 = 1000;

/// A command as a door asks for it (validated by [`run`]).
#[derive(Debug, Clone, Default)]
pub struct CommandRequest {
    /// The program (looked up in the sandbox's `PATH` when it has no `/`).
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the session's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (absolute, or relative to `/workspace`).
    pub cwd: Option<String>,
    /// Bytes written to its stdin at start (then closed, unless `background`).
    pub stdin: Option<Vec<u8>>,
    /// Time limit; `None`: the session's default for foreground commands, none for
    /// background ones.
    pub timeout: Option<Duration>,
    /// Keep it in the table, with stdin open, and return at once.
    pub background: bool,
}

/// One event of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandEvent {
    /// The process runs.
    Started {
        /// Its pid inside the sandbox (what [`signal`] and [`write_stdin`] take).
        pid: u32,
    },
    /// A chunk of its stdout (UTF-8, invalid bytes replaced).
    Stdout(String),
    /// A chunk of its stderr.
    Stderr(String),
    /// It ended; always the last event.
    Exit(CommandExit),
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommandExit {
    /// Exit code (`None` when a signal ended it).
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Wall time from start to exit.
    pub duration_ms: f64,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    /// The time limit struck (the process group was killed).
    pub timed_out: bool,
}

/// A whole command's output (see [`CommandStream::collect`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutput {
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// Everything it wrote to stdout, up to the cap.
    pub stdout: String,
    /// Everything it wrote to stderr, up to the cap.
    pub stderr: String,
    /// How it ended.
    pub exit: CommandExit,
}

/// One command as [`list`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandInfo {
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// The program.
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory.
    pub cwd: String,
    /// Started in the background.
    pub background: bool,
    /// When it started.
    pub started: SystemTime,
    /// `None` while it runs.
    pub exit: Option<CommandExit>,
}

/// The events of one command, from its start (see the module docs).
pub struct CommandStream {
    /// The process's pid inside the sandbox.
    pub pid: u32,
    events: mpsc::UnboundedReceiver<CommandEvent>,
}

impl CommandStream {
    /// The next event; `None` after [`CommandEvent::Exit`].
    pub async fn next(&mut self) -> Option<CommandEvent> {
        self.events.recv().await
    }

    /// Folds the rest of the stream into one answer.
    pub async fn collect(mut self) -> CommandOutput {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some(ev) = self.events.recv().await {
            match ev {
                CommandEvent::Stdout(t) => stdout.push_str(&t),
                CommandEvent::Stderr(t) => stderr.push_str(&t),
                CommandEvent::Started { .. } => {}
                CommandEvent::Exit(exit) => {
                    return CommandOutput {
                        pid: self.pid,
                        stdout,
                        stderr,
                        exit,
                    }
                }
            }
        }
        // The pump always ends with Exit; a stream without one lost its process.
        CommandOutput {
            pid: self.pid,
            stdout,
            stderr,
            exit: CommandExit {
                exit_code: None,
                signal: Some(libc::SIGKILL),
                duration_ms: 0.0,
                truncated: false,
                timed_out: false,
            },
        }
    }
}

/// A session's commands (kept in its [`Session`]).
#[derive(Default)]
pub struct CommandTable {
    inner: Mutex<TableInner>,
}

impl CommandTable {
    /// How many commands run now.
    pub fn running(&self) -> usize {
        self.inner.lock().map(|t| t.running.len()).unwrap_or(0)
    }
}

#[derive(Default)]
struct TableInner {
    running: Vec<Arc<Command>>,
    finished: VecDeque<Arc<Command>>,
}

/// One command's shared state.
struct Command {
    pid: u32,
    host_pid: i32,
    cmd: String,
    args: Vec<String>,
    cwd: String,
    background: bool,
    started: SystemTime,
    exit: watch::Receiver<Option<ExitInfo>>,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    /// What it printed so far (bounded by the cap) and who follows it; one lock so that a
    /// new subscriber misses nothing and sees nothing twice.
    output: Mutex<Output>,
    timed_out: AtomicBool,
}

#[derive(Default)]
struct Output {
    backlog: Vec<CommandEvent>,
    subscribers: Vec<mpsc::UnboundedSender<CommandEvent>>,
    bytes: u64,
    cap: u64,
    truncated: bool,
    done: Option<CommandExit>,
}

impl Output {
    fn publish(&mut self, ev: CommandEvent) {
        self.subscribers.retain(|s| s.send(ev.clone()).is_ok());
        self.backlog.push(ev);
    }

    /// Charges `text` to the cap; the part that fits is published.
    fn text(&mut self, stdout: bool, mut text: String) {
        let left = self.cap.saturating_sub(self.bytes);
        if text.len() as u64 > left {
            self.truncated = true;
            let mut end = left as usize;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        if text.is_empty() {
            return;
        }
        self.bytes += text.len() as u64;
        self.publish(if stdout {
            CommandEvent::Stdout(text)
        } else {
            CommandEvent::Stderr(text)
        });
    }
}

impl Command {
    fn info(&self) -> CommandInfo {
        CommandInfo {
            pid: self.pid,
            cmd: self.cmd.clone(),
            args: self.args.clone(),
            cwd: self.cwd.clone(),
            background: self.background,
            started: self.started,
            exit: self.output.lock().ok().and_then(|o| o.done),
        }
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<CommandEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut out) = self.output.lock() {
            for ev in &out.backlog {
                let _ = tx.send(ev.clone());
            }
            if out.done.is_none() {
                out.subscribers.push(tx);
            }
        }
        rx
    }
}

/// A working directory as the sandbox sees it: absolute, or under `/workspace`; no `..`.
fn sandbox_path(cwd: Option<&str>) -> Result<std::path::PathBuf> {
    let Some(cwd) = cwd.filter(|c| !c.is_empty()) else {
        return Ok("/workspace".into());
    };
    let path = std::path::Path::new(cwd);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::path::Path::new("/workspace").join(path)
    };
    if cwd.contains('\0') || cwd.len() > 4096 {
        return Err(ServiceError::Invalid("cwd is not a valid path".into()));
    }
    Ok(path)
}

/// Turns a failure to start into the service's error: the client's mistake (a missing
/// program, a directory that cannot be entered) is a 400, the rest is internal.
pub(crate) fn start_error(e: SandboxError) -> ServiceError {
    match e {
        SandboxError::Exec(m) => ServiceError::Invalid(m),
        SandboxError::NoSlot => ServiceError::TooMany("no sandbox slot".into()),
        SandboxError::ContextStart(message) => ServiceError::Failed {
            code: "context_start_failed",
            message,
        },
        e => ServiceError::internal(e),
    }
}

/// Runs one command in `session` (see the module docs). `max_output` is the output cap.
pub async fn run(
    session: &Arc<Session>,
    req: CommandRequest,
    max_output: u64,
) -> Result<CommandStream> {
    if req.cmd.is_empty() || req.cmd.contains('\0') {
        return Err(ServiceError::Invalid("cmd must name a program".into()));
    }
    let arg_bytes: usize = req.args.iter().map(|a| a.len() + 1).sum::<usize>() + req.cmd.len();
    if arg_bytes > MAX_ARGS_BYTES || req.args.iter().any(|a| a.contains('\0')) {
        return Err(ServiceError::Invalid(format!(
            "args must be at most {MAX_ARGS_BYTES} bytes, without NUL"
        )));
    }
    if req
        .stdin
        .as_ref()
        .is_some_and(|s| s.len() > MAX_STDIN_BYTES)
    {
        return Err(ServiceError::TooLarge(format!(
            "stdin must be at most {MAX_STDIN_BYTES} bytes"
        )));
    }
    crate::services::options::validate_env(&req.env)?;
    let cwd = sandbox_path(req.cwd.as_deref())?;
    let table = session.commands();
    // A placeholder keeps the count right while the process starts without the lock, so
    // that concurrent starts cannot pass the bound together.
    let placeholder = placeholder();
    {
        let mut slot = table
            .inner
            .lock()
            .map_err(|_| ServiceError::internal("poisoned"))?;
        if slot.running.len() >= MAX_RUNNING {
            return Err(ServiceError::TooMany(format!(
                "at most {MAX_RUNNING} commands may run at once in a session"
            )));
        }
        slot.running.push(placeholder.clone());
    }
    let mut env = session.env().clone();
    env.extend(req.env.clone());
    let mut argv = vec![req.cmd.clone()];
    argv.extend(req.args.iter().cloned());
    let started_at = Instant::now();
    let started = session
        .sandbox()
        .clone()
        .exec(ExecRequest {
            argv,
            env,
            cwd: Some(cwd.clone()),
            stdio: true,
            kernel_socket: false,
            oom_score_adj: COMMAND_OOM_SCORE_ADJ,
        })
        .await;
    let remove_placeholder = |table: &CommandTable| {
        if let Ok(mut t) = table.inner.lock() {
            t.running.retain(|c| !Arc::ptr_eq(c, &placeholder));
        }
    };
    let mut joined = match started {
        Ok(j) => j,
        Err(e) => {
            remove_placeholder(table);
            return Err(start_error(e));
        }
    };
    session.touch();
    let pid = u32::try_from(joined.ns_pid).unwrap_or(0);
    // A foreground command without input reads end-of-file at once.
    let stdin = joined
        .stdin
        .take()
        .filter(|_| req.background || req.stdin.is_some());
    let command = Arc::new(Command {
        pid,
        host_pid: joined.pid,
        cmd: req.cmd,
        args: req.args,
        cwd: cwd.display().to_string(),
        background: req.background,
        started: SystemTime::now(),
        exit: joined.exit.clone(),
        stdin: Arc::new(tokio::sync::Mutex::new(stdin)),
        output: Mutex::new(Output {
            cap: max_output,
            ..Default::default()
        }),
        timed_out: AtomicBool::new(false),
    });
    if let Ok(mut out) = command.output.lock() {
        out.publish(CommandEvent::Started { pid });
    }
    let events = command.subscribe();
    if let Some(data) = req.stdin {
        // Written by a task (a process may read slowly), which holds the pipe until done:
        // later writes come after it. A foreground command's stdin closes after it.
        let mut pipe = command.stdin.clone().lock_owned().await;
        let keep = req.background;
        tokio::spawn(async move {
            if let Some(p) = pipe.as_mut() {
                if p.write_all(&data).await.is_err() {
                    pipe.take();
                }
            }
            if !keep {
                pipe.take();
            }
        });
    }
    if let Ok(mut t) = table.inner.lock() {
        t.running.retain(|c| !Arc::ptr_eq(c, &placeholder));
        // A pid of an ended command may be the sandbox's again.
        t.finished.retain(|c| c.pid != pid);
        t.running.push(command.clone());
    }
    let timeout = req
        .timeout
        .or((!req.background).then(|| session.default_timeout()));
    let session = session.clone();
    let (stdout, stderr) = (joined.stdout.take(), joined.stderr.take());
    tokio::spawn(pump(session, command, stdout, stderr, timeout, started_at));
    Ok(CommandStream { pid, events })
}

/// An entry that only counts (while a command starts).
fn placeholder() -> Arc<Command> {
    Arc::new(Command {
        pid: 0,
        host_pid: 0,
        cmd: String::new(),
        args: Vec::new(),
        cwd: String::new(),
        background: false,
        started: SystemTime::now(),
        exit: watch::channel(Some(ExitInfo {
            code: None,
            signal: None,
        }))
        .1,
        stdin: Arc::new(tokio::sync::Mutex::new(None)),
        output: Mutex::new(Output::default()),
        timed_out: AtomicBool::new(false),
    })
}

/// Reads both outputs until the end, enforces the time limit, publishes the exit and moves
/// the command out of the running set.
async fn pump(
    session: Arc<Session>,
    command: Arc<Command>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    timeout: Option<Duration>,
    started_at: Instant,
) {
    let out_task = tokio::spawn(read_stream(command.clone(), stdout, true));
    let err_task = tokio::spawn(read_stream(command.clone(), stderr, false));
    let wait_exit = || {
        let mut exit = command.exit.clone();
        async move { exit.wait_for(|e| e.is_some()).await.ok().and_then(|e| *e) }
    };
    let info = match timeout {
        Some(limit) => match tokio::time::timeout(limit, wait_exit()).await {
            Ok(info) => info,
            Err(_) => {
                command.timed_out.store(true, Ordering::Release);
                signal_group(command.host_pid, &command.exit, Signal::SIGKILL);
                wait_exit().await
            }
        },
        None => wait_exit().await,
    };
    let duration_ms = started_at.elapsed().as_secs_f64() * 1e3;
    // What the process's own children still print after it exited is not waited for:
    // its pipes are read until they close, or for a moment more.
    let drain = async {
        let _ = out_task.await;
        let _ = err_task.await;
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
    let info = info.unwrap_or(ExitInfo {
        code: None,
        signal: Some(libc::SIGKILL),
    });
    if let Ok(mut out) = command.output.lock() {
        let exit = CommandExit {
            exit_code: info.code,
            signal: info.signal,
            duration_ms,
            truncated: out.truncated,
            timed_out: command.timed_out.load(Ordering::Acquire),
        };
        out.done = Some(exit);
        out.publish(CommandEvent::Exit(exit));
        out.subscribers.clear();
        if !command.background {
            // Nobody lists it: its output goes with it.
            out.backlog.clear();
        }
    }
    command.stdin.lock().await.take();
    if let Ok(mut t) = session.commands().inner.lock() {
        t.running.retain(|c| !Arc::ptr_eq(c, &command));
        if command.background {
            t.finished.push_back(command.clone());
            while t.finished.len() > MAX_FINISHED {
                t.finished.pop_front();
            }
        }
    }
    session.touch();
}

/// Reads one output of the process into its events, as UTF-8 (a character split between
/// two reads is kept for the next).
async fn read_stream(command: Arc<Command>, stream: Option<impl AsyncRead + Unpin>, stdout: bool) {
    let Some(mut stream) = stream else { return };
    let mut buf = vec![0u8; CHUNK];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        carry.extend_from_slice(&buf[..n]);
        let valid = match std::str::from_utf8(&carry) {
            Ok(_) => carry.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => carry.len(),
        };
        let text = String::from_utf8_lossy(&carry[..valid]).into_owned();
        carry.drain(..valid);
        if let Ok(mut out) = command.output.lock() {
            out.text(stdout, text);
        }
    }
    if !carry.is_empty() {
        let text = String::from_utf8_lossy(&carry).into_owned();
        if let Ok(mut out) = command.output.lock() {
            out.text(stdout, text);
        }
    }
}

fn find(session: &Session, pid: u32) -> Result<Arc<Command>> {
    let table = session
        .commands()
        .inner
        .lock()
        .map_err(|_| ServiceError::internal("poisoned"))?;
    table
        .running
        .iter()
        .chain(table.finished.iter())
        .find(|c| c.pid == pid && c.host_pid > 0)
        .cloned()
        .ok_or_else(|| ServiceError::NotFound {
            code: "command_not_found",
            message: format!("no command with pid {pid} in this session"),
        })
}

/// The session's running commands and its ended background ones, oldest first.
pub fn list(session: &Session) -> Vec<CommandInfo> {
    let Ok(table) = session.commands().inner.lock() else {
        return Vec::new();
    };
    let mut all: Vec<CommandInfo> = table
        .finished
        .iter()
        .chain(table.running.iter())
        .filter(|c| c.host_pid > 0)
        .map(|c| c.info())
        .collect();
    all.sort_by_key(|c| c.started);
    all
}

/// Writes `data` to a running command's stdin.
pub async fn write_stdin(session: &Session, pid: u32, data: &[u8]) -> Result<()> {
    let command = find(session, pid)?;
    let mut stdin = command.stdin.lock().await;
    let Some(pipe) = stdin.as_mut() else {
        return Err(ServiceError::Conflict {
            code: "stdin_closed",
            message: format!("the stdin of command {pid} is closed"),
        });
    };
    let written = tokio::time::timeout(Duration::from_secs(10), pipe.write_all(data)).await;
    match written {
        Ok(Ok(())) => Ok(()),
        // The process ended or closed its stdin.
        Ok(Err(_)) => {
            stdin.take();
            Err(ServiceError::Conflict {
                code: "stdin_closed",
                message: format!("command {pid} no longer reads its stdin"),
            })
        }
        Err(_) => Err(ServiceError::Conflict {
            code: "stdin_full",
            message: format!("command {pid} does not read its stdin"),
        }),
    }
}

/// Closes a command's stdin (it reads end-of-file).
pub async fn close_stdin(session: &Session, pid: u32) -> Result<()> {
    let command = find(session, pid)?;
    command.stdin.lock().await.take();
    Ok(())
}

/// Sends `signal` to a command's process group; false if it had ended already.
pub fn signal(session: &Session, pid: u32, signal: Signal) -> Result<bool> {
    let command = find(session, pid)?;
    if command.exit.borrow().is_some() {
        return Ok(false);
    }
    signal_group(command.host_pid, &command.exit, signal);
    Ok(true)
}

/// Follows a command: what it printed so far, then the rest, [`CommandEvent::Exit`] last.
pub fn subscribe(session: &Session, pid: u32) -> Result<CommandStream> {
    let command = find(session, pid)?;
    Ok(CommandStream {
        pid,
        events: command.subscribe(),
    })
}

/// Parses a signal given by name (`SIGTERM`, `TERM`, `term`) or number.
pub fn parse_signal(name: &str) -> Result<Signal> {
    let bad = || ServiceError::Invalid(format!("unknown signal {name:?}"));
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM").ok(), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("kill").ok(), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("2").ok(), Some(Signal::SIGINT));
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn output_is_cut_at_the_cap_on_a_character_boundary() {
        let mut out = Output {
            cap: 5,
            ..Default::default()
        };
        out.text(true, "abcé".into());
        out.text(true, "more".into());
        assert!(out.truncated);
        assert_eq!(out.backlog, vec![CommandEvent::Stdout("abcé".into())]);
        let mut out = Output {
            cap: 4,
            ..Default::default()
        };
        out.text(false, "abcé".into());
        assert_eq!(out.backlog, vec![CommandEvent::Stderr("abc".into())]);
    }

    #[test]
    fn working_directories_stay_absolute() {
        assert_eq!(sandbox_path(None).ok(), Some("/workspace".into()));
        assert_eq!(
            sandbox_path(Some("out")).ok(),
            Some("/workspace/out".into())
        );
        assert_eq!(sandbox_path(Some("/tmp")).ok(), Some("/tmp".into()));
        assert!(sandbox_path(Some("a\0b")).is_err());
    }
}
