//! Start, stop, and a hard kill: nothing is left behind.

use std::path::Path;
use std::time::{Duration, Instant};

use pyxis_tests::{processes_with_uid, TestServer};

/// Live processes (zombies, which hold nothing but a pid until their parent
/// reaps them, excepted) whose uid is in the server's sandbox range.
fn sandbox_processes(uid_base: u32) -> Vec<i32> {
    processes_with_uid(|uid| (uid_base..uid_base + 1000).contains(&uid), false)
}

/// Every process of one uid, zombies included.
fn processes_of_uid(uid: u32) -> Vec<i32> {
    processes_with_uid(|u| u == uid, true)
}

/// The server instance's cgroup directories (`…/pyxis/<instance>` in every hierarchy),
/// found from the cgroup of one of its sandbox processes.
fn instance_cgroup_dirs(sandbox_pid: i32) -> Vec<std::path::PathBuf> {
    let own = std::fs::read_to_string(format!("/proc/{sandbox_pid}/cgroup")).unwrap();
    let instance = own
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(|path| path.strip_prefix("/pyxis/"))
        .and_then(|rest| rest.split('/').next())
        .expect("the sandbox is in a pyxis cgroup")
        .to_string();
    let mut dirs = vec![Path::new("/sys/fs/cgroup/pyxis").join(&instance)];
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        dirs.push(hierarchy.path().join("pyxis").join(&instance));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

fn workspace_mounts(data_dir: &Path) -> usize {
    let prefix = data_dir.join("workspaces").display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&prefix))
        .count()
}

#[test]
fn a_server_killed_with_sigkill_leaves_nothing_and_restarts_clean() {
    let dir = tempfile::Builder::new()
        .prefix("pyxis-kill9-")
        .tempdir()
        .unwrap();
    let mut s = TestServer::start_in(dir.path().to_path_buf(), &[("PYXIS_POOL_MIN_IDLE", "1")]);
    let uid_base = s.uid_base;
    {
        let a = s.session();
        let b = s.session();
        a.ok("import subprocess\nsubprocess.Popen(['sleep', '1000'])\nsubprocess.Popen(['sh', '-c', 'setsid sleep 1001 &'])");
        b.ok("x = 1");
        assert!(
            sandbox_processes(uid_base).len() >= 4,
            "sandboxes are running"
        );
        assert!(workspace_mounts(&s.data_dir) >= 2);
        std::mem::forget(a);
        std::mem::forget(b);
    }
    s.kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sandbox_processes(uid_base).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sandbox_processes(uid_base),
        Vec::<i32>::new(),
        "no sandbox process outlives the server"
    );
    // The next start on the same data directory cleans up the rest.
    let s2 = TestServer::start_in(dir.path().to_path_buf(), &[("PYXIS_POOL_MIN_IDLE", "0")]);
    assert_eq!(
        workspace_mounts(&s2.data_dir),
        0,
        "leftover workspaces unmounted"
    );
    let left = std::fs::read_dir(s2.data_dir.join("workspaces"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "leftover workspaces removed");
    let sess = s2.session();
    assert_eq!(sess.ok("print('clean')"), "clean\n");
}

#[test]
fn the_instance_cgroup_gets_the_configured_cpu_weight() {
    let s = TestServer::start(&[("PYXIS_SANDBOX_CPU_WEIGHT", "300")]);
    let sess = s.session();
    sess.ok("x = 1");
    let sandbox = *sandbox_processes(s.uid_base)
        .first()
        .expect("a sandbox process");
    // Only the instance's own cgroup: `pyxis/` above it is shared with other servers.
    let mut seen = Vec::new();
    for dir in instance_cgroup_dirs(sandbox) {
        for (file, want) in [("cpu.weight", "300"), ("cpu.shares", "3072")] {
            if let Ok(got) = std::fs::read_to_string(dir.join(file)) {
                assert_eq!(got.trim(), want, "{}", dir.join(file).display());
                seen.push(file);
            }
        }
    }
    assert!(
        !seen.is_empty(),
        "no cpu weight file in the instance cgroups"
    );
}

#[test]
fn graceful_shutdown_releases_every_sandbox() {
    let dir = tempfile::Builder::new()
        .prefix("pyxis-term-")
        .tempdir()
        .unwrap();
    let s = TestServer::start_in(dir.path().to_path_buf(), &[("PYXIS_POOL_MIN_IDLE", "1")]);
    let uid_base = s.uid_base;
    let data_dir = s.data_dir.clone();
    {
        let a = s.session();
        a.ok("import subprocess\nsubprocess.Popen(['sleep', '1000'])");
        std::mem::forget(a);
    }
    let sandbox = *sandbox_processes(uid_base)
        .first()
        .expect("a sandbox process");
    let cgroups = instance_cgroup_dirs(sandbox);
    assert!(!cgroups.is_empty(), "the instance has cgroups");
    drop(s); // SIGTERM and wait
    assert_eq!(sandbox_processes(uid_base), Vec::<i32>::new());
    assert_eq!(workspace_mounts(&data_dir), 0);
    let left: Vec<_> = cgroups.iter().filter(|d| d.exists()).collect();
    assert!(
        left.is_empty(),
        "instance cgroups left after shutdown: {left:?}"
    );
}

#[test]
fn idle_sessions_are_released_after_the_idle_timeout() {
    let s = TestServer::start(&[("PYXIS_IDLE_TIMEOUT_S", "1"), ("PYXIS_POOL_MIN_IDLE", "0")]);
    let busy = s.session();
    let idle = s.session();
    idle.ok("x = 1");
    // `busy` keeps running cells (each shorter than the timeout); `idle` does nothing.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        busy.ok("import time; time.sleep(0.3)");
    }
    assert_eq!(
        s.get(&format!("/v1/sessions/{}", idle.id)).status(),
        404,
        "idle session released"
    );
    assert_eq!(
        s.get(&format!("/v1/sessions/{}", busy.id)).status(),
        200,
        "active session kept"
    );
}

#[test]
fn a_released_session_leaves_no_process_not_even_a_zombie() {
    // A server of its own: on a shared one another test could be given the
    // released uid at once.
    let s = TestServer::start(&[("PYXIS_POOL_MIN_IDLE", "0")]);
    let sess = s.session();
    let uid: u32 = sess
        .ok("import os, subprocess\nsubprocess.Popen(['sh', '-c', 'setsid sleep 900 &'])\nprint(os.getuid())")
        .trim()
        .parse()
        .unwrap();
    assert!(!processes_of_uid(uid).is_empty());
    let r = s.delete(&format!("/v1/sessions/{}", sess.id));
    assert_eq!(r.status(), 204);
    std::mem::forget(sess);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of_uid(uid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<String> = processes_of_uid(uid)
        .into_iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let pick = |key: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(key))
                    .unwrap_or_default()
                    .to_string()
            };
            format!(
                "{pid} {} {} {}",
                pick("Name:"),
                pick("State:"),
                pick("PPid:")
            )
        })
        .collect();
    assert!(left.is_empty(), "uid {uid} still has processes: {left:?}");
}

/// A started server has set `favordynmods` on the host's cgroup2 mount (the default of
/// `PYXIS_CGROUP_FAVORDYNMODS`), keeping the mount's other options.
#[test]
fn the_server_sets_favordynmods_on_the_cgroup2_mount() {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let cgroup2 = |info: &str| {
        info.lines()
            .find(|l| {
                l.split(" - ")
                    .nth(1)
                    .is_some_and(|t| t.starts_with("cgroup2 "))
            })
            .map(str::to_owned)
    };
    let Some(before) = cgroup2(&info) else {
        eprintln!("this host has no cgroup2 mount: favordynmods has nowhere to go");
        return;
    };
    let s = TestServer::start(&[("PYXIS_POOL_MIN_IDLE", "0")]);
    let _session = s.session();
    let after = cgroup2(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"))
        .expect("the cgroup2 mount is still there");
    let options = |line: &str| -> Vec<String> {
        line.rsplit(' ')
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    assert!(
        options(&after).iter().any(|o| o == "favordynmods"),
        "{after}"
    );
    for o in options(&before) {
        assert!(
            options(&after).contains(&o),
            "option {o} lost: {before} -> {after}"
        );
    }
}

/// A sandbox library whose `pyxis-sandbox-exec` is not beside it (a partial copy of a
/// build) stops the server at start, naming the program: it used to start, and then every
/// context and pooled JavaScript session failed with a bare 500 (ENOENT).
#[test]
fn a_sandbox_library_without_its_exec_program_stops_the_server_at_start() {
    let build = pyxis_tests::pyxis_bin();
    let build = build.parent().expect("the build's directory");
    let lib_dir = tempfile::tempdir().expect("tempdir");
    for name in ["libpyxis_sandbox.so", "pyxis-sandbox-init"] {
        std::fs::copy(build.join(name), lib_dir.path().join(name)).expect("copy the build");
    }
    let data = tempfile::tempdir().expect("tempdir");
    let lib = lib_dir.path().join("libpyxis_sandbox.so");
    let Some((code, err)) = pyxis_tests::serve_until_it_stops(&[
        ("PYXIS_DATA_DIR", data.path().as_os_str()),
        ("PYXIS_SANDBOX_LIB", lib.as_os_str()),
    ]) else {
        panic!("the server started without pyxis-sandbox-exec");
    };
    assert!(!code.success(), "{err}");
    assert!(
        err.contains("pyxis-sandbox-exec") && err.contains("not found"),
        "{err}"
    );
}
