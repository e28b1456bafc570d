//! A minimal Jupyter kernel client over the server's Jupyter door: the WebSocket
//! `/api/kernels/{id}/channels` with Jupyter's JSON text frames (a top-level `channel`),
//! as jupyter_server's gateway client speaks it.
//!
//! A cell is done, as for nbclient, when both its shell `execute_reply` and its iopub
//! `status: idle` (each parented to the request's `header.msg_id`) have arrived.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::Api;

/// How long one request may wait for its answers before the client gives up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// One open channels connection to a kernel.
pub struct KernelConn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// This client's Jupyter session id (the `session` of its headers).
    session: String,
    seq: u64,
}

/// What one execute request gave back.
pub struct Executed {
    /// Request sent → both `execute_reply` and `status: idle` read, in ms.
    pub ms: f64,
    /// The `execute_reply` content.
    pub reply: Value,
    /// The `text` of every `stdout` stream message, in order.
    pub stdout: String,
    /// Messages read for this request (of any parent).
    pub frames: usize,
}

/// The fields of a frame that the client looks at.
#[derive(Deserialize)]
struct Frame {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    msg_type: String,
    #[serde(default)]
    header: Header,
    #[serde(default)]
    parent_header: Header,
    #[serde(default)]
    content: Value,
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default)]
    msg_id: String,
    #[serde(default)]
    msg_type: String,
}

impl Frame {
    fn msg_type(&self) -> &str {
        if self.msg_type.is_empty() {
            &self.header.msg_type
        } else {
            &self.msg_type
        }
    }
}

impl KernelConn {
    /// Open `/api/kernels/{id}/channels` with the token in `Authorization`.
    pub async fn connect(api: &Api, kernel_id: &str) -> Result<KernelConn> {
        let ws_base = match api.base().strip_prefix("http://") {
            Some(rest) => format!("ws://{rest}"),
            None => bail!(
                "the Jupyter door client speaks plain ws:// only, not {}",
                api.base()
            ),
        };
        let url = format!("{ws_base}/api/kernels/{kernel_id}/channels");
        let mut req = url
            .as_str()
            .into_client_request()
            .with_context(|| format!("WebSocket request for {url}"))?;
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", api.token()))
                .context("the token is not a valid header value")?,
        );
        // Nagle off, as the HTTP client has it: small frames go out at once.
        let (ws, _resp) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(KernelConn {
            ws,
            session: crate::client::random_hex(),
            seq: 0,
        })
    }

    fn request(&mut self, channel: &str, msg_type: &str, content: Value) -> (String, String) {
        self.seq += 1;
        let msg_id = format!("{}_{}", self.session, self.seq);
        let text = json!({
            "channel": channel,
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "session": self.session,
                "username": "pyxis-bench",
                "date": "",
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "buffers": [],
        })
        .to_string();
        (msg_id, text)
    }

    async fn next_frame(&mut self, deadline: Instant) -> Result<Frame> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .map_err(|_| anyhow!("no answer from the kernel within {REPLY_TIMEOUT:?}"))?
                .ok_or_else(|| anyhow!("the kernel's WebSocket closed"))?
                .context("reading the kernel's WebSocket")?;
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(c) => bail!("the kernel's WebSocket closed: {c:?}"),
                _ => continue,
            };
            return serde_json::from_str(text.as_str()).with_context(|| {
                format!(
                    "a frame that is not a Jupyter message: {:.300}",
                    text.as_str()
                )
            });
        }
    }

    /// `kernel_info_request` on shell; wait for its reply and the `status: idle` after it,
    /// as Jupyter clients do before their first request.
    pub async fn kernel_info(&mut self) -> Result<Value> {
        let (id, text) = self.request("shell", "kernel_info_request", json!({}));
        self.ws
            .send(Message::Text(text.into()))
            .await
            .context("sending kernel_info_request")?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let (mut reply, mut idle) = (None, false);
        while reply.is_none() || !idle {
            let f = self.next_frame(deadline).await?;
            if f.parent_header.msg_id != id {
                continue;
            }
            match (f.channel.as_str(), f.msg_type()) {
                ("shell", "kernel_info_reply") => reply = Some(f.content),
                ("iopub", "status") if f.content["execution_state"] == "idle" => idle = true,
                _ => {}
            }
        }
        Ok(reply.unwrap_or_default())
    }

    /// Run `code`; the answer once its `execute_reply` and `status: idle` are both in.
    pub async fn execute(&mut self, code: &str) -> Result<Executed> {
        let (id, text) = self.request(
            "shell",
            "execute_request",
            json!({
                "code": code, "silent": false, "store_history": true,
                "user_expressions": {}, "allow_stdin": false, "stop_on_error": true,
            }),
        );
        let start = Instant::now();
        self.ws
            .send(Message::Text(text.into()))
            .await
            .context("sending execute_request")?;
        let deadline = start + REPLY_TIMEOUT;
        let (mut reply, mut idle, mut stdout, mut frames) = (None, false, String::new(), 0);
        while reply.is_none() || !idle {
            let f = self.next_frame(deadline).await?;
            frames += 1;
            if f.parent_header.msg_id != id {
                continue;
            }
            match (f.channel.as_str(), f.msg_type()) {
                ("shell", "execute_reply") => reply = Some(f.content),
                ("iopub", "status") if f.content["execution_state"] == "idle" => idle = true,
                ("iopub", "stream") if f.content["name"] == "stdout" => {
                    stdout.push_str(f.content["text"].as_str().unwrap_or(""));
                }
                _ => {}
            }
        }
        Ok(Executed {
            ms: start.elapsed().as_secs_f64() * 1000.0,
            reply: reply.unwrap_or_default(),
            stdout,
            frames,
        })
    }

    /// Close the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
