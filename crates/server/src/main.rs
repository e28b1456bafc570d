//! `pyxis`: the code interpreter server.
//!
//! `pyxis serve` (the default) installs the Python runtime if it is missing,
//! starts the zygote, and serves the HTTP API. `pyxis doctor` reports what this
//! host can do. `pyxis setup` only installs the runtime.

mod app;
mod compat;
mod config;
mod error;
mod handlers;
mod kernel;
mod middleware;
mod model;
mod router;
mod runtime;
mod sandboxes;
mod sessions;
mod url_import;
mod workspace_fs;
mod zygote;

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Settings};

#[derive(Parser)]
#[command(
    name = "pyxis",
    version,
    about = "Stateful, sandboxed Python over HTTP"
)]
struct Cli {
    /// TOML configuration file (flags and PYXIS_* variables override it).
    #[arg(long, short, env = "PYXIS_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API (the default).
    Serve,
    /// Install the Python runtime and exit.
    Setup,
    /// Report what this host supports and how to fix what it lacks.
    Doctor,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PYXIS_LOG")
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = Config::load(cli.settings, cli.config.as_deref())?;
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => serve(cfg),
        Cmd::Setup => runtime::Runtime::new(&cfg.runtime_dir).ensure(),
        Cmd::Doctor => doctor(&cfg),
    }
}

fn doctor(cfg: &Config) -> anyhow::Result<()> {
    let report = pyxis_sandbox::probe();
    let rt = runtime::Runtime::new(&cfg.runtime_dir);
    let mut out = std::io::stdout().lock();
    // A piped core_pattern starts a host helper as root when a sandboxed
    // process crashes, whatever the sandbox's RLIMIT_CORE says.
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let core_pipe = core_pattern.trim_start().starts_with('|');
    writeln!(out, "pyxis doctor: what this host can do for sandboxes\n")?;
    for item in probe_items(&serde_json::to_value(&report)?) {
        let ok = item["ok"].as_bool().unwrap_or(false);
        let name = item["name"].as_str().unwrap_or_default();
        let detail = item["detail"].as_str().unwrap_or_default();
        writeln!(out, "{} {name}: {detail}", if ok { "ok  " } else { "FAIL" })?;
        if let Some(fix) = item["fix"].as_str().filter(|f| !ok && !f.is_empty()) {
            writeln!(out, "       fix: {fix}")?;
        }
    }
    let rt_ok = rt.is_installed();
    writeln!(
        out,
        "{} runtime {}: {}",
        if rt_ok { "ok  " } else { "FAIL" },
        cfg.runtime_dir.display(),
        if rt_ok {
            "installed".to_string()
        } else {
            "missing — run `pyxis setup` (or just start the server)".to_string()
        }
    )?;
    let mut lib_ok = true;
    for (what, path) in [
        ("sandbox library", cfg.sandbox_lib.clone()),
        ("sandbox init", cfg.sandbox_init()),
    ] {
        let found = path.exists();
        lib_ok &= found;
        writeln!(
            out,
            "{} {what} {}: {}",
            if found { "ok  " } else { "FAIL" },
            path.display(),
            if found {
                "found"
            } else {
                "missing — build the workspace (`cargo build --release`) or set PYXIS_SANDBOX_LIB"
            }
        )?;
    }
    if core_pipe {
        writeln!(
            out,
            "WARN core_pattern pipes crashes to a host helper ({}): a crash in a sandbox runs it as root\n       fix: sysctl kernel.core_pattern=core (or a path), or accept the helper",
            core_pattern.trim()
        )?;
    } else {
        writeln!(
            out,
            "ok   core_pattern: {} (no host helper)",
            core_pattern.trim()
        )?;
    }
    match pyxis_sandbox::dynamic_modifications_favored() {
        Ok(Some(true)) => writeln!(
            out,
            "ok   cgroup favordynmods: on (joining a cgroup takes well under a millisecond)"
        )?,
        Ok(Some(false)) if cfg.cgroup_favordynmods => writeln!(
            out,
            "ok   cgroup favordynmods: off now; the server turns it on at start"
        )?,
        Ok(Some(false)) => writeln!(
            out,
            "WARN cgroup favordynmods: off; every new sandbox waits for an RCU grace period (5-20 ms)\n       fix: PYXIS_CGROUP_FAVORDYNMODS=true"
        )?,
        Ok(None) | Err(_) => writeln!(
            out,
            "WARN cgroup favordynmods: no cgroup2 mount to set it on; every new sandbox waits for an RCU grace period (5-20 ms)"
        )?,
    }
    if !(report.all_ok() && rt_ok && lib_ok) {
        std::process::exit(1);
    }
    Ok(())
}

/// Every `{name, ok, detail, fix}` object in the probe report, in order.
fn probe_items(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    match v {
        serde_json::Value::Object(m) if m.contains_key("ok") && m.contains_key("name") => vec![v],
        serde_json::Value::Object(m) => m.values().flat_map(probe_items).collect(),
        serde_json::Value::Array(a) => a.iter().flat_map(probe_items).collect(),
        _ => Vec::new(),
    }
}

/// The configured token, or the stored one, or a new one stored 0600.
fn load_token(cfg: &Config) -> anyhow::Result<String> {
    if let Some(t) = &cfg.token {
        return Ok(t.clone());
    }
    let path = cfg.token_path();
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(t);
        }
    }
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    // Printed once, on the start that generated it.
    eprintln!(
        "pyxis: generated API token (stored in {}): {token}",
        path.display()
    );
    Ok(token)
}

fn serve(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    // One server per data directory: a second one would clean up (kill) the
    // first one's sandboxes as "leftovers". The lock lives as long as the process.
    let lock_path = cfg.data_dir.join("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| {
            anyhow::anyhow!(
                "another pyxis server is using the data directory {} ({e})",
                cfg.data_dir.display()
            )
        })?;
    let token = load_token(&cfg)?;
    tracing::info!(config = %serde_json::to_string(&cfg)?, "effective configuration (token masked)");
    let rt = runtime::Runtime::new(&cfg.runtime_dir);
    rt.ensure().context("installing the Python runtime")?;
    for path in [cfg.sandbox_lib.clone(), cfg.sandbox_init()] {
        anyhow::ensure!(
            path.exists(),
            "{} not found (build the workspace, or set PYXIS_SANDBOX_LIB to the library, \
             with pyxis-sandbox-init beside it)",
            path.display()
        );
    }
    // The zygote's thread is started from here, before the async runtime.
    let zygote = zygote::Zygote::start(zygote::ZygoteCommand {
        runtime: rt,
        sandbox_lib: cfg.sandbox_lib.clone(),
    })?;
    let cfg = Arc::new(cfg);
    let factory = sandboxes::SandboxFactory::new(cfg.clone(), zygote.clone())?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let sessions = sessions::Sessions::new(cfg.clone(), factory);
            sessions.start_background();
            let app = Arc::new(app::App {
                config: cfg.clone(),
                sessions: sessions.clone(),
                zygote,
                token,
                gateway: Default::default(),
            });
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("binding {}", cfg.listen))?;
            tracing::info!(addr = %listener.local_addr()?, "listening");
            axum::serve(listener, router::build(app))
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            tracing::info!("shutting down: releasing every session");
            sessions.shutdown().await;
            Ok(())
        })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
