//! Jupyter messages (protocol 5.3): headers, and the translation of cell events into iopub,
//! shell and stdin messages.

use serde_json::{json, Value};

use crate::services::events::{CellEvent, CellStatus, CellSummary};

/// The messaging protocol version Pyxis speaks.
pub const PROTOCOL_VERSION: &str = "5.3";

/// A message ready to send: its channel and its JSON text.
pub fn message(
    channel: &str,
    msg_type: &str,
    session: &str,
    parent: &Value,
    content: Value,
) -> String {
    let msg_id = crate::ids::new_id();
    json!({
        "channel": channel,
        "msg_id": msg_id,
        "msg_type": msg_type,
        "header": header_with_id(&msg_id, msg_type, session),
        "parent_header": parent,
        "metadata": {},
        "content": content,
        "buffers": [],
    })
    .to_string()
}

/// A header for a message the kernel sends.
pub fn header(msg_type: &str, session: &str) -> Value {
    header_with_id(&crate::ids::new_id(), msg_type, session)
}

fn header_with_id(msg_id: &str, msg_type: &str, session: &str) -> Value {
    json!({
        "msg_id": msg_id,
        "msg_type": msg_type,
        "session": session,
        "username": "pyxis",
        "date": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "version": PROTOCOL_VERSION,
    })
}

/// A cell event's iopub content, or `None` for events that are not iopub messages.
pub fn iopub_content(ev: &CellEvent) -> Option<(&'static str, Value)> {
    match ev {
        CellEvent::Reply(_) | CellEvent::InputRequest { .. } => None,
        CellEvent::DisplayData { .. }
        | CellEvent::UpdateDisplayData { .. }
        | CellEvent::ExecuteResult { .. } => {
            let mut content = ev.content();
            // Jupyter clients want `transient` only on display messages, and `metadata` always.
            if let Some(obj) = content.as_object_mut() {
                if matches!(ev, CellEvent::ExecuteResult { .. }) {
                    obj.remove("transient");
                }
            }
            Some((ev.msg_type(), content))
        }
        _ => Some((ev.msg_type(), ev.content())),
    }
}

/// The `execute_reply` content of a finished cell.
pub fn execute_reply(summary: &CellSummary) -> Value {
    match (&summary.status, &summary.error) {
        (CellStatus::Ok, _) => json!({
            "status": "ok",
            "execution_count": summary.execution_count,
            "user_expressions": summary.user_expressions,
            "payload": [],
        }),
        (_, Some(e)) => json!({
            "status": "error",
            "execution_count": summary.execution_count,
            "ename": e.name,
            "evalue": e.value,
            "traceback": e.traceback,
            "user_expressions": summary.user_expressions,
            "payload": [],
        }),
        (_, None) => json!({
            "status": "error",
            "execution_count": summary.execution_count,
            "ename": "Error",
            "evalue": "",
            "traceback": [],
            "user_expressions": summary.user_expressions,
            "payload": [],
        }),
    }
}

/// The `kernel_info_reply` content.
pub fn kernel_info(python_version: &str) -> Value {
    let version = if python_version.is_empty() {
        "3"
    } else {
        python_version
    };
    json!({
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "pyxis",
        "implementation_version": env!("CARGO_PKG_VERSION"),
        "language_info": {
            "name": "python",
            "version": version,
            "mimetype": "text/x-python",
            "file_extension": ".py",
            "pygments_lexer": "ipython3",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "nbconvert_exporter": "python",
        },
        "banner": format!("Python {version} in a Pyxis sandbox"),
        "help_links": [],
        "debugger": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_channel_header_and_parent() {
        let parent = json!({"msg_id": "p1", "msg_type": "execute_request"});
        let m: Value = serde_json::from_str(&message(
            "iopub",
            "status",
            "s1",
            &parent,
            json!({"execution_state": "idle"}),
        ))
        .unwrap();
        assert_eq!(m["channel"], "iopub");
        assert_eq!(m["header"]["msg_type"], "status");
        assert_eq!(m["header"]["session"], "s1");
        assert_eq!(m["header"]["version"], PROTOCOL_VERSION);
        assert_eq!(m["parent_header"]["msg_id"], "p1");
        assert_eq!(m["msg_id"], m["header"]["msg_id"]);
        assert_eq!(m["buffers"], json!([]));
        assert!(m["header"]["date"].as_str().unwrap().ends_with('Z'));
    }
}
