//! The `Origin` check of the MCP transport: the specification asks servers to validate it
//! so that a web page cannot drive a local server through the browser (DNS rebinding).

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Refuse a request whose `Origin` is neither the server's own (the same authority as the
/// `Host` it was sent to) nor loopback. Requests without `Origin` (non-browser clients)
/// pass.
pub async fn check_origin(req: Request, next: Next) -> Response {
    match allowed(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(origin) => ApiError::with_status(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("requests from origin {origin:?} are not accepted on /mcp"),
        )
        .into_response(),
    }
}

fn allowed(headers: &HeaderMap) -> Result<(), String> {
    let Some(raw) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = raw.to_str().map_err(|_| "(not text)".to_string())?;
    let url = url::Url::parse(origin).map_err(|_| origin.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(origin.to_string());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback {
        return Ok(());
    }
    let authority = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => return Err(origin.to_string()),
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|h| h.eq_ignore_ascii_case(&authority)) {
        Ok(())
    } else {
        Err(origin.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().expect("a valid header"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().expect("a valid header"));
        }
        h
    }

    #[test]
    fn origins() {
        assert!(allowed(&headers(None, "pyxis.example:8080")).is_ok());
        assert!(allowed(&headers(Some("http://localhost:6274"), "a:1")).is_ok());
        assert!(allowed(&headers(Some("http://127.0.0.1"), "a:1")).is_ok());
        assert!(allowed(&headers(Some("http://[::1]:3000"), "a:1")).is_ok());
        assert!(allowed(&headers(
            Some("https://pyxis.example:8080"),
            "pyxis.example:8080"
        ))
        .is_ok());
        assert!(allowed(&headers(Some("https://evil.example"), "pyxis.example:8080")).is_err());
        assert!(allowed(&headers(Some("http://localhost.evil.example"), "a:1")).is_err());
        assert!(allowed(&headers(Some("null"), "a:1")).is_err());
        assert!(allowed(&headers(Some("file:///x"), "a:1")).is_err());
    }
}
