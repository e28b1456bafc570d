//! In-process tests of the doors and services: the real router and services over the fake
//! launcher (no sandboxes, no Python). The black-box tests in `tests/` run the real thing.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::app::App;
use crate::config::{Config, Settings};
use crate::sandboxes::fake::FakeLauncher;
use crate::services::{CellRequest, Files, Sessions};

const TOKEN: &str = "test-token";

fn config() -> Arc<Config> {
    let settings = Settings {
        pool_min_idle: Some(0),
        data_dir: Some(std::env::temp_dir().join("pyxis-unit")),
        sandbox_lib: Some("/nonexistent/libpyxis_sandbox.so".into()),
        ..Default::default()
    };
    Arc::new(Config::load(settings, None).expect("config"))
}

fn app() -> (Arc<App>, Arc<FakeLauncher>) {
    let cfg = config();
    let launcher = Arc::new(FakeLauncher::default());
    let sessions = Sessions::new(cfg.clone(), launcher.clone());
    let app = App::new(cfg.clone(), sessions, Files::new(cfg), TOKEN.into());
    (app, launcher)
}

async fn call(app: &Arc<App>, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = crate::router::build(app.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .expect("body");
    (status, headers, body.to_vec())
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request")
}

async fn new_session(app: &Arc<App>) -> String {
    let (status, _, body) = call(app, post("/v1/sessions", json!({}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let v: Value = serde_json::from_slice(&body).expect("json");
    v["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn execute_answers_one_execution_with_ordered_outputs() {
    let (app, _) = app();
    let id = new_session(&app).await;
    let (status, _, body) = call(
        &app,
        post(
            &format!("/v1/sessions/{id}/execute"),
            json!({"code": "hello"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["stdout"], "hello");
    assert_eq!(v["execution_count"], 1);
    assert_eq!(
        v["outputs"],
        json!([{"type": "stream", "name": "stdout", "text": "hello"}])
    );
    let (_, _, body) = call(
        &app,
        post(
            &format!("/v1/sessions/{id}/execute"),
            json!({"code": "raise it"}),
        ),
    )
    .await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["name"], "ValueError");
    assert_eq!(v["outputs"][1]["type"], "error");
}

#[tokio::test]
async fn execute_streams_server_sent_events_with_the_reply_last() {
    let (app, _) = app();
    let id = new_session(&app).await;
    let mut req = post(&format!("/v1/sessions/{id}/execute"), json!({"code": "hi"}));
    req.headers_mut()
        .insert(header::ACCEPT, "text/event-stream".parse().expect("header"));
    let (status, headers, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    let text = String::from_utf8(body).expect("utf-8");
    let events: Vec<(String, String, Value)> = text
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut ev = (String::new(), String::new(), Value::Null);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev.0 = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    ev.1 = v.into();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    ev.2 = serde_json::from_str(v).expect("data is JSON");
                }
            }
            ev
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "status",
            "execute_input",
            "stream",
            "status",
            "execute_reply"
        ]
    );
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e.1.parse().expect("numeric id"))
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(events[2].2["text"], "hi");
    assert_eq!(events[4].2["status"], "ok");
    assert!(events[4].2.get("outputs").is_none());
}

#[tokio::test]
async fn no_token_is_refused_everywhere_but_health() {
    let (app, _) = app();
    for path in [
        "/v1/sessions",
        "/metrics",
        "/api/kernels",
        "/api/kernelspecs",
    ] {
        let req = Request::get(path).body(Body::empty()).expect("request");
        let (status, _, _) = call(&app, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let req = Request::get("/healthz")
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(&app, req).await.0, StatusCode::OK);
    // Jupyter's header form works too.
    let req = Request::get("/api/kernelspecs")
        .header(header::AUTHORIZATION, format!("token {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["default"], "python3");
    assert!(v["kernelspecs"]["python3"]["resources"].is_object());
}

#[tokio::test]
async fn a_queued_cell_whose_caller_left_is_not_run_and_counters_stay_right() {
    let (app, _) = app();
    let opts = app.sessions.default_options();
    let session = app.sessions.create(opts).await.expect("session");
    let t = Duration::from_secs(10);
    let mut running = app
        .sessions
        .execute(&session, CellRequest::new("sleep 300", t))
        .expect("first");
    // It has started (status busy) before the others are queued behind it.
    assert!(matches!(
        running.events.recv().await,
        Some(crate::services::CellEvent::Status(_))
    ));
    // Queued behind it, then abandoned.
    let abandoned = app
        .sessions
        .execute(&session, CellRequest::new("abandoned", t))
        .expect("second");
    drop(abandoned);
    let third = app
        .sessions
        .execute(&session, CellRequest::new("third", t))
        .expect("third");
    // The running cell's caller leaves too: the cell still runs to its end.
    drop(running);
    let out = third.collect().await.expect("third ran");
    assert_eq!(out.stdout, "third");
    // The fake kernel counts executions: 1 (sleep) then 2 (third); the abandoned cell never ran.
    assert_eq!(out.summary.execution_count, 2);
    assert!(!session.is_busy());
    let (status, _, body) = call(
        &app,
        Request::get(format!("/v1/sessions/{}", session.id))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["state"], "idle");
}

#[tokio::test]
async fn cells_run_in_the_order_they_were_sent() {
    let (app, _) = app();
    let session = app
        .sessions
        .create(app.sessions.default_options())
        .await
        .expect("session");
    let t = Duration::from_secs(10);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            app.sessions
                .execute(&session, CellRequest::new(format!("cell {i}"), t))
                .expect("queued")
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.collect().await.expect("ran");
        assert_eq!(out.stdout, format!("cell {i}"));
        assert_eq!(out.summary.execution_count, i as u64 + 1);
    }
}

#[tokio::test]
async fn a_full_queue_is_409_and_an_unknown_session_404() {
    let (app, _) = app();
    let id = new_session(&app).await;
    let session = app.sessions.get(&id).expect("session");
    let t = Duration::from_secs(10);
    let mut first = app
        .sessions
        .execute(&session, CellRequest::new("sleep 200", t))
        .expect("running");
    first.events.recv().await.expect("started");
    let mut held = vec![first];
    let max = app.config.max_queue;
    for _ in 0..max {
        held.push(
            app.sessions
                .execute(&session, CellRequest::new("x", t))
                .expect("queued"),
        );
    }
    let (status, _, _) = call(
        &app,
        post(
            &format!("/v1/sessions/{id}/execute"),
            json!({"code": "one too many"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, body) = call(
        &app,
        post("/v1/sessions/nope/execute", json!({"code": "1"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "session_not_found");
}

#[tokio::test]
async fn metrics_count_cells_in_the_text_format() {
    let (app, _) = app();
    crate::metrics::handle();
    let id = new_session(&app).await;
    call(
        &app,
        post(&format!("/v1/sessions/{id}/execute"), json!({"code": "a"})),
    )
    .await;
    let req = Request::get("/metrics")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let (status, headers, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    let text = String::from_utf8(body).expect("utf-8");
    assert!(text.contains("pyxis_cells_total{status=\"ok\"}"), "{text}");
}

#[tokio::test]
async fn contexts_are_made_listed_used_and_deleted() {
    let (app, _) = app();
    let id = new_session(&app).await;
    let (status, _, body) = call(
        &app,
        post(
            &format!("/v1/sessions/{id}/contexts"),
            json!({"language": "bash"}),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let ctx: Value = serde_json::from_slice(&body).expect("json");
    let ctx_id = ctx["id"].as_str().expect("id").to_string();
    assert_eq!(ctx["language"], "bash");
    // Cells of the new context count on their own; the first context's do not move.
    for expected in 1..=2 {
        let (status, _, body) = call(
            &app,
            post(
                &format!("/v1/sessions/{id}/execute"),
                json!({"code": "echo hi", "context": ctx_id}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["execution_count"], expected, "{v}");
    }
    let (_, _, body) = call(&app, get(&format!("/v1/sessions/{id}/contexts"))).await;
    let list: Value = serde_json::from_slice(&body).expect("json");
    let contexts = list["contexts"].as_array().expect("array");
    assert_eq!(contexts.len(), 2, "{list}");
    assert_eq!(contexts[0]["id"], "default");
    assert_eq!(contexts[0]["execution_count"], 0);
    assert_eq!(contexts[1]["execution_count"], 2);
    let del = |path: String| {
        Request::delete(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("request")
    };
    let (status, _, _) = call(&app, del(format!("/v1/sessions/{id}/contexts/default"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "the first context stays");
    let (status, _, _) = call(&app, del(format!("/v1/sessions/{id}/contexts/{ctx_id}"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = call(
        &app,
        post(
            &format!("/v1/sessions/{id}/execute"),
            json!({"code": "x", "context": ctx_id}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "context_not_found");
}

#[tokio::test]
async fn bad_languages_are_refused_and_the_context_count_is_bounded() {
    let (app, _) = app();
    let (status, _, body) = call(&app, post("/v1/sessions", json!({"language": "cobol"}))).await;
    // Invalid input is 422 throughout the v1 door.
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let id = new_session(&app).await;
    let path = format!("/v1/sessions/{id}/contexts");
    let (status, _, body) = call(&app, post(&path, json!({"language": "fortran"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "invalid_request");
    let (status, _, _) = call(&app, post(&path, json!({"lang": "bash"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for _ in 1..crate::services::contexts::MAX_CONTEXTS {
        let (status, _, _) = call(&app, post(&path, json!({"language": "js"}))).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, _, body) = call(&app, post(&path, json!({"language": "ts"}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "too_many");
    let (status, _, _) = call(
        &app,
        post("/v1/sessions/nope/contexts", json!({"language": "bash"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
