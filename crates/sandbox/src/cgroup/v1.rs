//! Cgroup v1: one hierarchy per controller, each at `<base>/<controller>`.
//!
//! Required: memory, pids, cpu. Used when present: cpuacct (cpu usage; often co-mounted with
//! cpu) and freezer (kill without fork races).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    child_dirs, cpu_quota_usec, create_dir_all, kill_until_empty, read_file, read_pids, read_u64,
    remove_dir, socket_buffer_bytes, wait_until_empty, write_file, CgroupError, CgroupManager,
    CgroupRootManager, CgroupUsage, Manager, ResourceLimits, Result, CPU_PERIOD_USEC, REQUIRED,
};

/// Optional controllers used when mounted.
const OPTIONAL: [&str; 2] = ["cpuacct", "freezer"];
/// How long to wait for the freezer to report `FROZEN`.
const FREEZE_TIMEOUT: Duration = Duration::from_millis(500);

/// The instance cgroup in each hierarchy.
#[derive(Clone)]
pub(super) struct V1Root {
    /// `(controller, <base>/<controller>/<name>)`, one entry per distinct hierarchy.
    dirs: Vec<(&'static str, PathBuf)>,
}

impl V1Root {
    pub(super) fn create(base: &Path, name: &str) -> Result<V1Root> {
        let mut dirs: Vec<(&'static str, PathBuf)> = Vec::new();
        let mut seen: Vec<PathBuf> = Vec::new();
        for controller in REQUIRED.iter().chain(OPTIONAL.iter()) {
            let hierarchy = base.join(controller);
            if !hierarchy.is_dir() {
                if REQUIRED.contains(controller) {
                    return Err(CgroupError::Detect {
                        reason: format!("no v1 {controller} hierarchy at {}", hierarchy.display()),
                    });
                }
                continue;
            }
            // cpu and cpuacct are often one hierarchy reached through two symlinks.
            let real = std::fs::canonicalize(&hierarchy).unwrap_or_else(|_| hierarchy.clone());
            if seen.contains(&real) {
                continue;
            }
            seen.push(real);
            if *controller == "memory" {
                // Children must be accounted in their parents (always on since Linux 5.x;
                // the write is refused once children exist, which is fine).
                let _ = write_file(&hierarchy.join("memory.use_hierarchy"), "1");
            }
            let dir = hierarchy.join(name);
            create_dir_all(&dir)?;
            if *controller == "memory" {
                let _ = write_file(&dir.join("memory.use_hierarchy"), "1");
            }
            dirs.push((controller, dir));
        }
        Ok(V1Root { dirs })
    }
}

impl CgroupRootManager for V1Root {
    fn create(&self, name: &str) -> Result<Manager> {
        let mut dirs = Vec::with_capacity(self.dirs.len());
        for (controller, parent) in &self.dirs {
            let dir = parent.join(name);
            if let Err(err) = create_dir_all(&dir) {
                let created = V1Cgroup { dirs };
                let _ = created.remove();
                return Err(err);
            }
            dirs.push((*controller, dir));
        }
        Ok(Manager::V1(V1Cgroup { dirs }))
    }

    fn open(&self, name: &str) -> Manager {
        Manager::V1(V1Cgroup {
            dirs: self
                .dirs
                .iter()
                .map(|(controller, parent)| (*controller, parent.join(name)))
                .collect(),
        })
    }

    fn children(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for (_, dir) in &self.dirs {
            names.extend(child_dirs(dir)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, dir)| dir.clone()).collect()
    }

    fn cpu_dir(&self) -> Option<PathBuf> {
        // cpu is required, so create() put it in.
        self.dirs
            .iter()
            .find(|(c, _)| *c == "cpu")
            .map(|(_, dir)| dir.clone())
    }
}

/// One sandbox cgroup, a directory in each hierarchy.
pub(super) struct V1Cgroup {
    dirs: Vec<(&'static str, PathBuf)>,
}

impl V1Cgroup {
    /// The directory of `controller`, if that hierarchy is in use.
    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, dir)| dir.as_path())
    }

    /// `<controller dir>/<file>`; the required controllers are always present.
    fn file(&self, controller: &str, file: &str) -> PathBuf {
        self.dir(controller)
            .map(|dir| dir.join(file))
            .unwrap_or_else(|| PathBuf::from(file))
    }

    /// A control file that may live in the cpu or the cpuacct hierarchy.
    fn cpuacct_file(&self, file: &str) -> Option<PathBuf> {
        ["cpuacct", "cpu"]
            .iter()
            .filter_map(|c| self.dir(c))
            .map(|dir| dir.join(file))
            .find(|path| path.exists())
    }

    fn set_memory(&self, bytes: u64) -> Result<()> {
        let value = if bytes == 0 {
            "-1".to_owned()
        } else {
            bytes.to_string()
        };
        let limit = self.file("memory", "memory.limit_in_bytes");
        let memsw = self.file("memory", "memory.memsw.limit_in_bytes");
        if !memsw.exists() {
            return write_file(&limit, &value);
        }
        // memory+swap must stay >= memory: lower memory first, raise memory+swap first.
        match write_file(&limit, &value) {
            Ok(()) => write_file(&memsw, &value),
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                write_file(&memsw, &value)?;
                write_file(&limit, &value)
            }
            Err(err) => Err(err),
        }
    }

    /// Bounds the sandbox's socket buffers (see [`socket_buffer_bytes`]). Hosts whose kernel
    /// lacks the file (no v1 kmem accounting) are left as they are: `pyxis doctor` says so.
    fn set_socket_buffers(&self, memory_bytes: u64) -> Result<()> {
        let file = self.file("memory", "memory.kmem.tcp.limit_in_bytes");
        if !file.exists() {
            return Ok(());
        }
        let value =
            socket_buffer_bytes(memory_bytes).map_or_else(|| "-1".to_owned(), |b| b.to_string());
        write_file(&file, &value)
    }

    fn freeze(&self, state: &str) -> bool {
        let Some(dir) = self.dir("freezer") else {
            return false;
        };
        let file = dir.join("freezer.state");
        if write_file(&file, state).is_err() {
            return false;
        }
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        while Instant::now() < deadline {
            match read_file(&file) {
                Ok(now) if now.trim() == state => return true,
                Ok(_) => std::thread::sleep(super::POLL),
                Err(_) => return false,
            }
        }
        false
    }

    fn dir_for_errors(&self) -> &Path {
        self.dir("memory").unwrap_or(Path::new("."))
    }
}

impl CgroupManager for V1Cgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, dir)| dir.join("cgroup.procs"))
            .collect()
    }

    fn set_limits(&self, limits: &ResourceLimits) -> Result<()> {
        self.set_memory(limits.memory_bytes)?;
        self.set_socket_buffers(limits.memory_bytes)?;
        // Keep the OOM killer enabled: a sandbox over its limit is killed, not paused.
        write_file(&self.file("memory", "memory.oom_control"), "0")?;
        let pids = if limits.pids == 0 {
            "max".to_owned()
        } else {
            limits.pids.to_string()
        };
        write_file(&self.file("pids", "pids.max"), &pids)?;
        let quota = match cpu_quota_usec(limits.cpu_millicores) {
            Some(quota) => quota.to_string(),
            None => "-1".to_owned(),
        };
        write_file(
            &self.file("cpu", "cpu.cfs_period_us"),
            &CPU_PERIOD_USEC.to_string(),
        )?;
        write_file(&self.file("cpu", "cpu.cfs_quota_us"), &quota)
    }

    fn kill(&self) -> Result<()> {
        let procs = self.procs_files();
        // Frozen tasks cannot fork; they die of the pending SIGKILL when thawed.
        let frozen = self.freeze("FROZEN");
        if frozen {
            for file in &procs {
                for pid in read_pids(file)? {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
            self.freeze("THAWED");
        }
        kill_until_empty(self.dir_for_errors(), &procs)?;
        wait_until_empty(self.dir_for_errors(), &procs)
    }

    fn oom_events_file(&self) -> PathBuf {
        self.file("memory", "memory.oom_control")
    }

    fn usage(&self) -> Result<CgroupUsage> {
        let cpu_usec = match self.cpuacct_file("cpuacct.usage") {
            Some(path) => read_u64(&path)? / 1000,
            None => 0,
        };
        Ok(CgroupUsage {
            memory_bytes: read_u64(&self.file("memory", "memory.usage_in_bytes"))?,
            memory_peak_bytes: read_u64(&self.file("memory", "memory.max_usage_in_bytes"))?,
            pids: read_u64(&self.file("pids", "pids.current"))?,
            cpu_usec,
        })
    }

    fn remove(&self) -> Result<()> {
        self.kill()?;
        let mut first_error = None;
        for (_, dir) in &self.dirs {
            if let Err(err) = remove_dir(dir) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CgroupRoot, CgroupVersion, ResourceLimits};
    use std::fs;

    fn read(path: &std::path::Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    #[test]
    fn writes_v1_files() {
        let base = tempfile::tempdir().expect("tempdir");
        for controller in ["memory", "pids", "cpu", "cpuacct"] {
            fs::create_dir(base.path().join(controller)).expect("mkdir");
        }
        let root = CgroupRoot::with_base(base.path(), CgroupVersion::V1, "pyxis/inst")
            .expect("instance cgroup");
        assert_eq!(root.version(), CgroupVersion::V1);
        for controller in ["memory", "pids", "cpu", "cpuacct"] {
            assert!(base.path().join(controller).join("pyxis/inst").is_dir());
        }
        // No freezer hierarchy: not used.
        assert!(!base.path().join("freezer").exists());

        // The weight goes to the instance and to `pyxis`, not to the hierarchy's root.
        root.set_cpu_weight(800).expect("weight");
        assert_eq!(read(&base.path().join("cpu/pyxis/inst/cpu.shares")), "8192");
        assert_eq!(read(&base.path().join("cpu/pyxis/cpu.shares")), "8192");
        assert!(!base.path().join("cpu/cpu.shares").exists());

        let memory_dir = base.path().join("memory/pyxis/inst/sb1");
        fs::create_dir_all(&memory_dir).expect("mkdir");
        fs::write(memory_dir.join("memory.memsw.limit_in_bytes"), "-1").expect("write");
        fs::write(memory_dir.join("memory.kmem.tcp.limit_in_bytes"), "-1").expect("write");
        let limits = ResourceLimits {
            memory_bytes: 256 << 20,
            pids: 32,
            cpu_millicores: 250,
        };
        let cgroup = root.create("sb1", &limits).expect("create");
        assert_eq!(read(&memory_dir.join("memory.limit_in_bytes")), "268435456");
        assert_eq!(
            read(&memory_dir.join("memory.memsw.limit_in_bytes")),
            "268435456"
        );
        assert_eq!(read(&memory_dir.join("memory.oom_control")), "0");
        // An eighth of 256 MiB: socket buffers are bounded beside the memory limit.
        assert_eq!(
            read(&memory_dir.join("memory.kmem.tcp.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        let pids_dir = base.path().join("pids/pyxis/inst/sb1");
        assert_eq!(read(&pids_dir.join("pids.max")), "32");
        let cpu_dir = base.path().join("cpu/pyxis/inst/sb1");
        assert_eq!(read(&cpu_dir.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu_dir.join("cpu.cfs_quota_us")), "25000");

        let procs = cgroup.procs_files();
        assert_eq!(procs.len(), 4);
        assert!(procs.contains(&memory_dir.join("cgroup.procs")));
        assert!(procs.contains(&pids_dir.join("cgroup.procs")));

        fs::write(
            memory_dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
        )
        .expect("write");
        assert_eq!(cgroup.oom_kills().ok(), Some(5));
        // The file stays open between reads: a new count is still seen.
        fs::write(
            memory_dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 6\n",
        )
        .expect("write");
        assert_eq!(cgroup.oom_kills().ok(), Some(6));

        fs::write(memory_dir.join("memory.usage_in_bytes"), "100\n").expect("write");
        fs::write(memory_dir.join("memory.max_usage_in_bytes"), "200\n").expect("write");
        fs::write(pids_dir.join("pids.current"), "2\n").expect("write");
        let cpuacct_dir = base.path().join("cpuacct/pyxis/inst/sb1");
        fs::write(cpuacct_dir.join("cpuacct.usage"), "5000000\n").expect("write");
        let usage = cgroup.usage().expect("usage");
        assert_eq!(usage.memory_bytes, 100);
        assert_eq!(usage.memory_peak_bytes, 200);
        assert_eq!(usage.pids, 2);
        assert_eq!(usage.cpu_usec, 5000);
    }
}
