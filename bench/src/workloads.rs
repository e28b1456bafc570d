//! The workloads. Each returns one [`Row`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::client::{check_ok, short, Api};
use crate::jupyter::KernelConn;
use crate::procmem;
use crate::stats::{median, num, Summary};

/// What a workload gets to work with.
#[derive(Clone)]
pub struct Ctx {
    pub api: Api,
    /// Sandbox uids are in `uid_lo..uid_hi`.
    pub uid_lo: u32,
    pub uid_hi: u32,
    pub server_pid: Option<i32>,
    /// Whether we started the server (and so chose its settings).
    pub own: bool,
    pub quick: bool,
    /// Cells per session in `stateful` (without --quick).
    pub stateful_cells: u32,
}

/// One result line.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: &'static str,
    pub variant: Option<&'static str>,
    pub fields: Map<String, Value>,
    pub budget: Option<String>,
    /// The field(s) the budget is checked against.
    pub budget_metric: Option<String>,
    pub pass: Option<bool>,
    /// Short summary for the table.
    pub result: String,
    /// The budgeted value(s), for the table.
    pub measured: String,
}

impl Row {
    /// An empty row of `workload` (and `variant`).
    pub fn new(workload: &'static str, variant: Option<&'static str>) -> Row {
        Row {
            workload,
            variant,
            fields: Map::new(),
            budget: None,
            budget_metric: None,
            pass: None,
            result: String::new(),
            measured: String::new(),
        }
    }

    /// A workload that could not run.
    pub fn failed(
        workload: &'static str,
        variant: Option<&'static str>,
        budget: Option<&str>,
        err: &anyhow::Error,
    ) -> Row {
        let mut r = Row::new(workload, variant);
        r.fields.insert("error".into(), json!(format!("{err:#}")));
        r.budget = budget.map(str::to_string);
        r.pass = budget.map(|_| false);
        r.result = "ERROR (see JSON line)".into();
        r.measured = "—".into();
        r
    }

    /// A workload that does not apply in this mode.
    pub fn skipped(workload: &'static str, variant: Option<&'static str>, why: &str) -> Row {
        let mut r = Row::new(workload, variant);
        r.fields.insert("skipped".into(), json!(why));
        r.result = format!("skipped: {why}");
        r.measured = "—".into();
        r
    }

    pub fn name(&self) -> String {
        match self.variant {
            Some(v) => format!("{} ({v})", self.workload),
            None => self.workload.to_string(),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("workload".into(), json!(self.workload));
        if let Some(v) = self.variant {
            m.insert("variant".into(), json!(v));
        }
        for (k, v) in &self.fields {
            m.insert(k.clone(), v.clone());
        }
        m.insert("budget".into(), json!(self.budget));
        m.insert("budget_metric".into(), json!(self.budget_metric));
        m.insert("pass".into(), json!(self.pass));
        Value::Object(m)
    }
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

/// Server-reported `duration_ms` of an Execution.
fn duration_ms(exec: &Value) -> Option<f64> {
    exec["duration_ms"].as_f64()
}

async fn delete_all(api: &Api, ids: &[String]) {
    for id in ids {
        if let Err(e) = api.delete_session(id).await {
            eprintln!("[bench] deleting session {id}: {e:#}");
        }
    }
}

// ---------------------------------------------------------------- roundtrip

pub const ROUNDTRIP_BUDGET_MS: f64 = 0.25;

pub async fn roundtrip(ctx: &Ctx) -> Result<Row> {
    let (warm, n) = if ctx.quick { (10, 100) } else { (50, 1000) };
    let api = &ctx.api;
    let id = api.create_session().await?.value;
    let res = async {
        for _ in 0..warm {
            api.execute_ok(&id, "x = 1").await?;
        }
        let mut wall = Vec::with_capacity(n);
        let mut server = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t = api.execute_ok(&id, "x = 1").await?;
            wall.push(t.ms);
            if let Some(d) = duration_ms(&t.value) {
                server.push(d);
            }
        }
        Ok::<_, anyhow::Error>((wall, server, start.elapsed()))
    }
    .await;
    delete_all(api, std::slice::from_ref(&id)).await;
    let (wall, server, elapsed) = res?;
    let s = Summary::of(&wall);
    let d = Summary::of(&server);
    let mut r = Row::new("roundtrip", None);
    r.fields.insert("cells".into(), json!(n));
    r.fields.insert("warmup".into(), json!(warm));
    s.put(&mut r.fields, "");
    r.fields.insert("server_duration_p50_ms".into(), num(d.p50));
    r.fields
        .insert("cells_per_s".into(), num(n as f64 / elapsed.as_secs_f64()));
    r.budget = Some(format!("p50 ≤ {ROUNDTRIP_BUDGET_MS} ms"));
    r.budget_metric = Some("p50_ms".into());
    r.pass = Some(s.p50 <= ROUNDTRIP_BUDGET_MS);
    r.result = format!(
        "p50 {} p95 {} p99 {} (kernel {}) n={n}",
        ms(s.p50),
        ms(s.p95),
        ms(s.p99),
        ms(d.p50)
    );
    r.measured = format!("p50 {}", ms(s.p50));
    Ok(r)
}

// ---------------------------------------------------------------- stateful

pub const STATEFUL_MIN_CELLS_PER_S: f64 = 3000.0;
pub const STATEFUL_P95_MS: f64 = 15.0;
const STATEFUL_CELL: &str = "c = globals().get('c', 0) + 1; print(c)";

struct Churn {
    cycles: u64,
    /// How long the churn ran.
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
    create_ms: Vec<f64>,
    delete_ms: Vec<f64>,
}

/// How often the churn task creates (and then deletes) a session: a steady load
/// that keeps the warm pool refilling, the same in every run.
const CHURN_INTERVAL: Duration = Duration::from_millis(100);

async fn churn_loop(api: Api, stop: Arc<AtomicBool>) -> Churn {
    let started = Instant::now();
    let mut c = Churn {
        cycles: 0,
        elapsed: Duration::ZERO,
        errors: 0,
        first_error: None,
        create_ms: Vec::new(),
        delete_ms: Vec::new(),
    };
    let mut tick = tokio::time::interval(CHURN_INTERVAL);
    // A cycle slower than the interval delays the next one rather than bunching them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let res = async {
            let t = api.create_session().await?;
            c.create_ms.push(t.ms);
            let d = api.delete_session(&t.value).await?;
            c.delete_ms.push(d.ms);
            Ok::<_, anyhow::Error>(())
        }
        .await;
        match res {
            Ok(()) => c.cycles += 1,
            Err(e) => {
                c.errors += 1;
                c.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    c.elapsed = started.elapsed();
    c
}

pub async fn stateful(ctx: &Ctx, churn: bool) -> Result<Row> {
    let (sessions, cells) = if ctx.quick {
        (10, 20)
    } else {
        (25, ctx.stateful_cells as usize)
    };
    let api = &ctx.api;
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        match api.create_session().await {
            Ok(t) => ids.push(t.value),
            Err(e) => {
                delete_all(api, &ids).await;
                return Err(e);
            }
        }
    }
    let res = stateful_run(ctx, &ids, cells, churn).await;
    delete_all(api, &ids).await;
    let StatefulOut {
        lat,
        dur,
        session_means,
        correct,
        wall,
        first_error: errors,
        churned,
        cpu,
    } = res?;
    let ds = Summary::of(&dur);
    let total = sessions * cells;
    let s = Summary::of(&lat);
    let rate = total as f64 / wall.as_secs_f64();
    let variant = if churn { "churn" } else { "steady" };
    let mut r = Row::new("stateful", Some(variant));
    r.fields.insert("sessions".into(), json!(sessions));
    r.fields.insert("cells_per_session".into(), json!(cells));
    r.fields.insert("cells_per_s".into(), num(rate));
    s.put(&mut r.fields, "");
    r.fields
        .insert("server_duration_p50_ms".into(), num(ds.p50));
    r.fields
        .insert("server_duration_p95_ms".into(), num(ds.p95));
    r.fields.insert("correct".into(), json!(correct));
    r.fields.insert("total".into(), json!(total));
    r.fields.insert("wall_s".into(), num(wall.as_secs_f64()));
    let fastest = session_means.iter().copied().fold(f64::INFINITY, f64::min);
    let slowest = session_means.iter().copied().fold(0.0, f64::max);
    r.fields.insert("session_mean_min_ms".into(), num(fastest));
    r.fields.insert("session_mean_max_ms".into(), num(slowest));
    // Where the CPU went, per cell: the server process, this client, and the whole host
    // (kernels, the network stack, churn, anything else running).
    let per_cell = |s: f64| num(s * 1e6 / total as f64);
    if let Some(s) = cpu.server_s {
        r.fields
            .insert("server_cpu_us_per_cell".into(), per_cell(s));
    }
    r.fields
        .insert("bench_cpu_us_per_cell".into(), per_cell(cpu.bench_s));
    if let Some(s) = cpu.host_s {
        r.fields.insert("host_cpu_us_per_cell".into(), per_cell(s));
    }
    if let Some(e) = &errors {
        r.fields.insert("first_error".into(), json!(e));
    }
    let mut churn_note = String::new();
    if let Some(c) = churned {
        let cs = Summary::of(&c.create_ms);
        r.fields.insert("churn_cycles".into(), json!(c.cycles));
        r.fields.insert(
            "churn_cycles_per_s".into(),
            num(c.cycles as f64 / c.elapsed.as_secs_f64()),
        );
        r.fields.insert("churn_errors".into(), json!(c.errors));
        r.fields.insert("churn_create_p50_ms".into(), num(cs.p50));
        r.fields.insert("churn_create_p95_ms".into(), num(cs.p95));
        let ds = Summary::of(&c.delete_ms);
        r.fields.insert("churn_delete_p50_ms".into(), num(ds.p50));
        r.fields.insert("churn_delete_p95_ms".into(), num(ds.p95));
        if let Some(e) = c.first_error {
            r.fields.insert("churn_first_error".into(), json!(e));
        }
        churn_note = format!(
            "; churn {} create+delete (p50 {} + {}, {} errors)",
            c.cycles,
            ms(cs.p50),
            ms(ds.p50),
            c.errors
        );
    }
    r.budget = Some(format!(
        "≥ {STATEFUL_MIN_CELLS_PER_S} cells/s, p95 ≤ {STATEFUL_P95_MS} ms, 100% correct"
    ));
    r.budget_metric = Some("cells_per_s, p95_ms, correct/total".into());
    r.pass = Some(rate >= STATEFUL_MIN_CELLS_PER_S && s.p95 <= STATEFUL_P95_MS && correct == total);
    r.result = format!(
        "{sessions}×{cells}: p50 {} p99 {} (kernel p50 {}){churn_note}",
        ms(s.p50),
        ms(s.p99),
        ms(ds.p50)
    );
    r.measured = format!("{rate:.0} cells/s, p95 {}, {correct}/{total}", ms(s.p95));
    Ok(r)
}

struct StatefulOut {
    lat: Vec<f64>,
    /// Server-reported `duration_ms` of each cell.
    dur: Vec<f64>,
    /// Each session's mean latency: how evenly the sessions were served.
    session_means: Vec<f64>,
    correct: usize,
    wall: Duration,
    first_error: Option<String>,
    churned: Option<Churn>,
    /// CPU used while the cells ran.
    cpu: CpuUse,
}

async fn stateful_run(ctx: &Ctx, ids: &[String], cells: usize, churn: bool) -> Result<StatefulOut> {
    let api = &ctx.api;
    // One warm-up cell per session that leaves `c` alone.
    for id in ids {
        api.execute_ok(id, "pass").await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn_task = churn.then(|| tokio::spawn(churn_loop(api.clone(), stop.clone())));
    if churn {
        // Let the churn get going (and the pool start refilling) first.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu_before = CpuUse::now(ctx.server_pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for id in ids {
        let api = api.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(cells);
            let mut dur = Vec::with_capacity(cells);
            let mut sent = Vec::with_capacity(cells);
            let mut correct = 0usize;
            let mut first_error = None;
            for i in 1..=cells {
                sent.push(start.elapsed().as_secs_f64() * 1000.0);
                match api.execute(&id, STATEFUL_CELL).await {
                    Ok(t) => {
                        lat.push(t.ms);
                        dur.extend(duration_ms(&t.value));
                        let out = t.value["stdout"].as_str().unwrap_or("");
                        if t.value["status"] == "ok" && out.trim_end_matches('\n') == i.to_string()
                        {
                            correct += 1;
                        } else if first_error.is_none() {
                            first_error = Some(format!(
                                "session {id} cell {i}: expected stdout {i:?}, got {}",
                                short(&t.value)
                            ));
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (lat, dur, sent, correct, first_error)
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.context("a session task panicked")?);
    }
    let wall = start.elapsed();
    let cpu = CpuUse::now(ctx.server_pid).since(&cpu_before);
    stop.store(true, Ordering::Relaxed);
    // With PYXIS_BENCH_SAMPLES, every cell (session, index, sent at ms, latency ms,
    // server duration ms), to study how latency is spread over time.
    if let Ok(path) = std::env::var("PYXIS_BENCH_SAMPLES") {
        let mut samples = String::new();
        for (n, (l, d, at, _, _)) in results.iter().enumerate() {
            for (i, (ms, at)) in l.iter().zip(at).enumerate() {
                let server = d.get(i).copied().unwrap_or(f64::NAN);
                samples.push_str(&format!("{n} {i} {at:.3} {ms:.3} {server:.3}\n"));
            }
        }
        std::fs::write(&path, samples).with_context(|| format!("writing {path}"))?;
    }
    let mut lat = Vec::with_capacity(ids.len() * cells);
    let mut dur = Vec::with_capacity(ids.len() * cells);
    let mut correct = 0;
    let mut first_error = None;
    let mut session_means = Vec::with_capacity(ids.len());
    for (l, d, _, c, e) in results {
        if !l.is_empty() {
            session_means.push(l.iter().sum::<f64>() / l.len() as f64);
        }
        lat.extend(l);
        dur.extend(d);
        correct += c;
        if first_error.is_none() {
            first_error = e;
        }
    }
    let churned = match churn_task {
        Some(t) => Some(t.await.context("the churn task panicked")?),
        None => None,
    };
    Ok(StatefulOut {
        lat,
        dur,
        session_means,
        correct,
        wall,
        first_error,
        churned,
        cpu,
    })
}

/// CPU seconds used so far by the server, this benchmark and the whole host.
struct CpuUse {
    server_s: Option<f64>,
    bench_s: f64,
    host_s: Option<f64>,
}

impl CpuUse {
    fn now(server_pid: Option<i32>) -> CpuUse {
        CpuUse {
            server_s: server_pid.and_then(procmem::process_cpu_s),
            bench_s: procmem::own_cpu_s(),
            host_s: procmem::host_busy_cpu_s(),
        }
    }

    fn since(&self, before: &CpuUse) -> CpuUse {
        let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        CpuUse {
            server_s: diff(self.server_s, before.server_s),
            bench_s: self.bench_s - before.bench_s,
            host_s: diff(self.host_s, before.host_s),
        }
    }
}

// ---------------------------------------------------------------- stateful (jupyter)

/// The Jupyter door's stateful rate, as a share of v1's on the same kernels.
pub const JUPYTER_MIN_RATIO: f64 = 0.70;
/// The Jupyter pass's cell: its own variable, so that it does not see the v1 pass's `c`.
const JUPYTER_CELL: &str = "j = globals().get('j', 0) + 1; print(j)";

/// `stateful (jupyter)`: kernels started through `POST /api/kernels`; the stateful cells
/// run once through v1 (`/v1/sessions/{id}/execute`, the kernel is a session) and then
/// once through each kernel's WebSocket, and the row compares the two rates.
pub async fn stateful_jupyter(ctx: &Ctx) -> Result<Row> {
    let (kernels, cells) = if ctx.quick {
        (10, 20)
    } else {
        (25, ctx.stateful_cells as usize)
    };
    let api = &ctx.api;
    let mut ids = Vec::with_capacity(kernels);
    let mut start_ms = Vec::with_capacity(kernels);
    for _ in 0..kernels {
        match api.start_kernel().await {
            Ok(t) => {
                ids.push(t.value);
                start_ms.push(t.ms);
            }
            Err(e) => {
                delete_kernels(api, &ids).await;
                return Err(e);
            }
        }
    }
    let res = async {
        let v1 = stateful_run(ctx, &ids, cells, false).await?;
        let jupyter = jupyter_run(ctx, &ids, cells).await?;
        Ok::<_, anyhow::Error>((v1, jupyter))
    }
    .await;
    delete_kernels(api, &ids).await;
    let (v1, jup) = res?;
    let total = kernels * cells;
    let v1_rate = total as f64 / v1.wall.as_secs_f64();
    let rate = total as f64 / jup.wall.as_secs_f64();
    let ratio = rate / v1_rate;
    let s = Summary::of(&jup.lat);
    let vs = Summary::of(&v1.lat);
    let mut r = Row::new("stateful", Some("jupyter"));
    r.fields.insert("sessions".into(), json!(kernels));
    r.fields.insert("cells_per_session".into(), json!(cells));
    r.fields.insert("cells_per_s".into(), num(rate));
    s.put(&mut r.fields, "");
    r.fields.insert("correct".into(), json!(jup.correct));
    r.fields.insert("total".into(), json!(total));
    r.fields
        .insert("wall_s".into(), num(jup.wall.as_secs_f64()));
    r.fields.insert(
        "frames_per_cell".into(),
        num(jup.frames as f64 / total as f64),
    );
    r.fields.insert("v1_cells_per_s".into(), num(v1_rate));
    r.fields.insert("v1_p50_ms".into(), num(vs.p50));
    r.fields.insert("v1_p95_ms".into(), num(vs.p95));
    r.fields.insert("v1_p99_ms".into(), num(vs.p99));
    r.fields.insert("v1_correct".into(), json!(v1.correct));
    r.fields.insert("ratio".into(), num(ratio));
    r.fields
        .insert("kernel_start_p50_ms".into(), num(median(&start_ms)));
    let per_cell = |s: f64| num(s * 1e6 / total as f64);
    for (prefix, cpu) in [("", &jup.cpu), ("v1_", &v1.cpu)] {
        if let Some(s) = cpu.server_s {
            r.fields
                .insert(format!("{prefix}server_cpu_us_per_cell"), per_cell(s));
        }
        r.fields.insert(
            format!("{prefix}bench_cpu_us_per_cell"),
            per_cell(cpu.bench_s),
        );
        if let Some(s) = cpu.host_s {
            r.fields
                .insert(format!("{prefix}host_cpu_us_per_cell"), per_cell(s));
        }
    }
    if let Some(e) = jup.first_error.as_ref().or(v1.first_error.as_ref()) {
        r.fields.insert("first_error".into(), json!(e));
    }
    r.budget = Some(format!(
        "≥ {:.0}% of v1's cells/s, 100% correct",
        JUPYTER_MIN_RATIO * 100.0
    ));
    r.budget_metric = Some("ratio (cells_per_s / v1_cells_per_s), correct/total".into());
    r.pass = Some(ratio >= JUPYTER_MIN_RATIO && jup.correct == total && v1.correct == total);
    r.result = format!(
        "{kernels}×{cells} over WebSocket: p50 {} p95 {}; v1 on the same kernels {v1_rate:.0} \
         cells/s, p50 {} p95 {}, {}/{total} correct",
        ms(s.p50),
        ms(s.p95),
        ms(vs.p50),
        ms(vs.p95),
        v1.correct
    );
    r.measured = format!(
        "{rate:.0} cells/s = {:.0}% of v1, {}/{total}",
        ratio * 100.0,
        jup.correct
    );
    Ok(r)
}

async fn delete_kernels(api: &Api, ids: &[String]) {
    for id in ids {
        if let Err(e) = api.delete_kernel(id).await {
            eprintln!("[bench] deleting kernel {id}: {e:#}");
        }
    }
}

struct JupyterOut {
    lat: Vec<f64>,
    correct: usize,
    frames: usize,
    wall: Duration,
    first_error: Option<String>,
    cpu: CpuUse,
}

async fn jupyter_run(ctx: &Ctx, ids: &[String], cells: usize) -> Result<JupyterOut> {
    // Connect, handshake and run one warm-up cell on every kernel before the clock starts.
    let mut conns = Vec::with_capacity(ids.len());
    for id in ids {
        let mut k = KernelConn::connect(&ctx.api, id).await?;
        k.kernel_info()
            .await
            .with_context(|| format!("kernel_info on {id}"))?;
        let w = k.execute("pass").await?;
        if w.reply["status"] != "ok" {
            bail!("warm-up cell on kernel {id}: {}", short(&w.reply));
        }
        conns.push((id.clone(), k));
    }
    let cpu_before = CpuUse::now(ctx.server_pid);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns.len());
    for (id, mut k) in conns {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(cells);
            let (mut correct, mut frames) = (0usize, 0usize);
            let mut first_error = None;
            for i in 1..=cells {
                match k.execute(JUPYTER_CELL).await {
                    Ok(e) => {
                        lat.push(e.ms);
                        frames += e.frames;
                        if e.reply["status"] == "ok"
                            && e.stdout.trim_end_matches('\n') == i.to_string()
                        {
                            correct += 1;
                        } else if first_error.is_none() {
                            first_error = Some(format!(
                                "kernel {id} cell {i}: expected stdout {i:?}, got {:?}, \
                                 execute_reply {}",
                                e.stdout,
                                short(&e.reply)
                            ));
                        }
                    }
                    Err(e) => {
                        // The connection is no use after a failed read: stop this kernel.
                        first_error.get_or_insert_with(|| format!("kernel {id} cell {i}: {e:#}"));
                        break;
                    }
                }
            }
            (lat, correct, frames, first_error, k)
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.context("a kernel task panicked")?);
    }
    let wall = start.elapsed();
    let cpu = CpuUse::now(ctx.server_pid).since(&cpu_before);
    let mut out = JupyterOut {
        lat: Vec::with_capacity(ids.len() * cells),
        correct: 0,
        frames: 0,
        wall,
        first_error: None,
        cpu,
    };
    for (lat, correct, frames, err, k) in results {
        out.lat.extend(lat);
        out.correct += correct;
        out.frames += frames;
        if out.first_error.is_none() {
            out.first_error = err;
        }
        k.close().await;
    }
    Ok(out)
}

// ---------------------------------------------------------------- stream

/// The first event of a streamed cell may come at most this much after a trivial cell's
/// whole round trip (p50 against p50).
pub const STREAM_SLACK_MS: f64 = 2.0;
const STREAM_CELL: &str = "print(1)";
const TRIVIAL_CELL: &str = "x = 1";

pub async fn stream(ctx: &Ctx) -> Result<Row> {
    let (warm, n) = if ctx.quick { (10, 50) } else { (50, 500) };
    let api = &ctx.api;
    let id = api.create_session().await?.value;
    let res = stream_run(api, &id, warm, n).await;
    delete_all(api, std::slice::from_ref(&id)).await;
    let out = res?;
    let rt = Summary::of(&out.roundtrip);
    let first = Summary::of(&out.first_event);
    let first_stream = Summary::of(&out.first_stream);
    let reply = Summary::of(&out.reply);
    let headers = Summary::of(&out.headers);
    let limit = rt.p50 + STREAM_SLACK_MS;
    let mut r = Row::new("stream", None);
    r.fields.insert("rounds".into(), json!(n));
    r.fields.insert("warmup".into(), json!(warm));
    rt.put(&mut r.fields, "roundtrip_");
    headers.put(&mut r.fields, "headers_");
    first.put(&mut r.fields, "first_event_");
    first_stream.put(&mut r.fields, "first_stream_");
    reply.put(&mut r.fields, "reply_");
    // Each event's lead over the round trip of the cell sent just before it.
    r.fields.insert(
        "first_event_minus_roundtrip_p50_ms".into(),
        num(first.p50 - rt.p50),
    );
    r.fields.insert(
        "first_stream_minus_roundtrip_p50_ms".into(),
        num(first_stream.p50 - rt.p50),
    );
    r.fields
        .insert("first_event_types".into(), json!(out.first_types));
    r.fields
        .insert("events_per_cell".into(), num(out.events as f64 / n as f64));
    r.fields.insert("correct".into(), json!(out.correct));
    r.fields.insert("total".into(), json!(n));
    if let Some(e) = &out.first_error {
        r.fields.insert("first_error".into(), json!(e));
    }
    r.budget = Some(format!(
        "first event and first `stream` p50 ≤ round trip p50 + {STREAM_SLACK_MS} ms"
    ));
    r.budget_metric = Some("first_event_p50_ms, first_stream_p50_ms, roundtrip_p50_ms".into());
    r.pass = Some(first.p50 <= limit && first_stream.p50 <= limit && out.correct == n);
    r.result = format!(
        "`{STREAM_CELL}` over SSE: first event p95 {}, stream p95 {}, reply p50 {}; \
         `{TRIVIAL_CELL}` JSON p50 {}; {}/{n} correct",
        ms(first.p95),
        ms(first_stream.p95),
        ms(reply.p50),
        ms(rt.p50),
        out.correct
    );
    r.measured = format!(
        "first {} / stream {} vs ≤ {}",
        ms(first.p50),
        ms(first_stream.p50),
        ms(limit)
    );
    Ok(r)
}

struct StreamOut {
    roundtrip: Vec<f64>,
    headers: Vec<f64>,
    first_event: Vec<f64>,
    first_stream: Vec<f64>,
    reply: Vec<f64>,
    /// How often each event type came first.
    first_types: std::collections::BTreeMap<String, usize>,
    events: usize,
    correct: usize,
    first_error: Option<String>,
}

/// `n` rounds on one session, each a trivial cell as JSON then a printing cell as SSE, so
/// that both see the same conditions.
async fn stream_run(api: &Api, id: &str, warm: usize, n: usize) -> Result<StreamOut> {
    for _ in 0..warm {
        api.execute_ok(id, TRIVIAL_CELL).await?;
        let c = api.execute_sse(id, STREAM_CELL).await?;
        check_ok(&c.reply).context("a warm-up SSE cell")?;
    }
    let mut o = StreamOut {
        roundtrip: Vec::with_capacity(n),
        headers: Vec::with_capacity(n),
        first_event: Vec::with_capacity(n),
        first_stream: Vec::with_capacity(n),
        reply: Vec::with_capacity(n),
        first_types: Default::default(),
        events: 0,
        correct: 0,
        first_error: None,
    };
    for i in 0..n {
        o.roundtrip.push(api.execute_ok(id, TRIVIAL_CELL).await?.ms);
        let c = api.execute_sse(id, STREAM_CELL).await?;
        o.headers.push(c.headers_ms);
        o.first_event.push(c.first_event_ms);
        *o.first_types.entry(c.first_event.clone()).or_default() += 1;
        o.events += c.events;
        if !c.first_stream_ms.is_nan() {
            o.first_stream.push(c.first_stream_ms);
        }
        o.reply.push(c.reply_ms);
        if c.reply["status"] == "ok" && c.stdout == "1\n" {
            o.correct += 1;
        } else if o.first_error.is_none() {
            o.first_error = Some(format!(
                "round {i}: stdout {:?}, execute_reply {}",
                c.stdout,
                short(&c.reply)
            ));
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------- create

pub const CREATE_COLD_BUDGET_MS: f64 = 8.0;
pub const CREATE_WARM_BUDGET_MS: f64 = 2.0;
const IMPORT_CELL: &str = "import pandas, numpy, matplotlib";

pub async fn create(ctx: &Ctx, warm: bool) -> Result<Row> {
    let api = &ctx.api;
    let (n, warmup) = if ctx.quick { (5, 1) } else { (20, 2) };
    let variant = if warm { "warm" } else { "cold" };
    let status = api.status().await?;
    let pool_min = status["pool_min_idle"].as_u64();
    if !warm && pool_min != Some(0) {
        if ctx.own {
            bail!("expected a server with PYXIS_POOL_MIN_IDLE=0, status says {status}");
        }
        return Ok(Row::skipped(
            "create",
            Some(variant),
            "the server's warm pool is enabled; run without --url (or against a server with PYXIS_POOL_MIN_IDLE=0)",
        ));
    }
    if warm && pool_min == Some(0) {
        return Ok(Row::skipped(
            "create",
            Some(variant),
            "the server's warm pool is disabled",
        ));
    }
    let mut create_ms = Vec::new();
    let mut ready_ms = Vec::new();
    let mut first_cell_ms = Vec::new();
    let mut pool_wait_ms = Vec::new();
    let mut no_duration = 0;
    for i in 0..warmup + n {
        if warm {
            let w = api.wait_pool_idle(Duration::from_secs(60)).await?;
            pool_wait_ms.push(w.as_secs_f64() * 1000.0);
        }
        let start = Instant::now();
        let t = api.create_session().await?;
        let id = t.value;
        let first = api.execute(&id, IMPORT_CELL).await;
        let ready = start.elapsed().as_secs_f64() * 1000.0;
        let del = api.delete_session(&id).await;
        let first = first?;
        check_ok(&first.value).with_context(|| format!("first cell {IMPORT_CELL:?}"))?;
        del?;
        if i >= warmup {
            create_ms.push(t.ms);
            ready_ms.push(ready);
            match duration_ms(&first.value) {
                Some(d) => first_cell_ms.push(d),
                None => no_duration += 1,
            }
        }
    }
    let c = Summary::of(&create_ms);
    let rd = Summary::of(&ready_ms);
    let fc = Summary::of(&first_cell_ms);
    let budget = if warm {
        CREATE_WARM_BUDGET_MS
    } else {
        CREATE_COLD_BUDGET_MS
    };
    let mut r = Row::new("create", Some(variant));
    r.fields.insert("sessions".into(), json!(n));
    r.fields.insert("pool_min_idle".into(), json!(pool_min));
    c.put(&mut r.fields, "create_");
    rd.put(&mut r.fields, "ready_");
    r.fields
        .insert("first_cell_server_p50_ms".into(), num(fc.p50));
    if no_duration > 0 {
        r.fields
            .insert("first_cell_without_duration".into(), json!(no_duration));
    }
    if warm {
        r.fields
            .insert("pool_refill_wait_p50_ms".into(), num(median(&pool_wait_ms)));
    }
    r.budget = Some(format!("create p50 ≤ {budget} ms"));
    r.budget_metric = Some("create_p50_ms".into());
    r.pass = Some(c.p50 <= budget);
    r.result = format!(
        "create p95 {}; ready (create + `{IMPORT_CELL}`) p50 {} p95 {}",
        ms(c.p95),
        ms(rd.p50),
        ms(rd.p95)
    );
    r.measured = format!("create p50 {}", ms(c.p50));
    Ok(r)
}

// ---------------------------------------------------------------- oneshot

pub const ONESHOT_BUDGET_MS: f64 = 12.0;

pub async fn oneshot(ctx: &Ctx) -> Result<Row> {
    let n = if ctx.quick { 10 } else { 50 };
    let api = &ctx.api;
    // One untimed warm-up.
    check_ok(&api.oneshot("print(1)").await?.value)?;
    let mut wall = Vec::with_capacity(n);
    let mut correct = 0;
    let mut first_error = None;
    for _ in 0..n {
        let t = api.oneshot("print(1)").await?;
        wall.push(t.ms);
        if t.value["status"] == "ok" && t.value["stdout"] == "1\n" {
            correct += 1;
        } else {
            first_error.get_or_insert_with(|| short(&t.value));
        }
    }
    let s = Summary::of(&wall);
    let mut r = Row::new("oneshot", None);
    s.put(&mut r.fields, "");
    r.fields.insert("correct".into(), json!(correct));
    r.fields.insert("total".into(), json!(n));
    if let Some(e) = first_error {
        r.fields.insert("first_error".into(), json!(e));
    }
    r.budget = Some(format!("p50 ≤ {ONESHOT_BUDGET_MS} ms"));
    r.budget_metric = Some("p50_ms".into());
    r.pass = Some(s.p50 <= ONESHOT_BUDGET_MS && correct == n);
    r.result = format!("p95 {} max {}, {correct}/{n} correct", ms(s.p95), ms(s.max));
    r.measured = format!("p50 {}", ms(s.p50));
    Ok(r)
}

// ---------------------------------------------------------------- density

pub const DENSITY_BUDGET_MIB: f64 = 5.0;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn density(ctx: &Ctx) -> Result<Row> {
    let n = if ctx.quick { 10 } else { 100 };
    let api = &ctx.api;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("density needs root to read other users' /proc/PID/smaps_rollup");
    }
    let before = procmem::by_uid_range(ctx.uid_lo, ctx.uid_hi);
    let helpers_before = ctx
        .server_pid
        .map(|p| procmem::helpers_of(p, ctx.uid_lo, ctx.uid_hi));
    let mut ids = Vec::with_capacity(n);
    let res = async {
        for _ in 0..n {
            let id = api.create_session().await?.value;
            ids.push(id.clone());
            api.execute_ok(&id, "x = 1").await?;
        }
        // Let lazily freed memory and the pool settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let after = procmem::by_uid_range(ctx.uid_lo, ctx.uid_hi);
    let server_rss = ctx.server_pid.and_then(procmem::vm_rss_kib);
    let helpers = ctx
        .server_pid
        .map(|p| procmem::helpers_of(p, ctx.uid_lo, ctx.uid_hi));
    let status = api.status().await.ok();
    delete_all(api, &ids).await;
    res?;
    if after.processes == 0 {
        bail!(
            "no process with a uid in {}..{} (wrong --uid-base?)",
            ctx.uid_lo,
            ctx.uid_hi
        );
    }
    let uss = mib(after.uss_kib.saturating_sub(before.uss_kib)) / n as f64;
    let pss = mib(after.pss_kib.saturating_sub(before.pss_kib)) / n as f64;
    let rss = mib(after.rss_kib.saturating_sub(before.rss_kib)) / n as f64;
    // The server-side processes (uid outside the sandbox range) that come and
    // go with sessions (none since the init is a sandbox-uid process of its own).
    let helper_delta = match (&helpers_before, &helpers) {
        (Some(b), Some(a)) => Some((
            a.processes as i64 - b.processes as i64,
            mib(a.uss_kib.saturating_sub(b.uss_kib)) / n as f64,
            mib(a.pss_kib.saturating_sub(b.pss_kib)) / n as f64,
        )),
        _ => None,
    };
    let mut r = Row::new("density", None);
    r.fields.insert("sessions".into(), json!(n));
    r.fields.insert("uss_mib_per_session".into(), num(uss));
    r.fields.insert("pss_mib_per_session".into(), num(pss));
    r.fields.insert("rss_mib_per_session".into(), num(rss));
    r.fields
        .insert("sandbox_processes".into(), json!(after.processes));
    r.fields
        .insert("sandbox_uids".into(), json!(after.uids.len()));
    r.fields
        .insert("unreadable_processes".into(), json!(after.unreadable));
    r.fields
        .insert("baseline_processes".into(), json!(before.processes));
    r.fields
        .insert("zombies_at_sample".into(), json!(after.zombies));
    r.fields
        .insert("zombies_at_baseline".into(), json!(before.zombies));
    if let Some((procs, uss_h, pss_h)) = helper_delta {
        r.fields
            .insert("helper_processes_added".into(), json!(procs));
        r.fields
            .insert("uss_mib_per_session_incl_helpers".into(), num(uss + uss_h));
        r.fields
            .insert("pss_mib_per_session_incl_helpers".into(), num(pss + pss_h));
    }
    r.fields
        .insert("baseline_uss_mib".into(), num(mib(before.uss_kib)));
    r.fields
        .insert("total_uss_mib".into(), num(mib(after.uss_kib)));
    r.fields
        .insert("total_pss_mib".into(), num(mib(after.pss_kib)));
    r.fields.insert(
        "server_rss_mib".into(),
        server_rss.map_or(Value::Null, |k| num(mib(k))),
    );
    if let Some(h) = &helpers {
        r.fields
            .insert("helper_processes".into(), json!(h.processes));
        r.fields
            .insert("helper_rss_mib".into(), num(mib(h.rss_kib)));
        r.fields
            .insert("helper_pss_mib".into(), num(mib(h.pss_kib)));
        r.fields
            .insert("helper_uss_mib".into(), num(mib(h.uss_kib)));
    }
    if let Some(s) = status {
        r.fields
            .insert("pool_idle_at_sample".into(), s["pool_idle"].clone());
    }
    r.budget = Some(format!("USS ≤ {DENSITY_BUDGET_MIB} MiB/session"));
    r.budget_metric = Some("uss_mib_per_session".into());
    r.pass = Some(uss <= DENSITY_BUDGET_MIB);
    r.result = format!(
        "{n} idle: PSS {pss:.1} MiB/session, {} procs; server RSS {}; zygote etc. PSS {}",
        after.processes,
        server_rss.map_or("?".into(), |k| format!("{:.0} MiB", mib(k))),
        helpers.map_or("?".into(), |h| format!("{:.0} MiB", mib(h.pss_kib))),
    );
    r.measured = format!("USS {uss:.2} MiB");
    Ok(r)
}

// ---------------------------------------------------------------- analysis

/// The measured cell. `show_table` and `show_figure` are defined by the
/// prelude: IPython `display` / `plt.show()` in the session, the equivalent
/// rendering (HTML + text repr, PNG + base64) in the local process.
const ANALYSIS_BODY: &str = r#"rng = np.random.default_rng(7)
n = 100_000
df = pd.DataFrame({
    "region": rng.choice(["north", "south", "east", "west"], n),
    "product": rng.integers(0, 25, n),
    "price": rng.lognormal(3.0, 0.5, n),
    "qty": rng.poisson(3, n) + 1,
})
df["revenue"] = df["price"] * df["qty"]
stats = df.groupby("region")[["price", "qty", "revenue"]].describe()
by_product = df.groupby(["product", "region"])["revenue"].sum().unstack()
fig, ax = plt.subplots(figsize=(8, 4))
by_product.plot(ax=ax, marker="o")
ax.set_title("Revenue by product and region")
ax.set_xlabel("product")
ax.set_ylabel("revenue")
show_table(stats)
show_figure(fig)
"#;

const SESSION_PRELUDE: &str = r#"import numpy as np, pandas as pd, matplotlib.pyplot as plt
from IPython.display import display
def show_table(d):
    display(d)
def show_figure(fig):
    plt.show()
"#;

const LOCAL_SCRIPT: &str = r#"import base64, io, json, sys, time
import matplotlib
matplotlib.use("Agg")
import numpy as np, pandas as pd, matplotlib.pyplot as plt
out = {}
def show_table(d):
    out["html_bytes"] = len(d._repr_html_())
    out["text_bytes"] = len(repr(d))
def show_figure(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    out["png_b64_bytes"] = len(base64.b64encode(buf.getvalue()))
    plt.close(fig)
code = compile(BODY, "<cell>", "exec")
times = []
for i in range(RUNS + 1):
    g = {"np": np, "pd": pd, "plt": plt, "show_table": show_table, "show_figure": show_figure}
    t = time.perf_counter()
    exec(code, g)
    dt = (time.perf_counter() - t) * 1000.0
    if i:
        times.append(dt)
out["times_ms"] = times
print(json.dumps(out))
"#;

/// Count of results carrying a MIME type, and the total size of that data.
fn mime_stats(exec: &Value, mime: &str) -> (usize, usize) {
    let mut count = 0;
    let mut bytes = 0;
    for r in exec["results"].as_array().into_iter().flatten() {
        if let Some(s) = r["data"][mime].as_str() {
            count += 1;
            bytes += s.len();
        }
    }
    (count, bytes)
}

async fn local_python(python: &str, runs: usize) -> Result<Value> {
    let body = serde_json::to_string(ANALYSIS_BODY)?;
    let script = format!("BODY = {body}\nRUNS = {runs}\n{LOCAL_SCRIPT}");
    let out = tokio::process::Command::new(python)
        .arg("-c")
        .arg(&script)
        .env("MPLBACKEND", "Agg")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {python}"))?;
    if !out.status.success() {
        bail!(
            "{python} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .ok_or_else(|| anyhow!("{python} printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

pub async fn analysis(ctx: &Ctx, python: &str) -> Result<Row> {
    let runs = if ctx.quick { 3 } else { 10 };
    let api = &ctx.api;
    let id = api.create_session().await?.value;
    let res = async {
        api.execute_ok(&id, SESSION_PRELUDE).await?;
        // Warm-up.
        api.execute_ok(&id, ANALYSIS_BODY).await?;
        let mut wall = Vec::new();
        let mut server = Vec::new();
        let mut last = Value::Null;
        for _ in 0..runs {
            let t = api.execute_ok(&id, ANALYSIS_BODY).await?;
            wall.push(t.ms);
            if let Some(d) = duration_ms(&t.value) {
                server.push(d);
            }
            last = t.value;
        }
        Ok::<_, anyhow::Error>((wall, server, last))
    }
    .await;
    delete_all(api, std::slice::from_ref(&id)).await;
    let (wall, server, last) = res?;
    let local = local_python(python, runs).await?;
    let local_times: Vec<f64> = local["times_ms"]
        .as_array()
        .ok_or_else(|| anyhow!("no times from the local run: {local}"))?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let (pngs, png_bytes) = mime_stats(&last, "image/png");
    let (htmls, html_bytes) = mime_stats(&last, "text/html");
    let wall_med = median(&wall);
    let server_med = median(&server);
    let local_med = median(&local_times);
    let mut r = Row::new("analysis", None);
    r.fields.insert("runs".into(), json!(runs));
    r.fields.insert("session_median_ms".into(), num(wall_med));
    r.fields
        .insert("session_server_median_ms".into(), num(server_med));
    r.fields.insert("local_median_ms".into(), num(local_med));
    r.fields.insert("ratio".into(), num(wall_med / local_med));
    r.fields
        .insert("ratio_server".into(), num(server_med / local_med));
    r.fields.insert("session_png_results".into(), json!(pngs));
    r.fields
        .insert("session_png_b64_bytes".into(), json!(png_bytes));
    r.fields.insert("session_html_results".into(), json!(htmls));
    r.fields
        .insert("session_html_bytes".into(), json!(html_bytes));
    r.fields
        .insert("local_png_b64_bytes".into(), local["png_b64_bytes"].clone());
    r.fields
        .insert("local_html_bytes".into(), local["html_bytes"].clone());
    r.fields
        .insert("session_results_ok".into(), json!(pngs >= 1 && htmls >= 1));
    r.result = format!(
        "session {} (kernel {}) vs local {}; {pngs} PNG + {htmls} HTML",
        ms(wall_med),
        ms(server_med),
        ms(local_med)
    );
    r.measured = format!("ratio {:.2}×", wall_med / local_med);
    if pngs == 0 || htmls == 0 {
        r.fields.insert(
            "warning".into(),
            json!("the session did not return both a PNG and an HTML table"),
        );
    }
    Ok(r)
}
