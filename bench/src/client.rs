//! A thin keep-alive HTTP client for the Pyxis v1 API.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Client for one server. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An answer with how long it took (request sent to body read), in ms.
pub struct Timed<T> {
    pub value: T,
    pub ms: f64,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Result<Api> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(512)
            .pool_idle_timeout(Duration::from_secs(300))
            .timeout(Duration::from_secs(300))
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Timed<(StatusCode, Value)>> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let start = Instant::now();
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: reading the body"))?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Timed {
            value: (status, value),
            ms,
        })
    }

    fn expect(path: &str, t: Timed<(StatusCode, Value)>, want: StatusCode) -> Result<Timed<Value>> {
        let (status, value) = t.value;
        if status != want {
            bail!("{path}: HTTP {status} (expected {want}): {}", short(&value));
        }
        Ok(Timed { value, ms: t.ms })
    }

    /// `POST /v1/sessions {}` → the session id.
    pub async fn create_session(&self) -> Result<Timed<String>> {
        let path = "/v1/sessions";
        let t = self.call(Method::POST, path, Some(&json!({}))).await?;
        let t = Self::expect(path, t, StatusCode::CREATED)?;
        let id = t.value["id"]
            .as_str()
            .ok_or_else(|| anyhow!("{path}: no id in {}", short(&t.value)))?
            .to_string();
        Ok(Timed {
            value: id,
            ms: t.ms,
        })
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn delete_session(&self, id: &str) -> Result<Timed<()>> {
        let path = format!("/v1/sessions/{id}");
        let t = self.call(Method::DELETE, &path, None).await?;
        let t = Self::expect(&path, t, StatusCode::NO_CONTENT)?;
        Ok(Timed {
            value: (),
            ms: t.ms,
        })
    }

    /// `POST /v1/sessions/{id}/execute` → the Execution (any `status`).
    pub async fn execute(&self, id: &str, code: &str) -> Result<Timed<Value>> {
        let path = format!("/v1/sessions/{id}/execute");
        let t = self
            .call(Method::POST, &path, Some(&json!({ "code": code })))
            .await?;
        Self::expect(&path, t, StatusCode::OK)
    }

    /// Like [`Api::execute`], but a cell whose status is not `ok` is an error.
    pub async fn execute_ok(&self, id: &str, code: &str) -> Result<Timed<Value>> {
        let t = self.execute(id, code).await?;
        check_ok(&t.value)?;
        Ok(t)
    }

    /// `POST /v1/execute` (one-shot).
    pub async fn oneshot(&self, code: &str) -> Result<Timed<Value>> {
        let path = "/v1/execute";
        let t = self
            .call(Method::POST, path, Some(&json!({ "code": code })))
            .await?;
        Self::expect(path, t, StatusCode::OK)
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Value> {
        let path = "/v1/status";
        let t = self.call(Method::GET, path, None).await?;
        Ok(Self::expect(path, t, StatusCode::OK)?.value)
    }

    /// Whether `GET <path>` answers 2xx.
    pub async fn probe(&self, path: &str) -> bool {
        match self.call(Method::GET, path, None).await {
            Ok(t) => t.value.0.is_success(),
            Err(_) => false,
        }
    }

    /// Wait until the warm pool has a sandbox ready.
    pub async fn wait_pool_idle(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let s = self.status().await?;
            if s["pool_idle"].as_u64().unwrap_or(0) > 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("the warm pool stayed empty for {limit:?} (status: {s})");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Error unless an Execution's status is `ok`.
pub fn check_ok(exec: &Value) -> Result<()> {
    if exec["status"] != "ok" {
        bail!(
            "cell status {} (error: {})",
            exec["status"],
            short(&exec["error"])
        );
    }
    Ok(())
}

/// A JSON value cut to a readable length for error messages.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}
