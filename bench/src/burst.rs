//! Many sessions at once: `burst` (C clients create a session at the same moment and run
//! one cell), `spawn100` (100 fresh sandboxes, pool empty, each returning
//! `numpy.zeros(5).tolist()`) and `density1000` (1,000 live sessions each holding a small
//! DataFrame: the fall of `MemAvailable` per session, and cells on random ones of them).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::future::join_all;
use rand::Rng;
use serde_json::{json, Value};

use crate::client::{check_ok, Api};
use crate::stats::{num, Summary};
use crate::workloads::{Ctx, Row};

/// Budgets of DESIGN.md ("Performance budget").
pub const BURST50_P50_MS: f64 = 150.0;
pub const BURST50_P95_MS: f64 = 300.0;
pub const BURST25_P50_MS: f64 = 80.0;
pub const BURST25_P95_MS: f64 = 150.0;
pub const SPAWN100_BUDGET_S: f64 = 1.0;
pub const DENSITY1000_MIB: f64 = 6.0;
pub const DENSITY1000_P95_MS: f64 = 15.0;

/// The cell of `spawn100`.
const NUMPY_CELL: &str = "import numpy\nnumpy.zeros(5).tolist()";
/// What each session of `density1000` holds.
const FRAME_CELL: &str =
    "import pandas as pd\ndf = pd.DataFrame({'a': range(100), 'b': [i / 3 for i in range(100)]})\nlen(df)";
/// The cell run on random sessions of `density1000`.
const PROBE_CELL: &str = "int(df['a'].sum())";

fn row(workload: &'static str, variant: Option<&'static str>) -> Row {
    Row::new(workload, variant)
}

fn ms(x: f64) -> String {
    if x.is_nan() {
        "—".into()
    } else if x < 10.0 {
        format!("{x:.2} ms")
    } else {
        format!("{x:.1} ms")
    }
}

/// One client of a burst: create, run `1+1`, and the time to its result (or the error).
async fn one_client(api: Api) -> (Result<f64>, Option<String>) {
    let start = Instant::now();
    let id = match api.create_session().await {
        Ok(t) => t.value,
        Err(e) => return (Err(e), None),
    };
    let res = api
        .execute_ok(&id, "1+1")
        .await
        .map(|_| start.elapsed().as_secs_f64() * 1000.0);
    (res, Some(id))
}

/// Waits until the pool stops growing (no change for `quiet`), up to `limit`; its size.
async fn settle_pool(api: &Api, quiet: Duration, limit: Duration) -> Result<u64> {
    let start = Instant::now();
    let mut last = u64::MAX;
    let mut since = Instant::now();
    loop {
        let idle = api.status().await?["pool_idle"].as_u64().unwrap_or(0);
        if idle != last {
            last = idle;
            since = Instant::now();
        } else if since.elapsed() >= quiet || start.elapsed() >= limit {
            return Ok(idle);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `burst` with `c` clients: several rounds, each after the pool has settled. The first
/// round meets the pool at its minimum; later ones meet it as the earlier bursts left it
/// (it follows demand): both are reported, the budget is checked on all rounds together.
pub async fn burst(ctx: &Ctx, c: usize, variant: &'static str) -> Result<Row> {
    let api = &ctx.api;
    let rounds = if ctx.quick { 2 } else { 5 };
    let status = api.status().await?;
    let pool_min = status["pool_min_idle"].as_u64();
    let mut all = Vec::new();
    let mut first = Vec::new();
    let mut pool_before = Vec::new();
    let mut walls = Vec::new();
    for round in 0..rounds {
        pool_before
            .push(settle_pool(api, Duration::from_millis(800), Duration::from_secs(30)).await?);
        let start = Instant::now();
        let answers = join_all((0..c).map(|_| one_client(api.clone()))).await;
        walls.push(start.elapsed().as_secs_f64() * 1000.0);
        let ids: Vec<String> = answers.iter().filter_map(|(_, id)| id.clone()).collect();
        let mut errors = Vec::new();
        for (res, _) in answers {
            match res {
                Ok(t) => {
                    all.push(t);
                    if round == 0 {
                        first.push(t);
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        join_all(ids.iter().map(|id| api.delete_session(id))).await;
        if let Some(e) = errors.first() {
            bail!(
                "{} of {c} clients failed in round {round}: {e}",
                errors.len()
            );
        }
    }
    let (p50_budget, p95_budget) = if c >= 50 {
        (BURST50_P50_MS, BURST50_P95_MS)
    } else {
        (BURST25_P50_MS, BURST25_P95_MS)
    };
    let s = Summary::of(&all);
    let f = Summary::of(&first);
    let mut r = row("burst", Some(variant));
    r.fields.insert("clients".into(), json!(c));
    r.fields.insert("rounds".into(), json!(rounds));
    r.fields.insert("pool_min_idle".into(), json!(pool_min));
    r.fields
        .insert("pool_idle_before_rounds".into(), json!(pool_before));
    s.put(&mut r.fields, "");
    f.put(&mut r.fields, "first_round_");
    r.fields.insert(
        "round_wall_ms".into(),
        Value::Array(walls.iter().map(|w| num(*w)).collect()),
    );
    r.budget = Some(format!("p50 ≤ {p50_budget} ms, p95 ≤ {p95_budget} ms"));
    r.budget_metric = Some("p50_ms,p95_ms".into());
    r.pass = Some(s.p50 <= p50_budget && s.p95 <= p95_budget);
    r.result = format!(
        "max {}; first round (pool {}) p50 {} p95 {}",
        ms(s.max),
        pool_before.first().copied().unwrap_or(0),
        ms(f.p50),
        ms(f.p95)
    );
    r.measured = format!("p50 {} p95 {}", ms(s.p50), ms(s.p95));
    Ok(r)
}

/// `spawn100`: the wall time until 100 fresh sandboxes (pool empty) have each returned
/// `numpy.zeros(5).tolist()`.
pub async fn spawn100(ctx: &Ctx) -> Result<Row> {
    let api = &ctx.api;
    let n = if ctx.quick { 20 } else { 100 };
    let status = api.status().await?;
    if status["pool_min_idle"].as_u64() != Some(0) {
        if ctx.own {
            bail!("expected a server with PYXIS_POOL_MIN_IDLE=0, status says {status}");
        }
        return Ok(Row::skipped(
            "spawn100",
            None,
            "the server's warm pool is enabled (PYXIS_POOL_MIN_IDLE=0 wanted)",
        ));
    }
    let mut walls = Vec::new();
    let mut each = Vec::new();
    let runs = if ctx.quick { 1 } else { 3 };
    for _ in 0..runs {
        let start = Instant::now();
        let answers = join_all((0..n).map(|_| {
            let api = api.clone();
            async move {
                let t0 = Instant::now();
                let id = api.create_session().await?.value;
                let res = api.execute_ok(&id, NUMPY_CELL).await.and_then(|t| {
                    let got = &t.value["results"][0]["data"]["text/plain"];
                    if got.as_str() != Some("[0.0, 0.0, 0.0, 0.0, 0.0]") {
                        bail!("unexpected result {got}");
                    }
                    Ok(t0.elapsed().as_secs_f64() * 1000.0)
                });
                Ok::<_, anyhow::Error>((id, res))
            }
        }))
        .await;
        let wall = start.elapsed().as_secs_f64();
        let mut ids = Vec::new();
        let mut first_err = None;
        for a in answers {
            match a {
                Ok((id, res)) => {
                    ids.push(id);
                    match res {
                        Ok(t) => each.push(t),
                        Err(e) => first_err = first_err.or(Some(e)),
                    }
                }
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        join_all(ids.iter().map(|id| api.delete_session(id))).await;
        if let Some(e) = first_err {
            return Err(e.context("a sandbox of spawn100 failed"));
        }
        walls.push(wall);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let w = Summary::of(&walls);
    let e = Summary::of(&each);
    let mut r = row("spawn100", None);
    r.fields.insert("sandboxes".into(), json!(n));
    r.fields.insert("runs".into(), json!(runs));
    r.fields.insert("wall_s".into(), num(w.p50));
    r.fields.insert(
        "wall_s_each_run".into(),
        Value::Array(walls.iter().map(|x| num(*x)).collect()),
    );
    e.put(&mut r.fields, "each_");
    r.budget = Some(format!("≤ {SPAWN100_BUDGET_S} s wall"));
    r.budget_metric = Some("wall_s".into());
    r.pass = Some(w.p50 <= SPAWN100_BUDGET_S);
    r.result = format!(
        "{n} sandboxes, median of {runs}; each p50 {} p95 {}",
        ms(e.p50),
        ms(e.p95)
    );
    r.measured = format!("{:.2} s", w.p50);
    Ok(r)
}

/// `MemAvailable` of the host, in KiB.
fn mem_available_kib() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    text.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no MemAvailable in /proc/meminfo")
}

/// `density1000` (and `density2000`, the same with 2,000): `sessions` live sessions each
/// holding a small DataFrame.
pub async fn density(ctx: &Ctx, workload: &'static str, sessions: usize) -> Result<Row> {
    let api = &ctx.api;
    let n: usize = if ctx.quick { 100 } else { sessions };
    let probes = if ctx.quick { 100 } else { 1000 };
    // Creates in flight at once: enough to keep every zygote busy, few enough that the
    // session table is the only thing that grows.
    let parallel = 8;
    settle_pool(api, Duration::from_millis(500), Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = mem_available_kib()?;
    let mut ids: Vec<String> = Vec::with_capacity(n);
    let start = Instant::now();
    let made = async {
        while ids.len() < n {
            let k = parallel.min(n - ids.len());
            let batch = join_all((0..k).map(|_| {
                let api = api.clone();
                async move {
                    let id = api.create_session().await?.value;
                    let t = api.execute(&id, FRAME_CELL).await;
                    Ok::<_, anyhow::Error>((id, t))
                }
            }))
            .await;
            for b in batch {
                let (id, t) = b?;
                ids.push(id);
                check_ok(&t?.value).context("the DataFrame cell")?;
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let create_s = start.elapsed().as_secs_f64();
    let mut r = row(workload, None);
    let measured = async {
        made?;
        // Let lazily freed memory settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = mem_available_kib()?;
        let mut lat = Vec::with_capacity(probes);
        let mut rng = rand::thread_rng();
        for _ in 0..probes {
            let id = &ids[rng.gen_range(0..ids.len())];
            let t = api.execute_ok(id, PROBE_CELL).await?;
            lat.push(t.ms);
        }
        Ok::<_, anyhow::Error>((after, lat))
    }
    .await;
    let status = api.status().await.ok();
    let del_start = Instant::now();
    for chunk in ids.chunks(16) {
        join_all(chunk.iter().map(|id| api.delete_session(id))).await;
    }
    let delete_s = del_start.elapsed().as_secs_f64();
    let (after, lat) = measured?;
    let fall_kib = before.saturating_sub(after);
    let per = fall_kib as f64 / 1024.0 / n as f64;
    let s = Summary::of(&lat);
    r.fields.insert("sessions".into(), json!(n));
    r.fields
        .insert("mem_available_fall_mib_per_session".into(), num(per));
    r.fields.insert(
        "mem_available_fall_mib".into(),
        num(fall_kib as f64 / 1024.0),
    );
    r.fields.insert("create_s".into(), num(create_s));
    r.fields.insert("delete_s".into(), num(delete_s));
    s.put(&mut r.fields, "cell_");
    if let Some(st) = status {
        r.fields
            .insert("server_sessions".into(), st["sessions"].clone());
    }
    r.budget = Some(format!(
        "≤ {DENSITY1000_MIB} MiB/session (MemAvailable), cell p95 ≤ {DENSITY1000_P95_MS} ms"
    ));
    r.budget_metric = Some("mem_available_fall_mib_per_session,cell_p95_ms".into());
    r.pass = Some(per <= DENSITY1000_MIB && s.p95 <= DENSITY1000_P95_MS);
    r.result = format!(
        "{n} sessions made in {create_s:.1} s; cell p50 {} p95 {} on random ones",
        ms(s.p50),
        ms(s.p95)
    );
    r.measured = format!("{per:.2} MiB/session, cell p95 {}", ms(s.p95));
    Ok(r)
}
