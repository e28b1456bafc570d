//! What a sandbox must not see or reach — checked from inside, in real
//! sessions.

use pyxis_tests::TestServer;
use serde_json::Value;

#[test]
fn ten_parallel_sessions_do_not_see_each_other() {
    let s = TestServer::shared();
    let sessions: Vec<_> = (0..10).map(|_| s.session()).collect();
    std::thread::scope(|scope| {
        for (i, sess) in sessions.iter().enumerate() {
            scope.spawn(move || {
                sess.ok(&format!(
                    "import subprocess, os\nsecret = 'value-{i}'\n\
                     open('/workspace/mine-{i}.txt', 'w').write(secret)\n\
                     p = subprocess.Popen(['sleep', '{}'])",
                    600 + i
                ));
            });
        }
    });
    std::thread::scope(|scope| {
        for (i, sess) in sessions.iter().enumerate() {
            scope.spawn(move || {
                let out = sess.ok(
                    "import os\n\
                     print(sorted(os.listdir('/workspace')))\n\
                     cmds = []\n\
                     for p in os.listdir('/proc'):\n\
                     \x20   if p.isdigit():\n\
                     \x20       try: cmds.append(open(f'/proc/{p}/cmdline','rb').read().replace(b'\\0', b' ').decode().strip())\n\
                     \x20       except OSError: pass\n\
                     print([c for c in cmds if c.startswith('sleep')])\n\
                     print(secret)",
                );
                let lines: Vec<&str> = out.lines().collect();
                assert_eq!(lines[0], format!("['mine-{i}.txt']"), "only its own file");
                assert_eq!(lines[1], format!("['sleep {}']", 600 + i), "only its own process");
                assert_eq!(lines[2], format!("value-{i}"));
            });
        }
    });
}

#[test]
fn there_is_no_network_but_loopback() {
    let s = TestServer::shared();
    let sess = s.session();
    let port = s.base.rsplit(':').next().unwrap();
    let out = sess.ok(&format!(
        "import socket\n\
         print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n\
         for host, port in [('127.0.0.1', {port}), ('::1', {port}), ('127.0.0.1', 22)]:\n\
         \x20   try:\n\
         \x20       socket.create_connection((host, port), timeout=3).close()\n\
         \x20       print('connected', host, port)\n\
         \x20   except OSError as e:\n\
         \x20       print('refused', type(e).__name__)\n"
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "['lo']", "only the loopback interface");
    assert!(
        lines[1..].iter().all(|l| l.starts_with("refused")),
        "the server's port and host loopback services are unreachable: {out}"
    );
    // Raw and netlink sockets are refused.
    let v = sess.exec("import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)");
    assert_eq!(v["status"], "error", "{v:#}");
    let v = sess
        .exec("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)");
    assert_eq!(v["status"], "error", "{v:#}");
}

#[test]
fn host_paths_token_and_environment_are_invisible() {
    let s = TestServer::shared();
    let sess = s.session();
    let data_dir = s.data_dir.display().to_string();
    let out = sess.ok(&format!(
        "import os\n\
         for p in ['/root', '/sys', '/var/lib/pyxis', {data_dir:?}, {token:?}, '/etc/shadow']:\n\
         \x20   print(p == {data_dir:?} and 'DATA' or p == {token:?} and 'TOKEN' or p, os.path.exists(p))\n\
         home = sorted(os.listdir('/home')) if os.path.exists('/home') else []\n\
         print('host-home', home not in ([], ['user']) or (home == ['user'] and not os.path.samefile('/home/user', '/workspace')))\n\
         env = dict(os.environ)\n\
         print('secret-in-env', any('s3cr3t' in v for v in env.values()), any(k.startswith('PYXIS') for k in env))\n\
         blob = b''\n\
         for p in os.listdir('/proc'):\n\
         \x20   if p.isdigit():\n\
         \x20       try: blob += open(f'/proc/{{p}}/environ', 'rb').read()\n\
         \x20       except OSError: pass\n\
         print('secret-in-proc', b's3cr3t' in blob or {tok:?}.encode() in blob)\n\
         mounts = open('/proc/self/mountinfo').read()\n\
         print('data-dir-in-mounts', {data_dir:?} in mounts)\n\
         print('uid', os.getuid(), 'euid', os.geteuid())\n",
        token = format!("{}/token", data_dir),
        tok = s.token,
    ));
    for line in out.lines().take(7) {
        assert!(
            line.ends_with("False"),
            "visible from inside: {line}\n{out}"
        );
    }
    assert!(out.contains("secret-in-env False False"), "{out}");
    assert!(out.contains("secret-in-proc False"), "{out}");
    let uid_line = out.lines().find(|l| l.starts_with("uid")).unwrap();
    let uid: u32 = uid_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        uid >= s.uid_base,
        "runs as an unprivileged sandbox uid: {uid_line}"
    );
    let v: Value = sess.exec("open('/usr/evil', 'w')");
    assert_eq!(v["status"], "error", "the root filesystem is read-only");
    let v: Value = sess.exec("import os\nos.setuid(0)");
    assert_eq!(v["error"]["name"], "PermissionError");
}
