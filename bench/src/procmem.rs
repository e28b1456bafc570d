//! Memory accounting from `/proc` (needs root to read other users'
//! `smaps_rollup`), over the tests' `/proc` readers.

use std::collections::{BTreeSet, HashMap};
use std::fs;

pub use pyxis_tests::procfs::vm_rss_kib;
use pyxis_tests::procfs::{field_kib, pids, stat_fields, uid_of};

/// Memory of a set of processes, in KiB.
#[derive(Debug, Default, Clone)]
pub struct MemSum {
    pub processes: usize,
    pub uids: BTreeSet<u32>,
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// Private_Clean + Private_Dirty.
    pub uss_kib: u64,
    /// Processes whose smaps_rollup could not be read (exited, or no access).
    pub unreadable: usize,
    /// Zombies (not counted in `processes`).
    pub zombies: usize,
}

/// (Rss, Pss, Private_Clean + Private_Dirty) of a process, KiB.
fn rollup(pid: i32) -> Option<(u64, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let rss = field_kib(&text, "Rss")?;
    let pss = field_kib(&text, "Pss")?;
    let uss = field_kib(&text, "Private_Clean")? + field_kib(&text, "Private_Dirty")?;
    Some((rss, pss, uss))
}

fn add(sum: &mut MemSum, pid: i32, uid: Option<u32>) {
    if state_of(pid) == Some('Z') {
        sum.zombies += 1;
        return;
    }
    sum.processes += 1;
    if let Some(u) = uid {
        sum.uids.insert(u);
    }
    match rollup(pid) {
        Some((rss, pss, uss)) => {
            sum.rss_kib += rss;
            sum.pss_kib += pss;
            sum.uss_kib += uss;
        }
        None => sum.unreadable += 1,
    }
}

/// Every process whose real uid is in `lo..hi`.
pub fn by_uid_range(lo: u32, hi: u32) -> MemSum {
    let mut sum = MemSum::default();
    for pid in pids() {
        if let Some(uid) = uid_of(pid) {
            if (lo..hi).contains(&uid) {
                add(&mut sum, pid, Some(uid));
            }
        }
    }
    sum
}

/// State letter from `/proc/PID/stat` (R, S, D, Z, …).
fn state_of(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Parent pid from `/proc/PID/stat`.
fn ppid_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Descendants of `root` (not `root` itself) whose uid is *outside*
/// `lo..hi`: the server's helpers (zygote and the like).
pub fn helpers_of(root: i32, lo: u32, hi: u32) -> MemSum {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in pids() {
        if let Some(pp) = ppid_of(pid) {
            children.entry(pp).or_default().push(pid);
        }
    }
    let mut sum = MemSum::default();
    let mut stack = children.get(&root).cloned().unwrap_or_default();
    while let Some(pid) = stack.pop() {
        if let Some(c) = children.get(&pid) {
            stack.extend(c);
        }
        let uid = uid_of(pid);
        if uid.is_some_and(|u| (lo..hi).contains(&u)) {
            continue;
        }
        add(&mut sum, pid, uid);
    }
    sum
}

/// The pid of the process listening on a loopback TCP port (via
/// `/proc/net/tcp{,6}` socket inodes and `/proc/*/fd`).
pub fn listener_pid(port: u16) -> Option<i32> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some(p) = f[1].rsplit(':').next() else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() == Some(port) {
                inodes.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for pid in pids() {
        let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                if inodes.contains(target.to_string_lossy().as_ref()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Clock ticks per second of `/proc` CPU times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time (user + system) a process has used, in seconds.
pub fn process_cpu_s(pid: i32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_s())
}

/// CPU time the whole host has spent busy (all but idle and iowait), in seconds.
pub fn host_busy_cpu_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; the guest
    // times are already in user and nice.
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Some(busy / ticks_per_s())
}

/// CPU time (user + system) used by this process so far, in seconds.
pub fn own_cpu_s() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let t = "Rss:                1234 kB\nPss:                 100 kB\nPss_Anon: 5 kB\nPrivate_Clean:  7 kB\nPrivate_Dirty:  3 kB\n";
        assert_eq!(field_kib(t, "Rss"), Some(1234));
        assert_eq!(field_kib(t, "Pss"), Some(100));
        assert_eq!(field_kib(t, "Private_Clean"), Some(7));
        let me = std::process::id() as i32;
        assert!(vm_rss_kib(me).unwrap() > 0);
        assert!(uid_of(me).is_some());
        assert_eq!(ppid_of(me).map(|p| p > 0), Some(true));
    }
}
