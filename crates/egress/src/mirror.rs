//! The package index as the sandbox sees it: `http://pyxis-index/simple/`, served by the
//! proxy itself. Each project page is fetched from the configured index (`PYXIS_PACKAGE_INDEX`)
//! by the server, through the session's policy and the address rules, and its file links are
//! rewritten to `/files/<sha256>/<name>`. A file is downloaded once for the whole server,
//! checked against its SHA-256 and kept in the cache directory; every later install, in any
//! session, is served from there. The sandbox's pip checks the hash again. TLS to the index is
//! the server's own (no interception of the sandbox's traffic), and only files that an index
//! page named can be fetched: the mirror is no relay for other URLs.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::policy::EgressPolicy;
use crate::proxy::{BodyError, ProxyBody, Refusal};
use crate::Proxy;

/// The host name the sandbox's pip uses for the index (plain HTTP, to the proxy).
pub const MIRROR_HOST: &str = "pyxis-index";
/// Largest index page read.
const MAX_PAGE: usize = 16 << 20;

/// What the mirror needs.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The upstream simple index, e.g. `https://pypi.org/simple/`.
    pub index: url::Url,
    /// Where downloaded files are kept, named by SHA-256.
    pub cache_dir: PathBuf,
    /// Largest file downloaded.
    pub max_file_bytes: u64,
    /// Time limit of one upstream fetch.
    pub timeout: Duration,
}

/// The mirror: its configuration, the files index pages named, and one lock per file being
/// downloaded (so that concurrent installs download it once).
#[derive(Debug)]
pub struct Mirror {
    config: MirrorConfig,
    named: Mutex<HashMap<String, url::Url>>,
    downloading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    downloads: std::sync::atomic::AtomicU64,
    hits: std::sync::atomic::AtomicU64,
}

/// PEP 503 normalization of a project name; `None` if it is not one.
pub fn normalize_project(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return None;
    }
    let mut out = String::new();
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    (!out.is_empty()).then_some(out)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A file name as it may appear in a path: no separators, no dot-only names.
fn safe_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'!'))
}

/// Rewrites a PEP 503 page: each `href` with a `#sha256=` fragment becomes
/// `/files/<sha256>/<file name>#sha256=<sha256>`; other links go; PEP 658 metadata attributes
/// go too (pip then reads the wheels themselves). Returns the page and each sha256's URL.
pub fn rewrite_page(page: &str, base: &url::Url) -> (String, Vec<(String, url::Url)>) {
    let mut out = String::with_capacity(page.len());
    let mut named = Vec::new();
    let mut rest = page;
    while let Some(start) = find_ci(rest, "<a ") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            rest = &rest[start..];
            break;
        };
        let tag = &rest[start..start + end + 1];
        let after = &rest[start + end + 1..];
        let close = find_ci(after, "</a>").map(|i| i + 4).unwrap_or(0);
        // An anchor without a usable hashed link is dropped, with its text.
        if let Some((anchor, sha, url)) = rewrite_anchor(tag, base) {
            named.push((sha, url));
            out.push_str(&anchor);
            out.push_str(&after[..close]);
        }
        rest = &after[close..];
    }
    out.push_str(rest);
    (out, named)
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The value of attribute `name` in a tag (double or single quotes).
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at > 0 && lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = lower[at + name.len()..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - rest.len() + 1;
        let value = tag[value_start..].trim_start();
        let quote = value.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        let end = value[1..].find(quote)?;
        return Some(&value[1..1 + end]);
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn rewrite_anchor(tag: &str, base: &url::Url) -> Option<(String, String, url::Url)> {
    let href = unescape(attribute(tag, "href")?);
    let mut url = base.join(&href).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let sha = url
        .fragment()?
        .strip_prefix("sha256=")
        .map(str::to_ascii_lowercase)?;
    if !is_sha256(&sha) {
        return None;
    }
    url.set_fragment(None);
    let name = url.path_segments()?.next_back()?.to_owned();
    let name = percent_decode(&name);
    if !safe_file_name(&name) {
        return None;
    }
    let mut anchor = format!("<a href=\"/files/{sha}/{name}#sha256={sha}\"");
    for kept in ["data-requires-python", "data-yanked"] {
        if let Some(value) = attribute(tag, kept) {
            anchor.push_str(&format!(" {kept}=\"{}\"", escape(&unescape(value))));
        }
    }
    anchor.push('>');
    Some((anchor, sha, url))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Counters of the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MirrorCounters {
    /// Files downloaded from the index.
    pub downloads: u64,
    /// Files served from the cache.
    pub hits: u64,
}

impl Mirror {
    /// A mirror of `config.index`; creates the cache directory.
    pub fn new(config: MirrorConfig) -> io::Result<Mirror> {
        std::fs::create_dir_all(&config.cache_dir)?;
        Ok(Mirror {
            config,
            named: Mutex::new(HashMap::new()),
            downloading: Mutex::new(HashMap::new()),
            downloads: Default::default(),
            hits: Default::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MirrorConfig {
        &self.config
    }

    /// Downloads and cache hits so far.
    pub fn counters(&self) -> MirrorCounters {
        use std::sync::atomic::Ordering::Relaxed;
        MirrorCounters {
            downloads: self.downloads.load(Relaxed),
            hits: self.hits.load(Relaxed),
        }
    }

    /// Serves a request the sandbox sent to [`MIRROR_HOST`].
    pub(crate) async fn handle(
        &self,
        proxy: &Proxy,
        policy: &EgressPolicy,
        req: &Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return Err(Refusal::BadRequest("the index takes GET only".into()));
        }
        let path = req.uri().path();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["simple", project, ""] | ["simple", project] => {
                let project = normalize_project(project)
                    .ok_or_else(|| Refusal::BadRequest("not a project name".into()))?;
                self.page(proxy, policy, &project).await
            }
            ["files", sha, name] if is_sha256(sha) && safe_file_name(name) => {
                self.file(proxy, policy, sha).await
            }
            _ => Ok(plain(StatusCode::NOT_FOUND, "not found\n")),
        }
    }

    /// A client for `url` that connects only to the address the rules checked.
    async fn client(
        &self,
        proxy: &Proxy,
        policy: &EgressPolicy,
        url: &url::Url,
    ) -> Result<reqwest::Client, Refusal> {
        let host = url
            .host_str()
            .ok_or_else(|| Refusal::BadRequest("the index URL has no host".into()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Refusal::BadRequest("the index URL has no port".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = proxy.check(policy, host, port).await?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.config.timeout)
            .timeout(self.config.timeout);
        if let Some(url::Host::Domain(domain)) = url.host() {
            builder = builder.resolve(domain, addr);
        }
        builder.build().map_err(|err| Refusal::Connect {
            target: host.to_owned(),
            reason: err.to_string(),
        })
    }

    async fn page(
        &self,
        proxy: &Proxy,
        policy: &EgressPolicy,
        project: &str,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let url = self
            .config
            .index
            .join(&format!("{project}/"))
            .map_err(|_| Refusal::BadRequest("not a project name".into()))?;
        let client = self.client(proxy, policy, &url).await?;
        let failed = |reason: String| Refusal::Connect {
            target: url.host_str().unwrap_or_default().to_owned(),
            reason,
        };
        let response = client
            .get(url.clone())
            .header(header::ACCEPT, "text/html")
            .send()
            .await
            .map_err(|err| failed(without_url(&err)))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(plain(
                StatusCode::NOT_FOUND,
                "no such project on the index\n",
            ));
        }
        if !response.status().is_success() {
            return Err(failed(format!("the index answered {}", response.status())));
        }
        let mut page = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(without_url(&e)))?
        {
            page.extend_from_slice(&chunk);
            if page.len() > MAX_PAGE {
                return Err(failed("the index page is too large".into()));
            }
        }
        let page = String::from_utf8_lossy(&page);
        let (html, named) = rewrite_page(&page, &url);
        {
            let mut known = self.named.lock().unwrap_or_else(|p| p.into_inner());
            known.extend(named);
        }
        let mut answer = Response::new(full(html));
        answer.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        Ok(answer)
    }

    async fn file(
        &self,
        proxy: &Proxy,
        policy: &EgressPolicy,
        sha: &str,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let Some(url) = self
            .named
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha)
            .cloned()
        else {
            return Ok(plain(
                StatusCode::NOT_FOUND,
                "no index page named this file\n",
            ));
        };
        // The session must be allowed to reach the file's host, cached or not.
        let client = self.client(proxy, policy, &url).await?;
        let path = self.config.cache_dir.join(sha);
        let lock = {
            let mut locks = self.downloading.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(sha.to_owned()).or_default().clone()
        };
        let guard = lock.lock().await;
        if tokio::fs::metadata(&path).await.is_ok() {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.download(&client, &url, sha, &path).await?;
            self.downloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        drop(guard);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|err| Refusal::Connect {
                target: "the package cache".into(),
                reason: err.kind().to_string(),
            })?;
        let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 16);
        let body = StreamBody::new(futures_util::StreamExt::map(stream, |chunk| {
            chunk.map(hyper::body::Frame::data)
        }));
        let mut answer = Response::new(BodyExt::map_err(body, BodyError::from).boxed());
        let headers = answer.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        Ok(answer)
    }

    /// Downloads `url` into the cache as `path`, checking size and SHA-256.
    async fn download(
        &self,
        client: &reqwest::Client,
        url: &url::Url,
        sha: &str,
        path: &std::path::Path,
    ) -> Result<(), Refusal> {
        let failed = |reason: String| Refusal::Connect {
            target: url.host_str().unwrap_or_default().to_owned(),
            reason,
        };
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| failed(without_url(&e)))?;
        if !response.status().is_success() {
            return Err(failed(format!("the index answered {}", response.status())));
        }
        let partial = path.with_extension(format!("part-{}", std::process::id()));
        let cache_error = |err: io::Error| failed(format!("package cache: {}", err.kind()));
        let mut out = tokio::fs::File::create(&partial)
            .await
            .map_err(cache_error)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let result = async {
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| failed(without_url(&e)))?
            {
                size += chunk.len() as u64;
                if size > self.config.max_file_bytes {
                    return Err(failed(format!(
                        "the file is larger than {} bytes",
                        self.config.max_file_bytes
                    )));
                }
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(cache_error)?;
            }
            out.flush().await.map_err(cache_error)?;
            let got = hex(&hasher.finalize_reset());
            if got != sha {
                return Err(failed(format!(
                    "the file's SHA-256 is {got}, the index said {sha}"
                )));
            }
            tokio::fs::rename(&partial, path).await.map_err(cache_error)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn without_url(err: &reqwest::Error) -> String {
    let mut s = err.to_string();
    if let Some(u) = err.url() {
        s = s.replace(&format!(" ({u})"), "");
    }
    s
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(text.to_owned()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_rewritten_to_hashed_files() {
        let base = url::Url::parse("https://pypi.org/simple/tiny/").expect("url");
        let sha = "a".repeat(64);
        let page = format!(
            "<html><body>\n<a href=\"../../packages/t/tiny-1.0-py3-none-any.whl#sha256={sha}\" \
             data-requires-python=\"&gt;=3.8\" data-dist-info-metadata=\"sha256={sha}\">tiny-1.0-py3-none-any.whl</a><br/>\n\
             <A HREF='https://files.example/tiny-0.9.tar.gz'>no hash</A>\n\
             <a href=\"javascript:alert(1)#sha256={sha}\">x</a>\n</body></html>"
        );
        let (html, named) = rewrite_page(&page, &base);
        assert!(html.contains(&format!(
            "<a href=\"/files/{sha}/tiny-1.0-py3-none-any.whl#sha256={sha}\" data-requires-python=\"&gt;=3.8\">tiny-1.0-py3-none-any.whl</a>"
        )), "{html}");
        assert!(
            !html.contains("no hash") && !html.contains("javascript"),
            "{html}"
        );
        assert!(!html.contains("data-dist-info-metadata"), "{html}");
        assert_eq!(named.len(), 1);
        assert_eq!(
            named[0].1.as_str(),
            "https://pypi.org/packages/t/tiny-1.0-py3-none-any.whl"
        );
    }

    #[test]
    fn names_and_hashes_are_checked() {
        assert_eq!(
            normalize_project("Pyxis_Tiny").as_deref(),
            Some("pyxis-tiny")
        );
        assert_eq!(normalize_project("a..b").as_deref(), Some("a-b"));
        for bad in ["", "../x", "a/b", "a b", "%2e%2e"] {
            assert_eq!(normalize_project(bad), None, "{bad}");
        }
        assert!(is_sha256(&"0".repeat(64)));
        assert!(!is_sha256(&"A".repeat(64)));
        assert!(!is_sha256("abc"));
        assert!(safe_file_name("tiny-1.0-py3-none-any.whl"));
        for bad in ["..", "a/b", "", "a\\b", "x y"] {
            assert!(!safe_file_name(bad), "{bad}");
        }
    }
}
