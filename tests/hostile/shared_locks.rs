//! Issue 14, point 7: locks on the read-only files every sandbox shares.
//!
//! `flock` and `fcntl` locks belong to the inode, and the bind mounts of `/usr`, `/etc`'s
//! files and the runtime show every sandbox the same inodes: a session can lock a shared
//! file and another session sees the lock. SECURITY.md ("Shared read-only files") says what
//! is accepted: this is a channel between cooperating sessions and can stall a program of
//! another session that locks the same system file itself, but nothing of Pyxis takes such
//! a lock. This test holds exclusive locks on the files Pyxis and its libraries read (the
//! runtime driver, matplotlib's data, fonts and config, the fontconfig setup, pip, the
//! interpreter) and checks that a new session, its cells, a plot, a subprocess, pip and a
//! restart all still work.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{attack, json_of, server};

/// Python: takes `flock(LOCK_EX)` and an open-file-description read lock on every regular
/// file it can open in the shared trees (up to the open-file limit), keeps them in `held`.
const LOCK_SHARED_FILES: &str = r#"
import fcntl, glob, json, os, struct, sys, sysconfig
import matplotlib, pip
roots = [
    os.path.dirname(sys.modules['pyxis_runtime'].__file__),
    os.environ.get('MPLCONFIGDIR', ''),
    os.path.dirname(matplotlib.__file__) + '/mpl-data',
    os.path.dirname(pip.__file__),
    '/etc/fonts',
    sysconfig.get_paths()['stdlib'] + '/encodings',
]
singles = [sys.executable, os.path.realpath(sys.executable), sys.prefix + '/pyvenv.cfg',
           matplotlib.__file__, '/etc/ld.so.cache', '/etc/localtime']
F_OFD_SETLK = 37
held, failed = [], 0
def lock(path):
    global failed
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.fcntl(fd, F_OFD_SETLK, struct.pack('hhqqi4x', fcntl.F_RDLCK, 0, 0, 0, 0))
        held.append((path, fd))
    except OSError:
        failed += 1
        os.close(fd)
for path in singles:
    lock(path)
for root in filter(None, roots):
    for dirpath, _, names in os.walk(root):
        for name in names:
            if len(held) < 900 and os.path.isfile(os.path.join(dirpath, name)):
                lock(os.path.join(dirpath, name))
print(json.dumps({"held": len(held), "failed": failed, "sample": [p for p, _ in held[:3]]}))
"#;

/// Python: what a session does with the shared files, each with a timeout.
const USE_SHARED_FILES: &str = r#"
import io, json, subprocess, sys
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from matplotlib import font_manager
fig, ax = plt.subplots()
ax.plot([1, 2, 3])
ax.set_title('locked fonts')
buf = io.BytesIO()
fig.savefig(buf, format='png')
font = font_manager.findfont('DejaVu Sans')
sub = subprocess.run([sys.executable, '-c', 'import encodings, json; print(json.dumps(1))'],
                     capture_output=True, text=True, timeout=60)
pip = subprocess.run([sys.executable, '-m', 'pip', 'list', '--disable-pip-version-check'],
                     capture_output=True, text=True, timeout=120)
print(json.dumps({"png": len(buf.getvalue()), "font": font, "sub": sub.stdout.strip(),
                  "pip": pip.returncode, "pip_err": pip.stderr[-300:]}))
"#;

#[test]
fn locks_on_shared_read_only_files_do_not_stop_pyxis() {
    let s = server();
    let a = s.session();
    let took = json_of(&a, LOCK_SHARED_FILES);
    assert!(
        took["held"].as_u64().unwrap_or(0) > 100,
        "A could not lock the shared files: {took}"
    );
    let locked = took["sample"][0]
        .as_str()
        .expect("a locked file")
        .to_owned();
    // A fresh session (a new kernel forked into a new sandbox) while A holds them.
    let t = Instant::now();
    let b = s.session();
    let out = attack(s, &b, |b| {
        let used = json_of(b, USE_SHARED_FILES);
        // The lock is real: B cannot take it (the channel SECURITY.md accepts).
        let probe = json_of(
            b,
            &format!(
                "import fcntl, json, os\nfd = os.open({locked:?}, os.O_RDONLY)\ntry:\n    \
                 fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    r = 'taken'\nexcept \
                 BlockingIOError:\n    r = 'held by another session'\nprint(json.dumps(r))"
            ),
        );
        let again = b.exec_with(json!({"code": "print(2)"}));
        (used, probe, again)
    });
    let (used, probe, again) = out;
    assert!(used["png"].as_u64().unwrap_or(0) > 1000, "no plot: {used}");
    assert!(
        used["font"].as_str().is_some_and(|f| f.ends_with(".ttf")),
        "{used}"
    );
    assert_eq!(used["sub"], "1", "subprocess: {used}");
    assert_eq!(used["pip"], 0, "pip: {used}");
    assert_eq!(again["stdout"], "2\n", "{again}");
    assert_eq!(probe, "held by another session", "the lock is not shared?");
    // The restart of B's interpreter works under the locks too.
    let r = s.post(&format!("/v1/sessions/{}/restart", b.id), &json!({}));
    assert!(r.status().is_success(), "restart: {}", r.status());
    assert_eq!(b.ok("print(3)"), "3\n");
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "slow under the locks: {:?}",
        t.elapsed()
    );
    // A still holds every lock it took.
    assert_eq!(a.ok("print(len(held))"), format!("{}\n", took["held"]));
}
