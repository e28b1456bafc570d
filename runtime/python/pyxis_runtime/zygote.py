"""The zygote: preloads the libraries once, then forks sandboxed kernels on request.

Started by the server with its control socket on fd 3 (`python -m pyxis_runtime.zygote`).
It stays single-threaded and never runs user code: each child enters its sandbox through
the sandbox library's C ABI and only then becomes a kernel.

Each spawn is one call of the sandbox library (`pyxis_sandbox_spawn`). It starts the
sandbox's init, the small `pyxis-sandbox-init` program beside the library, as pid 1 of a new
pid namespace; the init builds the sandbox. Then it forks the kernel into the init's
namespaces: the call returns in the zygote and in the kernel, which runs the interpreter's
after-fork hooks itself, as `os.fork` would have. The init is not a copy of the zygote: each
copy costs a fork and an exit of its whole heap's page tables.

A `spawn` frame may name a program (`exec`: `argv` and `env`) that the sandboxed kernel
process executes instead of running the Python kernel: a first kernel of another language
(Node.js, bash), with no Python kernel started only to be replaced.

A `spawn` frame carries its descriptors with SCM_RIGHTS: the kernel's socket, the workspace
directory (O_PATH), then one open cgroup.procs file per `spec.cgroup_fds` entry, then, when
the spec has `egress`, the init's end of the egress channel. The sandbox gets them at fixed
numbers (socket 3, setup report pipe 4, workspace 5, cgroups from 6, the egress channel after
them), so the spec names no host path the kernel's memory could give away.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import json
import os
import platform
import select
import signal
import socket
import sys
import time
from typing import NoReturn

from . import framing, hugepages

CONTROL_FD = 3
MAX_CGROUP_FDS = 8
INIT_PROGRAM = "pyxis-sandbox-init"
# Address space reserved for the interpreter's object arenas (see `SandboxLib.use_arenas`);
# only touched pages cost memory.
ARENA_REGION = 16 << 30
# Bounds of a spawn's `exec` program (the server's is a few arguments and variables).
MAX_EXEC_ARGS = 64
MAX_EXEC_ENV = 256
MAX_EXEC_TEXT = 1 << 16
REAP_INTERVAL = 1.0
FINAL_REAP_S = 2.0
ERRLEN = 4096


def log(text: str) -> None:
    """A line on the zygote's stderr (the server's log)."""
    try:
        os.write(2, f"pyxis-zygote[{os.getpid()}]: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass


# memfd_create(2) flags; MFD_EXEC (Linux 6.3) keeps a copy executable where vm.memfd_noexec
# would otherwise make it not.
MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
MFD_EXEC = 0x10
# fcntl(2): seals that make a memfd immutable.
F_ADD_SEALS = 1033
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8


def anonymous_copy(path: str) -> int:
    """A sealed memfd holding the file at `path`: mapped or executed from it, the file
    shows up in /proc/PID/maps and /proc/PID/exe as `/memfd:NAME (deleted)`, never as its
    host path (the build directory), which every kernel could otherwise read."""
    name = os.path.basename(path)
    try:
        fd = os.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = os.memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)
    try:
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


class ArenaAllocator(ctypes.Structure):
    """CPython's `PyObjectArenaAllocator`."""

    _fields_ = [("ctx", ctypes.c_void_p), ("alloc", ctypes.c_void_p), ("free", ctypes.c_void_p)]


class SandboxLib:
    """The C ABI of the sandbox crate, loaded from an anonymous copy (see `anonymous_copy`),
    and its init program, copied the same way."""

    def __init__(self, path: str) -> None:
        lib_fd = anonymous_copy(path)
        try:
            self.lib = ctypes.CDLL(f"/proc/self/fd/{lib_fd}")
        finally:
            os.close(lib_fd)
        # Open until `prepare`, which keeps its own (O_PATH) descriptor of the copy: executed
        # through that, the copy must have no writable descriptor left (ETXTBSY).
        self.init_fd = anonymous_copy(os.path.join(os.path.dirname(path), INIT_PROGRAM))
        self.init_program = f"/proc/self/fd/{self.init_fd}"
        self.lib.pyxis_sandbox_prepare.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        self.lib.pyxis_sandbox_prepare.restype = ctypes.c_int
        self.lib.pyxis_sandbox_spawn.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        self.lib.pyxis_sandbox_spawn.restype = ctypes.c_int

    def use_arenas(self) -> str | None:
        """Makes the interpreter cut its object arenas from one reserved region of the
        library's (its `arena` module), so that `hugepages.collapse` can map them with huge
        pages: scattered 1 MiB mappings, each its own VMA, cannot be. Call it before the
        preloads. Returns why not, if it could not (the arenas are then mapped as before)."""
        try:
            reserve = self.lib.pyxis_sandbox_arena_reserve
            alloc = ctypes.cast(self.lib.pyxis_sandbox_arena_alloc, ctypes.c_void_p)
            free = ctypes.cast(self.lib.pyxis_sandbox_arena_free, ctypes.c_void_p)
        except AttributeError:
            return "the sandbox library has no arena allocator (an older build)"
        reserve.argtypes = [ctypes.c_size_t]
        reserve.restype = ctypes.c_int
        if reserve(ARENA_REGION) != 0:
            return "the arena region could not be reserved"
        allocator = ArenaAllocator(None, alloc, free)
        # CPython copies the structure; arenas mapped before are handed back to the
        # library's free, which unmaps what is not in its region.
        ctypes.pythonapi.PyObject_SetArenaAllocator.argtypes = [ctypes.c_void_p]
        ctypes.pythonapi.PyObject_SetArenaAllocator.restype = None
        ctypes.pythonapi.PyObject_SetArenaAllocator(ctypes.byref(allocator))
        return None

    def prepare(self) -> None:
        """Calls pyxis_sandbox_prepare once; raises RuntimeError on failure."""
        err = ctypes.create_string_buffer(ERRLEN)
        try:
            if self.lib.pyxis_sandbox_prepare(os.fsencode(self.init_program), err, ERRLEN) != 0:
                raise RuntimeError(err.value.decode("utf-8", "replace") or "prepare failed")
        finally:
            os.close(self.init_fd)

    def spawn(self, spec: bytes, fds: list[int], zygote_pidfd: int) -> int:
        """Makes a sandbox: the kernel's pid in the zygote once it is ready, 0 in the kernel.
        Raises RuntimeError on failure (whatever was started is killed)."""
        err = ctypes.create_string_buffer(ERRLEN)
        array = (ctypes.c_int * len(fds))(*fds)
        pid = self.lib.pyxis_sandbox_spawn(
            spec, len(spec), array, len(fds), zygote_pidfd, err, ERRLEN
        )
        if pid < 0:
            raise RuntimeError(err.value.decode("utf-8", "replace") or "spawn failed")
        return pid


def single_threaded() -> str | None:
    """Makes the zygote single-threaded again after the preloads; the reason if it cannot.

    OpenBLAS (numpy's BLAS) starts a thread pool when it loads and stops it in its
    `pthread_atfork` handler, restarting it at the next BLAS call, which the zygote never
    makes. A throwaway fork runs such handlers once. The sandbox library refuses to fork a
    process with other threads, whose locks its child could inherit held.
    """
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        return f"the zygote has {threads} threads after the preloads; it must have one"
    return None


def reap() -> None:
    """Collects every exited child."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return


def exec_program(value: object) -> tuple[list[str], dict[str, str]] | None:
    """The `exec` field of a spawn request as (argv, env), None when absent. Raises
    ValueError unless it is an absolute program path with string arguments and variables
    without NUL bytes, within bounds."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("exec is not an object")
    argv, env = value.get("argv"), value.get("env", {})
    if not isinstance(argv, list) or not 0 < len(argv) <= MAX_EXEC_ARGS:
        raise ValueError("exec.argv is not a list of 1 to 64 arguments")
    if not isinstance(env, dict) or len(env) > MAX_EXEC_ENV:
        raise ValueError("exec.env is not an object of at most 256 variables")
    texts = [*argv, *env.keys(), *env.values()]
    if not all(isinstance(t, str) and "\0" not in t and len(t) <= MAX_EXEC_TEXT for t in texts):
        raise ValueError("exec holds a value that is not a string, or has a NUL byte")
    if not os.path.isabs(argv[0]) or any(not k or "=" in k for k in env):
        raise ValueError("exec.argv[0] is not an absolute path, or a variable name is invalid")
    return list(argv), dict(env)


def _exec(kernel_fd: int, program: tuple[list[str], dict[str, str]]) -> NoReturn:
    """In the sandboxed kernel process: executes `program` in its place, with its socket
    still at `kernel_fd` and only the program's environment. The signals Python ignores
    (SIGPIPE, SIGXFSZ) go back to their defaults, as for a program started as usual. Exits
    with 127 if the program cannot be executed (the server sees the socket close)."""
    argv, env = program
    try:
        os.set_inheritable(kernel_fd, True)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        os.execve(argv[0], argv, env)
    except (OSError, ValueError) as exc:
        log(f"kernel program {argv[0]}: {exc}")
    os._exit(127)


def _kernel(
    ctrl: socket.socket, kernel_fd: int, program: tuple[list[str], dict[str, str]] | None
) -> None:
    """In the sandboxed kernel process, where `pyxis_sandbox_spawn` returned 0: execute
    `program` if there is one, else finish the fork as `os.fork` would have and run the
    kernel. Never returns."""
    code = 1
    try:
        ctrl.detach()  # its number may be the kernel's socket now
        if program is not None:
            _exec(kernel_fd, program)
        ctypes.pythonapi.PyOS_AfterFork_Child()
        # The zygote's wakeup fd is closed here, and its number may be reused. No Python
        # signal handler is installed at this point (the sandbox library reset them).
        signal.set_wakeup_fd(-1)
        from . import kernel  # pylint: disable=import-outside-toplevel

        kernel.main(kernel_fd)
        code = 0
    finally:
        os._exit(code)


def final_reap() -> None:
    """Reaps what is still dying once the server closed the control socket (it kills every
    sandbox first), so no init is left to the host's pid 1."""
    deadline = time.monotonic() + FINAL_REAP_S
    while time.monotonic() < deadline:
        reap()
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break
        time.sleep(0.01)


def _sibling(parent: "Zygote", ctrl_fd: int) -> None:
    """In a fork of the zygote made by a `clone` request: drop the parent's control socket,
    wakeup pipe and pidfd, then serve `ctrl_fd` as a zygote of its own. Never returns.

    The sibling shares every preloaded page with the zygote it was forked from (no second
    import, no second copy of the heap). It is not bound to its parent's life: it stops when
    the server closes its socket, as the first zygote does, so a dead parent is replaced
    without taking its siblings (and their sessions) along."""
    code = 1
    try:
        for fd in parent.fds:
            os.close(fd)
        parent.fds.clear()
        parent.ctrl.close()
        os.close(parent.wakeup)
        # The parent's wakeup pipe's write end (the sibling makes its own).
        os.close(signal.set_wakeup_fd(-1))
        os.close(parent.pidfd)
        # Not inherited across fork: the sibling's sandbox inits are reaped by the sibling.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        ctrl = socket.socket(fileno=ctrl_fd)
        ctrl.setblocking(True)
        zygote = Zygote(ctrl, parent.lib)
        zygote.send({"type": "ready", "pid": os.getpid(), "python": platform.python_version()})
        zygote.run()
        final_reap()
        code = 0
    finally:
        os._exit(code)


class Zygote:
    """The control loop."""

    def __init__(self, ctrl: socket.socket, lib: SandboxLib) -> None:
        self.ctrl = ctrl
        self.lib = lib
        # Readable once the zygote is gone: how a kernel checks it was not orphaned before
        # its death signal was armed.
        self.pidfd = os.pidfd_open(os.getpid())
        # Every sandbox's init and kernel are our children. A dead kernel must be reaped at
        # once: its init, pid 1 of the namespace, cannot finish exiting before that. So a
        # child's exit wakes the loop (the handler only makes Python write the wakeup fd).
        self.wakeup, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        self.buffer = framing.FrameBuffer()
        self.fds: list[int] = []
        self.huge = hugepages.Recollapse()

    def send(self, msg: dict) -> None:
        """One control frame; exits if the server is gone."""
        try:
            framing.send(self.ctrl, msg)
        except OSError:
            sys.exit(0)

    def receive(self) -> bool:
        """Reads what is available (with any fds); False at EOF."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctrl, 1 << 20, 16)
        except InterruptedError:
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return True
            raise
        self.fds.extend(fds)
        if not data:
            return False
        self.buffer.feed(data)
        return True

    def spawn(self, msg: dict) -> None:
        """Forks a kernel into a sandbox."""
        ident = str(msg.get("id", ""))
        spec = msg.get("spec")
        cgroups = spec.get("cgroup_fds") if isinstance(spec, dict) else None
        if not isinstance(cgroups, list) or len(cgroups) > MAX_CGROUP_FDS:
            self.send({"type": "spawn_failed", "id": ident, "error": "spec is not a valid object"})
            return
        egress = spec.get("egress")
        kernel_fd = spec.get("kernel_fd")
        if not isinstance(kernel_fd, int) or (egress is not None and not isinstance(egress, dict)):
            self.send({"type": "spawn_failed", "id": ident, "error": "spec is not a valid object"})
            return
        try:
            program = exec_program(msg.get("exec"))
        except ValueError as exc:
            self.send({"type": "spawn_failed", "id": ident, "error": str(exc)})
            return
        wanted = 2 + len(cgroups) + (egress is not None)
        if len(self.fds) < wanted:
            self.send(
                {"type": "spawn_failed", "id": ident, "error": f"{wanted} descriptors expected"}
            )
            return
        fds, self.fds = self.fds[:wanted], self.fds[wanted:]
        # The spec's descriptor numbers are the sandbox library's (the server numbered it
        # with `SandboxSpec::number_descriptors`); the descriptors go in the same order.
        spec_json = json.dumps(spec).encode()
        error = ""
        ctypes.pythonapi.PyOS_BeforeFork()
        try:
            child = self.lib.spawn(spec_json, fds, self.pidfd)
        except (RuntimeError, ctypes.ArgumentError) as exc:
            child, error = -1, str(exc)
        if child == 0:
            _kernel(self.ctrl, kernel_fd, program)
        ctypes.pythonapi.PyOS_AfterFork_Parent()
        self.huge.spawned()
        for fd in fds:
            os.close(fd)
        reap()
        if child < 0:
            self.send({"type": "spawn_failed", "id": ident, "error": error})
        else:
            self.send({"type": "spawned", "id": ident, "pid": child})

    def clone(self, msg: dict) -> None:
        """Forks a sibling zygote onto the control socket that came with the request."""
        ident = str(msg.get("id", ""))
        if not self.fds:
            self.send({"type": "spawn_failed", "id": ident, "error": "1 descriptor expected"})
            return
        sibling_fd = self.fds.pop(0)
        try:
            child = os.fork()
        except OSError as exc:
            os.close(sibling_fd)
            self.send({"type": "spawn_failed", "id": ident, "error": f"fork: {exc}"})
            return
        if child == 0:
            _sibling(self, sibling_fd)
        os.close(sibling_fd)
        self.send({"type": "cloned", "id": ident, "pid": child})

    def handle(self, msg: dict) -> None:
        """One control request."""
        kind = msg.get("type")
        if kind == "spawn":
            self.spawn(msg)
        elif kind == "clone":
            self.clone(msg)
        else:
            self.send({"type": "error", "error": f"unknown request type {kind!r}"})

    def idle(self) -> None:
        """Between requests: collapse the huge pages again once they have decayed."""
        if self.huge.due():
            huge = self.huge.run()
            log(f"huge pages collapsed again: {huge['collapsed_mib']} MiB in {huge['ms']} ms")

    def serve_frames(self) -> bool:
        """Handles every complete frame received; False when the stream is broken."""
        while True:
            try:
                msg = self.buffer.next_frame()
            except framing.FrameError as exc:
                log(f"closing: {exc}")
                return False
            if msg is None:
                break
            self.handle(msg)
        # fds that arrived with nothing to claim them would leak.
        if self.fds and not self.buffer.pending():
            for fd in self.fds:
                os.close(fd)
            self.fds.clear()
        return True

    def run(self) -> None:
        """Loops until the server closes the socket."""
        while True:
            try:
                ready, _, _ = select.select([self.ctrl, self.wakeup], [], [], REAP_INTERVAL)
            except InterruptedError:
                ready = []
            if self.wakeup in ready:
                try:
                    while os.read(self.wakeup, 4096):
                        pass
                except BlockingIOError:
                    pass
            reap()
            if not ready:
                self.idle()
            if self.ctrl not in ready:
                continue
            if not self.receive() or not self.serve_frames():
                return


# prctl(2) option: orphaned descendants are reparented to us, not to the host's init.
PR_SET_CHILD_SUBREAPER = 36


def forget_host_layout() -> None:
    """Drops what a kernel, a fork of the zygote, would otherwise inherit of the server's
    host layout: the server's working directory (ours, and `sys.path[0]` under `-m`) and the
    library's host path in the environment. What stays (the runtime's and the system's paths)
    exists at the same place inside every sandbox."""
    cwd = os.getcwd()
    wanted = set(filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    sys.path[:] = [p for p in sys.path if p in wanted or (p and p != cwd)]
    os.chdir("/")


def library_failed(ctrl: socket.socket, exc: Exception) -> NoReturn:
    """Reports that the sandbox library could not be loaded or prepared, and exits."""
    log(f"sandbox library: {exc}")
    framing.send(ctrl, {"type": "error", "error": f"sandbox library: {exc}"})
    sys.exit(2)


def main() -> None:
    """Entry point."""
    forget_host_layout()
    # A sandbox's init outlives its parent for a moment when the sandbox is
    # killed; as subreaper the zygote reaps it instead of leaving a zombie for
    # the host's pid 1 (which, in a container, may never reap).
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    ctrl = socket.socket(fileno=CONTROL_FD)
    ctrl.setblocking(True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    # pyarrow's jemalloc (loaded with pandas) restarts its background thread after the
    # throwaway fork of `single_threaded`, and the sandbox library forks only a
    # single-threaded process. Read by jemalloc when pyarrow loads.
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
    lib_path = os.environ.pop("PYXIS_SANDBOX_LIB", None)
    if not lib_path:
        log("PYXIS_SANDBOX_LIB is not set")
        sys.exit(2)
    try:
        lib = SandboxLib(lib_path)
        # Before the preloads: their arenas are what the huge pages are for.
        problem = lib.use_arenas()
    except (OSError, AttributeError, RuntimeError) as exc:
        library_failed(ctrl, exc)
    if problem is not None:
        log(problem)
    # pylint: disable=import-outside-toplevel
    from . import kernel

    kernel.prepare()
    try:
        lib.prepare()
    except (OSError, AttributeError, RuntimeError) as exc:
        library_failed(ctrl, exc)
    problem = single_threaded()
    if problem is not None:
        log(problem)
        framing.send(ctrl, {"type": "error", "error": problem})
        sys.exit(2)
    kernel.preset()  # what every kernel would do at start, done once here
    gc.collect()
    gc.freeze()  # keeps the preloaded objects' pages shared with the kernels
    huge = hugepages.collapse()
    log(
        f"huge pages: {huge['collapsed_mib']} of {huge['candidate_mib']} MiB collapsed "
        f"in {huge['ms']} ms" + (f" ({huge['error']})" if huge["error"] else "")
    )
    framing.send(
        ctrl,
        {
            "type": "ready",
            "pid": os.getpid(),
            "python": platform.python_version(),
            "libraries": kernel.library_versions(),
        },
    )
    Zygote(ctrl, lib).run()
    final_reap()


if __name__ == "__main__":
    main()
