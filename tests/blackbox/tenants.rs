//! Keys and tenants (issue 14): a keys file of named keys, each with its own limits; a
//! session belongs to the key that made it; keys rotate without a restart.

use std::time::Duration;

use pyxis_tests::tenants::{eventually, new_key, sighup, write_keys, As, Key};
use pyxis_tests::{scaled, TestServer, STDERR_TO};
use reqwest::Method;
use serde_json::{json, Value};

#[test]
fn each_key_sees_only_its_own_sessions_over_v1_and_jupyter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    let alice = new_key("alice", "");
    let bob = new_key("bob", "");
    write_keys(&keys, &[&alice.entry, &bob.entry]);
    let server = TestServer::start(&[("PYXIS_KEYS_FILE", keys.to_str().expect("utf-8"))]);
    let a = As::new(&server, &alice.secret);
    let b = As::new(&server, &bob.secret);
    let token = As::new(&server, &server.token);
    let sa = a.create();
    let sb = b.create();
    assert_eq!(a.listed(), vec![sa.clone()]);
    assert_eq!(b.listed(), vec![sb.clone()]);
    // The token is a tenant of its own.
    assert!(token.listed().is_empty());
    // Jupyter kernels are sessions too, listed for their owner only.
    let (status, v) = a.call(
        Method::POST,
        "/api/kernels",
        Some(json!({"name": "python3"})),
    );
    assert_eq!(status, 201, "{v}");
    let ka = v["id"].as_str().expect("kernel id").to_string();
    assert_eq!(a.kernels(), vec![ka.clone()]);
    assert!(b.kernels().is_empty());
    assert!(token.kernels().is_empty());
    assert_eq!(a.listed().len(), 2);
    assert_eq!(
        b.call(Method::GET, &format!("/api/kernels/{ka}"), None).0,
        404
    );
    assert_eq!(
        b.call(Method::DELETE, &format!("/api/kernels/{ka}"), None)
            .0,
        404
    );
    assert_eq!(
        a.call(Method::GET, &format!("/api/kernels/{ka}"), None).0,
        200
    );
    assert_eq!(
        a.call(Method::DELETE, &format!("/api/kernels/{ka}"), None)
            .0,
        204
    );
    for (method, path, body) in [
        (Method::GET, format!("/v1/sessions/{sa}"), None),
        (
            Method::POST,
            format!("/v1/sessions/{sa}/execute"),
            Some(json!({"code": "1"})),
        ),
        (Method::GET, format!("/api/kernels/{sa}"), None),
        (Method::POST, format!("/api/kernels/{sa}/interrupt"), None),
        (Method::DELETE, format!("/api/kernels/{sa}"), None),
        (Method::DELETE, format!("/v1/sessions/{sa}"), None),
    ] {
        let (status, v) = b.call(method.clone(), &path, body);
        assert_eq!(status, 404, "{method} {path} as bob: {v}");
    }
    // Alice's session is untouched and works.
    let (status, v) = a.call(
        Method::POST,
        &format!("/v1/sessions/{sa}/execute"),
        Some(json!({"code": "x = 41; x + 1"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["data"]["text/plain"], "42", "{v}");
    // Metrics carry the keys' names, never their secrets.
    let metrics = server.get("/metrics").text().expect("metrics");
    assert!(
        metrics.contains("pyxis_tenant_cells_total{tenant=\"alice\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(&alice.secret) && !metrics.contains(&bob.secret));
    for (who, id) in [(&a, &sa), (&b, &sb)] {
        let (status, _) = who.call(Method::DELETE, &format!("/v1/sessions/{id}"), None);
        assert_eq!(status, 204);
    }
}

#[test]
fn a_key_s_limits_answer_429_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.json");
    // The same keys as JSON.
    let small = new_key("small", "");
    let hash = |k: &Key| {
        k.entry
            .lines()
            .find_map(|l| l.strip_prefix("sha256 = "))
            .expect("hash")
            .trim_matches('"')
            .to_string()
    };
    let body = json!({"key": [
        {"name": "small", "sha256": hash(&small), "max_sessions": 2, "cells_per_minute": 5,
         "memory_mb": 256},
    ]});
    std::fs::write(&keys, body.to_string()).expect("keys");
    let server = TestServer::start(&[("PYXIS_KEYS_FILE", keys.to_str().expect("utf-8"))]);
    let s = As::new(&server, &small.secret);
    let first = s.create();
    let second = s.create();
    let (status, v) = s.call(Method::POST, "/v1/sessions", Some(json!({})));
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "limit_reached", "{v}");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("\"small\"") && message.contains("2 live sessions"),
        "{message}"
    );
    // Another key is not limited by this one's count (the token here).
    let token = As::new(&server, &server.token);
    let t = token.create();
    // Memory: the key's default is its limit; more is refused.
    let (status, v) = s.call(Method::GET, &format!("/v1/sessions/{first}"), None);
    assert_eq!(status, 200);
    assert_eq!(v["limits"]["memory_bytes"], 256u64 << 20, "{v}");
    let (_, _) = s.call(Method::DELETE, &format!("/v1/sessions/{second}"), None);
    let (status, v) = s.call(
        Method::POST,
        "/v1/sessions",
        Some(json!({"limits": {"memory_mb": 512}})),
    );
    assert_eq!(status, 429, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 256 MiB")),
        "{v}"
    );
    // Cells per minute: five, then 429 with Retry-After.
    let mut refused = None;
    for i in 0..8 {
        let r = s
            .req(Method::POST, &format!("/v1/sessions/{first}/execute"))
            .json(&json!({"code": "1"}))
            .send()
            .expect("execute");
        if r.status() == 429 {
            let retry: u64 = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After");
            let v: Value = r.json().expect("json");
            refused = Some((i, retry, v));
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let (i, retry, v) = refused.expect("the sixth cell was not refused");
    assert_eq!(i, 5, "refused after {i} cells: {v}");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("5 cells")),
        "{v}"
    );
    for (who, id) in [(&s, &first), (&token, &t)] {
        who.call(Method::DELETE, &format!("/v1/sessions/{id}"), None);
    }
}

#[test]
fn a_rotated_key_works_after_sighup_and_a_malformed_file_keeps_the_last_good_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    let log = dir.path().join("server.log");
    let old = new_key("carol", "");
    write_keys(&keys, &[&old.entry]);
    let server = TestServer::start(&[
        ("PYXIS_KEYS_FILE", keys.to_str().expect("utf-8")),
        (STDERR_TO, log.to_str().expect("utf-8")),
    ]);
    let before = As::new(&server, &old.secret);
    let session = before.create();
    // Rotate: the same name, a new secret.
    let new = new_key("carol", "");
    write_keys(&keys, &[&new.entry]);
    sighup(&server);
    let after = As::new(&server, &new.secret);
    eventually(
        scaled(Duration::from_secs(5)),
        "the new secret was not accepted after SIGHUP",
        || after.call(Method::GET, "/v1/sessions", None).0 == 200,
    );
    let (status, v) = before.call(Method::GET, "/v1/sessions", None);
    assert_eq!(status, 401, "the old secret still works: {v}");
    // The session belongs to the name: still carol's.
    assert_eq!(after.listed(), vec![session.clone()]);

    // A malformed file: the last good keys stay, and the log says why.
    std::fs::write(
        &keys,
        "[[key]]\nname = \"carol\"\nsha256 = \"not-a-hash\"\n",
    )
    .expect("bad");
    sighup(&server);
    eventually(
        scaled(Duration::from_secs(5)),
        "the refused reload was not logged",
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("keys file not reloaded") && l.contains("64 hex digits"))
        },
    );
    assert_eq!(after.call(Method::GET, "/v1/sessions", None).0, 200);
    // A change alone (no signal) is picked up too.
    let third = new_key("carol", "");
    write_keys(&keys, &[&third.entry]);
    let latest = As::new(&server, &third.secret);
    eventually(
        scaled(Duration::from_secs(5)),
        "a changed keys file was not reloaded without a signal",
        || latest.call(Method::GET, "/v1/sessions", None).0 == 200,
    );
    assert_eq!(after.call(Method::GET, "/v1/sessions", None).0, 401);
    latest.call(Method::DELETE, &format!("/v1/sessions/{session}"), None);
}
