//! `pyxis mcp`: the MCP stdio transport, for clients that launch a command. It is a bridge
//! to a running Pyxis server's Streamable HTTP endpoint (`--url`, by default this host's
//! configured listen address), not a second server: it needs no root, starts in
//! milliseconds, shares the server's warm pool and limits, and its sessions are the same
//! sessions the HTTP API and the other doors see (and clean up). An in-process server
//! would instead have to own a data directory (one server per directory), a zygote and a
//! pool per launched client.
//!
//! The bridge is message-for-message and keeps the JSON as it is: each line on stdin (one
//! JSON-RPC message, as the stdio transport frames them) is POSTed to `/mcp` with the
//! token, the `Mcp-Session-Id` the server gave at `initialize` and the negotiated
//! `MCP-Protocol-Version`; every message of the answer (JSON, or each event of an SSE
//! stream: progress notifications, then the response) becomes one line on stdout. Requests
//! run concurrently, so a long `run_code` does not hold up the others. A client's
//! `notifications/cancelled` is forwarded (the 2025 revisions' cancellation) and the
//! request's POST is dropped too (the 2026-07-28 revision's: closing the stream). When
//! stdin ends, the MCP session is deleted on the server.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::config::Config;

/// `pyxis mcp` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct McpArgs {
    /// URL of the Pyxis server (its `/mcp` endpoint, or the base URL). Default: this
    /// host's configured listen address.
    #[arg(long, env = "PYXIS_MCP_URL")]
    pub url: Option<String>,
    /// API token of that server. Default: the configured token, or the one stored in the
    /// data directory.
    #[arg(long = "token", env = "PYXIS_MCP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

const HEADER_SESSION_ID: &str = "mcp-session-id";
const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
const HEADER_METHOD: &str = "mcp-method";
const HEADER_NAME: &str = "mcp-name";
/// Where a 2026-07-28 request names its protocol revision (it has no `initialize`).
const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// How long answers still in flight are waited for once stdin has ended.
const EOF_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// JSON-RPC's "internal error", for an HTTP failure that has no JSON-RPC answer.
const INTERNAL_ERROR: i64 = -32603;
/// JSON-RPC's "parse error", for a stdin line that is not JSON.
const PARSE_ERROR: i64 = -32700;

/// The bridge's state shared by its request tasks.
struct Bridge {
    http: reqwest::Client,
    url: String,
    auth: HeaderValue,
    session_id: Mutex<Option<HeaderValue>>,
    protocol_version: Mutex<Option<HeaderValue>>,
    /// Requests in flight by id (its JSON text), to drop on `notifications/cancelled`.
    in_flight: Mutex<HashMap<String, AbortHandle>>,
    out: mpsc::UnboundedSender<String>,
}

/// `pyxis mcp`: resolve the server and its token from the arguments or the configuration,
/// then bridge stdin/stdout to it until stdin ends.
pub fn main(cfg: &Config, args: McpArgs) -> anyhow::Result<()> {
    let url = match args.url {
        Some(u) => u,
        None => {
            let mut addr = cfg.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}/mcp")
        }
    };
    let token = match args.token.or_else(|| cfg.token.clone()) {
        Some(t) => t,
        None => {
            let path = cfg.token_path();
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "no token given (--token or PYXIS_MCP_TOKEN) and {} is not readable",
                        path.display()
                    )
                })?
                .trim()
                .to_string()
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(&url, &token))
}

/// Run the bridge until stdin ends.
pub async fn run(url: &str, token: &str) -> anyhow::Result<()> {
    let url = endpoint(url)?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token is not a valid header value")?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
    let bridge = Arc::new(Bridge {
        http,
        url,
        auth,
        session_id: Mutex::new(None),
        protocol_version: Mutex::new(None),
        in_flight: Mutex::new(HashMap::new()),
        out,
    });
    // One writer, so that lines of concurrent answers never interleave.
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let mut requests = JoinSet::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                bridge.emit(error_reply(&Value::Null, PARSE_ERROR, &e.to_string()));
                continue;
            }
        };
        bridge.dispatch(msg, &mut requests).await;
        // Reap the finished ones as we go, so the set stays the size of what is in flight.
        while requests.try_join_next().is_some() {}
    }
    // The client closed stdin: it is going away. Answers already on their way are still
    // written (a pipe like `echo request | pyxis mcp` gets its answer) for a short while.
    let _ = tokio::time::timeout(EOF_GRACE, async {
        while requests.join_next().await.is_some() {}
    })
    .await;
    bridge.close().await;
    drop(bridge);
    let _ = writer.await;
    Ok(())
}

/// The `/mcp` endpoint of a server URL.
fn endpoint(raw: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(raw).with_context(|| format!("{raw:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https"),
        "{raw:?} is not an http or https URL"
    );
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/mcp");
    }
    Ok(url.to_string())
}

impl Bridge {
    fn emit(&self, line: String) {
        let _ = self.out.send(line);
    }

    /// Forward one message from the client.
    async fn dispatch(self: &Arc<Self>, msg: Value, requests: &mut JoinSet<()>) {
        let method = msg.get("method").and_then(Value::as_str).map(str::to_owned);
        let id = msg.get("id").cloned().filter(|_| method.is_some());
        if let Some(v) = msg
            .pointer("/params/_meta")
            .and_then(|m| m.get(META_PROTOCOL_VERSION))
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            *lock(&self.protocol_version) = Some(v);
        }
        match (method.as_deref(), id) {
            // The handshake goes first and alone: every later message needs its session.
            (Some("initialize"), Some(id)) => self.post(msg, Some(id)).await,
            (Some("notifications/cancelled"), None) => {
                let target = msg.pointer("/params/requestId").map(Value::to_string);
                self.post(msg, None).await;
                if let Some(handle) = target.and_then(|t| lock(&self.in_flight).remove(&t)) {
                    handle.abort();
                }
            }
            (Some(_), Some(id)) => {
                let key = id.to_string();
                let me = self.clone();
                // Held while the task is spawned and registered, so that its own removal
                // (when it ends) always comes after.
                let mut in_flight = lock(&self.in_flight);
                let done_key = key.clone();
                let task = requests.spawn(async move {
                    me.post(msg, Some(id)).await;
                    lock(&me.in_flight).remove(&done_key);
                });
                in_flight.insert(key, task);
            }
            // Notifications and the client's answers to server requests, in order.
            _ => self.post(msg, None).await,
        }
    }

    /// POST one message and relay its answer; `id` is the request's (for an error reply).
    async fn post(&self, msg: Value, id: Option<Value>) {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, self.auth.clone());
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(s) = lock(&self.session_id).clone() {
            headers.insert(HEADER_SESSION_ID, s);
        }
        if let Some(v) = lock(&self.protocol_version).clone() {
            headers.insert(HEADER_PROTOCOL_VERSION, v);
        }
        if let Some(method) = msg.get("method").and_then(Value::as_str) {
            if let Ok(v) = HeaderValue::from_str(method) {
                headers.insert(HEADER_METHOD, v);
            }
            let name = msg
                .pointer("/params/name")
                .or_else(|| msg.pointer("/params/uri"))
                .and_then(Value::as_str)
                .filter(|n| n.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            if let Some(v) = name.and_then(|n| HeaderValue::from_str(n).ok()) {
                headers.insert(HEADER_NAME, v);
            }
        }
        let is_initialize = msg.get("method").and_then(Value::as_str) == Some("initialize");
        let resp = match self
            .http
            .post(&self.url)
            .headers(headers)
            .body(msg.to_string())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %crate::services::url_import::without_url(&e), "POST to the server failed");
                if let Some(id) = id {
                    self.emit(error_reply(
                        &id,
                        INTERNAL_ERROR,
                        "the Pyxis server is unreachable",
                    ));
                }
                return;
            }
        };
        if let Some(s) = resp.headers().get(HEADER_SESSION_ID) {
            *lock(&self.session_id) = Some(s.clone());
        }
        let status = resp.status();
        let sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if sse {
            let mut buf = Vec::new();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                buf.extend_from_slice(&chunk);
                while let Some((event, rest)) = split_event(&buf) {
                    self.relay(&event, is_initialize);
                    buf = rest;
                }
            }
            return;
        }
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<Value>(&body) {
            // A JSON-RPC message (or batch), whatever the status: the server's own answer.
            Ok(v) if v.get("jsonrpc").is_some() || v.is_array() => {
                self.relay_value(v, is_initialize);
            }
            _ if status.is_success() => {}
            other => {
                if let Some(id) = id {
                    let why = other
                        .ok()
                        .and_then(|v| {
                            v.pointer("/error/message")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        })
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                    let text = format!("the Pyxis server answered {status}: {why}");
                    self.emit(error_reply(&id, INTERNAL_ERROR, &text));
                }
            }
        }
    }

    /// Relay one SSE event's data (priming events carry none).
    fn relay(&self, event: &str, is_initialize: bool) {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            return;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
            self.relay_value(v, is_initialize);
        }
    }

    fn relay_value(&self, v: Value, is_initialize: bool) {
        if is_initialize {
            if let Some(version) = v
                .pointer("/result/protocolVersion")
                .and_then(Value::as_str)
                .and_then(|s| HeaderValue::from_str(s).ok())
            {
                *lock(&self.protocol_version) = Some(version);
            }
        }
        self.emit(v.to_string());
    }

    /// End the MCP session on the server (stdin is closed: the client is gone).
    async fn close(&self) {
        let handles: Vec<AbortHandle> = lock(&self.in_flight).drain().map(|(_, h)| h).collect();
        for h in handles {
            h.abort();
        }
        let Some(session) = lock(&self.session_id).clone() else {
            return;
        };
        let _ = self
            .http
            .delete(&self.url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(HEADER_SESSION_ID, session)
            .send()
            .await;
    }
}

/// A mutex's guard; a poisoned one (a panicked task) still holds consistent data here.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first complete SSE event of `buf` (without its blank line) and what follows it.
fn split_event(buf: &[u8]) -> Option<(String, Vec<u8>)> {
    let find = |sep: &[u8]| {
        buf.windows(sep.len())
            .position(|w| w == sep)
            .map(|i| (i, sep.len()))
    };
    let (end, len) = [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .into_iter()
        .filter_map(find)
        .min_by_key(|(i, _)| *i)?;
    // The separators are ASCII, so an event's bytes are whole characters.
    Some((
        String::from_utf8_lossy(&buf[..end]).into_owned(),
        buf[end + len..].to_vec(),
    ))
}

/// A JSON-RPC error answer to request `id`.
fn error_reply(id: &Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/mcp"
        );
        assert_eq!(endpoint("http://h/mcp").unwrap(), "http://h/mcp");
        assert_eq!(endpoint("https://h/x/mcp").unwrap(), "https://h/x/mcp");
        assert!(endpoint("ftp://h").is_err());
        assert!(endpoint("not a url").is_err());
    }

    #[test]
    fn sse_events() {
        let (e, rest) = split_event(b"id: 1\ndata: {\"a\":1}\n\ndata: x").unwrap();
        assert_eq!(e, "id: 1\ndata: {\"a\":1}");
        assert_eq!(rest, b"data: x");
        assert!(split_event(b"data: partial").is_none());
        let (e, _) = split_event(b"data: y\r\n\r\n").unwrap();
        assert_eq!(e, "data: y");
    }
}
