//! The setup messages between the caller of [`crate::spawn`], the sandbox's init and its
//! kernel: one JSON object per line, one type with one encoder and one decoder.
//!
//! - init → caller, on the init's channel: [`SetupMessage::Ok`] once the sandbox is built,
//!   or [`SetupMessage::Err`];
//! - caller → init: [`SetupMessage::Go`] once the kernel exists (pid 2), so the init starts
//!   watching it;
//! - kernel → caller, on the report pipe: [`SetupMessage::Ok`] or [`SetupMessage::Err`].
//!
//! The spec itself travels before, as the first line on the init's channel.

use serde::{Deserialize, Serialize};

/// One setup message (see the module docs).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SetupMessage {
    /// The sender is ready.
    Ok,
    /// The sender failed; it exits after this.
    Err {
        /// What went wrong.
        message: String,
    },
    /// The kernel exists: the init may go on.
    Go,
}

impl SetupMessage {
    /// The message as one line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a plain enum of strings into a Vec cannot fail.
        let mut line = serde_json::to_vec(self)
            .unwrap_or_else(|_| b"{\"type\":\"err\",\"message\":\"unencodable\"}".to_vec());
        line.push(b'\n');
        line
    }

    /// Parses one line (without its newline); the error says what arrived instead.
    pub fn decode(line: &str) -> Result<SetupMessage, String> {
        serde_json::from_str(line).map_err(|_| {
            let shown: String = line.chars().take(200).collect();
            format!("unexpected setup message {shown:?}")
        })
    }

    /// A failure with `message`.
    pub fn err(message: impl std::fmt::Display) -> SetupMessage {
        SetupMessage::Err {
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_is_one_json_line_and_round_trips() {
        let all = [
            SetupMessage::Ok,
            SetupMessage::Go,
            SetupMessage::err("mount tmpfs on /x: EPERM\nsecond line"),
        ];
        for message in all {
            let line = message.encode();
            assert_eq!(line.last(), Some(&b'\n'));
            let text = std::str::from_utf8(&line[..line.len() - 1]).expect("utf-8");
            // Newlines in a message are escaped: the framing is one line per message.
            assert!(!text.contains('\n'), "{text}");
            assert_eq!(SetupMessage::decode(text), Ok(message));
        }
        assert_eq!(SetupMessage::Ok.encode(), b"{\"type\":\"ok\"}\n");
    }

    #[test]
    fn anything_else_is_refused_with_what_arrived() {
        for line in ["ok", "", "{\"type\":\"ready\"}", "{\"type\":\"err\"}"] {
            let err = SetupMessage::decode(line).expect_err(line);
            assert!(err.contains("unexpected setup message"), "{err}");
        }
        let long = "x".repeat(10_000);
        assert!(SetupMessage::decode(&long).expect_err("garbage").len() < 300);
    }
}
