//! Issue 17's rows: the full data stack's cost to a new and an idle session, and the
//! document-tools door's two slow calls (docx → pdf, OCR of one page).
//!
//! - `data (create)`: a new session with the pool empty, on a runtime with the whole data
//!   stack installed; checks that numpy, pandas and matplotlib are already imported in it,
//!   and times a first cell that imports what is not preloaded (plotly, cv2, polars,
//!   duckdb, pyarrow, networkx, skimage): what that costs a cell.
//! - `data (idle)`: private memory (USS) per idle session after one cell.
//! - `data (docx2pdf)`: `POST /api/file/convert` of a one-page docx to pdf (LibreOffice in a
//!   one-shot sandbox).
//! - `data (ocr)`: `POST /api/ocr/extract` of a rendered page of English text.
//!
//! Inputs are rendered by a session (python-docx, Pillow), never downloaded.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::client::check_ok;
use crate::procmem;
use crate::stats::{num, Summary};
use crate::workloads::{Ctx, Row};

/// DESIGN.md: "new session with numpy, pandas, matplotlib already imported (pool empty)".
pub const CREATE_BUDGET_MS: f64 = 8.0;
/// DESIGN.md: "private memory of an idle session".
pub const IDLE_BUDGET_MIB: f64 = 5.0;

/// The libraries of issue 17 that the zygote does not preload.
const LATE_IMPORTS: &str =
    "import plotly.express, cv2, polars, duckdb, pyarrow, networkx, skimage\nprint('ok')";
const PRELOADED_CHECK: &str =
    "import sys\nprint(all(m in sys.modules for m in ('numpy', 'pandas', 'matplotlib')))";

fn row(variant: &'static str) -> Row {
    Row::new("data", Some(variant))
}

fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else if x >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

pub async fn run(ctx: &Ctx, variant: &str) -> Result<Row> {
    match variant {
        "create" => create(ctx).await,
        "idle" => idle(ctx).await,
        "docx2pdf" => docx2pdf(ctx).await,
        "ocr" => ocr(ctx).await,
        _ => bail!("data has no variant {variant:?}"),
    }
}

async fn create(ctx: &Ctx) -> Result<Row> {
    let api = &ctx.api;
    let status = api.status().await?;
    if status["pool_min_idle"].as_u64() != Some(0) {
        if ctx.own {
            bail!("expected a server with PYXIS_POOL_MIN_IDLE=0, status says {status}");
        }
        return Ok(Row::skipped(
            "data",
            Some("create"),
            "the server's warm pool is enabled (a cold create needs PYXIS_POOL_MIN_IDLE=0)",
        ));
    }
    let (n, warmup) = if ctx.quick { (5, 1) } else { (20, 2) };
    let mut create_ms = Vec::new();
    let mut late_ms = Vec::new();
    let mut late_server_ms = Vec::new();
    for i in 0..warmup + n {
        let t = api.create_session().await?;
        let id = t.value;
        let res = async {
            let pre = api.execute_ok(&id, PRELOADED_CHECK).await?;
            if pre.value["stdout"] != "True\n" {
                bail!(
                    "numpy, pandas and matplotlib are not all preloaded: {}",
                    pre.value
                );
            }
            let late = api.execute_ok(&id, LATE_IMPORTS).await?;
            Ok::<_, anyhow::Error>(late)
        }
        .await;
        let del = api.delete_session(&id).await;
        let late = res?;
        del?;
        if i >= warmup {
            create_ms.push(t.ms);
            late_ms.push(late.ms);
            if let Some(d) = late.value["duration_ms"].as_f64() {
                late_server_ms.push(d);
            }
        }
    }
    let c = Summary::of(&create_ms);
    let l = Summary::of(&late_ms);
    let mut r = row("create");
    r.fields.insert("sessions".into(), json!(n));
    c.put(&mut r.fields, "create_");
    l.put(&mut r.fields, "late_imports_");
    r.fields.insert(
        "late_imports_server_p50_ms".into(),
        num(Summary::of(&late_server_ms).p50),
    );
    r.fields.insert("late_imports".into(), json!(LATE_IMPORTS));
    r.budget = Some(format!(
        "create p50 ≤ {CREATE_BUDGET_MS} ms (pool empty, stack preloaded)"
    ));
    r.budget_metric = Some("create_p50_ms".into());
    r.pass = Some(c.p50 <= CREATE_BUDGET_MS);
    r.result = format!(
        "create p95 {}; first cell importing plotly, cv2, polars, duckdb, pyarrow, networkx, skimage p50 {}",
        ms(c.p95),
        ms(l.p50)
    );
    r.measured = format!("create p50 {}", ms(c.p50));
    Ok(r)
}

async fn idle(ctx: &Ctx) -> Result<Row> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("data (idle) needs root to read other users' /proc/PID/smaps_rollup");
    }
    let api = &ctx.api;
    let n = if ctx.quick { 5 } else { 30 };
    let before = procmem::by_uid_range(ctx.uid_lo, ctx.uid_hi);
    let mut ids = Vec::with_capacity(n);
    let res = async {
        for _ in 0..n {
            let id = api.create_session().await?.value;
            ids.push(id.clone());
            api.execute_ok(&id, "x = 1").await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let after = procmem::by_uid_range(ctx.uid_lo, ctx.uid_hi);
    for id in &ids {
        let _ = api.delete_session(id).await;
    }
    res?;
    if after.processes == 0 {
        bail!("no process with a uid in {}..{}", ctx.uid_lo, ctx.uid_hi);
    }
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1024.0 / n as f64;
    let uss = per(after.uss_kib, before.uss_kib);
    let pss = per(after.pss_kib, before.pss_kib);
    let mut r = row("idle");
    r.fields.insert("sessions".into(), json!(n));
    r.fields.insert("uss_mib_per_session".into(), num(uss));
    r.fields.insert("pss_mib_per_session".into(), num(pss));
    r.fields.insert(
        "processes".into(),
        json!(after.processes - before.processes.min(after.processes)),
    );
    r.budget = Some(format!("USS ≤ {IDLE_BUDGET_MIB} MiB/session"));
    r.budget_metric = Some("uss_mib_per_session".into());
    r.pass = Some(uss <= IDLE_BUDGET_MIB);
    r.result = format!("{n} idle sessions after `x = 1`: PSS {pss:.2} MiB each");
    r.measured = format!("USS {uss:.2} MiB/session");
    Ok(r)
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()?)
}

/// Renders the workspace file `path` with `code` in a session and returns its bytes.
async fn render(ctx: &Ctx, code: &str, path: &str) -> Result<Vec<u8>> {
    let api = &ctx.api;
    let id = api.create_session().await?.value;
    let res = async {
        let out = api.execute(&id, code).await?;
        check_ok(&out.value).context("rendering the input")?;
        let url = format!("{}/v1/sessions/{id}/files/{path}", api.base());
        let resp = http()?
            .get(&url)
            .bearer_auth(api.token())
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            bail!("GET {url}: HTTP {}", resp.status());
        }
        Ok(resp.bytes().await?.to_vec())
    }
    .await;
    let _ = api.delete_session(&id).await;
    res
}

/// POSTs `file` to a door route as multipart, `n` times after one untimed call; returns the
/// wall times (ms) and the last answer.
async fn door(
    ctx: &Ctx,
    route: &str,
    name: &str,
    file: &[u8],
    fields: &[(&str, &str)],
    n: usize,
    check: impl Fn(&reqwest::header::HeaderMap, &[u8]) -> Result<()>,
) -> Result<Vec<f64>> {
    let http = http()?;
    let mut times = Vec::with_capacity(n);
    for i in 0..=n {
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(file.to_vec()).file_name(name.to_string()),
        );
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        let start = Instant::now();
        let resp = http
            .post(format!("{}{route}", ctx.api.base()))
            .bearer_auth(ctx.api.token())
            .multipart(form)
            .send()
            .await
            .with_context(|| format!("POST {route}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        let took = start.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() {
            bail!(
                "POST {route}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            );
        }
        check(&headers, &body).with_context(|| format!("POST {route}: the answer"))?;
        if i > 0 {
            times.push(took);
        }
    }
    Ok(times)
}

async fn docx2pdf(ctx: &Ctx) -> Result<Row> {
    let n = if ctx.quick { 3 } else { 10 };
    let docx = render(
        ctx,
        "import docx\nd = docx.Document()\nd.add_heading('Quarterly report', 1)\n\
         for i in range(12):\n    d.add_paragraph('Paragraph %d of the report: revenue grew by %d percent.' % (i, i * 3))\n\
         t = d.add_table(rows=4, cols=3)\n\
         for r in range(4):\n    for c in range(3):\n        t.cell(r, c).text = str(r * c)\n\
         d.save('report.docx')",
        "report.docx",
    )
    .await?;
    let times = door(
        ctx,
        "/api/file/convert",
        "report.docx",
        &docx,
        &[("to", "pdf")],
        n,
        |_, body| {
            if body.starts_with(b"%PDF-") {
                Ok(())
            } else {
                Err(anyhow!("not a PDF ({} bytes)", body.len()))
            }
        },
    )
    .await?;
    let s = Summary::of(&times);
    let mut r = row("docx2pdf");
    s.put(&mut r.fields, "");
    r.fields.insert("docx_bytes".into(), json!(docx.len()));
    r.result = format!(
        "one-page docx ({} KB) → pdf over the door, {n} calls: p95 {}",
        docx.len() / 1024,
        ms(s.p95)
    );
    r.measured = format!("p50 {}", ms(s.p50));
    Ok(r)
}

/// The words of the rendered page, which OCR must give back.
const OCR_LINES: [&str; 6] = [
    "Pyxis reads this page back",
    "The quick brown fox jumps over the lazy dog",
    "Invoice 2041 total 318 dollars",
    "Shipped to Harbour Street 12",
    "Optical character recognition",
    "One page rendered by Pillow",
];

async fn ocr(ctx: &Ctx) -> Result<Row> {
    let n = if ctx.quick { 3 } else { 10 };
    let lines = serde_json::to_string(&OCR_LINES)?;
    let png = render(
        ctx,
        &format!(
            "from PIL import Image, ImageDraw, ImageFont\n\
             font = ImageFont.truetype('/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf', 40)\n\
             img = Image.new('RGB', (1700, 900), 'white')\n\
             d = ImageDraw.Draw(img)\n\
             for i, line in enumerate({lines}):\n    d.text((80, 80 + i * 120), line, font=font, fill='black')\n\
             img.save('page.png')"
        ),
        "page.png",
    )
    .await?;
    let want: Vec<String> = OCR_LINES
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(str::to_lowercase)
        .collect();
    let found = std::sync::Mutex::new(0usize);
    let times = door(
        ctx,
        "/api/ocr/extract",
        "page.png",
        &png,
        &[("lang", "eng")],
        n,
        |_, body| {
            let v: Value = serde_json::from_slice(body).context("JSON")?;
            let text = v["text"].as_str().unwrap_or_default().to_lowercase();
            let got: Vec<&str> = text.split_whitespace().collect();
            let hits = want.iter().filter(|w| got.contains(&w.as_str())).count();
            *found.lock().unwrap_or_else(|e| e.into_inner()) = hits;
            if hits * 10 < want.len() * 9 {
                bail!("OCR found {hits} of {} words: {text:?}", want.len());
            }
            Ok(())
        },
    )
    .await?;
    let hits = *found.lock().unwrap_or_else(|e| e.into_inner());
    let s = Summary::of(&times);
    let mut r = row("ocr");
    s.put(&mut r.fields, "");
    r.fields.insert("words".into(), json!(want.len()));
    r.fields.insert("words_found".into(), json!(hits));
    r.result = format!(
        "one 1700×900 page, {} lines of English, {n} calls: p95 {}, {hits}/{} words",
        OCR_LINES.len(),
        ms(s.p95),
        want.len()
    );
    r.measured = format!("p50 {}", ms(s.p50));
    Ok(r)
}
