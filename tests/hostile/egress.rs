//! The egress proxy under attack, from inside a sandbox, through a real server: it is no
//! open relay, request smuggling and header tricks do not get a request past the policy, a
//! flood of CONNECTs is refused by the limits without harm, and garbage to the listener is
//! answered and closed. The only servers reached are the test's own, on loopback.

use std::time::Duration;

use pyxis_tests::packages::WebServer;
use pyxis_tests::TestServer;
use serde_json::json;

/// `send(raw)`: one connection to the sandbox's egress listener, `raw` written, everything
/// read until the proxy closes or 2 s of silence; returns it as text.
const SEND: &str = r#"
import socket
def send(raw, wait=2):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=wait)
    try:
        s.sendall(raw.encode() if isinstance(raw, str) else raw)
    except OSError:
        pass
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    return data.decode(errors="replace")
"#;

fn start(allowed: &[&WebServer]) -> TestServer {
    let allow: Vec<String> = allowed
        .iter()
        .map(|w| format!("127.0.0.1:{}", w.addr.port()))
        .collect();
    TestServer::start(&[
        ("PYXIS_EGRESS_ALLOW", &allow.join(",")),
        ("PYXIS_EGRESS_RATE", "10"),
        ("PYXIS_EGRESS_MAX_CONNECTIONS", "16"),
    ])
}

#[test]
fn egress_is_no_open_relay() {
    let w = WebServer::start();
    let other = WebServer::start();
    let server = start(&[&w, &other]);
    let (pw, po) = (w.addr.port(), other.addr.port());
    // Policy none: nothing, whatever the form of the request.
    let none = server.session();
    none.ok(SEND);
    for raw in [
        format!("GET http://127.0.0.1:{pw}/ HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{pw} HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\n\r\n"),
        format!("GET https://127.0.0.1:{pw}/ HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\n\r\n"),
        format!("GET ftp://127.0.0.1:{pw}/ HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\n\r\n"),
        "GET http://pyxis-index/simple/x/ HTTP/1.1\r\nHost: pyxis-index\r\n\r\n".to_owned(),
    ] {
        let answer = none.ok(&format!("print(send({raw:?}))"));
        assert!(
            answer.starts_with("HTTP/1.1 403") || answer.starts_with("HTTP/1.1 400"),
            "{raw:?} → {answer}"
        );
    }
    assert!(w.heads().is_empty(), "{:?}", w.heads());

    // Allowed to reach `w` only: tricks to reach `other` through it fail.
    let s = server.session_with(
        json!({"network": {"egress": "allow", "allow": [format!("127.0.0.1:{pw}")]}}),
    );
    s.ok(SEND);
    let tricks = [
        // The URL names `other`, the Host header `w`.
        format!("GET http://127.0.0.1:{po}/ HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\n\r\n"),
        // Credentials in the authority, an `@` to confuse a parser.
        format!("GET http://127.0.0.1:{pw}@127.0.0.1:{po}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{pw}@127.0.0.1:{po} HTTP/1.1\r\nHost: x\r\n\r\n"),
        // Smuggling: both framings, a second request hidden in the body.
        format!(
            "POST http://127.0.0.1:{pw}/a HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\nContent-Length: 4\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://127.0.0.1:{po}/smuggled HTTP/1.1\r\n\
             Host: 127.0.0.1:{po}\r\n\r\n"
        ),
        // Two Content-Lengths.
        format!(
            "POST http://127.0.0.1:{pw}/b HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\nContent-Length: 0\r\n\
             Content-Length: 60\r\n\r\nGET http://127.0.0.1:{po}/smuggled2 HTTP/1.1\r\nHost: x\r\n\r\n"
        ),
        // A pipelined second request to `other` after a good one.
        format!(
            "GET http://127.0.0.1:{pw}/c HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\n\r\n\
             GET http://127.0.0.1:{po}/d HTTP/1.1\r\nHost: 127.0.0.1:{po}\r\n\r\n"
        ),
        // An upgrade over plain HTTP (a tunnel by another name).
        format!(
            "GET http://127.0.0.1:{pw}/e HTTP/1.1\r\nHost: 127.0.0.1:{pw}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\n\r\n"
        ),
    ];
    for raw in &tricks {
        s.ok(&format!("print(send({raw:?}))"));
    }
    assert!(
        other.heads().is_empty(),
        "the other server was reached: {:?}",
        other.heads()
    );
    // What reached `w` carried its own Host, never the client's, and no proxy headers.
    // (Heads only: this simple server reads no bodies, so a body's lines show up too.)
    for head in w
        .heads()
        .iter()
        .filter(|h| h.lines().next().is_some_and(|l| l.ends_with("HTTP/1.1")))
    {
        assert!(
            head.contains(&format!("host: 127.0.0.1:{pw}"))
                || head.contains(&format!("Host: 127.0.0.1:{pw}")),
            "{head}"
        );
        assert!(!head.to_ascii_lowercase().contains("proxy-"), "{head}");
    }
}

#[test]
fn egress_connect_flood_and_garbage_are_refused_without_harm() {
    let w = WebServer::start();
    let server = start(&[&w]);
    let pw = w.addr.port();
    let network = json!({"network": {"egress": "allow", "allow": [format!("127.0.0.1:{pw}")]}});
    let s = server.session_with(network.clone());
    s.ok(SEND);
    let neighbour = server.session_with(network);
    neighbour.ok(SEND);

    // 300 CONNECTs as fast as the sandbox can make them.
    let flood = s.ok(&format!(
        "import socket, collections\ncodes = collections.Counter()\nheld = []\n\
         for _ in range(300):\n    try:\n        c = socket.create_connection(('127.0.0.1', 3128), timeout=5)\n        \
         c.sendall(b'CONNECT 127.0.0.1:{pw} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n        \
         line = c.recv(200).split(b'\\r\\n')[0].decode(errors='replace')\n        codes[line[9:12] or 'closed'] += 1\n        held.append(c)\n    \
         except OSError as e:\n        codes[type(e).__name__] += 1\nfor c in held: c.close()\nprint(dict(codes))"
    ));
    assert!(
        flood.contains("'429'"),
        "no limit refused the flood: {flood}"
    );
    assert!(!flood.contains("'200': 300"), "{flood}");

    // Garbage, an oversized head, a head that never ends.
    for expr in [
        r"b'\x00\xff garbage \r\n\r\n'",
        r"b'NOT-A-METHOD http://x/ HTTP/9.9\r\n\r\n'",
        r"b'GET http://x/ HTTP/1.1\r\nX: ' + b'a' * 200000 + b'\r\n\r\n'",
    ] {
        let answer = s.ok(&format!("print(repr(send({expr})[:40]))"));
        assert!(
            answer.contains("HTTP/1.1 4") || answer.trim() == "''",
            "{expr}: {answer}"
        );
    }
    let slow = s.ok("import socket, time\nc = socket.create_connection(('127.0.0.1', 3128))\nc.sendall(b'GET http://x/ HTTP/1.1\\r\\nHost: x\\r\\n')\nc.settimeout(30)\nt = time.time()\ntry:\n    data = c.recv(100)\nexcept OSError:\n    data = b''\nprint(round(time.time() - t), data[:12])");
    let waited: u64 = slow
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(99);
    assert!(waited <= 20, "a slow head was held {slow}");

    // Everyone still works: the neighbour at once, the flooder once its rate recovers.
    let ok = |sess: &pyxis_tests::Session<'_>| {
        sess.ok(&format!(
            "print(send('GET http://127.0.0.1:{pw}/ok HTTP/1.1\\r\\nHost: 127.0.0.1:{pw}\\r\\nConnection: close\\r\\n\\r\\n').split('\\r\\n')[0])"
        ))
    };
    assert_eq!(ok(&neighbour).trim(), "HTTP/1.1 200 OK");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ok(&s).trim(), "HTTP/1.1 200 OK");
    assert_eq!(server.get("/healthz").status(), 200);
}

/// The function runner's package routes take requirements only: options (`--index-url`,
/// `-r`), URLs, paths and path-like names, shell and marker tricks are refused with a 422
/// before any sandbox or index is involved; a server whose operator allows no egress refuses
/// installs with a 403; none of it changes the runner's set.
#[test]
fn egress_runner_packages_refuse_what_is_not_a_requirement() {
    use pyxis_tests::packages::IndexedServer;
    let fx = IndexedServer::start(&[("PYXIS_RUNNER_PACKAGES", "true")]);
    let IndexedServer {
        server,
        index,
        allow,
        fixtures: _fixtures,
    } = fx;
    let install = |body: serde_json::Value| {
        let r = server.post("/api/pypkg/install", &body);
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().unwrap_or_default())
    };
    for bad in [
        json!({"package": "--index-url=http://127.0.0.1:9/simple/"}),
        json!({"package": "-r /etc/passwd"}),
        json!({"package": "pyxis-tiny --extra-index-url http://127.0.0.1:9/"}),
        json!({"package": "pyxis-tiny", "version": "1.0 --pre"}),
        json!({"package": "pyxis-tiny", "version": "1.0; rm -rf /"}),
        json!({"package": "x @ http://127.0.0.1:9/x.whl"}),
        json!({"package": "http://127.0.0.1:9/x.whl"}),
        json!({"package": "../../etc/passwd"}),
        json!({"package": "/workspace/evil"}),
        json!({"package": "./local"}),
        json!({"package": "pyxis-tiny; os_name == 'posix'"}),
        json!({"package": "pyxis-tiny\n--pre"}),
        json!({"package": ""}),
        json!({"packages": []}),
        json!({"packages": ["pyxis-tiny", "-e ."]}),
        json!({"package": "pyxis-tiny", "packages": ["pyxis-tiny"]}),
        json!({"package": "pyxis-tiny", "index_url": "http://127.0.0.1:9/"}),
        json!({"package": 5}),
        json!({}),
        json!([]),
    ] {
        let (status, body) = install(bad.clone());
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["code"], "CodeRunner.InvalidParameter", "{bad}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    for bad in ["--all", "../x", "/etc", "-y", "x y", ""] {
        let r = server
            .req(reqwest::Method::DELETE, "/api/pypkg/uninstall")
            .json(&json!({ "package": bad }))
            .send()
            .expect("uninstall");
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().unwrap_or_default();
        assert_eq!(status, 422, "{bad:?}: {body}");
        assert_eq!(
            body["code"], "CodeRunner.InvalidParameter",
            "{bad:?}: {body}"
        );
    }
    let r = server.delete("/api/pypkg/uninstall?package=--all");
    assert_eq!(r.status(), 422);
    let r = server.delete("/api/pypkg/uninstall");
    assert_eq!(r.status(), 422);
    // A name the set does not hold.
    let r = server.delete("/api/pypkg/uninstall?package=pyxis-tiny");
    assert_eq!(r.status(), 404);
    assert!(
        index.requests().is_empty(),
        "the index was asked: {:?}",
        index.requests()
    );
    let listed: serde_json::Value = server.get("/api/pypkg/list").json().expect("json");
    assert_eq!(listed["packages"], json!([]));

    // Runner installs off (the default), or no egress allowed by the operator: refused,
    // with the runner's error.
    for settings in [
        vec![("PYXIS_EGRESS_MAX", "allow")],
        vec![
            ("PYXIS_EGRESS_MAX", "none"),
            ("PYXIS_RUNNER_PACKAGES", "true"),
        ],
    ] {
        let mut all = vec![
            ("PYXIS_PACKAGE_INDEX", index.url()),
            ("PYXIS_EGRESS_ALLOW", allow.clone()),
        ];
        all.extend(settings.iter().map(|(k, v)| (*k, v.to_string())));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let closed = TestServer::start(&all);
        let r = closed.post("/api/pypkg/install", &json!({"package": "pyxis-tiny"}));
        assert_eq!(r.status(), 403, "{settings:?}");
        let body: serde_json::Value = r.json().expect("json");
        assert_eq!(body["code"], "CodeRunner.EgressRefused", "{body}");
        assert!(index.requests().is_empty());
    }
}
