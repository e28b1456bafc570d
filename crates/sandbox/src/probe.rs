//! Host checks for `pyxis doctor`: can this machine run sandboxes, and if not, what to fix.

use std::ffi::c_int;

use serde::Serialize;

use crate::cgroup::{self, CgroupVersion};
use crate::sys::{self, ChildProbe};

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeItem {
    /// What was checked.
    pub name: String,
    /// Whether it works.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix it (empty when `ok`).
    pub fix: String,
}

/// Everything [`probe`] found.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Running as root (needed for namespaces, mounts and cgroups).
    pub root: ProbeItem,
    /// One item per namespace type.
    pub namespaces: Vec<ProbeItem>,
    /// Usable cgroups with memory, pids and cpu.
    pub cgroup: ProbeItem,
    /// The cgroup interface found, if any.
    pub cgroup_version: Option<CgroupVersion>,
    /// Controllers available (v2: the root's `cgroup.controllers`; v1: mounted hierarchies).
    pub cgroup_controllers: Vec<String>,
    /// Seccomp filters are supported and the policy compiles.
    pub seccomp: ProbeItem,
    /// `pivot_root` into a fresh tmpfs works.
    pub pivot_root: ProbeItem,
}

impl HostReport {
    /// True when every check passed.
    pub fn all_ok(&self) -> bool {
        self.root.ok
            && self.namespaces.iter().all(|n| n.ok)
            && self.cgroup.ok
            && self.seccomp.ok
            && self.pivot_root.ok
    }
}

fn item(name: &str, ok: bool, detail: String, fix: &str) -> ProbeItem {
    ProbeItem {
        name: name.to_owned(),
        ok,
        detail,
        fix: if ok { String::new() } else { fix.to_owned() },
    }
}

/// Checks the host. Namespace and `pivot_root` checks run in short-lived forked children, so
/// the calling process is left unchanged.
pub fn probe() -> HostReport {
    let is_root = nix::unistd::geteuid().is_root();
    let root = item(
        "root",
        is_root,
        format!("euid {}", nix::unistd::geteuid()),
        "run pyxis as root (it needs namespaces, mounts and cgroups)",
    );

    let namespaces = [
        ("mount namespace", libc::CLONE_NEWNS),
        ("pid namespace", libc::CLONE_NEWPID),
        ("network namespace", libc::CLONE_NEWNET),
        ("ipc namespace", libc::CLONE_NEWIPC),
        ("uts namespace", libc::CLONE_NEWUTS),
        ("cgroup namespace", libc::CLONE_NEWCGROUP),
    ]
    .iter()
    .map(|(name, flag)| namespace_item(name, *flag))
    .collect();

    let (cgroup, cgroup_version, cgroup_controllers) = match cgroup::available_controllers() {
        Ok((version, controllers)) => (
            item(
                "cgroups",
                true,
                format!("{version:?} with {}", controllers.join(" ")),
                "",
            ),
            Some(version),
            controllers,
        ),
        Err(err) => (
            item(
                "cgroups",
                false,
                err.to_string(),
                "mount cgroup2 at /sys/fs/cgroup with the memory, pids and cpu controllers \
                 (or the v1 memory, pids and cpu hierarchies under /sys/fs/cgroup/<name>)",
            ),
            None,
            Vec::new(),
        ),
    };

    HostReport {
        root,
        namespaces,
        cgroup,
        cgroup_version,
        cgroup_controllers,
        seccomp: seccomp_item(),
        pivot_root: pivot_root_item(),
    }
}

fn namespace_item(name: &str, flag: c_int) -> ProbeItem {
    let (ok, detail) = match sys::succeeds_in_child(&ChildProbe::Unshare(flag)) {
        Ok(true) => (true, "unshare works".to_owned()),
        Ok(false) => (false, "unshare failed".to_owned()),
        Err(err) => (false, format!("fork failed: {err}")),
    };
    item(
        name,
        ok,
        detail,
        "run as root on a kernel with this namespace enabled; in a container, allow \
         unshare (e.g. --privileged or a seccomp/AppArmor profile permitting it)",
    )
}

const SECCOMP_ACTIONS: &str = "/proc/sys/kernel/seccomp/actions_avail";

fn seccomp_item() -> ProbeItem {
    let fix = "use a kernel built with CONFIG_SECCOMP_FILTER";
    let actions = std::fs::read_to_string(SECCOMP_ACTIONS).unwrap_or_default();
    if !actions.split_whitespace().any(|a| a == "errno") {
        return item(
            "seccomp",
            false,
            format!("{SECCOMP_ACTIONS} lacks errno: {:?}", actions.trim()),
            fix,
        );
    }
    match crate::seccomp::filters() {
        Ok(filters) => item(
            "seccomp",
            true,
            format!("{} filters compiled", filters.len()),
            "",
        ),
        Err(err) => item("seccomp", false, err.to_string(), fix),
    }
}

fn pivot_root_item() -> ProbeItem {
    let fix = "run on a root filesystem that allows pivot_root (not an initramfs rootfs); \
               in a container, grant CAP_SYS_ADMIN";
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(err) => return item("pivot_root", false, format!("tempdir: {err}"), fix),
    };
    let paths = (
        sys::path_cstring(dir.path()),
        sys::path_cstring(&dir.path().join("old")),
    );
    let (Ok(dir_c), Ok(old_c)) = paths else {
        return item("pivot_root", false, "bad temp path".to_owned(), fix);
    };
    let probe = ChildProbe::PivotRoot {
        dir: dir_c,
        old: old_c,
    };
    match sys::succeeds_in_child(&probe) {
        Ok(ok) => item(
            "pivot_root",
            ok,
            if ok { "works" } else { "failed" }.to_owned(),
            fix,
        ),
        Err(err) => item("pivot_root", false, format!("fork failed: {err}"), fix),
    }
}
