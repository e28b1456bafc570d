//! The Python runtime: a virtual environment made from Debian's
//! `/usr/bin/python3` with the pinned libraries, a CJK font, and the driver
//! package (`pyxis_runtime`), which is compiled into this binary and written
//! out at every start.
//!
//! The first start installs what is missing and prints its progress; later
//! starts find the stamp file and go on at once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

mod node;
mod uv;
pub use node::{node_version, LANGUAGES as NODE_LANGUAGES, NODE};

/// The pinned library list.
pub const REQUIREMENTS: &str = include_str!("../../../runtime/python/requirements.txt");

include!(concat!(env!("OUT_DIR"), "/driver_files.rs"));

/// Debian packages the runtime needs, with a file that shows each is there: the
/// interpreter, fonts with CJK coverage, and the system tools documents need (OCR,
/// PDF, media, conversion). LibreOffice comes as its `-nogui` parts, which have no X11
/// or desktop dependencies.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("python3", "/usr/bin/python3"),
    ("python3-venv", "/usr/lib/python3.11/ensurepip/__init__.py"),
    (
        "fonts-wqy-zenhei",
        "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    ),
    (
        "fonts-dejavu-core",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ),
    ("fontconfig", "/usr/bin/fc-cache"),
    ("tesseract-ocr", "/usr/bin/tesseract"),
    (
        "tesseract-ocr-eng",
        "/usr/share/tesseract-ocr/5/tessdata/eng.traineddata",
    ),
    (
        "tesseract-ocr-chi-sim",
        "/usr/share/tesseract-ocr/5/tessdata/chi_sim.traineddata",
    ),
    ("poppler-utils", "/usr/bin/pdftoppm"),
    ("ghostscript", "/usr/bin/gs"),
    ("ffmpeg", "/usr/bin/ffmpeg"),
    ("imagemagick", "/usr/bin/convert-im6.q16"),
    ("pandoc", "/usr/bin/pandoc"),
    (
        "libreoffice-writer-nogui",
        "/usr/lib/libreoffice/program/libswlo.so",
    ),
    (
        "libreoffice-calc-nogui",
        "/usr/lib/libreoffice/program/libsclo.so",
    ),
    (
        "libreoffice-impress-nogui",
        "/usr/lib/libreoffice/program/libslideshowlo.so",
    ),
    ("libzbar0", "/usr/share/doc/libzbar0/copyright"),
    ("librsvg2-bin", "/usr/bin/rsvg-convert"),
];

/// Our ImageMagick policy, written to `<runtime>/imagemagick/policy.xml`; kernels name
/// that directory in `MAGICK_CONFIGURE_PATH`, so it applies on top of Debian's own.
const IMAGEMAGICK_POLICY: &str = include_str!("../../../runtime/python/imagemagick-policy.xml");

/// Paths of an installed runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The runtime directory.
    pub dir: PathBuf,
}

impl Runtime {
    /// The runtime at `dir` (installed or not).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The venv's interpreter.
    pub fn python(&self) -> PathBuf {
        self.dir.join("venv/bin/python")
    }

    /// Where the driver package lives (put on `PYTHONPATH`).
    pub fn lib_dir(&self) -> PathBuf {
        self.dir.join("lib")
    }

    /// Writable matplotlib configuration and font cache of the zygote.
    pub fn mpl_dir(&self) -> PathBuf {
        self.dir.join("mplconfig")
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("venv/.pyxis-requirements")
    }

    /// Whether the venv holds exactly the pinned requirements.
    pub fn is_installed(&self) -> bool {
        let want = requirements_digest();
        std::fs::read_to_string(self.stamp()).is_ok_and(|have| have.trim() == want)
            && self.python().exists()
            && DEBIAN_PACKAGES.iter().all(|(_, f)| Path::new(f).exists())
    }

    /// Install whatever is missing, printing progress to stderr.
    pub fn ensure(&self) -> anyhow::Result<()> {
        if !self.is_installed() {
            self.install()?;
        }
        self.write_driver()?;
        self.ensure_uv()?;
        self.ensure_node()
    }

    fn install(&self) -> anyhow::Result<()> {
        let missing: Vec<&str> = DEBIAN_PACKAGES
            .iter()
            .filter(|(_, f)| !Path::new(f).exists())
            .map(|(p, _)| *p)
            .collect();
        if !missing.is_empty() {
            progress(&format!(
                "[1/3] installing Debian packages: {}",
                missing.join(" ")
            ));
            run(Command::new("apt-get").arg("update").arg("-q"))?;
            run(Command::new("apt-get")
                // One call for every package; wait for a lock held by another apt run
                // rather than fail.
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        } else {
            progress("[1/3] Debian packages present");
        }
        let venv = self.dir.join("venv");
        if !self.python().exists() {
            progress(&format!(
                "[2/3] creating virtual environment {}",
                venv.display()
            ));
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("creating {}", self.dir.display()))?;
            run(Command::new("/usr/bin/python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv))?;
        } else {
            progress("[2/3] virtual environment present");
        }
        let req = self.dir.join("requirements.txt");
        std::fs::write(&req, REQUIREMENTS).context("writing requirements.txt")?;
        progress("[3/3] installing Python libraries (a few minutes on first run)");
        run(Command::new(self.python())
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
                "-r",
            ])
            .arg(&req))?;
        std::fs::write(self.stamp(), requirements_digest()).context("writing the stamp")?;
        progress("runtime ready");
        Ok(())
    }

    /// Write the driver package (cheap; keeps it in step with this binary).
    fn write_driver(&self) -> anyhow::Result<()> {
        let pkg = self.lib_dir().join("pyxis_runtime");
        std::fs::create_dir_all(&pkg).with_context(|| format!("creating {}", pkg.display()))?;
        std::fs::create_dir_all(self.mpl_dir()).context("creating the matplotlib dir")?;
        let magick = self.dir.join("imagemagick");
        std::fs::create_dir_all(&magick).context("creating the ImageMagick dir")?;
        let policy = magick.join("policy.xml");
        if std::fs::read_to_string(&policy).ok().as_deref() != Some(IMAGEMAGICK_POLICY) {
            std::fs::write(&policy, IMAGEMAGICK_POLICY)
                .context("writing the ImageMagick policy")?;
        }
        for (name, text) in DRIVER_FILES {
            let path = pkg.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(*text) {
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

fn requirements_digest() -> String {
    let mut h = Sha256::new();
    h.update(REQUIREMENTS.as_bytes());
    format!("{:x}", h.finalize())
}

fn progress(msg: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "pyxis setup: {msg}");
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}
