//! Reading `/proc`: the process scans the black-box tests, the hostile tests and the
//! benchmark share. Every function answers `None` (or skips the process) when a process
//! exited between the scan and the read.

use std::fs;

/// Every pid in `/proc` now.
pub fn pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `/proc/PID/status`.
pub fn status(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The (real, effective) uids of a `status` text.
pub fn uids_in(status: &str) -> Option<(u32, u32)> {
    let mut f = status
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse::<u32>().ok());
    Some((f.next()??, f.next()??))
}

/// Real uid of a process.
pub fn uid_of(pid: i32) -> Option<u32> {
    uids_in(&status(pid)?).map(|(real, _)| real)
}

/// Whether a `status` text is a zombie's.
pub fn is_zombie_status(status: &str) -> bool {
    status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains("Z (zombie)"))
}

/// `/proc/PID/cmdline`: the arguments, each ended by a NUL.
pub fn cmdline(pid: i32) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// A `Key:   123 kB` field of a `/proc` file, in KiB.
pub fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `VmRSS` of a process, KiB.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    field_kib(&status(pid)?, "VmRSS")
}

/// The fields of `/proc/PID/stat` after the parenthesised command name (which may hold
/// spaces and parentheses): state (0), ppid (1), …, utime (11), stime (12), ….
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Host pids whose real uid satisfies `wanted`, zombies included or not.
pub fn processes_with_uid(wanted: impl Fn(u32) -> bool, zombies: bool) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&pid| {
            status(pid).is_some_and(|st| {
                (zombies || !is_zombie_status(&st))
                    && uids_in(&st).is_some_and(|(real, _)| wanted(real))
            })
        })
        .collect()
}

/// Host pids whose command line contains `marker` (a unique argument a test gave a
/// process inside a sandbox).
pub fn processes_with_cmdline(marker: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&pid| cmdline(pid).is_some_and(|c| String::from_utf8_lossy(&c).contains(marker)))
        .collect()
}

/// The zygote's module, in its command line (kernels forked from it keep that command line
/// but run as a sandbox uid).
pub const ZYGOTE: &str = "pyxis_runtime.zygote";

/// The zygotes of the server `server`: uid 0 processes with the zygote's command line whose
/// parent or grandparent is the server (the first zygote is its child, the others forks of
/// it), in pid order.
pub fn zygotes_under(server: i32) -> Vec<i32> {
    let parent = |pid: i32| -> Option<i32> { stat_fields(pid)?.get(1)?.parse().ok() };
    processes_with_cmdline(ZYGOTE)
        .into_iter()
        .filter(|&p| uid_of(p) == Some(0))
        .filter(|&p| {
            let up = parent(p);
            up == Some(server) || up.and_then(parent) == Some(server)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        assert!(pids().contains(&me));
        let st = status(me).unwrap();
        let uid = own_uid();
        assert_eq!(uids_in(&st).map(|(r, _)| r), Some(uid));
        assert!(!is_zombie_status(&st));
        assert!(vm_rss_kib(me).unwrap() > 0);
        assert!(stat_fields(me).unwrap()[1].parse::<i32>().unwrap() > 0);
        assert!(processes_with_uid(|u| u == uid, false).contains(&me));
        let arg0 = String::from_utf8_lossy(&cmdline(me).unwrap())
            .split('\0')
            .next()
            .unwrap()
            .to_string();
        assert!(processes_with_cmdline(&arg0).contains(&me));
        assert!(processes_with_cmdline("no process has this \u{1} argument").is_empty());
    }

    #[test]
    fn parses_fields() {
        let t = "Rss:                1234 kB\nPss:  100 kB\nPss_Anon: 5 kB\nUid:\t0\t1000\t0\t0\n";
        assert_eq!(field_kib(t, "Rss"), Some(1234));
        assert_eq!(field_kib(t, "Pss"), Some(100));
        assert_eq!(field_kib(t, "Private_Clean"), None);
        assert_eq!(uids_in(t), Some((0, 1000)));
        assert!(is_zombie_status("State:\tZ (zombie)\n"));
    }

    /// This process's real uid, from the metadata of its own `/proc` entry.
    fn own_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self").unwrap().uid()
    }
}
