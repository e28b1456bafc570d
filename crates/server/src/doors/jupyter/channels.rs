//! `GET /api/kernels/{id}/channels`: the WebSocket of a kernel, Jupyter's JSON text frames
//! with the channel named in each (a frame without one is shell).
//!
//! Every connection of a kernel sees its iopub; shell replies and stdin requests go to the
//! connection that sent the request. Requests are handled in order of arrival per kernel
//! (cells queue in the session); a connection that closes leaves its cells running to their
//! end, as in Jupyter.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use pyxis_protocol::{KernelEvent, KernelRequest};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::messages::{execute_reply, iopub_content, kernel_info, message};
use super::KernelState;
use crate::app::AppState;
use crate::error::ApiError;
use crate::services::events::{CellEvent, CellStatus, ExecutionState, JsonMap};
use crate::services::{CellRequest, Session};

/// Largest frame a client may send (a cell's code and its headers).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Open the kernel's channels. Needs the token like every route (`Authorization`, or
/// `?token=` since browsers cannot set headers on a WebSocket).
#[utoipa::path(get, path = "/api/kernels/{id}/channels", params(("id" = String, Path)),
    responses((status = 101, description = "WebSocket: Jupyter's JSON messages"),
        (status = 400, description = "not a WebSocket upgrade request"), (status = 404)),
    security(("token" = [])), tag = "jupyter")]
pub async fn channels(
    State(app): State<AppState>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let session = app.sessions.get(&id)?;
    let kernel = app.jupyter.register(&id);
    // The connection runs in a task of its own: it keeps the request's tenant.
    let tenant = crate::tenants::current();
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| {
            crate::tenants::within(tenant, serve(app, kernel, session, socket))
        }))
}

/// One connection's state.
struct Conn {
    app: AppState,
    kernel: Arc<KernelState>,
    session: Arc<Session>,
    /// Messages for this connection only (shell replies, stdin).
    direct: mpsc::UnboundedSender<String>,
    /// Where this connection's `input_reply` goes: the cell waiting for it.
    stdin: Mutex<Option<mpsc::Sender<String>>>,
}

impl Conn {
    fn iopub(&self, parent: &Value, msg_type: &str, content: Value) {
        let m = message(
            "iopub",
            msg_type,
            &self.kernel.jupyter_session,
            parent,
            content,
        );
        // No receiver is fine: nobody listens.
        let _ = self.kernel.iopub.send(m.into());
    }

    fn reply(&self, channel: &str, parent: &Value, msg_type: &str, content: Value) {
        let m = message(
            channel,
            msg_type,
            &self.kernel.jupyter_session,
            parent,
            content,
        );
        let _ = self.direct.send(m);
    }

    fn status(&self, parent: &Value, state: &str) {
        self.iopub(parent, "status", json!({ "execution_state": state }));
    }
}

async fn serve(app: AppState, kernel: Arc<KernelState>, session: Arc<Session>, socket: WebSocket) {
    let _guard = crate::metrics::stream_open("websocket");
    kernel.connections.fetch_add(1, Ordering::AcqRel);
    let (mut sink, mut stream) = socket.split();
    let (direct_tx, mut direct_rx) = mpsc::unbounded_channel::<String>();
    let mut iopub = kernel.iopub.subscribe();
    let writer = tokio::spawn(async move {
        loop {
            let text: String = tokio::select! {
                m = direct_rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                m = iopub.recv() => match m {
                    Ok(m) => m.to_string(),
                    // A slow client misses what it could not keep up with.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "jupyter: a slow connection missed iopub messages");
                        continue;
                    }
                    Err(_) => break,
                },
            };
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    });
    let conn = Arc::new(Conn {
        app,
        kernel: kernel.clone(),
        session,
        direct: direct_tx,
        stdin: Mutex::new(None),
    });
    while let Some(frame) = stream.next().await {
        let text = match frame {
            Ok(Message::Text(t)) => t.to_string(),
            // The legacy binary form (buffers after offsets) carries widgets' data: not served.
            Ok(Message::Binary(_)) | Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => break,
        };
        let Ok(msg) = serde_json::from_str::<Value>(&text) else {
            tracing::debug!("jupyter: a frame that is not JSON; ignored");
            continue;
        };
        if !msg.is_object() {
            continue;
        }
        handle(&conn, msg);
    }
    kernel.connections.fetch_sub(1, Ordering::AcqRel);
    drop(conn);
    writer.abort();
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Dispatch one client message.
fn handle(conn: &Arc<Conn>, msg: Value) {
    let header = msg.get("header").cloned().unwrap_or_else(|| json!({}));
    let msg_type = match str_of(&msg, "msg_type") {
        "" => str_of(&header, "msg_type").to_string(),
        t => t.to_string(),
    };
    // jupyter_server's own kernel client sends no `channel`: replies go where Jupyter
    // sends them for each type.
    let channel = match (str_of(&msg, "channel"), msg_type.as_str()) {
        ("", "interrupt_request" | "shutdown_request") => "control".to_string(),
        ("", "input_reply") => "stdin".to_string(),
        ("", _) => "shell".to_string(),
        (c, _) => c.to_string(),
    };
    let content = msg.get("content").cloned().unwrap_or_else(|| json!({}));
    let conn = conn.clone();
    match msg_type.as_str() {
        "kernel_info_request" => {
            conn.status(&header, "busy");
            let version = conn.app.sessions.launcher().runtime_info().python;
            conn.reply(
                &channel,
                &header,
                "kernel_info_reply",
                kernel_info(&version),
            );
            conn.status(&header, "idle");
        }
        "execute_request" => {
            // Taken now, in order of arrival: the session runs its cells in this order.
            let timeout = conn
                .session
                .default_timeout()
                .min(conn.app.config.max_exec_timeout);
            let req = CellRequest {
                code: str_of(&content, "code").to_string(),
                timeout,
                allow_stdin: content
                    .get("allow_stdin")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                silent: content
                    .get("silent")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                store_history: content.get("store_history").and_then(Value::as_bool),
                context: None,
                user_expressions: content
                    .get("user_expressions")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            };
            match conn.app.sessions.execute(&conn.session, req) {
                Ok(handle) => {
                    tokio::spawn(forward_cell(conn, header, handle));
                }
                Err(e) => {
                    conn.status(&header, "busy");
                    conn.reply(
                        &channel,
                        &header,
                        "execute_reply",
                        json!({
                            "status": "error", "ename": "PyxisError",
                            "evalue": e.to_string(), "traceback": [], "execution_count": 0,
                        }),
                    );
                    conn.status(&header, "idle");
                }
            }
        }
        "input_reply" => {
            let value = str_of(&content, "value").to_string();
            if let Some(tx) = conn.stdin.lock().ok().and_then(|mut s| s.take()) {
                let _ = tx.try_send(value);
            }
        }
        "interrupt_request" => {
            conn.app.sessions.interrupt(&conn.session);
            conn.reply(
                &channel,
                &header,
                "interrupt_reply",
                json!({ "status": "ok" }),
            );
        }
        "shutdown_request" => {
            let restart = content
                .get("restart")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            tokio::spawn(crate::tenants::propagate(async move {
                if restart {
                    let _ = conn.app.sessions.restart(&conn.session).await;
                } else {
                    conn.app.jupyter.remove(&conn.session.id);
                    conn.app.sessions.delete(&conn.session.id).await;
                }
                conn.reply(
                    &channel,
                    &header,
                    "shutdown_reply",
                    json!({ "status": "ok", "restart": restart }),
                );
                conn.status(&header, if restart { "restarting" } else { "dead" });
                if restart {
                    conn.status(&header, "idle");
                }
            }));
        }
        "complete_request"
        | "inspect_request"
        | "is_complete_request"
        | "comm_info_request"
        | "comm_open" => {
            tokio::spawn(query(conn, channel, msg_type, header, content));
        }
        "history_request" => {
            conn.status(&header, "busy");
            conn.reply(
                &channel,
                &header,
                "history_reply",
                json!({ "status": "ok", "history": [] }),
            );
            conn.status(&header, "idle");
        }
        // No comm target is registered in the kernel: messages on comms are dropped, as
        // ipykernel drops those for unknown comms.
        "comm_msg" | "comm_close" => {}
        other => tracing::debug!(msg_type = other, "jupyter: unknown message type; ignored"),
    }
}

/// A completion, inspection, completeness check or comm request, answered by the kernel.
async fn query(conn: Arc<Conn>, channel: String, msg_type: String, header: Value, content: Value) {
    let code = str_of(&content, "code").to_string();
    let cursor_pos = content
        .get("cursor_pos")
        .and_then(Value::as_u64)
        .unwrap_or(code.chars().count() as u64);
    conn.status(&header, "busy");
    let sessions = conn.app.sessions.clone();
    let answer: Option<(String, Value)> = match msg_type.as_str() {
        "complete_request" => sessions
            .kernel_query(
                &conn.session,
                |id| KernelRequest::CompleteRequest {
                    id,
                    code,
                    cursor_pos,
                },
                |id, ev| match ev {
                    KernelEvent::CompleteReply {
                        id: got,
                        matches,
                        cursor_start,
                        cursor_end,
                        metadata,
                    } if got == id => Some(json!({
                        "status": "ok", "matches": matches, "cursor_start": cursor_start,
                        "cursor_end": cursor_end, "metadata": metadata,
                    })),
                    _ => None,
                },
            )
            .await
            .ok()
            .map(|c| ("complete_reply".into(), c)),
        "inspect_request" => {
            let detail_level = content
                .get("detail_level")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(1) as u8;
            sessions
                .kernel_query(
                    &conn.session,
                    |id| KernelRequest::InspectRequest {
                        id,
                        code,
                        cursor_pos,
                        detail_level,
                    },
                    |id, ev| match ev {
                        KernelEvent::InspectReply {
                            id: got,
                            found,
                            data,
                            metadata,
                        } if got == id => Some(json!({
                            "status": "ok", "found": found, "data": data, "metadata": metadata,
                        })),
                        _ => None,
                    },
                )
                .await
                .ok()
                .map(|c| ("inspect_reply".into(), c))
        }
        "is_complete_request" => sessions
            .kernel_query(
                &conn.session,
                |id| KernelRequest::IsCompleteRequest { id, code },
                |id, ev| match ev {
                    KernelEvent::IsCompleteReply {
                        id: got,
                        status,
                        indent,
                    } if got == id => Some(json!({ "status": status, "indent": indent })),
                    _ => None,
                },
            )
            .await
            .ok()
            .map(|c| ("is_complete_reply".into(), c)),
        "comm_info_request" => {
            let target_name = content
                .get("target_name")
                .and_then(Value::as_str)
                .map(str::to_string);
            sessions
                .kernel_query(
                    &conn.session,
                    |id| KernelRequest::CommInfoRequest { id, target_name },
                    |id, ev| match ev {
                        KernelEvent::CommInfoReply { id: got, comms } if got == id => {
                            Some(json!({ "status": "ok", "comms": comms }))
                        }
                        _ => None,
                    },
                )
                .await
                .ok()
                .map(|c| ("comm_info_reply".into(), c))
        }
        "comm_open" => {
            let comm_id = str_of(&content, "comm_id").to_string();
            let target_name = str_of(&content, "target_name").to_string();
            let data = content
                .get("data")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_else(JsonMap::new);
            let closed = sessions
                .kernel_query(
                    &conn.session,
                    |id| KernelRequest::CommOpen {
                        id,
                        comm_id,
                        target_name,
                        data,
                    },
                    |id, ev| match ev {
                        KernelEvent::CommClose {
                            id: got,
                            comm_id,
                            data,
                        } if got == id => Some(json!({ "comm_id": comm_id, "data": data })),
                        _ => None,
                    },
                )
                .await;
            if let Ok(c) = closed {
                conn.iopub(&header, "comm_close", c);
            }
            None
        }
        _ => None,
    };
    if let Some((reply_type, c)) = answer {
        conn.reply(&channel, &header, &reply_type, c);
    } else if msg_type != "comm_open" {
        let reply_type = msg_type.replace("_request", "_reply");
        conn.reply(
            &channel,
            &header,
            &reply_type,
            json!({ "status": "error", "ename": "PyxisError", "evalue": "the kernel did not answer", "traceback": [] }),
        );
    }
    conn.status(&header, "idle");
}

/// Turn one cell's events into iopub messages, stdin requests and the shell reply.
async fn forward_cell(conn: Arc<Conn>, parent: Value, mut handle: crate::services::CellHandle) {
    let mut saw_error = false;
    while let Some(ev) = handle.events.recv().await {
        match &ev {
            CellEvent::Status(ExecutionState::Idle) => {
                // Sent after the reply's error, if the service reported one itself.
                continue;
            }
            CellEvent::InputRequest { prompt, password } => {
                if let Ok(mut s) = conn.stdin.lock() {
                    *s = Some(handle.stdin());
                }
                conn.reply(
                    "stdin",
                    &parent,
                    "input_request",
                    json!({ "prompt": prompt, "password": password }),
                );
                continue;
            }
            CellEvent::Error(_) => saw_error = true,
            CellEvent::Reply(summary) => {
                if summary.status != CellStatus::Ok && !saw_error {
                    if let Some(e) = &summary.error {
                        // OutOfMemory, Timeout, KernelDied: the kernel could not say it.
                        conn.iopub(
                            &parent,
                            "error",
                            json!({ "ename": e.name, "evalue": e.value, "traceback": [format!("{}: {}", e.name, e.value)] }),
                        );
                    }
                }
                conn.status(&parent, "idle");
                conn.reply("shell", &parent, "execute_reply", execute_reply(summary));
                break;
            }
            _ => {}
        }
        if let Some((msg_type, content)) = iopub_content(&ev) {
            conn.iopub(&parent, msg_type, content);
        }
    }
    if let Ok(mut s) = conn.stdin.lock() {
        *s = None;
    }
}
