//! Issue 15's JavaScript rows: the Node kernel of `runtime/node` behind the v1 API.
//!
//! - `js (cold)`: `POST /v1/sessions {language: javascript}` and a first cell (`1 + 1`),
//!   with the pool empty: a sandbox is built and Node starts in it.
//! - `js (pooled)`: the same when the warm pool serves JavaScript (`PYXIS_POOL_LANGUAGES`);
//!   skipped when it does not.
//! - `js (roundtrip)`: a trivial JS cell (`x = 1`) on a live session, one client.
//! - `js (idle)`: private memory (USS) per idle JS session after one cell.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::procmem;
use crate::stats::{num, Summary};
use crate::workloads::{Ctx, Row};

/// DESIGN.md: "JavaScript session, pool empty / pooled; JS cell round trip".
pub const COLD_BUDGET_MS: f64 = 80.0;
pub const POOLED_BUDGET_MS: f64 = 2.0;
pub const ROUNDTRIP_BUDGET_MS: f64 = 1.0;

fn row(variant: &'static str) -> Row {
    Row::new("js", Some(variant))
}

fn ms(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

/// The v1 calls these rows need beyond [`crate::client::Api`]'s (a session's language).
struct Js {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Js {
    fn new(ctx: &Ctx) -> Result<Js> {
        Ok(Js {
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .build()?,
            base: ctx.api.base().to_string(),
            token: ctx.api.token().to_string(),
        })
    }

    /// POST JSON; the status, the body and the time from sending to the body read (ms).
    async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value, f64)> {
        let start = Instant::now();
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let took = start.elapsed().as_secs_f64() * 1000.0;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value, took))
    }

    /// A JavaScript session: its id and how long the create took.
    async fn create(&self) -> Result<(String, f64)> {
        let (status, v, took) = self
            .post("/v1/sessions", &json!({ "language": "javascript" }))
            .await?;
        if status != StatusCode::CREATED {
            bail!("create a JavaScript session: HTTP {status}: {v}");
        }
        let id = v["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no id in {v}"))?
            .to_string();
        Ok((id, took))
    }

    /// Runs a cell that must succeed; its Execution and round trip.
    async fn exec(&self, id: &str, code: &str) -> Result<(Value, f64)> {
        let (status, v, took) = self
            .post(
                &format!("/v1/sessions/{id}/execute"),
                &json!({ "code": code }),
            )
            .await?;
        if status != StatusCode::OK || v["status"] != "ok" {
            bail!("cell {code:?}: HTTP {status}: {v}");
        }
        Ok((v, took))
    }
}

pub async fn run(ctx: &Ctx, variant: &str) -> Result<Row> {
    match variant {
        "cold" => create(ctx, false).await,
        "pooled" => create(ctx, true).await,
        "roundtrip" => roundtrip(ctx).await,
        "idle" => idle(ctx).await,
        _ => bail!("js has no variant {variant:?}"),
    }
}

/// Whether the server's warm pool keeps JavaScript sandboxes (`/v1/status`'s `pool` has
/// a lane of each language it serves).
fn pool_serves_js(status: &Value) -> bool {
    status["pool"]["javascript"]["min_idle"].as_u64() > Some(0)
}

/// Waits until the pool's JavaScript lane holds a ready sandbox.
async fn wait_js_pooled(ctx: &Ctx, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let s = ctx.api.status().await?;
        if s["pool"]["javascript"]["idle"].as_u64() > Some(0) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("the pool's JavaScript lane stayed empty for {limit:?} (status: {s})");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn create(ctx: &Ctx, pooled: bool) -> Result<Row> {
    let api = &ctx.api;
    let js = Js::new(ctx)?;
    let status = api.status().await?;
    let variant = if pooled { "pooled" } else { "cold" };
    if pooled && !pool_serves_js(&status) {
        return Ok(Row::skipped(
            "js",
            Some(variant),
            "the warm pool serves no JavaScript sandboxes (PYXIS_POOL_LANGUAGES)",
        ));
    }
    if !pooled && status["pool_min_idle"].as_u64() != Some(0) {
        bail!("a cold JavaScript create needs a server whose pool is empty (pool_min_idle 0)");
    }
    let (n, warmup) = if ctx.quick { (5, 1) } else { (20, 2) };
    let (mut create_ms, mut first_ms, mut total_ms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + n {
        if pooled {
            wait_js_pooled(ctx, Duration::from_secs(60)).await?;
        }
        let start = Instant::now();
        let (id, c) = js.create().await?;
        let res = js.exec(&id, "1 + 1").await;
        let total = start.elapsed().as_secs_f64() * 1000.0;
        let del = api.delete_session(&id).await;
        let (v, f) = res?;
        del?;
        if v["results"][0]["data"]["text/plain"] != "2" {
            bail!("the first JS cell answered {v}");
        }
        if i >= warmup {
            create_ms.push(c);
            first_ms.push(f);
            total_ms.push(total);
        }
    }
    let t = Summary::of(&total_ms);
    let c = Summary::of(&create_ms);
    let f = Summary::of(&first_ms);
    let budget = if pooled {
        POOLED_BUDGET_MS
    } else {
        COLD_BUDGET_MS
    };
    let mut r = row(variant);
    r.fields.insert("sessions".into(), json!(n));
    t.put(&mut r.fields, "first_result_");
    c.put(&mut r.fields, "create_");
    f.put(&mut r.fields, "first_cell_");
    r.budget = Some(format!("create to first result p50 ≤ {budget} ms"));
    r.budget_metric = Some("first_result_p50_ms".into());
    r.pass = Some(t.p50 <= budget);
    r.result = format!(
        "create p50 {} + first cell p50 {}; p95 {}",
        ms(c.p50),
        ms(f.p50),
        ms(t.p95)
    );
    r.measured = format!("create to first result p50 {}", ms(t.p50));
    Ok(r)
}

async fn roundtrip(ctx: &Ctx) -> Result<Row> {
    let js = Js::new(ctx)?;
    let (warm, n) = if ctx.quick { (10, 100) } else { (50, 1000) };
    let (id, _) = js.create().await?;
    let res = async {
        for _ in 0..warm {
            js.exec(&id, "x = 1").await?;
        }
        let (mut wall, mut server) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let (v, took) = js.exec(&id, "x = 1").await?;
            wall.push(took);
            if let Some(d) = v["duration_ms"].as_f64() {
                server.push(d);
            }
        }
        Ok::<_, anyhow::Error>((wall, server))
    }
    .await;
    let _ = ctx.api.delete_session(&id).await;
    let (wall, server) = res?;
    let s = Summary::of(&wall);
    let d = Summary::of(&server);
    let mut r = row("roundtrip");
    r.fields.insert("cells".into(), json!(n));
    s.put(&mut r.fields, "");
    r.fields.insert("server_duration_p50_ms".into(), num(d.p50));
    r.budget = Some(format!("p50 ≤ {ROUNDTRIP_BUDGET_MS} ms"));
    r.budget_metric = Some("p50_ms".into());
    r.pass = Some(s.p50 <= ROUNDTRIP_BUDGET_MS);
    r.result = format!(
        "p50 {} p95 {} (server {}) n={n}",
        ms(s.p50),
        ms(s.p95),
        ms(d.p50)
    );
    r.measured = format!("p50 {}", ms(s.p50));
    Ok(r)
}

async fn idle(ctx: &Ctx) -> Result<Row> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("js (idle) needs root to read other users' /proc/PID/smaps_rollup");
    }
    let js = Js::new(ctx)?;
    let n = if ctx.quick { 5 } else { 20 };
    let before = procmem::by_uid_range(ctx.uid_lo, ctx.uid_hi);
    let mut ids = Vec::with_capacity(n);
    let res = async {
        for _ in 0..n {
            let (id, _) = js.create().await?;
            ids.push(id.clone());
            js.exec(&id, "x = 1").await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let after = procmem::by_uid_range(ctx.uid_lo, ctx.uid_hi);
    for id in &ids {
        let _ = ctx.api.delete_session(id).await;
    }
    res?;
    if after.processes == 0 {
        bail!("no process with a uid in {}..{}", ctx.uid_lo, ctx.uid_hi);
    }
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1024.0 / n as f64;
    let uss = per(after.uss_kib, before.uss_kib);
    let pss = per(after.pss_kib, before.pss_kib);
    let rss = per(after.rss_kib, before.rss_kib);
    let mut r = row("idle");
    r.fields.insert("sessions".into(), json!(n));
    r.fields.insert("uss_mib_per_session".into(), num(uss));
    r.fields.insert("pss_mib_per_session".into(), num(pss));
    r.fields.insert("rss_mib_per_session".into(), num(rss));
    r.result =
        format!("{n} idle JS sessions after `x = 1`: PSS {pss:.1} MiB, RSS {rss:.1} MiB each");
    r.measured = format!("USS {uss:.1} MiB/JS context");
    Ok(r)
}
