//! Starting and stopping a `pyxis serve` of our own on a random loopback port
//! with a temporary data directory.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;

use crate::client::Api;

/// The settings that differ between workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    pub pool_min_idle: u32,
    pub max_sessions: u32,
    /// With the loopback package index and web server of the `packages` rows.
    pub packages: bool,
    /// With a JavaScript lane in the warm pool (`PYXIS_POOL_LANGUAGES=python,javascript`).
    pub js_pool: bool,
}

/// A running server we started.
pub struct OwnServer {
    pub cfg: ServerConfig,
    pub api: Api,
    pub uid_base: u32,
    pub pid: i32,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Sandbox uids are `uid_base + slot`; slots stay below this.
pub const UID_SPAN: u32 = 4096;

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl OwnServer {
    /// Start `bin serve` and wait until `/readyz` answers.
    ///
    /// Must be called from the thread that lives for the whole run (the main
    /// thread): the server gets `PR_SET_PDEATHSIG=SIGTERM`, which fires when
    /// the spawning thread exits.
    pub async fn start(bin: &Path, cfg: ServerConfig) -> Result<OwnServer> {
        if !bin.exists() {
            bail!(
                "server binary {} not found (build it: cargo build --release --workspace)",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("pyxis-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        let data_dir = dir.path().join("data");
        let log = dir.path().join("server.log");
        let port = free_port()?;
        let mut rng = rand::thread_rng();
        let token = format!("bench-{:032x}", rng.gen::<u128>());
        // Far from the default (200000) and from the black-box tests' range
        // (300000..800000), so other servers' sandboxes are not counted.
        let uid_base = 1_000_000 + rng.gen_range(0..1000u32) * UID_SPAN;
        let out = File::create(&log).context("creating the server log")?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("PYXIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("PYXIS_DATA_DIR", &data_dir)
            .env("PYXIS_TOKEN", &token)
            .env("PYXIS_UID_BASE", uid_base.to_string())
            .env("PYXIS_POOL_MIN_IDLE", cfg.pool_min_idle.to_string())
            .env("PYXIS_MAX_SESSIONS", cfg.max_sessions.to_string())
            .env(
                "PYXIS_POOL_LANGUAGES",
                if cfg.js_pool {
                    "python,javascript"
                } else {
                    "python"
                },
            )
            .envs(if cfg.packages {
                crate::packages::server_env()
            } else {
                Vec::new()
            })
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id() as i32;
        let api = Api::new(&format!("http://127.0.0.1:{port}"), &token)?;
        let mut server = OwnServer {
            cfg,
            api,
            uid_base,
            pid,
            child,
            log,
            _dir: dir,
        };
        eprintln!(
            "[bench] started {} (pid {pid}, port {port}, pool {}, max sessions {}, uid base {uid_base})",
            bin.display(),
            cfg.pool_min_idle,
            cfg.max_sessions
        );
        if let Err(e) = server.wait_ready(Duration::from_secs(600)).await {
            let log_tail = tail(&server.log, 30);
            server.stop().await;
            bail!("{e:#}\n--- server log (tail) ---\n{log_tail}");
        }
        Ok(server)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut said = false;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited during start-up ({status})");
            }
            if self.api.probe("/readyz").await {
                eprintln!(
                    "[bench] server ready after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("the server was not ready after {limit:?}");
            }
            if !said && start.elapsed() > Duration::from_secs(15) {
                eprintln!("[bench] waiting for the server to become ready (first start may set up the runtime)…");
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, wait up to 20 s, then SIGKILL; then make sure nothing the
    /// server left mounted keeps our temporary directory from going away.
    pub async fn stop(mut self) {
        // SAFETY: plain kill(2) on the pid of our own, not yet reaped child.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
        let start = Instant::now();
        let mut exited = false;
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !exited {
            eprintln!(
                "[bench] server pid {} ignored SIGTERM for 20 s; killing it",
                self.pid
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.unmount_leftovers();
    }

    /// Detach whatever is still mounted under our temporary directory after
    /// the server exited (a server bug, reported on stderr).
    fn unmount_leftovers(&self) {
        let dir = self._dir.path().to_string_lossy().into_owned();
        let prefix = format!("{dir}/");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut left: Vec<String> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        // Deepest first.
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &left {
            eprintln!(
                "[bench] server (pid {}) left {m} mounted after it exited; detaching it",
                self.pid
            );
            if let Ok(c) = std::ffi::CString::new(m.as_str()) {
                // SAFETY: umount2 with a valid NUL-terminated path.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}
