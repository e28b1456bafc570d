//! Resource exhaustion: every attack is bounded by a limit of its own sandbox, reported
//! clearly, and leaves the server and the neighbours untouched.

use std::time::{Duration, Instant};

use serde_json::json;

use pyxis_tests::TestServer;

use crate::util::{self, attack, json_of, server, session_with_limits};

#[test]
fn fork_bomb_hits_the_pids_limit() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            // The bomb's four seconds, stretched on a slower host (PYXIS_TEST_TIME_SCALE):
            // under emulation a Python fork takes long enough that four seconds never
            // reach the limit.
            &format!(
                "SCALE = {}\n{}",
                pyxis_tests::time_scale(),
                r#"
import os, time, errno, json
end = time.time() + 4 * SCALE
eagain = 0
others = 0
while time.time() < end:
    try:
        if os.fork() == 0:
            # Every child bombs too, until the end, then leaves.
            while time.time() < end:
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.005)
            os._exit(0)
    except OSError as e:
        if e.errno == errno.EAGAIN:
            eagain += 1
        else:
            others += 1
        time.sleep(0.005)
procs = len([p for p in os.listdir('/proc') if p.isdigit()])
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
print(json.dumps({"eagain": eagain, "others": others, "procs": procs}))
"#
            ),
        )
    });
    assert!(
        out["eagain"].as_u64().unwrap() > 0,
        "fork never refused: {out}"
    );
    assert_eq!(out["others"], 0, "{out}");
    assert!(out["procs"].as_u64().unwrap() <= 64 + 2, "{out}");
}

#[test]
fn thread_bomb_hits_the_pids_limit() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import threading, time, json
n, err = 0, None
stop = threading.Event()
try:
    while n < 100000:
        threading.Thread(target=stop.wait, args=(10,), daemon=True).start()
        n += 1
except RuntimeError as e:
    err = str(e)
stop.set()
print(json.dumps({"n": n, "err": err}))
"#,
        )
    });
    assert!(out["err"].is_string(), "threads never refused: {out}");
    assert!(out["n"].as_u64().unwrap() < 64, "{out}");
}

/// The cell must end killed with `OutOfMemory` (or refused with a `MemoryError`).
fn assert_oom(r: &serde_json::Value) {
    let name = r["error"]["name"].as_str().unwrap_or_default();
    match name {
        "OutOfMemory" => {
            assert_eq!(r["status"], "killed", "{r:#}");
            assert_eq!(r["state_lost"], true, "{r:#}");
            assert!(
                r["error"]["value"].as_str().unwrap().contains("memory"),
                "{r:#}"
            );
        }
        "MemoryError" => assert_eq!(r["status"], "error", "{r:#}"),
        _ => panic!("not an out-of-memory outcome: {r:#}"),
    }
}

#[test]
fn python_memory_bomb_is_killed_as_out_of_memory() {
    let s = server();
    let v = session_with_limits(s, json!({"memory_mb": 192}));
    v.ok("x = 1");
    let r = attack(s, &v, |v| {
        v.exec("a = []\nwhile True:\n    a.append(b'x' * (1 << 24) + bytes(1))")
    });
    assert_eq!(r["error"]["name"], "OutOfMemory", "{r:#}");
    assert_oom(&r);
    // The state is gone, as reported.
    assert_eq!(v.exec("x")["error"]["name"], "NameError");
}

#[test]
fn numpy_memory_bomb_is_killed_as_out_of_memory() {
    let s = server();
    let v = session_with_limits(s, json!({"memory_mb": 192}));
    let r = attack(s, &v, |v| {
        v.exec("import numpy as np\na = np.ones((1 << 31,), dtype=np.uint8)\nprint(a.sum())")
    });
    assert_oom(&r);
}

#[test]
fn a_child_memory_bomb_kills_only_the_child() {
    let s = server();
    let v = session_with_limits(s, json!({"memory_mb": 256}));
    v.ok("x = 41");
    let r = attack(s, &v, |v| {
        v.exec("import subprocess, sys\np = subprocess.run([sys.executable, '-c', 'a = []\\nwhile True: a.append(b\"x\" * (1 << 24) + bytes(1))'])\nprint(p.returncode)\nx += 1\nprint(x)")
    });
    // The OOM killer picks the biggest process: the child. The kernel and its state survive
    // (or, if the kernel was picked, it is reported as such).
    if r["status"] == "ok" {
        assert_eq!(r["stdout"], "-9\n42\n", "{r:#}");
    } else {
        assert_oom(&r);
    }
}

/// Fills a tmpfs directory with 1 MiB files until the kernel refuses; prints what happened.
fn fill_code(dir: &str, chunk: usize) -> String {
    format!(
        r#"
import os, json, errno
n, err = 0, None
try:
    os.makedirs('{dir}/fill', exist_ok=True)
    with open('{dir}/fill/big', 'wb') as f:
        while n < 100000:
            f.write(b'x' * {chunk})
            f.flush()
            n += 1
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({{"mb": n * {chunk} // (1 << 20), "err": err}}))
"#
    )
}

/// Fill `dir` in a fresh session: the writes must stop with ENOSPC (or EFBIG)
/// within its 64 MiB. Returns the session for further checks.
fn filling_stops_within_its_size(dir: &str) -> pyxis_tests::Session<'static> {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| json_of(v, &fill_code(dir, 1 << 20)));
    assert!(
        out["err"] == "ENOSPC" || out["err"] == "EFBIG",
        "{dir}: {out}"
    );
    assert!(out["mb"].as_u64().unwrap() <= 64, "{dir}: {out}");
    v
}

#[test]
fn filling_tmp_stops_at_its_size() {
    filling_stops_within_its_size("/tmp");
}

#[test]
fn filling_dev_shm_stops_at_its_size() {
    filling_stops_within_its_size("/dev/shm");
}

#[test]
fn filling_the_workspace_stops_at_the_quota() {
    let v = filling_stops_within_its_size("/workspace");
    // The session can still free space and use its workspace.
    v.ok("import os\nos.remove('/workspace/fill/big')\nopen('/workspace/a', 'w').write('a')");
}

/// Files in /dev/shm are memory: with 60 MiB of them, a 96 MiB session cannot allocate 64
/// MiB more (if tmpfs escaped the accounting, it could).
#[test]
fn shm_files_count_as_memory() {
    let s = server();
    let v = session_with_limits(s, json!({"memory_mb": 96}));
    let r = attack(s, &v, |v| {
        v.ok("with open('/dev/shm/blob', 'wb') as f:\n    for _ in range(60):\n        f.write(b's' * (1 << 20))");
        v.exec("a = []\nfor _ in range(64):\n    a.append(b'x' * (1 << 20) + bytes(1))\nprint('allocated')")
    });
    assert_oom(&r);
}

/// tmpfs pages count as the sandbox's memory: filling the workspace, /tmp and /dev/shm of
/// a session whose memory limit is below their sum must not brick the session.
#[test]
fn tmpfs_filled_beyond_the_memory_limit_does_not_brick_the_session() {
    let s = server();
    let v = session_with_limits(s, json!({"memory_mb": 128}));
    let r = attack(s, &v, |v| {
        let mut last = json!(null);
        for dir in ["/workspace", "/tmp", "/dev/shm"] {
            last = v.exec(&fill_code(dir, 1 << 20));
            if last["status"] != "ok" {
                break;
            }
        }
        last
    });
    assert!(
        r["status"] == "ok" || r["error"]["name"] == "OutOfMemory",
        "{r:#}"
    );
    // The workspace's pages still count; removing the files gives the memory back.
    v.exec("import shutil\nshutil.rmtree('/workspace/fill')");
    assert_eq!(
        v.ok("x = b'a' * (32 << 20)\nprint(len(x))"),
        format!("{}\n", 32 << 20)
    );
}

#[test]
fn inode_exhaustion_stops_at_the_workspace_limit() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import os, json, errno
n, err = 0, None
os.makedirs('/workspace/inodes', exist_ok=True)
try:
    while n < 2000000:
        os.close(os.open('/workspace/inodes/%d' % n, os.O_CREAT | os.O_WRONLY, 0o600))
        n += 1
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({"n": n, "err": err}))
"#,
        )
    });
    assert_eq!(out["err"], "ENOSPC", "{out}");
    assert!(out["n"].as_u64().unwrap() < 2_000_000, "{out}");
}

#[test]
fn open_file_exhaustion_hits_the_rlimit() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import os, json, errno
fds, err = [], None
try:
    while len(fds) < 1000000:
        fds.append(os.open('/dev/null', os.O_RDONLY))
except OSError as e:
    err = errno.errorcode.get(e.errno, str(e.errno))
keep = fds  # left open: the kernel must survive it
print(json.dumps({"n": len(fds), "err": err}))
"#,
        )
    });
    assert_eq!(out["err"], "EMFILE", "{out}");
    assert!(out["n"].as_u64().unwrap() <= 1024, "{out}");
}

/// Floods `code` and checks the reply is capped and the server's memory stayed flat.
fn flood(code: &str) -> serde_json::Value {
    let s = server();
    let v = s.session();
    let before = util::rss_bytes(s.pid());
    let r = attack(s, &v, |v| {
        v.exec_with(json!({"code": code, "timeout_s": 120}))
    });
    let after = util::rss_bytes(s.pid());
    assert_eq!(r["truncated"], true, "not flagged as truncated");
    let kept = r["stdout"].as_str().unwrap_or_default().len()
        + r["stderr"].as_str().unwrap_or_default().len()
        + r["results"].to_string().len();
    assert!(
        kept as u64 <= 2 * util::OUTPUT_CAP + 4096,
        "kept {kept} bytes of output"
    );
    assert!(
        after < before + (128 << 20),
        "server RSS grew from {before} to {after}"
    );
    r
}

#[test]
fn stdout_flood_of_gigabytes_is_capped() {
    let r = flood(
        "import os\nb = b'x' * (1 << 20)\nfor _ in range(2048):\n    os.write(1, b)\nprint('done')",
    );
    assert_eq!(r["status"], "ok", "{r:#}");
}

#[test]
fn python_print_flood_is_capped() {
    let r = flood("import sys\ns = 'y' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(s)\nprint('done')");
    assert_eq!(r["status"], "ok", "{r:#}");
}

#[test]
fn stderr_flood_of_gigabytes_is_capped() {
    let r = flood("import os\nb = b'e' * (1 << 20)\nfor _ in range(2048):\n    os.write(2, b)");
    assert_eq!(r["status"], "ok", "{r:#}");
}

#[test]
fn display_image_flood_is_capped() {
    let r = flood(
        r#"
import os, base64
from IPython.display import display, Image
png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')
big = png + os.urandom(256 << 10)
for _ in range(4000):
    display(Image(data=big, format='png'))
"#,
    );
    assert_eq!(r["status"], "ok", "{r:#}");
}

/// Run `code` (which never ends by itself) under a 2 s limit: it must end as
/// `timeout` with the interpreter replaced, well before the test's own bound.
fn ends_at_the_timeout_with_state_lost(v: &pyxis_tests::Session<'_>, code: &str) {
    let s = server();
    let r = attack(s, v, |v| {
        let t = Instant::now();
        let r = v.exec_with(json!({ "code": code, "timeout_s": 2 }));
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "took {:?}",
            t.elapsed()
        );
        r
    });
    assert_eq!(r["status"], "timeout", "{r:#}");
    assert_eq!(r["state_lost"], true, "{r:#}");
}

#[test]
fn cell_ignoring_sigint_is_killed_and_state_lost() {
    let v = server().session();
    v.ok("x = 1");
    ends_at_the_timeout_with_state_lost(
        &v,
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
    );
    assert_eq!(v.exec("x")["error"]["name"], "NameError");
}

#[test]
fn sigstop_to_itself_still_ends_at_the_timeout() {
    let v = server().session();
    ends_at_the_timeout_with_state_lost(
        &v,
        "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\nprint('resumed')",
    );
}

#[test]
fn sigstop_to_the_sandbox_init_changes_nothing() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        v.ok("import os, signal, time\nfor sig in (signal.SIGSTOP, signal.SIGKILL):\n    os.kill(1, sig)\ntime.sleep(0.3)\nprint(open('/proc/1/stat').read().split(')')[1].split()[0])")
    });
    // Signals without a handler do not reach the init of a pid namespace from inside it.
    assert_eq!(out, "S\n");
}

#[test]
fn background_daemons_are_gone_after_release() {
    let s = server();
    let marker = format!("pyxis-daemon-{}", rand_marker());
    let uid;
    {
        let v = s.session();
        let out = attack(s, &v, |v| {
            v.ok(&format!(
                r#"
import os, subprocess, sys, time
# setsid'd child
subprocess.Popen(['sleep', '7777'], start_new_session=True)
# double fork + setsid, a Python daemon with the marker in its argv
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time, signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\ntime.sleep(1000)', '{marker}'])
    os._exit(0)
os.wait()
# a shell nohup background job
subprocess.run(['sh', '-c', 'nohup sleep 7778 >/dev/null 2>&1 &'])
time.sleep(0.5)
print(os.getuid())
"#
            ))
        });
        uid = out.trim().parse::<u32>().expect("uid");
        assert!((s.uid_base..s.uid_base + 1000).contains(&uid), "uid {uid}");
        let alive = util::host_pids_with_uid_in(uid, uid + 1);
        assert!(alive.len() >= 4, "daemons not seen on the host: {alive:?}");
        assert!(has_marker(&marker), "the marked daemon runs");
    }
    // The session is released here (drop).
    let deadline = Instant::now() + Duration::from_secs(15);
    while has_marker(&marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!has_marker(&marker), "the daemon survived the release");
    let left: Vec<_> = util::host_pids_with_uid_in(uid, uid + 1)
        .into_iter()
        .filter(|(pid, _)| cmdline(*pid).contains("sleep 777"))
        .collect();
    assert!(left.is_empty(), "processes left after release: {left:?}");
}

fn rand_marker() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn has_marker(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .any(|pid| cmdline(pid).contains(marker))
}

/// Daemons of every kind, left behind by a cell.
const DAEMONS: &str = r#"
import os, subprocess, sys
subprocess.Popen(['sleep', '7777'], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv('/bin/sh', ['sh', '-c', 'trap "" TERM HUP INT; while :; do sleep 1; done'])
    os._exit(0)
os.wait()
subprocess.run(['sh', '-c', 'nohup sleep 7778 >/dev/null 2>&1 &'])
print('spawned')
"#;

#[test]
fn no_process_of_any_sandbox_uid_survives_release_and_shutdown() {
    let s = TestServer::start(&[("PYXIS_POOL_MIN_IDLE", "0")]);
    let range = (s.uid_base, s.uid_base + 1000);
    {
        let a = s.session();
        let b = s.session();
        assert_eq!(a.ok(DAEMONS), "spawned\n");
        assert_eq!(b.ok(DAEMONS), "spawned\n");
        let running = util::host_pids_with_uid_in(range.0, range.1);
        assert!(running.len() >= 8, "daemons not seen: {running:?}");
    }
    let left = util::wait_no_process_with_uid_in(range.0, range.1, Duration::from_secs(15));
    assert!(left.is_empty(), "left after release: {left:?}");
    // Daemons of a session still alive at shutdown go with the server.
    let c = s.session();
    assert_eq!(c.ok(DAEMONS), "spawned\n");
    std::mem::forget(c);
    drop(s);
    let left = util::wait_no_process_with_uid_in(range.0, range.1, Duration::from_secs(15));
    assert!(left.is_empty(), "left after shutdown: {left:?}");
}

#[test]
fn no_daemon_survives_a_server_killed_with_sigkill() {
    let mut s = TestServer::start(&[("PYXIS_POOL_MIN_IDLE", "1")]);
    let range = (s.uid_base, s.uid_base + 1000);
    let c = s.session();
    assert_eq!(c.ok(DAEMONS), "spawned\n");
    std::mem::forget(c);
    assert!(!util::host_pids_with_uid_in(range.0, range.1).is_empty());
    s.kill9();
    let left = util::wait_no_process_with_uid_in(range.0, range.1, Duration::from_secs(15));
    assert!(left.is_empty(), "left after SIGKILL: {left:?}");
    // The next start on the same data directory removes the cgroups the killed one left.
    drop(TestServer::start_in(
        s.data_dir.clone(),
        &[("PYXIS_POOL_MIN_IDLE", "0")],
    ));
}

#[test]
fn realtime_scheduling_and_priorities_cannot_be_raised() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            &format!(
                r#"{prelude}
def attempt(f):
    try:
        f()
        return 'allowed'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    except ValueError as e:
        return str(e)
res = {{
  "fifo": attempt(lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))),
  "rr": attempt(lambda: os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))),
  "nice": attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, -10)),
  "ioprio_rt": sc(251, 1, 0, (1 << 13) | 0),
  "mlockall": sc(151, 3),
  "rlimit_up": attempt(lambda: __import__('resource').setrlimit(__import__('resource').RLIMIT_NPROC, (1 << 20, 1 << 20))),
}}
print(json.dumps(res))
"#,
                prelude = util::SYSCALL_PRELUDE
            ),
        )
    });
    for k in ["fifo", "rr", "nice", "rlimit_up"] {
        assert_ne!(out[k], "allowed", "{k}: {out}");
    }
    assert_eq!(out["ioprio_rt"][0], -1, "{out}");
    // mlockall is bounded by RLIMIT_MEMLOCK (and memory.limit): either refused or harmless.
    assert!(out["mlockall"][0] == -1 || out["mlockall"][0] == 0, "{out}");
}

#[test]
fn flooding_one_session_with_cells_is_bounded_by_its_queue() {
    let s = server();
    let v = s.session();
    let statuses = attack(s, &v, |v| {
        let path = format!("/v1/sessions/{}/execute", v.id);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..24)
                .map(|_| {
                    let path = path.clone();
                    scope.spawn(move || {
                        s.post(&path, &json!({"code": "import time\ntime.sleep(0.2)"}))
                            .status()
                            .as_u16()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<u16>>()
        })
    });
    assert!(
        statuses.iter().all(|c| *c == 200 || *c == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&409), "no cell was refused: {statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[test]
fn creating_sessions_until_refused() {
    let s = TestServer::start(&[("PYXIS_POOL_MIN_IDLE", "0"), ("PYXIS_MAX_SESSIONS", "3")]);
    let mut live = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        let r = s.post("/v1/sessions", &json!({}));
        if r.status() == 201 {
            let v: serde_json::Value = r.json().unwrap();
            live.push(v["id"].as_str().unwrap().to_string());
        } else {
            assert_eq!(r.status(), 503, "unexpected status");
            assert!(
                r.headers().contains_key("retry-after"),
                "503 without Retry-After"
            );
            refused = Some(r.status());
            break;
        }
    }
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(refused.is_some());
    util::healthz_fast(&s);
    for id in &live {
        assert_eq!(s.delete(&format!("/v1/sessions/{id}")).status(), 204);
    }
    assert_eq!(s.session().ok("print(1)"), "1\n");
}
