//! Shared machinery of the attack suite: the server the attacks run against, a neighbouring
//! session with a steady workload, and the checks every attack ends with.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyxis_tests::{procfs, scaled, Session, TestServer};
use serde_json::{json, Value};

/// Latency a neighbour's cell should stay under while an attack runs next door. Generous:
/// the machine has two cores and other suites run at the same time. Stretched by the host's
/// time scale (`PYXIS_TEST_TIME_SCALE`, as every bound below).
pub fn neighbour_max_latency() -> Duration {
    scaled(Duration::from_secs(2))
}

/// How many of a neighbour's `cells` may take longer than [`neighbour_max_latency`] (never
/// longer than [`NEIGHBOUR_STALL_FACTOR`] times it): one, or a tenth of them. An attack that
/// starves its neighbours slows every cell, not one; a single slow cell is the shared
/// machine (a link of the compiler next door, the other test binary's burst), and failing
/// the attack for it made the suite flaky (2.16 s once, in a CI run of a 2-core host).
pub fn neighbour_slow_cells_allowed(cells: u64) -> u64 {
    (cells / 10).max(1)
}

/// No neighbour's cell may take longer than this many times [`neighbour_max_latency`].
pub const NEIGHBOUR_STALL_FACTOR: u32 = 3;

/// The output cap of [`server`].
pub const OUTPUT_CAP: u64 = 1 << 20;

/// The server most attacks run against: small limits so that exhaustion is quick.
pub fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::start(&[
            ("PYXIS_POOL_MIN_IDLE", "2"),
            ("PYXIS_MEMORY_MB", "384"),
            ("PYXIS_PIDS", "64"),
            ("PYXIS_DISK_MB", "64"),
            ("PYXIS_TMP_MB", "64"),
            ("PYXIS_MAX_OUTPUT_BYTES", &OUTPUT_CAP.to_string()),
            ("PYXIS_EXEC_TIMEOUT_S", "30"),
            ("PYXIS_INTERRUPT_GRACE_S", "2"),
        ])
    })
}

/// What the neighbour saw while the attack ran.
#[derive(Debug, Default)]
struct NeighbourReport {
    cells: u64,
    /// Cells slower than [`neighbour_max_latency`].
    slow: u64,
    worst: Duration,
    errors: Vec<String>,
}

/// Runs `attack` (which gets the attacked session) while a neighbouring session on the same
/// server runs `c += 1; print(c)` cells in a loop, then checks that:
/// - `/healthz` answers within 1 s;
/// - the neighbour kept its state, every reply was right, its worst latency stayed under
///   [`neighbour_max_latency`];
/// - the attacked session still works, or answers once with `state_lost: true` and then works.
///
/// Returns what `attack` returned.
pub fn attack<R>(
    s: &TestServer,
    victim: &Session<'_>,
    attack: impl FnOnce(&Session<'_>) -> R,
) -> R {
    let neighbour = s.session();
    assert_eq!(neighbour.ok("c = 0\nprint(c)"), "0\n");
    let stop = AtomicBool::new(false);
    let running = AtomicBool::new(false);
    let (result, report) = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let mut rep = NeighbourReport::default();
            let mut expected = 0u64;
            // The first cell runs whatever `stop` says, so the loop is under way when the
            // attack starts.
            while expected == 0 || !stop.load(Ordering::Acquire) {
                expected += 1;
                let t = Instant::now();
                let v = neighbour.exec("c += 1\nprint(c)");
                let took = t.elapsed();
                rep.cells += 1;
                rep.worst = rep.worst.max(took);
                if took >= neighbour_max_latency() {
                    rep.slow += 1;
                }
                let want = format!("{expected}\n");
                if v["status"] != "ok" || v["stdout"] != want.as_str() || v["state_lost"] == true {
                    rep.errors.push(format!("cell {expected}: {v}"));
                    break;
                }
                running.store(true, Ordering::Release);
                std::thread::sleep(Duration::from_millis(20));
            }
            rep
        });
        let wait_start = Instant::now();
        while !running.load(Ordering::Acquire)
            && !worker.is_finished()
            && wait_start.elapsed() < scaled(Duration::from_secs(30))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A failing attack must still stop the neighbour, or the scope never ends.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| attack(victim)));
        stop.store(true, Ordering::Release);
        let report = worker.join().expect("neighbour thread");
        match result {
            Ok(result) => (result, report),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    eprintln!(
        "neighbour: {} cells ({} slow), worst latency {:?}",
        report.cells, report.slow, report.worst
    );
    healthz_fast(s);
    assert!(
        report.errors.is_empty(),
        "neighbour broken: {:?}",
        report.errors
    );
    assert!(report.cells > 0, "neighbour ran no cell");
    assert!(
        report.slow <= neighbour_slow_cells_allowed(report.cells)
            && report.worst < neighbour_max_latency() * NEIGHBOUR_STALL_FACTOR,
        "neighbour starved: {} of {} cells over {:?}, the worst {:?}",
        report.slow,
        report.cells,
        neighbour_max_latency(),
        report.worst
    );
    // One more cell proves the state survived to the end.
    let last = neighbour.ok("print(c)");
    assert_eq!(last, format!("{}\n", report.cells), "neighbour state");
    victim_recovers(victim);
    result
}

/// `/healthz` answers 200 within 1 s (scaled), at one of three tries: a server the attack
/// wedged misses all three; a busy shared host can delay one answer past the second (seen
/// once with the two test binaries side by side), as with the neighbour's cells.
pub fn healthz_fast(s: &TestServer) {
    let mut misses = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r = s
            .anon(reqwest::Method::GET, "/healthz")
            .timeout(scaled(Duration::from_secs(1)))
            .send();
        match r {
            Ok(r) if r.status().is_success() && t.elapsed() < scaled(Duration::from_secs(1)) => {
                return;
            }
            Ok(r) => misses.push(format!("{} after {:?}", r.status(), t.elapsed())),
            Err(e) => misses.push(format!("{e} after {:?}", t.elapsed())),
        }
    }
    panic!("healthz did not answer 200 within 1 s in three tries: {misses:?}");
}

/// The attacked session works: `print(1)` answers, possibly once with `state_lost: true`.
pub fn victim_recovers(victim: &Session<'_>) {
    let v = victim.exec("print(1)");
    if v["status"] == "ok" && v["stdout"] == "1\n" {
        return;
    }
    assert_eq!(v["state_lost"], true, "attacked session broken: {v:#}");
    assert_eq!(
        victim.ok("print(1)"),
        "1\n",
        "attacked session after state loss"
    );
}

/// Runs `code` in the victim expecting `status: ok`, parses the last stdout line as JSON.
pub fn json_of(sess: &Session<'_>, code: &str) -> Value {
    let out = sess.ok(code);
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not json ({e}): {out}"))
}

/// Host pids whose real or effective uid is in `[lo, hi)`.
pub fn host_pids_with_uid_in(lo: u32, hi: u32) -> BTreeSet<(i32, u32)> {
    let mut found = BTreeSet::new();
    for pid in procfs::pids() {
        let Some((real, effective)) = procfs::status(pid).and_then(|st| procfs::uids_in(&st))
        else {
            continue;
        };
        for uid in [real, effective] {
            if (lo..hi).contains(&uid) {
                found.insert((pid, uid));
            }
        }
    }
    found
}

/// Waits up to `limit` for a host process with uid `uid` whose command line starts with
/// `cmdline`, and returns its pid. It polls because a process that has just been spawned
/// may not show its command line yet: a `vfork` parent (Python's `subprocess`) resumes as
/// soon as the child's `execve` has replaced the memory map, before the kernel has set the
/// new argument area. Panics with every process of that uid when none turns up.
pub fn wait_host_process(uid: u32, cmdline: &[u8], limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        let seen: Vec<(i32, Vec<u8>)> = host_pids_with_uid_in(uid, uid + 1)
            .into_iter()
            .map(|(pid, _)| {
                let c = procfs::cmdline(pid).unwrap_or_default();
                (pid, c)
            })
            .collect();
        if let Some((pid, _)) = seen.iter().find(|(_, c)| c.starts_with(cmdline)) {
            return *pid;
        }
        if Instant::now() >= deadline {
            let seen: Vec<(i32, String)> = seen
                .into_iter()
                .map(|(p, c)| (p, String::from_utf8_lossy(&c).replace('\0', " ")))
                .collect();
            panic!(
                "no process of uid {uid} runs {:?} after {limit:?}; its processes: {seen:?}",
                String::from_utf8_lossy(cmdline)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for no host process to run with a uid in `[lo, hi)`; returns what is
/// left.
pub fn wait_no_process_with_uid_in(lo: u32, hi: u32, limit: Duration) -> BTreeSet<(i32, u32)> {
    let deadline = Instant::now() + limit;
    loop {
        let left = host_pids_with_uid_in(lo, hi);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Resident set size of a host process, in bytes.
pub fn rss_bytes(pid: i32) -> u64 {
    procfs::vm_rss_kib(pid).map_or(0, |kb| kb * 1024)
}

/// Python prelude: `sc(nr, *args)` calls a raw syscall through ctypes and returns
/// `[result, errno name or None]`.
pub const SYSCALL_PRELUDE: &str = r#"
import ctypes, errno, json, os
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    r = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    e = ctypes.get_errno()
    return [r, errno.errorcode.get(e, str(e)) if r == -1 else None]
"#;

/// A session with `limits`.
pub fn session_with_limits<'a>(s: &'a TestServer, limits: Value) -> Session<'a> {
    s.session_with(json!({ "limits": limits }))
}
