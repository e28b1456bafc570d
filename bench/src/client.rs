//! A thin keep-alive HTTP client for the Pyxis v1 API.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Client for one server. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An answer with how long it took (request sent to body read), in ms.
pub struct Timed<T> {
    pub value: T,
    pub ms: f64,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(512)
            // Under the server's header timeout (10 s), which also closes an idle
            // keep-alive connection: a pooled one is never reused as it closes.
            .pool_idle_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Timed<(StatusCode, Value)>> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let start = Instant::now();
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: reading the body"))?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Timed {
            value: (status, value),
            ms,
        })
    }

    fn expect(path: &str, t: Timed<(StatusCode, Value)>, want: StatusCode) -> Result<Timed<Value>> {
        let (status, value) = t.value;
        if status != want {
            bail!("{path}: HTTP {status} (expected {want}): {}", short(&value));
        }
        Ok(Timed { value, ms: t.ms })
    }

    /// `POST /v1/sessions {}` → the session id.
    pub async fn create_session(&self) -> Result<Timed<String>> {
        let path = "/v1/sessions";
        let t = self.call(Method::POST, path, Some(&json!({}))).await?;
        let t = Self::expect(path, t, StatusCode::CREATED)?;
        let id = t.value["id"]
            .as_str()
            .ok_or_else(|| anyhow!("{path}: no id in {}", short(&t.value)))?
            .to_string();
        Ok(Timed {
            value: id,
            ms: t.ms,
        })
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn delete_session(&self, id: &str) -> Result<Timed<()>> {
        let path = format!("/v1/sessions/{id}");
        let t = self.call(Method::DELETE, &path, None).await?;
        let t = Self::expect(&path, t, StatusCode::NO_CONTENT)?;
        Ok(Timed {
            value: (),
            ms: t.ms,
        })
    }

    /// `POST /v1/sessions/{id}/execute` → the Execution (any `status`).
    pub async fn execute(&self, id: &str, code: &str) -> Result<Timed<Value>> {
        let path = format!("/v1/sessions/{id}/execute");
        let t = self
            .call(Method::POST, &path, Some(&json!({ "code": code })))
            .await?;
        Self::expect(&path, t, StatusCode::OK)
    }

    /// Like [`Api::execute`], but a cell whose status is not `ok` is an error.
    pub async fn execute_ok(&self, id: &str, code: &str) -> Result<Timed<Value>> {
        let t = self.execute(id, code).await?;
        check_ok(&t.value)?;
        Ok(t)
    }

    /// `POST /v1/sessions/{id}/execute` with `Accept: text/event-stream`: read the SSE
    /// stream to its `execute_reply`, timing the first event, the first `stream` event and
    /// the reply from the moment the request is sent.
    pub async fn execute_sse(&self, id: &str, code: &str) -> Result<SseCell> {
        let path = format!("/v1/sessions/{id}/execute");
        let req = self
            .http
            .post(format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&json!({ "code": code }));
        let start = Instant::now();
        let mut resp = req
            .send()
            .await
            .with_context(|| format!("POST {path} (SSE)"))?;
        let headers_ms = start.elapsed().as_secs_f64() * 1000.0;
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != StatusCode::OK || !ctype.starts_with("text/event-stream") {
            let body = resp.text().await.unwrap_or_default();
            bail!("{path} (SSE): HTTP {status}, content-type {ctype:?}: {body:.300}");
        }
        let mut parser = SseParser::default();
        let mut cell = SseCell {
            headers_ms,
            first_event_ms: f64::NAN,
            first_event: String::new(),
            first_stream_ms: f64::NAN,
            reply_ms: f64::NAN,
            stdout: String::new(),
            reply: Value::Null,
            events: 0,
        };
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("{path} (SSE): reading the stream"))?
        {
            let at = start.elapsed().as_secs_f64() * 1000.0;
            for ev in parser.push(&chunk) {
                cell.events += 1;
                if cell.first_event.is_empty() {
                    cell.first_event_ms = at;
                    cell.first_event = ev.event.clone();
                }
                match ev.event.as_str() {
                    "stream" => {
                        if cell.first_stream_ms.is_nan() {
                            cell.first_stream_ms = at;
                        }
                        let data: Value = serde_json::from_str(&ev.data)
                            .with_context(|| format!("a stream event's data {:?}", ev.data))?;
                        if data["name"] == "stdout" {
                            cell.stdout.push_str(data["text"].as_str().unwrap_or(""));
                        }
                    }
                    "execute_reply" => {
                        cell.reply_ms = at;
                        cell.reply = serde_json::from_str(&ev.data)
                            .with_context(|| format!("execute_reply data {:?}", ev.data))?;
                        return Ok(cell);
                    }
                    _ => {}
                }
            }
        }
        bail!(
            "{path} (SSE): the stream ended after {} event(s) without execute_reply",
            cell.events
        )
    }

    /// `POST /api/kernels {"name": "python3"}` (the Jupyter door) → the kernel id.
    pub async fn start_kernel(&self) -> Result<Timed<String>> {
        let path = "/api/kernels";
        let t = self
            .call(Method::POST, path, Some(&json!({ "name": "python3" })))
            .await?;
        let t = Self::expect(path, t, StatusCode::CREATED)?;
        let id = t.value["id"]
            .as_str()
            .ok_or_else(|| anyhow!("{path}: no id in {}", short(&t.value)))?
            .to_string();
        Ok(Timed {
            value: id,
            ms: t.ms,
        })
    }

    /// `DELETE /api/kernels/{id}`.
    pub async fn delete_kernel(&self, id: &str) -> Result<()> {
        let path = format!("/api/kernels/{id}");
        let t = self.call(Method::DELETE, &path, None).await?;
        Self::expect(&path, t, StatusCode::NO_CONTENT)?;
        Ok(())
    }

    /// The server's base URL (`http://127.0.0.1:PORT`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The API token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `POST /v1/execute` (one-shot).
    pub async fn oneshot(&self, code: &str) -> Result<Timed<Value>> {
        let path = "/v1/execute";
        let t = self
            .call(Method::POST, path, Some(&json!({ "code": code })))
            .await?;
        Self::expect(path, t, StatusCode::OK)
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Value> {
        let path = "/v1/status";
        let t = self.call(Method::GET, path, None).await?;
        Ok(Self::expect(path, t, StatusCode::OK)?.value)
    }

    /// Whether `GET <path>` answers 2xx.
    pub async fn probe(&self, path: &str) -> bool {
        match self.call(Method::GET, path, None).await {
            Ok(t) => t.value.0.is_success(),
            Err(_) => false,
        }
    }

    /// Wait until the warm pool has a sandbox ready.
    pub async fn wait_pool_idle(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let s = self.status().await?;
            if s["pool_idle"].as_u64().unwrap_or(0) > 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("the warm pool stayed empty for {limit:?} (status: {s})");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One cell read over SSE. Times are in ms from sending the request; `NAN` when that
/// event never came.
pub struct SseCell {
    /// Response headers received.
    pub headers_ms: f64,
    /// The first event (of any type) parsed.
    pub first_event_ms: f64,
    /// Its `event:` type.
    pub first_event: String,
    /// The first `stream` event.
    pub first_stream_ms: f64,
    /// The `execute_reply` event.
    pub reply_ms: f64,
    /// The `text` of every `stdout` stream event, in order.
    pub stdout: String,
    /// The `execute_reply` data (the Execution summary).
    pub reply: Value,
    /// Events seen, `execute_reply` included.
    pub events: usize,
}

/// One server-sent event.
#[derive(Debug, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: String,
}

/// An incremental parser of a `text/event-stream` body (the WHATWG rules that matter
/// here: `\n` or `\r\n` line ends, a blank line ends an event, `:` lines are comments,
/// several `data:` lines join with `\n`, an event without data is not dispatched).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    id: String,
    data: Option<String>,
}

impl SseParser {
    /// Feed a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let mut line = &self.buf[start..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push(SseEvent {
                        event: if self.event.is_empty() {
                            "message".into()
                        } else {
                            std::mem::take(&mut self.event)
                        },
                        id: self.id.clone(),
                        data,
                    });
                }
                self.event.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.event = value.to_string(),
                "id" => self.id = value.to_string(),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                },
                _ => {}
            }
        }
        self.buf.drain(..start);
        out
    }
}

/// 32 random hex digits (ids of the benchmark's own messages).
pub fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Error unless an Execution's status is `ok`.
pub fn check_ok(exec: &Value) -> Result<()> {
    if exec["status"] != "ok" {
        bail!(
            "cell status {} (error: {})",
            exec["status"],
            short(&exec["error"])
        );
    }
    Ok(())
}

/// A JSON value cut to a readable length for error messages.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: status\nid: 1\nda").is_empty());
        let evs = p.push(b"ta: {\"a\":1}\n\n: keep-alive\n\nevent: stream\r\nid: 2\r\n");
        assert_eq!(
            evs,
            vec![SseEvent {
                event: "status".into(),
                id: "1".into(),
                data: "{\"a\":1}".into()
            }]
        );
        let evs = p.push(b"data: x\ndata: y\r\n\r\ndata:z\n\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event, "stream");
        assert_eq!(evs[0].id, "2");
        assert_eq!(evs[0].data, "x\ny");
        // No `event:` field: the default type; the id carries over.
        assert_eq!(evs[1].event, "message");
        assert_eq!(evs[1].id, "2");
        assert_eq!(evs[1].data, "z");
    }
}
