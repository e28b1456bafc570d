//! Workspace files: download, upload (raw and multipart), delete, list; path
//! confinement against traversal and symlinks planted by user code; quota;
//! the `files` a cell created or changed; imports and exports by URL (to an
//! S3-compatible server on loopback), one-shot executions with files.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyxis_tests::{S3Server, Session, TestServer};
use rand::Rng;
use reqwest::Method;
use serde_json::Value;

const MIB: usize = 1024 * 1024;

/// Deterministic pseudo-random bytes, generated on the fly (never held
/// whole): byte `i` depends only on the seed and `i`, whatever the reads.
struct Noise {
    seed: u64,
    pos: u64,
    len: u64,
}

impl Noise {
    fn new(seed: u64, len: u64) -> Self {
        Self { seed, pos: 0, len }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize).min(64 * 1024);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = self.pos + i as u64;
            *b = (splitmix(self.seed ^ (at / 8)) >> (8 * (at % 8))) as u8;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn error_code(r: reqwest::blocking::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
    )
}

fn raw_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn names(listing: &Value) -> Vec<String> {
    listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn binary_round_trip_is_exact_and_the_cell_sees_the_file() {
    let s = TestServer::shared();
    let sess = s.session();
    let mut data = vec![0u8; 5 * MIB];
    rand::thread_rng().fill(&mut data[..]);
    data[0] = 0;
    data[1000] = 0;
    let r = sess.put_file("data/in.bin", data.clone());
    assert_eq!(r.status(), 201);
    let v: Value = r.json().unwrap();
    assert_eq!(v["path"], "data/in.bin");
    assert_eq!(v["size"], data.len());

    let r = sess.get_file("data/in.bin");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        data.len().to_string()
    );
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/octet-stream"
    );
    let got = r.bytes().unwrap();
    assert!(got[..] == data[..], "downloaded bytes differ");

    // The cell reads it, owns it (mode 0644, directory 0755), and can
    // replace it; what it writes is downloadable.
    let out = sess.ok(concat!(
        "import os, hashlib, stat\n",
        "st = os.stat('/workspace/data/in.bin'); d = os.stat('/workspace/data')\n",
        "print(st.st_size, st.st_uid == os.getuid(), oct(stat.S_IMODE(st.st_mode)),",
        " d.st_uid == os.getuid(), oct(stat.S_IMODE(d.st_mode)))\n",
        "open('/code/out.bin', 'wb').write(open('data/in.bin', 'rb').read()[::-1])\n",
    ));
    assert_eq!(out.trim(), format!("{} True 0o644 True 0o755", data.len()));
    let got = sess.get_file("out.bin").bytes().unwrap();
    let mut rev = data.clone();
    rev.reverse();
    assert!(got[..] == rev[..]);

    // Content types are guessed from the name.
    sess.ok("open('t.csv', 'w').write('a,b\\n1,2\\n')");
    let r = sess.get_file("t.csv");
    assert_eq!(r.headers()["content-type"].to_str().unwrap(), "text/csv");
    assert_eq!(
        r.headers()["content-disposition"].to_str().unwrap(),
        "attachment; filename*=UTF-8''t.csv"
    );
    assert_eq!(r.text().unwrap(), "a,b\n1,2\n");
}

#[test]
fn list_and_delete() {
    let s = TestServer::shared();
    let sess = s.session();
    assert_eq!(sess.put_file("a.txt", "hello").status(), 201);
    assert_eq!(sess.put_file("d/e/f.txt", "deep").status(), 201);
    sess.ok("import os; os.mkfifo('pipe'); os.symlink('a.txt', 'ln')");

    let (status, v) = sess.list_files("");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["path"], "");
    assert_eq!(names(&v), ["a.txt", "d", "ln", "pipe"]);
    let kinds: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["file", "dir", "symlink", "other"]);
    let a = &v["entries"][0];
    assert_eq!(a["size"], 5);
    assert_eq!(a["path"], "a.txt");
    assert!(a["modified"].as_str().unwrap().ends_with('Z'), "{a}");

    let (status, v) = sess.list_files("d/e");
    assert_eq!(status, 200);
    assert_eq!(v["entries"][0]["path"], "d/e/f.txt");
    let (status, v) = sess.list_files("nope");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, v) = sess.list_files("a.txt");
    assert_eq!(status, 409, "{v}");

    // A fifo is refused at once instead of blocking the server.
    let (status, code) = error_code(sess.get_file("pipe"));
    assert_eq!((status, code.as_str()), (409, "not_a_file"));
    let (status, _) = error_code(sess.get_file("d"));
    assert_eq!(status, 409);
    let (status, code) = error_code(sess.get_file("missing.txt"));
    assert_eq!((status, code.as_str()), (404, "not_found"));

    assert_eq!(s.delete(&sess.file_url("a.txt")).status(), 204);
    assert_eq!(s.delete(&sess.file_url("a.txt")).status(), 404);
    let (status, code) = error_code(s.delete(&sess.file_url("d")));
    assert_eq!((status, code.as_str()), (409, "directory_not_empty"));
    assert_eq!(s.delete(&sess.file_url("d/e/f.txt")).status(), 204);
    assert_eq!(s.delete(&sess.file_url("d/e")).status(), 204);
    assert_eq!(
        sess.ok("import os; print(sorted(os.listdir('.')))").trim(),
        "['d', 'ln', 'pipe']"
    );
}

#[test]
fn multipart_upload_writes_every_file_under_the_directory() {
    let s = TestServer::shared();
    let sess = s.session();
    let form = reqwest::blocking::multipart::Form::new()
        .part(
            "file",
            reqwest::blocking::multipart::Part::bytes(b"one\0".to_vec()).file_name("a.txt"),
        )
        .part(
            "file",
            reqwest::blocking::multipart::Part::bytes(vec![7u8; 100_000]).file_name("sub/b.bin"),
        );
    let r = s
        .req(
            Method::POST,
            &format!("/v1/sessions/{}/files?path=up", sess.id),
        )
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().unwrap();
    assert_eq!(v["files"][0]["path"], "up/a.txt");
    assert_eq!(v["files"][0]["size"], 4);
    assert_eq!(v["files"][1]["path"], "up/sub/b.bin");
    assert_eq!(v["files"][1]["size"], 100_000);
    let out =
        sess.ok("import os; print(open('up/a.txt','rb').read(), os.path.getsize('up/sub/b.bin'))");
    assert_eq!(out.trim(), "b'one\\x00' 100000");

    // A traversing filename is refused.
    let form = reqwest::blocking::multipart::Form::new().part(
        "file",
        reqwest::blocking::multipart::Part::bytes(b"x".to_vec()).file_name("../../etc/evil"),
    );
    let r = s
        .req(Method::POST, &format!("/v1/sessions/{}/files", sess.id))
        .multipart(form)
        .send()
        .unwrap();
    let (status, code) = error_code(r);
    assert_eq!((status, code.as_str()), (422, "invalid_path"));
}

#[test]
fn traversal_absolute_and_nul_paths_are_refused() {
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok("open('ok.txt', 'w').write('fine')");
    let base = format!("/v1/sessions/{}/files", sess.id);
    for target in [
        format!("{base}/../../../../etc/passwd"),
        format!("{base}/ok/../../../../../etc/passwd"),
        format!("{base}/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        format!("{base}/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"),
        format!("{base}//etc/passwd"),
        format!("{base}/%2Fetc%2Fpasswd"),
        format!("{base}/ok.txt%00.png"),
        format!("{base}/a//b"),
        format!("{base}/./ok.txt"),
        format!("{base}?path=../../etc"),
        format!("{base}?path=/etc"),
        format!("{base}?path=%2e%2e"),
    ] {
        for method in ["GET", "PUT", "DELETE"] {
            let (status, body) = s.raw(method, &target, b"pwned");
            assert!(!body.contains("root:"), "{method} {target} leaked: {body}");
            if target.contains('?') && method != "GET" {
                assert_eq!(status, 405, "{method} {target}");
            } else {
                assert_eq!(status, 422, "{method} {target}: {body}");
                assert_eq!(raw_code(&body), "invalid_path", "{method} {target}: {body}");
            }
        }
    }
    // Names and paths beyond the kernel's limits.
    let long = "x".repeat(256);
    let (status, code) = error_code(sess.put_file(&long, "x"));
    assert_eq!((status, code.as_str()), (422, "invalid_path"));
    let deep = vec!["d"; 2100].join("/");
    let (status, _) = error_code(sess.put_file(&deep, "x"));
    assert_eq!(status, 422);
    // Nothing was written anywhere.
    let out = sess.ok("import os; print(sorted(os.listdir('/workspace')))");
    assert_eq!(out.trim(), "['ok.txt']");
    assert!(!std::path::Path::new("/etc/evil").exists());
}

#[test]
fn symlinks_planted_by_user_code_are_never_followed() {
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok(concat!(
        "import os\n",
        "os.symlink('/etc/shadow', 'link')\n",
        "os.symlink('/etc/passwd', 'pw')\n",
        "os.symlink('/', 'root')\n",
        "os.symlink('/etc', 'etcdir')\n",
        "os.mkdir('real')\n",
        "os.symlink('../root', 'real/up')\n",
    ));
    // Downloads through a symlink, final or intermediate.
    for path in [
        "link",
        "pw",
        "root/etc/passwd",
        "etcdir/passwd",
        "real/up/etc/passwd",
        "root",
    ] {
        let r = sess.get_file(path);
        let status = r.status().as_u16();
        let body = r.text().unwrap();
        assert!(!body.contains("root:"), "GET {path} leaked {body}");
        assert_eq!(status, 403, "GET {path}: {body}");
        assert_eq!(raw_code(&body), "forbidden_path");
    }
    // Uploads through a symlinked directory.
    for path in [
        "root/tmp/pyxis-evil",
        "etcdir/pyxis-evil",
        "real/up/tmp/pyxis-evil",
    ] {
        let (status, code) = error_code(sess.put_file(path, "pwned"));
        assert_eq!(
            (status, code.as_str()),
            (403, "forbidden_path"),
            "PUT {path}"
        );
    }
    assert!(!std::path::Path::new("/tmp/pyxis-evil").exists());
    assert!(!std::path::Path::new("/etc/pyxis-evil").exists());
    // Listings through a symlink.
    for dir in ["root", "etcdir", "root/etc", "real/up"] {
        let (status, v) = sess.list_files(dir);
        assert_eq!(status, 403, "list {dir}: {v}");
    }
    // Deleting through a symlinked directory is refused; deleting the link
    // removes only the link.
    let (status, _) = error_code(s.delete(&sess.file_url("etcdir/passwd")));
    assert_eq!(status, 403);
    let shadow = std::fs::metadata("/etc/shadow").unwrap();
    // Writing over a final symlink replaces the link, never its target.
    assert_eq!(sess.put_file("link", "mine").status(), 201);
    let after = std::fs::metadata("/etc/shadow").unwrap();
    assert_eq!(shadow.len(), after.len());
    assert_eq!(shadow.modified().unwrap(), after.modified().unwrap());
    let out = sess.ok("import os; print(os.path.islink('link'), open('link').read())");
    assert_eq!(out.trim(), "False mine");
    assert_eq!(s.delete(&sess.file_url("pw")).status(), 204);
    assert!(std::path::Path::new("/etc/passwd").exists());
}

#[test]
fn symlink_swaps_racing_downloads_never_leak() {
    // User code flips `d` between a real directory and a symlink to /etc as
    // fast as it can while the client keeps downloading `d/passwd`.
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok(concat!(
        "import os, threading\n",
        "os.mkdir('real'); open('real/passwd', 'w').write('safe')\n",
        "stop = False\n",
        "import shutil\n",
        "def flip():\n",
        "    while not stop:\n",
        "        try:\n",
        "            os.rename('real', 'd'); os.rename('d', 'real')\n",
        "            os.symlink('/etc', 'd'); os.unlink('d')\n",
        "        except OSError:\n",
        "            # An upload created `d` as a directory: remove it, go on.\n",
        "            if os.path.isdir('real') and not os.path.islink('d'):\n",
        "                shutil.rmtree('d', ignore_errors=True)\n",
        "t = threading.Thread(target=flip, daemon=True); t.start()\n",
    ));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..500 {
        let r = sess.get_file("d/passwd");
        let status = r.status().as_u16();
        let body = r.text().unwrap();
        assert!(!body.contains("root:"), "leaked {body}");
        assert!([200, 403, 404].contains(&status), "{status} {body}");
        if status == 200 {
            assert_eq!(body, "safe");
        }
        *seen.entry(status).or_insert(0) += 1;
    }
    // Uploads and listings racing the same swaps never reach /etc.
    for _ in 0..200 {
        let status = sess
            .put_file("d/pyxis-race-evil", "pwned")
            .status()
            .as_u16();
        assert!([201, 403, 404].contains(&status), "PUT: {status}");
        *seen.entry(10_000 + status).or_insert(0) += 1;
        let (status, v) = sess.list_files("d");
        assert!([200, 403, 404].contains(&status), "list: {status} {v}");
        if status == 200 {
            assert!(!v.to_string().contains("shadow"), "{v}");
        }
    }
    assert!(!std::path::Path::new("/etc/pyxis-race-evil").exists());
    // Statuses seen (10000 + status for uploads).
    eprintln!("symlink race: statuses {seen:?}");
    assert_eq!(sess.ok("print(t.is_alive())").trim(), "True");
    sess.ok("stop = True; t.join()");
}

#[test]
fn an_interrupted_upload_leaves_the_old_file_intact() {
    let s = TestServer::shared();
    let sess = s.session();
    assert_eq!(sess.put_file("keep.txt", "old content").status(), 201);
    let mut conn = TcpStream::connect(s.addr()).unwrap();
    write!(
        conn,
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        sess.file_url("keep.txt"),
        s.token,
        4 * MIB
    )
    .unwrap();
    conn.write_all(&vec![b'n'; 2 * MIB]).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(conn);
    // The temporary file goes away once the server sees the connection end.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = sess.list_files("");
        if names(&v) == ["keep.txt"] {
            break;
        }
        assert!(Instant::now() < deadline, "leftovers: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sess.get_file("keep.txt").text().unwrap(), "old content");
    assert_eq!(
        sess.ok("print(open('keep.txt').read())").trim(),
        "old content"
    );
}

#[test]
fn a_cell_reports_the_files_it_created_or_changed() {
    let s = TestServer::shared();
    let sess = s.session();
    let v = sess.exec("print(1)");
    assert_eq!(v["files"], serde_json::json!([]));
    assert_eq!(sess.put_file("same.txt", "unchanged").status(), 201);
    let v = sess.exec(concat!(
        "import os\n",
        "os.makedirs('out', exist_ok=True)\n",
        "open('out/report.csv', 'w').write('a,b\\n' * 617)\n",
        "os.symlink('/etc/passwd', 'out/link')\n",
    ));
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        v["files"],
        serde_json::json!([{"path": "out/report.csv", "size": 2468}])
    );
    let v = sess.exec("open('same.txt').read(); x = 1");
    assert_eq!(
        v["files"],
        serde_json::json!([]),
        "unchanged files are not listed"
    );
    let v = sess.exec("open('same.txt', 'a').write('!')");
    assert_eq!(
        v["files"],
        serde_json::json!([{"path": "same.txt", "size": 10}])
    );
}

#[test]
fn quota_exhaustion_by_upload_and_by_user_code() {
    let s = TestServer::start(&[("PYXIS_DISK_MB", "8"), ("PYXIS_POOL_MIN_IDLE", "1")]);
    let sess = s.session();
    assert_eq!(sess.put_file("keep.txt", "old").status(), 201);

    // Announced too large: refused before anything is written (a raw
    // client, since the server answers without reading the body).
    let url = sess.file_url("big.bin");
    let (status, body) = s.raw("PUT", &url, &vec![1u8; 9 * MIB]);
    assert_eq!(
        (status, raw_code(&body).as_str()),
        (507, "quota_exceeded"),
        "{body}"
    );

    // Not announced (chunked): the disk fills up, the partial file goes away
    // and the old file stays.
    let mut chunked = format!("{:x}\r\n", 9 * MIB).into_bytes();
    chunked.extend(std::iter::repeat_n(3u8, 9 * MIB));
    chunked.extend(b"\r\n0\r\n\r\n");
    let (status, body) = s.raw_with(
        "PUT",
        &sess.file_url("keep.txt"),
        "Transfer-Encoding: chunked\r\n",
        chunked,
    );
    assert_eq!(
        (status, raw_code(&body).as_str()),
        (507, "quota_exceeded"),
        "{body}"
    );
    assert!(body.contains("quota of 8 MiB"), "{body}");
    assert_eq!(sess.get_file("keep.txt").text().unwrap(), "old");
    let (_, v) = sess.list_files("");
    assert_eq!(names(&v), ["keep.txt"]);

    // User code filling the disk gets an OSError in the cell.
    let v = sess.exec("open('fill.bin', 'wb').write(b'x' * (9 << 20))");
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["error"]["name"], "OSError", "{v}");
    // Uploading now fails cleanly too.
    let (status, body) = s.raw("PUT", &sess.file_url("more.bin"), &vec![2u8; 2 * MIB]);
    assert_eq!(
        (status, raw_code(&body).as_str()),
        (507, "quota_exceeded"),
        "{body}"
    );
    // Delete and everything works again.
    assert_eq!(s.delete(&sess.file_url("fill.bin")).status(), 204);
    assert_eq!(sess.put_file("more.bin", vec![2u8; 2 * MIB]).status(), 201);
    assert_eq!(
        sess.ok("import os; print(os.path.getsize('more.bin'))")
            .trim(),
        "2097152"
    );
    assert_eq!(sess.get_file("keep.txt").text().unwrap(), "old");
}

fn rss_sampler(s: &TestServer) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let pid = s.pid();
    let (st, pk) = (stop.clone(), peak.clone());
    let h = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kb) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    pk.fetch_max(kb, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (stop, peak, h)
}

#[test]
fn a_300_mb_upload_and_download_are_streamed() {
    const SIZE: u64 = 300 * MIB as u64;
    let s = TestServer::start(&[("PYXIS_DISK_MB", "1024"), ("PYXIS_POOL_MIN_IDLE", "1")]);
    let sess: Session<'_> = s.session();
    sess.ok("print(1)");
    let before = s.rss_kib();
    let (stop, peak, h) = rss_sampler(&s);

    let started = Instant::now();
    let r = sess.put_file(
        "big.bin",
        reqwest::blocking::Body::sized(Noise::new(42, SIZE), SIZE),
    );
    assert_eq!(r.status(), 201);
    let up = started.elapsed();
    let started = Instant::now();
    let mut r = sess.get_file("big.bin");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(SIZE));
    let mut expect = Noise::new(42, SIZE);
    let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut total = 0u64;
    loop {
        let n = r.read(&mut a).unwrap();
        if n == 0 {
            break;
        }
        expect.read_exact(&mut b[..n]).unwrap();
        assert!(a[..n] == b[..n], "mismatch at {total}");
        total += n as u64;
    }
    assert_eq!(total, SIZE);
    let down = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "300 MB: upload {:.1} s, download {:.1} s; server RSS {} MiB before, {} MiB peak",
        up.as_secs_f64(),
        down.as_secs_f64(),
        before / 1024,
        peak / 1024
    );
    assert!(
        peak < before + 100 * 1024,
        "server RSS grew from {before} KiB to {peak} KiB"
    );
    assert_eq!(
        sess.ok("import os; print(os.path.getsize('big.bin'))")
            .trim(),
        SIZE.to_string()
    );
}

/// Not a correctness test: prints the cost of the changed-files report on a
/// trivial cell. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn files_report_overhead() {
    fn median_ms(sess: &Session<'_>) -> f64 {
        let mut v: Vec<f64> = (0..300)
            .map(|_| {
                let t = Instant::now();
                sess.exec("1");
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }
    for (label, entries) in [("report on", "1000"), ("report off", "0")] {
        let s = TestServer::start(&[
            ("PYXIS_FILES_SCAN_MAX_ENTRIES", entries),
            ("PYXIS_POOL_MIN_IDLE", "1"),
        ]);
        let sess = s.session();
        for _ in 0..50 {
            sess.exec("1");
        }
        let empty = median_ms(&sess);
        sess.ok("import os\nfor i in range(100): open(f'f{i}.txt', 'w').write('x')");
        let hundred = median_ms(&sess);
        eprintln!("{label}: trivial cell p50 {empty:.3} ms empty workspace, {hundred:.3} ms with 100 files");
    }
}

/// A tiny HTTP server on 127.0.0.1 for the import tests: `/data.csv`,
/// `/big` (2 MiB), `/to-data` (redirect to `/data.csv`), `/to-other`
/// (redirect to the same port on 127.0.0.2). Returns its port.
fn origin() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split(' ').nth(1).unwrap_or("/").to_string();
                let (head, body): (String, Vec<u8>) = match path.as_str() {
                    "/data.csv" => ("200 OK".into(), b"x,y\n1,2\n".to_vec()),
                    "/big" => ("200 OK".into(), vec![b'b'; 2 * MIB]),
                    "/to-data" => ("302 Found\r\nLocation: /data.csv".into(), Vec::new()),
                    "/to-other" => (
                        format!("302 Found\r\nLocation: http://127.0.0.2:{port}/data.csv"),
                        Vec::new(),
                    ),
                    _ => ("404 Not Found".into(), Vec::new()),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            });
        }
    });
    port
}

fn import(sess: &Session<'_>, body: Value) -> (u16, Value) {
    let r = sess
        .server
        .post(&format!("/v1/sessions/{}/files/import", sess.id), &body);
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn imports_refuse_loopback_unless_allowed_and_recheck_redirects() {
    let port = origin();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // Refused by default, before any connection.
    let s = TestServer::shared();
    let sess = s.session();
    for u in [
        url("/data.csv"),
        format!("http://[::ffff:127.0.0.1]:{port}/data.csv"),
        format!("http://[::1]:{port}/data.csv"),
        format!("http://2130706433:{port}/data.csv"),
    ] {
        let (status, v) = import(&sess, serde_json::json!({"files": [{"url": u}]}));
        assert_eq!(status, 403, "{u}: {v}");
        assert_eq!(v["error"]["code"], "forbidden_url");
    }
    let (status, v) = import(
        &sess,
        serde_json::json!({"files": [{"url": "file:///etc/passwd"}]}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid_url"))
    );
    // A POST to another file path is not an import.
    assert_eq!(
        s.post(&sess.file_url("other"), &serde_json::json!({}))
            .status(),
        405
    );
    // A file named `import` is still a file.
    assert_eq!(sess.put_file("import", "mine").status(), 201);
    assert_eq!(sess.get_file("import").text().unwrap(), "mine");

    // Allowed when allow-listed; redirects are re-checked.
    let s = TestServer::start(&[
        ("PYXIS_IMPORT_ALLOW", "127.0.0.1/32"),
        ("PYXIS_IMPORT_MAX_MB", "1"),
        ("PYXIS_POOL_MIN_IDLE", "1"),
    ]);
    let sess = s.session();
    let (status, v) = import(
        &sess,
        serde_json::json!({"files": [
            {"url": url("/data.csv")},
            {"url": url("/to-data"), "path": "in/redirected.csv"},
        ]}),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["files"][0]["path"], "data.csv");
    assert_eq!(v["files"][1]["path"], "in/redirected.csv");
    let out = sess
        .ok("print(open('data.csv').read() == open('in/redirected.csv').read() == 'x,y\\n1,2\\n')");
    assert_eq!(out.trim(), "True");
    // 127.0.0.2 is loopback but not in the allow-list.
    let (status, v) = import(
        &sess,
        serde_json::json!({"files": [{"url": url("/to-other")}]}),
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2"),
        "{v}"
    );
    // Size cap.
    let (status, v) = import(&sess, serde_json::json!({"files": [{"url": url("/big")}]}));
    assert_eq!(status, 413, "{v}");
    let (status, v) = import(
        &sess,
        serde_json::json!({"files": [{"url": url("/missing")}]}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (502, Some("import_failed"))
    );
    let (_, v) = sess.list_files("");
    assert_eq!(names(&v), ["data.csv", "in"]);
}

#[test]
fn openapi_documents_the_files_routes() {
    let s = TestServer::shared();
    let v: Value = s.get("/openapi.json").json().unwrap();
    let paths = &v["paths"];
    for (path, method) in [
        ("/v1/sessions/{id}/files/{path}", "get"),
        ("/v1/sessions/{id}/files/{path}", "put"),
        ("/v1/sessions/{id}/files/{path}", "delete"),
        ("/v1/sessions/{id}/files", "get"),
        ("/v1/sessions/{id}/files", "post"),
        ("/v1/sessions/{id}/files/import", "post"),
        ("/v1/sessions/{id}/files/export", "post"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    for schema in [
        "FileList",
        "FileEntry",
        "FileChange",
        "UploadedFiles",
        "ImportRequest",
        "ExportRequest",
        "ExportResults",
    ] {
        assert!(v["components"]["schemas"][schema].is_object(), "{schema}");
    }
    assert!(v["components"]["schemas"]["Execution"]["properties"]["files"].is_object());
}

/// Requests seen by [`recorder`]: head and body of each.
type Seen = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A recording HTTP server on 127.0.0.1: every request's head (lowercased)
/// and body are kept; answers 201, or 307 to `/elsewhere` for `/redirect`.
fn recorder() -> (u16, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let head_end = loop {
                    let n = conn.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = conn.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[head_end..].to_vec();
                let answer = if head.starts_with("put /redirect") {
                    "307 Temporary Redirect\r\nLocation: /elsewhere"
                } else {
                    "201 Created"
                };
                keep.lock().unwrap().push((head, body));
                let _ = write!(
                    conn,
                    "HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            });
        }
    });
    (port, seen)
}

fn export(sess: &Session<'_>, body: Value) -> (u16, Value) {
    let r = sess
        .server
        .post(&format!("/v1/sessions/{}/files/export", sess.id), &body);
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn exports_by_presigned_put_and_post_reach_an_s3_server() {
    let s3 = S3Server::start();
    s3.create_bucket("out");
    let s = TestServer::start(&[
        ("PYXIS_IMPORT_ALLOW", "127.0.0.1/32"),
        ("PYXIS_POOL_MIN_IDLE", "1"),
    ]);
    let sess = s.session();
    // Binary and text files written by the code itself.
    sess.ok(concat!(
        "import os, random\n",
        "os.makedirs('out', exist_ok=True)\n",
        "random.seed(7)\n",
        "open('out/blob.bin', 'wb').write(random.randbytes(3 * 1024 * 1024 + 17))\n",
        "open('out/report.csv', 'w').write('a,b\\n1,2\\n')\n",
        "open('empty.txt', 'w').close()\n",
    ));
    let blob = sess.get_file("out/blob.bin").bytes().unwrap().to_vec();
    assert_eq!(blob.len(), 3 * MIB + 17);
    let put_url = s3.presign_put("out", "runs/1/blob.bin");
    let post = s3.presign_post("out", "runs/1/report.csv");
    let (status, v) = export(
        &sess,
        serde_json::json!({"files": [
            {"path": "out/blob.bin", "url": put_url, "method": "PUT"},
            {"path": "out/report.csv", "url": post["url"], "method": "POST", "fields": post["fields"]},
            {"path": "empty.txt", "url": format!("{}/out/empty.txt", s3.endpoint),
             "headers": {"Content-Type": "text/plain"}},
            // No such bucket: the upstream answers 404.
            {"path": "empty.txt", "url": format!("{}/nope/empty.txt", s3.endpoint)},
        ]}),
    );
    assert_eq!(status, 200, "{v}");
    let r = &v["results"];
    assert_eq!(r[0]["path"], "out/blob.bin");
    assert_eq!(r[0]["url"], put_url);
    assert_eq!(r[0]["status"], 200, "{v}");
    assert_eq!(r[0]["size"], 3 * MIB as u64 + 17);
    assert!(r[0].get("error").is_none(), "{v}");
    assert!(r[1]["status"].as_u64().unwrap() / 100 == 2, "{v}");
    assert_eq!(r[1]["size"], 8);
    assert!(r[1].get("error").is_none(), "{v}");
    assert_eq!(r[2]["status"], 200, "{v}");
    assert_eq!(r[2]["size"], 0);
    assert_eq!(r[3]["status"], 404, "{v}");
    assert_eq!(r[3]["error"]["code"], "export_failed", "{v}");

    let (status, got) = s3.get_object("out", "runs/1/blob.bin");
    assert_eq!((status, got.len()), (200, blob.len()));
    assert!(got == blob, "the object differs from the file");
    assert_eq!(
        s3.get_object("out", "runs/1/report.csv"),
        (200, b"a,b\n1,2\n".to_vec())
    );
    assert_eq!(s3.get_object("out", "empty.txt"), (200, Vec::new()));

    // What goes on the wire: a PUT with a Content-Length (not chunked) and
    // the client's headers; a POST form with the fields before the file.
    let (port, seen) = recorder();
    let at = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let (status, v) = export(
        &sess,
        serde_json::json!({"files": [
            {"path": "out/report.csv", "url": at("/put"), "headers": {"x-amz-meta-run": "7"}},
            {"path": "out/report.csv", "url": at("/post"), "method": "POST",
             "fields": {"key": "k/report.csv", "policy": "p"}},
            {"path": "out/report.csv", "url": at("/redirect")},
        ]}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["status"], 201, "{v}");
    assert_eq!(v["results"][1]["status"], 201, "{v}");
    assert_eq!(v["results"][2]["status"], 307, "{v}");
    assert_eq!(v["results"][2]["error"]["code"], "export_failed", "{v}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "the redirect is not followed");
    let put = seen
        .iter()
        .find(|(h, _)| h.starts_with("put /put "))
        .unwrap();
    assert!(put.0.contains("content-length: 8\r\n"), "{}", put.0);
    assert!(!put.0.contains("transfer-encoding"), "{}", put.0);
    assert!(put.0.contains("x-amz-meta-run: 7\r\n"), "{}", put.0);
    assert_eq!(put.1, b"a,b\n1,2\n");
    let post = seen
        .iter()
        .find(|(h, _)| h.starts_with("post /post "))
        .unwrap();
    assert!(
        post.0
            .contains("content-type: multipart/form-data; boundary="),
        "{}",
        post.0
    );
    assert!(post.0.contains("content-length: "), "{}", post.0);
    let form = String::from_utf8_lossy(&post.1);
    let key = form.find("name=\"key\"").unwrap();
    let policy = form.find("name=\"policy\"").unwrap();
    let file = form.find("name=\"file\"; filename=\"report.csv\"").unwrap();
    assert!(key < file && policy < file, "{form}");
    assert!(
        form.contains("a,b\r\n") || form.contains("a,b\n1,2\n"),
        "{form}"
    );

    // A symlink planted by the code is never followed: nothing is sent.
    sess.ok("import os; os.symlink('/etc/passwd', 'leak'); os.symlink('/etc', 'etc')");
    for path in ["leak", "etc/passwd"] {
        let (status, v) = export(
            &sess,
            serde_json::json!({"files": [
                {"path": "out/report.csv", "url": format!("{}/out/first", s3.endpoint)},
                {"path": path, "url": format!("{}/out/leak", s3.endpoint)},
            ]}),
        );
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (403, Some("forbidden_path")),
            "{path}: {v}"
        );
    }
    assert_eq!(s3.get_object("out", "leak").0, 404);
    assert_eq!(s3.get_object("out", "first").0, 404);
    // Other refusals, before anything is sent.
    let url = format!("{}/out/x", s3.endpoint);
    for (item, want) in [
        (
            serde_json::json!({"path": "missing", "url": url}),
            (404, "not_found"),
        ),
        (
            serde_json::json!({"path": "out", "url": url}),
            (409, "not_a_file"),
        ),
        (
            serde_json::json!({"path": "../x", "url": url}),
            (422, "invalid_path"),
        ),
        (
            serde_json::json!({"path": "empty.txt", "url": "file:///etc/passwd"}),
            (422, "invalid_url"),
        ),
        (
            serde_json::json!({"path": "empty.txt", "url": url, "headers": {"Host": "evil"}}),
            (422, "invalid_request"),
        ),
        (
            serde_json::json!({"path": "empty.txt", "url": url, "fields": {"a": "b"}}),
            (422, "invalid_request"),
        ),
        (
            serde_json::json!({"path": "empty.txt", "url": url, "method": "DELETE"}),
            (422, "invalid_request"),
        ),
    ] {
        let (status, v) = export(&sess, serde_json::json!({"files": [item]}));
        assert_eq!(
            (status, v["error"]["code"].as_str().unwrap_or_default()),
            want,
            "{item}: {v}"
        );
    }
    assert_eq!(s3.get_object("out", "x").0, 404);
}

#[test]
fn exports_to_loopback_are_refused_by_default() {
    let s3 = S3Server::start();
    s3.create_bucket("out");
    let s = TestServer::shared();
    let sess = s.session();
    sess.ok("open('a.txt', 'w').write('secret')");
    let port = s3.endpoint.rsplit(':').next().unwrap().to_string();
    for url in [
        format!("{}/out/a.txt", s3.endpoint),
        format!("http://[::ffff:127.0.0.1]:{port}/out/a.txt"),
        format!("http://localhost:{port}/out/a.txt"),
        "http://169.254.169.254/latest".to_string(),
    ] {
        let (status, v) = export(
            &sess,
            serde_json::json!({"files": [{"path": "a.txt", "url": url}]}),
        );
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (403, Some("forbidden_url")),
            "{url}: {v}"
        );
    }
    assert_eq!(s3.get_object("out", "a.txt").0, 404);
}

#[test]
fn one_shot_downloads_its_files_before_the_code_runs() {
    let port = origin();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let code = concat!(
        "import os\n",
        "names = sorted(os.listdir('.'))\n",
        "same = open('data.csv').read() == open('data-1.csv').read() == open('in/r.csv').read()\n",
        "open('out.txt', 'w').write('done')\n",
        "print(names, same)\n",
    );
    // Loopback is refused by default.
    let r = TestServer::shared().post(
        "/v1/execute",
        &serde_json::json!({"code": code, "files": [url("/data.csv")]}),
    );
    assert_eq!(error_code(r), (403, "forbidden_url".to_string()));

    let s = TestServer::start(&[
        ("PYXIS_IMPORT_ALLOW", "127.0.0.1/32"),
        ("PYXIS_POOL_MIN_IDLE", "1"),
    ]);
    let r = s.post(
        "/v1/execute",
        &serde_json::json!({"code": code, "files": [
            url("/data.csv"),
            {"url": url("/to-data"), "path": "in/r.csv"},
            {"url": url("/data.csv")},
        ]}),
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        v["stdout"].as_str().unwrap().trim(),
        "['data-1.csv', 'data.csv', 'in'] True"
    );
    // Only what the code wrote.
    assert_eq!(
        v["files"],
        serde_json::json!([{"path": "out.txt", "size": 4}])
    );
    // A failed fetch fails the request, and the sandbox is released.
    let r = s.post(
        "/v1/execute",
        &serde_json::json!({"code": "print(1)", "files": [url("/missing")]}),
    );
    assert_eq!(error_code(r), (502, "import_failed".to_string()));
    let r = s.post(
        "/v1/execute",
        &serde_json::json!({"code": "print(1)", "files": [{"url": url("/data.csv"), "path": "/etc/x"}]}),
    );
    assert_eq!(error_code(r), (422, "invalid_path".to_string()));
    let r = s.post(
        "/v1/execute",
        &serde_json::json!({"code": "print(1)", "files": []}),
    );
    assert_eq!(r.status(), 200);
}
