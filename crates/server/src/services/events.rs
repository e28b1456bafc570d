//! A cell is a stream of events, the Jupyter message types: what every door translates.
//!
//! [`CellEvent`]s come out of [`crate::services::Sessions::execute`] in the order the kernel
//! sent them, already bounded by the output cap (every byte the kernel can make the server
//! hold counts, see [`OutputBudget`]). The last one is always [`CellEvent::Reply`], the cell's
//! summary. [`CellOutcome::collect`] is the fold that request-and-answer doors use.

use serde::Serialize;

/// A MIME bundle or a metadata map, as the kernel sent it.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// Fixed cost charged to the output cap for each event, on top of its bytes, so that a cell
/// cannot make the server hold millions of tiny results for free.
pub const EVENT_OVERHEAD_BYTES: u64 = 64;

/// The kernel's execution state (Jupyter's `status` message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionState {
    /// A cell started.
    Busy,
    /// The cell ended.
    Idle,
}

/// How a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    /// The cell ran to the end.
    Ok,
    /// The cell raised (see `error`), or was interrupted.
    Error,
    /// The time limit was reached.
    Timeout,
    /// The interpreter was killed (out of memory, or it exited).
    Killed,
}

/// An error raised by the code, or reported for it by the service (`OutOfMemory`,
/// `Timeout`, `KernelDied`, …).
#[derive(Debug, Clone, Serialize)]
pub struct CellError {
    /// Exception name.
    pub name: String,
    /// Exception value.
    pub value: String,
    /// Traceback lines.
    pub traceback: Vec<String>,
}

/// A workspace file a cell created or changed.
#[derive(Debug, Clone, Serialize)]
pub struct FileChange {
    /// Path relative to the workspace.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// The summary of a finished cell (Jupyter's `execute_reply`, with what Pyxis adds).
#[derive(Debug, Clone, Serialize)]
pub struct CellSummary {
    /// How it ended.
    pub status: CellStatus,
    /// The session's execution counter after this cell.
    pub execution_count: u64,
    /// The error, when `status` is not `ok`.
    pub error: Option<CellError>,
    /// Workspace files the cell created or changed.
    pub files: Vec<FileChange>,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    /// The interpreter was restarted: variables are gone (files stay).
    pub state_lost: bool,
    /// Wall time of the cell in milliseconds (queueing excluded).
    pub duration_ms: f64,
    /// `user_expressions` results, when the request had any.
    #[serde(skip_serializing_if = "JsonMap::is_empty")]
    pub user_expressions: JsonMap,
}

impl CellSummary {
    /// The cell ended because its session was deleted (while it was queued or running).
    pub fn session_deleted(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|e| e.name == SESSION_DELETED)
    }
}

/// The error name of a cell whose session was deleted under it.
pub const SESSION_DELETED: &str = "SessionDeleted";

/// One event of a cell.
#[derive(Debug, Clone)]
pub enum CellEvent {
    /// The kernel's state changed.
    Status(ExecutionState),
    /// The code being run and its execution count.
    ExecuteInput {
        /// The cell's source.
        code: String,
        /// Its execution count.
        execution_count: u64,
    },
    /// Text on stdout or stderr.
    Stream {
        /// `stdout` or `stderr`.
        name: String,
        /// The text.
        text: String,
    },
    /// Rich output from `display()`, figures, …
    DisplayData {
        /// MIME bundle.
        data: JsonMap,
        /// Per-MIME metadata.
        metadata: JsonMap,
        /// `{display_id}` when the output can be updated later.
        transient: JsonMap,
    },
    /// A new version of an earlier output with the same `display_id`.
    UpdateDisplayData {
        /// MIME bundle.
        data: JsonMap,
        /// Per-MIME metadata.
        metadata: JsonMap,
        /// `{display_id}`.
        transient: JsonMap,
    },
    /// Clear the cell's output (`wait`: when the next output arrives).
    ClearOutput {
        /// Wait for the next output before clearing.
        wait: bool,
    },
    /// The value of the cell's last expression.
    ExecuteResult {
        /// Execution count of the cell.
        execution_count: u64,
        /// MIME bundle.
        data: JsonMap,
        /// Per-MIME metadata.
        metadata: JsonMap,
    },
    /// An exception raised by the cell.
    Error(CellError),
    /// `input()` in a cell that allows stdin: answer with
    /// [`crate::services::CellHandle::input`].
    InputRequest {
        /// The prompt.
        prompt: String,
        /// Whether the input is a password (`getpass`).
        password: bool,
    },
    /// The cell ended: always the last event.
    Reply(CellSummary),
}

impl CellEvent {
    /// The Jupyter message type of the event.
    pub fn msg_type(&self) -> &'static str {
        match self {
            CellEvent::Status(_) => "status",
            CellEvent::ExecuteInput { .. } => "execute_input",
            CellEvent::Stream { .. } => "stream",
            CellEvent::DisplayData { .. } => "display_data",
            CellEvent::UpdateDisplayData { .. } => "update_display_data",
            CellEvent::ClearOutput { .. } => "clear_output",
            CellEvent::ExecuteResult { .. } => "execute_result",
            CellEvent::Error(_) => "error",
            CellEvent::InputRequest { .. } => "input_request",
            CellEvent::Reply(_) => "execute_reply",
        }
    }

    /// The event's content as Jupyter names its fields.
    pub fn content(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            CellEvent::Status(s) => json!({ "execution_state": s }),
            CellEvent::ExecuteInput {
                code,
                execution_count,
            } => json!({ "code": code, "execution_count": execution_count }),
            CellEvent::Stream { name, text } => json!({ "name": name, "text": text }),
            CellEvent::DisplayData {
                data,
                metadata,
                transient,
            }
            | CellEvent::UpdateDisplayData {
                data,
                metadata,
                transient,
            } => json!({ "data": data, "metadata": metadata, "transient": transient }),
            CellEvent::ClearOutput { wait } => json!({ "wait": wait }),
            CellEvent::ExecuteResult {
                execution_count,
                data,
                metadata,
            } => json!({ "execution_count": execution_count, "data": data, "metadata": metadata }),
            CellEvent::Error(e) => {
                json!({ "ename": e.name, "evalue": e.value, "traceback": e.traceback })
            }
            CellEvent::InputRequest { prompt, password } => {
                json!({ "prompt": prompt, "password": password })
            }
            CellEvent::Reply(s) => serde_json::to_value(s).unwrap_or_default(),
        }
    }
}

/// Bytes of a JSON value as the server holds it (strings by their length).
pub fn json_size(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.len() as u64,
        serde_json::Value::Array(a) => a.iter().map(json_size).sum::<u64>() + a.len() as u64,
        serde_json::Value::Object(m) => map_size(m),
        _ => 8,
    }
}

/// Bytes of a map: its keys and values.
pub fn map_size(m: &JsonMap) -> u64 {
    m.iter()
        .map(|(k, v)| k.len() as u64 + json_size(v) + 2)
        .sum()
}

/// The per-cell output cap, enforced by the server whatever the kernel says it did.
#[derive(Debug)]
pub struct OutputBudget {
    cap: u64,
    used: u64,
    /// Something was dropped or cut.
    pub truncated: bool,
}

impl OutputBudget {
    /// A budget of `cap` bytes.
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            used: 0,
            truncated: false,
        }
    }

    fn room(&self) -> u64 {
        self.cap.saturating_sub(self.used)
    }

    /// Charge `bytes` (plus the per-event overhead); false (and truncated) if it does not fit.
    pub fn take(&mut self, bytes: u64) -> bool {
        let cost = bytes.saturating_add(EVENT_OVERHEAD_BYTES);
        if cost > self.room() {
            self.truncated = true;
            return false;
        }
        self.used += cost;
        true
    }

    /// Admit stream text, cut on a character boundary to what fits; None if nothing does.
    pub fn take_text(&mut self, mut text: String) -> Option<String> {
        let room = self.room().saturating_sub(EVENT_OVERHEAD_BYTES) as usize;
        if room == 0 {
            self.truncated = true;
            return None;
        }
        if text.len() > room {
            self.truncated = true;
            text.truncate(floor_char_boundary(&text, room));
        }
        self.used += text.len() as u64 + EVENT_OVERHEAD_BYTES;
        Some(text)
    }

    /// Admit an error event: a traceback too large for the room left is cut to what fits.
    pub fn take_error(&mut self, mut e: CellError) -> CellError {
        let base = e.name.len() as u64 + e.value.len() as u64;
        if !self.take(base) {
            // The error itself is always reported, without its traceback.
            e.value.truncate(floor_char_boundary(&e.value, 1024));
            e.traceback.clear();
            return e;
        }
        let mut kept = Vec::new();
        for line in e.traceback {
            if (line.len() as u64 + 8) > self.room() {
                self.truncated = true;
                break;
            }
            self.used += line.len() as u64 + 8;
            kept.push(line);
        }
        e.traceback = kept;
        e
    }
}

/// The largest index ≤ `i` on a character boundary of `s`.
pub fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One item of a cell's ordered outputs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// Stream text (adjacent chunks of the same stream are merged).
    Stream {
        /// `stdout` or `stderr`.
        name: String,
        /// The text.
        text: String,
    },
    /// `display()` output.
    DisplayData {
        /// MIME bundle.
        data: JsonMap,
        /// Per-MIME metadata.
        metadata: JsonMap,
        /// `{display_id}`, when set.
        #[serde(skip_serializing_if = "JsonMap::is_empty")]
        transient: JsonMap,
    },
    /// The value of the last expression.
    ExecuteResult {
        /// Execution count.
        execution_count: u64,
        /// MIME bundle.
        data: JsonMap,
        /// Per-MIME metadata.
        metadata: JsonMap,
    },
    /// The cell's error.
    Error {
        /// Exception name.
        ename: String,
        /// Exception value.
        evalue: String,
        /// Traceback lines.
        traceback: Vec<String>,
    },
}

impl OutputItem {
    /// Bytes the item holds (its text, MIME data and metadata), as the output cap counts them.
    pub fn size(&self) -> u64 {
        match self {
            OutputItem::Stream { name, text } => (name.len() + text.len()) as u64,
            OutputItem::DisplayData {
                data,
                metadata,
                transient,
            } => map_size(data) + map_size(metadata) + map_size(transient),
            OutputItem::ExecuteResult { data, metadata, .. } => map_size(data) + map_size(metadata),
            OutputItem::Error {
                ename,
                evalue,
                traceback,
            } => {
                (ename.len() + evalue.len()) as u64
                    + traceback.iter().map(|l| l.len() as u64 + 8).sum::<u64>()
            }
        }
    }
}

/// One rich result (display data or the last value), for folds that keep them apart.
#[derive(Debug, Clone, Serialize)]
pub struct RichResult {
    /// `execute_result` or `display_data`.
    pub kind: &'static str,
    /// MIME bundle.
    pub data: JsonMap,
    /// Per-MIME metadata.
    pub metadata: JsonMap,
}

/// A whole cell folded into one value: the summary plus every output, grouped and in order.
#[derive(Debug, Clone)]
pub struct CellOutcome {
    /// The summary (`execute_reply`).
    pub summary: CellSummary,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// Rich results in order.
    pub results: Vec<RichResult>,
    /// Every output in the order the kernel sent it.
    pub outputs: Vec<OutputItem>,
}

impl CellOutcome {
    /// The cell's error as one text, for doors that answer with a message: the
    /// traceback, else `name: value`, else "execution failed".
    pub fn error_text(&self) -> String {
        match &self.summary.error {
            Some(e) if !e.traceback.is_empty() => e.traceback.join("\n"),
            Some(e) => format!("{}: {}", e.name, e.value),
            None => "execution failed".into(),
        }
    }

    /// Fold events into the outcome. `clear_output` and `update_display_data` apply as a
    /// notebook would show the cell at its end.
    pub fn fold(events: impl IntoIterator<Item = CellEvent>) -> Option<Self> {
        let mut acc = Accumulator::default();
        for ev in events {
            if let Some(done) = acc.push(ev) {
                return Some(done);
            }
        }
        None
    }

    /// Fold a live stream until its reply.
    pub async fn collect(rx: &mut tokio::sync::mpsc::UnboundedReceiver<CellEvent>) -> Option<Self> {
        let mut acc = Accumulator::default();
        while let Some(ev) = rx.recv().await {
            if let Some(done) = acc.push(ev) {
                return Some(done);
            }
        }
        None
    }
}

/// The fold's state.
#[derive(Debug, Default)]
pub struct Accumulator {
    outputs: Vec<OutputItem>,
    clear_pending: bool,
}

impl Accumulator {
    fn clear_if_pending(&mut self) {
        if self.clear_pending {
            self.outputs.clear();
            self.clear_pending = false;
        }
    }

    /// Take one event; the outcome once the reply arrives.
    pub fn push(&mut self, ev: CellEvent) -> Option<CellOutcome> {
        match ev {
            CellEvent::Stream { name, text } => {
                self.clear_if_pending();
                if let Some(OutputItem::Stream { name: n, text: t }) = self.outputs.last_mut() {
                    if *n == name {
                        t.push_str(&text);
                        return None;
                    }
                }
                self.outputs.push(OutputItem::Stream { name, text });
            }
            CellEvent::DisplayData {
                data,
                metadata,
                transient,
            } => {
                self.clear_if_pending();
                self.outputs.push(OutputItem::DisplayData {
                    data,
                    metadata,
                    transient,
                });
            }
            CellEvent::UpdateDisplayData {
                data,
                metadata,
                transient,
            } => {
                let id = transient.get("display_id").cloned();
                for item in &mut self.outputs {
                    if let OutputItem::DisplayData {
                        data: d,
                        metadata: m,
                        transient: t,
                    } = item
                    {
                        if id.is_some() && t.get("display_id") == id.as_ref() {
                            *d = data.clone();
                            *m = metadata.clone();
                        }
                    }
                }
            }
            CellEvent::ClearOutput { wait } => {
                if wait {
                    self.clear_pending = true;
                } else {
                    self.outputs.clear();
                }
            }
            CellEvent::ExecuteResult {
                execution_count,
                data,
                metadata,
            } => {
                self.clear_if_pending();
                self.outputs.push(OutputItem::ExecuteResult {
                    execution_count,
                    data,
                    metadata,
                });
            }
            CellEvent::Error(e) => {
                self.clear_if_pending();
                self.outputs.push(OutputItem::Error {
                    ename: e.name,
                    evalue: e.value,
                    traceback: e.traceback,
                });
            }
            CellEvent::Reply(summary) => {
                let outputs = std::mem::take(&mut self.outputs);
                let mut out = CellOutcome {
                    summary,
                    stdout: String::new(),
                    stderr: String::new(),
                    results: Vec::new(),
                    outputs: Vec::new(),
                };
                for item in &outputs {
                    match item {
                        OutputItem::Stream { name, text } if name == "stderr" => {
                            out.stderr.push_str(text)
                        }
                        OutputItem::Stream { text, .. } => out.stdout.push_str(text),
                        OutputItem::DisplayData { data, metadata, .. } => {
                            out.results.push(RichResult {
                                kind: "display_data",
                                data: data.clone(),
                                metadata: metadata.clone(),
                            })
                        }
                        OutputItem::ExecuteResult { data, metadata, .. } => {
                            out.results.push(RichResult {
                                kind: "execute_result",
                                data: data.clone(),
                                metadata: metadata.clone(),
                            })
                        }
                        OutputItem::Error { .. } => {}
                    }
                }
                // The error is in the summary; the ordered list keeps it too.
                out.outputs = outputs;
                return Some(out);
            }
            CellEvent::Status(_)
            | CellEvent::ExecuteInput { .. }
            | CellEvent::InputRequest { .. } => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> CellSummary {
        CellSummary {
            status: CellStatus::Ok,
            execution_count: 1,
            error: None,
            files: vec![],
            truncated: false,
            state_lost: false,
            duration_ms: 0.0,
            user_expressions: JsonMap::new(),
        }
    }

    fn text(name: &str, t: &str) -> CellEvent {
        CellEvent::Stream {
            name: name.into(),
            text: t.into(),
        }
    }

    #[test]
    fn fold_keeps_order_and_groups() {
        let mut data = JsonMap::new();
        data.insert("text/html".into(), "<table/>".into());
        let out = CellOutcome::fold([
            CellEvent::Status(ExecutionState::Busy),
            text("stdout", "a"),
            text("stdout", "b"),
            CellEvent::DisplayData {
                data,
                metadata: JsonMap::new(),
                transient: JsonMap::new(),
            },
            text("stderr", "w"),
            text("stdout", "c"),
            CellEvent::Reply(summary()),
        ])
        .unwrap();
        assert_eq!(out.stdout, "abc");
        assert_eq!(out.stderr, "w");
        assert_eq!(out.results.len(), 1);
        let kinds: Vec<String> = out
            .outputs
            .iter()
            .map(|o| {
                serde_json::to_value(o).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds, ["stream", "display_data", "stream", "stream"]);
    }

    #[test]
    fn clear_output_and_updates_apply() {
        let bundle = |v: &str| {
            let mut m = JsonMap::new();
            m.insert("text/plain".into(), v.into());
            m
        };
        let mut t = JsonMap::new();
        t.insert("display_id".into(), "d1".into());
        let out = CellOutcome::fold([
            text("stdout", "old"),
            CellEvent::ClearOutput { wait: true },
            CellEvent::DisplayData {
                data: bundle("1"),
                metadata: JsonMap::new(),
                transient: t.clone(),
            },
            CellEvent::UpdateDisplayData {
                data: bundle("2"),
                metadata: JsonMap::new(),
                transient: t,
            },
            CellEvent::Reply(summary()),
        ])
        .unwrap();
        assert_eq!(out.stdout, "");
        assert_eq!(out.results[0].data["text/plain"], "2");
    }

    #[test]
    fn output_sizes_count_their_content() {
        let mut data = JsonMap::new();
        data.insert("text/plain".into(), "abcd".into());
        let item = OutputItem::DisplayData {
            data: data.clone(),
            metadata: JsonMap::new(),
            transient: JsonMap::new(),
        };
        assert_eq!(item.size(), map_size(&data));
        let text = OutputItem::Stream {
            name: "stdout".into(),
            text: "x".repeat(100),
        };
        assert_eq!(text.size(), 106);
    }

    #[test]
    fn budget_counts_overhead_and_cuts_text_on_char_boundary() {
        let mut b = OutputBudget::new(EVENT_OVERHEAD_BYTES + 5);
        assert_eq!(b.take_text("abcdé€".into()).as_deref(), Some("abcd"));
        assert!(b.truncated);
        assert!(b.take_text("x".into()).is_none());
        let mut b = OutputBudget::new(10 * EVENT_OVERHEAD_BYTES);
        let n = (0..100).filter(|_| b.take(0)).count();
        assert_eq!(n, 10);
    }
}
