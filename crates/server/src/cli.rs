//! The `pyxis` command line: `serve` (the default) installs the Python runtime if it is
//! missing, starts the zygote, and serves every door; `doctor` reports what this host can
//! do; `setup` only installs the runtime.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Settings};
use crate::sandboxes::{zygote, SandboxFactory};
use crate::services::{Files, Sessions};
use crate::{app, router, runtime};

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
    /// API keys of the keys file (`PYXIS_KEYS_FILE`).
    #[command(subcommand)]
    Key(KeyCmd),
    /// MCP over stdio (for clients that launch a command), bridged to a running server.
    Mcp(crate::doors::mcp::McpArgs),
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Make a new key: print its secret (once) and the entry to add to the keys file.
    New {
        /// The key's name (the tenant its sessions belong to; shown in metrics).
        #[arg(long)]
        name: String,
    },
}

/// `pyxis key new`: the secret goes to stdout alone on its first line, so a script can
/// take it; the keys-file entry (the hash, never the secret) follows.
fn key_new(name: &str) -> anyhow::Result<()> {
    let (secret, entry) = crate::tenants::new_key(name)?;
    println!("{secret}");
    eprintln!(
        "pyxis: the secret above is shown once and stored nowhere; give it to the client.\n\
         pyxis: add this entry to the keys file (it is reloaded on change and on SIGHUP):"
    );
    println!("\n{entry}");
    Ok(())
}

/// The `pyxis` command line.
pub fn main() -> anyhow::Result<()> {
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
        Cmd::Doctor => crate::doctor::run(&cfg),
        Cmd::Key(KeyCmd::New { name }) => key_new(&name),
        Cmd::Mcp(args) => crate::doors::mcp::stdio_main(&cfg, args),
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
    let token = crate::ids::new_token();
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

/// Serve until SIGTERM or Ctrl-C, then release every session.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
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
    // With a keys file, the token is only what is configured: none is generated, and the
    // doors that compare with `App::token` get a random one nobody knows.
    let (token, tenants) = match &cfg.keys_file {
        Some(path) => {
            let tenants = crate::tenants::Tenants::with_keys_file(cfg.token.clone(), path.clone())
                .with_context(|| format!("loading the keys file {}", path.display()))?;
            let token = cfg.token.clone().unwrap_or_else(crate::ids::new_token);
            (token, tenants)
        }
        None => {
            let token = load_token(&cfg)?;
            (token.clone(), crate::tenants::Tenants::single(token))
        }
    };
    tracing::info!(config = %serde_json::to_string(&cfg)?, "effective configuration (token masked)");
    match crate::fdlimit::raise() {
        Ok(files) => {
            tracing::info!(
                was = files.was,
                soft = files.soft,
                hard = files.hard,
                "open files limit"
            );
            let need =
                crate::fdlimit::needed(cfg.max_sessions, cfg.pool_max_idle, cfg.max_connections);
            if let Some(why) = crate::fdlimit::shortfall(files.soft, need) {
                tracing::warn!("{why}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    let rt = runtime::Runtime::new(&cfg.runtime_dir);
    rt.ensure().context("installing the Python runtime")?;
    // Checked now: a missing exec program failed every context and pooled JavaScript
    // session later with a bare 500 (ENOENT).
    for path in [
        cfg.sandbox_lib.clone(),
        cfg.sandbox_init(),
        cfg.sandbox_exec(),
    ] {
        anyhow::ensure!(
            path.exists(),
            "{} not found (build the workspace, or set PYXIS_SANDBOX_LIB to the library, \
             with pyxis-sandbox-init and pyxis-sandbox-exec beside it)",
            path.display()
        );
    }
    // The zygote's thread is started from here, before the async runtime.
    let zygote = zygote::Zygote::start_many(
        zygote::ZygoteCommand {
            runtime: rt,
            sandbox_lib: cfg.sandbox_lib.clone(),
            ready_timeout: cfg.zygote_ready_timeout,
            spawn_timeout: cfg.spawn_timeout,
            kernel_env: crate::sandboxes::kernel_egress_env(&cfg),
        },
        cfg.zygotes,
    )?;
    let cfg = Arc::new(cfg);
    let proxy = crate::services::egress::build_proxy(&cfg)?;
    let launcher = Arc::new(SandboxFactory::new(cfg.clone(), zygote)?.with_egress(proxy));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let sessions = Sessions::new(cfg.clone(), launcher);
            sessions.start_background();
            tenants.watch();
            let app = app::App::with_tenants(
                cfg.clone(),
                sessions.clone(),
                Files::new(cfg.clone()),
                token,
                tenants,
            );
            crate::metrics::handle();
            if let Some(addr) = cfg.metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?;
                tracing::info!(%addr, "metrics listening");
                let limits = crate::conns::ConnLimits::from_config(&cfg);
                tokio::spawn(crate::conns::serve(
                    listener,
                    router::metrics_only(),
                    limits,
                    std::future::pending(),
                ));
            }
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("binding {}", cfg.listen))?;
            tracing::info!(addr = %listener.local_addr()?, "listening");
            crate::conns::serve(
                listener,
                router::build(app),
                crate::conns::ConnLimits::from_config(&cfg),
                shutdown_signal(),
            )
            .await;
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
