//! The init's egress listener, as root with real sandboxes: a connection made inside the
//! sandbox to `127.0.0.1:<port>` arrives at the server's end of the egress channel as a
//! descriptor; nothing else of the sandbox's network changes.
//!
//! The tests fork, so they hold one lock each.

use std::fs;
use std::io::{IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::socket::{recvmsg, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use pyxis_sandbox::{spawn, EgressListener, Handover, Rlimits, SandboxSpec, Spawned};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const INIT_PROGRAM: &str = env!("CARGO_BIN_EXE_pyxis-sandbox-init");
const SANDBOX_UID: u32 = 61_235;
const PORT: u16 = 3128;
/// Connections of the flood: more than the channel holds.
const FLOOD: usize = 600;

fn spec(root: &Path, egress: Option<EgressListener>) -> SandboxSpec {
    SandboxSpec {
        uid: SANDBOX_UID,
        gid: SANDBOX_UID,
        hostname: "pyxis-egress".into(),
        cgroup_fds: Vec::new(),
        root_mountpoint: root.to_path_buf(),
        ro_binds: ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"]
            .iter()
            .map(PathBuf::from)
            .collect(),
        workspace_fd: 5,
        workspace_aliases: Vec::new(),
        tmp_bytes: 1 << 20,
        rlimits: Rlimits {
            fsize_bytes: 1 << 20,
            nofile: 1024,
            nproc: 64,
        },
        kernel_fd: 3,
        report_fd: 4,
        loopback: true,
        egress,
        setup_timeout_ms: None,
        outlive_kernel: false,
    }
}

/// One line from the kernel's socket.
fn line(stream: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The sandboxed kernel (C): answers the test's requests on fd 3, one line each.
fn kernel_main() -> ! {
    // SAFETY: fd 3 is the kernel socket kept by `spawn`, owned by nothing else here.
    let mut control = unsafe { UnixStream::from_raw_fd(3) };
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
    loop {
        let request = line(&mut control);
        let answer = match request.as_str() {
            // Connect, send a greeting, read the server's answer.
            "talk" => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut stream) => {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = stream.write_all(b"hello from inside\n");
                    let mut buf = [0u8; 64];
                    match stream.read(&mut buf) {
                        Ok(n) => format!("read {}", String::from_utf8_lossy(&buf[..n]).trim()),
                        Err(err) => format!("read-error {:?}", err.kind()),
                    }
                }
                Err(err) => format!("connect-error {:?}", err.kind()),
            },
            // Connect and see what becomes of the connection.
            "connect" => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut stream) => {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 8];
                    match stream.read(&mut buf) {
                        Ok(0) => "closed".to_owned(),
                        Ok(_) => "data".to_owned(),
                        Err(err) => format!("read-error {:?}", err.kind()),
                    }
                }
                Err(err) => format!("connect-error {:?}", err.kind()),
            },
            // Many connections at once, kept open; how many the init had to drop.
            "flood" => {
                let streams: Vec<_> = (0..FLOOD)
                    .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
                    .collect();
                std::thread::sleep(Duration::from_millis(500));
                let dropped = streams
                    .iter()
                    .filter(|s| {
                        let _ = s.set_nonblocking(true);
                        let mut buf = [0u8; 1];
                        matches!((&**s).read(&mut buf), Ok(0))
                            || matches!((&**s).read(&mut buf), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
                    })
                    .count();
                format!("connected {} dropped {dropped}", streams.len())
            }
            // The port is the init's: the sandbox cannot take it.
            "bind" => match std::net::TcpListener::bind(addr) {
                Ok(_) => "bound".to_owned(),
                Err(err) => format!("bind-error {:?}", err.kind()),
            },
            "interfaces" => fs::read_to_string("/proc/net/dev")
                .unwrap_or_default()
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(","),
            _ => {
                // SAFETY: `_exit` skips the test harness's exit handlers in a fork.
                unsafe { libc::_exit(0) }
            }
        };
        let _ = writeln!(control, "{answer}");
    }
}

/// A running sandbox: its test-side kernel socket, the server end of the egress channel,
/// and the forked "zygote" that waits for it.
struct Running {
    control: UnixStream,
    zygote: Pid,
    _tmp: tempfile::TempDir,
}

impl Running {
    fn ask(&mut self, request: &str) -> String {
        writeln!(self.control, "{request}").expect("send request");
        line(&mut self.control)
    }

    /// Ends the kernel; returns the zygote stand-in's exit code.
    fn finish(mut self) -> i32 {
        let _ = writeln!(self.control, "exit");
        match waitpid(self.zygote, None) {
            Ok(WaitStatus::Exited(_, code)) => code,
            other => panic!("zygote: {other:?}"),
        }
    }
}

/// Spawns a sandbox from a forked child, as the zygote would. `channel` is the init's end of
/// the egress channel, if any.
fn start(channel: Option<&OwnedFd>) -> Running {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let ws = tmp.path().join("ws");
    fs::create_dir(&root).expect("mkdir root");
    fs::create_dir(&ws).expect("mkdir ws");
    std::os::unix::fs::chown(&ws, Some(SANDBOX_UID), Some(SANDBOX_UID)).expect("chown");
    let workspace = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&ws)
        .expect("open workspace");
    let egress = channel.map(|_| EgressListener {
        channel_fd: 6,
        port: PORT,
    });
    let spec = spec(&root, egress);
    let (control, theirs) = UnixStream::pair().expect("socketpair");
    // SAFETY: the child only spawns the sandbox and waits, ending with `_exit`; the lock
    // keeps other tests of this binary from forking at the same time.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        ForkResult::Child => {
            let mut fds = vec![theirs.as_raw_fd(), workspace.as_raw_fd()];
            fds.extend(channel.map(AsRawFd::as_raw_fd));
            let handover = Handover {
                fds,
                parent_pidfd: None,
            };
            let spawned = pyxis_sandbox::prepare(Path::new(INIT_PROGRAM))
                .and_then(|()| spawn(&spec, &handover));
            let (init, kernel) = match spawned {
                Ok(Spawned::Kernel) => kernel_main(),
                Ok(Spawned::Caller { init, kernel }) => (init, kernel),
                Err(err) => {
                    eprintln!("spawn: {err}");
                    // SAFETY: `_exit` skips the test harness's exit handlers in a fork.
                    unsafe { libc::_exit(2) }
                }
            };
            // SAFETY: only the sandbox may hold the sockets now.
            unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
            let _ = waitpid(Pid::from_raw(kernel), None);
            let init_ok = matches!(
                waitpid(Pid::from_raw(init), None),
                Ok(WaitStatus::Exited(_, 0))
            );
            // SAFETY: as above.
            unsafe { libc::_exit(if init_ok { 0 } else { 99 }) }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            Running {
                control,
                zygote: child,
                _tmp: tmp,
            }
        }
    }
}

/// Receives one descriptor from the server end of the egress channel.
fn receive(server: &OwnedFd) -> OwnedFd {
    let mut data = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        server.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    for cmsg in msg.cmsgs().expect("cmsgs") {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
            assert_eq!(fds.len(), 1, "one connection per message");
            // SAFETY: the descriptor was just received and is owned by nothing else.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("a message without a descriptor");
}

/// Whether a descriptor waits on `server` (within a second).
fn waiting(server: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(server.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(1000u16)), Ok(1))
}

fn channel() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair")
}

#[test]
fn connections_arrive_as_descriptors() {
    let _guard = serial();
    let (server, init_end) = channel();
    let mut sandbox = start(Some(&init_end));
    drop(init_end);
    assert_eq!(sandbox.ask("interfaces"), "lo");
    assert_eq!(sandbox.ask("bind"), "bind-error AddrInUse");

    // The server's side runs beside the sandbox's request.
    let serve = std::thread::spawn(move || {
        let stream = TcpStream::from(receive(&server));
        let local = stream.local_addr().expect("local addr");
        let mut reader = std::io::BufReader::new(&stream);
        let mut greeting = String::new();
        std::io::BufRead::read_line(&mut reader, &mut greeting).expect("read greeting");
        (&stream)
            .write_all(b"hello from the server")
            .expect("answer");
        (local, greeting, server)
    });
    assert_eq!(sandbox.ask("talk"), "read hello from the server");
    let (local, greeting, server) = serve.join().expect("server thread");
    // The socket is the sandbox's own loopback connection, not a relay of the init's.
    assert_eq!(local, SocketAddr::from(([127, 0, 0, 1], PORT)));
    assert_eq!(greeting, "hello from inside\n");

    // The server closes its end: the next connection is dropped, and the port closes.
    drop(server);
    assert_eq!(sandbox.ask("connect"), "closed");
    assert_eq!(sandbox.ask("connect"), "connect-error ConnectionRefused");
    assert_eq!(sandbox.finish(), 0, "the init exits cleanly");
}

#[test]
fn a_server_that_does_not_read_never_blocks_the_init() {
    let _guard = serial();
    let (server, init_end) = channel();
    let mut sandbox = start(Some(&init_end));
    drop(init_end);
    // Nobody reads `server`: once the channel is full the init closes what it cannot pass,
    // and keeps accepting.
    let flood = sandbox.ask("flood");
    let dropped: usize = flood
        .strip_prefix(&format!("connected {FLOOD} dropped "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("flood: {flood}"));
    assert!(dropped > 0 && dropped < FLOOD, "flood: {flood}");
    // What was passed still arrives intact, and later connections pass again.
    let first = TcpStream::from(receive(&server));
    assert_eq!(
        first.local_addr().expect("addr"),
        SocketAddr::from(([127, 0, 0, 1], PORT))
    );
    let mut held = vec![first];
    while waiting(&server) {
        held.push(TcpStream::from(receive(&server)));
    }
    eprintln!("flood: {flood}, received {}", held.len());
    assert_eq!(
        held.len(),
        FLOOD - dropped,
        "every connection passed arrives"
    );
    let drain = std::thread::spawn(move || {
        // The conversation after the flood.
        let stream = TcpStream::from(receive(&server));
        let mut buf = [0u8; 64];
        let _ = (&stream).read(&mut buf);
        (&stream).write_all(b"still here").expect("answer");
        held
    });
    assert_eq!(sandbox.ask("talk"), "read still here");
    drop(drain.join().expect("drain"));
    assert_eq!(sandbox.finish(), 0);
}

#[test]
fn without_egress_the_port_is_closed() {
    let _guard = serial();
    let mut sandbox = start(None);
    assert_eq!(sandbox.ask("connect"), "connect-error ConnectionRefused");
    assert_eq!(sandbox.ask("bind"), "bound");
    assert_eq!(sandbox.finish(), 0);
}
