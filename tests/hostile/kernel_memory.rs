//! Issue 14, point 2: kernel memory a sandbox can pin outside its memory limit.
//!
//! Each attack starts helper processes inside a session that grab one kind of kernel memory
//! and hold it. Loopback TCP and UDP buffers: while the holders hold them, the kernel's own
//! host-wide count of socket buffer memory (`/proc/net/sockstat`, which counts every network
//! namespace's sockets) must not have grown by more than the documented bound (SECURITY.md,
//! "Kernel memory"). On this host (cgroup v1) those buffers were charged to nobody: a
//! session limited to 256 MiB held well over 1 GiB in them. The other kinds are charged to
//! the session's memory cgroup: their holders report what they hold at once.
//!
//! The host's `MemAvailable` is reported beside the socket count, not asserted on: the
//! suite's other attacks (memory bombs up to 384 MiB, two test binaries side by side, the
//! compiler building the other crates' tests) move it by more than the bound itself.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{attack, server, session_with_limits};

const MIB: u64 = 1 << 20;
/// The attacked session's memory limit.
const LIMIT_MIB: u64 = 256;
/// The bound on its socket buffers where the memory limit does not count them (cgroup v1):
/// an eighth of the limit (`pyxis_sandbox`'s `socket_buffer_bytes`).
const SOCKET_BUFFERS_MIB: u64 = LIMIT_MIB / 8;
/// What the kernel lets each socket queue past that bound, for the connections and sockets
/// an attack opens (about 11 KiB per connection measured; see SECURITY.md).
const PER_SOCKET_MARGIN_MIB: u64 = 24;
/// Loopback traffic of the suite's other tests and servers while the holders hold their
/// buffers; the unbounded buffers came to 2.8 GiB, so this allowance cannot hide them.
const NOISE_MIB: u64 = 16;

/// The two attacks of this file hold memory for a while: one at a time, so that neither
/// counts the other's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `MemAvailable` of the host, in bytes.
fn mem_available() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .expect("MemAvailable in /proc/meminfo")
        * 1024
}

/// The kernel's count of memory in TCP and UDP socket buffers (IPv4 and IPv6 share each
/// protocol's count), in bytes: `mem` (pages) of the TCP and UDP lines of
/// `/proc/net/sockstat`. The count is host-wide, whatever network namespace reads it.
fn socket_buffers() -> u64 {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").expect("read /proc/net/sockstat");
    let pages: u64 = sockstat
        .lines()
        .filter(|l| l.starts_with("TCP:") || l.starts_with("UDP:"))
        .map(|l| {
            let mut words = l.split_whitespace();
            words
                .position(|w| w == "mem")
                .and_then(|_| words.next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no mem count in {l:?}"))
        })
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// Samples over `span`: the highest `MemAvailable` and the lowest socket buffer count, so
/// that transient allocations and traffic of the suite's other processes do not make an
/// attack look bigger than it is (the attack's holders hold what they took all along).
fn sample_while(span: Duration) -> (u64, u64) {
    let end = Instant::now() + span;
    let (mut mem, mut sockets) = (mem_available(), socket_buffers());
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
        mem = mem.max(mem_available());
        sockets = sockets.min(socket_buffers());
    }
    (mem, sockets)
}

/// What an attack took from the host while it held its memory.
struct Taken {
    /// How far `MemAvailable` fell (reported only: see the module's comment).
    mem_available: u64,
    /// How far the kernel's socket buffer count grew.
    socket_buffers: u64,
}

/// Python: starts `holders` copies of the program `HOLDER` (defined by the caller's code)
/// in the background, each writing one JSON line to a pipe (in one `write`, so lines never
/// interleave) when it holds what it grabbed,
/// and prints the lines as a JSON list. The holders keep running after the cell.
const START_HOLDERS: &str = r#"
import json, os, subprocess, sys, time
open('/tmp/holder.py', 'w').write(HOLDER)
r, w = os.pipe()
procs = [subprocess.Popen([sys.executable, '/tmp/holder.py', str(i)], stdout=w, stderr=subprocess.DEVNULL,
                          start_new_session=True) for i in range(HOLDERS)]
os.close(w)
# Within the cell's timeout (30 s on the attack server, both times the host's time scale).
reports, buf, deadline = [], b'', time.time() + 25 * SCALE
while len(reports) < HOLDERS and time.time() < deadline:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b'\n')
    for l in lines:
        try:
            reports.append(json.loads(l))
        except ValueError:
            reports.append({'unparsed': l.decode('utf-8', 'replace')[:500]})
print(json.dumps(reports))
"#;

/// Python: kills every holder (`procs` of [`START_HOLDERS`]).
const STOP_HOLDERS: &str = r#"
for p in procs:
    p.kill()
    p.wait()
print('stopped')
"#;

/// Runs `holder` (Python source of a program that grabs memory, prints one JSON line and
/// sleeps) in `holders` processes of a session limited to [`LIMIT_MIB`], and returns what
/// they took from the host while they held it, their reports, and the cell that started
/// them.
fn host_memory_taken(holder: &str, holders: u32) -> (Taken, Vec<Value>, Value) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    let v = session_with_limits(s, json!({ "memory_mb": LIMIT_MIB }));
    // Warm: the first cells of a session fault in memory of their own.
    v.ok("import json, os, subprocess, sys, time\nprint(1)");
    let before = sample_while(Duration::from_secs(2));
    let (reports, after, cell) = attack(s, &v, |v| {
        let code = format!(
            "HOLDER = {holder:?}\nHOLDERS = {holders}\nSCALE = {}\n{START_HOLDERS}",
            pyxis_tests::time_scale()
        );
        let out = v.exec(&code);
        let stdout = out["stdout"].as_str().unwrap_or_default().to_owned();
        if stdout.trim().is_empty() {
            eprintln!("the holders' cell: {out}");
        }
        let after = sample_while(Duration::from_secs(3));
        v.exec(STOP_HOLDERS);
        (stdout, after, out)
    });
    let reports: Vec<Value> = serde_json::from_str(reports.trim()).unwrap_or_default();
    let taken = Taken {
        mem_available: before.0.saturating_sub(after.0),
        socket_buffers: after.1.saturating_sub(before.1),
    };
    (taken, reports, cell)
}

/// Whether this host's cgroups are v2 (the unified hierarchy at /sys/fs/cgroup).
fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Python source of a holder: TCP connections over loopback whose receivers never read, on
/// sockets that ask for the largest buffers.
const TCP_HOLDER: &str = r#"
import json, os, socket, sys, time
BIG = 1 << 30
def big(sock, opt):
    try:
        sock.setsockopt(socket.SOL_SOCKET, opt, BIG)
    except OSError:
        pass
listener = socket.socket()
big(listener, socket.SO_RCVBUF)
listener.bind(('127.0.0.1', 0))
listener.listen(1024)
conns, sent, error = [], 0, None
try:
    for _ in range(450):
        c = socket.socket()
        big(c, socket.SO_SNDBUF)
        c.connect(listener.getsockname())
        a, _ = listener.accept()
        c.setblocking(False)
        conns.append((c, a))
        while True:
            try:
                sent += c.send(b'x' * 65536)
            except BlockingIOError:
                break
except OSError as e:
    error = str(e)
os.write(1, (json.dumps({'kind': 'tcp', 'connections': len(conns), 'sent_mib': sent >> 20, 'error': error}) + '\n').encode())
time.sleep(600)
"#;

/// Python source of a holder: UDP sockets that never read, each sent datagrams until it
/// drops them.
const UDP_HOLDER: &str = r#"
import json, os, socket, time
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
socks, sent, error = [], 0, None
try:
    for _ in range(900):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 30)
        except OSError:
            pass
        r.bind(('127.0.0.1', 0))
        socks.append(r)
        for _ in range(40):
            sent += sender.sendto(b'x' * 60000, r.getsockname())
except OSError as e:
    error = str(e)
os.write(1, (json.dumps({'kind': 'udp', 'sockets': len(socks), 'sent_mib': sent >> 20, 'error': error}) + '\n').encode())
time.sleep(600)
"#;

fn check_bound(what: &str, taken: &Taken, bound_mib: u64, reports: &[Value]) {
    eprintln!(
        "{what}: the kernel's socket buffers grew by {} MiB (bound {bound_mib} MiB); the host's \
         available memory fell by {} MiB; {reports:?}",
        taken.socket_buffers / MIB,
        taken.mem_available / MIB
    );
    assert!(
        taken.socket_buffers <= bound_mib * MIB,
        "{what}: a session limited to {LIMIT_MIB} MiB held {} MiB in socket buffers \
         (bound {bound_mib} MiB; the host's available memory fell by {} MiB): {reports:?}",
        taken.socket_buffers / MIB,
        taken.mem_available / MIB
    );
}

#[test]
fn loopback_socket_buffers_count_against_the_session() {
    // Two holders of each kind; one file-descriptor limit (1024) each.
    let holder = format!(
        "import sys\nexec({TCP_HOLDER:?} if int(sys.argv[1]) % 2 == 0 else {UDP_HOLDER:?})"
    );
    let (taken, reports, cell) = host_memory_taken(&holder, 4);
    // cgroup v2's memory controller charges socket buffers to the session: there the
    // holders fill its limit and the OOM killer ends the cell (reported as OutOfMemory)
    // before they report. That is the containment this test asks for (and the host's
    // memory is still bounded below); anywhere else the holders must have their sockets.
    let charged = cgroup_v2() && cell["error"]["name"] == "OutOfMemory";
    if charged {
        eprintln!("cgroup v2: the holders' buffers were charged to the session, which ran out of memory: {cell}");
    }
    assert!(
        charged
            || reports.len() == 4
                && reports
                    .iter()
                    .all(|r| r["connections"].as_u64().unwrap_or(0) >= 400
                        || r["sockets"].as_u64().unwrap_or(0) >= 800),
        "the holders did not open their sockets: {reports:?} (cell: {cell})"
    );
    // On cgroup v2 the buffers are part of the memory limit; on v1 the kmem.tcp limit
    // bounds them; either way no more than the limit's share plus the per-socket margin.
    let share = if cgroup_v2() {
        LIMIT_MIB
    } else {
        SOCKET_BUFFERS_MIB
    };
    let bound = share + PER_SOCKET_MARGIN_MIB + NOISE_MIB;
    check_bound("TCP and UDP buffers", &taken, bound, &reports);
}

/// Python source of a worker: grabs one kind of kernel memory (argv[1]) up to `AIM` bytes,
/// writing how much it holds to `/workspace/held-<kind>-<n>` as it goes, so that the count
/// survives the worker being killed for it (out of memory). Workers mark themselves the
/// first choice of the OOM killer, so the cell's own kernel survives.
const CHARGED_WORKER: &str = r#"
import ctypes, fcntl, os, socket, sys, time
kind, n = sys.argv[1], sys.argv[2]
open('/proc/self/oom_score_adj', 'w').write('1000')
progress = os.open('/workspace/held-%s-%s' % (kind, n), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
held, keep, chunk = 0, [], b'x' * 65536
def note(done=False):
    os.pwrite(progress, b'%d %d          ' % (held, done), 0)
try:
    if kind == 'pipes':
        while held < AIM:
            r, w = os.pipe()
            keep.append((r, w))
            try:
                fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
            except OSError:
                pass
            os.set_blocking(w, False)
            while True:
                try:
                    held += os.write(w, chunk)
                except BlockingIOError:
                    break
            note()
    elif kind == 'unix':
        while held < AIM:
            a, b = socket.socketpair()
            keep.append((a, b))
            a.setblocking(False)
            while True:
                try:
                    held += a.send(chunk)
                except BlockingIOError:
                    break
            note()
    elif kind == 'memfd':
        fd = os.memfd_create('hold')
        while held < AIM:
            held += os.write(fd, chunk * 16)
            note()
    elif kind == 'tmpfs':
        for d in ('/tmp', '/dev/shm'):
            with open('%s/hold-%s' % (d, n), 'wb') as f:
                while held < AIM:
                    held += f.write(chunk * 16)
                    f.flush()
                    note()
    elif kind == 'mqueue':
        libc = ctypes.CDLL(None, use_errno=True)
        for i in range(256):
            q = libc.mq_open(b'/hold-%s-%d' % (n.encode(), i), os.O_CREAT | os.O_RDWR | os.O_NONBLOCK, 0o600, None)
            if q < 0:
                break
            while libc.mq_send(q, b'x' * 8192, 8192, 0) == 0:
                held += 8192
            note()
except OSError:
    pass
note(done=True)
time.sleep(600)
"#;

/// Python: for each kind in turn, starts `WORKERS` workers that together aim at four times the
/// session's memory limit, waits until each is done or dead, adds up what they hold,
/// then stops them and removes what they left. Prints `{kind: MiB held at once}`.
const RUN_WORKERS: &str = r#"
import glob, json, os, subprocess, sys, time
open('/tmp/worker.py', 'w').write('AIM = %d\n' % (4 * LIMIT // WORKERS) + WORKER)
def state(kind, n):
    try:
        held, done = open('/workspace/held-%s-%d' % (kind, n)).read().split()
        return int(held), done == '1'
    except (OSError, ValueError):
        return 0, False
results = {}
for kind in ('pipes', 'unix', 'memfd', 'tmpfs', 'mqueue'):
    procs = [subprocess.Popen([sys.executable, '/tmp/worker.py', kind, str(n)]) for n in range(WORKERS)]
    # Five kinds within the cell's timeout (30 s on the attack server, both scaled).
    deadline = time.time() + 4 * SCALE
    while time.time() < deadline and any(p.poll() is None and not state(kind, n)[1] for n, p in enumerate(procs)):
        time.sleep(0.05)
    # What is held at once: by the workers still alive (a killed one freed its pipes,
    # sockets and memfd), by files left in the tmpfs mounts, by every queue made (they
    # outlive their maker).
    if kind == 'tmpfs':
        held = sum(os.stat(f).st_size for f in glob.glob('/tmp/hold-*') + glob.glob('/dev/shm/hold-*'))
    else:
        held = sum(state(kind, n)[0] for n, p in enumerate(procs) if kind == 'mqueue' or p.poll() is None)
    results[kind] = held >> 20
    for p in procs:
        p.kill()
        p.wait()
    for f in glob.glob('/tmp/hold-*') + glob.glob('/dev/shm/hold-*') + glob.glob('/workspace/held-*'):
        os.unlink(f)
print(json.dumps(results))
"#;

#[test]
fn pipes_unix_sockets_memfd_tmpfs_and_mqueues_count_against_the_session() {
    // Each kind is charged to the memory cgroup (or bounded before it: pipe pages per uid,
    // the tmpfs sizes, RLIMIT_MSGQUEUE), so none gets past the limit, whatever it aims at.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    let v = session_with_limits(s, json!({ "memory_mb": LIMIT_MIB }));
    let code = format!(
        "LIMIT = {}\nWORKERS = 8\nSCALE = {}\nWORKER = {CHARGED_WORKER:?}\n{RUN_WORKERS}",
        LIMIT_MIB * MIB,
        pyxis_tests::time_scale()
    );
    let held = attack(s, &v, |v| crate::util::json_of(v, &code));
    eprintln!("held at once, in MiB: {held}");
    let kinds = held.as_object().expect("one count per kind");
    assert_eq!(kinds.len(), 5, "{held}");
    // The workers' own interpreters take part of the limit too. Unix stream sockets are the
    // exception SECURITY.md documents: on Linux 6.18 only about half of their queued bytes
    // is charged (a socket queues at most `net.core.wmem_default`, since SO_SNDBUF is
    // ignored), so they can hold up to about the limit again.
    for (kind, mib) in kinds {
        let mib = mib.as_u64().unwrap_or(u64::MAX);
        let bound = if kind == "unix" {
            2 * LIMIT_MIB
        } else {
            LIMIT_MIB
        };
        assert!(
            mib <= bound,
            "{kind}: {mib} MiB held by a session limited to {LIMIT_MIB} MiB (bound {bound}): {held}"
        );
    }
    assert!(
        kinds["memfd"].as_u64().unwrap_or(0) >= LIMIT_MIB / 4,
        "memfd grabbed nothing: {held}"
    );
}
