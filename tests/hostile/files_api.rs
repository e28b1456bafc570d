//! Attacks through the file API: the workspace is shared between hostile code and the server,
//! which runs as root on the host. Planted symlinks, fifos and loops must not make the server
//! read, write or hang on anything outside the workspace.

use std::time::{Duration, Instant};

use crate::util::{attack, healthz_fast, server};

fn host_target(name: &str, content: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("pyxis-hostile-{name}-{}", std::process::id()));
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn planted_symlinks_are_not_followed_by_the_file_api() {
    let s = server();
    let v = s.session();
    let secret = host_target("secret", "host secret content");
    let target = host_target("target", "host file");
    let token_path = s.data_dir.join("token");
    let code = format!(
        r#"
import os
os.symlink('/etc/shadow', '/workspace/shadow')
os.symlink('{token}', '/workspace/token')
os.symlink('{secret}', '/workspace/secret')
os.symlink('{target}', '/workspace/target')
os.symlink('/', '/workspace/root')
os.symlink('../../../../../../../../etc', '/workspace/etc')
os.makedirs('/workspace/d', exist_ok=True)
os.symlink('/tmp', '/workspace/d/tmp')
print('planted')
"#,
        token = token_path.display(),
        secret = secret.display(),
        target = target.display(),
    );
    attack(s, &v, |v| assert_eq!(v.ok(&code), "planted\n"));
    let base = format!("/v1/sessions/{}/files", v.id);
    for path in [
        "shadow",
        "token",
        "secret",
        "target",
        "root/etc/shadow",
        "root/etc/hostname",
        "etc/hostname",
        "d/tmp/x",
    ] {
        let r = s.get(&format!("{base}/{path}"));
        let status = r.status();
        let body = r.text().unwrap_or_default();
        assert!(!status.is_success(), "GET {path}: {status} {body}");
        assert!(!body.contains("host secret content"), "{path}: {body}");
        assert!(!body.contains(&s.token), "{path}: token leaked");
    }
    for path in ["target", "root/tmp/pwned", "d/tmp/pwned"] {
        let r = s
            .req(reqwest::Method::PUT, &format!("{base}/{path}"))
            .body("pwned")
            .send()
            .unwrap();
        let _ = r.status();
    }
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "host file",
        "host file written"
    );
    assert!(
        !std::path::Path::new("/tmp/pwned").exists(),
        "wrote through a symlinked dir"
    );
    // Deleting a symlink removes the link, never its target.
    let _ = s.delete(&format!("{base}/secret"));
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "host secret content"
    );
    // Listing shows the links as what they are, without following them.
    let r = s.get(&format!("{base}?path=root"));
    assert!(
        !r.text().unwrap_or_default().contains("shadow"),
        "listed a symlinked directory"
    );
    let _ = std::fs::remove_file(secret);
    let _ = std::fs::remove_file(target);
}

#[test]
fn fifos_and_special_files_do_not_hang_the_server() {
    let s = server();
    let v = s.session();
    attack(s, &v, |v| {
        v.ok("import os, socket\nos.mkfifo('/workspace/fifo')\nsocket.socket(socket.AF_UNIX).bind('/workspace/sock')\nos.symlink('loop', '/workspace/loop')\nprint('ok')");
    });
    let base = format!("/v1/sessions/{}/files", v.id);
    for path in ["fifo", "sock", "loop"] {
        let t = Instant::now();
        let r = s
            .req(reqwest::Method::GET, &format!("{base}/{path}"))
            .timeout(Duration::from_secs(10))
            .send();
        assert!(r.is_ok(), "GET {path} hung");
        assert!(
            !r.unwrap().status().is_success(),
            "GET {path} served something"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "GET {path} took {:?}",
            t.elapsed()
        );
        // Writing to the fifo must not block either.
        let r = s
            .req(reqwest::Method::PUT, &format!("{base}/{path}"))
            .body("x")
            .timeout(Duration::from_secs(10))
            .send();
        assert!(r.is_ok(), "PUT {path} hung");
    }
    healthz_fast(s);
    // A cell after that still reports its files without hanging on the fifo.
    let t = Instant::now();
    v.ok("open('/workspace/after.txt', 'w').write('x')");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_huge_tree_in_the_workspace_does_not_stall_the_server() {
    let s = server();
    let v = s.session();
    let r = attack(s, &v, |v| {
        v.exec(
            r#"
import os
# a deep directory chain and a wide directory, within the inode limit
p = '/workspace/deep'
try:
    for i in range(1000):
        p = os.path.join(p, 'd')
        os.makedirs(p)
except OSError as e:
    print('deep stopped', e.errno)
os.makedirs('/workspace/wide', exist_ok=True)
try:
    for i in range(20000):
        open('/workspace/wide/%05d' % i, 'w').close()
except OSError as e:
    print('wide stopped', e.errno)
print('built')
"#,
        )
    });
    assert_eq!(r["status"], "ok", "{r}");
    let files = r["files"].as_array().map(|a| a.len()).unwrap_or(0);
    assert!(files <= 100_000, "{files} files reported");
    let t = Instant::now();
    let listing = s.get(&format!("/v1/sessions/{}/files?path=wide", v.id));
    let _ = listing.text();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "listing took {:?}",
        t.elapsed()
    );
}

/// Values that come from inside a sandbox are hostile input: a file whose modification
/// time is far in the future or before 1970 is listed, never a panic or a 500.
#[test]
fn extreme_file_times_are_listed_not_a_panic() {
    let s = server();
    let v = s.session();
    let r = v.exec(
        "import os\nfor name, t in [('future', 2**40), ('far', 2**62 // 10**9), ('past', -2**31), ('zero', 0)]:\n    open(name, 'w').write(name)\n    os.utime(name, (t, t))\nprint('ok')",
    );
    assert_eq!(r["status"], "ok", "{r}");
    let (status, listing) = v.list_files("");
    assert_eq!(status, 200, "{listing}");
    let entries = listing["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{listing}");
    for e in entries {
        let m = e["modified"].as_str().unwrap();
        assert!(m.ends_with('Z') && m.len() == 20, "{m}");
    }
    let future = entries.iter().find(|e| e["name"] == "future").unwrap();
    assert_eq!(future["modified"], "9999-12-31T23:59:59Z");
    let past = entries.iter().find(|e| e["name"] == "past").unwrap();
    assert_eq!(past["modified"], "1970-01-01T00:00:00Z");
    healthz_fast(s);
}
