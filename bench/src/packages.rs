//! Issue 16's rows: packages and the egress proxy, with no internet. The bench serves its own
//! PEP 503 index and a plain HTTP server on loopback (the black-box tests' fixtures and
//! servers, `pyxis_tests::packages`) and starts the server with `PYXIS_PACKAGE_INDEX` and
//! `PYXIS_EGRESS_ALLOW` pointing at them.
//!
//! - `packages (install)`: `POST /v1/sessions/{id}/packages {packages: ["pyxis-tiny==1.0"]}`
//!   into a fresh session (policy `allow` for the index), N sessions one after another. The
//!   first install downloads the wheel into the server's cache and is reported apart; the
//!   others are served from the cache (the index must see exactly one download).
//! - `packages (proxy)`: a 100 MB download from the loopback server by one small Python
//!   client (raw sockets, 1 MiB `recv_into`, timed inside the client, so process start-up is
//!   not counted). Baseline: that client run on the host straight to the server (a sandbox
//!   has no network but the proxy, so the same client inside it with the proxy bypassed is
//!   impossible; the host run is the nearest like-for-like: same Python, same code, same
//!   server). Through the proxy: the same client inside a session, once as an absolute-form
//!   `GET http://…` (the proxy's forwarding path, what `HTTP_PROXY` gives plain-HTTP clients)
//!   and once through a `CONNECT` tunnel (what `HTTPS_PROXY` gives pip, uv, curl for
//!   https). Host, forward and tunnel runs are interleaved; medians. The overhead is
//!   `proxied time / direct time - 1`; the budget holds the worse of the two paths.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pyxis_tests::packages::{Fixtures, PackageIndex, WebServer, TINY_WHEEL};
use serde_json::{json, Value};

use crate::procmem;
use crate::stats::{median, num, Summary};
use crate::workloads::{Ctx, Row};

/// DESIGN.md: "a cached small wheel installs in ≤ 500 ms".
pub const INSTALL_BUDGET_MS: f64 = 500.0;
/// DESIGN.md: "the proxy costs ≤ 10% of a 100 MB download's time".
pub const PROXY_BUDGET_PCT: f64 = 10.0;
/// The download's size.
const DOWNLOAD_BYTES: u64 = 100 << 20;

/// The loopback servers the bench's package server points at (started once, kept for the
/// process's life: the server is started with their ports).
struct Loopback {
    _fixtures: Fixtures,
    index: PackageIndex,
    web: WebServer,
}

fn loopback() -> &'static Loopback {
    static LOOPBACK: OnceLock<Loopback> = OnceLock::new();
    LOOPBACK.get_or_init(|| {
        let fixtures = Fixtures::build();
        let index = PackageIndex::start(&fixtures.files);
        let web = WebServer::start();
        Loopback {
            _fixtures: fixtures,
            index,
            web,
        }
    })
}

fn allow_list() -> Vec<String> {
    let l = loopback();
    vec![
        format!("127.0.0.1:{}", l.index.addr.port()),
        format!("127.0.0.1:{}", l.web.addr.port()),
    ]
}

/// The settings of the server the `packages` rows run against.
pub fn server_env() -> Vec<(&'static str, String)> {
    let l = loopback();
    vec![
        ("PYXIS_PACKAGE_INDEX", l.index.url()),
        ("PYXIS_EGRESS_ALLOW", allow_list().join(",")),
        // Room for every 100 MB download of the proxy row in one session.
        ("PYXIS_EGRESS_MAX_MB", "16384".into()),
    ]
}

/// The v1 calls these rows need beyond [`crate::client::Api`]'s.
struct V1 {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl V1 {
    fn new(ctx: &Ctx) -> Result<V1> {
        Ok(V1 {
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .no_proxy()
                .timeout(Duration::from_secs(600))
                .build()?,
            base: ctx.api.base().to_string(),
            token: ctx.api.token().to_string(),
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// A session whose policy reaches the loopback servers.
    async fn session(&self) -> Result<String> {
        let body = json!({"network": {"egress": "allow", "allow": allow_list()}});
        let (status, v) = self.post("/v1/sessions", &body).await?;
        if status != 201 {
            bail!("POST /v1/sessions: HTTP {status}: {v}");
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no id in {v}"))
    }

    /// One install; its wall time (ms).
    async fn install(&self, id: &str) -> Result<f64> {
        let started = Instant::now();
        let (status, v) = self
            .post(
                &format!("/v1/sessions/{id}/packages"),
                &json!({"packages": ["pyxis-tiny==1.0"]}),
            )
            .await?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        let listed = v["packages"].as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["name"] == "pyxis_tiny" || p["name"] == "pyxis-tiny")
        });
        if status != 200 || !listed {
            bail!("install: HTTP {status}: {v}");
        }
        Ok(took)
    }
}

pub async fn run(ctx: &Ctx, variant: &'static str) -> Result<Row> {
    if !ctx.own {
        return Ok(Row::skipped(
            "packages",
            Some(variant),
            "needs a server the bench starts (its index and servers are on loopback)",
        ));
    }
    match variant {
        "install" => install(ctx).await,
        "proxy" => proxy(ctx).await,
        other => bail!("packages has no variant {other:?}"),
    }
}

async fn install(ctx: &Ctx) -> Result<Row> {
    let v1 = V1::new(ctx)?;
    let n = if ctx.quick { 5 } else { 20 };
    let downloads_before = loopback().index.downloads(TINY_WHEEL);
    let mut first = None;
    let mut cached = Vec::with_capacity(n);
    for i in 0..=n {
        let id = v1.session().await?;
        let took = v1.install(&id).await;
        let _ = ctx.api.delete_session(&id).await;
        let took = took?;
        if i == 0 && downloads_before == 0 {
            first = Some(took);
        } else {
            cached.push(took);
        }
    }
    let downloads = loopback().index.downloads(TINY_WHEEL);
    if downloads != 1 {
        bail!("the index served the wheel {downloads} times (want 1: the rest from the cache)");
    }
    let s = Summary::of(&cached);
    let mut r = Row::new("packages", Some("install"));
    r.budget = Some(format!("cached small wheel p50 ≤ {INSTALL_BUDGET_MS} ms"));
    r.budget_metric = Some("p50_ms".into());
    r.pass = Some(s.p50 <= INSTALL_BUDGET_MS);
    s.put(&mut r.fields, "");
    r.fields
        .insert("first_install_ms".into(), first.map_or(Value::Null, num));
    r.fields.insert("index_downloads".into(), json!(downloads));
    r.result = format!(
        "cached p50 {:.0} ms p95 {:.0} ms (first, downloading: {}) n={}",
        s.p50,
        s.p95,
        first.map_or("—".into(), |f| format!("{f:.0} ms")),
        s.n
    );
    r.measured = format!("p50 {:.0} ms", s.p50);
    Ok(r)
}

/// The download client: `fetch(mode)` prints one JSON line `{"s": seconds, "n": bytes}`.
/// `mode` is `direct` (origin-form to the server), `forward` (absolute-form to the proxy) or
/// `tunnel` (`CONNECT`, then origin-form inside).
const CLIENT: &str = r#"
import json, socket, time
def fetch(mode, host, port, size, proxy=("127.0.0.1", 3128)):
    t0 = time.perf_counter()
    s = socket.create_connection((host, port) if mode == "direct" else proxy)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    def head():
        data = b""
        while b"\r\n\r\n" not in data:
            k = s.recv_into(view)
            if not k:
                raise RuntimeError("closed before the head: %r" % data[:200])
            data += bytes(view[:k])
        h, _, rest = data.partition(b"\r\n\r\n")
        return h.decode("latin-1"), len(rest)
    if mode == "tunnel":
        s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port)).encode())
        h, extra = head()
        if " 200 " not in h.split("\r\n")[0] + " ":
            raise RuntimeError(h)
    target = ("http://%s:%d" % (host, port) if mode == "forward" else "") + "/bytes/%d" % size
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (target, host, port)).encode())
    h, got = head()
    if " 200 " not in h.split("\r\n")[0] + " ":
        raise RuntimeError(h)
    while got < size:
        k = s.recv_into(view)
        if not k:
            break
        got += k
    took = time.perf_counter() - t0
    s.close()
    print(json.dumps({"s": took, "n": got}))
"#;

fn parse_run(out: &str) -> Result<f64> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("no result line in {out:?}"))?;
    let v: Value = serde_json::from_str(line)?;
    let n = v["n"].as_u64().unwrap_or(0);
    if n != DOWNLOAD_BYTES {
        bail!("downloaded {n} bytes of {DOWNLOAD_BYTES}");
    }
    v["s"].as_f64().ok_or_else(|| anyhow!("no time in {line}"))
}

fn call(mode: &str) -> String {
    let port = loopback().web.addr.port();
    format!("fetch({mode:?}, '127.0.0.1', {port}, {DOWNLOAD_BYTES})")
}

/// The client on the host, straight to the server.
fn host_run(python: &str) -> Result<f64> {
    let out = Command::new(python)
        .arg("-c")
        .arg(format!("{CLIENT}\n{}", call("direct")))
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .with_context(|| format!("running {python}"))?;
    if !out.status.success() {
        bail!("host client: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_run(&String::from_utf8_lossy(&out.stdout))
}

/// The client in the session, through the proxy: its time, and the server's CPU time over
/// the cell (the proxy's cost, plus one small cell's).
async fn sandbox_run(ctx: &Ctx, id: &str, mode: &str) -> Result<(f64, f64)> {
    let cpu = || ctx.server_pid.and_then(procmem::process_cpu_s);
    let before = cpu();
    let exec = ctx.api.execute(id, &call(mode)).await?.value;
    let server_cpu = match (before, cpu()) {
        (Some(b), Some(a)) => a - b,
        _ => f64::NAN,
    };
    if exec["status"] != "ok" {
        bail!("{mode} download: {}", crate::client::short(&exec));
    }
    Ok((
        parse_run(exec["stdout"].as_str().unwrap_or_default())?,
        server_cpu,
    ))
}

fn mb_per_s(s: f64) -> f64 {
    DOWNLOAD_BYTES as f64 / (1 << 20) as f64 / s
}

async fn proxy(ctx: &Ctx) -> Result<Row> {
    let python = "/opt/pyxis/runtime/venv/bin/python";
    let python = if std::path::Path::new(python).exists() {
        python
    } else {
        "python3"
    };
    let reps = if ctx.quick { 3 } else { 7 };
    let v1 = V1::new(ctx)?;
    let id = v1.session().await?;
    let res = async {
        ctx.api.execute_ok(&id, CLIENT).await?;
        // One of each first: the server's and the sandbox's first use.
        host_run(python)?;
        sandbox_run(ctx, &id, "forward").await?;
        sandbox_run(ctx, &id, "tunnel").await?;
        let (mut host, mut forward, mut tunnel) = (Vec::new(), Vec::new(), Vec::new());
        let (mut forward_cpu, mut tunnel_cpu) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            host.push(host_run(python)?);
            let (s, cpu) = sandbox_run(ctx, &id, "forward").await?;
            forward.push(s);
            forward_cpu.push(cpu);
            let (s, cpu) = sandbox_run(ctx, &id, "tunnel").await?;
            tunnel.push(s);
            tunnel_cpu.push(cpu);
        }
        Ok::<_, anyhow::Error>((host, forward, tunnel, forward_cpu, tunnel_cpu))
    }
    .await;
    let _ = ctx.api.delete_session(&id).await;
    let (host, forward, tunnel, forward_cpu, tunnel_cpu) = res?;
    let (h, f, t) = (median(&host), median(&forward), median(&tunnel));
    let over = |x: f64| (x / h - 1.0) * 100.0;
    let worst = over(f).max(over(t));
    let mut r = Row::new("packages", Some("proxy"));
    r.budget = Some(format!("≤ {PROXY_BUDGET_PCT}% of a 100 MB download's time"));
    r.budget_metric = Some("overhead_pct".into());
    r.pass = Some(worst <= PROXY_BUDGET_PCT);
    r.fields.insert("reps".into(), json!(reps));
    r.fields.insert("direct_s".into(), num(h));
    r.fields.insert("forward_s".into(), num(f));
    r.fields.insert("tunnel_s".into(), num(t));
    r.fields.insert("direct_mb_s".into(), num(mb_per_s(h)));
    r.fields.insert("forward_mb_s".into(), num(mb_per_s(f)));
    r.fields.insert("tunnel_mb_s".into(), num(mb_per_s(t)));
    r.fields.insert("forward_overhead_pct".into(), num(over(f)));
    r.fields.insert("tunnel_overhead_pct".into(), num(over(t)));
    r.fields.insert("overhead_pct".into(), num(worst));
    r.fields
        .insert("forward_server_cpu_s".into(), num(median(&forward_cpu)));
    r.fields
        .insert("tunnel_server_cpu_s".into(), num(median(&tunnel_cpu)));
    r.fields.insert("direct_all_s".into(), json!(host));
    r.fields.insert("forward_all_s".into(), json!(forward));
    r.fields.insert("tunnel_all_s".into(), json!(tunnel));
    r.result = format!(
        "100 MB: direct {:.0} MB/s, forward {:.0} MB/s ({:+.0}%), tunnel {:.0} MB/s ({:+.0}%); \
         proxy CPU {:.3} s / {:.3} s",
        mb_per_s(h),
        mb_per_s(f),
        over(f),
        mb_per_s(t),
        over(t),
        median(&forward_cpu),
        median(&tunnel_cpu),
    );
    r.measured = format!("{worst:+.1}%");
    Ok(r)
}
