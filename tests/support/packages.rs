//! Package fixtures and a PEP 503 simple index on loopback, for the egress and packages
//! tests (no internet). The fixtures are built from `tests/fixtures/packages` by its
//! `build.py`; see the README there.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The wheel of `pyxis_tiny` (`pyxis_tiny.VALUE == 42`).
pub const TINY_WHEEL: &str = "pyxis_tiny-1.0-py3-none-any.whl";
/// The sdist whose build backend misbehaves.
pub const MISBEHAVING_SDIST: &str = "pyxis_misbehave-1.0.tar.gz";

/// The built fixtures: file name → (path, SHA-256).
pub struct Fixtures {
    /// Where they were built (kept until drop).
    pub dir: tempfile::TempDir,
    /// Each file with its SHA-256.
    pub files: BTreeMap<String, (PathBuf, String)>,
}

/// A Python to run `build.py` with: the runtime's, else `python3`.
fn python() -> PathBuf {
    let runtime = std::env::var_os("PYXIS_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pyxis/runtime"));
    let venv = runtime.join("venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

impl Fixtures {
    /// Builds the wheel and the sdist into a temporary directory.
    pub fn build() -> Fixtures {
        let dir = tempfile::Builder::new()
            .prefix("pyxis-packages-")
            .tempdir()
            .expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/packages/build.py");
        let out = Command::new(python())
            .arg(&script)
            .arg(dir.path())
            .output()
            .expect("run build.py");
        assert!(
            out.status.success(),
            "build.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let index: HashMap<String, String> = serde_json::from_slice(
            &std::fs::read(dir.path().join("index.json")).expect("index.json"),
        )
        .expect("index.json parses");
        let files = index
            .into_iter()
            .map(|(name, sha)| (name.clone(), (dir.path().join(&name), sha)))
            .collect();
        Fixtures { dir, files }
    }
}

/// PEP 503 normalization of a project name.
pub fn normalize(name: &str) -> String {
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
    out
}

/// The project a distribution file belongs to (`pyxis_tiny-1.0-…whl` → `pyxis-tiny`).
fn project_of(file: &str) -> String {
    normalize(file.split('-').next().unwrap_or(file))
}

/// A PEP 503 simple index serving some files over plain HTTP on loopback, counting what it
/// serves.
pub struct PackageIndex {
    /// Where it listens.
    pub addr: SocketAddr,
    downloads: Arc<Mutex<HashMap<String, usize>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl PackageIndex {
    /// Serves `files` (name → (path, SHA-256)).
    pub fn start(files: &BTreeMap<String, (PathBuf, String)>) -> PackageIndex {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the index");
        let addr = listener.local_addr().expect("addr");
        let files = Arc::new(files.clone());
        let downloads = Arc::new(Mutex::new(HashMap::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (d, r) = (downloads.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (files, d, r) = (files.clone(), d.clone(), r.clone());
                std::thread::spawn(move || serve(stream, &files, &d, &r));
            }
        });
        PackageIndex {
            addr,
            downloads,
            requests,
        }
    }

    /// The index URL, as `PYXIS_PACKAGE_INDEX` or pip's `--index-url` takes it.
    pub fn url(&self) -> String {
        format!("http://{}/simple/", self.addr)
    }

    /// How many times `file` was downloaded.
    pub fn downloads(&self, file: &str) -> usize {
        self.downloads
            .lock()
            .expect("lock")
            .get(file)
            .copied()
            .unwrap_or(0)
    }

    /// Every request path so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

fn serve(
    stream: TcpStream,
    files: &BTreeMap<String, (PathBuf, String)>,
    downloads: &Mutex<HashMap<String, usize>>,
    requests: &Mutex<Vec<String>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(&stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        requests.lock().expect("lock").push(path.clone());
        let (status, content_type, body) = answer(&path, files, downloads);
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut writer = &stream;
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
            return;
        }
    }
}

fn answer(
    path: &str,
    files: &BTreeMap<String, (PathBuf, String)>,
    downloads: &Mutex<HashMap<String, usize>>,
) -> (&'static str, &'static str, Vec<u8>) {
    let html = "text/html; charset=utf-8";
    let not_found = ("404 Not Found", "text/plain", b"not found\n".to_vec());
    let path = path.split('?').next().unwrap_or(path);
    if path == "/simple/" {
        let mut projects: Vec<String> = files.keys().map(|f| project_of(f)).collect();
        projects.dedup();
        let links: String = projects
            .iter()
            .map(|p| format!("<a href=\"/simple/{p}/\">{p}</a>\n"))
            .collect();
        let body = format!("<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n");
        return ("200 OK", html, body.into_bytes());
    }
    if let Some(project) = path
        .strip_prefix("/simple/")
        .and_then(|p| p.strip_suffix('/'))
    {
        let project = normalize(project);
        let links: String = files
            .iter()
            .filter(|(name, _)| project_of(name) == project)
            .map(|(name, (_, sha))| format!("<a href=\"/files/{name}#sha256={sha}\">{name}</a>\n"))
            .collect();
        if links.is_empty() {
            return not_found;
        }
        let body = format!("<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n");
        return ("200 OK", html, body.into_bytes());
    }
    if let Some(name) = path.strip_prefix("/files/") {
        if let Some((file, _)) = files.get(name) {
            *downloads
                .lock()
                .expect("lock")
                .entry(name.to_owned())
                .or_default() += 1;
            let body = std::fs::read(file).unwrap_or_default();
            return ("200 OK", "application/octet-stream", body);
        }
    }
    not_found
}

/// A plain HTTP server on loopback for the egress tests: `GET /bytes/N` answers N bytes,
/// anything else `hello from <port>`; it counts the requests it sees (each with its head).
pub struct WebServer {
    /// Where it listens.
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl WebServer {
    /// Starts one on an ephemeral port.
    pub fn start() -> WebServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the web server");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve_web(stream, addr.port(), &seen));
            }
        });
        WebServer { addr, heads }
    }

    /// The request heads seen so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

fn serve_web(stream: TcpStream, port: u16, heads: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(&stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
        }
        heads.lock().expect("lock").push(head.clone());
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut writer = &stream;
        if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
            );
            if writer.write_all(head.as_bytes()).is_err() {
                return;
            }
            let block = vec![b'x'; 1 << 16];
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                if writer.write_all(&block[..k]).is_err() {
                    return;
                }
                left -= k as u64;
            }
        } else {
            let body = format!("hello from {port}\n");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if writer.write_all(head.as_bytes()).is_err()
                || writer.write_all(body.as_bytes()).is_err()
            {
                return;
            }
        }
    }
}

/// The fixtures, an index serving them on loopback, and a server that may reach the index
/// (`PYXIS_PACKAGE_INDEX` and `PYXIS_EGRESS_ALLOW` set to it, plus `extra` settings): the
/// set-up every packages test starts from.
pub struct IndexedServer {
    /// The server (declared first: dropped before the index it was reaching).
    pub server: crate::TestServer,
    /// The index serving `fixtures`.
    pub index: PackageIndex,
    /// The index's `host:port`, as an allow-list entry.
    pub allow: String,
    /// The built fixtures (kept until drop).
    pub fixtures: Fixtures,
}

impl IndexedServer {
    /// Builds the fixtures, starts the index and a server with `extra` settings.
    pub fn start(extra: &[(&str, &str)]) -> IndexedServer {
        let fixtures = Fixtures::build();
        let index = PackageIndex::start(&fixtures.files);
        let allow = format!("127.0.0.1:{}", index.addr.port());
        let url = index.url();
        let mut settings = vec![
            ("PYXIS_PACKAGE_INDEX", url.as_str()),
            ("PYXIS_EGRESS_ALLOW", allow.as_str()),
        ];
        settings.extend_from_slice(extra);
        let server = crate::TestServer::start(&settings);
        IndexedServer {
            server,
            index,
            allow,
            fixtures,
        }
    }

    /// Session options whose policy reaches the index and nothing else.
    pub fn network(&self) -> serde_json::Value {
        serde_json::json!({"network": {"egress": "allow", "allow": [self.allow]}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize() {
        assert_eq!(normalize("Pyxis_Tiny"), "pyxis-tiny");
        assert_eq!(normalize("a.-_b"), "a-b");
        assert_eq!(project_of(TINY_WHEEL), "pyxis-tiny");
        assert_eq!(project_of(MISBEHAVING_SDIST), "pyxis-misbehave");
    }
}
