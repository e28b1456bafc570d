//! Escape and snooping: the sandbox sees nothing of the host or of other sessions, and the
//! kernel surface that could change that is refused.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{self, attack, json_of, server, SYSCALL_PRELUDE};

/// The secret the test servers carry in their environment (see `pyxis_tests`).
const HOST_SECRET: &str = "s3cr3t-host-environment-value";

/// Python: `probe(path)` reads a file or lists a directory; returns `"ok:<start>"` or the
/// errno name.
const PROBE: &str = r#"
import os, errno, json
def probe(path):
    try:
        if os.path.isdir(path):
            return 'ok:' + ','.join(sorted(os.listdir(path)))[:200]
        with open(path, 'rb') as f:
            return 'ok:' + f.read(4096).decode('latin-1')
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"#;

fn probe_paths(paths: &[String]) -> Value {
    let s = server();
    let v = s.session();
    let list = serde_json::to_string(paths).unwrap();
    attack(s, &v, |v| {
        json_of(
            v,
            &format!("{PROBE}\nprint(json.dumps({{p: probe(p) for p in {list}}}))"),
        )
    })
}

#[test]
fn host_secrets_are_not_there() {
    let s = server();
    let data = s.data_dir.display().to_string();
    let paths: Vec<String> = [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/sudoers",
        "/root",
        "/root/.bash_history",
        "/home",
        "/var/lib/pyxis",
        "/var/lib/pyxis/token",
        "/work",
        "/work/main",
        "/sys",
        "/sys/fs/cgroup",
        "/run",
        "/var/run/docker.sock",
        "/boot",
        "/dev/mem",
        "/dev/kmem",
        "/dev/kmsg",
        "/dev/sda",
        "/dev/vda",
        "/proc/kcore",
        "/proc/sysrq-trigger",
    ]
    .iter()
    .map(|p| p.to_string())
    .chain([
        data.clone(),
        format!("{data}/token"),
        format!("{data}/workspaces"),
    ])
    .collect();
    let out = probe_paths(&paths);
    for p in &paths {
        let r = out[p].as_str().unwrap();
        let empty_dir = r == "ok:";
        // `/home/user` is the workspace's alias for E2B's SDKs: nothing of the host's /home.
        let workspace_alias = p == "/home" && r == "ok:user";
        assert!(
            !r.starts_with("ok:") || empty_dir || workspace_alias,
            "{p} readable: {r}"
        );
    }
    assert!(!out.to_string().contains(&s.token), "token leaked");
}

#[test]
fn no_process_environment_holds_host_secrets() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        v.ok(r#"
import os
seen = [repr(dict(os.environ))]
for p in os.listdir('/proc'):
    if p.isdigit() or p == 'self':
        for f in ('environ', 'cmdline'):
            try:
                seen.append(open('/proc/%s/%s' % (p, f), 'rb').read().decode('latin-1'))
            except OSError as e:
                seen.append('%s:%s:%s' % (p, f, e.errno))
print('\n'.join(seen))
"#)
    });
    assert!(!out.contains(HOST_SECRET), "host environment leaked: {out}");
    assert!(!out.contains(&s.token), "token leaked");
    assert!(!out.contains("PYXIS_"), "server settings leaked: {out}");
    assert!(
        !out.contains(&s.data_dir.display().to_string()),
        "data dir leaked"
    );
}

#[test]
fn mountinfo_shows_no_host_path() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        v.ok("print(open('/proc/self/mountinfo').read())\nprint(open('/proc/1/mountinfo').read())")
    });
    assert!(!out.contains(&s.data_dir.display().to_string()), "{out}");
    assert!(!out.contains("/work/"), "{out}");
    assert!(!out.contains("pyxis-test-"), "{out}");
    assert!(!out.contains(" /sys "), "{out}");
    // /usr is read-only and nosuid; so is everything but the writable scratch mounts.
    let usr = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/usr"))
        .expect("/usr mounted");
    let opts = usr.split_whitespace().nth(5).unwrap();
    assert!(
        opts.contains("ro") && opts.contains("nosuid") && opts.contains("nodev"),
        "{usr}"
    );
}

#[test]
fn kernel_pointers_and_logs_stay_hidden() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            &format!(
                r#"{SYSCALL_PRELUDE}
{PROBE}
syms = probe('/proc/kallsyms')
nonzero = syms.startswith('ok:') and any(l.split()[0].strip('0') for l in syms[3:].splitlines() if l.split())
buf = ctypes.create_string_buffer(4096)
# syslog(SYSLOG_ACTION_READ_ALL)
print(json.dumps({{"kallsyms_addrs": nonzero, "syslog": sc(103, 3, ctypes.addressof(buf), 4096), "syslog_size": sc(103, 10, 0, 0)}}))
"#
            ),
        )
    });
    assert_eq!(out["kallsyms_addrs"], false, "{out}");
    // Denied by seccomp whatever the host's kernel.dmesg_restrict.
    assert_eq!(out["syslog"], json!([-1, "EPERM"]), "{out}");
    assert_eq!(out["syslog_size"], json!([-1, "EPERM"]), "{out}");
}

#[test]
fn proc_sys_and_sysrq_are_not_writable() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import json, errno
res = {}
for p, val in [('/proc/sys/kernel/hostname', 'pwned'), ('/proc/sys/vm/drop_caches', '3'),
               ('/proc/sys/kernel/core_pattern', '|/tmp/x'), ('/proc/sysrq-trigger', 'h'),
               ('/proc/self/oom_score_adj', '-1000'), ('/proc/sys/net/ipv4/ip_forward', '1')]:
    try:
        with open(p, 'w') as f:
            f.write(val)
        res[p] = 'written'
    except OSError as e:
        res[p] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(res))
"#,
        )
    });
    for (p, r) in out.as_object().unwrap() {
        assert_ne!(r, "written", "{p} was written: {out}");
    }
}

/// Every syscall of the list must fail (the value is `[result, errno]`).
fn assert_all_refused(out: &Value) {
    for (name, r) in out.as_object().unwrap() {
        assert_eq!(r[0], -1, "{name} was not refused: {out}");
        let e = r[1].as_str().unwrap_or_default();
        assert!(
            [
                "EPERM",
                "EACCES",
                "ENOSYS",
                "EAFNOSUPPORT",
                "EINVAL",
                "EBADF",
                "ENOENT"
            ]
            .contains(&e),
            "{name}: unexpected errno {e}: {out}"
        );
    }
}

#[test]
fn privileged_syscalls_are_refused() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            &format!(
                r#"{SYSCALL_PRELUDE}
s = lambda b: ctypes.cast(ctypes.c_char_p(b), ctypes.c_void_p).value
os.makedirs('/tmp/mnt', exist_ok=True)
netns = os.open('/proc/self/ns/net', os.O_RDONLY)
buf = ctypes.create_string_buffer(256)
res = {{
  "mount": sc(165, s(b'none'), s(b'/tmp/mnt'), s(b'tmpfs'), 0, 0),
  "remount_root_rw": sc(165, 0, s(b'/'), 0, 0x20 | 0x1000, 0),
  "umount2": sc(166, s(b'/workspace'), 2),
  "unshare_user": sc(272, 0x10000000),
  "unshare_ns": sc(272, 0x00020000),
  "unshare_net": sc(272, 0x40000000),
  "setns": sc(308, netns, 0),
  "pivot_root": sc(155, s(b'/tmp'), s(b'/tmp/mnt')),
  "chroot": sc(161, s(b'/tmp')),
  "ptrace_traceme": sc(101, 0, 0, 0, 0),
  "ptrace_attach_init": sc(101, 16, 1, 0, 0),
  "process_vm_readv": sc(310, 1, 0, 0, 0, 0, 0),
  "bpf": sc(321, 0, ctypes.addressof(buf), 128),
  "keyctl": sc(250, 0, 0, 0, 0, 0),
  "add_key": sc(248, s(b'user'), s(b'k'), s(b'v'), 1, -2),
  "userfaultfd": sc(323, 0),
  "io_uring_setup": sc(425, 8, ctypes.addressof(buf)),
  "perf_event_open": sc(298, ctypes.addressof(buf), 0, -1, -1, 0),
  "mknod_mem": sc(133, s(b'/tmp/mem'), 0o20600, (1 << 8) | 1),
  "mknodat_sda": sc(259, -100, s(b'/workspace/sda'), 0o60600, (8 << 8) | 0),
  "init_module": sc(175, ctypes.addressof(buf), 16, s(b'')),
  "finit_module": sc(313, 0, s(b''), 0),
  "delete_module": sc(176, s(b'ext4'), 0),
  "kexec_load": sc(246, 0, 0, 0, 0),
  "reboot": sc(169, 0xfee1dead, 672274793, 0x4321fedc, 0),
  "swapon": sc(167, s(b'/workspace/x'), 0),
  "open_by_handle_at": sc(304, -100, ctypes.addressof(buf), 0),
  "name_to_handle_at": sc(303, -100, s(b'/'), ctypes.addressof(buf), ctypes.addressof(buf), 0),
  "fsopen": sc(430, s(b'tmpfs'), 0),
  "open_tree": sc(428, -100, s(b'/'), 1),
  "pidfd_getfd": sc(438, 0, 0, 0),
  "setuid_root": sc(105, 0),
  "setgid_root": sc(106, 0),
  "setgroups": sc(116, 0, 0),
  "clone3": sc(435, ctypes.addressof(buf), 88),
  "personality_exec": sc(135, 0x0400000),
  "acct": sc(163, s(b'/workspace/acct')),
  "sethostname": sc(170, s(b'pwned'), 5),
  "settimeofday": sc(164, ctypes.addressof(buf), 0),
  "x32_unshare": sc(0x40000000 | 272, 0x10000000),
  "x32_mount": sc(0x40000000 | 165, s(b'none'), s(b'/tmp/mnt'), s(b'tmpfs'), 0, 0),
}}
print(json.dumps(res))
"#
            ),
        )
    });
    assert_all_refused(&out);
    // No mount appeared.
    assert_eq!(
        v.ok("import os\nprint(os.path.ismount('/tmp/mnt'))"),
        "False\n"
    );
}

#[test]
fn i386_syscalls_do_not_bypass_seccomp() {
    let s = server();
    let v = s.session();
    // unshare(CLONE_NEWUSER) through `int 0x80` (i386 number 310), in a child process.
    let out = attack(s, &v, |v| {
        v.ok(r#"
import subprocess, sys
child = r'''
import ctypes, mmap
code = bytes([0xb8, 0x36, 0x01, 0x00, 0x00,   # mov eax, 310 (unshare)
              0xbb, 0x00, 0x00, 0x00, 0x10,   # mov ebx, CLONE_NEWUSER
              0xcd, 0x80,                     # int 0x80
              0xc3])                          # ret
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
f = ctypes.CFUNCTYPE(ctypes.c_int)(addr)
print('result', f(), flush=True)
'''
p = subprocess.run([sys.executable, '-c', child], capture_output=True, text=True)
print(p.returncode, p.stdout.strip())
"#)
    });
    // Killed (SIGSYS: wrong arch for the filter, or SIGSEGV without IA32 emulation), or refused.
    let refused = out.contains("result -1");
    let killed = out.starts_with('-');
    assert!(refused || killed, "i386 unshare went through: {out}");
}

#[test]
fn setuid_binaries_are_powerless() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import os, json, subprocess, stat
found = []
for d in ('/usr/bin', '/usr/sbin', '/usr/lib/openssh', '/usr/lib/dbus-1.0', '/usr/lib/polkit-1'):
    try:
        for n in os.listdir(d):
            p = os.path.join(d, n)
            try:
                if os.stat(p).st_mode & stat.S_ISUID:
                    found.append(p)
            except OSError:
                pass
    except OSError:
        pass
runs = {}
def run(*argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        return [p.returncode, (p.stdout + p.stderr)[-300:]]
    except Exception as e:
        return [None, repr(e)]
os.makedirs('/tmp/m', exist_ok=True)
runs['mount'] = run('mount', '-t', 'tmpfs', 'none', '/tmp/m')
runs['umount'] = run('umount', '/workspace')
runs['su'] = run('su', 'root', '-c', 'id -u')
runs['newgrp'] = run('newgrp', 'root')
runs['mounted'] = os.path.ismount('/tmp/m')
print(json.dumps({"found": found, "runs": runs, "uid": os.getuid(), "euid": os.geteuid()}))
"#,
        )
    });
    let runs = &out["runs"];
    assert_eq!(runs["mounted"], false, "{out}");
    for name in ["mount", "umount", "su", "newgrp"] {
        let r = &runs[name];
        assert_ne!(r[0], 0, "{name} succeeded: {out}");
    }
    assert_ne!(out["uid"], 0);
    // The workspace is still mounted and ours.
    assert_eq!(
        v.ok("import os\nprint(os.path.ismount('/workspace'), os.access('/workspace', os.W_OK))"),
        "True True\n"
    );
}

#[test]
fn raw_packet_and_netlink_sockets_are_refused() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import socket, json, errno
res = {}
for name, fam, typ, proto in [
    ('inet_raw_icmp', socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ('inet_raw_tcp', socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    ('inet6_raw', socket.AF_INET6, socket.SOCK_RAW, 58),
    ('packet', 17, socket.SOCK_RAW, 0x0300),
    ('packet_dgram', 17, socket.SOCK_DGRAM, 0x0300),
    ('netlink_route', 16, socket.SOCK_RAW, 0),
    ('netlink_audit', 16, socket.SOCK_RAW, 9),
    ('vsock', 40, socket.SOCK_STREAM, 0),
    ('alg', 38, socket.SOCK_SEQPACKET, 0),
    ('key', 15, socket.SOCK_RAW, 2),
    ('bluetooth', 31, socket.SOCK_RAW, 0),
    ('xdp', 44, socket.SOCK_RAW, 0),
]:
    try:
        s = socket.socket(fam, typ, proto)
        s.close()
        res[name] = 'created'
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(res))
"#,
        )
    });
    for (name, r) in out.as_object().unwrap() {
        assert_ne!(r, "created", "{name} socket created: {out}");
    }
}

#[test]
fn another_session_is_invisible_and_untouchable() {
    let s = server();
    let a = s.session();
    let a_info = json_of(
        &a,
        r#"
import os, subprocess, json
open('/workspace/a-secret.txt', 'w').write('only for A')
p = subprocess.Popen(['sleep', '600'])
print(json.dumps({"uid": os.getuid(), "pid": p.pid}))
"#,
    );
    let a_uid = a_info["uid"].as_u64().unwrap() as u32;
    // A's sleep as the host sees it.
    let host_sleep = util::wait_host_process(a_uid, b"sleep\x00600", Duration::from_secs(10));
    let b = s.session();
    let data = s.data_dir.display().to_string();
    let out = attack(s, &b, |b| {
        json_of(
            b,
            &format!(
                r#"{SYSCALL_PRELUDE}
{PROBE}
import signal, glob
mine = os.getuid()
others = []
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            st = os.stat('/proc/' + p)
            cmd = open('/proc/%s/cmdline' % p, 'rb').read()
        except OSError:
            continue
        if st.st_uid != mine or b'600' in cmd:
            others.append([p, st.st_uid, cmd.decode('latin-1')])
found = glob.glob('/**/a-secret.txt', recursive=False) + glob.glob('{data}/**/a-secret.txt', recursive=True)
res = {{
  "uid": mine,
  "others": others,
  "found": found,
  "kill0": sc(62, {host_sleep}, 0),
  "kill9": sc(62, {host_sleep}, 9),
  "ptrace": sc(101, 16, {host_sleep}, 0, 0),
  "mem": probe('/proc/{host_sleep}/mem'),
  "environ": probe('/proc/{host_sleep}/environ'),
  "ws": probe('{data}/workspaces'),
}}
print(json.dumps(res))
"#
            ),
        )
    });
    assert_ne!(
        out["uid"].as_u64().unwrap() as u32,
        a_uid,
        "same uid: {out}"
    );
    assert_eq!(
        out["others"],
        serde_json::json!([]),
        "B sees foreign processes: {out}"
    );
    assert_eq!(out["found"], serde_json::json!([]), "{out}");
    for k in ["kill0", "kill9", "ptrace"] {
        assert_eq!(out[k][0], -1, "{k}: {out}");
    }
    for k in ["mem", "environ", "ws"] {
        assert!(!out[k].as_str().unwrap().starts_with("ok:"), "{k}: {out}");
    }
    // A's sleep and file are untouched.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::path::Path::new(&format!("/proc/{host_sleep}")).exists(),
        "A's process was killed"
    );
    assert_eq!(
        a.ok("print(open('/workspace/a-secret.txt').read())"),
        "only for A\n"
    );
}

#[test]
fn sys_and_devices_are_minimal() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        v.ok("import os\nprint(os.path.exists('/sys'), sorted(os.listdir('/dev')))")
    });
    assert!(out.starts_with("False "), "{out}");
    for dev in [
        "mem", "kmsg", "sda", "vda", "fuse", "kvm", "net", "tty0", "console",
    ] {
        assert!(!out.contains(&format!("'{dev}'")), "/dev/{dev}: {out}");
    }
}

/// Scans every readable mapping of the interpreter for `secrets`, which must not appear in
/// the cell itself: each is given as a visible prefix of `split` bytes and the rest
/// XOR-masked; a hit is a prefix followed by bytes whose mask matches.
fn scan_own_memory(secrets: &[(&str, usize)]) -> Value {
    let s = server();
    let v = s.session();
    let masked = |secret: &str, split: usize| {
        let (head, tail) = secret.split_at(split);
        let tail: Vec<u8> = tail.bytes().map(|b| b ^ 0x5a).collect();
        json!([head, tail])
    };
    let needles = Value::Array(secrets.iter().map(|(n, k)| masked(n, *k)).collect()).to_string();
    attack(s, &v, |v| {
        json_of(
            v,
            &format!(
                r#"
import json
needles = [(h.encode(), bytes(t)) for h, t in {needles}]
hits = []
scanned = 0
with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:
    for line in maps:
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split('-'))
        if 'r' not in parts[1] or hi - lo > (1 << 30) or (len(parts) > 5 and parts[5].startswith('[v')):
            continue
        try:
            mem.seek(lo)
            chunk = mem.read(hi - lo)
        except (OSError, ValueError, OverflowError):
            continue
        scanned += len(chunk)
        for head, tail in needles:
            i = chunk.find(head)
            while i >= 0:
                cand = chunk[i + len(head):i + len(head) + len(tail)]
                if bytes(b ^ 0x5a for b in cand) == tail:
                    hits.append([head.decode(), line.strip()])
                i = chunk.find(head, i + 1)
        del chunk
print(json.dumps({{"hits": hits, "scanned": scanned}}))
"#
            ),
        )
    })
}

#[test]
fn the_interpreter_memory_holds_no_host_secret() {
    // The kernel is forked from the zygote: whatever the zygote's memory held is readable.
    let s = server();
    let out = scan_own_memory(&[(&s.token, 11), (HOST_SECRET, 7)]);
    assert!(out["scanned"].as_u64().unwrap() > 10 << 20, "{out}");
    assert_eq!(
        out["hits"],
        json!([]),
        "secrets in the kernel's memory: {out}"
    );
}

/// The zygote parses each spawn request before it forks, so the kernel inherits it in its
/// heap: the request must name the workspace and cgroups by descriptor, not by host path.
#[test]
fn the_interpreter_memory_holds_no_host_path() {
    let s = server();
    let data = s.data_dir.display().to_string();
    // The root mount point (outside the data dir, and no secret) is in the same request: the
    // scan must find it, or it proves nothing about the request.
    let out = scan_own_memory(&[(&data, 5), ("/run/pyxis/root", 5)]);
    let hits = out["hits"].as_array().expect("hits");
    assert!(
        hits.iter().any(|h| h[0] == "/run/"),
        "the spawn request was not found at all: {out}"
    );
    assert!(
        hits.iter().all(|h| h[0] == "/run/"),
        "host paths of the data dir in the kernel's memory: {out}"
    );
}

/// Issue 14, point 5: nothing a kernel can read about itself names the host's layout: not
/// the build directory the sandbox library was loaded from (`/proc/self/maps`), not the
/// server's working directory (`sys.path`, the working directory), not the data directory.
/// Every absolute path it shows in its maps, `sys.path`, `sys.argv`, modules' `__file__`,
/// working directory and environment exists inside the sandbox.
#[test]
fn the_kernel_shows_nothing_of_the_host_layout() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import json, os, sys
maps = sorted({l.split(None, 5)[5].strip() for l in open('/proc/self/maps') if len(l.split(None, 5)) == 6})
seen = {
    "maps": maps,
    "sys_path": list(sys.path),
    "argv": list(sys.argv) + list(getattr(sys, "orig_argv", [])),
    "files": sorted({str(getattr(m, "__file__", None) or "") for m in list(sys.modules.values())} - {""}),
    "cwd": [os.getcwd()],
    "environ": sorted("%s=%s" % kv for kv in os.environ.items()),
    "proc_environ": sorted(open('/proc/self/environ', 'rb').read().decode('utf-8', 'replace').split('\0')),
}
paths = set()
for key in ("maps", "sys_path", "argv", "files", "cwd"):
    paths.update(p for p in seen[key] if p.startswith('/'))
for kv in seen["environ"] + seen["proc_environ"]:
    for part in kv.partition('=')[2].split(':'):
        # URLs (the egress proxy's, the package mirror's) split into '//host' parts.
        if part.startswith('/') and not part.startswith('//'):
            paths.add(part)
def inside(p):
    # Anonymous copies show up as "/memfd:NAME (deleted)"; caches the kernel points at in its
    # own /tmp and /workspace may not exist yet; CPython lists its (never present) zip.
    p = p.removesuffix(' (deleted)')
    return (p.startswith(('/memfd:', '/tmp/', '/workspace/')) or os.path.lexists(p)
            or (p.startswith(sys.prefix) or p.startswith(sys.base_prefix)) and p.endswith('.zip'))
missing = sorted(p for p in paths if not inside(p))
print(json.dumps({"seen": seen, "missing": missing}))
"#,
        )
    });
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .display()
        .to_string();
    let host_only = [
        repo.as_str(),
        &s.data_dir.display().to_string(),
        &std::env::current_dir().expect("cwd").display().to_string(),
    ];
    let text = out["seen"].to_string();
    for host in host_only {
        assert!(!text.contains(host), "the kernel sees {host}: {out:#}");
    }
    let maps = out["seen"]["maps"].as_array().expect("maps");
    assert!(
        maps.iter()
            .any(|m| m.as_str().is_some_and(|m| m.contains("libpyxis_sandbox"))),
        "the sandbox library is not mapped at all, or not under its name: {maps:?}"
    );
    assert_eq!(
        out["missing"],
        json!([]),
        "paths of the host's layout: {out:#}"
    );
}

#[test]
fn ipc_objects_are_private_to_a_session() {
    let s = server();
    let a = s.session();
    let key = 0x5eed_0000 + (std::process::id() & 0xffff);
    let created = a.ok(&format!(
        "{SYSCALL_PRELUDE}\nr = sc(29, {key}, 4096, 0o1000 | 0o666)\nprint(r[0] >= 0)"
    ));
    assert_eq!(created, "True\n", "shmget in A");
    let b = s.session();
    let out = attack(s, &b, |b| {
        json_of(
            b,
            &format!(
                "{SYSCALL_PRELUDE}\nbuf = ctypes.create_string_buffer(256)\nprint(json.dumps({{\"shmget\": sc(29, {key}, 0, 0), \"shm_stat_any\": [sc(13 + 0, 0, 0)[0] if False else 0, open('/proc/sysvipc/shm').read().count('\\n') - 1]}}))"
            ),
        )
    });
    assert_eq!(out["shmget"][1], "ENOENT", "{out}");
    assert_eq!(
        out["shm_stat_any"][1], 0,
        "B sees shared memory segments: {out}"
    );
}

#[test]
fn inherited_fds_and_cgroup_paths_show_nothing_of_the_host() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import os, json
fds = {}
for fd in range(0, 1024):
    try:
        fds[fd] = os.readlink('/proc/self/fd/%d' % fd)
    except OSError:
        pass
print(json.dumps({"fds": fds, "cgroup": open('/proc/self/cgroup').read(), "init_fds": sorted(os.listdir('/proc/1/fd')) if os.access('/proc/1/fd', os.R_OK) else None}))
"#,
        )
    });
    for (fd, target) in out["fds"].as_object().unwrap() {
        let t = target.as_str().unwrap();
        let fine = t == "/dev/null"
            || t.starts_with("pipe:")
            || t.starts_with("socket:")
            || t.starts_with("/proc/")
            || t.starts_with("anon_inode:");
        assert!(fine, "unexpected fd {fd} -> {t}: {out}");
    }
    let cgroup = out["cgroup"].as_str().unwrap();
    for line in cgroup.lines() {
        assert!(line.ends_with(":/"), "cgroup path visible: {cgroup}");
    }
}

#[test]
fn etc_is_generated_not_the_hosts() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        v.ok("import os\nprint(sorted(os.listdir('/etc')))\nprint(open('/etc/passwd').read())\nprint(open('/etc/group').read() if os.path.exists('/etc/group') else '')\nprint(open('/etc/resolv.conf').read() if os.path.exists('/etc/resolv.conf') else '')")
    });
    let host = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for user in host.lines().filter_map(|l| l.split(':').next()) {
        if ["root", "nobody"].contains(&user) || user.is_empty() {
            continue;
        }
        assert!(
            !out.contains(&format!("\n{user}:")),
            "host user {user} visible: {out}"
        );
    }
    // No host resolver: there is no network to resolve over anyway.
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for ns in resolv.lines().filter_map(|l| l.strip_prefix("nameserver ")) {
        assert!(
            !out.contains(ns.trim()),
            "host nameserver {ns} visible: {out}"
        );
    }
    for f in ["'shadow'", "'sudoers'", "'ssh'", "'machine-id'"] {
        assert!(!out.contains(f), "/etc has {f}: {out}");
    }
}

#[test]
fn shared_runtime_and_root_are_read_only() {
    // Every session uses the same runtime: a trojaned module there would run in all of them.
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import os, json, errno, sys, sysconfig, numpy
targets = [
    '/evil', '/etc/passwd', '/etc/ld.so.preload', '/usr/bin/evil', '/usr/lib/evil.so',
    os.path.join(sysconfig.get_paths()['purelib'], 'sitecustomize.py'),
    os.path.join(os.path.dirname(numpy.__file__), '__init__.py'),
    os.path.join(sys.prefix, 'evil.pth'),
    '/opt/pyxis/runtime/lib/evil.py', '/dev/evil', '/proc/evil', '/lib/evil',
]
res = {}
for t in targets:
    try:
        with open(t, 'a') as f:
            f.write('\n# pwned\n')
        res[t] = 'written'
    except OSError as e:
        res[t] = errno.errorcode.get(e.errno, str(e.errno))
for d in ['/', '/etc', '/usr', '/opt/pyxis/runtime']:
    try:
        os.chmod(d, 0o777)
        res['chmod ' + d] = 'written'
    except OSError as e:
        res['chmod ' + d] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(res))
"#,
        )
    });
    for (t, r) in out.as_object().unwrap() {
        assert_ne!(r, "written", "{t} writable: {out}");
    }
}

#[test]
fn kill_minus_one_reaches_only_the_own_sandbox() {
    let s = server();
    let a = s.session();
    a.ok("import subprocess\np = subprocess.Popen(['sleep', '600'])");
    let b = s.session();
    let out = attack(s, &b, |b| {
        b.ok("import os, signal, subprocess\nq = subprocess.Popen(['sleep', '600'])\nos.kill(-1, signal.SIGKILL)\nprint(q.wait())")
    });
    // B's own child died; B's kernel did not (kill(-1) spares the caller).
    assert_eq!(out, "-9\n");
    assert_eq!(a.ok("print(p.poll())"), "None\n", "A's process was killed");
}

#[test]
fn interrupt_of_a_cell_that_ignores_it() {
    let s = server();
    let v = s.session();
    v.ok("x = 1");
    let r = attack(s, &v, |v| {
        std::thread::scope(|scope| {
            let cell = scope.spawn(|| {
                v.exec_with(json!({
                    "code": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
                    "timeout_s": 120,
                }))
            });
            std::thread::sleep(Duration::from_secs(1));
            let t = std::time::Instant::now();
            let r = s.post(&format!("/v1/sessions/{}/interrupt", v.id), &json!({}));
            assert!(r.status().is_success(), "interrupt: {}", r.status());
            let r = cell.join().unwrap();
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "took {:?}",
                t.elapsed()
            );
            r
        })
    });
    assert_eq!(r["status"], "killed", "{r:#}");
    assert_eq!(r["state_lost"], true, "{r:#}");
}

#[test]
fn the_sandbox_init_is_a_small_program_whose_proc_files_are_closed() {
    let s = server();
    let v = s.session();
    let out = attack(s, &v, |v| {
        json_of(
            v,
            r#"
import os, json
def attempt(f):
    try:
        f()
        return "allowed"
    except OSError as e:
        return type(e).__name__
tries = {
    "environ": lambda: open('/proc/1/environ', 'rb').read(),
    "exe": lambda: os.readlink('/proc/1/exe'),
    "cwd": lambda: os.readlink('/proc/1/cwd'),
    "fd": lambda: os.listdir('/proc/1/fd'),
    "maps": lambda: open('/proc/1/maps').read(),
    "mem_write": lambda: open('/proc/1/mem', 'r+b').write(b'x'),
}
status = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
print(json.dumps({
    "cmdline": open('/proc/1/cmdline', 'rb').read().decode(),
    "tries": {k: attempt(f) for k, f in tries.items()},
    "pid": os.getpid(),
    "ppid": status["PPid"].strip(),
    "pids": sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
}))
"#,
        )
    });
    // Not a copy of the zygote: the small init program, started without arguments.
    assert_eq!(out["cmdline"], "pyxis-sandbox-init\u{0}", "{out}");
    for (what, result) in out["tries"].as_object().unwrap() {
        assert_eq!(result, "PermissionError", "/proc/1 {what}: {out}");
    }
    // The kernel is pid 2; its parent (the zygote) is outside the namespace.
    assert_eq!(out["pid"], 2, "{out}");
    assert_eq!(out["ppid"], "0", "{out}");
    assert_eq!(out["pids"], serde_json::json!([1, 2]), "{out}");
}
