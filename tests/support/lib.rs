//! Helpers for black-box tests: start a real `pyxis` server on a random
//! loopback port with its own data directory, and talk to it over HTTP.
//!
//! The server binary is `target/<profile>/pyxis` of this workspace (or
//! `$PYXIS_BIN`); the Python runtime is the shared one in
//! `/opt/pyxis/runtime` (or `$PYXIS_RUNTIME_DIR`), installed by `pyxis setup`
//! before the tests run.

pub mod packages;
pub mod procfs;
pub mod tenants;

pub use procfs::{processes_with_cmdline, processes_with_uid};

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

/// A setting of [`TestServer::start`] that is not passed to the server: its value is a file
/// the server's stderr (its log) goes to.
pub const STDERR_TO: &str = "PYXIS_TEST_STDERR_TO";

/// A setting of [`TestServer::start`] that is not passed to the server: the server is
/// started with this `RLIMIT_NOFILE`, soft and hard (so it cannot raise it).
pub const OPEN_FILES: &str = "PYXIS_TEST_OPEN_FILES";

/// A running server.
pub struct TestServer {
    /// Base URL, e.g. `http://127.0.0.1:12345`.
    pub base: String,
    /// The API token.
    pub token: String,
    /// The data directory (kept until drop).
    pub data_dir: PathBuf,
    /// First uid of its sandboxes.
    pub uid_base: u32,
    pid: i32,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    _uids: UidSlot,
    client: Client,
}

/// How many 1,000-uid ranges the test servers draw from (from uid 300,000).
const UID_SLOTS: u32 = 500;

/// A range of 1,000 sandbox uids that no other live test server uses, in this process or
/// in another test binary running beside it: two servers sharing uids would see (and
/// could signal) each other's sandboxes. Held by an exclusive `flock` on a per-range file
/// for the server's life; the kernel drops it when the process ends, however it ends.
struct UidSlot {
    base: u32,
    _lock: std::fs::File,
}

impl UidSlot {
    fn claim() -> UidSlot {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join("pyxis-test-uid-slots");
        std::fs::create_dir_all(&dir).expect("the uid slots' directory");
        let mut rng = rand::thread_rng();
        for _ in 0..10 * UID_SLOTS {
            let slot = rng.gen_range(0..UID_SLOTS);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(slot.to_string()))
                .expect("a uid slot's lock file");
            // SAFETY: flock(2) on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return UidSlot {
                    base: 300_000 + slot * 1000,
                    _lock: file,
                };
            }
        }
        panic!("no free uid range for a test server ({UID_SLOTS} ranges, all in use)");
    }
}

/// Path of the built `pyxis` binary.
pub fn pyxis_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PYXIS_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target.join(profile).join("pyxis")
}

/// How many times slower than this project's usual host the tests' host is:
/// `PYXIS_TEST_TIME_SCALE` (a number ≥ 1, default 1). The cgroup v2 guest under software
/// emulation sets it (scripts/vm/run-v2). Every wait and time limit of this harness is
/// multiplied by it — the server's readiness, the client's timeout, a session's creation, the
/// zygote's start (`PYXIS_ZYGOTE_READY_TIMEOUT_S`) and the cell timeout a test gives a server
/// (`PYXIS_EXEC_TIMEOUT_S`) — and tests pass their own time bounds through [`scaled`].
/// A value that is not a number ≥ 1 is refused with a panic that names it.
pub fn time_scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| parse_time_scale(std::env::var("PYXIS_TEST_TIME_SCALE").ok().as_deref()))
}

fn parse_time_scale(v: Option<&str>) -> f64 {
    match v.map(str::trim) {
        None | Some("") => 1.0,
        Some(text) => match text.parse::<f64>() {
            Ok(k) if k.is_finite() && (1.0..=100.0).contains(&k) => k,
            _ => panic!("PYXIS_TEST_TIME_SCALE={text:?}: expected a number from 1 to 100"),
        },
    }
}

/// Runs `pyxis serve` with `envs` (on `127.0.0.1:0`, stdout discarded) expecting it to stop
/// by itself within 60 s (scaled), as a server refusing its configuration does: its exit
/// status and stderr, or `None` (the server killed) if it was still running.
pub fn serve_until_it_stops(
    envs: &[(&str, &std::ffi::OsStr)],
) -> Option<(std::process::ExitStatus, String)> {
    let mut child = Command::new(pyxis_bin())
        .arg("serve")
        .env("PYXIS_LISTEN", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pyxis");
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    let code = loop {
        if let Some(code) = child.try_wait().expect("wait") {
            break code;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    Some((code, err))
}

/// `d` stretched by [`time_scale`]: a time bound that holds on this project's usual host,
/// as it holds on a slower one.
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(time_scale())
}

/// Server settings that are time limits the tests wait within (seconds): scaled with the
/// host, unlike limits whose effect a test measures.
const SCALED_SETTINGS: &[&str] = &["PYXIS_EXEC_TIMEOUT_S", "PYXIS_ZYGOTE_READY_TIMEOUT_S"];

/// The zygote's ready timeout of the server (`PYXIS_ZYGOTE_READY_TIMEOUT_S`'s default).
const ZYGOTE_READY_TIMEOUT_S: f64 = 180.0;

/// The server's connection and spawn timeouts and their defaults: on a slower host (a time
/// scale over one) a server gets them scaled unless the test sets them, so that a
/// keep-alive connection the client pools for a while (reqwest: 90 s) is not closed under
/// it mid-test, and a sandbox's setup under an emulated host's load is not cut short.
const SCALED_DEFAULTS: &[(&str, f64)] = &[
    ("PYXIS_HEADER_TIMEOUT_S", 10.0),
    ("PYXIS_CONN_IDLE_TIMEOUT_S", 60.0),
    ("PYXIS_SPAWN_TIMEOUT_S", 30.0),
];

/// How long the tests' HTTP clients keep an idle connection: under the server's header
/// timeout (which also bounds an idle keep-alive connection, as in hyper), so that a
/// request never races the server closing the connection it was written to.
pub fn client_pool_idle() -> Duration {
    scaled(Duration::from_secs(5))
}

/// `value` of the setting `key`, scaled when it is one of [`SCALED_SETTINGS`].
fn scaled_setting(key: &str, value: &str) -> String {
    if !SCALED_SETTINGS.contains(&key) {
        return value.to_string();
    }
    match value.parse::<f64>() {
        Ok(secs) => format!("{}", secs * time_scale()),
        Err(_) => value.to_string(),
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Spawn processes from one thread that lives as long as the test binary, so
/// `PR_SET_PDEATHSIG` (which fires when the spawning *thread* exits) only fires
/// when the whole test process ends — then servers get SIGTERM and clean up.
fn spawn_detached(mut cmd: Command) -> Child {
    static SPAWNER: OnceLock<mpsc::Sender<(Command, mpsc::Sender<Child>)>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, mpsc::Sender<Child>)>();
        std::thread::spawn(move || {
            for (mut cmd, back) in rx {
                // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
                let child = cmd.spawn().expect("spawn pyxis");
                let _ = back.send(child);
            }
            // Keep the thread (and so the servers) alive until the process ends.
            loop {
                std::thread::park();
            }
        });
        tx
    });
    let (back_tx, back_rx) = mpsc::channel();
    // Move the command to the spawner thread.
    let owned = std::mem::replace(&mut cmd, Command::new("true"));
    tx.send((owned, back_tx)).expect("spawner thread alive");
    back_rx.recv().expect("spawned")
}

impl TestServer {
    /// Start a server with extra `PYXIS_*` settings.
    pub fn start(settings: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("pyxis-test-")
            .tempdir()
            .expect("tempdir");
        let data_dir = dir.path().to_path_buf();
        let mut s = Self::start_in(data_dir, settings);
        s._dir = Some(dir);
        s
    }

    /// Start a server on an existing data directory.
    pub fn start_in(data_dir: PathBuf, settings: &[(&str, &str)]) -> TestServer {
        // The port is free when chosen, but another server starting at the same moment may
        // take it first: ours then exits (address in use) and the other one answers. Such
        // a start is tried again on another port.
        let mut attempt = 1;
        loop {
            match Self::try_start_in(data_dir.clone(), settings) {
                Ok(server) => return server,
                Err(why) if attempt < 3 => {
                    eprintln!("test server start {attempt} failed ({why}); again on another port");
                    attempt += 1;
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    fn try_start_in(data_dir: PathBuf, settings: &[(&str, &str)]) -> Result<TestServer, String> {
        let port = free_port();
        let token = format!("test-token-{}", rand::thread_rng().gen::<u64>());
        let uids = UidSlot::claim();
        let uid_base = uids.base;
        let mut cmd = Command::new(pyxis_bin());
        cmd.arg("serve")
            .env("PYXIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("PYXIS_DATA_DIR", &data_dir)
            .env("PYXIS_TOKEN", &token)
            .env("PYXIS_UID_BASE", uid_base.to_string())
            .env("PYXIS_POOL_MIN_IDLE", "1")
            .env("PYXIS_TEST_SECRET", "s3cr3t-host-environment-value")
            .env(
                "PYXIS_ZYGOTE_READY_TIMEOUT_S",
                scaled_setting(
                    "PYXIS_ZYGOTE_READY_TIMEOUT_S",
                    &ZYGOTE_READY_TIMEOUT_S.to_string(),
                ),
            )
            .stdin(Stdio::null());
        if time_scale() > 1.0 {
            for (key, default) in SCALED_DEFAULTS {
                cmd.env(key, format!("{}", default * time_scale()));
            }
        }
        if std::env::var_os("PYXIS_TEST_QUIET").is_some() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        for (k, v) in settings {
            // Not a server setting: where the test wants the server's log.
            if *k == STDERR_TO {
                let log = std::fs::File::create(v).expect("create the server log");
                cmd.stderr(log);
                continue;
            }
            if *k == OPEN_FILES {
                let limit: libc::rlim_t = v.parse().expect("a number of open files");
                // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
                unsafe {
                    cmd.pre_exec(move || {
                        let lim = libc::rlimit {
                            rlim_cur: limit,
                            rlim_max: limit,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
                continue;
            }
            cmd.env(k, scaled_setting(k, v));
        }
        let child = spawn_detached(cmd);
        let pid = child.id() as i32;
        let mut server = TestServer {
            base: format!("http://127.0.0.1:{port}"),
            token,
            data_dir,
            uid_base,
            pid,
            child: Some(child),
            _dir: None,
            _uids: uids,
            client: Client::builder()
                .timeout(scaled(Duration::from_secs(120)))
                .pool_idle_timeout(client_pool_idle())
                .build()
                .expect("client"),
        };
        server.wait_ready(scaled(Duration::from_secs(300)))?;
        Ok(server)
    }

    /// The server shared by the tests that need no special settings.
    pub fn shared() -> &'static TestServer {
        static SHARED: OnceLock<TestServer> = OnceLock::new();
        SHARED.get_or_init(|| TestServer::start(&[("PYXIS_POOL_MIN_IDLE", "2")]))
    }

    /// Waits until `/healthz` answers; a server that exits first fails at once (with its
    /// exit status) rather than after `limit`.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.client.get(format!("{}/healthz", self.base)).send() {
                // Healthy, and ours: another server on this port would not know our token.
                let ours = self
                    .req(reqwest::Method::GET, "/v1/status")
                    .send()
                    .is_ok_and(|r| r.status().is_success());
                if r.status().is_success() && ours {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(exit))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "the server exited before it became healthy ({exit}); its log is above"
                ));
            }
            assert!(
                start.elapsed() < limit,
                "server did not become healthy within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Kill the server with SIGKILL (no cleanup) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A request builder with the token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }

    /// A request builder without any token.
    pub fn anon(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
    }

    /// GET with the token.
    pub fn get(&self, path: &str) -> Response {
        self.req(reqwest::Method::GET, path).send().expect("GET")
    }

    /// POST JSON with the token.
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .expect("POST")
    }

    /// DELETE with the token.
    pub fn delete(&self, path: &str) -> Response {
        self.req(reqwest::Method::DELETE, path)
            .send()
            .expect("DELETE")
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Send a request over a plain TCP connection and return the status and
    /// the body. For paths an HTTP client would normalize (`..`, `%2e%2e`).
    pub fn raw(&self, method: &str, target: &str, body: &[u8]) -> (u16, String) {
        self.raw_with(
            method,
            target,
            &format!("Content-Length: {}\r\n", body.len()),
            body.to_vec(),
        )
    }

    /// Like [`TestServer::raw`] with the given header lines (each ending in
    /// CRLF) instead of `Content-Length`. The body is written from another
    /// thread, ignoring write errors, so an early answer (the server refusing
    /// a body it did not read) is still seen.
    pub fn raw_with(
        &self,
        method: &str,
        target: &str,
        headers: &str,
        body: Vec<u8>,
    ) -> (u16, String) {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.addr()).expect("connect");
        conn.set_read_timeout(Some(scaled(Duration::from_secs(60))))
            .expect("timeout");
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n{headers}\r\n",
            self.addr(),
            self.token,
        );
        conn.write_all(head.as_bytes()).expect("write head");
        let mut writer = conn.try_clone().expect("clone");
        let t = std::thread::spawn(move || {
            let _ = writer.write_all(&body);
        });
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out);
        let _ = conn.shutdown(std::net::Shutdown::Both);
        let _ = t.join();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Resident memory of the server in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        procfs::vm_rss_kib(self.pid).expect("VmRSS of the server")
    }

    /// Create a session with `body` and return its id.
    pub fn session_with(&self, body: Value) -> Session<'_> {
        let r = self.post("/v1/sessions", &body);
        let status = r.status();
        let v: Value = r.json().expect("json");
        assert_eq!(status, 201, "create session: {v}");
        Session {
            server: self,
            id: v["id"].as_str().expect("id").to_string(),
        }
    }

    /// Create a session with default settings.
    pub fn session(&self) -> Session<'_> {
        self.session_with(json!({}))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + scaled(Duration::from_secs(20));
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A session of a test server; released on drop.
pub struct Session<'a> {
    /// The server.
    pub server: &'a TestServer,
    /// Session id.
    pub id: String,
}

impl Session<'_> {
    /// Run a cell and return the Execution JSON (asserting HTTP 200).
    pub fn exec(&self, code: &str) -> Value {
        self.exec_with(json!({ "code": code }))
    }

    /// Run a cell with a full request body.
    pub fn exec_with(&self, body: Value) -> Value {
        let r = self
            .server
            .post(&format!("/v1/sessions/{}/execute", self.id), &body);
        let status = r.status();
        let v: Value = r.json().expect("execution json");
        assert_eq!(status, 200, "execute: {v}");
        v
    }

    /// The URL path of a workspace file of this session.
    pub fn file_url(&self, path: &str) -> String {
        format!("/v1/sessions/{}/files/{path}", self.id)
    }

    /// PUT a workspace file.
    pub fn put_file(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> Response {
        self.server
            .req(reqwest::Method::PUT, &self.file_url(path))
            .body(body)
            .send()
            .expect("PUT file")
    }

    /// GET a workspace file.
    pub fn get_file(&self, path: &str) -> Response {
        self.server.get(&self.file_url(path))
    }

    /// List a workspace directory; returns status and JSON.
    pub fn list_files(&self, dir: &str) -> (u16, Value) {
        let r = self
            .server
            .req(
                reqwest::Method::GET,
                &format!("/v1/sessions/{}/files", self.id),
            )
            .query(&[("path", dir)])
            .send()
            .expect("list files");
        let status = r.status().as_u16();
        (status, r.json().expect("json"))
    }

    /// Run a cell that must succeed; returns its stdout.
    pub fn ok(&self, code: &str) -> String {
        let v = self.exec(code);
        assert_eq!(v["status"], "ok", "cell failed: {code}\n{v:#}");
        v["stdout"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self
            .server
            .req(
                reqwest::Method::DELETE,
                &format!("/v1/sessions/{}", self.id),
            )
            .send();
    }
}

/// The virtual environment with moto's S3-compatible server: `$PYXIS_TEST_MOTO`
/// (set by `scripts/test`), else `devtools-moto` in the runtime directory,
/// installed there from PyPI on first use if missing.
pub fn moto_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = match std::env::var_os("PYXIS_TEST_MOTO") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(
                std::env::var_os("PYXIS_RUNTIME_DIR")
                    .unwrap_or_else(|| "/opt/pyxis/runtime".into()),
            )
            .join("devtools-moto"),
        };
        if !venv.join("bin/moto_server").exists() {
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success())
                && Command::new(venv.join("bin/pip"))
                    .args([
                        "install",
                        "-q",
                        "--disable-pip-version-check",
                        "moto[server]",
                    ])
                    .status()
                    .is_ok_and(|s| s.success());
            assert!(ok, "cannot install moto[server] into {}", venv.display());
        }
        venv
    })
    .clone()
}

/// moto's S3 server on a random loopback port (killed on drop). It takes
/// unsigned requests; presigned URLs come from boto3 of the same venv.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    child: Option<Child>,
    client: Client,
}

impl S3Server {
    /// Start it and wait until it answers.
    pub fn start() -> S3Server {
        let venv = moto_venv();
        let port = free_port();
        let mut cmd = Command::new(venv.join("bin/moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_detached(cmd);
        let s = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            client: Client::builder()
                .no_proxy()
                .timeout(scaled(Duration::from_secs(60)))
                .build()
                .expect("client"),
        };
        let start = Instant::now();
        while s.client.get(&s.endpoint).send().is_err() {
            assert!(
                start.elapsed() < scaled(Duration::from_secs(60)),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// Create a bucket (an unsigned PUT).
    pub fn create_bucket(&self, bucket: &str) {
        let r = self
            .client
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// Status and bytes of an object (a GET of a presigned URL).
    pub fn get_object(&self, bucket: &str, key: &str) -> (u16, Vec<u8>) {
        let url = self.boto3(&format!(
            "s3.generate_presigned_url('get_object', Params={{'Bucket': '{bucket}', 'Key': '{key}'}}, ExpiresIn=600)"
        ));
        let r = self
            .client
            .get(url.as_str().expect("url"))
            .send()
            .expect("get object");
        let status = r.status().as_u16();
        (status, r.bytes().expect("object body").to_vec())
    }

    fn boto3(&self, expr: &str) -> Value {
        let script = format!(
            "import boto3, json\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1',\n\
                 aws_access_key_id='test', aws_secret_access_key='test')\n\
             print(json.dumps({expr}))\n",
            self.endpoint
        );
        let out = Command::new(moto_venv().join("bin/python"))
            .args(["-c", &script])
            .env_remove("AWS_PROFILE")
            .output()
            .expect("run boto3");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("boto3 json")
    }

    /// A presigned PUT URL for `bucket/key`.
    pub fn presign_put(&self, bucket: &str, key: &str) -> String {
        self.boto3(&format!(
            "s3.generate_presigned_url('put_object', Params={{'Bucket': '{bucket}', 'Key': '{key}'}}, ExpiresIn=600)"
        ))
        .as_str()
        .expect("url")
        .to_string()
    }

    /// A presigned POST for `bucket/key`: `{"url", "fields"}`.
    pub fn presign_post(&self, bucket: &str, key: &str) -> Value {
        self.boto3(&format!(
            "s3.generate_presigned_post('{bucket}', '{key}', ExpiresIn=600)"
        ))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_scale_is_one_unless_set_and_refuses_nonsense() {
        assert_eq!(parse_time_scale(None), 1.0);
        assert_eq!(parse_time_scale(Some("")), 1.0);
        assert_eq!(parse_time_scale(Some(" 4 ")), 4.0);
        assert_eq!(parse_time_scale(Some("2.5")), 2.5);
        for bad in ["0", "0.5", "-3", "nan", "inf", "1e9", "fast"] {
            let r = std::panic::catch_unwind(|| parse_time_scale(Some(bad)));
            assert!(r.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn only_the_waited_for_settings_scale() {
        // time_scale() is 1 in the unit tests unless the environment says otherwise.
        let k = time_scale();
        assert_eq!(
            scaled_setting("PYXIS_EXEC_TIMEOUT_S", "30"),
            format!("{}", 30.0 * k)
        );
        assert_eq!(scaled_setting("PYXIS_INTERRUPT_GRACE_S", "2"), "2");
        assert_eq!(scaled_setting("PYXIS_MEMORY_MB", "384"), "384");
        assert_eq!(scaled_setting("PYXIS_EXEC_TIMEOUT_S", "soon"), "soon");
        assert_eq!(
            scaled(Duration::from_secs(2)),
            Duration::from_secs(2).mul_f64(k)
        );
    }
}
