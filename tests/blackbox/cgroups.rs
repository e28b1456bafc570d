//! The cgroup interface as this host's kernel really offers it: what `pyxis doctor` reports,
//! and what the kernel's own files of a session's cgroup hold (its limits, its OOM kills).
//!
//! On the development host (cgroup v1) they check the v1 files; `scripts/vm/run-v2` runs
//! them in a guest that has only cgroup v2 and sets `PYXIS_TEST_EXPECT_CGROUP=v2`, so a guest
//! that silently fell back to v1 fails instead of passing.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pyxis_tests::{processes_with_cmdline, pyxis_bin, Session, TestServer};
use serde_json::json;

/// The cgroup interface mounted at `/sys/fs/cgroup`: "v2" for the unified hierarchy, else
/// "v1". Checked against `PYXIS_TEST_EXPECT_CGROUP` when a stage pins it.
fn host_cgroup_version() -> &'static str {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let unified = info.lines().any(|l| {
        let mut halves = l.split(" - ");
        let mount_point = halves.next().and_then(|h| h.split(' ').nth(4));
        let fs_type = halves.next().and_then(|h| h.split(' ').next());
        mount_point == Some("/sys/fs/cgroup") && fs_type == Some("cgroup2")
    });
    let version = if unified { "v2" } else { "v1" };
    if let Ok(want) = std::env::var("PYXIS_TEST_EXPECT_CGROUP") {
        assert_eq!(version, want, "this run expects a cgroup {want} host");
    }
    version
}

/// The directories of a session's sandbox cgroup: one on v2, one per controller on v1
/// (`controller -> dir`), found from a process the session starts with a unique marker.
fn sandbox_cgroup_dirs(sess: &Session<'_>) -> Vec<(String, PathBuf)> {
    let marker = format!("pyxis-cgroup-probe-{}", rand::random::<u64>());
    // `; :` keeps the shell from exec'ing sleep, so the marker stays in a command line.
    sess.ok(&format!(
        "import subprocess\n_probe = subprocess.Popen(['sh', '-c', 'sleep 600; :', '{marker}'])"
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = processes_with_cmdline(&marker).first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "the marked process never showed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroup");
    sess.ok("_probe.kill()\n_probe.wait()");
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            dirs.push((String::new(), PathBuf::from("/sys/fs/cgroup").join(path)));
        } else {
            for c in controllers.split(',') {
                dirs.push((
                    c.to_owned(),
                    PathBuf::from("/sys/fs/cgroup").join(c).join(path),
                ));
            }
        }
    }
    assert!(
        dirs.iter()
            .any(|(_, d)| d.to_string_lossy().contains("/pyxis/")),
        "the sandbox is in a pyxis cgroup: {own}"
    );
    dirs
}

/// The kernel's file `name` of the sandbox cgroup: on v2 from the unified directory, on v1
/// from the hierarchy of `v1_controller`.
fn read_cgroup_file(dirs: &[(String, PathBuf)], v1_controller: &str, name: &str) -> String {
    let want = if host_cgroup_version() == "v2" {
        ""
    } else {
        v1_controller
    };
    let (_, dir) = dirs
        .iter()
        .find(|(c, _)| c == want)
        .unwrap_or_else(|| panic!("no cgroup directory for {want:?} in {dirs:?}"));
    let path = dir.join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The value of `key` in a flat-keyed cgroup file (`memory.events`, `memory.oom_control`).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
}

#[test]
fn the_doctor_reports_the_hosts_cgroup_version() {
    let version = host_cgroup_version();
    let out = Command::new(pyxis_bin())
        .arg("doctor")
        .output()
        .expect("run pyxis doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(" cgroups: "))
        .unwrap_or_else(|| panic!("no cgroups line in the doctor's report:\n{text}"));
    let want = format!("ok   cgroups: {} with ", version.to_uppercase());
    assert!(line.starts_with(&want), "{line:?} (this host: {version})");
    for controller in ["memory", "pids", "cpu"] {
        assert!(
            line.split_whitespace().any(|w| w == controller),
            "{controller} missing: {line:?}"
        );
    }
}

#[test]
fn a_sessions_limits_are_written_to_the_kernels_cgroup_files() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({"limits": {"memory_mb": 200, "pids": 40, "cpus": 0.5}}));
    let dirs = sandbox_cgroup_dirs(&sess);
    let memory = 200 * 1024 * 1024;
    if host_cgroup_version() == "v2" {
        assert_eq!(
            read_cgroup_file(&dirs, "", "memory.max"),
            memory.to_string()
        );
        assert_eq!(read_cgroup_file(&dirs, "", "memory.swap.max"), "0");
        assert_eq!(read_cgroup_file(&dirs, "", "pids.max"), "40");
        assert_eq!(read_cgroup_file(&dirs, "", "cpu.max"), "50000 100000");
        // The kernel enforces them here: the controllers are on for this cgroup.
        let enabled = read_cgroup_file(&dirs, "", "cgroup.controllers");
        for c in ["memory", "pids", "cpu"] {
            assert!(enabled.split(' ').any(|e| e == c), "{c} not in {enabled:?}");
        }
    } else {
        assert_eq!(
            read_cgroup_file(&dirs, "memory", "memory.limit_in_bytes"),
            memory.to_string()
        );
        assert_eq!(read_cgroup_file(&dirs, "pids", "pids.max"), "40");
        assert_eq!(read_cgroup_file(&dirs, "cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(
            read_cgroup_file(&dirs, "cpu", "cpu.cfs_period_us"),
            "100000"
        );
    }
}

#[test]
fn the_memory_limit_is_enforced_by_the_kernel_and_counted_as_an_oom_kill() {
    let s = TestServer::shared();
    let sess = s.session_with(json!({"limits": {"memory_mb": 160}}));
    let dirs = sandbox_cgroup_dirs(&sess);
    let (events, peak) = if host_cgroup_version() == "v2" {
        ("memory.events", "memory.peak")
    } else {
        ("memory.oom_control", "memory.max_usage_in_bytes")
    };
    let kills_before = keyed(&read_cgroup_file(&dirs, "memory", events), "oom_kill");
    let v = sess.exec("blocks = []\nwhile True:\n    blocks.append(bytearray(8 << 20))");
    assert_eq!(v["status"], "killed", "{v:#}");
    assert_eq!(v["error"]["name"], "OutOfMemory", "{v:#}");
    // The kernel's own count, in the same cgroup: the session restarts its interpreter in
    // the sandbox it had.
    let kills = keyed(&read_cgroup_file(&dirs, "memory", events), "oom_kill");
    assert!(kills > kills_before, "oom_kill {kills_before} -> {kills}");
    let peak: u64 = read_cgroup_file(&dirs, "memory", peak)
        .parse()
        .expect("a byte count");
    assert!(peak <= 160 << 20, "peak {peak} over the limit");
    assert!(
        peak > 100 << 20,
        "peak {peak}: the hog never came near the limit"
    );
    assert_eq!(sess.ok("print('alive')"), "alive\n");
}

#[test]
fn the_instance_cgroup_weighs_its_sandboxes_and_the_mount_favors_dynamic_modifications() {
    let s = TestServer::shared();
    let sess = s.session();
    let dirs = sandbox_cgroup_dirs(&sess);
    // The server's own cgroup (`pyxis/<instance>`) is the parent of each sandbox cgroup; the
    // shared server runs with the default PYXIS_SANDBOX_CPU_WEIGHT of 800.
    let instance = |controller: &str| -> PathBuf {
        let (_, dir) = dirs
            .iter()
            .find(|(c, _)| c == controller)
            .unwrap_or_else(|| panic!("no {controller:?} directory in {dirs:?}"));
        dir.parent().expect("the instance cgroup").to_path_buf()
    };
    let read = |path: PathBuf| -> String {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    };
    if host_cgroup_version() == "v2" {
        assert_eq!(read(instance("").join("cpu.weight")), "800");
        // Joining a cgroup without an RCU grace period: the server sets the option at start.
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup"))
            .expect("the cgroup2 mount");
        let options = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            options.split(',').any(|o| o == "favordynmods"),
            "favordynmods missing: {line}"
        );
    } else {
        // cpu.shares is the v1 form of the weight: 800 * 1024 / 100.
        assert_eq!(read(instance("cpu").join("cpu.shares")), "8192");
    }
}
