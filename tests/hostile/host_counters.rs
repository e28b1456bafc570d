//! Issue 14, point 3: counters the kernel keeps for the whole host (or per uid), which one
//! session could use up for every other session.
//!
//! Each attack takes all it can of one counter in session A and keeps it; session B (running
//! next door, as the neighbour of [`attack`] does) must still get its own. Calls that only
//! have a host-global counter are refused (`io_setup`, `fanotify_init`, the keyring calls);
//! the rest are per uid (a distinct uid per live sandbox) or per IPC namespace.

use serde_json::Value;

use crate::util::{attack, json_of, server, SYSCALL_PRELUDE};

/// Runs `take` in session A (it must print one JSON line and keep what it took in globals),
/// then `try_own` in session B while A holds it; returns both reports.
fn starve(take: &str, try_own: &str) -> (Value, Value) {
    let s = server();
    let a = s.session();
    let b = s.session();
    let took = json_of(&a, &format!("{SYSCALL_PRELUDE}\n{take}"));
    let got = attack(s, &b, |b| {
        json_of(b, &format!("{SYSCALL_PRELUDE}\n{try_own}"))
    });
    // A still holds its share: the check in B happened while it did.
    assert_eq!(a.ok("print(len(held))"), format!("{}\n", took["held"]));
    (took, got)
}

/// `/proc/sys/fs/aio-nr`: AIO events reserved by every process of the host.
fn host_aio_nr() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/aio-nr")
        .expect("read aio-nr")
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn aio_contexts_cannot_be_taken_from_the_host() {
    let before = host_aio_nr();
    // x86_64 io_setup = 206. fs.aio-max-nr (65536 by default) is one counter for the host:
    // before it was denied, sixteen contexts of 4096 events took it all.
    let (took, got) = starve(
        r#"
held, error = [], None
for _ in range(64):
    ctx = ctypes.c_ulong(0)
    r = sc(206, 4096, ctypes.addressof(ctx))
    if r[0] != 0:
        error = r[1]
        break
    held.append(ctx)
print(json.dumps({"held": len(held), "error": error}))
"#,
        r#"
ctx = ctypes.c_ulong(0)
print(json.dumps({"io_setup": sc(206, 1, ctypes.addressof(ctx))}))
"#,
    );
    assert_eq!(took["held"], 0, "A made AIO contexts: {took}");
    assert_eq!(took["error"], "ENOSYS", "{took}");
    assert_eq!(got["io_setup"][1], "ENOSYS", "{got}");
    assert_eq!(host_aio_nr(), before, "the host's AIO count moved");
}

#[test]
fn inotify_instances_are_counted_per_session() {
    // fs.inotify.max_user_instances (128) counts per uid: A's uid runs out, B's does not.
    let (took, got) = starve(
        r#"
held, error = [], None
for _ in range(100000):
    r = sc(294, 0)  # inotify_init1
    if r[0] < 0:
        error = r[1]
        break
    held.append(r[0])
print(json.dumps({"held": len(held), "error": error}))
"#,
        r#"
r = sc(294, 0)
print(json.dumps({"inotify_init1": r}))
"#,
    );
    assert_eq!(
        took["error"], "EMFILE",
        "A was not stopped by a limit: {took}"
    );
    assert!(took["held"].as_u64().unwrap_or(0) > 0, "{took}");
    assert!(
        got["inotify_init1"][0].as_i64().unwrap_or(-1) >= 0,
        "B starved: {got}"
    );
}

#[test]
fn sysv_ipc_ids_are_counted_per_session() {
    // msgmni/semmni/shmmni count per IPC namespace, and each sandbox has its own.
    let (took, got) = starve(
        r#"
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
held, errors = [], {}
for name, nr, args in (("msgget", 68, (IPC_PRIVATE, IPC_CREAT | 0o600)),
                       ("semget", 64, (IPC_PRIVATE, 1, IPC_CREAT | 0o600)),
                       ("shmget", 29, (IPC_PRIVATE, 4096, IPC_CREAT | 0o600))):
    for _ in range(40000):
        r = sc(nr, *args)
        if r[0] < 0:
            errors[name] = r[1]
            break
        held.append((name, r[0]))
print(json.dumps({"held": len(held), "errors": errors}))
"#,
        r#"
print(json.dumps({"msgget": sc(68, 0, 0o1600), "semget": sc(64, 0, 1, 0o1600), "shmget": sc(29, 0, 4096, 0o1600)}))
"#,
    );
    assert_eq!(
        took["errors"].as_object().map(|e| e.len()),
        Some(3),
        "A was not stopped by a limit: {took}"
    );
    for call in ["msgget", "semget", "shmget"] {
        assert!(
            got[call][0].as_i64().unwrap_or(-1) >= 0,
            "B starved of {call}: {got}"
        );
    }
}

#[test]
fn posix_message_queues_are_counted_per_session() {
    // RLIMIT_MSGQUEUE (per uid) and fs.mqueue.queues_max (per IPC namespace).
    let (took, got) = starve(
        r#"
libc = ctypes.CDLL(None, use_errno=True)
held, error = [], None
for i in range(100000):
    q = libc.mq_open(b"/starve%d" % i, os.O_CREAT | os.O_RDWR, 0o600, None)
    if q < 0:
        error = errno.errorcode.get(ctypes.get_errno())
        break
    held.append(q)
print(json.dumps({"held": len(held), "error": error}))
"#,
        r#"
libc = ctypes.CDLL(None, use_errno=True)
q = libc.mq_open(b"/mine", os.O_CREAT | os.O_RDWR, 0o600, None)
print(json.dumps({"mq_open": [q, errno.errorcode.get(ctypes.get_errno()) if q < 0 else None]}))
"#,
    );
    assert!(
        took["error"].is_string(),
        "A was not stopped by a limit: {took}"
    );
    assert!(
        got["mq_open"][0].as_i64().unwrap_or(-1) >= 0,
        "B starved: {got}"
    );
}

#[test]
fn pipe_buffer_pages_are_counted_per_session() {
    // fs.pipe-user-pages-soft counts per uid: past it, A's new pipes get one page, B's not.
    let (took, got) = starve(
        r#"
import fcntl
held, refused = [], None
for _ in range(400):
    r, w = os.pipe()
    held.append((r, w))
    try:
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError as e:
        refused = errno.errorcode.get(e.errno)
        break
print(json.dumps({"held": len(held), "refused": refused}))
"#,
        r#"
import fcntl
r, w = os.pipe()
print(json.dumps({"size": fcntl.fcntl(w, 1031, 1 << 20)}))
"#,
    );
    assert_eq!(
        took["refused"], "EPERM",
        "A was not stopped by a limit: {took}"
    );
    assert_eq!(got["size"], 1 << 20, "B starved: {got}");
}

#[test]
fn fanotify_and_keyrings_are_refused() {
    // Unprivileged fanotify groups and keys count per uid of the host's user namespace; a
    // sandbox has no use for either.
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            &format!(
                "{SYSCALL_PRELUDE}\nprint(json.dumps({{\"fanotify_init\": sc(300, 0x200, 0), \
                 \"add_key\": sc(248, 0, 0, 0, 0, -2), \"request_key\": sc(249, 0, 0, 0, 0)}}))"
            ),
        )
    });
    assert_eq!(out["fanotify_init"][1], "EPERM", "{out}");
    assert_eq!(out["add_key"][1], "EPERM", "{out}");
    assert_eq!(out["request_key"][1], "EPERM", "{out}");
}
