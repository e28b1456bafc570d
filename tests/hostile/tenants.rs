//! One tenant against another (issue 14, "Keys and tenants"): a key that knows or guesses
//! another key's session id finds nothing at any door, cannot tell it from an id that does
//! not exist, and cannot take over another key's gateway user; a secret in a query string
//! is refused except on the Jupyter channels, where browsers need it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use pyxis_tests::tenants::{new_key, write_keys, As};
use pyxis_tests::{scaled, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

fn two_keys() -> (tempfile::TempDir, TestServer, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.toml");
    let alice = new_key("alice", "");
    let mallory = new_key("mallory", "");
    write_keys(&keys, &[&alice.entry, &mallory.entry]);
    let server = TestServer::start(&[("PYXIS_KEYS_FILE", keys.to_str().expect("utf-8"))]);
    (dir, server, alice.secret, mallory.secret)
}

/// The status line of a WebSocket upgrade of `path` (with `auth` header lines).
fn upgrade(server: &TestServer, path: &str, auth: &str) -> String {
    let mut c = TcpStream::connect(server.addr()).expect("connect");
    c.set_read_timeout(Some(scaled(Duration::from_secs(10))))
        .expect("timeout");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n",
        server.addr()
    );
    c.write_all(req.as_bytes()).expect("write");
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

/// The error body with the session id replaced, to compare answers about two ids.
fn without_id(v: &Value, id: &str) -> String {
    v.to_string().replace(id, "<id>")
}

#[test]
fn another_key_s_session_id_finds_nothing_at_any_door_and_is_not_told_apart() {
    let (_dir, server, alice, mallory) = two_keys();
    let a = As::new(&server, &alice);
    let m = As::new(&server, &mallory);
    let id = a.create();
    let (status, v) = a.call(
        Method::POST,
        &format!("/v1/sessions/{id}/execute"),
        Some(json!({"code": "secret = 'alice-only'"})),
    );
    assert_eq!(status, 200, "{v}");
    let ghost = "0b9e2c0e-5f4c-4a8e-9d9a-3c3f0d8e1a11";
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/sessions/{}".into(), None),
        (Method::DELETE, "/v1/sessions/{}".into(), None),
        (
            Method::POST,
            "/v1/sessions/{}/execute".into(),
            Some(json!({"code": "print(secret)"})),
        ),
        (Method::POST, "/v1/sessions/{}/interrupt".into(), None),
        (Method::POST, "/v1/sessions/{}/restart".into(), None),
        (Method::GET, "/v1/sessions/{}/notebook".into(), None),
        (Method::GET, "/v1/sessions/{}/files".into(), None),
        (Method::GET, "/v1/sessions/{}/files/secret.txt".into(), None),
        (
            Method::DELETE,
            "/v1/sessions/{}/files/secret.txt".into(),
            None,
        ),
        (Method::GET, "/api/kernels/{}".into(), None),
        (Method::DELETE, "/api/kernels/{}".into(), None),
        (Method::POST, "/api/kernels/{}/interrupt".into(), None),
        (Method::POST, "/api/kernels/{}/restart".into(), None),
    ];
    for (method, path, body) in &probes {
        let real = path.replace("{}", &id);
        let fake = path.replace("{}", ghost);
        let (s1, v1) = m.call(method.clone(), &real, body.clone());
        let (s2, v2) = m.call(method.clone(), &fake, body.clone());
        assert_eq!(s1, 404, "{method} {real} as mallory: {v1}");
        assert_eq!(
            (s1, without_id(&v1, &id)),
            (s2, without_id(&v2, ghost)),
            "{method} {path}: another key's session is told apart from none"
        );
    }
    // The Jupyter channels: 404 for another key's kernel, even with the key in the query.
    let auth = format!("Authorization: Bearer {mallory}\r\n");
    let line = upgrade(&server, &format!("/api/kernels/{id}/channels"), &auth);
    assert!(line.contains(" 404"), "channels as mallory: {line}");
    let line = upgrade(
        &server,
        &format!("/api/kernels/{id}/channels?token={mallory}"),
        "",
    );
    assert!(
        line.contains(" 404"),
        "channels with mallory's ?token=: {line}"
    );
    // Nothing of it in mallory's lists.
    assert!(m.listed().is_empty());
    assert!(m.kernels().is_empty());
    // Alice's session is whole.
    let (status, v) = a.call(
        Method::POST,
        &format!("/v1/sessions/{id}/execute"),
        Some(json!({"code": "print(secret)"})),
    );
    assert_eq!(status, 200);
    assert_eq!(v["stdout"], "alice-only\n", "{v}");
    a.call(Method::DELETE, &format!("/v1/sessions/{id}"), None);
}

#[test]
fn another_key_s_gateway_user_is_a_different_user() {
    let (_dir, server, alice, mallory) = two_keys();
    let a = As::new(&server, &alice);
    let m = As::new(&server, &mallory);
    let run = |who: &As, code: &str| {
        who.call(
            Method::POST,
            "/api/v1/execute?user_uuid=shared-user",
            Some(json!({ "code": code })),
        )
    };
    let (status, v) = run(&a, "secret = 'alice-only'\nprint('set')");
    assert_eq!(status, 200, "{v}");
    // Mallory with the same user_uuid gets a fresh session of her own…
    let (_, v) = run(&m, "print(globals().get('secret', 'nothing'))");
    assert!(
        v.to_string().contains("nothing") && !v.to_string().contains("alice-only"),
        "{v}"
    );
    // …and releasing "her" user leaves alice's alone.
    let (status, _) = m.call(Method::POST, "/api/v1/release?user_uuid=shared-user", None);
    assert!(status < 300, "release: {status}");
    let (status, v) = run(&a, "print(secret)");
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("alice-only"), "{v}");
    a.call(Method::POST, "/api/v1/release?user_uuid=shared-user", None);
}

#[test]
fn a_secret_in_a_query_string_is_refused_except_on_the_jupyter_channels() {
    let (_dir, server, alice, _mallory) = two_keys();
    let anon = As::new(&server, "");
    for param in ["token", "api_key", "access_token", "key"] {
        for path in ["/v1/sessions", "/api/kernels", "/v1/status"] {
            let (status, v) = anon.call(Method::GET, &format!("{path}?{param}={alice}"), None);
            assert_eq!(status, 401, "{path}?{param}= was accepted: {v}");
        }
    }
    let a = As::new(&server, &alice);
    let id = a.create();
    let line = upgrade(
        &server,
        &format!("/api/kernels/{id}/channels?token={alice}"),
        "",
    );
    assert!(line.contains(" 101"), "channels with ?token=: {line}");
    a.call(Method::DELETE, &format!("/v1/sessions/{id}"), None);
}

/// A minimal MCP client over Streamable HTTP (JSON-RPC in, JSON or SSE out), as one key.
struct Mcp<'a> {
    who: As<'a>,
    session: String,
    next: u64,
}

impl<'a> Mcp<'a> {
    fn connect(server: &'a TestServer, secret: &str) -> Self {
        let who = As::new(server, secret);
        let r = who
            .req(Method::POST, "/mcp")
            .header("Accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-03-26", "capabilities": {},
                "clientInfo": {"name": "hostile-tenants", "version": "1"}}}),
            )
            .send()
            .expect("initialize");
        assert_eq!(r.status(), 200, "initialize");
        let session = r
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("Mcp-Session-Id")
            .to_string();
        let _ = r.text();
        let mut me = Self {
            who,
            session,
            next: 1,
        };
        let r = me
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .send()
            .expect("initialized");
        assert!(r.status().is_success(), "initialized: {}", r.status());
        me
    }

    fn post(&mut self, body: Value) -> reqwest::blocking::RequestBuilder {
        self.who
            .req(Method::POST, "/mcp")
            .header("Accept", "application/json, text/event-stream")
            .header("Mcp-Session-Id", &self.session)
            .json(&body)
    }

    /// Call a tool; the JSON-RPC `result`.
    fn tool(&mut self, name: &str, arguments: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let r = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": name, "arguments": arguments}}))
            .send()
            .expect("tools/call");
        assert_eq!(r.status(), 200, "tools/call {name}");
        let text = r.text().expect("body");
        // A JSON body, or SSE whose data lines carry the answer.
        let answer = std::iter::once(text.as_str())
            .chain(text.lines().filter_map(|l| l.strip_prefix("data:")))
            .filter_map(|t| serde_json::from_str::<Value>(t.trim()).ok())
            .find(|v| v["id"] == id)
            .unwrap_or_else(|| panic!("no answer to {name}: {text}"));
        answer["result"].clone()
    }
}

#[test]
fn another_key_s_sessions_are_invisible_over_mcp() {
    let (_dir, server, alice, mallory) = two_keys();
    let a = As::new(&server, &alice);
    let id = a.create();
    let mut mine = Mcp::connect(&server, &alice);
    let mut theirs = Mcp::connect(&server, &mallory);
    let listed = mine.tool("list_sessions", json!({}));
    assert!(
        listed.to_string().contains(&id),
        "alice's own list: {listed}"
    );
    let listed = theirs.tool("list_sessions", json!({}));
    assert!(
        !listed.to_string().contains(&id),
        "mallory's list: {listed}"
    );
    let ran = theirs.tool("run_code", json!({"session_id": id, "code": "print('in')"}));
    assert_eq!(
        ran["isError"], true,
        "mallory ran in alice's session: {ran}"
    );
    let closed = theirs.tool("close_session", json!({"id": id}));
    assert_eq!(
        closed["isError"], true,
        "mallory closed alice's session: {closed}"
    );
    // Alice's session is still there, and mallory's own work goes on.
    assert_eq!(a.listed(), vec![id.clone()]);
    let ran = theirs.tool("run_code", json!({"code": "print(6 * 7)"}));
    assert!(ran.to_string().contains("42"), "{ran}");
    a.call(Method::DELETE, &format!("/v1/sessions/{id}"), None);
}

/// The E2B door answers as the key that sent `X-API-KEY` (also in its `e2b_` form): another
/// key neither lists nor reaches a sandbox, while the sandbox's own access token keeps
/// working for its owner's sandbox (with a keys file, outside-of-scope lookups fail closed).
#[test]
fn the_e2b_door_keeps_each_key_to_its_own_sandboxes() {
    let (_dir, server, alice, mallory) = two_keys();
    let http = reqwest::blocking::Client::builder()
        .timeout(scaled(Duration::from_secs(120)))
        .build()
        .expect("client");
    let control = |method: Method, path: &str, key: &str, body: Option<Value>| {
        let mut r = http
            .request(method, format!("{}{path}", server.base))
            .header("X-API-KEY", key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().expect("request");
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    let (status, made) = control(
        Method::POST,
        "/sandboxes",
        &format!("e2b_{alice}"),
        Some(json!({"templateID": "code-interpreter-v1", "timeout": 120})),
    );
    assert_eq!(status, 201, "{made}");
    let id = made["sandboxID"].as_str().expect("sandboxID").to_string();
    let token = made["envdAccessToken"].as_str().expect("token").to_string();

    // The owner lists and runs code in it through its own access token.
    let (status, listed) = control(Method::GET, "/sandboxes", &alice, None);
    assert_eq!(status, 200, "{listed}");
    assert!(listed.to_string().contains(&id), "{listed}");
    let r = http
        .post(format!("{}/execute", server.base))
        .header("E2b-Sandbox-Id", &id)
        .header("E2b-Sandbox-Port", "49999")
        .header("X-Access-Token", &token)
        .json(&json!({"code": "print(6*7)"}))
        .send()
        .expect("execute");
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().expect("body");
    assert!(text.contains("42"), "{text}");

    // Another key: not listed, not found, cannot kill it.
    let (status, listed) = control(Method::GET, "/sandboxes", &mallory, None);
    assert_eq!(status, 200, "{listed}");
    assert!(!listed.to_string().contains(&id), "{listed}");
    let (status, v) = control(Method::GET, &format!("/sandboxes/{id}"), &mallory, None);
    assert_eq!(status, 404, "{v}");
    let (status, v) = control(Method::DELETE, &format!("/sandboxes/{id}"), &mallory, None);
    assert_eq!(status, 404, "{v}");
    // A wrong key is refused outright.
    let (status, _) = control(Method::GET, "/sandboxes", "e2b_0123456789abcdef", None);
    assert_eq!(status, 401);
    // Still alive for its owner.
    let (status, v) = control(Method::GET, &format!("/sandboxes/{id}"), &alice, None);
    assert_eq!(status, 200, "{v}");
    let (status, _) = control(Method::DELETE, &format!("/sandboxes/{id}"), &alice, None);
    assert_eq!(status, 204);
}
