//! Per-sandbox cgroups: memory (no swap), pids and cpu limits, kill, usage, OOM kills.
//!
//! Cgroup v2 and v1 are sibling modules behind the [`CgroupManager`] trait; [`Cgroup`]
//! dispatches to one of them. The root of the cgroup filesystem is a parameter
//! ([`CgroupRoot::with_base`]), so the file writes are unit-tested against a tempdir.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

mod dynmods;
mod v1;
mod v2;

pub use dynmods::{dynamic_modifications_favored, favor_dynamic_modifications, DynMods};

type Result<T> = std::result::Result<T, CgroupError>;

/// Where cgroup filesystems are mounted on a real host.
const SYS_FS_CGROUP: &str = "/sys/fs/cgroup";
/// How long [`Cgroup::kill`] waits for the processes to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Cgroup::remove`] retries `rmdir` while the kernel still sees the group busy.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between polls.
const POLL: Duration = Duration::from_millis(5);
/// The CFS period used for the cpu quota, in microseconds.
const CPU_PERIOD_USEC: u64 = 100_000;

/// A failing cgroup operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// No usable cgroup hierarchy was found.
    #[error("detect cgroups: {reason}")]
    Detect {
        /// What is missing.
        reason: String,
    },
    /// A cgroup name is not a relative, normalized path.
    #[error("invalid cgroup name {0:?}")]
    InvalidName(String),
    /// Creating a cgroup directory failed.
    #[error("create cgroup {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Writing a control file failed.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading a control file failed.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A control file holds something unexpected.
    #[error("parse {path}: unexpected content")]
    Parse {
        /// The file.
        path: PathBuf,
    },
    /// Processes survived [`Cgroup::kill`].
    #[error("kill cgroup {path}: {remaining} processes left after the timeout")]
    Kill {
        /// The cgroup directory.
        path: PathBuf,
        /// How many were left.
        remaining: usize,
    },
    /// Removing a cgroup directory failed.
    #[error("remove cgroup {path}: {source}")]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Limits of one sandbox. A value of 0 means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ResourceLimits {
    /// Memory, swap excluded (and no swap allowed).
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// CPU quota; 1000 = one core.
    pub cpu_millicores: u64,
}

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    /// One hierarchy per controller at `/sys/fs/cgroup/<controller>`.
    V1,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

/// Resource usage of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CgroupUsage {
    /// Memory in use now.
    pub memory_bytes: u64,
    /// Highest memory use seen (current use when the kernel does not track it).
    pub memory_peak_bytes: u64,
    /// Processes now.
    pub pids: u64,
    /// CPU time used, in microseconds (0 when the host does not account it).
    pub cpu_usec: u64,
}

/// Operations on one sandbox cgroup, implemented for v1 and v2.
trait CgroupManager {
    fn procs_files(&self) -> Vec<PathBuf>;
    fn set_limits(&self, limits: &ResourceLimits) -> Result<()>;
    fn kill(&self) -> Result<()>;
    /// The flat-keyed file whose `oom_kill` line counts OOM kills.
    fn oom_events_file(&self) -> PathBuf;
    fn usage(&self) -> Result<CgroupUsage>;
    fn remove(&self) -> Result<()>;
}

/// Operations on the cgroup of one server instance, implemented for v1 and v2.
trait CgroupRootManager {
    /// Creates the child cgroup `name`.
    fn create(&self, name: &str) -> Result<Manager>;
    /// Opens an existing child cgroup.
    fn open(&self, name: &str) -> Manager;
    /// Names of the existing child cgroups.
    fn children(&self) -> Result<Vec<String>>;
    /// The instance cgroup's directories (one per v1 hierarchy).
    fn dirs(&self) -> Vec<PathBuf>;
    /// The instance cgroup's directory in the cpu hierarchy (None only if a v1 root was
    /// somehow made without one).
    fn cpu_dir(&self) -> Option<PathBuf>;
}

enum Manager {
    V1(v1::V1Cgroup),
    V2(v2::V2Cgroup),
}

impl Manager {
    fn get(&self) -> &dyn CgroupManager {
        match self {
            Manager::V1(cgroup) => cgroup,
            Manager::V2(cgroup) => cgroup,
        }
    }
}

#[derive(Clone)]
enum RootManager {
    V1(v1::V1Root),
    V2(v2::V2Root),
}

impl RootManager {
    fn get(&self) -> &dyn CgroupRootManager {
        match self {
            RootManager::V1(root) => root,
            RootManager::V2(root) => root,
        }
    }
}

/// The cgroup of one server instance (e.g. `pyxis/ab12cd34`), parent of every sandbox
/// cgroup it creates. Cloning is cheap (a few paths).
#[derive(Clone)]
pub struct CgroupRoot {
    version: CgroupVersion,
    manager: RootManager,
    /// How many cgroups deep the instance cgroup is below the base (`pyxis/ab12cd34`: 2).
    levels: usize,
}

impl std::fmt::Debug for CgroupRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupRoot")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl CgroupRoot {
    /// Finds the host's cgroups under `/sys/fs/cgroup` and creates the instance cgroup `name`.
    /// Prefers v2 when it has the memory, pids and cpu controllers; falls back to v1.
    pub fn detect(name: &str) -> Result<CgroupRoot> {
        let base = Path::new(SYS_FS_CGROUP);
        let version = detect_version(base)?;
        CgroupRoot::with_base(base, version, name)
    }

    /// Uses the cgroup filesystem(s) at `base` (for tests: a tempdir) with the given version,
    /// and creates the instance cgroup `name` there.
    pub fn with_base(base: &Path, version: CgroupVersion, name: &str) -> Result<CgroupRoot> {
        check_name(name)?;
        let manager = match version {
            CgroupVersion::V1 => RootManager::V1(v1::V1Root::create(base, name)?),
            CgroupVersion::V2 => RootManager::V2(v2::V2Root::create(base, name)?),
        };
        let levels = Path::new(name).components().count();
        Ok(CgroupRoot {
            version,
            manager,
            levels,
        })
    }

    /// Sets the CPU weight (cgroup v2 scale: 1–10000, 100 is the default) of the instance
    /// cgroup and of each cgroup above it up to the base: how much of a contended CPU the
    /// sandboxes together get against their siblings, such as the server's own cgroup.
    /// v1 gets the same ratio in `cpu.shares` (100 ↔ 1024).
    pub fn set_cpu_weight(&self, weight: u64) -> Result<()> {
        let weight = weight.clamp(1, 10_000);
        let (file, value) = match self.version {
            CgroupVersion::V1 => ("cpu.shares", (weight * 1024 / 100).max(2)),
            CgroupVersion::V2 => ("cpu.weight", weight),
        };
        let mut dir = self
            .manager
            .get()
            .cpu_dir()
            .ok_or_else(|| CgroupError::Detect {
                reason: "no cpu hierarchy".into(),
            })?;
        for _ in 0..self.levels {
            write_file(&dir.join(file), &value.to_string())?;
            dir.pop();
        }
        Ok(())
    }

    /// The cgroup interface in use.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Creates the sandbox cgroup `name` with `limits`.
    pub fn create(&self, name: &str, limits: &ResourceLimits) -> Result<Cgroup> {
        check_name(name)?;
        let cgroup = Cgroup {
            name: name.to_owned(),
            manager: self.manager.get().create(name)?,
            oom_events: OnceLock::new(),
        };
        if let Err(err) = cgroup.set_limits(limits) {
            let _ = cgroup.remove();
            return Err(err);
        }
        Ok(cgroup)
    }

    /// Kills the processes of, and removes, every sandbox cgroup of this instance (leftovers
    /// of an earlier run killed before it could clean up). Returns how many were removed.
    pub fn cleanup_leftovers(&self) -> Result<usize> {
        let names = self.manager.get().children()?;
        for name in &names {
            let cgroup = Cgroup {
                name: name.clone(),
                manager: self.manager.get().open(name),
                oom_events: OnceLock::new(),
            };
            cgroup.remove()?;
        }
        Ok(names.len())
    }
}

impl CgroupRoot {
    /// Removes every sandbox cgroup (as [`CgroupRoot::cleanup_leftovers`]) and then the
    /// instance cgroup itself; for a clean shutdown.
    pub fn remove(&self) -> Result<()> {
        self.cleanup_leftovers()?;
        for dir in self.manager.get().dirs() {
            remove_dir(&dir)?;
        }
        Ok(())
    }
}

/// The cgroup of one sandbox.
pub struct Cgroup {
    name: String,
    manager: Manager,
    /// The OOM counter file, opened on first use: it is read before every cell, and a
    /// `pread` of an open file costs a fraction of a path lookup and `open`.
    oom_events: OnceLock<Option<File>>,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup")
            .field("name", &self.name)
            .field("procs_files", &self.procs_files())
            .finish()
    }
}

impl Cgroup {
    /// The name given to [`CgroupRoot::create`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `cgroup.procs` files a process writes its pid into to join (one per v1 hierarchy);
    /// goes into [`crate::SandboxSpec::cgroup_fds`] (as open files).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.manager.get().procs_files()
    }

    /// Sets the memory (without swap), pids and cpu limits.
    pub fn set_limits(&self, limits: &ResourceLimits) -> Result<()> {
        self.manager.get().set_limits(limits)
    }

    /// Kills every process in the cgroup and waits (up to 2 s) until none is left.
    pub fn kill(&self) -> Result<()> {
        self.manager.get().kill()
    }

    /// How many processes the OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> Result<u64> {
        let path = || self.manager.get().oom_events_file();
        // Without the open file (it could not be opened), a plain read reports why.
        let mut buf = [0u8; 1024];
        let text = match self.oom_events.get_or_init(|| File::open(path()).ok()) {
            Some(file) => {
                let n = file
                    .read_at(&mut buf, 0)
                    .map_err(|source| CgroupError::Read {
                        path: path(),
                        source,
                    })?;
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
            None => read_file(&path())?,
        };
        parse_keyed(&text, "oom_kill").ok_or_else(|| CgroupError::Parse { path: path() })
    }

    /// Current usage.
    pub fn usage(&self) -> Result<CgroupUsage> {
        self.manager.get().usage()
    }

    /// Kills every process, then removes the cgroup.
    pub fn remove(&self) -> Result<()> {
        self.manager.get().remove()
    }
}

/// Controllers every sandbox needs.
const REQUIRED: [&str; 3] = ["memory", "pids", "cpu"];

fn detect_version(base: &Path) -> Result<CgroupVersion> {
    let is_cgroup2 = nix::sys::statfs::statfs(base)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    if is_cgroup2 {
        let controllers =
            std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let available: Vec<&str> = controllers.split_whitespace().collect();
        if REQUIRED.iter().all(|c| available.contains(c)) {
            return Ok(CgroupVersion::V2);
        }
        return Err(CgroupError::Detect {
            reason: format!(
                "cgroup2 at {} lacks some of {REQUIRED:?} (has {available:?})",
                base.display()
            ),
        });
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|c| !base.join(c).join("cgroup.procs").exists())
        .collect();
    if missing.is_empty() {
        Ok(CgroupVersion::V1)
    } else {
        Err(CgroupError::Detect {
            reason: format!(
                "no cgroup2 at {} and no v1 hierarchy for {missing:?}",
                base.display()
            ),
        })
    }
}

/// Names which controllers a host has, for the probe: `(version, controllers)`.
pub(crate) fn available_controllers() -> Result<(CgroupVersion, Vec<String>)> {
    let base = Path::new(SYS_FS_CGROUP);
    let version = detect_version(base)?;
    let controllers = match version {
        CgroupVersion::V2 => std::fs::read_to_string(base.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        CgroupVersion::V1 => ["memory", "pids", "cpu", "cpuacct", "freezer"]
            .iter()
            .filter(|c| base.join(c).join("cgroup.procs").exists())
            .map(|c| (*c).to_owned())
            .collect(),
    };
    Ok((version, controllers))
}

/// A relative path of normal components (`pyxis/ab12`), nothing else.
fn check_name(name: &str) -> Result<()> {
    let path = Path::new(name);
    let ok = !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_owned()))
    }
}

fn create_dir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::CreateDir {
        path: path.into(),
        source,
    })
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.into(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64> {
    let text = read_file(path)?;
    text.trim()
        .parse()
        .map_err(|_| CgroupError::Parse { path: path.into() })
}

/// The value of `key` in a flat-keyed file (`key value` lines); 0 when the key is absent.
fn read_keyed(path: &Path, key: &str) -> Result<u64> {
    parse_keyed(&read_file(path)?, key).ok_or_else(|| CgroupError::Parse { path: path.into() })
}

/// The value of `key` in flat-keyed text; `Some(0)` when the key is absent, `None` when
/// its value is not a number.
fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(key) {
            return fields.next().and_then(|v| v.parse().ok());
        }
    }
    Some(0)
}

/// Pids in a `cgroup.procs` file; none when the file (the cgroup) is gone.
fn read_pids(procs: &Path) -> Result<Vec<Pid>> {
    match std::fs::read_to_string(procs) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .map(Pid::from_raw)
            .collect()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read {
            path: procs.into(),
            source,
        }),
    }
}

/// Sends `SIGKILL` to every process listed in `procs` files until they are all empty.
fn kill_until_empty(dir: &Path, procs: &[PathBuf]) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let mut pids = Vec::new();
        for file in procs {
            pids.extend(read_pids(file)?);
        }
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Kill {
                path: dir.into(),
                remaining: pids.len(),
            });
        }
        for pid in pids {
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until every `procs` file is empty (or gone).
fn wait_until_empty(dir: &Path, procs: &[PathBuf]) -> Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let mut left = 0;
        for file in procs {
            left += read_pids(file)?.len();
        }
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Kill {
                path: dir.into(),
                remaining: left,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// `rmdir`, retried while the kernel still reports the cgroup busy (exiting tasks); a
/// missing directory counts as removed.
fn remove_dir(path: &Path) -> Result<()> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(POLL);
            }
            Err(source) => {
                return Err(CgroupError::RemoveDir {
                    path: path.into(),
                    source,
                })
            }
        }
    }
}

/// Sub-directories of `dir` (its child cgroups); none when `dir` is missing.
fn child_dirs(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.into(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `quota period` for v2's `cpu.max`, or `None` for no limit.
fn cpu_quota_usec(millicores: u64) -> Option<u64> {
    // The kernel refuses quotas below 1 ms.
    (millicores > 0).then(|| (millicores * CPU_PERIOD_USEC / 1000).max(1000))
}

/// Smallest and largest bound on a sandbox's socket buffers where the memory limit does not
/// count them (cgroup v1: `memory.kmem.tcp.limit_in_bytes`).
const SOCKET_BUFFERS_MIN: u64 = 16 << 20;
const SOCKET_BUFFERS_MAX: u64 = 64 << 20;

/// The bound on the socket buffers (TCP and UDP) of a sandbox limited to `memory_bytes`, on a
/// host where the memory limit does not count them: an eighth of the memory limit, within
/// [16 MiB, 64 MiB]. `None` when memory is not limited.
///
/// On cgroup v1 the kernel charges socket buffers only to the separate `kmem.tcp` counter,
/// and only once a limit is written to it; then it charges every socket protocol that
/// accounts its buffers (TCP, UDP), not just TCP. Without it, a sandbox's loopback sockets
/// hold host memory that no limit sees. On v2 socket buffers are part of `memory.max`.
pub(crate) fn socket_buffer_bytes(memory_bytes: u64) -> Option<u64> {
    (memory_bytes > 0).then(|| (memory_bytes / 8).clamp(SOCKET_BUFFERS_MIN, SOCKET_BUFFERS_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_buffers_are_an_eighth_of_memory_within_bounds() {
        assert_eq!(socket_buffer_bytes(0), None);
        assert_eq!(socket_buffer_bytes(64 << 20), Some(16 << 20));
        assert_eq!(socket_buffer_bytes(256 << 20), Some(32 << 20));
        assert_eq!(socket_buffer_bytes(1 << 30), Some(64 << 20));
        assert_eq!(socket_buffer_bytes(64 << 30), Some(64 << 20));
    }

    #[test]
    fn names_must_be_relative_and_normal() {
        assert!(check_name("pyxis/ab12").is_ok());
        assert!(check_name("/pyxis").is_err());
        assert!(check_name("pyxis/../x").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn keyed_files_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.events");
        std::fs::write(&path, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").expect("write");
        assert_eq!(read_keyed(&path, "oom_kill").ok(), Some(2));
        assert_eq!(read_keyed(&path, "absent").ok(), Some(0));
    }

    #[test]
    fn cpu_quota() {
        assert_eq!(cpu_quota_usec(1000), Some(100_000));
        assert_eq!(cpu_quota_usec(500), Some(50_000));
        assert_eq!(cpu_quota_usec(1), Some(1000));
        assert_eq!(cpu_quota_usec(0), None);
    }
}
