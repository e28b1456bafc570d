//! `pyxis-bench`: the load benchmark of a Pyxis server.
//!
//! Drives a server over loopback HTTP — one it starts itself (default) or a
//! running one (`--url`, `--token`) — and prints one JSON line per result row,
//! then a table with the budgets of DESIGN.md ("Performance budget").

mod burst;
mod client;
mod commands;
mod data;
mod js;
mod jupyter;
mod mcp;
mod packages;
mod procmem;
mod server;
mod stats;
mod workloads;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use client::Api;
use server::{OwnServer, ServerConfig, UID_SPAN};
use workloads::{Ctx, Row};

const ALL: &[&str] = &[
    "roundtrip",
    "stream",
    "stateful",
    "create",
    "oneshot",
    "density",
    "analysis",
    "data",
    "burst",
    "spawn100",
    "density1000",
    "density2000",
    "mcp",
    "js",
    "command",
    "packages",
];

/// Load benchmark of a Pyxis server (loopback only).
#[derive(Parser, Debug)]
#[command(name = "pyxis-bench", version)]
struct Args {
    /// Base URL of a running server (loopback only), e.g. http://127.0.0.1:8080.
    /// Without it the benchmark starts its own servers.
    #[arg(long, env = "PYXIS_BENCH_URL", requires = "token")]
    url: Option<String>,

    /// API token of the server given by --url.
    #[arg(long, env = "PYXIS_BENCH_TOKEN")]
    token: Option<String>,

    /// Server binary to start (default: `<workspace>/target/release/pyxis`).
    #[arg(long)]
    server_bin: Option<PathBuf>,

    /// Comma-separated workloads: roundtrip, stream, stateful, create, oneshot, density,
    /// analysis, data, burst, spawn100, density1000, mcp, js, command, packages; also
    /// density2000 (not in the default set: 2,000 live sessions).
    /// `name:variant` picks one variant (stateful:steady, stateful:churn, stateful:jupyter,
    /// create:cold, create:warm, burst:25, burst:50, …).
    #[arg(
        long,
        default_value = "roundtrip,stream,stateful,create,oneshot,density,analysis,burst,spawn100,density1000,data,mcp,js,command,packages"
    )]
    workloads: String,

    /// Shrink every count for a smoke run (numbers are then indicative only).
    #[arg(long)]
    quick: bool,

    /// Cells per session in `stateful` (default 100, the published workload; more makes
    /// a longer run to profile, and the row then reports against the same budget).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    stateful_cells: u32,

    /// Also write the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Warm pool size (PYXIS_POOL_MIN_IDLE) of the servers we start, except
    /// for `create (cold)` and `density`, which use 0.
    #[arg(long, default_value_t = 4)]
    pool: u32,

    /// With --url: first sandbox uid of that server (its PYXIS_UID_BASE).
    #[arg(long, default_value_t = 200_000)]
    uid_base: u32,

    /// With --url: how many uids from --uid-base count as sandboxes.
    #[arg(long, default_value_t = UID_SPAN)]
    uid_span: u32,

    /// With --url: the server's pid (found from the listening socket if omitted).
    #[arg(long)]
    server_pid: Option<i32>,

    /// Python used for the local baseline of the `analysis` workload.
    #[arg(long, default_value = "/opt/pyxis/runtime/venv/bin/python")]
    python: String,
}

/// Where the server comes from.
enum Target {
    Own {
        bin: PathBuf,
        server: Option<OwnServer>,
    },
    External {
        api: Api,
        uid_lo: u32,
        uid_hi: u32,
        pid: Option<i32>,
    },
}

impl Target {
    /// A context for a workload that wants `cfg` (ignored with --url).
    async fn ctx(&mut self, cfg: ServerConfig, quick: bool, stateful_cells: u32) -> Result<Ctx> {
        match self {
            Target::External {
                api,
                uid_lo,
                uid_hi,
                pid,
            } => Ok(Ctx {
                api: api.clone(),
                uid_lo: *uid_lo,
                uid_hi: *uid_hi,
                server_pid: *pid,
                own: false,
                quick,
                stateful_cells,
            }),
            Target::Own { bin, server } => {
                let reuse = match server.as_mut() {
                    Some(s) => s.cfg == cfg && s.alive(),
                    None => false,
                };
                if !reuse {
                    if let Some(mut old) = server.take() {
                        if !old.alive() {
                            eprintln!(
                                "[bench] the server (pid {}) died; log tail:\n{}",
                                old.pid,
                                old.log_tail(30)
                            );
                        }
                        old.stop().await;
                    }
                    *server = Some(OwnServer::start(bin, cfg).await?);
                }
                let s = server.as_ref().expect("server just started");
                Ok(Ctx {
                    api: s.api.clone(),
                    uid_lo: s.uid_base,
                    uid_hi: s.uid_base + UID_SPAN,
                    server_pid: Some(s.pid),
                    own: true,
                    quick,
                    stateful_cells,
                })
            }
        }
    }

    /// After a failed workload: the server's log tail, if it died.
    fn post_mortem(&mut self) -> Option<String> {
        let Target::Own {
            server: Some(s), ..
        } = self
        else {
            return None;
        };
        if s.alive() {
            return None;
        }
        Some(format!(
            "server pid {} exited; log tail:\n{}",
            s.pid,
            s.log_tail(30)
        ))
    }

    async fn shutdown(self) {
        if let Target::Own {
            server: Some(s), ..
        } = self
        {
            s.stop().await;
        }
    }
}

/// Refuse anything but a loopback address.
fn check_loopback(url: &str) -> Result<()> {
    let u = reqwest::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        bail!("--url must be http(s)://, got {url:?}");
    }
    let host = u.host_str().unwrap_or("");
    let ok = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !ok {
        bail!("--url must be a loopback address (127.0.0.0/8, ::1, localhost), got {url:?}");
    }
    Ok(())
}

fn default_server_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let release = root.join("target/release/pyxis");
    let debug = root.join("target/debug/pyxis");
    if !release.exists() && debug.exists() {
        eprintln!(
            "[bench] {} not built; using the DEBUG build {} (numbers will be slow)",
            release.display(),
            debug.display()
        );
        return debug;
    }
    release
}

/// The host's 1-minute load average.
fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Table position of a row.
fn order(r: &Row) -> usize {
    const ORDER: &[(&str, Option<&str>)] = &[
        ("roundtrip", None),
        ("stream", None),
        ("stateful", Some("steady")),
        ("stateful", Some("churn")),
        ("stateful", Some("jupyter")),
        ("create", Some("cold")),
        ("create", Some("warm")),
        ("oneshot", None),
        ("density", None),
        ("analysis", None),
        ("data", Some("create")),
        ("data", Some("idle")),
        ("data", Some("docx2pdf")),
        ("data", Some("ocr")),
        ("burst", Some("25")),
        ("burst", Some("50")),
        ("spawn100", None),
        ("density1000", None),
        ("mcp", None),
        ("js", Some("cold")),
        ("js", Some("pooled")),
        ("js", Some("roundtrip")),
        ("js", Some("idle")),
        ("command", None),
        ("packages", Some("install")),
        ("packages", Some("proxy")),
    ];
    ORDER
        .iter()
        .position(|(w, v)| *w == r.workload && *v == r.variant)
        .unwrap_or(ORDER.len())
}

fn print_table(rows: &[Row]) {
    let head = ["workload", "result", "budget", "measured", "pass"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name(),
                r.result.clone(),
                r.budget.clone().unwrap_or_else(|| "—".into()),
                r.measured.clone(),
                match r.pass {
                    Some(true) => "pass".into(),
                    Some(false) => "MISS".into(),
                    None => "—".into(),
                },
            ]
        })
        .collect();
    let mut width = head.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    println!();
    line(&head.map(String::from));
    println!(
        "|{}|",
        width
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in &cells {
        line(row);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(all_ran) if all_ran => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(2),
        Err(e) => {
            eprintln!("pyxis-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run the selected workloads; `Ok(false)` if any of them failed to run
/// (a missed budget is not a failure).
async fn run(args: Args) -> Result<bool> {
    let mut selected = Vec::new();
    for w in args
        .workloads
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        let name = w.split_once(':').map_or(w, |(name, _)| name);
        if !ALL.contains(&name) {
            bail!("unknown workload {w:?} (known: {})", ALL.join(", "));
        }
        if !selected.contains(&w) {
            selected.push(w);
        }
    }
    let mut target = match &args.url {
        Some(url) => {
            check_loopback(url)?;
            let token = args.token.clone().unwrap_or_default();
            let api = Api::new(url, &token)?;
            if !api.probe("/healthz").await {
                bail!("{url}/healthz does not answer");
            }
            let pid = args.server_pid.or_else(|| {
                let port = reqwest::Url::parse(url).ok()?.port_or_known_default()?;
                procmem::listener_pid(port)
            });
            Target::External {
                api,
                uid_lo: args.uid_base,
                uid_hi: args.uid_base.saturating_add(args.uid_span),
                pid,
            }
        }
        None => Target::Own {
            bin: args.server_bin.clone().unwrap_or_else(default_server_bin),
            server: None,
        },
    };

    let main_cfg = ServerConfig {
        pool_min_idle: args.pool,
        max_sessions: 120,
        packages: false,
        js_pool: false,
    };
    let cold_cfg = ServerConfig {
        pool_min_idle: 0,
        max_sessions: 120,
        packages: false,
        js_pool: false,
    };
    let js_pool_cfg = ServerConfig {
        js_pool: true,
        ..main_cfg
    };
    let pkg_cfg = ServerConfig {
        packages: true,
        ..main_cfg
    };
    // Steps grouped by server configuration, so our servers restart once.
    type Step = (
        &'static str,
        Option<&'static str>,
        ServerConfig,
        Option<&'static str>,
    );
    let plan: Vec<Step> = vec![
        ("roundtrip", None, main_cfg, Some("p50 ≤ 0.25 ms")),
        (
            "stream",
            None,
            main_cfg,
            Some("first event and first `stream` p50 ≤ round trip p50 + 2 ms"),
        ),
        (
            "stateful",
            Some("steady"),
            main_cfg,
            Some("≥ 3000 cells/s, p95 ≤ 15 ms, 100% correct"),
        ),
        (
            "stateful",
            Some("churn"),
            main_cfg,
            Some("≥ 3000 cells/s, p95 ≤ 15 ms, 100% correct"),
        ),
        (
            "stateful",
            Some("jupyter"),
            main_cfg,
            Some("≥ 70% of v1's cells/s, 100% correct"),
        ),
        ("oneshot", None, main_cfg, Some("p50 ≤ 12 ms")),
        ("mcp", None, main_cfg, Some("run_code p50 ≤ 2 ms")),
        ("analysis", None, main_cfg, None),
        ("create", Some("warm"), main_cfg, Some("create p50 ≤ 2 ms")),
        ("create", Some("cold"), cold_cfg, Some("create p50 ≤ 8 ms")),
        ("density", None, cold_cfg, Some("USS ≤ 5 MiB/session")),
        // Issue 17 (bench/src/data.rs); budgets of DESIGN.md where it has one.
        ("data", Some("create"), cold_cfg, Some("create p50 ≤ 8 ms")),
        ("data", Some("idle"), cold_cfg, Some("USS ≤ 5 MiB/session")),
        ("data", Some("docx2pdf"), main_cfg, None),
        ("data", Some("ocr"), main_cfg, None),
        // Issue 15 (bench/src/js.rs): the Node kernel.
        (
            "js",
            Some("cold"),
            cold_cfg,
            Some("create to first result p50 ≤ 80 ms"),
        ),
        (
            "js",
            Some("pooled"),
            js_pool_cfg,
            Some("create to first result p50 ≤ 2 ms"),
        ),
        ("js", Some("roundtrip"), main_cfg, Some("p50 ≤ 1 ms")),
        ("js", Some("idle"), cold_cfg, None),
        ("command", None, main_cfg, Some("p50 ≤ 10 ms")),
        // Issue 16 (bench/src/packages.rs): its own loopback index and web server.
        (
            "packages",
            Some("install"),
            pkg_cfg,
            Some("cached small wheel p50 ≤ 500 ms"),
        ),
        (
            "packages",
            Some("proxy"),
            pkg_cfg,
            Some("≤ 10% of a 100 MB download's time"),
        ),
        (
            "burst",
            Some("25"),
            main_cfg,
            Some("p50 ≤ 80 ms, p95 ≤ 150 ms"),
        ),
        (
            "burst",
            Some("50"),
            main_cfg,
            Some("p50 ≤ 150 ms, p95 ≤ 300 ms"),
        ),
        ("spawn100", None, cold_cfg, Some("≤ 1.0 s wall")),
        (
            "density1000",
            None,
            ServerConfig {
                pool_min_idle: 0,
                max_sessions: 1000,
                packages: false,
                js_pool: false,
            },
            Some("≤ 6 MiB/session, cell p95 ≤ 15 ms"),
        ),
        // Past the budget's 1,000: what a host gives at twice that (not in the default set).
        (
            "density2000",
            None,
            ServerConfig {
                pool_min_idle: 0,
                max_sessions: 2000,
                packages: false,
                js_pool: false,
            },
            Some("≤ 6 MiB/session, cell p95 ≤ 15 ms"),
        ),
    ];

    for w in &selected {
        if let Some((name, v)) = w.split_once(':') {
            if !plan.iter().any(|s| s.0 == name && s.1 == Some(v)) {
                bail!("{name} has no variant {v:?}");
            }
        }
    }
    let mut out_file = match &args.out {
        Some(p) => {
            Some(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    let mut rows = Vec::new();
    for (workload, variant, cfg, budget) in plan {
        let picked = selected.iter().any(|w| match w.split_once(':') {
            None => *w == workload,
            Some((name, v)) => name == workload && Some(v) == variant,
        });
        if !picked {
            continue;
        }
        let label = match variant {
            Some(v) => format!("{workload} ({v})"),
            None => workload.to_string(),
        };
        eprintln!("[bench] running {label}…");
        let load_before = loadavg_1m();
        let cpu_before = procmem::own_cpu_s();
        let result = async {
            let ctx = target.ctx(cfg, args.quick, args.stateful_cells).await?;
            match (workload, variant) {
                ("roundtrip", _) => workloads::roundtrip(&ctx).await,
                ("stream", _) => workloads::stream(&ctx).await,
                ("stateful", Some("jupyter")) => workloads::stateful_jupyter(&ctx).await,
                ("stateful", v) => workloads::stateful(&ctx, v == Some("churn")).await,
                ("create", v) => workloads::create(&ctx, v == Some("warm")).await,
                ("oneshot", _) => workloads::oneshot(&ctx).await,
                ("density", _) => workloads::density(&ctx).await,
                ("analysis", _) => workloads::analysis(&ctx, &args.python).await,
                ("data", Some(v)) => data::run(&ctx, v).await,
                ("burst", Some(c)) => burst::burst(&ctx, c.parse().unwrap_or(25), c).await,
                ("spawn100", _) => burst::spawn100(&ctx).await,
                ("density1000", _) => burst::density(&ctx, "density1000", 1000).await,
                ("density2000", _) => burst::density(&ctx, "density2000", 2000).await,
                ("mcp", _) => mcp::run(&ctx).await,
                ("js", Some(v)) => js::run(&ctx, v).await,
                ("command", _) => commands::run(&ctx).await,
                ("packages", Some(v)) => packages::run(&ctx, v).await,
                _ => unreachable!("unknown step {workload}"),
            }
        }
        .await;
        let row = match result {
            Ok(mut r) => {
                r.fields
                    .insert("quick".into(), serde_json::json!(args.quick));
                // Other work on the host skews everything: say how busy it was.
                r.fields
                    .insert("host_load_1m_before".into(), serde_json::json!(load_before));
                r.fields
                    .insert("host_load_1m_after".into(), serde_json::json!(loadavg_1m()));
                r.fields.insert(
                    "bench_cpu_s".into(),
                    stats::num(procmem::own_cpu_s() - cpu_before),
                );
                r
            }
            Err(e) => {
                let e = match target.post_mortem() {
                    Some(pm) => e.context(pm),
                    None => e,
                };
                eprintln!("[bench] {label} failed: {e:#}");
                Row::failed(workload, variant, budget, &e)
            }
        };
        let line = row.to_json().to_string();
        println!("{line}");
        std::io::stdout().flush()?;
        if let Some(f) = out_file.as_mut() {
            writeln!(f, "{line}")?;
        }
        rows.push(row);
    }
    target.shutdown().await;

    rows.sort_by_key(order);
    print_table(&rows);
    if args.quick {
        println!("\n(--quick: reduced counts, numbers are indicative only)");
    }
    Ok(rows.iter().all(|r| !r.fields.contains_key("error")))
}
