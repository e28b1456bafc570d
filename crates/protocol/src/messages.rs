use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A Jupyter-style MIME bundle: MIME type → value (text, base64 for binary
/// types, or JSON for `application/json`).
pub type MimeBundle = serde_json::Map<String, serde_json::Value>;

/// A JSON object (Jupyter's `metadata`, `transient`, `user_expressions`, comm `data`, …).
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

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
        /// The client can answer `input()`: the kernel sends
        /// [`KernelEvent::InputRequest`] and waits for [`KernelRequest::InputReply`].
        /// When false, `input()` raises `StdinNotImplementedError` (as ipykernel does).
        #[serde(default)]
        allow_stdin: bool,
        /// Store the cell in the history and count it; `None` means `!silent`.
        #[serde(default)]
        store_history: Option<bool>,
        /// Name → expression, evaluated after the cell as IPython does; the results
        /// come back in [`KernelEvent::ExecuteReply`]'s `user_expressions`.
        #[serde(default)]
        user_expressions: JsonMap,
    },
    /// Completions at a cursor (IPython's completer).
    CompleteRequest {
        /// Request id, echoed by [`KernelEvent::CompleteReply`].
        id: String,
        /// The code being edited.
        code: String,
        /// Cursor position in unicode code points.
        cursor_pos: u64,
    },
    /// Information about the object at a cursor (IPython's inspector).
    InspectRequest {
        /// Request id, echoed by [`KernelEvent::InspectReply`].
        id: String,
        /// The code being edited.
        code: String,
        /// Cursor position in unicode code points.
        cursor_pos: u64,
        /// 0: signature and docstring; 1: also the source.
        #[serde(default)]
        detail_level: u8,
    },
    /// Whether a cell is complete (a front end's "Enter runs it or adds a line").
    IsCompleteRequest {
        /// Request id, echoed by [`KernelEvent::IsCompleteReply`].
        id: String,
        /// The code typed so far.
        code: String,
    },
    /// The answer to [`KernelEvent::InputRequest`].
    InputReply {
        /// The id of the `InputRequest` (the running cell's id).
        id: String,
        /// What the user typed, without the final newline.
        value: String,
    },
    /// The open comms, optionally of one target.
    CommInfoRequest {
        /// Request id, echoed by [`KernelEvent::CommInfoReply`].
        id: String,
        /// Only comms of this target; all when absent.
        #[serde(default)]
        target_name: Option<String>,
    },
    /// The client opens a comm. The kernel registers no targets, so it answers
    /// with [`KernelEvent::CommClose`] for that `comm_id`, as ipykernel does.
    CommOpen {
        /// Request id, echoed by the `CommClose` answer.
        id: String,
        /// The comm's id (chosen by the client).
        comm_id: String,
        /// The target the client asks for.
        target_name: String,
        /// Opening data.
        #[serde(default)]
        data: JsonMap,
    },
    /// A message on a comm; ignored when the comm is unknown.
    CommMsg {
        /// Request id.
        id: String,
        /// The comm's id.
        comm_id: String,
        /// Message data.
        #[serde(default)]
        data: JsonMap,
    },
    /// The client closes a comm; ignored when the comm is unknown.
    CommClose {
        /// Request id.
        id: String,
        /// The comm's id.
        comm_id: String,
        /// Closing data.
        #[serde(default)]
        data: JsonMap,
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
        /// Not part of the output itself: `{"display_id": "…"}` when the output
        /// can be updated later by [`KernelEvent::UpdateDisplayData`].
        #[serde(default)]
        transient: JsonMap,
    },
    /// Replaces every earlier output that has the same `transient.display_id`
    /// (`handle.update()`, `update_display()`); adds no output of its own.
    UpdateDisplayData {
        /// Request id.
        id: String,
        /// The new MIME bundle.
        data: MimeBundle,
        /// Per-MIME metadata.
        #[serde(default)]
        metadata: JsonMap,
        /// `{"display_id": "…"}`: which output to replace.
        #[serde(default)]
        transient: JsonMap,
    },
    /// `IPython.display.clear_output()`: clear the cell's output so far.
    ClearOutput {
        /// Request id.
        id: String,
        /// Clear only when the next output arrives (avoids flicker).
        #[serde(default)]
        wait: bool,
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
        /// Name → result of each requested user expression, in IPython's form:
        /// `{"status": "ok", "data": {…}, "metadata": {…}}` or
        /// `{"status": "error", "ename": …, "evalue": …, "traceback": […]}`.
        #[serde(default)]
        user_expressions: JsonMap,
    },
    /// The kernel needs a line of input (`input()`, `getpass.getpass()`) for the
    /// running cell, which waits for [`KernelRequest::InputReply`] with this id.
    InputRequest {
        /// Request id of the running cell.
        id: String,
        /// The prompt text.
        prompt: String,
        /// The input should not be echoed (`getpass`).
        password: bool,
    },
    /// Answer to [`KernelRequest::CompleteRequest`].
    CompleteReply {
        /// Request id.
        id: String,
        /// Candidate texts, each replacing `cursor_start..cursor_end`.
        matches: Vec<String>,
        /// Start of the replaced range (unicode code points).
        cursor_start: u64,
        /// End of the replaced range (unicode code points).
        cursor_end: u64,
        /// Extra information (IPython's `_jupyter_types_experimental`).
        #[serde(default)]
        metadata: JsonMap,
    },
    /// Answer to [`KernelRequest::InspectRequest`].
    InspectReply {
        /// Request id.
        id: String,
        /// An object was found at the cursor.
        found: bool,
        /// Its description as a MIME bundle (`text/plain`, maybe `text/html`); empty when not found.
        #[serde(default)]
        data: MimeBundle,
        /// Per-MIME metadata.
        #[serde(default)]
        metadata: JsonMap,
    },
    /// Answer to [`KernelRequest::IsCompleteRequest`].
    IsCompleteReply {
        /// Request id.
        id: String,
        /// `complete`, `incomplete`, `invalid` or `unknown`.
        status: String,
        /// With `incomplete`: the indentation of the next line.
        #[serde(default)]
        indent: String,
    },
    /// Answer to [`KernelRequest::CommInfoRequest`].
    CommInfoReply {
        /// Request id.
        id: String,
        /// comm_id → `{"target_name": …}` of each open comm.
        comms: JsonMap,
    },
    /// The kernel closes a comm (the answer to a [`KernelRequest::CommOpen`]
    /// whose target is not registered).
    CommClose {
        /// Request id of the `CommOpen`.
        id: String,
        /// The comm's id.
        comm_id: String,
        /// Closing data.
        #[serde(default)]
        data: JsonMap,
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
        /// The program the kernel process executes instead of running the Python kernel
        /// (a first kernel of another language); none for the Python kernel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec: Option<KernelExec>,
    },
    /// Fork a sibling zygote that shares this one's preloaded pages. The frame carries the
    /// sibling's control socket as one fd (`SCM_RIGHTS`); the sibling says `Ready` on it.
    Clone {
        /// Request id, echoed in the answer.
        id: String,
    },
}

/// A program a sandbox's kernel process runs in place of the Python kernel
/// ([`ZygoteRequest::Spawn`]): `execve(argv[0], argv, env)` once it is sandboxed, its kernel
/// socket still at fd 3. Made by the server alone, from its configuration and a context's
/// language (never from what a client sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelExec {
    /// The program (an absolute path) and its arguments.
    pub argv: Vec<String>,
    /// Its whole environment.
    pub env: BTreeMap<String, String>,
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
    /// A sibling zygote was forked (see [`ZygoteRequest::Clone`]).
    Cloned {
        /// Request id.
        id: String,
        /// Host pid of the sibling.
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_old_execute_request_gets_the_jupyter_defaults() {
        let req: KernelRequest = serde_json::from_value(json!({
            "type": "execute_request", "id": "1", "code": "1", "max_output_bytes": 10
        }))
        .unwrap();
        let KernelRequest::ExecuteRequest {
            silent,
            allow_stdin,
            store_history,
            user_expressions,
            ..
        } = req
        else {
            panic!("not an execute_request");
        };
        assert!(!silent && !allow_stdin);
        assert_eq!(store_history, None);
        assert!(user_expressions.is_empty());
    }

    #[test]
    fn new_requests_have_their_jupyter_names() {
        let cases = [
            (
                KernelRequest::CompleteRequest {
                    id: "a".into(),
                    code: "pri".into(),
                    cursor_pos: 3,
                },
                "complete_request",
            ),
            (
                KernelRequest::InspectRequest {
                    id: "a".into(),
                    code: "print".into(),
                    cursor_pos: 5,
                    detail_level: 1,
                },
                "inspect_request",
            ),
            (
                KernelRequest::IsCompleteRequest {
                    id: "a".into(),
                    code: "if x:".into(),
                },
                "is_complete_request",
            ),
            (
                KernelRequest::InputReply {
                    id: "a".into(),
                    value: "v".into(),
                },
                "input_reply",
            ),
            (
                KernelRequest::CommInfoRequest {
                    id: "a".into(),
                    target_name: None,
                },
                "comm_info_request",
            ),
            (
                KernelRequest::CommOpen {
                    id: "a".into(),
                    comm_id: "c".into(),
                    target_name: "t".into(),
                    data: JsonMap::new(),
                },
                "comm_open",
            ),
            (
                KernelRequest::CommMsg {
                    id: "a".into(),
                    comm_id: "c".into(),
                    data: JsonMap::new(),
                },
                "comm_msg",
            ),
            (
                KernelRequest::CommClose {
                    id: "a".into(),
                    comm_id: "c".into(),
                    data: JsonMap::new(),
                },
                "comm_close",
            ),
        ];
        for (req, name) in cases {
            let value = serde_json::to_value(&req).unwrap();
            assert_eq!(value["type"], name);
            let back: KernelRequest = serde_json::from_value(value).unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap()["type"],
                name,
                "{name} round trip"
            );
        }
    }

    #[test]
    fn kernel_events_decode_as_the_python_kernel_writes_them() {
        let events = [
            json!({"type": "display_data", "id": "1", "data": {"text/plain": "x"},
                   "metadata": {}, "transient": {"display_id": "d"}}),
            json!({"type": "update_display_data", "id": "1", "data": {"text/plain": "y"},
                   "metadata": {}, "transient": {"display_id": "d"}}),
            json!({"type": "clear_output", "id": "1", "wait": true}),
            json!({"type": "input_request", "id": "1", "prompt": "? ", "password": false}),
            json!({"type": "complete_reply", "id": "1", "matches": ["print"],
                   "cursor_start": 0, "cursor_end": 3, "metadata": {}}),
            json!({"type": "inspect_reply", "id": "1", "found": true,
                   "data": {"text/plain": "doc"}, "metadata": {}}),
            json!({"type": "is_complete_reply", "id": "1", "status": "incomplete", "indent": "    "}),
            json!({"type": "comm_info_reply", "id": "1", "comms": {}}),
            json!({"type": "comm_close", "id": "1", "comm_id": "c", "data": {}}),
            json!({"type": "execute_reply", "id": "1", "status": "ok", "execution_count": 2,
                   "truncated": false, "user_expressions": {"x": {"status": "ok"}}}),
        ];
        for event in events {
            let kind = event["type"].clone();
            let back: KernelEvent = serde_json::from_value(event).unwrap();
            assert_eq!(serde_json::to_value(&back).unwrap()["type"], kind);
        }
        // An event of the earlier protocol still decodes.
        let old: KernelEvent = serde_json::from_value(
            json!({"type": "display_data", "id": "1", "data": {"text/plain": "x"}}),
        )
        .unwrap();
        assert!(matches!(old, KernelEvent::DisplayData { transient, .. } if transient.is_empty()));
    }
}
