//! Every raw syscall and every `unsafe` block of the crate, behind safe wrappers.
//!
//! The rest of the crate uses `nix` where it offers a safe API and these functions where it
//! does not (`close_range`, `mount_setattr`, `open_tree`, `move_mount`, `PR_CAPBSET_DROP`, the interface-flags ioctl,
//! `_exit`, `fork`, and the C ABI's raw pointers).

use std::ffi::{c_char, c_int, c_uint, c_ulong, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// `AT_RECURSIVE` from `linux/fcntl.h`: apply `mount_setattr` to the whole subtree.
const AT_RECURSIVE: c_uint = 0x8000;
/// `MOUNT_ATTR_RDONLY` from `linux/mount.h`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_NOSUID` from `linux/mount.h`.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV` from `linux/mount.h`.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

/// The result of a raw call that returns -1 and sets `errno` on failure: the value, or that
/// `errno` as an [`io::Error`]. Call it right after the call, before anything else can
/// change `errno`.
fn cvt<T: Into<i64>>(rc: T) -> io::Result<i64> {
    let rc = rc.into();
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `struct mount_attr` from `linux/mount.h` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Result of [`fork`].
#[derive(Debug, Clone, Copy)]
pub enum Forked {
    /// In the parent; the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// Number of threads of the calling process (entries of `/proc/self/task`).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork(2)`, refused unless the calling process has exactly one thread.
pub fn fork() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "fork needs a single-threaded process, this one has {threads} threads"
        )));
    }
    // SAFETY: the process has a single thread (checked just above, and only this thread could
    // start another), so the child cannot inherit a lock held by a thread that does not exist
    // in it; any code may run in the child.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Moves the environment strings that live in the process's initial environment block (the
/// one `/proc/<pid>/environ` shows) to the heap, then zeroes that block. `getenv` and
/// `environ` keep working; `/proc/<pid>/environ` shows nothing of what the process inherited.
/// Must run single-threaded (nothing may read `environ` meanwhile).
pub fn scrub_initial_environ() -> io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let (start, end) = env_block_bounds(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat"))?;
    if start == 0 || end <= start {
        return Ok(());
    }
    extern "C" {
        static mut environ: *mut *mut c_char;
    }
    // SAFETY: single-threaded (documented requirement), so nothing reads or changes `environ`
    // while we walk it. Each entry is a valid NUL-terminated string; entries that point into
    // [start, end) are replaced by heap copies (`strdup`, never freed: they are the new
    // environment), so after that no live pointer refers to the block, and the block itself is
    // the process's own writable memory reported by the kernel, which we zero.
    unsafe {
        let mut entry = std::ptr::addr_of_mut!(environ).read();
        while !entry.is_null() && !(*entry).is_null() {
            let addr = *entry as usize;
            if (start..end).contains(&addr) {
                let copy = libc::strdup(*entry);
                if copy.is_null() {
                    return Err(io::Error::from(io::ErrorKind::OutOfMemory));
                }
                *entry = copy;
            }
            entry = entry.add(1);
        }
        std::ptr::write_bytes(start as *mut u8, 0, end - start);
    }
    Ok(())
}

/// `env_start` and `env_end` (fields 50 and 51) of a `/proc/<pid>/stat` line.
fn env_block_bounds(stat: &str) -> Option<(usize, usize)> {
    // The command name (field 2) may hold spaces and parentheses: split after its last `)`.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let start = fields.get(50 - 3)?.parse().ok()?;
    let end = fields.get(51 - 3)?.parse().ok()?;
    Some((start, end))
}

/// `_exit(2)`: ends the process at once, without atexit handlers or stdio flushing, which
/// belong to the process we were forked from (the Python zygote).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and cannot fail; skipping destructors is the point.
    unsafe { libc::_exit(code) }
}

/// `close_range(2)` over every fd except those in `keep`.
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<c_uint> = keep
        .iter()
        .filter_map(|&fd| c_uint::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first: c_uint = 0;
    for fd in keep {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd.saturating_add(1);
    }
    if first < c_uint::MAX {
        close_range(first, c_uint::MAX)?;
    }
    Ok(())
}

fn close_range(first: c_uint, last: c_uint) -> io::Result<()> {
    // SAFETY: close_range takes plain integers; closing fds we do not own is the caller's
    // stated intent (every Rust object owning one of them is leaked or forgotten by then).
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as c_uint) }).map(drop)
}

/// Writes all of `data` to the raw fd `fd`, which the caller does not own as a Rust object
/// (the report fd handed over by the zygote).
pub fn write_all_raw(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a valid slice; `write` only reads `data.len()` bytes of it. Writing
        // to an fd not owned by any Rust object cannot invalidate one.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        data = &data[n..];
    }
    Ok(())
}

/// Closes the raw fd `fd`, which no Rust object owns.
pub fn close_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: integer argument; the fd was handed over as a number and is owned by no Rust
    // object that could later use or close it again.
    cvt(unsafe { libc::close(fd) }).map(drop)
}

/// Resets `signal` to its default action. For `SIGCHLD` this matters beyond a caller's
/// handler: an inherited `SIG_IGN` would make the kernel reap children itself and change
/// what `waitpid` sees.
pub fn default_action(signal: nix::sys::signal::Signal) -> io::Result<()> {
    // SAFETY: installing SIG_DFL runs no handler code, so no signal-safety concern arises.
    unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Whether `fd` (such as a pidfd, readable once its process has exited) is readable now.
pub fn fd_readable_now(fd: RawFd) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`, and its count; a zero timeout never blocks.
    Ok(cvt(unsafe { libc::poll(&mut pollfd, 1, 0) })? > 0)
}

/// Copies of `fds`, close-on-exec, numbered above every target of `moves` (and above 2), so
/// that `dup2`ing them onto those targets in turn clobbers none of them.
fn park_above_targets(moves: &[(RawFd, RawFd)], fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    use nix::fcntl::{fcntl, FcntlArg};
    let above = moves.iter().map(|&(_, to)| to).max().unwrap_or(2).max(2) + 1;
    fds.iter()
        .map(|&fd| {
            let high = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(above))?;
            // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(high) })
        })
        .collect()
}

/// `/dev/null`, open for reading and writing.
fn open_dev_null() -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
}

/// Moves each `(from, to)` descriptor to the number `to` and puts `/dev/null` on 0, 1 and 2.
/// The `from` descriptors are closed, whatever their numbers (they may be among the `to`
/// ones); the `to` ones do not close on exec. For a process that owns these numbers as raw
/// integers only (a fork child about to become a sandbox).
pub fn move_fds(moves: &[(RawFd, RawFd)]) -> io::Result<()> {
    let sources: Vec<RawFd> = moves.iter().map(|&(from, _)| from).collect();
    let parked = park_above_targets(moves, &sources)?;
    for &from in &sources {
        close_raw(from)?;
    }
    let null = open_dev_null()?.into_raw_fd();
    // `null` is itself one of 0 to 2 if the caller had that one closed.
    for fd in (0..3).filter(|&fd| fd != null) {
        nix::unistd::dup2(null, fd)?;
    }
    if null > 2 {
        close_raw(null)?;
    }
    for (high, &(_, to)) in parked.iter().zip(moves) {
        nix::unistd::dup2(high.as_raw_fd(), to)?;
    }
    Ok(())
}

/// `prctl(PR_CAPBSET_DROP, cap)`.
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as c_ulong, 0, 0, 0) }).map(drop)
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
pub fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
            0,
            0,
            0,
        )
    })
    .map(drop)
}

/// `mount_setattr(path, AT_RECURSIVE, {attr_set})`: set mount attributes on a whole subtree
/// (a recursive bind's submounts included, which `MS_REMOUNT` cannot do).
pub fn mount_setattr_recursive(path: &Path, attr_set: u64) -> io::Result<()> {
    let cpath = path_cstring(path)?;
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `cpath` is a valid NUL-terminated string and `attr` a valid `mount_attr` whose
    // size is passed; the kernel only reads both during the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// `OPEN_TREE_CLONE` from `linux/mount.h`: a detached copy of the mount, not the mount itself.
const OPEN_TREE_CLONE: c_uint = 1;
/// `MOVE_MOUNT_F_EMPTY_PATH` from `linux/mount.h`: the source is the fd itself.
const MOVE_MOUNT_F_EMPTY_PATH: c_uint = 0x4;

/// Replaces the open directory `fd` with a detached recursive copy of its mount tree
/// (`open_tree(fd, "", OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH)`), under the same fd
/// number. Unlike a path or a plain fd, a detached tree can be attached in a mount namespace
/// created afterwards.
pub fn detach_tree_in_place(fd: RawFd) -> io::Result<()> {
    // SAFETY: the path is a valid empty C string; the flags ask for a new fd, which is
    // owned here until it is moved onto `fd` and closed.
    let tree = cvt(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd,
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | AT_RECURSIVE
                | libc::AT_EMPTY_PATH as c_uint
                | libc::O_CLOEXEC as c_uint,
        )
    })?;
    let tree = RawFd::try_from(tree).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: both are plain fd numbers: `tree` was just opened and `fd` is the caller's.
    let moved = cvt(unsafe { libc::dup3(tree, fd, libc::O_CLOEXEC) });
    close_raw(tree)?;
    moved.map(drop)
}

/// Attaches the detached mount tree `fd` (see [`detach_tree_in_place`]) at `target`.
pub fn attach_tree(fd: RawFd, target: &Path) -> io::Result<()> {
    let ctarget = path_cstring(target)?;
    // SAFETY: both strings are valid and NUL-terminated; the kernel only reads them.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            ctarget.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Sets `IFF_UP` on the network interface `name` (`SIOCGIFFLAGS` + `SIOCSIFFLAGS`).
pub fn set_interface_up(name: &str) -> io::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: `ifreq` is a plain C struct for which all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as c_char;
    }
    // SAFETY: `sock` is an open socket and `req` a valid `ifreq` the kernel fills in.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS initialised the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above; the kernel only reads `req`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// What [`succeeds_in_child`] tries.
#[derive(Debug)]
pub enum ChildProbe {
    /// `unshare(flags)`.
    Unshare(c_int),
    /// In a new mount namespace: mount a tmpfs on `dir`, create `dir/old`, `pivot_root`.
    PivotRoot {
        /// An existing empty directory.
        dir: CString,
        /// `dir` + "/old".
        old: CString,
    },
}

/// Runs `probe` in a forked child and says whether it succeeded. The child runs only raw,
/// async-signal-safe syscalls, so this is sound in a multi-threaded process.
pub fn succeeds_in_child(probe: &ChildProbe) -> io::Result<bool> {
    // SAFETY: the child only makes raw syscalls (no allocation, no locks) and `_exit`s, which
    // is async-signal-safe and therefore sound after fork in a multi-threaded process.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            let ok = match probe {
                // SAFETY: integer argument only.
                ChildProbe::Unshare(flags) => unsafe { libc::unshare(*flags) == 0 },
                // SAFETY: all pointers are valid NUL-terminated strings or NULL, as the
                // syscalls accept; this child's mount namespace is private to it.
                ChildProbe::PivotRoot { dir, old } => unsafe {
                    libc::unshare(libc::CLONE_NEWNS) == 0
                        && libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) == 0
                        && libc::mount(
                            c"tmpfs".as_ptr(),
                            dir.as_ptr(),
                            c"tmpfs".as_ptr(),
                            0,
                            std::ptr::null(),
                        ) == 0
                        && libc::mkdir(old.as_ptr(), 0o700) == 0
                        && libc::syscall(libc::SYS_pivot_root, dir.as_ptr(), old.as_ptr()) == 0
                },
            };
            exit_now(if ok { 0 } else { 1 })
        }
        nix::unistd::ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code == 0),
                Ok(WaitStatus::Signaled(..)) => return Ok(false),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        },
    }
}

/// The `len` bytes at `ptr`.
///
/// # Safety
///
/// `ptr` must be valid for reads of `len` bytes for the lifetime `'a` (or `len` must be 0).
pub unsafe fn bytes_from_raw<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

/// Wraps `fd`, a descriptor this process owns as a number only (inherited at a fixed
/// number), as a [`std::fs::File`] that closes it when dropped.
pub fn file_from_raw(fd: RawFd) -> std::fs::File {
    // SAFETY: the callers pass inherited fixed numbers that no other object wraps.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// Wraps `fd`, a descriptor a syscall just returned to this process, as an [`OwnedFd`].
pub fn owned_from_raw(fd: RawFd) -> OwnedFd {
    // SAFETY: the callers pass a descriptor fresh from a syscall, owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0 as c_uint) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setns(fd, nstype)`: `fd` is a namespace file or a pidfd (then `nstype` may name several
/// namespaces, all joined at once).
pub fn setns(fd: RawFd, nstype: c_int) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// What the child of [`start_program_in_new_pid_namespace`] needs, prepared by the parent:
/// the child shares the parent's memory and may only make raw syscalls.
#[repr(C)]
struct ProgramStart {
    program: RawFd,
    moves: *const (RawFd, RawFd),
    moves_len: usize,
    argv: *const *const c_char,
    envp: *const *const c_char,
    /// Set by the child when a step fails (the parent reads it after the child is gone).
    errno: c_int,
}

/// Size of the child's stack: it runs a few syscalls.
const PROGRAM_START_STACK: usize = 64 * 1024;

/// Starts `program` (an open executable, `O_PATH` is enough) as pid 1 of a new pid
/// namespace, without copying this process: `clone(CLONE_VM | CLONE_VFORK | CLONE_NEWPID)`,
/// then in the child `dup2` for each `(from, to)` of `moves` (after `/dev/null` on 0 to 2)
/// and `execveat`, with an empty environment. Returns once the child has executed the
/// program (or failed to, which is returned as the error).
///
/// The program starts with every signal blocked; signals this process ignores stay ignored.
pub fn start_program_in_new_pid_namespace(
    program: RawFd,
    moves: &[(RawFd, RawFd)],
) -> io::Result<Pid> {
    // Every source, /dev/null and the program itself (its number may be a target too) are
    // parked above the targets; the parked copies close on exec.
    let null = open_dev_null()?;
    let mut sources: Vec<RawFd> = moves.iter().map(|&(from, _)| from).collect();
    sources.extend([null.as_raw_fd(), program]);
    let parked = park_above_targets(moves, &sources)?;
    let [.., null_high, program] = parked.as_slice() else {
        unreachable!("two descriptors were just added")
    };
    let (null_high, program) = (null_high.as_raw_fd(), program.as_raw_fd());
    let mut plan: Vec<(RawFd, RawFd)> = (0..3).map(|fd| (null_high, fd)).collect();
    plan.extend(
        parked
            .iter()
            .zip(moves)
            .map(|(high, &(_, to))| (high.as_raw_fd(), to)),
    );
    let name = c"pyxis-sandbox-init";
    let argv: [*const c_char; 2] = [name.as_ptr(), std::ptr::null()];
    let envp: [*const c_char; 1] = [std::ptr::null()];
    let mut start = ProgramStart {
        program,
        moves: plan.as_ptr(),
        moves_len: plan.len(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        errno: 0,
    };
    let mut stack = vec![0u8; PROGRAM_START_STACK];

    extern "C" fn child(arg: *mut libc::c_void) -> c_int {
        // SAFETY: `arg` is the parent's `ProgramStart`, alive and not otherwise accessed
        // until this child has executed the program or exited (CLONE_VFORK). Its pointers
        // are valid for the lengths given. Only raw syscalls follow: no allocation, no lock.
        unsafe {
            let start = &mut *arg.cast::<ProgramStart>();
            for i in 0..start.moves_len {
                let (from, to) = *start.moves.add(i);
                if libc::dup2(from, to) < 0 {
                    start.errno = *libc::__errno_location();
                    libc::_exit(127);
                }
            }
            libc::syscall(
                libc::SYS_execveat,
                start.program,
                c"".as_ptr(),
                start.argv,
                start.envp,
                libc::AT_EMPTY_PATH,
            );
            start.errno = *libc::__errno_location();
            libc::_exit(127)
        }
    }

    let all = nix::sys::signal::SigSet::all();
    let mut old = nix::sys::signal::SigSet::empty();
    // Blocked so that no handler of this process runs in the child, on our memory.
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&all),
        Some(&mut old),
    )?;
    // The stack grows down: pass its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: `child` runs on its own stack (`stack`, alive until clone returns, which with
    // CLONE_VFORK is after the child executed the program or exited) and only touches
    // `start`, as described there.
    let pid = unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_NEWPID | libc::SIGCHLD,
            std::ptr::addr_of_mut!(start).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    drop(parked);
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: the child is gone from our memory; a volatile read sees what it wrote.
    let errno = unsafe { std::ptr::addr_of!(start.errno).read_volatile() };
    if errno != 0 {
        let _ = waitpid(Pid::from_raw(pid), None);
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(Pid::from_raw(pid))
}

/// What the child of [`private_mount_namespace`] reports to the parent, in shared memory.
#[repr(C)]
struct NamespaceCopy {
    /// The namespace's descriptor, in the shared descriptor table (or -1).
    fd: c_int,
    /// Set by the child when a step fails.
    errno: c_int,
}

/// A new mount namespace, a copy of the caller's in which every mount is private: later
/// mounts and unmounts of the caller's namespace do not reach it. Returns its descriptor
/// (`O_CLOEXEC`); the namespace lives as long as some descriptor of it is open.
///
/// Made without copying this process: `clone(CLONE_VM | CLONE_VFORK | CLONE_FILES |
/// CLONE_NEWNS)`, whose child makes the mounts private, opens `/proc/self/ns/mnt` into the
/// shared descriptor table and exits. Safe to call from a multi-threaded process (the child
/// makes raw syscalls only).
pub fn private_mount_namespace() -> io::Result<OwnedFd> {
    let mut copy = NamespaceCopy { fd: -1, errno: 0 };
    let mut stack = vec![0u8; PROGRAM_START_STACK];

    extern "C" fn child(arg: *mut libc::c_void) -> c_int {
        // SAFETY: `arg` is the parent's `NamespaceCopy`, alive and not otherwise accessed
        // until this child has exited (CLONE_VFORK). The strings are valid and
        // NUL-terminated. Only raw syscalls follow: no allocation, no lock.
        unsafe {
            let copy = &mut *arg.cast::<NamespaceCopy>();
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) < 0
            {
                copy.errno = *libc::__errno_location();
                libc::_exit(127);
            }
            let fd = libc::open(
                c"/proc/self/ns/mnt".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                copy.errno = *libc::__errno_location();
                libc::_exit(127);
            }
            copy.fd = fd;
            libc::_exit(0)
        }
    }

    let all = nix::sys::signal::SigSet::all();
    let mut old = nix::sys::signal::SigSet::empty();
    // Blocked so that no handler of this process runs in the child, on our memory.
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&all),
        Some(&mut old),
    )?;
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: `child` runs on its own stack (`stack`, alive until clone returns, which with
    // CLONE_VFORK is after the child exited) and only touches `copy`, as described there.
    // With CLONE_FILES the descriptor it opens is ours.
    let pid = unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM
                | libc::CLONE_VFORK
                | libc::CLONE_FILES
                | libc::CLONE_NEWNS
                | libc::SIGCHLD,
            std::ptr::addr_of_mut!(copy).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    if pid < 0 {
        return Err(clone_error);
    }
    let _ = waitpid(Pid::from_raw(pid), None);
    // SAFETY: the child is gone from our memory; volatile reads see what it wrote.
    let (fd, errno) = unsafe {
        (
            std::ptr::addr_of!(copy.fd).read_volatile(),
            std::ptr::addr_of!(copy.errno).read_volatile(),
        )
    };
    if errno != 0 || fd < 0 {
        return Err(io::Error::from_raw_os_error(if errno != 0 {
            errno
        } else {
            libc::EBADF
        }));
    }
    Ok(owned_from_raw(fd))
}

/// The `len` ints at `ptr`.
///
/// # Safety
///
/// `ptr` must be valid for reads of `len` ints for the lifetime `'a` (or `len` must be 0).
pub unsafe fn ints_from_raw<'a>(ptr: *const c_int, len: usize) -> &'a [c_int] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Writes `msg` into the C buffer `buf` of `len` bytes, truncated and NUL-terminated.
///
/// # Safety
///
/// `buf` must be NULL or valid for writes of `len` bytes.
pub unsafe fn write_c_message(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let mut n = msg.len().min(len - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller guarantees `len` writable bytes at `buf`; we write `n + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

/// The path in the NUL-terminated string `ptr` (empty for NULL).
///
/// # Safety
///
/// `ptr` must be NULL or a valid NUL-terminated string.
pub unsafe fn path_from_c(ptr: *const c_char) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if ptr.is_null() {
        return std::path::PathBuf::new();
    }
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { std::ffi::CStr::from_ptr(ptr) }.to_bytes();
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// `path` as a C string.
pub fn path_cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Reserves `len` bytes of address space, readable and writable, private and anonymous,
/// without committing memory (`MAP_NORESERVE`): pages exist only once touched. Returns the
/// start address.
pub fn reserve_anonymous(len: usize) -> io::Result<usize> {
    // SAFETY: a new mapping at an address of the kernel's choice; it overlaps nothing of
    // ours, and no Rust reference points into it.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr as usize)
}

/// `munmap(addr, len)`.
///
/// # Safety
///
/// Nothing may use the range afterwards: no reference may point into it, and its owner
/// (here, the interpreter's allocator handing an arena back) must be done with it.
pub unsafe fn unmap(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: guaranteed by the caller.
    cvt(unsafe { libc::munmap(addr as *mut libc::c_void, len) }).map(drop)
}

/// `madvise(addr, len, MADV_DONTNEED)`: the range's pages are dropped, and read as zeroes
/// when touched again.
///
/// # Safety
///
/// The range must be private anonymous memory whose contents nobody needs any more.
pub unsafe fn discard_pages(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: guaranteed by the caller.
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn env_block_bounds_parse_stat_lines() {
        let own = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let (start, end) = env_block_bounds(&own).expect("bounds");
        assert!(start > 0 && end > start, "{start} {end}");
        let tricky = format!("42 (a) b) c) {}", own.rsplit_once(") ").expect("fields").1);
        assert_eq!(env_block_bounds(&tricky), Some((start, end)));
        assert_eq!(env_block_bounds("1 (x) S 0"), None);
    }

    #[test]
    fn write_c_message_truncates_and_terminates() {
        let mut buf = [1 as c_char; 6];
        // SAFETY: `buf` has 6 writable bytes.
        unsafe { write_c_message(buf.as_mut_ptr(), buf.len(), "hello world") };
        // SAFETY: write_c_message NUL-terminated it within the buffer.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_str(), Ok("hello"));
    }
}
