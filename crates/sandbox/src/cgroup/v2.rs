//! Cgroup v2: one unified hierarchy.

use std::path::{Path, PathBuf};

use super::{
    child_dirs, cpu_quota_usec, create_dir_all, kill_until_empty, read_keyed, read_u64, remove_dir,
    wait_until_empty, write_file, CgroupManager, CgroupRootManager, CgroupUsage, Manager,
    ResourceLimits, Result, CPU_PERIOD_USEC, REQUIRED,
};

/// The instance cgroup, `<base>/<name>`.
#[derive(Clone)]
pub(super) struct V2Root {
    dir: PathBuf,
}

impl V2Root {
    /// Creates `<base>/<name>` and enables the required controllers for the children of every
    /// cgroup from `base` down to it.
    pub(super) fn create(base: &Path, name: &str) -> Result<V2Root> {
        let dir = base.join(name);
        create_dir_all(&dir)?;
        let mut current = base.to_path_buf();
        let mut chain = vec![current.clone()];
        for component in Path::new(name).components() {
            current.push(component);
            chain.push(current.clone());
        }
        for cgroup in chain {
            enable_controllers(&cgroup)?;
        }
        Ok(V2Root { dir })
    }
}

/// Adds each required controller to `cgroup.subtree_control` unless already enabled.
fn enable_controllers(dir: &Path) -> Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&path).unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|c| !enabled.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&path, &missing.join(" "))
}

impl CgroupRootManager for V2Root {
    fn create(&self, name: &str) -> Result<Manager> {
        let dir = self.dir.join(name);
        create_dir_all(&dir)?;
        Ok(Manager::V2(V2Cgroup { dir }))
    }

    fn open(&self, name: &str) -> Manager {
        Manager::V2(V2Cgroup {
            dir: self.dir.join(name),
        })
    }

    fn children(&self) -> Result<Vec<String>> {
        child_dirs(&self.dir)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn cpu_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }
}

/// One sandbox cgroup.
pub(super) struct V2Cgroup {
    dir: PathBuf,
}

impl V2Cgroup {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl CgroupManager for V2Cgroup {
    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.file("cgroup.procs")]
    }

    fn set_limits(&self, limits: &ResourceLimits) -> Result<()> {
        let max = |v: u64| {
            if v == 0 {
                "max".to_owned()
            } else {
                v.to_string()
            }
        };
        write_file(&self.file("memory.max"), &max(limits.memory_bytes))?;
        // No swap: a sandbox over its memory limit is OOM-killed rather than swapped out.
        let swap = self.file("memory.swap.max");
        if swap.exists() {
            write_file(&swap, "0")?;
        }
        write_file(&self.file("pids.max"), &max(limits.pids))?;
        let cpu = match cpu_quota_usec(limits.cpu_millicores) {
            Some(quota) => format!("{quota} {CPU_PERIOD_USEC}"),
            None => format!("max {CPU_PERIOD_USEC}"),
        };
        write_file(&self.file("cpu.max"), &cpu)
    }

    fn kill(&self) -> Result<()> {
        let procs = self.procs_files();
        let cgroup_kill = self.file("cgroup.kill");
        if cgroup_kill.exists() {
            // Kernel 5.14+: kills atomically, forks in flight included.
            write_file(&cgroup_kill, "1")?;
            return wait_until_empty(&self.dir, &procs);
        }
        // Older kernels: freeze so nothing forks while we kill, then kill in a loop.
        let freeze = self.file("cgroup.freeze");
        let frozen = freeze.exists() && write_file(&freeze, "1").is_ok();
        let result = kill_until_empty(&self.dir, &procs);
        if frozen {
            let _ = write_file(&freeze, "0");
        }
        result?;
        wait_until_empty(&self.dir, &procs)
    }

    fn oom_events_file(&self) -> PathBuf {
        self.file("memory.events")
    }

    fn usage(&self) -> Result<CgroupUsage> {
        let memory_bytes = read_u64(&self.file("memory.current"))?;
        let peak = self.file("memory.peak");
        let memory_peak_bytes = if peak.exists() {
            read_u64(&peak)?
        } else {
            memory_bytes
        };
        Ok(CgroupUsage {
            memory_bytes,
            memory_peak_bytes,
            pids: read_u64(&self.file("pids.current"))?,
            cpu_usec: read_keyed(&self.file("cpu.stat"), "usage_usec")?,
        })
    }

    fn remove(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        self.kill()?;
        remove_dir(&self.dir)
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
    fn writes_v2_files() {
        let base = tempfile::tempdir().expect("tempdir");
        let root = CgroupRoot::with_base(base.path(), CgroupVersion::V2, "pyxis/inst")
            .expect("instance cgroup");
        assert_eq!(root.version(), CgroupVersion::V2);
        for dir in ["", "pyxis", "pyxis/inst"] {
            let control = read(&base.path().join(dir).join("cgroup.subtree_control"));
            assert_eq!(control, "+memory +pids +cpu");
        }
        root.set_cpu_weight(800).expect("weight");
        assert_eq!(read(&base.path().join("pyxis/inst/cpu.weight")), "800");
        assert_eq!(read(&base.path().join("pyxis/cpu.weight")), "800");
        assert!(!base.path().join("cpu.weight").exists());

        let sandbox_dir = base.path().join("pyxis/inst/sb1");
        fs::create_dir_all(&sandbox_dir).expect("mkdir");
        fs::write(sandbox_dir.join("memory.swap.max"), "max").expect("write");
        let limits = ResourceLimits {
            memory_bytes: 512 << 20,
            pids: 64,
            cpu_millicores: 1500,
        };
        let cgroup = root.create("sb1", &limits).expect("create");
        assert_eq!(read(&sandbox_dir.join("memory.max")), "536870912");
        assert_eq!(read(&sandbox_dir.join("memory.swap.max")), "0");
        assert_eq!(read(&sandbox_dir.join("pids.max")), "64");
        assert_eq!(read(&sandbox_dir.join("cpu.max")), "150000 100000");
        assert_eq!(cgroup.procs_files(), vec![sandbox_dir.join("cgroup.procs")]);

        cgroup
            .set_limits(&ResourceLimits {
                memory_bytes: 0,
                pids: 0,
                cpu_millicores: 0,
            })
            .expect("unlimited");
        assert_eq!(read(&sandbox_dir.join("memory.max")), "max");
        assert_eq!(read(&sandbox_dir.join("cpu.max")), "max 100000");

        fs::write(sandbox_dir.join("memory.events"), "oom 1\noom_kill 3\n").expect("write");
        assert_eq!(cgroup.oom_kills().ok(), Some(3));
        fs::write(sandbox_dir.join("memory.events"), "oom 2\noom_kill 4\n").expect("write");
        assert_eq!(cgroup.oom_kills().ok(), Some(4));
        fs::write(sandbox_dir.join("memory.current"), "1000\n").expect("write");
        fs::write(sandbox_dir.join("memory.peak"), "2000\n").expect("write");
        fs::write(sandbox_dir.join("pids.current"), "3\n").expect("write");
        fs::write(
            sandbox_dir.join("cpu.stat"),
            "usage_usec 42\nuser_usec 40\n",
        )
        .expect("write");
        let usage = cgroup.usage().expect("usage");
        assert_eq!(usage.memory_bytes, 1000);
        assert_eq!(usage.memory_peak_bytes, 2000);
        assert_eq!(usage.pids, 3);
        assert_eq!(usage.cpu_usec, 42);

        // cgroup.kill is used when present; empty cgroup.procs means everything is dead.
        fs::write(sandbox_dir.join("cgroup.kill"), "").expect("write");
        fs::write(sandbox_dir.join("cgroup.procs"), "").expect("write");
        cgroup.kill().expect("kill");
        assert_eq!(read(&sandbox_dir.join("cgroup.kill")), "1");
    }
}
