//! Issue 15, point 5: the warm pool serves JavaScript (`PYXIS_POOL_LANGUAGES`): a pooled
//! JS sandbox's first kernel is already the Node kernel, ready; its lane refills; a session
//! that claims one with its own limits, environment or TypeScript gets them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pyxis_tests::{procfs, scaled, Session, TestServer};
use serde_json::{json, Value};

/// Polls `f` until it returns true or `limit` (scaled) passes.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + scaled(limit);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn status(server: &TestServer) -> Value {
    server.get("/v1/status").json().expect("status json")
}

/// Idle sandboxes of the pool's lane of `language`.
fn lane_idle(server: &TestServer, language: &str) -> u64 {
    let v = status(server);
    v["pool"][language]["idle"]
        .as_u64()
        .unwrap_or_else(|| panic!("no {language} lane in {v}"))
}

/// `pyxis_sessions_created_total{source="…"}` of `/metrics` (0 before the first).
fn created(server: &TestServer, source: &str) -> f64 {
    let text = server.get("/metrics").text().expect("metrics text");
    let want = format!("pyxis_sessions_created_total{{source=\"{source}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

fn plain(v: &Value) -> &str {
    v["results"][0]["data"]["text/plain"].as_str().unwrap_or("")
}

fn ok(v: Value) -> Value {
    assert_eq!(v["status"], "ok", "cell failed: {v:#}");
    v
}

/// The sandbox cgroup's `memory.max` (v2) or `memory.limit_in_bytes` (v1), found from a
/// process the session's JS kernel starts with a unique marker.
fn memory_limit(sess: &Session<'_>) -> String {
    let marker = format!("pyxis-js-pool-probe-{}", rand::random::<u64>());
    ok(sess.exec(&format!(
        "globalThis.probe = require('child_process').spawn('sh', ['-c', 'sleep 600; :', '{marker}'])"
    )));
    let mut pid = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            pid = procfs::processes_with_cmdline(&marker).first().copied();
            pid.is_some()
        }),
        "the marked process never showed"
    );
    let own =
        std::fs::read_to_string(format!("/proc/{}/cgroup", pid.unwrap_or(0))).expect("its cgroup");
    ok(sess.exec("probe.kill('SIGKILL')"));
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let root = PathBuf::from("/sys/fs/cgroup");
        let file = match controllers {
            "" => root.join(path.trim_start_matches('/')).join("memory.max"),
            c if c.split(',').any(|c| c == "memory") => root
                .join("memory")
                .join(path.trim_start_matches('/'))
                .join("memory.limit_in_bytes"),
            _ => continue,
        };
        if let Ok(text) = std::fs::read_to_string(&file) {
            return text.trim().to_string();
        }
    }
    panic!("no memory limit file for the cgroups {own:?}")
}

#[test]
fn a_javascript_session_is_served_from_its_pool_lane_which_refills() {
    let server = TestServer::start(&[("PYXIS_POOL_LANGUAGES", "python:0,javascript:1")]);
    let v = status(&server);
    assert_eq!(v["pool"]["python"]["min_idle"], 0, "{v}");
    assert_eq!(v["pool"]["javascript"]["min_idle"], 1, "{v}");
    assert_eq!(v["pool_min_idle"], 1, "{v}");
    let caps: Value = server.get("/v1/capabilities").json().expect("caps");
    assert_eq!(
        caps["pool_languages"],
        json!(["python", "javascript", "typescript"]),
        "{caps}"
    );
    assert!(
        wait_for(Duration::from_secs(60), || lane_idle(&server, "javascript")
            == 1),
        "the JavaScript lane never filled: {}",
        status(&server)
    );
    // Made ahead of the create: its Node kernel is older than the wait below.
    std::thread::sleep(Duration::from_secs(2));
    let pooled = created(&server, "pooled");
    let sess = server.session_with(json!({ "language": "javascript" }));
    assert_eq!(created(&server, "pooled"), pooled + 1.0);
    let up = ok(sess.exec("process.uptime()"));
    let up: f64 = plain(&up).parse().expect("uptime");
    assert!(
        up >= 2.0,
        "the kernel started {up} s ago: not the pooled one"
    );
    ok(sess.exec("let n = 40"));
    assert_eq!(plain(&ok(sess.exec("n + 2"))), "42");
    assert_eq!(plain(&ok(sess.exec("process.cwd()"))), "'/workspace'");
    // The lane makes another one.
    assert!(
        wait_for(Duration::from_secs(60), || lane_idle(&server, "javascript")
            == 1),
        "the JavaScript lane did not refill: {}",
        status(&server)
    );
    // Python has no pooled sandbox here: its sessions are made cold, and work.
    let cold = created(&server, "cold");
    let py = server.session();
    assert_eq!(plain(&ok(py.exec("6 * 7"))), "42");
    assert_eq!(created(&server, "cold"), cold + 1.0);
}

#[test]
fn a_pooled_javascript_sandbox_takes_the_sessions_limits_env_and_typescript() {
    let server = TestServer::start(&[
        ("PYXIS_POOL_LANGUAGES", "python:0,javascript:2"),
        ("PYXIS_POOL_MAX_IDLE", "2"),
    ]);
    assert!(
        wait_for(Duration::from_secs(90), || lane_idle(&server, "javascript")
            == 2),
        "the JavaScript lane never filled: {}",
        status(&server)
    );
    let pooled = created(&server, "pooled");
    let js = server.session_with(json!({
        "language": "javascript",
        "env": {
            "GREETING": "hello",
            "PYXIS_KERNEL_LANGUAGE_X": "kept",
            "PYXIS_KERNEL_LANGUAGE": "typescript",
        },
        "limits": { "memory_mb": 160 },
    }));
    assert_eq!(created(&server, "pooled"), pooled + 1.0);
    assert_eq!(
        plain(&ok(js.exec(
            "process.env.GREETING + ' ' + process.env.PYXIS_KERNEL_LANGUAGE_X"
        ))),
        "'hello kept'"
    );
    assert_eq!(memory_limit(&js), (160u64 * 1024 * 1024).to_string());
    // A JavaScript kernel still, whatever its env says: TypeScript syntax is an error here.
    let v = js.exec("let typed: number = 1");
    assert_eq!(v["status"], "error", "{v}");
    // TypeScript comes from the same lane, its kernel switched to TypeScript.
    let ts = server.session_with(json!({ "language": "typescript" }));
    assert_eq!(created(&server, "pooled"), pooled + 2.0);
    ok(ts.exec(
        "interface Box<T> { value: T }\nfunction unbox<T>(b: Box<T>): T { return b.value }\nconst b: Box<number> = { value: 41 }",
    ));
    assert_eq!(plain(&ok(ts.exec("unbox(b) + 1"))), "42");
    let env = ok(ts.exec("String(process.env.PYXIS_KERNEL_LANGUAGE)"));
    assert_eq!(
        plain(&env),
        "'undefined'",
        "the switch is not left in the env"
    );
    // It asked for no limits: the server's default, not the other claimant's.
    assert_eq!(memory_limit(&ts), (1024u64 * 1024 * 1024).to_string());
    assert_eq!(
        plain(&ok(ts.exec("String(process.env.GREETING)"))),
        "'undefined'"
    );
}

#[test]
fn the_default_pool_serves_python_only_and_javascript_takes_a_python_sandbox() {
    let server = TestServer::start(&[("PYXIS_POOL_MIN_IDLE", "1")]);
    let v = status(&server);
    assert_eq!(v["pool"].as_object().map(|o| o.len()), Some(1), "{v}");
    let caps: Value = server.get("/v1/capabilities").json().expect("caps");
    assert_eq!(caps["pool_languages"], json!(["python"]), "{caps}");
    assert!(
        wait_for(Duration::from_secs(60), || lane_idle(&server, "python")
            == 1),
        "the Python lane never filled: {}",
        status(&server)
    );
    let pooled = created(&server, "pooled");
    let js = server.session_with(json!({ "language": "javascript" }));
    assert_eq!(created(&server, "pooled"), pooled + 1.0);
    assert_eq!(plain(&ok(js.exec("[1, 2].length"))), "2");
    assert!(
        wait_for(Duration::from_secs(60), || lane_idle(&server, "python")
            == 1),
        "the Python lane did not refill: {}",
        status(&server)
    );
}

#[test]
fn bad_pool_languages_stop_the_server_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in ["cobol", "python:x", "python,python", " , "] {
        let Some((code, err)) = pyxis_tests::serve_until_it_stops(&[
            ("PYXIS_DATA_DIR", dir.path().as_os_str()),
            ("PYXIS_POOL_LANGUAGES", bad.as_ref()),
        ]) else {
            panic!("{bad:?} was accepted: the server started");
        };
        assert!(!code.success(), "{bad:?} was accepted");
        assert!(err.contains("pool_languages"), "{bad:?}: {err}");
    }
}
