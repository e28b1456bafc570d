//! Egress and packages (issue 16), without internet: the package fixtures are built from
//! `tests/fixtures/packages` and served by a PEP 503 index on loopback.

use std::process::Command;

use pyxis_tests::packages::{Fixtures, PackageIndex, MISBEHAVING_SDIST, TINY_WHEEL};

fn runtime_python() -> std::path::PathBuf {
    std::env::var_os("PYXIS_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/pyxis/runtime".into())
        .join("venv/bin/python")
}

/// The fixtures and the index themselves, checked with the runtime's own pip on the host
/// (the well-behaved wheel only): what the sandboxed tests build on.
#[test]
fn egress_fixture_wheel_installs_from_the_loopback_index() {
    let fixtures = Fixtures::build();
    assert!(fixtures.files.contains_key(TINY_WHEEL));
    assert!(fixtures.files.contains_key(MISBEHAVING_SDIST));
    let index = PackageIndex::start(&fixtures.files);
    let target = tempfile::tempdir().expect("tempdir");
    let out = Command::new(runtime_python())
        .args([
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
        ])
        .args(["--index-url", &index.url(), "--target"])
        .arg(target.path())
        .arg("pyxis-tiny==1.0")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(index.downloads(TINY_WHEEL), 1);
    assert!(index.requests().iter().any(|p| p == "/simple/pyxis-tiny/"));
    let check = Command::new(runtime_python())
        .args([
            "-c",
            "import pyxis_tiny; print(pyxis_tiny.VALUE, pyxis_tiny.hello('x'))",
        ])
        .env("PYTHONPATH", target.path())
        .output()
        .expect("run python");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "42 hello x from pyxis_tiny"
    );
}
