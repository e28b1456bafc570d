//! `favordynmods`: the cgroup2 mount option that makes moving a process between cgroups fast.
//!
//! Every migration (a write to `cgroup.procs`) takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing. By default that per-CPU rwsem favours readers
//! (fork and exit), so each writer waits for an RCU grace period: 5 to 20 ms on the
//! development machine, the largest single cost of a new sandbox. `favordynmods` keeps the
//! rwsem in its writer-friendly mode (a write costs about 0.3 ms there), at the price of a
//! slightly slower fork and exit for every process of the host. The rwsem is global, so the
//! option set on any cgroup2 mount helps cgroup v1 hierarchies too.

use std::io;
use std::path::PathBuf;

use nix::mount::{mount, MsFlags};
use serde::Serialize;

/// The option's name, in mount options and `/proc/self/mountinfo`.
const OPTION: &str = "favordynmods";

/// What [`favor_dynamic_modifications`] found or did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "mount", rename_all = "snake_case")]
pub enum DynMods {
    /// A cgroup2 mount already has it.
    AlreadyOn(PathBuf),
    /// It was just set on this cgroup2 mount.
    Enabled(PathBuf),
    /// There is no cgroup2 mount to set it on.
    NoCgroup2Mount,
}

/// One cgroup2 line of `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Cgroup2Mount {
    path: PathBuf,
    /// Per-mount flags to keep on remount (a remount replaces them).
    flags: MsFlags,
    /// Superblock options (`rw,nsdelegate,...`).
    super_options: String,
}

/// Whether a cgroup2 mount has `favordynmods`, without changing anything.
pub fn dynamic_modifications_favored() -> io::Result<Option<bool>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(first_cgroup2(&info).map(|m| has_option(&m.super_options)))
}

/// Sets `favordynmods` on the first cgroup2 mount if it is not set yet, keeping every other
/// option of the mount. Needs `CAP_SYS_ADMIN` in the initial namespaces.
pub fn favor_dynamic_modifications() -> io::Result<DynMods> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let Some(m) = first_cgroup2(&info) else {
        return Ok(DynMods::NoCgroup2Mount);
    };
    if has_option(&m.super_options) {
        return Ok(DynMods::AlreadyOn(m.path));
    }
    let data = format!("{},{OPTION}", m.super_options);
    mount(
        None::<&str>,
        &m.path,
        None::<&str>,
        MsFlags::MS_REMOUNT | m.flags,
        Some(data.as_str()),
    )?;
    Ok(DynMods::Enabled(m.path))
}

fn has_option(super_options: &str) -> bool {
    super_options.split(',').any(|o| o == OPTION)
}

/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT MOUNT-OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS`
fn first_cgroup2(mountinfo: &str) -> Option<Cgroup2Mount> {
    mountinfo.lines().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let mut tail = tail.split(' ');
        if tail.next()? != "cgroup2" {
            return None;
        }
        let super_options = tail.nth(1)?.to_owned();
        let fields: Vec<&str> = head.split(' ').collect();
        let path = PathBuf::from(unescape(fields.get(4)?));
        let mut flags = MsFlags::empty();
        for opt in fields.get(5)?.split(',') {
            flags |= match opt {
                "ro" => MsFlags::MS_RDONLY,
                "nosuid" => MsFlags::MS_NOSUID,
                "nodev" => MsFlags::MS_NODEV,
                "noexec" => MsFlags::MS_NOEXEC,
                _ => MsFlags::empty(),
            };
        }
        Some(Cgroup2Mount {
            path,
            flags,
            super_options,
        })
    })
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_HOST: &str = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:35 / /sys/fs/cgroup/unified rw,nosuid,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn finds_the_cgroup2_mount_with_its_flags_and_options() {
        let m = first_cgroup2(V1_HOST).expect("a cgroup2 mount");
        assert_eq!(m.path, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m.flags, MsFlags::MS_NOSUID);
        assert_eq!(m.super_options, "rw,nsdelegate");
        assert!(!has_option(&m.super_options));
        assert!(has_option("rw,nsdelegate,favordynmods"));
        assert!(!has_option("rw,nofavordynmods"));
    }

    #[test]
    fn no_cgroup2_and_escaped_paths() {
        assert_eq!(
            first_cgroup2("36 31 0:31 / /x rw - cgroup cgroup rw,memory"),
            None
        );
        let line = "40 31 0:35 / /a\\040b rw - cgroup2 none rw";
        assert_eq!(
            first_cgroup2(line).map(|m| m.path),
            Some(PathBuf::from("/a b"))
        );
    }
}
