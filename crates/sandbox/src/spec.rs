//! The sandbox specification: what [`crate::spawn`] builds, as plain serializable data.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

type Result<T> = std::result::Result<T, SpecError>;

/// An invalid [`SandboxSpec`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The JSON text is not a spec.
    #[error("parse sandbox spec: {0}")]
    Parse(#[from] serde_json::Error),
    /// A field has a value `spawn` refuses.
    #[error("invalid sandbox spec field {field}: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Resource limits set with `setrlimit` (soft = hard). `RLIMIT_CORE` is always 0.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_FSIZE`: the largest file the sandbox can write, in bytes.
    pub fsize_bytes: u64,
    /// `RLIMIT_NOFILE`: open files per process.
    pub nofile: u64,
    /// `RLIMIT_NPROC`: processes of the sandbox uid.
    pub nproc: u64,
}

/// Everything [`crate::spawn`] needs; travels as JSON from the server through the Python
/// zygote.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Unprivileged uid of this sandbox (distinct per live sandbox).
    pub uid: u32,
    /// Unprivileged gid of this sandbox.
    pub gid: u32,
    /// Hostname in the new UTS namespace.
    pub hostname: String,
    /// The numbers, in the init and the kernel, of open (write-only) `cgroup.procs` files
    /// each writes its own pid into before joining or making the cgroup namespace.
    /// Descriptors rather than paths, so the kernel's memory (a fork of the caller) holds no
    /// host path of its cgroups.
    pub cgroup_fds: Vec<i32>,
    /// An existing empty host directory; the new root tmpfs is mounted on it (in the new mount
    /// namespace only, so every sandbox can share one).
    pub root_mountpoint: PathBuf,
    /// Host paths bind-mounted read-only, nosuid, nodev (recursively) at the same path.
    /// Missing paths are skipped; symlinks are recreated as symlinks; files are bound onto
    /// empty files.
    pub ro_binds: Vec<PathBuf>,
    /// An open (`O_PATH`) host directory bound read-write (nosuid, nodev) at `/workspace`, the
    /// working directory. A descriptor, for the same reason as `cgroup_fds`.
    pub workspace_fd: i32,
    /// Symlinks to `/workspace` (e.g. `/sandbox`, `/code`).
    pub workspace_aliases: Vec<PathBuf>,
    /// `size=` of the private `/tmp` and `/dev/shm` tmpfs.
    pub tmp_bytes: u64,
    /// Resource limits.
    pub rlimits: Rlimits,
    /// The kernel's socket; kept open.
    pub kernel_fd: i32,
    /// The kernel's setup report pipe (`ok` or `err ...`), closed once it is ready.
    pub report_fd: i32,
    /// Bring `lo` up in the new network namespace.
    pub loopback: bool,
    /// Keep the init (and so the sandbox's namespaces) when the kernel exits: other
    /// processes joined the sandbox (contexts, commands, see [`crate::ExecSpec`]), and the
    /// server ends the sandbox itself, with a cgroup kill. The init still dies with the
    /// zygote (its parent-death signal), and with it every process of the sandbox.
    #[serde(default)]
    pub outlive_kernel: bool,
    /// The egress listener the init runs, if any (see [`EgressListener`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressListener>,
    /// How long each of the two setup reports (the init's, then the kernel's) may take, in
    /// milliseconds; [`DEFAULT_SETUP_TIMEOUT_MS`] when absent. Slow or emulated hosts need
    /// more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_timeout_ms: Option<u64>,
}

/// A setup report's time limit when the spec names none.
pub const DEFAULT_SETUP_TIMEOUT_MS: u64 = 10_000;
/// The longest setup time limit a spec may ask for (an hour).
const MAX_SETUP_TIMEOUT_MS: u64 = 3_600_000;

/// A TCP listener the init opens on `127.0.0.1:port` inside the sandbox's network namespace.
/// The init accepts each connection and hands the accepted socket itself, with
/// `SCM_RIGHTS`, over the Unix socket at `channel_fd` to the server, which speaks the proxy
/// protocol on it. The init never reads or writes a byte of a connection: the sandbox gets
/// no interface but `lo`, and no road out but the server.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressListener {
    /// The init's end of the Unix stream socket to the server; handed over after the cgroup
    /// files (see [`crate::Handover`]).
    pub channel_fd: i32,
    /// The port on `127.0.0.1` (not 0).
    pub port: u16,
}

/// Longest hostname `sethostname` accepts (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

/// Paths the sandbox's root gets from `spawn` itself; a bind or alias there would hide or break them.
const RESERVED: [&str; 5] = ["/", "/proc", "/dev", "/tmp", "/workspace"];

/// The descriptor of the kernel's socket in the sandbox. With [`REPORT_FD`],
/// [`WORKSPACE_FD`] and [`FIRST_CGROUP_FD`], the one place the layout of a spawn's
/// descriptors is written down: callers number a spec with
/// [`SandboxSpec::number_descriptors`] and hand the descriptors in the same order.
pub const KERNEL_FD: i32 = 3;
/// The setup report pipe, which `spawn` makes itself.
pub const REPORT_FD: i32 = 4;
/// The workspace directory (`O_PATH`).
pub const WORKSPACE_FD: i32 = 5;
/// The first `cgroup.procs` file; the others follow, then the egress channel.
pub const FIRST_CGROUP_FD: i32 = 6;

impl SandboxSpec {
    /// How long each setup report may take.
    pub fn setup_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.setup_timeout_ms.unwrap_or(DEFAULT_SETUP_TIMEOUT_MS))
    }

    /// Number the spec's descriptors as the sandbox gets them: the kernel's socket at
    /// [`KERNEL_FD`], the report pipe at [`REPORT_FD`], the workspace at [`WORKSPACE_FD`],
    /// `cgroups` procs files from [`FIRST_CGROUP_FD`], then the egress channel if the spec
    /// has a listener. The caller hands `spawn` the kernel socket, the workspace, the procs
    /// files and the channel, in that order.
    pub fn number_descriptors(&mut self, cgroups: usize) {
        self.kernel_fd = KERNEL_FD;
        self.report_fd = REPORT_FD;
        self.workspace_fd = WORKSPACE_FD;
        self.cgroup_fds = (FIRST_CGROUP_FD..).take(cgroups).collect();
        let next = FIRST_CGROUP_FD + cgroups as i32;
        if let Some(egress) = self.egress.as_mut() {
            egress.channel_fd = next;
        }
    }

    /// Parses and validates a spec from JSON.
    pub fn from_json(json: &[u8]) -> Result<SandboxSpec> {
        let spec: SandboxSpec = serde_json::from_slice(json)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Every descriptor the spec names.
    pub fn fds(&self) -> Vec<i32> {
        let mut fds = vec![self.kernel_fd, self.report_fd, self.workspace_fd];
        fds.extend(&self.cgroup_fds);
        fds.extend(self.egress.map(|e| e.channel_fd));
        fds
    }

    /// Checks the invariants `spawn` relies on.
    pub fn validate(&self) -> Result<()> {
        if self.uid == 0 || self.gid == 0 {
            return invalid("uid", "the sandbox uid and gid must not be 0");
        }
        let hostname_ok = !self.hostname.is_empty()
            && self.hostname.len() <= HOST_NAME_MAX
            && self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !hostname_ok {
            return invalid("hostname", "1 to 64 characters of [A-Za-z0-9.-]");
        }
        let fds = self.fds();
        let distinct = fds.iter().enumerate().all(|(i, fd)| !fds[..i].contains(fd));
        if !distinct || fds.iter().any(|&fd| fd < 3) {
            return invalid(
                "kernel_fd",
                "kernel_fd, report_fd, workspace_fd, cgroup_fds and the egress channel_fd \
                 must be distinct and > 2",
            );
        }
        if let Some(egress) = self.egress {
            if egress.port == 0 {
                return invalid("egress", "the listener's port must not be 0");
            }
            if !self.loopback {
                return invalid("egress", "the egress listener needs loopback");
            }
        }
        if let Some(ms) = self.setup_timeout_ms {
            if ms == 0 || ms > MAX_SETUP_TIMEOUT_MS {
                return invalid("setup_timeout_ms", "1 ms to an hour");
            }
        }
        check_path("root_mountpoint", &self.root_mountpoint)?;
        for path in &self.ro_binds {
            check_path("ro_binds", path)?;
            check_not_reserved("ro_binds", path)?;
        }
        for path in &self.workspace_aliases {
            check_path("workspace_aliases", path)?;
            check_not_reserved("workspace_aliases", path)?;
        }
        if self.tmp_bytes == 0 {
            return invalid("tmp_bytes", "must be positive");
        }
        Ok(())
    }
}

/// What [`crate::spawn`] sends the sandbox's init: the spec, and the descriptor of the mount
/// namespace the init copies for the sandbox (see [`crate::prepare`]). Not part of
/// [`SandboxSpec`]: callers never choose it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct InitSpec {
    #[serde(flatten)]
    pub spec: SandboxSpec,
    /// The init's descriptor of that namespace; without one, the init copies the mount
    /// namespace it started in (the caller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_namespace_fd: Option<i32>,
}

impl InitSpec {
    /// The spec, with the namespace at the first number the spec leaves free.
    pub fn new(spec: &SandboxSpec, mount_namespace: bool) -> InitSpec {
        let free = spec.fds().into_iter().max().unwrap_or(2) + 1;
        InitSpec {
            spec: spec.clone(),
            mount_namespace_fd: mount_namespace.then_some(free),
        }
    }

    /// Parses and validates what [`InitSpec::new`] made.
    pub fn from_json(json: &[u8]) -> Result<InitSpec> {
        let init: InitSpec = serde_json::from_slice(json)?;
        init.spec.validate()?;
        if let Some(fd) = init.mount_namespace_fd {
            if fd < 3 || init.spec.fds().contains(&fd) {
                invalid(
                    "mount_namespace_fd",
                    "must be > 2 and not another descriptor",
                )?;
            }
        }
        Ok(init)
    }
}

fn invalid(field: &'static str, reason: &str) -> Result<()> {
    Err(SpecError::Invalid {
        field,
        reason: reason.to_owned(),
    })
}

/// Absolute, without `.` or `..` components.
fn check_path(field: &'static str, path: &Path) -> Result<()> {
    let normal = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if normal {
        Ok(())
    } else {
        Err(SpecError::Invalid {
            field,
            reason: format!("{} must be absolute and normalized", path.display()),
        })
    }
}

fn check_not_reserved(field: &'static str, path: &Path) -> Result<()> {
    let reserved = RESERVED
        .iter()
        .any(|r| path == Path::new(r) || (*r != "/" && path.starts_with(r)));
    if reserved {
        Err(SpecError::Invalid {
            field,
            reason: format!("{} is built by the sandbox itself", path.display()),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> SandboxSpec {
        SandboxSpec {
            uid: 10_001,
            gid: 10_001,
            hostname: "pyxis".into(),
            cgroup_fds: vec![6, 7],
            root_mountpoint: "/run/pyxis/root/a".into(),
            ro_binds: vec!["/usr".into(), "/lib".into(), "/etc/ld.so.cache".into()],
            workspace_fd: 5,
            workspace_aliases: vec!["/sandbox".into(), "/code".into()],
            tmp_bytes: 64 << 20,
            rlimits: Rlimits {
                fsize_bytes: 1 << 30,
                nofile: 1024,
                nproc: 256,
            },
            kernel_fd: 3,
            report_fd: 4,
            loopback: true,
            outlive_kernel: false,
            egress: None,
            setup_timeout_ms: None,
        }
    }

    #[test]
    fn json_round_trip() {
        let spec = sample();
        let json = serde_json::to_vec(&spec).expect("a spec serializes");
        let back = SandboxSpec::from_json(&json).expect("round trip");
        assert_eq!(spec, back);
        let value: serde_json::Value = serde_json::from_slice(&json).expect("valid json");
        assert_eq!(value["rlimits"]["nofile"], 1024);
        assert_eq!(value["kernel_fd"], 3);
    }

    #[test]
    fn rejects_bad_specs() {
        let mut spec = sample();
        spec.uid = 0;
        assert!(spec.validate().is_err());
        let mut spec = sample();
        spec.hostname = "a\nb".into();
        assert!(spec.validate().is_err());
        let mut spec = sample();
        spec.ro_binds.push("/".into());
        assert!(spec.validate().is_err());
        let mut spec = sample();
        spec.ro_binds.push("/usr/../root".into());
        assert!(spec.validate().is_err());
        let mut spec = sample();
        spec.workspace_aliases.push("/proc/x".into());
        assert!(spec.validate().is_err());
        let mut spec = sample();
        spec.report_fd = 3;
        assert!(spec.validate().is_err());
        let mut spec = sample();
        spec.cgroup_fds.push(5);
        assert!(spec.validate().is_err());
        let mut spec = sample();
        spec.workspace_fd = 2;
        assert!(spec.validate().is_err());
        for ms in [0, MAX_SETUP_TIMEOUT_MS + 1] {
            let mut spec = sample();
            spec.setup_timeout_ms = Some(ms);
            assert!(spec.validate().is_err(), "{ms} ms");
        }
    }

    #[test]
    fn the_setup_timeout_is_the_specs_or_ten_seconds() {
        let mut spec = sample();
        assert_eq!(spec.setup_timeout(), std::time::Duration::from_secs(10));
        spec.setup_timeout_ms = Some(45_000);
        assert!(spec.validate().is_ok());
        assert_eq!(spec.setup_timeout(), std::time::Duration::from_secs(45));
        let json = serde_json::to_string(&spec).unwrap();
        let back: SandboxSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.setup_timeout_ms, Some(45_000));
    }

    #[test]
    fn init_spec_numbers_the_namespace_past_the_spec() {
        let spec = sample();
        let init = InitSpec::new(&spec, true);
        assert_eq!(init.mount_namespace_fd, Some(8));
        let json = serde_json::to_vec(&init).expect("serializes");
        assert_eq!(InitSpec::from_json(&json).expect("parses"), init);
        // The plain spec still parses as the init's, without a namespace.
        let json = serde_json::to_vec(&spec).expect("serializes");
        let plain = InitSpec::from_json(&json).expect("parses");
        assert_eq!((plain.spec, plain.mount_namespace_fd), (spec.clone(), None));
        let mut bad = InitSpec::new(&spec, true);
        bad.mount_namespace_fd = Some(6);
        let json = serde_json::to_vec(&bad).expect("serializes");
        assert!(InitSpec::from_json(&json).is_err(), "taken by a cgroup");
    }

    #[test]
    fn egress_listener_is_optional_and_checked() {
        // A spec without the field (as older servers send it) parses.
        let mut value = serde_json::to_value(sample()).expect("serializes");
        value.as_object_mut().expect("object").remove("egress");
        let spec = SandboxSpec::from_json(value.to_string().as_bytes()).expect("parses");
        assert_eq!(spec.egress, None);
        let mut spec = sample();
        spec.egress = Some(EgressListener {
            channel_fd: 8,
            port: 3128,
        });
        assert!(spec.validate().is_ok());
        assert_eq!(spec.fds().last(), Some(&8));
        let json = serde_json::to_vec(&spec).expect("serializes");
        assert_eq!(SandboxSpec::from_json(&json).expect("parses"), spec);
        let mut bad = spec.clone();
        bad.egress = Some(EgressListener {
            channel_fd: 6,
            port: 3128,
        });
        assert!(bad.validate().is_err(), "channel_fd taken by a cgroup");
        let mut bad = spec.clone();
        bad.egress = Some(EgressListener {
            channel_fd: 8,
            port: 0,
        });
        assert!(bad.validate().is_err(), "port 0");
        let mut bad = spec;
        bad.loopback = false;
        assert!(bad.validate().is_err(), "no loopback");
    }
}
