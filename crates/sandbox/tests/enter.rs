//! Real sandboxes, as root: `spawn` checked from inside, cgroup limits, kill, workspaces.
//!
//! The tests fork and touch global state (cgroups, mounts), so they hold one lock each.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use pyxis_sandbox::{
    spawn, Cgroup, CgroupRoot, Handover, ResourceLimits, Rlimits, SandboxSpec, Spawned, Workspace,
};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next test can still run.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

/// Removes a test's cgroups and workspace even when an assertion fails.
struct Teardown {
    cgroups: Option<CgroupRoot>,
    workspace: Option<Workspace>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(cgroups) = &self.cgroups {
            let _ = cgroups.remove();
        }
        if let Some(workspace) = &self.workspace {
            let _ = workspace.remove();
        }
    }
}

fn test_cgroups() -> CgroupRoot {
    CgroupRoot::detect(&format!("pyxis-test/{}", unique("t"))).expect("cgroup root")
}

const LIMITS: ResourceLimits = ResourceLimits {
    memory_bytes: 512 << 20,
    pids: 64,
    cpu_millicores: 1000,
};

const SANDBOX_UID: u32 = 61_234;

/// Runs `script` with `sh`, in `cgroup` (the shell joins it before anything else).
fn spawn_in(cgroup: &Cgroup, script: &str) -> Child {
    let join: String = cgroup
        .procs_files()
        .iter()
        .map(|f| format!("echo $$ > {}; ", f.display()))
        .collect();
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{join}{script}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

/// The init program, built with these tests.
const INIT_PROGRAM: &str = env!("CARGO_BIN_EXE_pyxis-sandbox-init");

/// What the kernel process (C) sees from inside; one `key=value` per line.
fn inside_checks(port: u16, hostname: &str) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    out.insert("uid", nix::unistd::getuid().to_string());
    out.insert("euid", nix::unistd::geteuid().to_string());
    out.insert("gid", nix::unistd::getgid().to_string());
    out.insert("cap_eff", field("CapEff:"));
    out.insert("cap_prm", field("CapPrm:"));
    out.insert("cap_bnd", field("CapBnd:"));
    out.insert("no_new_privs", field("NoNewPrivs:"));
    out.insert("seccomp", field("Seccomp:"));
    out.insert("pid", nix::unistd::getpid().to_string());
    out.insert("cwd", format!("{:?}", std::env::current_dir().ok()));
    for path in ["/root", "/home", "/sys", "/work", "/var"] {
        out.insert(
            match path {
                "/root" => "root_exists",
                "/home" => "home_exists",
                "/sys" => "sys_exists",
                "/work" => "work_exists",
                _ => "var_exists",
            },
            Path::new(path).exists().to_string(),
        );
    }
    out.insert(
        "workspace_write",
        fs::write("/workspace/hello.txt", "hi").is_ok().to_string(),
    );
    out.insert("tmp_write", fs::write("/tmp/x", "hi").is_ok().to_string());
    out.insert(
        "root_write",
        format!(
            "{:?}",
            fs::write("/evil", "x").map_err(|e| e.raw_os_error())
        ),
    );
    out.insert(
        "usr_write",
        format!(
            "{:?}",
            fs::write("/usr/evil", "x").map_err(|e| e.raw_os_error())
        ),
    );
    out.insert(
        "unshare",
        format!(
            "{:?}",
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        ),
    );
    out.insert(
        "unshare_user",
        format!(
            "{:?}",
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        ),
    );
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    out.insert(
        "netlink",
        format!(
            "{:?}",
            socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::empty(),
                SockProtocol::NetlinkRoute
            )
            .map(drop)
        ),
    );
    out.insert(
        "packet",
        format!(
            "{:?}",
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::empty(),
                None
            )
            .map(drop)
        ),
    );
    out.insert("unix_socket", UnixStream::pair().is_ok().to_string());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    out.insert(
        "connect_host_port",
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .is_ok()
            .to_string(),
    );
    let local = TcpListener::bind("127.0.0.1:0").map(drop);
    out.insert("bind_loopback", local.is_ok().to_string());
    let net_dev = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let interfaces: Vec<&str> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    out.insert("interfaces", interfaces.join(","));
    out.insert(
        "hostname",
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    out.insert(
        "hosts_has_hostname",
        fs::read_to_string("/etc/hosts")
            .unwrap_or_default()
            .contains(hostname)
            .to_string(),
    );
    out.insert(
        "passwd_has_sandbox",
        fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .contains(&format!("sandbox:x:{SANDBOX_UID}:"))
            .to_string(),
    );
    out.insert("alias", format!("{:?}", fs::read_link("/sandbox").ok()));
    let mut dev: Vec<String> = fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dev.sort();
    out.insert("dev", dev.join(","));
    out.insert(
        "dev_null_write",
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .and_then(|mut f| f.write_all(b"x"))
            .is_ok()
            .to_string(),
    );
    out.insert(
        "proc_self_fd",
        fs::read_dir("/proc/self/fd").is_ok().to_string(),
    );
    let mut pids: Vec<String> = fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    out.insert("proc_pids", pids.join(","));
    out.insert(
        "thread",
        std::thread::spawn(|| 7)
            .join()
            .map(|v| v == 7)
            .unwrap_or(false)
            .to_string(),
    );
    out.insert(
        "exec_sh",
        Command::new("/bin/sh")
            .arg("-c")
            .arg("echo $((6*7))")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|e| format!("error {e}")),
    );
    out.insert(
        "init_cmdline",
        format!("{:?}", fs::read("/proc/1/cmdline").ok()),
    );
    out.insert(
        "init_private",
        ["environ", "exe", "mem", "fd", "maps"]
            .iter()
            .filter(|name| {
                let path = format!("/proc/1/{name}");
                fs::read(&path).is_ok()
                    || fs::read_link(&path).is_ok()
                    || fs::read_dir(&path).is_ok()
            })
            .copied()
            .collect::<Vec<_>>()
            .join(","),
    );
    out.insert(
        "own_environ_clean",
        fs::read("/proc/self/environ")
            .map(|e| e.iter().all(|&b| b == 0))
            .unwrap_or(false)
            .to_string(),
    );
    let mut fds: Vec<String> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    out.insert("fds", fds.join(","));
    out
}

/// Host resources `spawn` gets as descriptors: the workspace directory and the cgroups.
struct HostFds {
    workspace: fs::File,
    cgroups: Vec<fs::File>,
}

impl HostFds {
    fn open(workspace: &Path, cgroup_procs: &[PathBuf]) -> HostFds {
        let workspace = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(workspace)
            .expect("open workspace");
        let cgroups = cgroup_procs
            .iter()
            .map(|p| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .expect("open cgroup.procs")
            })
            .collect();
        HostFds { workspace, cgroups }
    }

    /// The numbers the zygote gives them in the child: workspace 5, cgroups from 6 on.
    fn spec_numbers(&self) -> (i32, Vec<i32>) {
        (5, (6..).take(self.cgroups.len()).collect())
    }
}

/// The zygote's part, in a forked test process (A): `spawn` the sandbox, report
/// `pid <kernel> <init>` and `ok` (or `spawn-error <message>`), wait for both processes and
/// exit with the kernel's status (128 + signal if killed), or 99 if the init did not exit 0.
fn zygote_main(spec: &SandboxSpec, sock: RawFd, report: RawFd, host: &HostFds, port: u16) -> ! {
    let write_report = |line: String| {
        // SAFETY: plain syscall on an fd number this process owns.
        unsafe { libc::write(report, line.as_ptr().cast(), line.len()) };
    };
    let mut fds = vec![sock, host.workspace.as_raw_fd()];
    fds.extend(host.cgroups.iter().map(AsRawFd::as_raw_fd));
    let handover = Handover {
        fds,
        parent_pidfd: None,
    };
    let spawned =
        pyxis_sandbox::prepare(Path::new(INIT_PROGRAM)).and_then(|()| spawn(spec, &handover));
    let (init, kernel) = match spawned {
        Ok(Spawned::Kernel) => kernel_main(spec, port),
        Ok(Spawned::Caller { init, kernel }) => (Pid::from_raw(init), Pid::from_raw(kernel)),
        Err(err) => {
            write_report(format!("spawn-error {err}\n"));
            // SAFETY: `_exit` skips the test harness's exit handlers in a fork.
            unsafe { libc::_exit(2) }
        }
    };
    write_report(format!("pid {kernel} {init}\nok\n"));
    // SAFETY: only the sandbox may hold the socket and the report pipe now.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let code = match waitpid(kernel, None) {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
        _ => 1,
    };
    let init_ok = matches!(waitpid(init, None), Ok(WaitStatus::Exited(_, 0)));
    // SAFETY: as above.
    unsafe { libc::_exit(if init_ok { code } else { 99 }) }
}

/// In C, the sandboxed kernel: run the checks, send them, leave a daemon behind, wait.
fn kernel_main(spec: &SandboxSpec, port: u16) -> ! {
    let results = inside_checks(port, &spec.hostname);
    // SAFETY: fd 3 is the kernel socket kept by `spawn`, owned by nothing else here.
    let mut kernel = unsafe { UnixStream::from_raw_fd(3) };
    for (key, value) in results {
        let _ = writeln!(kernel, "{key}={value}");
    }
    // A double-forked daemon: it outlives the kernel only as long as the init does.
    let daemon = Command::new("/bin/sh")
        .arg("-c")
        .arg("sleep 600 </dev/null >/dev/null 2>&1 &")
        .status();
    let started = daemon.map(|status| status.success()).unwrap_or(false);
    let _ = writeln!(kernel, "daemon_started={started}");
    let _ = writeln!(kernel, "END");
    // Wait until the parent interrupts us.
    let mut buf = [0u8; 1];
    let _ = kernel.read(&mut buf);
    // SAFETY: `_exit` skips the test harness's exit handlers in a fork.
    unsafe { libc::_exit(0) }
}

fn read_line(stream: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into()),
            Ok(_) if byte[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into()),
            Ok(_) => line.push(byte[0]),
            Err(_) => return None,
        }
    }
}

#[test]
fn spawn_builds_an_isolated_sandbox() {
    let _guard = serial();
    let cgroups = test_cgroups();
    let cgroup = cgroups.create("enter", &LIMITS).expect("cgroup");
    let tmp = tempfile::tempdir().expect("tempdir");
    let workspace = Workspace::create(
        &tmp.path().join("ws"),
        SANDBOX_UID,
        SANDBOX_UID,
        64 << 20,
        10_000,
    )
    .expect("workspace");
    let root_mountpoint = tmp.path().join("root");
    fs::create_dir(&root_mountpoint).expect("mkdir root");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let port = listener.local_addr().expect("addr").port();
    let workspace_path = workspace.path().to_path_buf();
    let host = HostFds::open(&workspace_path, &cgroup.procs_files());
    let (workspace_fd, cgroup_fds) = host.spec_numbers();
    let teardown = Teardown {
        cgroups: Some(cgroups),
        workspace: Some(workspace),
    };

    let spec = SandboxSpec {
        uid: SANDBOX_UID,
        gid: SANDBOX_UID,
        hostname: "pyxis-test".into(),
        cgroup_fds,
        root_mountpoint: root_mountpoint.clone(),
        ro_binds: [
            "/usr",
            "/lib",
            "/lib64",
            "/bin",
            "/sbin",
            "/etc/ld.so.cache",
            "/nonexistent",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
        workspace_fd,
        workspace_aliases: vec!["/sandbox".into(), "/code".into()],
        tmp_bytes: 16 << 20,
        rlimits: Rlimits {
            fsize_bytes: 1 << 30,
            nofile: 1024,
            nproc: 64,
        },
        kernel_fd: 3,
        report_fd: 4,
        loopback: true,
        outlive_kernel: false,
        egress: None,
        setup_timeout_ms: None,
    };

    let (mut parent_sock, child_sock) = UnixStream::pair().expect("socketpair");
    let (report_read, report_write) = nix::unistd::pipe().expect("pipe");

    // SAFETY: the child only runs `spawn` and the checks and ends with `_exit`; the
    // serial lock keeps other tests from forking or holding locks the child needs.
    let a = match unsafe { nix::unistd::fork() }.expect("fork") {
        ForkResult::Child => zygote_main(
            &spec,
            child_sock.as_raw_fd(),
            report_write.as_raw_fd(),
            &host,
            port,
        ),
        ForkResult::Parent { child } => child,
    };
    drop(child_sock);
    drop(report_write);

    let mut report = fs::File::from(report_read);
    let mut report_text = String::new();
    report
        .read_to_string(&mut report_text)
        .expect("read report");
    let (c, b): (i32, i32) = report_text
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .and_then(|p| p.split_once(' '))
        .and_then(|(c, b)| Some((c.parse().ok()?, b.parse().ok()?)))
        .unwrap_or_else(|| panic!("no pid line in report {report_text:?}"));
    // B is not a copy of the test process: it runs the init program.
    assert_eq!(
        fs::read_link(format!("/proc/{b}/exe")).ok(),
        Some(PathBuf::from(INIT_PROGRAM)),
        "B's executable"
    );
    let mut others = report_text.lines().filter(|l| !l.starts_with("pid "));
    assert_eq!(others.next(), Some("ok"), "report: {report_text:?}");
    assert_eq!(others.next(), None, "report: {report_text:?}");

    let mut results = BTreeMap::new();
    while let Some(line) = read_line(&mut parent_sock) {
        if line == "END" {
            break;
        }
        if let Some((key, value)) = line.split_once('=') {
            results.insert(key.to_owned(), value.to_owned());
        }
    }
    let get = |key: &str| results.get(key).map(String::as_str).unwrap_or("<missing>");
    eprintln!("inside: {results:#?}");

    // The host sees B (init), C (the kernel) and C's daemon (a shell, then sleep) in the
    // sandbox's cgroup.
    let usage = cgroup.usage().expect("usage");
    assert!(usage.pids >= 3, "pids in cgroup: {}", usage.pids);

    // Interrupt: SIGINT to C, whose default action ends it; B sees it go and exits 0, and
    // the zygote's stand-in exits with 128 + SIGINT.
    kill(Pid::from_raw(c), Signal::SIGINT).expect("signal C");
    let status = waitpid(a, None).expect("wait A");
    assert_eq!(status, WaitStatus::Exited(a, 128 + libc::SIGINT));
    // B's exit ended the pid namespace, and the daemon with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cgroup.usage().expect("usage").pids > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cgroup.usage().expect("usage").pids, 0, "left in the cgroup");

    let uid = SANDBOX_UID.to_string();
    assert_eq!(get("uid"), uid);
    assert_eq!(get("euid"), uid);
    assert_eq!(get("gid"), uid);
    assert_eq!(get("cap_eff"), "0000000000000000");
    assert_eq!(get("cap_prm"), "0000000000000000");
    assert_eq!(get("cap_bnd"), "0000000000000000");
    assert_eq!(get("no_new_privs"), "1");
    assert_eq!(get("seccomp"), "2");
    assert_eq!(get("pid"), "2");
    assert_eq!(get("cwd"), "Some(\"/workspace\")");
    for key in [
        "root_exists",
        "home_exists",
        "sys_exists",
        "work_exists",
        "var_exists",
    ] {
        assert_eq!(get(key), "false", "{key}");
    }
    assert_eq!(get("workspace_write"), "true");
    assert_eq!(get("tmp_write"), "true");
    assert_eq!(get("root_write"), format!("Err(Some({}))", libc::EROFS));
    assert_eq!(get("usr_write"), format!("Err(Some({}))", libc::EROFS));
    assert_eq!(get("unshare"), "Err(EPERM)");
    assert_eq!(get("unshare_user"), "Err(EPERM)");
    assert_eq!(get("netlink"), "Err(EAFNOSUPPORT)");
    assert_eq!(get("packet"), "Err(EAFNOSUPPORT)");
    assert_eq!(get("unix_socket"), "true");
    assert_eq!(get("connect_host_port"), "false");
    assert_eq!(get("bind_loopback"), "true");
    assert_eq!(get("interfaces"), "lo");
    assert_eq!(get("hostname"), "pyxis-test");
    assert_eq!(get("hosts_has_hostname"), "true");
    assert_eq!(get("passwd_has_sandbox"), "true");
    assert_eq!(get("alias"), "Some(\"/workspace\")");
    assert_eq!(
        get("dev"),
        "fd,full,null,random,shm,stderr,stdin,stdout,urandom,zero"
    );
    assert_eq!(get("dev_null_write"), "true");
    assert_eq!(get("proc_self_fd"), "true");
    assert_eq!(get("proc_pids"), "1,2");
    assert_eq!(get("thread"), "true");
    assert_eq!(get("exec_sh"), "42");
    // 0-2, the kernel socket, and the fd of the read_dir listing them.
    assert_eq!(get("fds"), "0,1,2,3,4");
    assert_eq!(
        get("init_cmdline"),
        format!("{:?}", Some(b"pyxis-sandbox-init\0".to_vec()))
    );
    // What init holds is not the sandbox's to read.
    assert_eq!(get("init_private"), "");
    assert_eq!(get("own_environ_clean"), "true");
    assert_eq!(get("daemon_started"), "true");

    // The file written inside is in the host's workspace, owned by the sandbox uid.
    let written = workspace_path.join("hello.txt");
    assert_eq!(fs::read_to_string(&written).ok().as_deref(), Some("hi"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&written).map(|m| m.uid()).ok(),
        Some(SANDBOX_UID)
    );
    // The new root was only mounted in the sandbox's mount namespace.
    assert_eq!(
        fs::read_dir(&root_mountpoint).map(|d| d.count()).ok(),
        Some(0)
    );

    cgroup.remove().expect("remove cgroup");
    if let Some(workspace) = &teardown.workspace {
        workspace.remove().expect("remove workspace");
    }
    if let Some(cgroups) = &teardown.cgroups {
        cgroups.remove().expect("remove instance cgroup");
    }
}

#[test]
fn spawn_reports_setup_failures() {
    let _guard = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ws = tmp.path().join("ws");
    fs::create_dir(&ws).expect("mkdir");
    let host = HostFds::open(&ws, &[]);
    // The root mount point does not exist: B fails and reports it.
    let spec = SandboxSpec {
        uid: SANDBOX_UID,
        gid: SANDBOX_UID,
        hostname: "x".into(),
        cgroup_fds: Vec::new(),
        root_mountpoint: tmp.path().join("missing"),
        ro_binds: Vec::new(),
        workspace_fd: 5,
        workspace_aliases: Vec::new(),
        tmp_bytes: 1 << 20,
        rlimits: Rlimits {
            fsize_bytes: 1 << 20,
            nofile: 64,
            nproc: 16,
        },
        kernel_fd: 3,
        report_fd: 4,
        loopback: false,
        outlive_kernel: false,
        egress: None,
        setup_timeout_ms: None,
    };
    let (_parent_sock, child_sock) = UnixStream::pair().expect("socketpair");
    let (report_read, report_write) = nix::unistd::pipe().expect("pipe");
    // SAFETY: as in `enter_builds_an_isolated_sandbox`.
    let a = match unsafe { nix::unistd::fork() }.expect("fork") {
        ForkResult::Child => zygote_main(
            &spec,
            child_sock.as_raw_fd(),
            report_write.as_raw_fd(),
            &host,
            0,
        ),
        ForkResult::Parent { child } => child,
    };
    drop(child_sock);
    drop(report_write);
    let mut text = String::new();
    fs::File::from(report_read)
        .read_to_string(&mut text)
        .expect("read report");
    // B reports the failure to `spawn`, which returns it to its caller.
    assert!(
        text.starts_with("spawn-error the sandbox's init: mount tmpfs on"),
        "report: {text:?}"
    );
    assert_eq!(text.lines().count(), 1, "report: {text:?}");
    assert_eq!(waitpid(a, None).ok(), Some(WaitStatus::Exited(a, 2)));
}

#[test]
fn memory_limit_oom_kills() {
    let _guard = serial();
    let cgroups = test_cgroups();
    let limits = ResourceLimits {
        memory_bytes: 32 << 20,
        ..LIMITS
    };
    let teardown = Teardown {
        cgroups: Some(cgroups),
        workspace: None,
    };
    let cgroups = teardown.cgroups.as_ref().expect("set above");
    let cgroup = cgroups.create("oom", &limits).expect("cgroup");
    // Read once first: the counter file stays open, and later reads must see new kills.
    assert_eq!(cgroup.oom_kills().expect("oom_kills"), 0);
    let mut child = spawn_in(&cgroup, "exec dd if=/dev/zero of=/dev/null bs=256M count=1");
    let status = child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "status {status:?}");
    assert!(cgroup.oom_kills().expect("oom_kills") >= 1);
    let usage = cgroup.usage().expect("usage");
    assert!(usage.memory_peak_bytes >= 16 << 20, "{usage:?}");
    cgroup.remove().expect("remove");
    cgroups.remove().expect("remove root");
}

#[test]
fn pids_limit_stops_forks() {
    let _guard = serial();
    let cgroups = test_cgroups();
    let limits = ResourceLimits { pids: 4, ..LIMITS };
    let teardown = Teardown {
        cgroups: Some(cgroups),
        workspace: None,
    };
    let cgroups = teardown.cgroups.as_ref().expect("set above");
    let cgroup = cgroups.create("pids", &limits).expect("cgroup");
    let child = spawn_in(
        &cgroup,
        "for i in 1 2 3 4 5 6 7 8; do sleep 30 2>/dev/null & done",
    );
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(stderr.contains("fork"), "stderr: {stderr}");
    assert!(cgroup.usage().expect("usage").pids <= 4);
    cgroup.remove().expect("remove");
    cgroups.remove().expect("remove root");
}

#[test]
fn kill_and_remove_get_daemons_too() {
    let _guard = serial();
    let cgroups = test_cgroups();
    let teardown = Teardown {
        cgroups: Some(cgroups),
        workspace: None,
    };
    let cgroups = teardown.cgroups.as_ref().expect("set above");
    let cgroup = cgroups.create("kill", &LIMITS).expect("cgroup");
    let mut child = spawn_in(
        &cgroup,
        "(setsid sleep 1000 &); (sleep 1000 &); exec sleep 1000",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while cgroup.usage().expect("usage").pids < 3 {
        assert!(Instant::now() < deadline, "daemons never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    cgroup.kill().expect("kill");
    assert!(child.wait().expect("wait").code().is_none());
    for file in cgroup.procs_files() {
        assert_eq!(fs::read_to_string(&file).expect("procs"), "");
    }
    let dirs: Vec<PathBuf> = cgroup
        .procs_files()
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    cgroup.remove().expect("remove");
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    cgroups.remove().expect("remove root");
}

#[test]
fn cgroup_cleanup_leftovers() {
    let _guard = serial();
    let name = format!("pyxis-test/{}", unique("left"));
    let first = CgroupRoot::detect(&name).expect("root");
    let busy = first.create("busy", &LIMITS).expect("cgroup");
    first.create("idle", &LIMITS).expect("cgroup");
    let mut child = spawn_in(&busy, "exec sleep 1000");
    let deadline = Instant::now() + Duration::from_secs(5);
    while busy.usage().expect("usage").pids < 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    // A new run of the same instance finds and removes both.
    let second = CgroupRoot::detect(&name).expect("root again");
    assert_eq!(second.cleanup_leftovers().expect("cleanup"), 2);
    assert!(child.wait().expect("wait").code().is_none());
    assert_eq!(second.cleanup_leftovers().expect("cleanup again"), 0);
    second.remove().expect("remove root");
}

#[test]
fn workspace_quota_and_cleanup() {
    let _guard = serial();
    let parent = tempfile::tempdir().expect("tempdir");
    let ws = Workspace::create(&parent.path().join("a"), 0, 0, 1 << 20, 100).expect("workspace");
    let mut file = fs::File::create(ws.path().join("big")).expect("create");
    let chunk = vec![7u8; 64 << 10];
    let mut error = None;
    for _ in 0..32 {
        if let Err(err) = file.write_all(&chunk) {
            error = Some(err);
            break;
        }
    }
    assert_eq!(
        error.and_then(|e| e.raw_os_error()),
        Some(libc::ENOSPC),
        "writing 2 MiB into a 1 MiB workspace"
    );
    drop(file);
    let (used, quota) = ws.usage().expect("usage");
    assert_eq!(quota, 1 << 20);
    assert!(used > 0 && used <= quota, "used {used}");

    Workspace::create(&parent.path().join("b"), 0, 0, 1 << 20, 100).expect("workspace");
    fs::create_dir(parent.path().join("plain")).expect("mkdir");
    assert_eq!(
        Workspace::cleanup_leftovers(parent.path()).expect("cleanup"),
        3
    );
    assert_eq!(fs::read_dir(parent.path()).map(|d| d.count()).ok(), Some(0));
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&parent.path().display().to_string()));
    ws.remove().expect("remove after cleanup is a no-op");
}

#[test]
fn probe_reports_this_host() {
    let _guard = serial();
    let report = pyxis_sandbox::probe();
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    eprintln!("{json}");
    assert!(report.root.ok);
    assert_eq!(report.namespaces.len(), 6);
    assert!(report.namespaces.iter().all(|n| n.ok), "{json}");
    assert!(report.cgroup.ok, "{json}");
    assert!(report.cgroup_version.is_some());
    for controller in ["memory", "pids", "cpu"] {
        assert!(report.cgroup_controllers.iter().any(|c| c == controller));
    }
    assert!(report.seccomp.ok, "{json}");
    assert!(report.pivot_root.ok, "{json}");
    assert!(report.all_ok());
}
