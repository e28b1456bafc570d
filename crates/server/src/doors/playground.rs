//! The playground page at `/`: a single-page app (built from `web/` by Vite)
//! compiled into the binary, so the one executable stays the whole product.
//!
//! The page and its assets are open (no token): they are the same for
//! everyone and hold no data. Every API call the page makes carries the
//! token, which the page keeps in the browser's storage.
//!
//! Security headers: the page may run only its own scripts and connect only
//! to this server; cell HTML and plotly figures are shown in `/frame.html`,
//! which its own header sandboxes (an opaque origin, whatever embeds it), so
//! nothing a cell displays can read the token or call the API as the page.
//!
//! When `web/dist` was missing at compile time, `/` says how to build it.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::app::AppState;

include!(concat!(env!("OUT_DIR"), "/page_files.rs"));

/// The page's policy: its own scripts only, its styles (CodeMirror adds its
/// own at run time, so inline styles are allowed: cell output never enters
/// the page's DOM as HTML), images from data and blob URLs (cell images,
/// downloads), frames of its own origin only (the cell frame), connections
/// to this server only, never framed itself.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; frame-src 'self'; \
    child-src 'self'; worker-src 'none'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The cell frame's policy: sandboxed without `allow-same-origin` (an
/// opaque origin, no storage, no access to the page), scripts of this
/// server only (so a cell's inline `<script>` and `onerror=` never run),
/// inline styles (tables, plotly), images from data URLs, no connection at
/// all, and framed only by the page.
const FRAME_CSP: &str = "sandbox allow-scripts; default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src data: blob:; font-src data:; \
    connect-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'self'";

/// Shown at `/` by a binary built without the page.
const NOT_BUILT: &str = "The playground page is not in this build of pyxis: web/dist was \
    missing when it was compiled.\n\nBuild the page, then pyxis:\n\n    \
    (cd web && npm ci && npm run build) && cargo build --release\n\n\
    ./scripts/serve does both.\n";

/// The page's routes: `/`, `/frame.html` and `/assets/*`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/frame.html", get(frame))
        .route("/assets/{*path}", get(asset))
}

/// Whether a path is one of the page's open paths (no token needed).
pub fn is_open(path: &str) -> bool {
    path == "/" || path == "/frame.html" || path.starts_with("/assets/")
}

fn file(path: &str) -> Option<&'static [u8]> {
    PAGE_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, body)| *body)
}

fn with_common(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn html(body: &'static [u8], csp: &'static str, frame_options: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static(frame_options),
    );
    // The page names its assets by content hash: always ask for the page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_common(resp)
}

/// `GET /`: the playground page.
async fn index() -> Response {
    match file("index.html") {
        Some(body) => {
            let mut resp = html(body, PAGE_CSP, "DENY");
            resp.headers_mut().insert(
                "cross-origin-opener-policy",
                HeaderValue::from_static("same-origin"),
            );
            resp
        }
        None => with_common(
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                NOT_BUILT,
            )
                .into_response(),
        ),
    }
}

/// `GET /frame.html`: the sandboxed frame a cell's HTML is shown in.
async fn frame() -> Response {
    match file("frame.html") {
        Some(body) => html(body, FRAME_CSP, "SAMEORIGIN"),
        None => crate::error::ApiError::not_found().into_response(),
    }
}

/// `GET /assets/{path}`: the page's scripts and styles, named by hash.
async fn asset(Path(path): Path<String>) -> Response {
    let name = format!("assets/{path}");
    let Some(body) = file(&name) else {
        return crate::error::ApiError::not_found().into_response();
    };
    let mime = mime_guess::from_path(&name).first_or_octet_stream();
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    // The cell frame has an opaque origin, so its module scripts are fetched
    // with CORS; these files are public and the same for everyone.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    with_common(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_paths_are_the_page_only() {
        assert!(is_open("/"));
        assert!(is_open("/frame.html"));
        assert!(is_open("/assets/main-abc.js"));
        assert!(!is_open("/v1/sessions"));
        assert!(!is_open("/assets"));
        assert!(!is_open("/frame.html/x"));
        assert!(!is_open("//"));
    }

    #[test]
    fn policies_forbid_inline_script_and_same_origin_frames() {
        for csp in [PAGE_CSP, FRAME_CSP] {
            let script = csp
                .split(';')
                .map(str::trim)
                .find(|d| d.starts_with("script-src"))
                .expect("script-src");
            assert_eq!(script, "script-src 'self'");
        }
        assert!(PAGE_CSP.contains("connect-src 'self'"));
        assert!(PAGE_CSP.contains("frame-ancestors 'none'"));
        assert!(FRAME_CSP.starts_with("sandbox allow-scripts;"));
        assert!(!FRAME_CSP.contains("allow-same-origin"));
        assert!(FRAME_CSP.contains("connect-src 'none'"));
    }
}
