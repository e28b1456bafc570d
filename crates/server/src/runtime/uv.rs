//! uv, the installer sessions use for packages (`pyxis_runtime.packages`), shipped as its
//! pinned PyPI wheel in the runtime's venv (`<runtime>/venv/bin/uv`, bound read-only into
//! every sandbox with the runtime). Installed by `pyxis setup` when missing, stamped by
//! version, so later starts cost one file read.

use std::process::Command;

use anyhow::Context;

use super::{progress, run, Runtime};

/// The pinned uv wheel.
pub const UV: &str = "uv==0.13.9";

impl Runtime {
    fn uv_stamp(&self) -> std::path::PathBuf {
        self.dir.join("venv/.pyxis-uv")
    }

    /// Installs [`UV`] into the venv unless the stamp says it is there.
    pub(super) fn ensure_uv(&self) -> anyhow::Result<()> {
        let uv = self.dir.join("venv/bin/uv");
        let stamped = std::fs::read_to_string(self.uv_stamp()).is_ok_and(|s| s.trim() == UV);
        if stamped && uv.exists() {
            return Ok(());
        }
        progress(&format!(
            "installing {UV} (the package installer of sessions)"
        ));
        run(Command::new(self.python()).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            UV,
        ]))?;
        std::fs::write(self.uv_stamp(), UV).context("writing the uv stamp")
    }
}
