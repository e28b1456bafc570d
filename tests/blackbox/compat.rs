//! The compatible front doors (COMPAT.md): the seeds' documented client
//! calls, replayed against a real server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use pyxis_tests::TestServer;
use rand::Rng;
use serde_json::{json, Value};

fn user() -> String {
    format!("user-{:016x}", rand::thread_rng().gen::<u64>())
}

/// `POST /api/v1/execute?user_uuid=U {code}` with `X-Auth-Token`, as the
/// gateway's Python example sends it.
fn gw_exec(s: &TestServer, user: &str, code: &str) -> (u16, Value) {
    let r = s
        .anon(reqwest::Method::POST, "/api/v1/execute")
        .header("X-Auth-Token", &s.token)
        .query(&[("user_uuid", user)])
        .json(&json!({ "code": code }))
        .send()
        .expect("execute");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn gw_release(s: &TestServer, user: &str) -> u16 {
    s.anon(reqwest::Method::POST, "/api/v1/release")
        .header("X-Auth-Token", &s.token)
        .query(&[("user_uuid", user)])
        .send()
        .expect("release")
        .status()
        .as_u16()
}

fn gw_text(s: &TestServer, user: &str, code: &str) -> String {
    let (status, v) = gw_exec(s, user, code);
    assert_eq!(status, 200, "{v:#}");
    v["result_text"].as_str().unwrap_or_default().to_string()
}

#[test]
fn gateway_keeps_state_per_user() {
    let s = TestServer::shared();
    let (a, b) = (user(), user());
    let (status, v) = gw_exec(s, &a, "a = 100");
    assert_eq!(status, 200);
    assert!(v["worker_id"].is_string(), "{v:#}");
    assert!(
        v["result_text"].is_null() && v["result_base64"].is_null(),
        "{v:#}"
    );
    assert_eq!(gw_text(s, &a, "print(f'a is {a}')"), "a is 100\n");
    // stdout, then the last expression's text.
    assert_eq!(
        gw_text(s, &a, "r = a * 2\nprint(f'The product is {r}')\nr"),
        "The product is 200\n200"
    );
    // Another user has its own state.
    let t = gw_text(s, &b, "'a' in globals()");
    assert_eq!(t, "False");
    assert_eq!(gw_release(s, &a), 204);
    assert_eq!(gw_release(s, &b), 204);
}

#[test]
fn gateway_needs_the_token() {
    let s = TestServer::shared();
    let r = s
        .anon(reqwest::Method::POST, "/api/v1/execute")
        .query(&[("user_uuid", "x")])
        .json(&json!({ "code": "1" }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = s
        .anon(reqwest::Method::GET, "/api/v1/status")
        .header("X-Auth-Token", "wrong")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[test]
fn gateway_returns_the_first_png_as_base64() {
    let s = TestServer::shared();
    let u = user();
    let (status, v) = gw_exec(
        s,
        &u,
        "import matplotlib.pyplot as plt\nimport numpy as np\n\
         x = np.linspace(0, 10, 100)\nplt.plot(x, np.sin(x))\nplt.title('Sine Wave')\nplt.show()",
    );
    assert_eq!(status, 200, "{v:#}");
    let png = base64::engine::general_purpose::STANDARD
        .decode(v["result_base64"].as_str().expect("result_base64"))
        .expect("base64");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    gw_release(s, &u);
}

#[test]
fn gateway_python_error_is_a_200_with_the_error_text() {
    let s = TestServer::shared();
    let u = user();
    let (status, v) = gw_exec(s, &u, "print('before')\n1/0");
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(
        v["result_text"], "before\nZeroDivisionError: division by zero",
        "{v:#}"
    );
    assert!(v["result_base64"].is_null());
    // The session survives a Python error.
    gw_text(s, &u, "x = 1");
    assert_eq!(gw_text(s, &u, "x"), "1");
    gw_release(s, &u);
}

#[test]
fn gateway_release_gives_a_fresh_session() {
    let s = TestServer::shared();
    let u = user();
    gw_text(s, &u, "secret = 42");
    assert_eq!(gw_text(s, &u, "secret"), "42");
    assert_eq!(gw_release(s, &u), 204);
    // Releasing again is still a 204.
    assert_eq!(gw_release(s, &u), 204);
    assert_eq!(gw_text(s, &u, "'secret' in globals()"), "False");
    gw_release(s, &u);
}

#[test]
fn gateway_errors_have_a_detail() {
    let s = TestServer::shared();
    let r = s
        .anon(reqwest::Method::POST, "/api/v1/release")
        .header("X-Auth-Token", &s.token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.json::<Value>().unwrap()["detail"].is_string());
    let (st, v) = gw_exec(s, "", "1");
    assert_eq!(st, 422);
    assert!(v["detail"].is_string(), "{v:#}");
    let r = s.post("/execute", &json!({ "code": "1" }));
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.json::<Value>().unwrap()["detail"].is_string());
}

#[test]
fn gateway_status_has_the_fields() {
    let s = TestServer::shared();
    let u = user();
    gw_text(s, &u, "1");
    let r = s
        .anon(reqwest::Method::GET, "/api/v1/status")
        .header("X-Auth-Token", &s.token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().unwrap();
    assert!(v["total_workers"].as_u64().unwrap() >= 1, "{v:#}");
    assert!(v["busy_workers"].as_u64().unwrap() >= 1, "{v:#}");
    assert_eq!(v["is_initializing"], false);
    let v: Value = s.get("/status").json().unwrap();
    for k in [
        "total_workers",
        "busy_workers",
        "idle_workers_in_pool",
        "is_initializing",
    ] {
        assert!(!v[k].is_null(), "{k} in {v:#}");
    }
    gw_release(s, &u);
}

#[test]
fn gateway_earlier_version_routes() {
    let s = TestServer::shared();
    let u = user();
    let exec = |code: &str| {
        let r = s.post("/execute", &json!({ "user_uuid": u, "code": code }));
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (st, v) = exec("a = 10\nb = 20");
    assert_eq!(st, 200, "{v:#}");
    let (st, v) = exec("result = a * b\nprint(f'The product is {result}')\nresult");
    assert_eq!(st, 200);
    assert_eq!(v["result_text"], "The product is 200\n200");
    let (st, v) = exec("import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.show()");
    assert_eq!(st, 200);
    assert!(v["result_base64"].is_string());
    assert!(v["result_text"].is_null(), "an image wins: {v:#}");
    let (st, v) = exec("undefined_name");
    assert_eq!(st, 400);
    assert_eq!(
        v["detail"],
        "Python Execution Error: NameError: name 'undefined_name' is not defined"
    );
    let r = s.post("/release", &json!({ "user_uuid": u }));
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(
        v["detail"],
        format!("Worker for user {u} has been released.")
    );
    let (_, v) = exec("'a' in globals()");
    assert_eq!(v["result_text"], "False");
    s.post("/release", &json!({ "user_uuid": u }));
}

#[test]
fn gateway_timeout_is_503_and_the_next_call_is_fresh() {
    let s = TestServer::start(&[("PYXIS_EXEC_TIMEOUT_S", "2"), ("PYXIS_POOL_MIN_IDLE", "1")]);
    let u = user();
    gw_text(&s, &u, "kept = 1");
    let (status, v) = gw_exec(&s, &u, "import time\nwhile True:\n    time.sleep(0.1)");
    assert_eq!(status, 503, "{v:#}");
    assert!(v["detail"].is_string(), "{v:#}");
    assert_eq!(gw_text(&s, &u, "'kept' in globals()"), "False");
    let sessions: Value = s.get("/v1/sessions").json().unwrap();
    assert_eq!(
        sessions["sessions"].as_array().unwrap().len(),
        1,
        "the timed-out session is destroyed: {sessions:#}"
    );
    gw_release(&s, &u);
}

#[test]
fn runner_execute_returns_stdout() {
    let s = TestServer::shared();
    let r = s.post(
        "/api/runner/execute",
        &json!({ "code": "print('Hello')", "timeout": 30 }),
    );
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v, json!({ "result": "Hello\n", "status": "success" }));
    let v: Value = s
        .post(
            "/api/runner/execute",
            &json!({ "code": "print('x')\nraise ValueError('bad')", "timeout": 30 }),
        )
        .json()
        .unwrap();
    assert_eq!(v["status"], "error");
    assert_eq!(v["result"], "x\n");
    assert!(
        v["message"].as_str().unwrap().contains("ValueError: bad"),
        "{v:#}"
    );
}

#[test]
fn runner_timeout_is_capped_not_refused() {
    let s = TestServer::shared();
    let v: Value = s
        .post(
            "/api/runner/execute",
            &json!({ "code": "print(1)", "timeout": 1_000_000 }),
        )
        .json()
        .unwrap();
    assert_eq!(v, json!({ "result": "1\n", "status": "success" }));
}

#[test]
fn run_by_params_without_output_params_returns_every_key() {
    let s = TestServer::shared();
    let r = s.post(
        "/api/coderunner/v1/pycode/run-by-params",
        &json!({
            "code": "def main(a, b):\n    return {'sum': a + b, 'both': [a, b]}",
            "func": "main",
            "input_params": [{"type": "int", "value": 2}, {"type": "int", "value": 3}],
            "output_params": [],
        }),
    );
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({ "sum": 5, "both": [2, 3] })
    );
}

#[test]
fn runner_is_stateless() {
    let s = TestServer::shared();
    s.post("/api/runner/execute", &json!({ "code": "leak = 1" }));
    let v: Value = s
        .post(
            "/api/runner/execute",
            &json!({ "code": "print('leak' in globals())" }),
        )
        .json()
        .unwrap();
    assert_eq!(v["result"], "False\n");
}

const FUNC: &str = "def main(name, n, items, cfg):\n    print('noise on stdout')\n    return {\n        'greeting': 'hi ' + name,\n        'double': n * 2,\n        'count': len(items),\n        'flag': cfg['flag'],\n        'types': [type(x).__name__ for x in (name, n, items, cfg)],\n        'unused': 1,\n    }\n";

fn by_params(extra: Value) -> Value {
    let mut v = json!({
        "code": FUNC,
        "func": "main",
        "input_params": [
            {"type": "string", "value": "bob"},
            {"type": "int", "value": "21"},
            {"type": "array", "value": [1, 2, 3]},
            {"type": "object", "value": {"flag": true}},
        ],
        "output_params": [
            {"key": "greeting"}, {"key": "double"}, {"key": "count"},
            {"key": "flag"}, {"key": "types"},
        ],
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

fn expected() -> Value {
    json!({
        "greeting": "hi bob",
        "double": 42,
        "count": 3,
        "flag": true,
        "types": ["str", "int", "list", "dict"],
    })
}

#[test]
fn run_by_params_returns_the_selected_keys() {
    let s = TestServer::shared();
    let r = s.post(
        "/api/coderunner/v1/pycode/run-by-params",
        &by_params(json!({})),
    );
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap(), expected());
}

#[test]
fn run_by_params_error_is_a_500_with_detail_and_code() {
    let s = TestServer::shared();
    let r = s.post(
        "/api/coderunner/v1/pycode/run-by-params",
        &json!({
            "code": "def main(x):\n    return {'v': 1 / x}",
            "func": "main",
            "input_params": [{"type": "int", "value": 0}],
            "output_params": [{"key": "v"}],
        }),
    );
    assert_eq!(r.status().as_u16(), 500);
    let v: Value = r.json().unwrap();
    assert!(
        v["detail"].as_str().unwrap().contains("ZeroDivisionError"),
        "{v:#}"
    );
    assert!(v["code"].is_string());
    // A func that is not an identifier never reaches Python.
    let r = s.post(
        "/api/coderunner/v1/pycode/run-by-params",
        &json!({ "code": "", "func": "main(); import os", "input_params": [], "output_params": [] }),
    );
    assert_eq!(r.status().as_u16(), 422);
}

/// A one-request HTTP server on 127.0.0.1; sends the body it receives.
fn callback_server() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
    });
    (url, rx)
}

#[test]
fn async_run_by_params_calls_back_an_allowed_address() {
    let s = TestServer::start(&[
        ("PYXIS_IMPORT_ALLOW", "127.0.0.1/32"),
        ("PYXIS_POOL_MIN_IDLE", "1"),
    ]);
    let (url, rx) = callback_server();
    let r = s.post(
        "/api/coderunner/v1/pycode/async-run-by-params",
        &by_params(json!({ "callback": url })),
    );
    assert_eq!(r.status().as_u16(), 202);
    let got = rx.recv_timeout(Duration::from_secs(60)).expect("callback");
    assert_eq!(got, json!({ "res": expected(), "type": "pythoncode" }));
}

#[test]
fn async_callback_to_loopback_is_refused_without_the_allow_list() {
    let s = TestServer::shared();
    let (url, rx) = callback_server();
    let r = s.post(
        "/api/coderunner/v1/pycode/async-run-by-params",
        &by_params(json!({ "callback": url })),
    );
    assert_eq!(r.status().as_u16(), 202);
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_err(),
        "the callback must not reach a loopback address"
    );
}

#[test]
fn runner_health_routes_are_open() {
    let s = TestServer::shared();
    for p in ["/api/health", "/health/alive"] {
        let r = s.anon(reqwest::Method::GET, p).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{p}");
    }
    // Readiness follows /readyz, which other tests' load may flip (an empty
    // warm pool); open either way.
    let r = s
        .anon(reqwest::Method::GET, "/health/ready")
        .send()
        .unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 503), "{}", r.status());
    assert!(r.json::<Value>().unwrap()["status"].is_string());
    let r = s
        .anon(reqwest::Method::POST, "/api/runner/execute")
        .json(&json!({ "code": "1" }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// A loopback HTTP server: `GET` answers `content`, any other method is
/// answered 200 and reported as `(method, path, body)`.
fn file_server(content: &'static [u8]) -> (String, mpsc::Receiver<(String, String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut parts = first.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            if method == "GET" {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    content.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(content);
            } else {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                let _ = tx.send((method, path, body));
            }
        }
    });
    (base, rx)
}

fn gw_files(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    user: &str,
    body: Value,
) -> (u16, Value) {
    let r = s
        .anon(method, path)
        .header("X-Auth-Token", &s.token)
        .query(&[("user_uuid", user)])
        .json(&body)
        .send()
        .expect("files");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn gateway_files_upload_export_delete() {
    let s = TestServer::start(&[
        ("PYXIS_IMPORT_ALLOW", "127.0.0.1/32"),
        ("PYXIS_POOL_MIN_IDLE", "1"),
    ]);
    let (base, rx) = file_server(b"a,b\n1,2\n");
    let u = user();
    let (st, v) = gw_files(
        &s,
        reqwest::Method::POST,
        "/api/v1/files",
        &u,
        json!({ "files": [
            { "download_url": format!("{base}/x/data.csv"), "path": "/sandbox/", "name": "data.csv" },
            { "download_url": format!("{base}/y"), "path": "/sandbox/in", "name": "copy.csv" },
        ] }),
    );
    assert_eq!(st, 201, "{v:#}");
    assert_eq!(
        v,
        json!({ "success": true, "results": [
            { "full_path": "/sandbox/data.csv", "size": 8 },
            { "full_path": "/sandbox/in/copy.csv", "size": 8 },
        ] })
    );
    assert_eq!(
        gw_text(&s, &u, "import pandas as pd\nprint(open('/sandbox/data.csv').read(), end='')\nopen('/sandbox/out.txt', 'w').write('exported')\nint(pd.read_csv('/sandbox/in/copy.csv')['b'].sum())"),
        "a,b\n1,2\n2"
    );
    let (st, v) = gw_files(
        &s,
        reqwest::Method::POST,
        "/api/v1/files/export",
        &u,
        json!({ "files": [
            { "path": "/sandbox/", "name": "out.txt", "upload_url": format!("{base}/put/out.txt") },
        ] }),
    );
    assert_eq!(st, 200, "{v:#}");
    assert_eq!(
        v,
        json!({ "success": true, "results": [{ "path": "/sandbox/", "name": "out.txt", "size": 8 }] })
    );
    let (method, path, body) = rx.recv_timeout(Duration::from_secs(30)).expect("upload");
    assert_eq!((method.as_str(), path.as_str()), ("PUT", "/put/out.txt"));
    assert_eq!(body, b"exported");
    let (st, v) = gw_files(
        &s,
        reqwest::Method::DELETE,
        "/api/v1/files",
        &u,
        json!({ "files": [{ "path": "/sandbox/", "name": "data.csv" }] }),
    );
    assert_eq!(st, 204, "{v:#}");
    assert_eq!(
        gw_text(
            &s,
            &u,
            "import os\nos.path.exists('/sandbox/data.csv'), os.path.exists('/sandbox/out.txt')"
        ),
        "(False, True)"
    );
    // Names with a slash and paths outside /sandbox are refused.
    for (path, name) in [
        ("/sandbox/", "../etc/passwd"),
        ("/etc/", "passwd"),
        ("/sandbox/../", "x"),
    ] {
        let (st, v) = gw_files(
            &s,
            reqwest::Method::DELETE,
            "/api/v1/files",
            &u,
            json!({ "files": [{ "path": path, "name": name }] }),
        );
        assert_eq!(st, 422, "{path}{name}: {v:#}");
        assert!(v["detail"].is_string(), "{v:#}");
    }
    gw_release(&s, &u);
}

#[test]
fn gateway_upload_from_loopback_needs_the_allow_list() {
    let s = TestServer::shared();
    let (base, _rx) = file_server(b"x");
    let u = user();
    let (st, v) = gw_files(
        s,
        reqwest::Method::POST,
        "/api/v1/files",
        &u,
        json!({ "files": [{ "download_url": format!("{base}/f"), "path": "/sandbox/", "name": "f" }] }),
    );
    assert_eq!(st, 403, "{v:#}");
    assert!(
        v["detail"].as_str().unwrap().contains("PYXIS_IMPORT_ALLOW"),
        "{v:#}"
    );
    gw_release(s, &u);
}

fn pool_exec(s: &TestServer, body: Value) -> Value {
    let r = s.post("/api/v1/execute", &body);
    assert_eq!(r.status().as_u16(), 200, "always 200");
    r.json().unwrap()
}

#[test]
fn pool_runs_code_and_serves_image_and_files() {
    let s = TestServer::shared();
    let v = pool_exec(
        s,
        json!({ "code": "import matplotlib.pyplot as plt\nprint('Hello')\n\
            open('/code/output/result.md', 'w').write('# Hello')\n\
            open('/code/output/run.exe', 'w').write('no')\n\
            plt.plot([1, 2], [3, 4])\nplt.show()" }),
    );
    assert_eq!(v["result"], "Hello\n", "{v:#}");
    assert!(v["error"].is_null(), "{v:#}");
    assert!(v["execution_time"].as_f64().unwrap() > 0.0);
    let image_url = v["image_url"].as_str().expect("image_url");
    assert!(image_url.starts_with("/images/plot_"), "{image_url}");
    let png = s.get(image_url).bytes().unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "only allowed extensions: {v:#}");
    assert_eq!(files[0]["original_name"], "result.md");
    assert_eq!(files[0]["size_bytes"], 7);
    let r = s.get(files[0]["url"].as_str().unwrap());
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "# Hello");
    assert_eq!(s.get("/files/..%2fsecret").status().as_u16(), 404);
    // Stateless: nothing survives.
    let v = pool_exec(s, json!({ "code": "print('plt' in globals())" }));
    assert_eq!(v["result"], "False\n");
    // An error is a 200 with `error`.
    let v = pool_exec(s, json!({ "code": "print('a')\n1/0" }));
    assert_eq!(v["result"], "a\n");
    assert!(
        v["error"].as_str().unwrap().contains("ZeroDivisionError"),
        "{v:#}"
    );
    let caps: Value = s.get("/capabilities").json().unwrap();
    assert!(caps["pythonVersion"].is_string(), "{caps:#}");
    assert!(caps["limits"]["maxConcurrency"].is_u64(), "{caps:#}");
}

#[test]
fn pool_inputs_are_downloaded_and_renamed() {
    let s = TestServer::start(&[
        ("PYXIS_IMPORT_ALLOW", "127.0.0.1/32"),
        ("PYXIS_POOL_MIN_IDLE", "1"),
    ]);
    let (base, _rx) = file_server(b"a,b\n1,2\n");
    let (u1, u2) = (
        format!("{base}/one/data.csv"),
        format!("{base}/two/data.csv"),
    );
    let v = pool_exec(
        &s,
        json!({
            "code": format!("import pandas as pd, os\nprint(os.path.basename(os.getcwd()))\nprint(int(pd.read_csv('data.csv')['b'].sum()))\nprint(open('{u2}').read(), end='')"),
            "files": [u1, u2],
        }),
    );
    assert!(v["error"].is_null(), "{v:#}");
    assert_eq!(v["result"], "input\n2\na,b\n1,2\n", "{v:#}");
    assert_eq!(v["inputs"][0]["local_name"], "data.csv");
    assert_eq!(v["inputs"][1]["local_name"], "2_data.csv");
    assert_eq!(v["inputs"][1]["local_path"], "/code/input/2_data.csv");
    assert_eq!(v["inputs"][1]["original_name"], "data.csv");
    assert_eq!(v["inputs"][1]["size_bytes"], 8);
}

#[test]
fn pool_routes_need_the_token_unless_opened() {
    let s = TestServer::shared();
    let r = s
        .anon(reqwest::Method::POST, "/api/v1/execute")
        .json(&json!({ "code": "1" }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let s = TestServer::start(&[
        ("PYXIS_COMPAT_OPEN_POOL_API", "true"),
        ("PYXIS_POOL_MIN_IDLE", "1"),
    ]);
    let r = s
        .anon(reqwest::Method::POST, "/api/v1/execute")
        .json(&json!({ "code": "print(6 * 7)" }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap()["result"], "42\n");
    assert_eq!(
        s.anon(reqwest::Method::GET, "/capabilities")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // Only the pool's routes open: the gateway and the native API still
    // need the token.
    for q in [
        "user_uuid=u",
        "user%5Fuuid=u",
        "x=1&user_uuid=",
        "user_uuid=a&user_uuid=b",
    ] {
        let r = s
            .anon(reqwest::Method::POST, &format!("/api/v1/execute?{q}"))
            .json(&json!({ "code": "1" }))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{q}");
    }
    assert_eq!(
        s.anon(reqwest::Method::GET, "/v1/sessions")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
}
