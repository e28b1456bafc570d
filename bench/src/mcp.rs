//! The `mcp` workload: the MCP door's `run_code` round trip of a trivial cell over
//! Streamable HTTP, beside the v1 round trip of the same cell on the same session.
//!
//! A minimal MCP client, as the official SDKs speak it: `initialize` (2025-11-25), the
//! `Mcp-Session-Id` it returns on every later POST, `tools/call` answered as an SSE stream
//! whose last event is the call's result. A call is timed from the POST to the result
//! event read and checked (its `structuredContent.status` is `ok`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::client::SseParser;
use crate::stats::{num, Summary};
use crate::workloads::{Ctx, Row};

/// The budget of DESIGN.md: MCP `run_code` of a trivial cell, p50.
pub const MCP_BUDGET_MS: f64 = 2.0;
const PROTOCOL_VERSION: &str = "2025-11-25";
const CELL: &str = "x = 1";

/// One MCP session over Streamable HTTP.
struct McpClient {
    http: reqwest::Client,
    url: String,
    token: String,
    session: String,
    next_id: u64,
}

impl McpClient {
    async fn connect(base: &str, token: &str) -> Result<McpClient> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(120))
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        let mut c = McpClient {
            http,
            url: format!("{}/mcp", base.trim_end_matches('/')),
            token: token.to_string(),
            session: String::new(),
            next_id: 0,
        };
        let init = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "pyxis-bench", "version": env!("CARGO_PKG_VERSION")},
        });
        let (resp, session) = c.request("initialize", init).await?;
        c.session = session.ok_or_else(|| anyhow!("initialize gave no Mcp-Session-Id"))?;
        if resp.pointer("/result/protocolVersion").is_none() {
            bail!("initialize failed: {resp}");
        }
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let r = c
            .post(&note)
            .send()
            .await
            .context("notifications/initialized")?;
        if !r.status().is_success() {
            bail!("notifications/initialized: HTTP {}", r.status());
        }
        Ok(c)
    }

    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        if !self.session.is_empty() {
            req = req
                .header("mcp-session-id", &self.session)
                .header("mcp-protocol-version", PROTOCOL_VERSION);
        }
        req
    }

    /// Send one request; its JSON-RPC response (from JSON or from the SSE stream), and the
    /// `Mcp-Session-Id` header if the server sent one.
    async fn request(&mut self, method: &str, params: Value) -> Result<(Value, Option<String>)> {
        self.next_id += 1;
        let id = self.next_id;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let resp = self
            .post(&body)
            .send()
            .await
            .with_context(|| method.to_string())?;
        let status = resp.status();
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!("{method}: HTTP {status}: {text}");
        }
        if !sse {
            let v: Value = resp
                .json()
                .await
                .with_context(|| format!("{method}: JSON"))?;
            return Ok((v, session));
        }
        let mut parser = SseParser::default();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("{method}: reading the stream"))?;
            for ev in parser.push(&chunk) {
                if ev.data.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&ev.data)
                    .with_context(|| format!("{method}: an SSE event that is not JSON"))?;
                if v.get("id") == Some(&json!(id)) {
                    return Ok((v, session));
                }
            }
        }
        bail!("{method}: the stream ended without a response")
    }

    async fn call_tool(&mut self, name: &str, args: Value) -> Result<Value> {
        let (v, _) = self
            .request("tools/call", json!({"name": name, "arguments": args}))
            .await?;
        let result = v
            .get("result")
            .ok_or_else(|| anyhow!("{name}: {v}"))?
            .clone();
        if result.get("isError") == Some(&json!(true)) {
            bail!("{name}: {}", result.get("content").unwrap_or(&Value::Null));
        }
        Ok(result)
    }

    async fn close(&self) {
        let _ = self
            .http
            .delete(&self.url)
            .bearer_auth(&self.token)
            .header("mcp-session-id", &self.session)
            .send()
            .await;
    }
}

/// Run the workload.
pub async fn run(ctx: &Ctx) -> Result<Row> {
    let (warm, n) = if ctx.quick { (10, 100) } else { (50, 1000) };
    let api = &ctx.api;
    let mut mcp = McpClient::connect(api.base(), api.token()).await?;
    let created = mcp.call_tool("create_session", json!({})).await;
    let sid = match created {
        Ok(r) => r
            .pointer("/structuredContent/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("create_session gave no id: {r}")),
        Err(e) => Err(e),
    };
    let sid = match sid {
        Ok(s) => s,
        Err(e) => {
            mcp.close().await;
            return Err(e);
        }
    };
    let res = async {
        let args = json!({"session_id": sid, "code": CELL});
        for _ in 0..warm {
            mcp.call_tool("run_code", args.clone()).await?;
            api.execute_ok(&sid, CELL).await?;
        }
        let mut wall = Vec::with_capacity(n);
        let mut v1 = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let r = mcp.call_tool("run_code", args.clone()).await?;
            wall.push(t.elapsed().as_secs_f64() * 1000.0);
            if r.pointer("/structuredContent/status") != Some(&json!("ok")) {
                bail!("run_code: {r}");
            }
        }
        let elapsed = start.elapsed();
        // The same cell over v1 on the same session, for the comparison.
        for _ in 0..n {
            v1.push(api.execute_ok(&sid, CELL).await?.ms);
        }
        Ok::<_, anyhow::Error>((wall, v1, elapsed))
    }
    .await;
    let _ = mcp.call_tool("close_session", json!({"id": sid})).await;
    mcp.close().await;
    let (wall, v1, elapsed) = res?;
    let s = Summary::of(&wall);
    let v = Summary::of(&v1);
    let mut fields = Map::new();
    fields.insert("cells".into(), json!(n));
    fields.insert("warmup".into(), json!(warm));
    s.put(&mut fields, "");
    v.put(&mut fields, "v1_");
    fields.insert("cells_per_s".into(), num(n as f64 / elapsed.as_secs_f64()));
    Ok(Row {
        workload: "mcp",
        variant: None,
        fields,
        budget: Some(format!("p50 ≤ {MCP_BUDGET_MS} ms")),
        budget_metric: Some("p50_ms".into()),
        pass: Some(s.p50 <= MCP_BUDGET_MS),
        result: format!(
            "run_code p50 {:.3} ms p95 {:.3} ms; v1 p50 {:.3} ms p95 {:.3} ms; n={n}",
            s.p50, s.p95, v.p50, v.p95
        ),
        measured: format!("p50 {:.3} ms", s.p50),
    })
}
