//! Issue 15's command row: `POST /v1/sessions/{id}/commands {cmd: "true", args: []}` on a
//! live session, one client, collected (the process is started through the join path,
//! `pyxis-sandbox-exec`, and waited for).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map};

use crate::stats::{num, Summary};
use crate::workloads::{Ctx, Row};

/// DESIGN.md: "command round trip ≤ 10 ms".
pub const BUDGET_MS: f64 = 10.0;

pub async fn run(ctx: &Ctx) -> Result<Row> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let id = ctx.api.create_session().await?.value;
    let url = format!("{}/v1/sessions/{id}/commands", ctx.api.base());
    let (warm, n) = if ctx.quick { (10, 100) } else { (30, 500) };
    let res = async {
        let (mut wall, mut server) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..warm + n {
            let start = Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth(ctx.api.token())
                .json(&json!({"cmd": "true", "args": []}))
                .send()
                .await
                .context("POST commands")?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await?;
            let took = start.elapsed().as_secs_f64() * 1000.0;
            if status != 200 || v["exit_code"] != 0 {
                bail!("`true` answered HTTP {status}: {v}");
            }
            if i >= warm {
                wall.push(took);
                if let Some(d) = v["duration_ms"].as_f64() {
                    server.push(d);
                }
            }
        }
        Ok::<_, anyhow::Error>((wall, server))
    }
    .await;
    let _ = ctx.api.delete_session(&id).await;
    let (wall, server) = res?;
    let s = Summary::of(&wall);
    let d = Summary::of(&server);
    let mut r = Row {
        workload: "command",
        variant: None,
        fields: Map::new(),
        budget: Some(format!("p50 ≤ {BUDGET_MS} ms")),
        budget_metric: Some("p50_ms".into()),
        pass: Some(s.p50 <= BUDGET_MS),
        result: String::new(),
        measured: String::new(),
    };
    r.fields.insert("commands".into(), json!(n));
    s.put(&mut r.fields, "");
    r.fields.insert("server_duration_p50_ms".into(), num(d.p50));
    r.result = format!(
        "p50 {:.2} ms p95 {:.2} ms (process start to exit {:.2} ms) n={n}",
        s.p50, s.p95, d.p50
    );
    r.measured = format!("p50 {:.2} ms", s.p50);
    Ok(r)
}
