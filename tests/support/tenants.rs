//! Keys and tenants for tests: keys made by `pyxis key new`, a client speaking as one key,
//! and the keys file written as a deploy tool would.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{pyxis_bin, scaled, TestServer};

/// A key made by `pyxis key new`: its secret and its keys-file entry.
pub struct Key {
    /// The secret the client sends.
    pub secret: String,
    /// The `[[key]]` entry (name and hash).
    pub entry: String,
}

/// `pyxis key new --name <name>`, with `limits` lines added to its entry.
pub fn new_key(name: &str, limits: &str) -> Key {
    let out = Command::new(pyxis_bin())
        .args(["key", "new", "--name", name])
        .output()
        .expect("run pyxis key new");
    assert!(
        out.status.success(),
        "pyxis key new: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let (secret, entry) = stdout.split_once('\n').expect("secret, then the entry");
    assert!(secret.starts_with("pyx_") && secret.len() > 60, "{secret}");
    assert!(!entry.contains(secret), "the entry holds the secret");
    assert!(entry.contains(&format!("name = \"{name}\"")), "{entry}");
    Key {
        secret: secret.to_string(),
        entry: format!("{}{limits}\n", entry.trim_start()),
    }
}

/// A client speaking as one key.
pub struct As<'a> {
    server: &'a TestServer,
    secret: String,
    client: Client,
}

impl<'a> As<'a> {
    /// Requests with `secret` as the bearer token.
    pub fn new(server: &'a TestServer, secret: &str) -> Self {
        Self {
            server,
            secret: secret.to_string(),
            client: Client::builder()
                .timeout(scaled(Duration::from_secs(120)))
                .pool_idle_timeout(crate::client_pool_idle())
                .build()
                .expect("client"),
        }
    }

    /// A request to `path` with the key.
    pub fn req(&self, method: Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.server.base))
            .bearer_auth(&self.secret)
    }

    /// Status and JSON body of a request (`Value::Null` for an empty body).
    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().expect("request");
        let status = r.status().as_u16();
        let text = r.text().expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Create a session; its id.
    pub fn create(&self) -> String {
        let (status, v) = self.call(Method::POST, "/v1/sessions", Some(json!({})));
        assert_eq!(status, 201, "create: {v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Ids of the sessions `GET /v1/sessions` lists.
    pub fn listed(&self) -> Vec<String> {
        let (status, v) = self.call(Method::GET, "/v1/sessions", None);
        assert_eq!(status, 200, "{v}");
        v["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect()
    }

    /// Ids of the kernels `GET /api/kernels` lists.
    pub fn kernels(&self) -> Vec<String> {
        let (status, v) = self.call(Method::GET, "/api/kernels", None);
        assert_eq!(status, 200, "{v}");
        v.as_array()
            .expect("kernels")
            .iter()
            .map(|k| k["id"].as_str().expect("id").to_string())
            .collect()
    }
}

/// Write the keys file atomically (as an editor or a deploy tool would).
pub fn write_keys(path: &Path, entries: &[&str]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, entries.join("\n")).expect("write keys");
    std::fs::rename(&tmp, path).expect("install keys");
}

/// Send SIGHUP to the server.
pub fn sighup(server: &TestServer) {
    // SAFETY: kill(2) on the pid of our own child server.
    let r = unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    assert_eq!(r, 0, "SIGHUP");
}

/// Wait until `f` holds (polling), failing with `what` after `limit`.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
