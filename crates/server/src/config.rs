//! Configuration: flags, then `PYXIS_*` environment variables, then an optional
//! TOML file, then defaults — in that order of precedence.
//!
//! clap reads flags and environment variables together (`Args`); every field is
//! optional there so that the TOML file (`FileConfig`) can fill what neither
//! gave; `Config` is the validated result the rest of the server uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Flags and environment variables of `pyxis serve` (and of the other
/// subcommands that need the same paths).
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address and port to listen on.
    #[arg(long, env = "PYXIS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the token, workspaces and other state.
    #[arg(long, env = "PYXIS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of the Python runtime (virtual environment and driver).
    #[arg(long, env = "PYXIS_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// API token. Generated and stored in the data directory when unset.
    #[arg(long, env = "PYXIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Path of libpyxis_sandbox.so (default: beside the executable).
    #[arg(long, env = "PYXIS_SANDBOX_LIB")]
    pub sandbox_lib: Option<PathBuf>,
    /// Idle sandboxes kept ready for new sessions (per language of `PYXIS_POOL_LANGUAGES`
    /// that names no count of its own).
    #[arg(long, env = "PYXIS_POOL_MIN_IDLE")]
    pub pool_min_idle: Option<usize>,
    /// Most idle sandboxes the pool grows to when creates come faster than it refills (per
    /// language; default 32, or 0 for a language whose minimum is 0).
    #[arg(long, env = "PYXIS_POOL_MAX_IDLE")]
    pub pool_max_idle: Option<usize>,
    /// Languages the warm pool keeps sandboxes for, each with its first kernel ready:
    /// `python` (default), `python,javascript` (each `PYXIS_POOL_MIN_IDLE`), or with a
    /// minimum each, `python:4,javascript:1`. The JavaScript sandboxes serve TypeScript
    /// sessions too. Every language follows its own demand up to `PYXIS_POOL_MAX_IDLE`;
    /// `PYXIS_POOL_MAX_MB` bounds them together.
    #[arg(long, env = "PYXIS_POOL_LANGUAGES")]
    pub pool_languages: Option<String>,
    /// Memory the idle sandboxes of the pool may hold together, in MiB.
    #[arg(long, env = "PYXIS_POOL_MAX_MB")]
    pub pool_max_mb: Option<u64>,
    /// Seconds without a create after which a grown pool shrinks back towards its minimum.
    #[arg(long, env = "PYXIS_POOL_SHRINK_S")]
    pub pool_shrink_s: Option<f64>,
    /// Python zygotes forking sandboxes in parallel (default: one per core).
    #[arg(long, env = "PYXIS_ZYGOTES")]
    pub zygotes: Option<usize>,
    /// Most live sessions at once; beyond it creation answers 503.
    #[arg(long, env = "PYXIS_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Seconds of inactivity after which a session is released.
    #[arg(long, env = "PYXIS_IDLE_TIMEOUT_S")]
    pub idle_timeout_s: Option<u64>,
    /// Default time limit of one execution, in seconds.
    #[arg(long, env = "PYXIS_EXEC_TIMEOUT_S")]
    pub exec_timeout_s: Option<f64>,
    /// Highest time limit a client may ask for, in seconds.
    #[arg(long, env = "PYXIS_MAX_EXEC_TIMEOUT_S")]
    pub max_exec_timeout_s: Option<f64>,
    /// Seconds an interrupted cell gets to stop before its kernel is killed.
    #[arg(long, env = "PYXIS_INTERRUPT_GRACE_S")]
    pub interrupt_grace_s: Option<f64>,
    /// Seconds the Python zygote may take to import the preloaded libraries and
    /// report ready at start (slow or emulated hosts need more).
    #[arg(long, env = "PYXIS_ZYGOTE_READY_TIMEOUT_S")]
    pub zygote_ready_timeout_s: Option<f64>,
    /// Seconds the zygote may take to answer a request for a new sandbox; a third of it
    /// bounds each of the sandbox's two setup reports (slow or emulated hosts need more).
    #[arg(long, env = "PYXIS_SPAWN_TIMEOUT_S")]
    pub spawn_timeout_s: Option<f64>,
    /// Bytes of output (text and rich data) kept per execution.
    #[arg(long, env = "PYXIS_MAX_OUTPUT_BYTES")]
    pub max_output_bytes: Option<u64>,
    /// Requests that may wait for a busy session before 409.
    #[arg(long, env = "PYXIS_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Memory limit of a session in MiB (no swap).
    #[arg(long, env = "PYXIS_MEMORY_MB")]
    pub memory_mb: Option<u64>,
    /// Process limit of a session.
    #[arg(long, env = "PYXIS_PIDS")]
    pub pids: Option<u64>,
    /// CPU limit of a session in cores (0.5 = half a core).
    #[arg(long, env = "PYXIS_CPUS")]
    pub cpus: Option<f64>,
    /// Workspace quota of a session in MiB.
    #[arg(long, env = "PYXIS_DISK_MB")]
    pub disk_mb: Option<u64>,
    /// Size of a session's /tmp (and /dev/shm) in MiB, charged to its memory.
    #[arg(long, env = "PYXIS_TMP_MB")]
    pub tmp_mb: Option<u64>,
    /// Largest request body in bytes.
    #[arg(long, env = "PYXIS_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// First uid of the range given to sandboxes.
    #[arg(long, env = "PYXIS_UID_BASE")]
    pub uid_base: Option<u32>,
    /// Most workspace entries walked before and after a cell to report the
    /// files it changed (0 turns the report off).
    #[arg(long, env = "PYXIS_FILES_SCAN_MAX_ENTRIES")]
    pub files_scan_max_entries: Option<usize>,
    /// Deepest directory level walked for that report.
    #[arg(long, env = "PYXIS_FILES_SCAN_MAX_DEPTH")]
    pub files_scan_max_depth: Option<usize>,
    /// Most entries one directory listing returns.
    #[arg(long, env = "PYXIS_FILES_LIST_MAX_ENTRIES")]
    pub files_list_max_entries: Option<usize>,
    /// Networks (comma-separated `addr/prefix`) that file imports may reach
    /// even though they are loopback, private or link-local.
    #[arg(long, env = "PYXIS_IMPORT_ALLOW")]
    pub import_allow: Option<String>,
    /// Time limit of one URL import in seconds.
    #[arg(long, env = "PYXIS_IMPORT_TIMEOUT_S")]
    pub import_timeout_s: Option<f64>,
    /// Largest file one URL import may write, in MiB (at most the quota).
    #[arg(long, env = "PYXIS_IMPORT_MAX_MB")]
    pub import_max_mb: Option<u64>,
    /// Time limit of sending one file of an export, in seconds.
    #[arg(long, env = "PYXIS_EXPORT_TIMEOUT_S")]
    pub export_timeout_s: Option<f64>,
    /// Set the `favordynmods` option on the host's cgroup2 mount at start, so
    /// moving a new sandbox into its cgroup takes about 0.3 ms instead of an
    /// RCU grace period (5-20 ms); forks and exits host-wide get slightly slower.
    #[arg(long, env = "PYXIS_CGROUP_FAVORDYNMODS")]
    pub cgroup_favordynmods: Option<bool>,
    /// CPU weight of the sandboxes' cgroup against its siblings (the server's own
    /// cgroup, the host's services), on the cgroup v2 scale: 1-10000, 100 is a
    /// default cgroup's. Above 100, a server relaying replies waits for the cell
    /// on the CPU to finish instead of cutting it short.
    #[arg(long, env = "PYXIS_SANDBOX_CPU_WEIGHT")]
    pub sandbox_cpu_weight: Option<u64>,
    /// Serve the Docker-pool interpreter's routes without a token (for a
    /// trusted network only).
    #[arg(long, env = "PYXIS_COMPAT_OPEN_POOL_API")]
    pub compat_open_pool_api: Option<bool>,
    /// Base URL put before the Docker-pool door's `image_url` and file URLs.
    #[arg(long, env = "PYXIS_COMPAT_PUBLIC_BASE_URL")]
    pub compat_public_base_url: Option<String>,
    /// Extensions of `/code/output/` files the Docker-pool door returns.
    #[arg(long, env = "PYXIS_COMPAT_OUTPUT_EXTENSIONS")]
    pub compat_output_extensions: Option<String>,
    /// Seconds the Docker-pool door keeps stored images and files.
    #[arg(long, env = "PYXIS_COMPAT_STORE_TTL_S")]
    pub compat_store_ttl_s: Option<u64>,
    /// Size bound of the Docker-pool door's store in MiB (oldest removed first).
    #[arg(long, env = "PYXIS_COMPAT_STORE_MAX_MB")]
    pub compat_store_max_mb: Option<u64>,
    /// Bytes of cell history (code and outputs, for notebook export) kept per session, in
    /// KiB; the oldest cells are dropped first.
    #[arg(long, env = "PYXIS_HISTORY_MAX_KB")]
    pub history_max_kb: Option<u64>,
    /// Seconds a connection has to send a request's head (from accept, and from the end of
    /// the previous response on a keep-alive connection).
    #[arg(long, env = "PYXIS_HEADER_TIMEOUT_S")]
    pub header_timeout_s: Option<f64>,
    /// Seconds a request may stall (its body not sent, its response not read) before its
    /// connection is closed. Long cells, SSE and WebSocket streams are not stalls.
    #[arg(long, env = "PYXIS_CONN_IDLE_TIMEOUT_S")]
    pub conn_idle_timeout_s: Option<f64>,
    /// Most open connections; past it new ones are answered 503 and closed.
    #[arg(long, env = "PYXIS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open connections from one client address (0: no per-client cap; use 0 behind
    /// a reverse proxy).
    #[arg(long, env = "PYXIS_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,
    /// Keys file (TOML or JSON): API keys by name, each with a hash of its secret and its
    /// own limits. Reloaded when it changes and on SIGHUP.
    #[arg(long, env = "PYXIS_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,
    /// Serve `/metrics` on this address instead of the API's (then without a token).
    #[arg(long, env = "PYXIS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The E2B door's domain: requests to `{port}-{sandboxId}.{domain}` are E2B sandbox
    /// calls (the SDKs' `E2B_DOMAIN`). Unset: only the `E2b-Sandbox-*` headers address them.
    #[arg(long, env = "PYXIS_E2B_DOMAIN")]
    pub e2b_domain: Option<String>,
    /// Longest timeout an E2B sandbox may be given, in seconds (default 3600).
    #[arg(long, env = "PYXIS_E2B_MAX_TIMEOUT_S")]
    pub e2b_max_timeout_s: Option<u64>,
    /// The most network a client may ask for a session: `none`, `allow` (host names,
    /// `*.wildcards`, networks of its allow-list) or `public` (any public address).
    /// Default `allow`.
    #[arg(long, env = "PYXIS_EGRESS_MAX")]
    pub egress_max: Option<String>,
    /// A session's network when it asks for none: `none` (default), `public`, or
    /// `allow:pypi.org,*.pythonhosted.org,…`. At most `egress_max`.
    #[arg(long, env = "PYXIS_EGRESS_DEFAULT")]
    pub egress_default: Option<String>,
    /// Networks, addresses and `host:port`s the egress proxy may connect to although they
    /// are loopback, private or link-local (a session's policy must still name them). The
    /// server's own listen addresses are refused whatever this says.
    #[arg(long, env = "PYXIS_EGRESS_ALLOW")]
    pub egress_allow: Option<String>,
    /// Bytes one session may move through the egress proxy, in MiB (default 2048).
    #[arg(long, env = "PYXIS_EGRESS_MAX_MB")]
    pub egress_max_mb: Option<u64>,
    /// Connections one session may hold open through the egress proxy (default 64).
    #[arg(long, env = "PYXIS_EGRESS_MAX_CONNECTIONS")]
    pub egress_max_connections: Option<usize>,
    /// New egress connections per second one session may open, with bursts of five
    /// times as many (default 20).
    #[arg(long, env = "PYXIS_EGRESS_RATE")]
    pub egress_rate: Option<u32>,
    /// The PEP 503 simple index that sandboxes install from (through the server's
    /// mirror and wheel cache); default https://pypi.org/simple/. The session's policy
    /// must reach its host.
    #[arg(long, env = "PYXIS_PACKAGE_INDEX")]
    pub package_index: Option<String>,
    /// Largest package file the mirror downloads, in MiB (default 1024).
    #[arg(long, env = "PYXIS_PACKAGE_MAX_MB")]
    pub package_max_mb: Option<u64>,
    /// Time limit of one package install, in seconds (default 300).
    #[arg(long, env = "PYXIS_INSTALL_TIMEOUT_S")]
    pub install_timeout_s: Option<f64>,
    /// Install on import: `import=requirement` pairs (or bare names), comma-separated;
    /// a `ModuleNotFoundError` for one of them installs it and imports again. Off when
    /// empty (default).
    #[arg(long, env = "PYXIS_AUTO_INSTALL")]
    pub auto_install: Option<String>,
    /// Let clients install into the function runner's package set (`/api/pypkg/install`),
    /// used by every runner call. Off by default.
    #[arg(long, env = "PYXIS_RUNNER_PACKAGES")]
    pub runner_packages: Option<bool>,
}

/// The validated configuration. Each field is the setting of the same name in
/// [`Settings`] (documented there), in its unit: bytes, durations, parsed lists.
#[derive(Debug, Clone, Serialize)]
#[allow(missing_docs)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub runtime_dir: PathBuf,
    #[serde(skip)]
    pub token: Option<String>,
    pub sandbox_lib: PathBuf,
    pub pool_min_idle: usize,
    pub pool_max_idle: usize,
    pub pool_languages: Vec<crate::services::pool::PoolLanguage>,
    pub pool_max_bytes: u64,
    pub pool_shrink_after: Duration,
    pub zygotes: usize,
    pub max_sessions: usize,
    pub idle_timeout: Duration,
    pub exec_timeout: Duration,
    pub max_exec_timeout: Duration,
    pub interrupt_grace: Duration,
    pub zygote_ready_timeout: Duration,
    pub spawn_timeout: Duration,
    pub max_output_bytes: u64,
    pub max_queue: usize,
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_millicores: u64,
    pub disk_bytes: u64,
    pub tmp_bytes: u64,
    pub max_body_bytes: usize,
    pub uid_base: u32,
    pub files_scan_max_entries: usize,
    pub files_scan_max_depth: usize,
    pub files_list_max_entries: usize,
    pub import_allow: Vec<crate::services::url_import::Cidr>,
    pub import_timeout: Duration,
    pub import_max_bytes: u64,
    pub export_timeout: Duration,
    pub cgroup_favordynmods: bool,
    pub sandbox_cpu_weight: u64,
    pub compat_open_pool_api: bool,
    pub compat_public_base_url: Option<String>,
    pub compat_output_extensions: Vec<String>,
    pub compat_store_ttl: Duration,
    pub compat_store_max_bytes: u64,
    pub history_max_bytes: u64,
    pub header_timeout: Duration,
    pub conn_idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub keys_file: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub e2b_domain: Option<String>,
    pub e2b_max_timeout: Duration,
    pub egress: crate::services::egress::EgressSettings,
}

const MIB: u64 = 1024 * 1024;
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/pyxis";
/// Default runtime directory.
pub const DEFAULT_RUNTIME_DIR: &str = "/opt/pyxis/runtime";

impl Settings {
    /// Fill every field not set by flags or environment from `other`.
    fn or(self, other: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: self.$f.or(other.$f)),* } };
        }
        pick!(
            listen,
            data_dir,
            runtime_dir,
            token,
            sandbox_lib,
            pool_min_idle,
            pool_max_idle,
            pool_languages,
            pool_max_mb,
            pool_shrink_s,
            zygotes,
            max_sessions,
            idle_timeout_s,
            exec_timeout_s,
            max_exec_timeout_s,
            interrupt_grace_s,
            zygote_ready_timeout_s,
            spawn_timeout_s,
            max_output_bytes,
            max_queue,
            memory_mb,
            pids,
            cpus,
            disk_mb,
            tmp_mb,
            max_body_bytes,
            uid_base,
            files_scan_max_entries,
            files_scan_max_depth,
            files_list_max_entries,
            import_allow,
            import_timeout_s,
            import_max_mb,
            export_timeout_s,
            cgroup_favordynmods,
            sandbox_cpu_weight,
            compat_open_pool_api,
            compat_public_base_url,
            compat_output_extensions,
            compat_store_ttl_s,
            compat_store_max_mb,
            history_max_kb,
            header_timeout_s,
            conn_idle_timeout_s,
            max_connections,
            max_connections_per_peer,
            keys_file,
            metrics_listen,
            e2b_domain,
            e2b_max_timeout_s,
            egress_max,
            egress_default,
            egress_allow,
            egress_max_mb,
            egress_max_connections,
            egress_rate,
            package_index,
            package_max_mb,
            install_timeout_s,
            auto_install,
            runner_packages
        )
    }
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(v) {
        Ok(d) if v > 0.0 => Ok(d),
        _ => bail!("{name} must be a positive number of seconds"),
    }
}

impl Config {
    /// A session's limits when its request names none: the configured memory,
    /// pids and CPU.
    pub fn default_limits(&self) -> pyxis_sandbox::ResourceLimits {
        pyxis_sandbox::ResourceLimits {
            memory_bytes: self.memory_bytes,
            pids: self.pids,
            cpu_millicores: self.cpu_millicores,
        }
    }

    /// The sandbox's init program, which the zygote starts from beside the library.
    pub fn sandbox_init(&self) -> PathBuf {
        self.sandbox_lib.with_file_name("pyxis-sandbox-init")
    }

    /// The join path's program (contexts, commands, pooled JavaScript kernels), beside the
    /// library too.
    pub fn sandbox_exec(&self) -> PathBuf {
        self.sandbox_lib.with_file_name("pyxis-sandbox-exec")
    }

    /// Merge flags/environment with the TOML file (if any) and validate.
    pub fn load(args: Settings, file: Option<&Path>) -> anyhow::Result<Config> {
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<Settings>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Settings::default(),
        };
        Self::validate(args.or(from_file))
    }

    fn validate(s: Settings) -> anyhow::Result<Config> {
        let sandbox_lib = match s.sandbox_lib {
            Some(p) => p,
            None => std::env::current_exe()
                .context("locating the executable")?
                .with_file_name("libpyxis_sandbox.so"),
        };
        let cpus = s.cpus.unwrap_or(1.0);
        if !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0) {
            bail!("cpus must be between 0 and 1024");
        }
        let sandbox_cpu_weight = s.sandbox_cpu_weight.unwrap_or(800);
        if !(1..=10_000).contains(&sandbox_cpu_weight) {
            bail!("sandbox_cpu_weight must be between 1 and 10000");
        }
        let max_sessions = s.max_sessions.unwrap_or(64);
        if max_sessions == 0 {
            bail!("max_sessions must be at least 1");
        }
        let egress =
            crate::services::egress::EgressSettings::parse(crate::services::egress::EgressInput {
                max: s.egress_max,
                default: s.egress_default,
                allow: s.egress_allow,
                max_mb: s.egress_max_mb,
                max_connections: s.egress_max_connections,
                rate: s.egress_rate,
                package_index: s.package_index,
                package_max_mb: s.package_max_mb,
                install_timeout_s: s.install_timeout_s,
                auto_install: s.auto_install,
                runner_packages: s.runner_packages,
            })?;
        let pool_min_idle = s.pool_min_idle.unwrap_or(2);
        // A pool turned off (minimum 0) does not grow unless a maximum is set.
        let pool_max_idle = s.pool_max_idle.unwrap_or(if pool_min_idle == 0 {
            0
        } else {
            pool_min_idle.max(32)
        });
        if pool_max_idle < pool_min_idle {
            bail!(
                "pool_max_idle ({pool_max_idle}) must be at least pool_min_idle ({pool_min_idle})"
            );
        }
        // One lane per language; `pool_min_idle`/`pool_max_idle` below are their totals.
        let pool_languages = crate::services::pool::parse_pool_languages(
            s.pool_languages.as_deref().unwrap_or("python"),
            pool_min_idle,
            s.pool_max_idle,
        )?;
        let pool_min_idle = pool_languages.iter().map(|l| l.min_idle).sum();
        let pool_max_idle = pool_languages.iter().map(|l| l.max_idle).sum();
        let zygotes = match s.zygotes {
            Some(n) if (1..=crate::sandboxes::zygote::MAX_ZYGOTES).contains(&n) => n,
            Some(n) => bail!(
                "zygotes must be between 1 and {} (got {n})",
                crate::sandboxes::zygote::MAX_ZYGOTES
            ),
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(crate::sandboxes::zygote::MAX_ZYGOTES),
        };
        let cfg = Config {
            listen: s
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir: s.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            runtime_dir: s.runtime_dir.unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into()),
            token: s.token.filter(|t| !t.is_empty()),
            sandbox_lib,
            pool_min_idle,
            pool_max_idle,
            pool_languages,
            pool_max_bytes: s.pool_max_mb.unwrap_or(512) * MIB,
            pool_shrink_after: secs("pool_shrink_s", s.pool_shrink_s.unwrap_or(60.0))?,
            zygotes,
            max_sessions,
            idle_timeout: Duration::from_secs(s.idle_timeout_s.unwrap_or(1800).max(1)),
            exec_timeout: secs("exec_timeout_s", s.exec_timeout_s.unwrap_or(60.0))?,
            max_exec_timeout: secs("max_exec_timeout_s", s.max_exec_timeout_s.unwrap_or(600.0))?,
            interrupt_grace: secs("interrupt_grace_s", s.interrupt_grace_s.unwrap_or(2.0))?,
            zygote_ready_timeout: secs(
                "zygote_ready_timeout_s",
                s.zygote_ready_timeout_s.unwrap_or(180.0),
            )?,
            spawn_timeout: secs("spawn_timeout_s", s.spawn_timeout_s.unwrap_or(30.0))?,
            max_output_bytes: s.max_output_bytes.unwrap_or(4 * MIB),
            max_queue: s.max_queue.unwrap_or(8),
            memory_bytes: s.memory_mb.unwrap_or(1024) * MIB,
            pids: s.pids.unwrap_or(256),
            cpu_millicores: (cpus * 1000.0).round() as u64,
            disk_bytes: s.disk_mb.unwrap_or(512) * MIB,
            tmp_bytes: s.tmp_mb.unwrap_or(256) * MIB,
            max_body_bytes: s.max_body_bytes.unwrap_or(16 * MIB as usize),
            uid_base: s.uid_base.unwrap_or(200_000),
            files_scan_max_entries: s.files_scan_max_entries.unwrap_or(1000),
            files_scan_max_depth: s.files_scan_max_depth.unwrap_or(16).max(1),
            files_list_max_entries: s.files_list_max_entries.unwrap_or(10_000).max(1),
            import_allow: s
                .import_allow
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(crate::services::url_import::Cidr::parse)
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("import_allow: {e}"))?,
            import_timeout: secs("import_timeout_s", s.import_timeout_s.unwrap_or(60.0))?,
            import_max_bytes: s.import_max_mb.unwrap_or(512) * MIB,
            export_timeout: secs("export_timeout_s", s.export_timeout_s.unwrap_or(300.0))?,
            cgroup_favordynmods: s.cgroup_favordynmods.unwrap_or(true),
            sandbox_cpu_weight,
            compat_open_pool_api: s.compat_open_pool_api.unwrap_or(false),
            compat_public_base_url: s
                .compat_public_base_url
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty()),
            compat_output_extensions: s
                .compat_output_extensions
                .as_deref()
                .unwrap_or("md,csv,txt,json,log")
                .split(',')
                .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
            compat_store_ttl: Duration::from_secs(s.compat_store_ttl_s.unwrap_or(86_400).max(1)),
            compat_store_max_bytes: s.compat_store_max_mb.unwrap_or(1024) * MIB,
            history_max_bytes: s.history_max_kb.unwrap_or(1024) * 1024,
            header_timeout: secs("header_timeout_s", s.header_timeout_s.unwrap_or(10.0))?,
            conn_idle_timeout: secs("conn_idle_timeout_s", s.conn_idle_timeout_s.unwrap_or(60.0))?,
            max_connections: s.max_connections.unwrap_or(4096).max(1),
            max_connections_per_peer: s.max_connections_per_peer.unwrap_or(1024),
            keys_file: s.keys_file,
            metrics_listen: s.metrics_listen,
            e2b_domain: s
                .e2b_domain
                .map(|d| d.trim().trim_matches('.').to_ascii_lowercase())
                .filter(|d| !d.is_empty()),
            e2b_max_timeout: Duration::from_secs(s.e2b_max_timeout_s.unwrap_or(3600).max(1)),
            egress,
        };
        if cfg.memory_bytes < 64 * MIB {
            bail!("memory_mb must be at least 64");
        }
        if cfg.pids < 8 {
            bail!("pids must be at least 8");
        }
        // The sandbox builds these itself, so the runtime cannot be bound there.
        for reserved in ["/tmp", "/dev", "/proc", "/sys", "/workspace"] {
            if cfg.runtime_dir.starts_with(reserved) || cfg.runtime_dir == Path::new("/") {
                bail!(
                    "runtime_dir {} must not be / or under {reserved}: sandboxes mount their own there",
                    cfg.runtime_dir.display()
                );
            }
        }
        if !cfg.runtime_dir.is_absolute() || !cfg.data_dir.is_absolute() {
            bail!("data_dir and runtime_dir must be absolute paths");
        }
        if cfg.uid_base < 1000 {
            bail!("uid_base must be at least 1000: sandboxes never share a system uid");
        }
        Ok(cfg)
    }

    /// Where the API token is stored when it is generated.
    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join("token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pyxis.toml");
        std::fs::write(&file, "max_sessions = 7\nmemory_mb = 300\n").unwrap();
        let args = Settings {
            memory_mb: Some(200),
            ..Default::default()
        };
        let cfg = Config::load(args, Some(&file)).unwrap();
        assert_eq!(cfg.max_sessions, 7);
        assert_eq!(cfg.memory_bytes, 200 * MIB);
        assert_eq!(cfg.pids, 256);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pyxis.toml");
        std::fs::write(&file, "max_sesions = 7\n").unwrap();
        assert!(Config::load(Settings::default(), Some(&file)).is_err());
        let args = Settings {
            cpus: Some(-1.0),
            ..Default::default()
        };
        assert!(Config::load(args, None).is_err());
        for weight in [0, 10_001] {
            let args = Settings {
                sandbox_cpu_weight: Some(weight),
                ..Default::default()
            };
            assert!(Config::load(args, None).is_err(), "weight {weight}");
        }
        let cfg = Config::load(Settings::default(), None).unwrap();
        assert_eq!(cfg.sandbox_cpu_weight, 800);
    }

    #[test]
    fn the_zygote_ready_timeout_is_a_positive_setting_of_180_s_by_default() {
        let cfg = Config::load(Settings::default(), None).unwrap();
        assert_eq!(cfg.zygote_ready_timeout, Duration::from_secs(180));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pyxis.toml");
        std::fs::write(&file, "zygote_ready_timeout_s = 900\n").unwrap();
        let cfg = Config::load(Settings::default(), Some(&file)).unwrap();
        assert_eq!(cfg.zygote_ready_timeout, Duration::from_secs(900));
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            let args = Settings {
                zygote_ready_timeout_s: Some(bad),
                ..Default::default()
            };
            assert!(Config::load(args, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_spawn_timeout_is_a_positive_setting_of_30_s_by_default() {
        let cfg = Config::load(Settings::default(), None).unwrap();
        assert_eq!(cfg.spawn_timeout, Duration::from_secs(30));
        let args = Settings {
            spawn_timeout_s: Some(300.0),
            ..Default::default()
        };
        assert_eq!(
            Config::load(args, None).unwrap().spawn_timeout,
            Duration::from_secs(300)
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e30] {
            let args = Settings {
                spawn_timeout_s: Some(bad),
                ..Default::default()
            };
            assert!(Config::load(args, None).is_err(), "{bad}");
        }
    }
}
