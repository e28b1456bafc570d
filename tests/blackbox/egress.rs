//! Egress and packages (issue 16), without internet: the package fixtures are built from
//! `tests/fixtures/packages` and served by a PEP 503 index on loopback.

use std::process::Command;
use std::time::Duration;

use pyxis_tests::packages::{
    Fixtures, IndexedServer, PackageIndex, WebServer, MISBEHAVING_SDIST, TINY_WHEEL,
};
use pyxis_tests::TestServer;
use serde_json::{json, Value};

fn runtime_python() -> std::path::PathBuf {
    std::env::var_os("PYXIS_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/pyxis/runtime".into())
        .join("venv/bin/python")
}

/// The fixtures and the index themselves, checked with the runtime's own pip on the host
/// (the well-behaved wheel only): what the sandboxed tests build on.
#[test]
fn egress_fixture_wheel_installs_from_the_loopback_index() {
    let fixtures = Fixtures::build();
    assert!(fixtures.files.contains_key(TINY_WHEEL));
    assert!(fixtures.files.contains_key(MISBEHAVING_SDIST));
    let index = PackageIndex::start(&fixtures.files);
    let target = tempfile::tempdir().expect("tempdir");
    let out = Command::new(runtime_python())
        .args([
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
        ])
        .args(["--index-url", &index.url(), "--target"])
        .arg(target.path())
        .arg("pyxis-tiny==1.0")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(index.downloads(TINY_WHEEL), 1);
    assert!(index.requests().iter().any(|p| p == "/simple/pyxis-tiny/"));
    let check = Command::new(runtime_python())
        .args([
            "-c",
            "import pyxis_tiny; print(pyxis_tiny.VALUE, pyxis_tiny.hello('x'))",
        ])
        .env("PYTHONPATH", target.path())
        .output()
        .expect("run python");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "42 hello x from pyxis_tiny"
    );
}

/// A helper defined in a session: `proxy_raw(request)` sends raw bytes to the sandbox's
/// egress listener and returns the answer's status line, headers and body (the proxy is
/// spoken to directly: `NO_PROXY` rightly keeps clients off it for the sandbox's own
/// loopback, where the test servers are not).
const PROXY_HELPER: &str = r#"
import socket
def proxy_raw(raw, then=None):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
    s.sendall(raw.encode() if isinstance(raw, str) else raw)
    def answer():
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        try:
            while len(body) < length:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                body += chunk
        except OSError:
            pass
        return lines[0], headers, body
    first = answer()
    second = None
    if then is not None and " 200 " in first[0] + " ":
        s.sendall(then.encode())
        second = answer()
    s.close()
    return first, second
"#;

fn get_json(server: &TestServer, path: &str) -> (u16, Value) {
    let r = server.get(path);
    let status = r.status().as_u16();
    (status, r.json().expect("json"))
}

fn post_json(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = server.post(path, body);
    let status = r.status().as_u16();
    (status, r.json().expect("json"))
}

fn names(answer: &Value) -> Vec<String> {
    answer["packages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str())
                .map(pyxis_tests::packages::normalize)
                .collect()
        })
        .unwrap_or_default()
}

fn metric(server: &TestServer, name_and_labels: &str) -> f64 {
    let text = server.get("/metrics").text().expect("metrics");
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `%pip install` from the loopback index works and imports; the second session's install
/// (through the API) is served from the server's cache; `/packages` lists and removes; a
/// restart keeps the package; the default policy refuses.
#[test]
fn egress_pip_install_cache_list_remove_restart() {
    let fx = IndexedServer::start(&[]);
    let network = fx.network();
    let IndexedServer {
        server,
        index,
        allow,
        fixtures: _fixtures,
    } = fx;

    let a = server.session_with(network.clone());
    let (_, info) = get_json(&server, &format!("/v1/sessions/{}", a.id));
    assert_eq!(
        info["network"],
        json!({"egress": "allow", "allow": [allow]})
    );
    let out = a.exec("%pip install pyxis-tiny==1.0");
    assert_eq!(out["status"], "ok", "{out:#}");
    assert!(
        out["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("Successfully installed pyxis-tiny-1.0"),
        "{out:#}"
    );
    assert_eq!(
        a.ok("import pyxis_tiny; print(pyxis_tiny.VALUE, pyxis_tiny.__file__)")
            .trim(),
        "42 /workspace/.pyxis/packages/lib/python3.11/site-packages/pyxis_tiny/__init__.py"
    );
    // A subprocess sees it too.
    let sub = a.ok("import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'import pyxis_tiny; print(pyxis_tiny.VALUE)'], capture_output=True, text=True).stdout)");
    assert_eq!(sub.trim(), "42");
    assert_eq!(index.downloads(TINY_WHEEL), 1);

    // A second session, through the API: from the server's cache, not the index.
    let b = server.session_with(network.clone());
    let packages = format!("/v1/sessions/{}/packages", b.id);
    let started = std::time::Instant::now();
    let (status, answer) = post_json(
        &server,
        &packages,
        &json!({"packages": ["pyxis-tiny==1.0"]}),
    );
    assert_eq!(status, 200, "{answer:#}");
    eprintln!("API install of a cached wheel: {:?}", started.elapsed());
    assert_eq!(names(&answer), vec!["pyxis-tiny"]);
    assert_eq!(
        index.downloads(TINY_WHEEL),
        1,
        "the second install was served from the cache"
    );
    assert!(metric(&server, "pyxis_package_cache_total{result=\"hit\"}") >= 1.0);
    assert_eq!(
        b.ok("import pyxis_tiny; print(pyxis_tiny.hello('b'))")
            .trim(),
        "hello b from pyxis_tiny"
    );
    let (status, listed) = get_json(&server, &packages);
    assert_eq!(status, 200);
    assert_eq!(names(&listed), vec!["pyxis-tiny"]);
    // A restart keeps it.
    let r = server.post(&format!("/v1/sessions/{}/restart", b.id), &json!({}));
    assert!(r.status().is_success(), "restart: {}", r.status());
    assert_eq!(
        b.ok("import pyxis_tiny; print(pyxis_tiny.VALUE)").trim(),
        "42"
    );
    // Removed, it is gone for new processes, and a second removal is a 404.
    let r = server.delete(&format!("{packages}/pyxis_tiny"));
    assert_eq!(r.status(), 200);
    let after: Value = r.json().expect("json");
    assert!(names(&after).is_empty(), "{after:#}");
    let gone = b.ok("import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'import pyxis_tiny'], capture_output=True, text=True).returncode)");
    assert_eq!(gone.trim(), "1");
    let r = server.delete(&format!("{packages}/pyxis-tiny"));
    assert_eq!(r.status(), 404);
    let body: Value = r.json().expect("json");
    assert_eq!(body["error"]["code"], "package_not_found");
    // What is not a requirement never reaches the installer.
    for bad in ["--index-url=http://evil/", "x @ http://evil/x.whl", "../x"] {
        let (status, body) = post_json(&server, &packages, &json!({"packages": [bad]}));
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    let (status, _) = post_json(&server, &packages, &json!({"packages": "pyxis-tiny"}));
    assert_eq!(status, 422);

    // The default policy refuses: the API at once, pip through the proxy's 403.
    let c = server.session();
    let (_, info) = get_json(&server, &format!("/v1/sessions/{}", c.id));
    assert_eq!(info["network"]["egress"], "none");
    let (status, body) = post_json(
        &server,
        &format!("/v1/sessions/{}/packages", c.id),
        &json!({"packages": ["pyxis-tiny"]}),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "egress_refused");
    c.ok(PROXY_HELPER);
    let refused = c.ok("print(proxy_raw('GET http://pyxis-index/simple/pyxis-tiny/ HTTP/1.1\\r\\nHost: pyxis-index\\r\\n\\r\\n')[0])");
    assert!(refused.contains("403"), "{refused}");
    assert!(refused.contains("policy_none"), "{refused}");
    assert!(
        refused.contains("network policy is \\\"none\\\"")
            || refused.contains("network policy is \"none\""),
        "{refused}"
    );
    assert_eq!(index.downloads(TINY_WHEEL), 1);
    assert!(
        metric(
            &server,
            "pyxis_egress_refused_total{reason=\"policy_none\"}"
        ) >= 1.0
    );

    // A session cannot ask for more than the operator allows.
    let (status, body) = post_json(
        &server,
        "/v1/sessions",
        &json!({"network": {"egress": "public"}}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("more than this server permits"),
        "{body}"
    );
    let (status, _) = post_json(
        &server,
        "/v1/sessions",
        &json!({"network": {"egress": "allow", "allow": ["not a host!"]}}),
    );
    assert_eq!(status, 422);
}

/// An `allow` policy for one loopback server reaches it (plain HTTP and a CONNECT tunnel)
/// and no other; the sandbox cannot resolve names; the server's own port, a private address,
/// the metadata address and a name resolving to loopback are refused before any connection.
#[test]
fn egress_allow_reaches_one_server_only() {
    let a = WebServer::start();
    let b = WebServer::start();
    let (pa, pb) = (a.addr.port(), b.addr.port());
    let server = TestServer::start(&[(
        "PYXIS_EGRESS_ALLOW",
        &format!("127.0.0.1:{pa},127.0.0.1:{pb}"),
    )]);
    let own: u16 = server
        .addr()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let s = server.session_with(json!({"network": {"egress": "allow", "allow": [
        format!("127.0.0.1:{pa}"), format!("127.0.0.1:{own}"), "localhost", "10.0.0.0/8",
        "169.254.169.254",
    ]}}));
    s.ok(PROXY_HELPER);
    let get = |port: u16| {
        format!("GET http://127.0.0.1:{port}/x HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n")
    };
    let reached = s.ok(&format!(
        "(st, h, body), _ = proxy_raw('{}'); print(st, body.decode())",
        get(pa)
    ));
    assert_eq!(reached.trim(), format!("HTTP/1.1 200 OK hello from {pa}"));
    let tunnel = s.ok(&format!(
        "_, (st, h, body) = proxy_raw('CONNECT 127.0.0.1:{pa} HTTP/1.1\\r\\nHost: 127.0.0.1:{pa}\\r\\n\\r\\n', then='GET /t HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n'); print(st, body.decode())"
    ));
    assert_eq!(tunnel.trim(), format!("HTTP/1.1 200 OK hello from {pa}"));
    let other = s.ok(&format!("(st, h, body), _ = proxy_raw('{}'); print(st, h.get('x-pyxis-egress-refusal'), body.decode())", get(pb)));
    assert!(other.starts_with("HTTP/1.1 403"), "{other}");
    assert!(
        other.contains("not_allowed") && other.contains("allow-list"),
        "{other}"
    );
    assert!(b.heads().is_empty(), "the other server saw {:?}", b.heads());

    // No resolver inside.
    let dns = s.ok("import socket\ntry:\n    socket.getaddrinfo('example.com', 80)\n    print('resolved')\nexcept socket.gaierror as e:\n    print('gaierror')");
    assert_eq!(dns.trim(), "gaierror");

    let connect = |target: &str| {
        s.ok(&format!(
            "(st, h, body), _ = proxy_raw('CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n'); print(st, h.get('x-pyxis-egress-refusal'), body.decode())"
        ))
    };
    let own_port = connect(&format!("127.0.0.1:{own}"));
    assert!(
        own_port.contains("403 Forbidden server_address"),
        "{own_port}"
    );
    assert!(own_port.contains("the Pyxis server itself"), "{own_port}");
    // Refused by the address rules before any connection: a connection attempt would have
    // answered `connect_failed` (502/504), not `address_not_public`.
    let started = std::time::Instant::now();
    let private = connect("10.1.2.3:80");
    assert!(
        private.contains("403 Forbidden address_not_public"),
        "{private}"
    );
    assert!(private.contains("resolves to 10.1.2.3"), "{private}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let metadata = connect("169.254.169.254:80");
    assert!(
        metadata.contains("403 Forbidden address_not_public"),
        "{metadata}"
    );
    let name = connect("localhost:9");
    assert!(name.contains("403 Forbidden address_not_public"), "{name}");
    assert!(name.contains("localhost:9 resolves to"), "{name}");
    let unlisted = connect("example.com:443");
    assert!(unlisted.contains("403 Forbidden not_allowed"), "{unlisted}");
    assert!(
        metric(
            &server,
            "pyxis_egress_refused_total{reason=\"address_not_public\"}"
        ) >= 3.0
    );
    assert!(metric(&server, "pyxis_egress_tunnels_total") >= 1.0);
}

/// The byte limit cuts a download and refuses what follows; the connection limit refuses
/// one connection too many; both say so.
#[test]
fn egress_byte_and_connection_limits_trip() {
    let web = WebServer::start();
    let port = web.addr.port();
    let server = TestServer::start(&[
        ("PYXIS_EGRESS_ALLOW", &format!("127.0.0.1:{port}")),
        ("PYXIS_EGRESS_MAX_MB", "1"),
        ("PYXIS_EGRESS_MAX_CONNECTIONS", "3"),
    ]);
    let network = json!({"network": {"egress": "allow", "allow": [format!("127.0.0.1:{port}")]}});
    let s = server.session_with(network.clone());
    s.ok(PROXY_HELPER);
    let fetch = |path: &str| {
        s.ok(&format!(
            "(st, h, body), _ = proxy_raw('GET http://127.0.0.1:{port}{path} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n'); print(st, '|', h.get('x-pyxis-egress-refusal'), '|', len(body), '|', body[:200].decode(errors='replace'))"
        ))
    };
    let small = fetch("/bytes/524288");
    assert!(
        small.starts_with("HTTP/1.1 200 OK | None | 524288 |"),
        "{small}"
    );
    let big = fetch("/bytes/4194304");
    let got: usize = big
        .split('|')
        .nth(2)
        .and_then(|n| n.trim().parse().ok())
        .expect("length");
    assert!(
        got < 4_194_304,
        "the byte limit did not cut the download: {big}"
    );
    let after = fetch("/x");
    assert!(
        after.starts_with("HTTP/1.1 403 Forbidden | byte_limit"),
        "{after}"
    );
    assert!(after.contains("used its limit of 1048576 bytes"), "{after}");
    assert!(metric(&server, "pyxis_egress_refused_total{reason=\"byte_limit\"}") >= 1.0);

    let t = server.session_with(network);
    t.ok(PROXY_HELPER);
    let many = t.ok(&format!(
        "import socket, time\nheld = [socket.create_connection(('127.0.0.1', 3128)) for _ in range(3)]\ntime.sleep(1)\n(st, h, body), _ = proxy_raw('GET http://127.0.0.1:{port}/x HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n')\nprint(st, '|', h.get('x-pyxis-egress-refusal'), '|', body.decode())\nfor c in held: c.close()\ntime.sleep(0.5)\n(st, h, body), _ = proxy_raw('GET http://127.0.0.1:{port}/x HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n')\nprint(st, '|', body.decode())"
    ));
    let mut lines = many.lines().filter(|l| !l.trim().is_empty());
    let refused = lines.next().unwrap_or_default();
    assert!(
        refused.starts_with("HTTP/1.1 429 Too Many Requests | open_connections_limit"),
        "{many}"
    );
    assert!(refused.contains("3 connections open"), "{many}");
    let again = lines.next().unwrap_or_default();
    assert_eq!(
        again.trim(),
        format!("HTTP/1.1 200 OK | hello from {port}"),
        "{many}"
    );
    assert!(
        metric(
            &server,
            "pyxis_egress_refused_total{reason=\"open_connections_limit\"}"
        ) >= 1.0
    );

    // The limit cuts a CONNECT tunnel too (its bytes are spliced, and counted as they go).
    let u = server.session_with(
        json!({"network": {"egress": "allow", "allow": [format!("127.0.0.1:{port}")]}}),
    );
    u.ok(PROXY_HELPER);
    let tunneled = u.ok(&format!(
        "_, second = proxy_raw('CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n', then='GET /bytes/4194304 HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n'); print(second[0], '|', len(second[2]))"
    ));
    assert!(tunneled.starts_with("HTTP/1.1 200 OK |"), "{tunneled}");
    let got: usize = tunneled
        .split('|')
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .expect("length");
    assert!(
        got < 4_194_304,
        "the byte limit did not cut the tunnel: {tunneled}"
    );
    assert!(metric(&server, "pyxis_egress_refused_total{reason=\"byte_limit\"}") >= 2.0);
}

/// An sdist whose build misbehaves (forks to the pids limit, fills the quota, tries private
/// and metadata addresses, leaves a daemon, never returns) is contained: the install fails
/// with a clear error within its time limit, nothing of it is left running, and the session
/// still works.
#[test]
fn egress_misbehaving_sdist_is_contained() {
    let fx = IndexedServer::start(&[
        ("PYXIS_INSTALL_TIMEOUT_S", "20"),
        ("PYXIS_DISK_MB", "64"),
        ("PYXIS_PIDS", "96"),
    ]);
    let network = fx.network();
    let IndexedServer {
        server,
        fixtures: _fixtures,
        ..
    } = fx;
    let s = server.session_with(network);
    let started = std::time::Instant::now();
    let (status, body) = post_json(
        &server,
        &format!("/v1/sessions/{}/packages", s.id),
        &json!({"packages": ["pyxis-misbehave==1.0"]}),
    );
    let took = started.elapsed();
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["code"], "install_failed");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("longer than its limit of 20 s"),
        "{message}"
    );
    assert!(
        took < pyxis_tests::scaled(Duration::from_secs(60)),
        "took {took:?}"
    );
    assert_eq!(s.ok("print(6 * 7)").trim(), "42");
    let log = s.ok("print(open('/workspace/misbehave.log').read())");
    assert!(log.contains("backend started"), "{log}");
    assert!(log.contains("connect 10.0.0.1:80 refused"), "{log}");
    assert!(log.contains("connect 169.254.169.254:80 refused"), "{log}");
    assert!(log.contains("fill stopped"), "{log}");
    // Nothing of the build is left: only the kernel's own processes.
    let left = s.ok("import os\nprint(sorted(open(f'/proc/{p}/comm').read().strip() for p in os.listdir('/proc') if p.isdigit()))");
    assert!(!left.contains("sleep") && !left.contains("uv"), "{left}");
}

/// `PYXIS_AUTO_INSTALL`: an import of a listed name installs it and imports it; without a
/// policy that reaches the index it stays a `ModuleNotFoundError`.
#[test]
fn egress_auto_install_on_import() {
    let fx = IndexedServer::start(&[("PYXIS_AUTO_INSTALL", "pyxis_tiny=pyxis-tiny==1.0")]);
    let network = fx.network();
    let IndexedServer {
        server,
        fixtures: _fixtures,
        ..
    } = fx;
    let s = server.session_with(network);
    let out = s.exec("import pyxis_tiny\nprint(pyxis_tiny.VALUE)");
    assert_eq!(out["status"], "ok", "{out:#}");
    assert_eq!(out["stdout"].as_str().unwrap_or_default().trim(), "42");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("installing pyxis-tiny==1.0"),
        "{out:#}"
    );
    let none = server.session();
    let out = none.exec("import pyxis_tiny");
    assert_eq!(out["status"], "error");
    assert_eq!(out["error"]["name"], "ModuleNotFoundError", "{out:#}");
    // Names off the list are never looked up.
    let out = none.exec("import surely_not_a_module_xyz");
    assert_eq!(out["error"]["name"], "ModuleNotFoundError");
    assert!(!out["stderr"]
        .as_str()
        .unwrap_or_default()
        .contains("installing"));
}

/// The function runner's package routes: `/api/pypkg/install` puts a package into the
/// server's runner set (downloaded once, through the proxy and the cache); every runner call,
/// each in a fresh sandbox, imports it, and a call that damages its own copy does not reach
/// the next; `/api/pypkg/list` shows it; sessions of the v1 API do not see it;
/// `/api/pypkg/uninstall` removes it, a second time is a 404.
#[test]
fn egress_runner_packages_install_import_list_uninstall() {
    let fx = IndexedServer::start(&[("PYXIS_RUNNER_PACKAGES", "true")]);
    let IndexedServer {
        server,
        index,
        fixtures: _fixtures,
        ..
    } = fx;
    let run = |code: &str| post_json(&server, "/api/runner/execute", &json!({ "code": code }));
    let (status, before) = run("import pyxis_tiny");
    assert_eq!(status, 200);
    assert_eq!(before["status"], "error", "{before}");
    let (status, listed) = get_json(&server, "/api/pypkg/list");
    assert_eq!(status, 200);
    assert_eq!(listed, json!({"status": "success", "packages": []}));

    let (status, installed) = post_json(
        &server,
        "/api/pypkg/install",
        &json!({"package": "pyxis-tiny", "version": "1.0"}),
    );
    assert_eq!(status, 200, "{installed:#}");
    assert_eq!(installed["status"], "success");
    assert_eq!(names(&installed), vec!["pyxis-tiny"]);
    assert_eq!(index.downloads(TINY_WHEEL), 1);
    let (_, listed) = get_json(&server, "/api/pypkg/list");
    assert_eq!(names(&listed), vec!["pyxis-tiny"]);
    assert_eq!(listed["packages"][0]["version"], "1.0");

    let (status, ran) =
        run("import pyxis_tiny\nprint(pyxis_tiny.VALUE, pyxis_tiny.hello('runner'))");
    assert_eq!(status, 200);
    assert_eq!(ran["status"], "success", "{ran}");
    assert_eq!(ran["result"], "42 hello runner from pyxis_tiny\n");
    // A call that wrecks its own copy: the next call has a fresh one.
    let (_, wrecked) = run("import shutil, pyxis_tiny, os\nshutil.rmtree(os.path.dirname(pyxis_tiny.__file__))\nprint('gone')");
    assert_eq!(wrecked["result"], "gone\n", "{wrecked}");
    let (status, by_params) = post_json(
        &server,
        "/api/coderunner/v1/pycode/run-by-params",
        &json!({"code": "import pyxis_tiny\ndef main(x):\n    return {'v': pyxis_tiny.VALUE + x}",
                "input_params": [{"type": "int", "value": 1}], "output_params": [{"key": "v"}]}),
    );
    assert_eq!(status, 200, "{by_params}");
    assert_eq!(by_params, json!({"v": 43}));
    // Sessions have their own packages, not the runner's.
    let s = server.session();
    let out = s.exec("import pyxis_tiny");
    assert_eq!(out["error"]["name"], "ModuleNotFoundError", "{out:#}");
    assert_eq!(index.downloads(TINY_WHEEL), 1);

    let r = server
        .req(reqwest::Method::DELETE, "/api/pypkg/uninstall")
        .json(&json!({"package": "pyxis_tiny"}))
        .send()
        .expect("uninstall");
    assert_eq!(r.status(), 200);
    let after: Value = r.json().expect("json");
    assert!(names(&after).is_empty(), "{after:#}");
    let (_, listed) = get_json(&server, "/api/pypkg/list");
    assert_eq!(listed["packages"], json!([]));
    let (_, gone) = run("import pyxis_tiny");
    assert_eq!(gone["status"], "error", "{gone}");
    let r = server.delete("/api/pypkg/uninstall?package=pyxis-tiny");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().expect("json");
    assert_eq!(body["code"], "CodeRunner.PackageNotFound", "{body}");
}

/// A stand-in npm registry on `127.0.0.2` (loopback, but not in the sandbox's `NO_PROXY`,
/// like a remote registry would not be): answers the packument of `pyxis-tiny-npm` and
/// counts the requests it sees.
fn npm_registry() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    log.lock().expect("lock").push(target.clone());
                    let body = if target.ends_with("/pyxis-tiny-npm") {
                        json!({"name": "pyxis-tiny-npm", "dist-tags": {"latest": "4.2.0"},
                               "versions": {"4.2.0": {"name": "pyxis-tiny-npm", "version": "4.2.0",
                                 "dist": {"tarball": format!("http://{addr}/pyxis-tiny-npm/-/pyxis-tiny-npm-4.2.0.tgz"),
                                          "shasum": "0000000000000000000000000000000000000000"}}}})
                        .to_string()
                    } else {
                        "{}".to_owned()
                    };
                    let status = if body == "{}" {
                        "404 Not Found"
                    } else {
                        "200 OK"
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let mut w = &stream;
                    if w.write_all(head.as_bytes()).is_err()
                        || w.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// npm in a command reaches a registry through the proxy (the sandbox's `npm_config_proxy`)
/// under an `allow` policy for it, and is refused under `none` (the registry sees nothing).
#[test]
fn egress_npm_reaches_a_registry_through_the_proxy() {
    let (addr, seen) = npm_registry();
    let server = TestServer::start(&[("PYXIS_EGRESS_ALLOW", &addr.to_string())]);
    let npm = format!(
        "npm view pyxis-tiny-npm version --registry http://{addr}/ --cache /tmp/npm-cache \
         --fetch-retries 0 --no-update-notifier 2>&1"
    );
    let allowed =
        server.session_with(json!({"network": {"egress": "allow", "allow": [addr.to_string()]}}));
    let (status, out) = post_json(
        &server,
        &format!("/v1/sessions/{}/commands", allowed.id),
        &json!({"cmd": npm, "timeout_s": 120}),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["exit_code"], 0, "{out:#}");
    assert_eq!(
        out["stdout"].as_str().unwrap_or_default().trim(),
        "4.2.0",
        "{out:#}"
    );
    assert!(
        seen.lock()
            .expect("lock")
            .iter()
            .any(|t| t.ends_with("/pyxis-tiny-npm")),
        "{:?}",
        seen.lock().expect("lock")
    );
    let before = seen.lock().expect("lock").len();

    let none = server.session();
    let (status, out) = post_json(
        &server,
        &format!("/v1/sessions/{}/commands", none.id),
        &json!({"cmd": npm, "timeout_s": 120}),
    );
    assert_eq!(status, 200, "{out}");
    assert_ne!(out["exit_code"], 0, "{out:#}");
    let text = out["stdout"].as_str().unwrap_or_default();
    assert!(text.contains("403"), "{out:#}");
    assert_eq!(
        seen.lock().expect("lock").len(),
        before,
        "the registry was reached"
    );
}
