//! The package index mirror with the runtime's real pip, through the proxy, against the
//! fixture index on loopback: the first session's install downloads the wheel, the second's
//! is served from the cache, and a session whose policy does not reach the index gets the
//! proxy's refusal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use pyxis_egress::{
    AddressRules, EgressConfig, EgressMode, EgressPolicy, Mirror, MirrorConfig, OperatorAllow,
    Proxy, SessionEgress,
};
use pyxis_tests::packages::{Fixtures, PackageIndex, TINY_WHEEL};

fn python() -> PathBuf {
    std::env::var_os("PYXIS_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/pyxis/runtime".into())
        .join("venv/bin/python")
}

/// A loopback listener standing in for a sandbox's init, served by `session`.
fn listen(runtime: &tokio::runtime::Runtime, session: Arc<SessionEgress>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(session.clone().serve_connection(stream));
        }
    });
    addr
}

/// `pip install pyxis-tiny` into `target` as a sandbox's environment would set it up.
fn pip_install(proxy: SocketAddr, target: &Path) -> Output {
    Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
        ])
        .args(["--retries", "0", "--timeout", "10", "--target"])
        .arg(target)
        .arg("pyxis-tiny")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_INDEX_URL", "http://pyxis-index/simple/")
        .env("PIP_TRUSTED_HOST", "pyxis-index")
        .env("HTTP_PROXY", format!("http://{proxy}"))
        .env("HTTPS_PROXY", format!("http://{proxy}"))
        .env("NO_PROXY", "")
        .output()
        .expect("run pip")
}

#[test]
fn installs_go_through_the_mirror_and_the_cache() {
    let fixtures = Fixtures::build();
    let index = PackageIndex::start(&fixtures.files);
    let cache = tempfile::tempdir().expect("cache dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mirror = Mirror::new(MirrorConfig {
        index: index.url().parse().expect("index url"),
        cache_dir: cache.path().to_path_buf(),
        max_file_bytes: 1 << 20,
        timeout: Duration::from_secs(10),
    })
    .expect("mirror");
    let proxy = Proxy::with_mirror(
        EgressConfig {
            rules: AddressRules {
                allow: vec![OperatorAllow::Socket(index.addr)],
                forbidden: Vec::new(),
            },
            ..EgressConfig::default()
        },
        Some(Arc::new(mirror)),
    );
    let reaches_index =
        || EgressPolicy::new(EgressMode::Allow, &[index.addr.to_string()]).expect("policy");

    let first = listen(&runtime, proxy.session("first", reaches_index()));
    let second = listen(&runtime, proxy.session("second", reaches_index()));
    let refused = listen(&runtime, proxy.session("refused", EgressPolicy::none()));

    let targets = [
        tempfile::tempdir().expect("t1"),
        tempfile::tempdir().expect("t2"),
    ];
    for (proxy_addr, target) in [(first, &targets[0]), (second, &targets[1])] {
        let out = pip_install(proxy_addr, target.path());
        assert!(
            out.status.success(),
            "pip: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(target.path().join("pyxis_tiny/__init__.py").exists());
    }
    assert_eq!(index.downloads(TINY_WHEEL), 1, "{:?}", index.requests());
    let counters = proxy.mirror().expect("mirror").counters();
    assert_eq!((counters.downloads, counters.hits), (1, 1));

    // uv (a much faster installer) through the same road, where one is installed
    // ($PYXIS_TEST_UV): served from the cache too.
    if let Some(uv) = std::env::var_os("PYXIS_TEST_UV") {
        let target = tempfile::tempdir().expect("t4");
        let started = std::time::Instant::now();
        let out = Command::new(uv)
            .args(["pip", "install", "--no-cache", "--python"])
            .arg(python())
            .arg("--prefix")
            .arg(target.path())
            .args(["--index-url", "http://pyxis-index/simple/", "pyxis-tiny"])
            .env("HTTP_PROXY", format!("http://{second}"))
            .env("UV_INSECURE_HOST", "pyxis-index")
            .env("NO_PROXY", "")
            .output()
            .expect("run uv");
        assert!(
            out.status.success(),
            "uv: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("uv install through the mirror: {:?}", started.elapsed());
        assert!(target
            .path()
            .join("lib/python3.11/site-packages/pyxis_tiny/__init__.py")
            .exists());
        assert_eq!(index.downloads(TINY_WHEEL), 1);
    }

    let none = tempfile::tempdir().expect("t3");
    let out = pip_install(refused, none.path());
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // pip keeps the proxy's 403 to its debug log; it sees an index without the project.
    assert!(text.contains("No matching distribution"), "{text}");
    assert_eq!(index.downloads(TINY_WHEEL), 1);
    assert!(
        proxy
            .metrics()
            .refusals(pyxis_egress::RefusalKind::PolicyNone)
            >= 1
    );
}
