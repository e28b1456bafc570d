//! Commands: processes run in a session's sandbox beside its kernels, collected, streamed
//! over SSE, or in the background with stdin and signals (issue 15).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use pyxis_tests::{Session, TestServer};
use serde_json::{json, Value};

fn command(s: &Session<'_>, body: Value) -> (u16, Value) {
    let r = s
        .server
        .post(&format!("/v1/sessions/{}/commands", s.id), &body);
    let status = r.status().as_u16();
    (status, r.json().expect("json"))
}

fn list(s: &Session<'_>) -> Vec<Value> {
    let v: Value = s
        .server
        .get(&format!("/v1/sessions/{}/commands", s.id))
        .json()
        .expect("json");
    v["commands"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_collected_command_reports_its_output_and_exit_code() {
    let s = TestServer::shared().session();
    s.ok("open('data.txt', 'w').write('three\\nlines\\nhere\\n')");
    let (status, v) = command(
        &s,
        json!({"cmd": "wc -l < data.txt; echo oops >&2; exit 3"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "3\n");
    assert_eq!(v["stderr"], "oops\n");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["signal"], Value::Null);
    assert_eq!(v["truncated"], false);
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{v}");
    // With args: no shell; stdin, env and cwd as given; the sandbox's uid and seccomp.
    let (status, v) = command(
        &s,
        json!({"cmd": "sh", "args": ["-c", "cat; echo \"$WHO in $(pwd) as $(id -u)\"; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"],
               "stdin": "piped in\n", "env": {"WHO": "me"}, "cwd": "/tmp"}),
    );
    assert_eq!(status, 200, "{v}");
    let out = v["stdout"].as_str().unwrap_or("");
    assert!(out.starts_with("piped in\nme in /tmp as "), "{v}");
    assert!(!out.contains(" as 0\n"), "runs as root: {v}");
    assert!(
        out.contains("Seccomp:\t2") && out.contains("NoNewPrivs:\t1"),
        "{v}"
    );
    // A command sees what the kernel wrote, and the reverse.
    let (_, v) = command(&s, json!({"cmd": "echo -n from-command > made.txt"}));
    assert_eq!(v["exit_code"], 0);
    assert_eq!(s.ok("print(open('made.txt').read())"), "from-command\n");
}

#[test]
fn a_streamed_command_sends_start_output_then_its_exit() {
    let server = TestServer::shared();
    let s = server.session();
    let r = server
        .req(
            reqwest::Method::POST,
            &format!("/v1/sessions/{}/commands", s.id),
        )
        .header("Accept", "text/event-stream")
        .json(&json!({"cmd": "echo one; sleep 0.2; echo two >&2; exit 5"}))
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut name = String::new();
    for line in BufReader::new(r).lines() {
        let line = line.expect("line");
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            events.push((name.clone(), serde_json::from_str(d).expect("data json")));
        }
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["start", "stdout", "stderr", "exit"], "{events:?}");
    assert!(events[0].1["pid"].as_u64().is_some_and(|p| p > 1));
    assert_eq!(events[1].1["text"], "one\n");
    assert_eq!(events[2].1["text"], "two\n");
    assert_eq!(events[3].1["exit_code"], 5);
}

#[test]
fn a_background_command_is_listed_fed_stdin_and_killed() {
    let s = TestServer::shared().session();
    let (status, v) = command(
        &s,
        json!({"cmd": "while read -r line; do echo \"got:$line\" >> fed.txt; done; echo eof >> fed.txt",
               "background": true}),
    );
    assert_eq!(status, 201, "{v}");
    let pid = v["pid"].as_u64().expect("pid");
    assert_eq!(v["running"], true);
    let listed = list(&s);
    assert!(
        listed
            .iter()
            .any(|c| c["pid"] == pid && c["running"] == true),
        "{listed:?}"
    );
    let stdin = format!("/v1/sessions/{}/commands/{pid}/stdin", s.id);
    let r = s.server.post(&stdin, &json!({"data": "first\nsecond\n"}));
    assert_eq!(r.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s
        .ok("import os\nprint(os.path.exists('fed.txt') and open('fed.txt').read().count('got:'))")
        != "2\n"
    {
        assert!(Instant::now() < deadline, "stdin never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        s.ok("print(open('fed.txt').read(), end='')"),
        "got:first\ngot:second\n"
    );
    // A command runs while a cell of the Python context runs.
    std::thread::scope(|scope| {
        let cell = scope.spawn(|| s.exec("import time; time.sleep(3); 'slept'"));
        std::thread::sleep(Duration::from_millis(300));
        let (_, v) = command(&s, json!({"cmd": "echo beside"}));
        assert_eq!(v["stdout"], "beside\n");
        let info: Value = s
            .server
            .get(&format!("/v1/sessions/{}", s.id))
            .json()
            .expect("json");
        assert_eq!(info["state"], "busy", "the cell still runs: {info}");
        assert_eq!(cell.join().expect("cell")["status"], "ok");
    });
    let kill = format!("/v1/sessions/{}/commands/{pid}/kill", s.id);
    let r: Value = s
        .server
        .post(&kill, &json!({"signal": "SIGTERM"}))
        .json()
        .expect("json");
    assert_eq!(r["signalled"], true);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entry = list(&s)
            .into_iter()
            .find(|c| c["pid"] == pid)
            .expect("listed");
        if entry["running"] == false {
            assert_eq!(entry["signal"], 15, "{entry}");
            break;
        }
        assert!(Instant::now() < deadline, "still running: {entry}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ended: stdin and signals say so.
    let r = s.server.post(&stdin, &json!({"data": "late\n"}));
    assert_eq!(r.status(), 409);
    let r: Value = s.server.post(&kill, &json!({})).json().expect("json");
    assert_eq!(r["signalled"], false);
}

#[test]
fn a_command_time_limit_kills_its_process_group() {
    let s = TestServer::shared().session();
    let (status, v) = command(
        &s,
        json!({"cmd": "sleep 60 & echo started; wait", "timeout_s": 1}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(v["signal"], 9, "{v}");
    assert_eq!(v["stdout"], "started\n");
    let (_, v) = command(
        &s,
        json!({"cmd": "cat /proc/[0-9]*/comm 2>/dev/null | grep -x sleep || echo none"}),
    );
    assert_eq!(v["stdout"], "none\n", "{v}");
}

#[test]
fn bad_commands_are_refused_clearly() {
    let server = TestServer::shared();
    let s = server.session();
    let cases = [
        (json!({"cmd": ""}), 422),
        (json!({"cmd": "no-such-program", "args": []}), 422),
        (json!({"cmd": "true", "cwd": "/no/such/dir"}), 422),
        (json!({"cmd": "true", "timeout_s": -1}), 422),
        (json!({"cmd": "true", "env": {"1BAD": "x"}}), 422),
        (json!({"cmd": "true", "bogus": 1}), 422),
    ];
    for (body, want) in cases {
        let (status, v) = command(&s, body.clone());
        assert_eq!(status, want, "{body} → {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    let r = server.post("/v1/sessions/nope/commands", &json!({"cmd": "true"}));
    assert_eq!(r.status(), 404);
    for path in ["stdin", "kill"] {
        let r = server.post(
            &format!("/v1/sessions/{}/commands/424242/{path}", s.id),
            &json!({}),
        );
        let status = r.status();
        assert_eq!(status, 404, "{path}: {}", r.text().unwrap_or_default());
    }
    let (status, v) = command(&s, json!({"cmd": "sleep 30", "background": true}));
    assert_eq!(status, 201);
    let r = server.post(
        &format!("/v1/sessions/{}/commands/{}/kill", s.id, v["pid"]),
        &json!({"signal": "SIGNOPE"}),
    );
    assert_eq!(r.status(), 422);
    // Bodies that are not a KillRequest get this API's JSON error, not a framework's text
    // (schemathesis found both); an empty body still means SIGKILL.
    let kill = format!("/v1/sessions/{}/commands/{}/kill", s.id, v["pid"]);
    for body in [
        &b"wf\xec\xa3\x88a\x0b\xff"[..],
        br#"{"signal": null, "x-unknown": 42}"#,
    ] {
        let (status, text) = server.raw("POST", &kill, body);
        assert_eq!(status, 422, "{text}");
        let v: Value = serde_json::from_str(&text).expect("a JSON error");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    }
    let (status, text) = server.raw("POST", &kill, b"");
    assert_eq!(status, 200, "{text}");
}

/// Commands get the egress proxy's environment, as the first kernel does: under the
/// default policy (`none`) curl through it gets the proxy's 403, for http and for an https
/// tunnel. Nothing leaves the host: the proxy refuses before it connects.
#[test]
fn a_command_goes_through_the_egress_proxy_and_is_refused_under_policy_none() {
    let s = TestServer::shared().session();
    let (status, v) = command(
        &s,
        json!({"cmd": "echo \"$HTTPS_PROXY|$HTTP_PROXY|$https_proxy|$NO_PROXY\""}),
    );
    assert_eq!(status, 200, "{v}");
    let out = v["stdout"].as_str().unwrap_or("").trim().to_string();
    let proxy = out.split('|').next().unwrap_or("");
    assert!(proxy.starts_with("http://127.0.0.1:"), "{v}");
    assert_eq!(
        out,
        format!("{proxy}|{proxy}|{proxy}|localhost,127.0.0.1,::1")
    );
    // The first kernel sees the same proxy.
    let py = s.ok("import os; print(os.environ['HTTPS_PROXY'])");
    assert_eq!(py.trim(), proxy);
    let (_, v) = command(
        &s,
        json!({"cmd": "curl -sS -o /dev/null -w '%{http_code}' http://example.com/; echo; curl -sS -o /dev/null -w '%{http_connect}' https://example.com/; echo \" exit=$?\""}),
    );
    let out = v["stdout"].as_str().unwrap_or("");
    assert_eq!(out, "403\n403 exit=56\n", "{v}");
}

/// Started contexts and commands have a higher `oom_score_adj` than the first kernel
/// (0), and cannot go below the first kernel's (nor below their own where the server has
/// CAP_SYS_RESOURCE, which sets their floor).
#[test]
fn commands_and_started_contexts_are_the_oom_killers_first_choice() {
    let s = TestServer::shared().session();
    let first = s.ok("print(open('/proc/self/oom_score_adj').read().strip())");
    assert_eq!(first.trim(), "0");
    let (_, v) = command(
        &s,
        json!({"cmd": "cat /proc/self/oom_score_adj; echo -1 > /proc/self/oom_score_adj || echo refused; cat /proc/self/oom_score_adj"}),
    );
    let out = v["stdout"].as_str().unwrap_or("");
    assert!(out.starts_with("1000\n"), "{v}");
    assert!(out.ends_with("refused\n1000\n"), "{v}");
}
