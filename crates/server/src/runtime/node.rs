//! The Node.js runtime: Debian's `nodejs` (and `npm` where the distribution ships it
//! apart), the JavaScript/TypeScript kernel (`runtime/node`, compiled into this binary and
//! written out at every start, like the Python driver), and the preinstalled packages of
//! its cells, installed once by `npm ci` from the pinned `package-lock.json` into
//! `<runtime>/node/node_modules`. A stamp (the lock file's digest) makes later starts
//! skip the install; nothing is installed at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::{progress, run, Runtime};

/// The interpreter the kernel runs on (Debian's path).
pub const NODE: &str = "/usr/bin/node";
const NPM: &str = "/usr/bin/npm";

/// The lock file of the preinstalled packages (exact versions and integrity hashes).
const PACKAGE_LOCK: &str = include_str!("../../../../runtime/node/package-lock.json");

/// The kernel's files, as (path under `<runtime>/node`, contents).
const KERNEL_FILES: &[(&str, &str)] = &[
    (
        "kernel.js",
        include_str!("../../../../runtime/node/kernel.js"),
    ),
    (
        "lib/display.js",
        include_str!("../../../../runtime/node/lib/display.js"),
    ),
    (
        "lib/framing.js",
        include_str!("../../../../runtime/node/lib/framing.js"),
    ),
    (
        "lib/output.js",
        include_str!("../../../../runtime/node/lib/output.js"),
    ),
    (
        "lib/rewrite.js",
        include_str!("../../../../runtime/node/lib/rewrite.js"),
    ),
    (
        "lib/typescript.js",
        include_str!("../../../../runtime/node/lib/typescript.js"),
    ),
    (
        "package.json",
        include_str!("../../../../runtime/node/package.json"),
    ),
    ("package-lock.json", PACKAGE_LOCK),
];

/// The languages the kernel serves, as a context's `language` names them.
pub const LANGUAGES: &[&str] = &["javascript", "typescript"];

impl Runtime {
    /// Where the Node kernel and its packages live.
    pub fn node_dir(&self) -> PathBuf {
        self.dir.join("node")
    }

    /// The kernel's entry point: `node <this> javascript|typescript`, its socket on fd 3.
    pub fn node_kernel(&self) -> PathBuf {
        self.node_dir().join("kernel.js")
    }

    fn node_stamp(&self) -> PathBuf {
        self.node_dir().join("node_modules/.pyxis-lock")
    }

    /// Whether Node and exactly the pinned packages are installed.
    pub fn node_installed(&self) -> bool {
        Path::new(NODE).exists()
            && std::fs::read_to_string(self.node_stamp())
                .is_ok_and(|have| have.trim() == lock_digest())
    }

    /// Install Node and the packages if missing, and write the kernel's files.
    pub(super) fn ensure_node(&self) -> anyhow::Result<()> {
        if !self.node_installed() {
            self.install_node()?;
        }
        self.write_node_kernel()
    }

    fn install_node(&self) -> anyhow::Result<()> {
        // nodejs from Debian brings no npm (a package of its own there); builds that
        // ship npm inside nodejs conflict with Debian's npm, so it is asked for only
        // when still missing.
        for (package, file) in [("nodejs", NODE), ("npm", NPM)] {
            if Path::new(file).exists() {
                continue;
            }
            progress(&format!(
                "[node 1/2] installing the Debian package {package}"
            ));
            run(Command::new("apt-get").arg("update").arg("-q"))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .arg(package)
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        if Path::new(NODE).exists() && Path::new(NPM).exists() {
            progress("[node 1/2] node and npm present");
        }
        self.write_node_kernel()?;
        progress("[node 2/2] installing the Node packages of JavaScript cells (npm ci)");
        let dir = self.node_dir();
        run(Command::new(NPM)
            .args([
                "ci",
                "--omit=dev",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
            ])
            .args(["--loglevel", "warn", "--progress", "false"])
            .current_dir(&dir))?;
        std::fs::write(self.node_stamp(), lock_digest()).context("writing the node stamp")?;
        progress("node runtime ready");
        Ok(())
    }

    /// Write the kernel's files (cheap; keeps them in step with this binary).
    fn write_node_kernel(&self) -> anyhow::Result<()> {
        let dir = self.node_dir();
        for (name, text) in KERNEL_FILES {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() == Some(*text) {
                continue;
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

fn lock_digest() -> String {
    let mut h = Sha256::new();
    h.update(PACKAGE_LOCK.as_bytes());
    format!("{:x}", h.finalize())
}

/// The installed Node's version (`v20.…`), for capabilities; `None` without Node.
pub fn node_version() -> Option<String> {
    let out = Command::new(NODE).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_module_is_embedded() {
        // A module the kernel requires but setup does not write would fail only in a
        // sandbox: check the embedded list against the kernel's own requires.
        let names: Vec<&str> = KERNEL_FILES.iter().map(|(n, _)| *n).collect();
        for (name, text) in KERNEL_FILES {
            for cap in text.split("require('./").skip(1) {
                let module = cap.split('\'').next().unwrap_or_default();
                let base = Path::new(name).parent().unwrap_or(Path::new(""));
                let want = base.join(format!("{module}.js"));
                let want = want.to_string_lossy().replace("lib/./", "lib/");
                assert!(
                    names.iter().any(|n| *n == want),
                    "{name} requires ./{module}, which setup does not write"
                );
            }
        }
    }

    #[test]
    fn the_lock_pins_the_preinstalled_packages() {
        let lock: serde_json::Value = serde_json::from_str(PACKAGE_LOCK).unwrap();
        for pkg in [
            "docx",
            "pptxgenjs",
            "typescript",
            "lodash",
            "dayjs",
            "axios",
            "acorn",
        ] {
            let entry = &lock["packages"][format!("node_modules/{pkg}")];
            assert!(
                entry["version"].is_string() && entry["integrity"].is_string(),
                "{pkg} is not pinned in package-lock.json"
            );
        }
    }
}
