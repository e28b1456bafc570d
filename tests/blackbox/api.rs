//! The HTTP surface: auth, error envelope, sessions CRUD, capacity.

use pyxis_tests::{processes_with_cmdline, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

#[test]
fn health_is_open_and_everything_else_needs_the_token() {
    let s = TestServer::shared();
    let r = s.anon(Method::GET, "/healthz").send().unwrap();
    assert_eq!(r.status(), 200);

    for (method, path) in [
        (Method::GET, "/v1/sessions"),
        (Method::POST, "/v1/sessions"),
        (Method::GET, "/v1/status"),
        (Method::GET, "/openapi.json"),
        (Method::POST, "/v1/execute"),
    ] {
        let r = s.anon(method.clone(), path).send().unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without a token");
        let body: Value = r.json().unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");

        let r = s
            .anon(method.clone(), path)
            .bearer_auth("wrong-token")
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a wrong token");
    }
    let r = s
        .anon(Method::GET, "/v1/status")
        .header("X-Auth-Token", &s.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "X-Auth-Token is accepted");
}

#[test]
fn unknown_session_is_404_with_the_error_envelope() {
    let s = TestServer::shared();
    for (method, path) in [
        (Method::GET, "/v1/sessions/nope"),
        (Method::DELETE, "/v1/sessions/nope"),
        (Method::POST, "/v1/sessions/nope/interrupt"),
        (Method::POST, "/v1/sessions/nope/restart"),
    ] {
        let r = s.req(method.clone(), path).send().unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], "session_not_found");
    }
    let r = s.post("/v1/sessions/nope/execute", &json!({"code": "1"}));
    assert_eq!(r.status(), 404);
}

#[test]
fn a_wrong_method_is_405_with_the_error_envelope_and_allow() {
    let s = TestServer::shared();
    for (method, path, allowed) in [
        (Method::PUT, "/v1/sessions", "POST"),
        (Method::PATCH, "/v1/sessions/nope", "DELETE"),
        (Method::GET, "/v1/execute", "POST"),
        (Method::DELETE, "/v1/status", "GET"),
    ] {
        let r = s.req(method.clone(), path).send().unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        let allow = r
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(allow.contains(allowed), "{method} {path}: Allow {allow:?}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed", "{method} {path}");
    }
    // Still 404 for a route that does not exist at all.
    let r = s.req(Method::PUT, "/v1/nothing-here").send().unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn malformed_bodies_are_422() {
    let s = TestServer::shared();
    let sess = s.session();
    let path = format!("/v1/sessions/{}/execute", sess.id);
    for body in [
        "{not json",
        "{}",
        r#"{"code": 5}"#,
        r#"{"code": "1", "timeout_s": -1}"#,
        r#"{"code": "1", "surprise": true}"#,
    ] {
        let r = s
            .req(Method::POST, &path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 422, "body {body}");
        let v: Value = r.json().unwrap();
        assert!(v["error"]["message"].as_str().is_some(), "{v}");
    }
    let r = s.post("/v1/sessions", &json!({"language": "cobol"}));
    assert_eq!(r.status(), 422);
    let r = s.post("/v1/sessions", &json!({"limits": {"memory_mb": 1_000_000}}));
    assert_eq!(r.status(), 422);
    let r = s.post("/v1/sessions", &json!({"env": {"BAD=NAME": "x"}}));
    assert_eq!(r.status(), 422);
    // The session still works after all that.
    assert_eq!(sess.ok("print(6*7)"), "42\n");
}

#[test]
fn sessions_are_listed_described_and_released() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({"metadata": {"owner": "test"}, "env": {"GREETING": "hej"}}));
    assert_eq!(sess.ok("import os; print(os.environ['GREETING'])"), "hej\n");
    let v: Value = s.get(&format!("/v1/sessions/{}", sess.id)).json().unwrap();
    assert_eq!(v["id"], sess.id.as_str());
    assert_eq!(v["metadata"]["owner"], "test");
    assert_eq!(v["execution_count"], 1);
    assert_eq!(v["state"], "idle");
    assert!(v["usage"]["memory_bytes"].as_u64().unwrap() > 0, "{v}");
    let list: Value = s.get("/v1/sessions").json().unwrap();
    assert!(list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == sess.id.as_str()));
    let r = s.delete(&format!("/v1/sessions/{}", sess.id));
    assert_eq!(r.status(), 204);
    let r = s.get(&format!("/v1/sessions/{}", sess.id));
    assert_eq!(r.status(), 404);
}

#[test]
fn status_capabilities_and_openapi() {
    let s = TestServer::shared();
    let v: Value = s.get("/v1/capabilities").json().unwrap();
    assert_eq!(v["languages"][0], "python");
    assert!(
        v["python_version"].as_str().unwrap().starts_with("3."),
        "{v}"
    );
    for lib in ["numpy", "pandas", "matplotlib", "ipython"] {
        assert!(v["libraries"][lib].is_string(), "{lib} missing in {v}");
    }
    let v: Value = s.get("/v1/status").json().unwrap();
    assert!(v["max_sessions"].as_u64().unwrap() > 0);
    let v: Value = s.get("/openapi.json").json().unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    for p in ["/v1/sessions", "/v1/sessions/{id}/execute", "/v1/execute"] {
        assert!(
            v["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
}

#[test]
fn one_shot_execute_runs_in_a_sandbox_that_is_gone_after() {
    let s = TestServer::shared();
    let r = s.post(
        "/v1/execute",
        &json!({"code": "import os, subprocess\nsubprocess.Popen(['sleep', '900.4242'])\nopen('/workspace/x','w').write('1')\nprint(sorted(os.listdir('/workspace')))"}),
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    let out = v["stdout"].as_str().unwrap();
    assert!(out.starts_with("['x']\n"), "{out}");
    // Its processes (the background sleep included) are gone once it answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_with_cmdline("900.4242").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(processes_with_cmdline("900.4242"), Vec::<i32>::new());
}

#[test]
fn exhausted_capacity_answers_503_with_retry_after() {
    let s = TestServer::start(&[("PYXIS_MAX_SESSIONS", "2"), ("PYXIS_POOL_MIN_IDLE", "0")]);
    let a = s.session();
    let b = s.session();
    let r = s.post("/v1/sessions", &json!({}));
    assert_eq!(r.status(), 503);
    let retry = r
        .headers()
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .to_string();
    assert!(retry.parse::<u64>().unwrap() >= 1);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "capacity_exhausted");
    let r = s.post("/v1/execute", &json!({"code": "1"}));
    assert_eq!(r.status(), 503);
    drop(a);
    // A released slot is usable again.
    let c = s.session();
    assert_eq!(c.ok("print('again')"), "again\n");
    drop(b);
}

#[test]
fn a_second_cell_waits_its_turn_and_a_full_queue_is_409() {
    let s = TestServer::start(&[("PYXIS_MAX_QUEUE", "1"), ("PYXIS_POOL_MIN_IDLE", "0")]);
    let sess = s.session();
    sess.ok("n = 0");
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| sess.exec("import time; time.sleep(3); n += 1; print(n)"));
        std::thread::sleep(std::time::Duration::from_millis(500));
        let queued = scope.spawn(|| sess.exec("n += 10; print(n)"));
        std::thread::sleep(std::time::Duration::from_millis(500));
        let r = s.post(
            &format!("/v1/sessions/{}/execute", sess.id),
            &json!({"code": "print('third')"}),
        );
        assert_eq!(r.status(), 409, "the queue holds one waiter");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], "session_busy");
        assert_eq!(slow.join().unwrap()["stdout"], "1\n");
        assert_eq!(
            queued.join().unwrap()["stdout"],
            "11\n",
            "ran after, in order"
        );
    });
}
