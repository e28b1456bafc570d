use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A Jupyter-style MIME bundle: MIME type → value (text, base64 for binary
/// types, or JSON for `application/json`).
pub type MimeBundle = serde_json::Map<String, serde_json::Value>;

/// Supervisor → kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KernelRequest {
    /// Run one cell.
    ExecuteRequest {
        /// Request id; every event of this cell carries it.
        id: String,
        /// Python source.
        code: String,
        /// Output (stream text and rich data) kept for this cell; the rest is
        /// dropped and the reply says `truncated`.
        max_output_bytes: u64,
        /// Do not count the cell in the execution history.
        #[serde(default)]
        silent: bool,
    },
    /// Set environment variables of the interpreter.
    Configure {
        /// Request id.
        id: String,
        /// Variables to set.
        env: BTreeMap<String, String>,
    },
    /// Exit cleanly.
    Shutdown {},
}

/// Outcome of a cell as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// Ran to the end.
    Ok,
    /// Raised (including `KeyboardInterrupt` after an interrupt).
    Error,
}

/// Kernel → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KernelEvent {
    /// The kernel entered its sandbox and waits for requests.
    Ready {},
    /// Text written to stdout or stderr.
    Stream {
        /// Request id.
        id: String,
        /// `stdout` or `stderr`.
        name: String,
        /// The text.
        text: String,
    },
    /// Rich output from `display()`, figures, …
    DisplayData {
        /// Request id.
        id: String,
        /// The MIME bundle.
        data: MimeBundle,
        /// Per-MIME metadata.
        #[serde(default)]
        metadata: serde_json::Map<String, serde_json::Value>,
    },
    /// The value of the cell's last expression.
    ExecuteResult {
        /// Request id.
        id: String,
        /// Execution counter of the cell.
        execution_count: u64,
        /// The MIME bundle.
        data: MimeBundle,
        /// Per-MIME metadata.
        #[serde(default)]
        metadata: serde_json::Map<String, serde_json::Value>,
    },
    /// An exception raised by the cell.
    Error {
        /// Request id.
        id: String,
        /// Exception class name.
        ename: String,
        /// Exception value.
        evalue: String,
        /// Plain-text traceback lines.
        traceback: Vec<String>,
    },
    /// The cell finished; always the last event of a request.
    ExecuteReply {
        /// Request id.
        id: String,
        /// How it ended.
        status: ReplyStatus,
        /// Execution counter after the cell.
        execution_count: u64,
        /// Output was dropped because of the cap.
        #[serde(default)]
        truncated: bool,
    },
    /// Answer to [`KernelRequest::Configure`].
    ConfigureReply {
        /// Request id.
        id: String,
        /// `ok`, or a message.
        status: String,
    },
}

/// Supervisor → zygote. A `Spawn` frame carries the kernel's socket as one fd
/// (`SCM_RIGHTS`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ZygoteRequest {
    /// Fork a kernel into a sandbox built from `spec` (a `pyxis_sandbox::SandboxSpec`).
    Spawn {
        /// Request id, echoed in the answer.
        id: String,
        /// The sandbox spec as JSON.
        spec: serde_json::Value,
    },
}

/// Zygote → supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ZygoteEvent {
    /// Preloading is done; the zygote takes spawn requests.
    Ready {
        /// The zygote's pid.
        pid: i32,
        /// Python version.
        #[serde(default)]
        python: String,
        /// Preinstalled libraries and their versions.
        #[serde(default)]
        libraries: BTreeMap<String, String>,
    },
    /// The sandbox is up; `pid` is its init on the host (signal it to interrupt).
    Spawned {
        /// Request id.
        id: String,
        /// Host pid of the sandbox's init process.
        pid: i32,
    },
    /// The sandbox could not be built.
    SpawnFailed {
        /// Request id.
        id: String,
        /// What went wrong.
        error: String,
    },
    /// A request the zygote did not understand.
    Error {
        /// What went wrong.
        error: String,
    },
}
