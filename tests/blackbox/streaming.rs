//! Live output over server-sent events, cancel safety of plain and streamed requests, the
//! ordered `outputs`, and Prometheus metrics.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use pyxis_tests::TestServer;
use serde_json::{json, Value};

/// One SSE event as a client reads it, with the time it arrived.
struct SseEvent {
    event: String,
    id: String,
    data: Value,
    at: Instant,
}

/// Read every event of one streamed cell (until `execute_reply`).
fn read_events(resp: reqwest::blocking::Response) -> Vec<SseEvent> {
    let mut out = Vec::new();
    let mut cur = (String::new(), String::new(), String::new());
    for line in BufReader::new(resp).lines() {
        let line = line.expect("sse line");
        if line.is_empty() {
            if !cur.0.is_empty() {
                let data: Value = serde_json::from_str(&cur.2).expect("data is JSON");
                let last = cur.0 == "execute_reply";
                out.push(SseEvent {
                    event: std::mem::take(&mut cur.0),
                    id: std::mem::take(&mut cur.1),
                    data,
                    at: Instant::now(),
                });
                cur.2.clear();
                if last {
                    break;
                }
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("event: ") {
            cur.0 = v.to_string();
        } else if let Some(v) = line.strip_prefix("id: ") {
            cur.1 = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            cur.2.push_str(v);
        }
    }
    out
}

fn stream(s: &TestServer, path: &str, body: &Value) -> reqwest::blocking::Response {
    let r = s
        .req(reqwest::Method::POST, path)
        .header("accept", "text/event-stream")
        .json(body)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    r
}

#[test]
fn sse_delivers_each_line_as_it_is_printed_then_the_reply() {
    let s = TestServer::shared();
    let session = s.session();
    let events = read_events(stream(
        s,
        &format!("/v1/sessions/{}/execute", session.id),
        &json!({"code": "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)"}),
    ));
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"status"));
    assert_eq!(kinds.last(), Some(&"execute_reply"));
    let lines: Vec<&SseEvent> = events.iter().filter(|e| e.event == "stream").collect();
    assert_eq!(lines.len(), 3, "{kinds:?}");
    for (i, e) in lines.iter().enumerate() {
        assert_eq!(e.data["name"], "stdout");
        assert_eq!(e.data["text"], format!("{i}\n"));
    }
    // Each line arrives well before the next one is printed.
    for w in lines.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap > Duration::from_millis(500),
            "lines arrived {gap:?} apart"
        );
    }
    let reply = &events.last().unwrap().data;
    assert_eq!(reply["status"], "ok");
    assert_eq!(reply["execution_count"], 1);
    assert!(
        reply.get("stdout").is_none(),
        "the reply carries no outputs again"
    );
    // Sequence numbers count up from 1.
    let ids: Vec<u64> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    assert_eq!(ids, (1..=events.len() as u64).collect::<Vec<_>>());
}

#[test]
fn sse_of_an_error_a_one_shot_and_a_bad_request() {
    let s = TestServer::shared();
    let session = s.session();
    let events = read_events(stream(
        s,
        &format!("/v1/sessions/{}/execute", session.id),
        &json!({"code": "print('a')\n1/0"}),
    ));
    let error = events
        .iter()
        .find(|e| e.event == "error")
        .expect("error event");
    assert_eq!(error.data["ename"], "ZeroDivisionError");
    let reply = &events.last().unwrap().data;
    assert_eq!(reply["status"], "error");
    assert_eq!(reply["error"]["name"], "ZeroDivisionError");
    // One-shot streams too.
    let events = read_events(stream(s, "/v1/execute", &json!({"code": "print(40 + 2)"})));
    assert!(events
        .iter()
        .any(|e| e.event == "stream" && e.data["text"] == "42\n"));
    // Errors before the stream starts keep the JSON envelope and their status.
    let r = s
        .req(reqwest::Method::POST, "/v1/sessions/nope/execute")
        .header("accept", "text/event-stream")
        .json(&json!({"code": "1"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "session_not_found");
}

#[test]
fn outputs_keep_print_table_print_in_order() {
    let s = TestServer::shared();
    let session = s.session();
    let v = session.exec(
        "import pandas as pd\nprint('before')\ndisplay(pd.DataFrame({'a': [1]}))\nprint('after')",
    );
    assert_eq!(v["status"], "ok", "{v}");
    let outputs = v["outputs"].as_array().expect("outputs");
    let kinds: Vec<String> = outputs
        .iter()
        .map(|o| o["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["stream", "display_data", "stream"], "{v}");
    assert_eq!(outputs[0]["text"], "before\n");
    assert!(outputs[1]["data"]["text/html"]
        .as_str()
        .unwrap()
        .contains("<table"));
    assert_eq!(outputs[2]["text"], "after\n");
    // The grouped fields hold the same content.
    assert_eq!(v["stdout"], "before\nafter\n");
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
}

fn wait_idle(s: &TestServer, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = s.get(&format!("/v1/sessions/{id}")).json().unwrap();
        if v["state"] == "idle" {
            return;
        }
        assert!(Instant::now() < deadline, "session still {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that goes away while its cell runs (plain HTTP or SSE) leaves the cell to run to
/// its end; one that goes away while its cell is queued drops that cell. Either way the
/// session serves the next cell at once and shows `idle`.
#[test]
fn disconnects_while_queued_and_mid_cell_leave_the_session_right() {
    let s = TestServer::shared();
    let session = s.session();
    let path = format!("/v1/sessions/{}/execute", session.id);
    session.exec("ran = []");
    let short = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let send = |code: &str, sse: bool| {
        let mut rb = short
            .post(format!("{}{path}", s.base))
            .bearer_auth(&s.token)
            .json(&json!({ "code": code }));
        if sse {
            rb = rb.header("accept", "text/event-stream");
        }
        // The client gives up after 0.7 s.
        rb.send().and_then(|r| r.text())
    };
    // Mid-cell over plain HTTP: the client times out, the cell goes on.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            assert!(send("import time\ntime.sleep(2)\nran.append('http')", false).is_err());
        });
        std::thread::sleep(Duration::from_millis(300));
        // Queued behind it, then abandoned: never run.
        scope.spawn(|| {
            assert!(send("ran.append('queued')", false).is_err());
        });
    });
    wait_idle(s, &session.id);
    // Mid-cell over SSE.
    let r = stream(
        s,
        &path,
        &json!({"code": "import time\nprint('x', flush=True)\ntime.sleep(1.5)\nran.append('sse')"}),
    );
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    while !line.starts_with("event: stream") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    drop(reader);
    wait_idle(s, &session.id);
    let t0 = Instant::now();
    let v = session.exec("print(ran)");
    assert_eq!(v["stdout"], "['http', 'sse']\n", "{v}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn metrics_are_prometheus_text_and_move_as_cells_run() {
    let s = TestServer::shared();
    let scrape = || {
        let r = s.get("/metrics");
        assert_eq!(r.status(), 200);
        let text = r.text().unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("valid exposition format")
    };
    let value = |scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .filter(|x| x.metric == name)
            .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum::<f64>()
    };
    let session = s.session();
    session.exec("1");
    let before = scrape();
    session.exec("2");
    session.exec("1/0");
    let after = scrape();
    let ok = |sc: &prometheus_parse::Scrape| value(sc, "pyxis_cells_total", Some(("status", "ok")));
    let err =
        |sc: &prometheus_parse::Scrape| value(sc, "pyxis_cells_total", Some(("status", "error")));
    assert!(ok(&after) >= ok(&before) + 1.0);
    assert!(err(&after) >= err(&before) + 1.0);
    assert!(value(&after, "pyxis_sessions_live", None) >= 1.0);
    assert!(after
        .samples
        .iter()
        .any(|x| x.metric == "pyxis_cell_seconds_count" || x.metric == "pyxis_cell_seconds"));
    // Behind the token like every route.
    let r = s.anon(reqwest::Method::GET, "/metrics").send().unwrap();
    assert_eq!(r.status(), 401);
}

/// Where notebooks notice (issue 13, point 6): figures as values, fresh random state per
/// session, and a failing display formatter that leaves the cell `ok`.
#[test]
fn figures_random_state_and_formatter_errors_behave_as_in_jupyter() {
    let s = TestServer::shared();
    let session = s.session();
    let png = |v: &Value| {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["data"]["image/png"].is_string())
            .count()
    };
    let v = session
        .exec("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nfig");
    assert_eq!(v["status"], "ok", "{v}");
    // As with ipykernel's inline backend: the value's PNG, and the open figure's at the end.
    let value_png = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "execute_result" && r["data"]["image/png"].is_string());
    assert!(value_png, "a figure as the last value is a PNG: {v}");
    let v = session
        .exec("fig2, ax2 = plt.subplots()\nax2.bar([1], [2])\ndisplay(fig2)\nplt.close(fig2)");
    assert_eq!(png(&v), 1, "display(fig) is one PNG: {v}");
    // A formatter that raises: the cell's own code ran fine.
    let v = session.exec(
        "class Bad:\n    def _repr_html_(self):\n        raise ValueError('formatter')\nBad()",
    );
    assert_eq!(v["status"], "ok", "{v}");
    // Three fresh sessions draw different numbers from every forked generator.
    let code = "import numpy as np, random, uuid, tempfile\nprint(np.random.rand(3).tolist(), random.random(), uuid.uuid4(), next(tempfile._get_candidate_names()))";
    let draws: Vec<String> = (0..3)
        .map(|_| {
            let v = s.session().exec(code);
            assert_eq!(v["status"], "ok", "{v}");
            v["stdout"].as_str().unwrap().to_string()
        })
        .collect();
    for (i, a) in draws.iter().enumerate() {
        for b in &draws[i + 1..] {
            let (a, b): (Vec<&str>, Vec<&str>) = (a.split(' ').collect(), b.split(' ').collect());
            assert_ne!(a[0..3], b[0..3], "numpy's global generator");
            assert_ne!(a[3], b[3], "random");
            assert_ne!(a[4], b[4], "uuid");
            assert_ne!(a[5], b[5], "tempfile names");
        }
    }
}
