"""The zygote: preloads the libraries once, then forks sandboxed kernels on request.

Started by the server with its control socket on fd 3 (`python -m pyxis_runtime.zygote`).
It stays single-threaded and never runs user code: each child enters its sandbox through
the sandbox library's C ABI and only then becomes a kernel.

Each spawn forks once: the child is made right after `unshare(CLONE_NEWPID)`, so it is pid 1
of a new pid namespace and becomes the sandbox's init itself (the zygote then puts its own
namespace back for its next children). The sandbox library forks the kernel from it.

A `spawn` frame carries its descriptors with SCM_RIGHTS: the kernel's socket, the workspace
directory (O_PATH), then one open cgroup.procs file per `spec.cgroup_fds` entry. The child
puts them at fixed numbers (socket 3, setup report pipe 4, workspace 5, cgroups from 6), so
the spec names no host path the kernel's memory could give away.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import os
import platform
import select
import signal
import socket
import sys
import time

from . import framing, hugepages

CONTROL_FD = 3
KERNEL_FD = 3
REPORT_FD = 4
WORKSPACE_FD = 5
FIRST_CGROUP_FD = 6
MAX_CGROUP_FDS = 8
REPORT_TIMEOUT = 10.0
REAP_INTERVAL = 1.0
ERRLEN = 4096
# sched.h
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1


def log(text: str) -> None:
    """A line on the zygote's stderr (the server's log)."""
    try:
        os.write(2, f"pyxis-zygote[{os.getpid()}]: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass


class SandboxLib:
    """The C ABI of the sandbox crate."""

    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.lib.pyxis_sandbox_prepare.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self.lib.pyxis_sandbox_prepare.restype = ctypes.c_int
        self.lib.pyxis_sandbox_enter.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        self.lib.pyxis_sandbox_enter.restype = ctypes.c_int

    def prepare(self) -> None:
        """Calls pyxis_sandbox_prepare once; raises RuntimeError on failure."""
        err = ctypes.create_string_buffer(ERRLEN)
        if self.lib.pyxis_sandbox_prepare(err, ERRLEN) != 0:
            raise RuntimeError(err.value.decode("utf-8", "replace") or "prepare failed")

    def enter(self, spec: bytes) -> str | None:
        """Enters the sandbox; None on success, else the error text."""
        err = ctypes.create_string_buffer(ERRLEN)
        if self.lib.pyxis_sandbox_enter(spec, len(spec), err, ERRLEN) != 0:
            return err.value.decode("utf-8", "replace") or "enter failed"
        return None


class PidNamespaces:
    """Makes the zygote's next child pid 1 of a new pid namespace, one child at a time."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        # Readable once the zygote is gone: how a child checks it was not orphaned before
        # its death signal was armed.
        self.zygote = os.pidfd_open(os.getpid())

    def new_for_next_child(self) -> None:
        """unshare(CLONE_NEWPID): affects children only; raises OSError."""
        if self.libc.unshare(CLONE_NEWPID) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWPID): {os.strerror(err)}")

    def restore(self) -> None:
        """Back to the zygote's own pid namespace for later children; exits if it cannot,
        because the next unshare would nest a namespace in the last one."""
        if self.libc.setns(self.own, CLONE_NEWPID) != 0:
            log(f"setns back to the own pid namespace: {os.strerror(ctypes.get_errno())}")
            os._exit(3)

    def in_child(self) -> bool:
        """In a new child: die with the zygote; False if it is already gone."""
        self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        ready, _, _ = select.select([self.zygote], [], [], 0)
        return not ready


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


def _child(
    ctrl: socket.socket,
    lib: SandboxLib,
    pidns: PidNamespaces,
    fds: list[int],
    report_w: int,
    spec: dict,
):
    """In the forked child (pid 1 of its pid namespace): become the sandbox's init, and in
    its one child the kernel. Never returns.

    `fds` are the spawn request's descriptors: the kernel socket, the workspace directory,
    then the cgroup.procs files. They are moved to fixed numbers (see the module docstring).
    """
    code = 1
    try:
        if not pidns.in_child():
            os._exit(1)
        ctrl.detach()  # fd 3 is about to become the kernel socket
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        targets = [KERNEL_FD, WORKSPACE_FD] + [FIRST_CGROUP_FD + i for i in range(len(fds) - 2)]
        moves = [(_dup_high(fd), target) for fd, target in zip(fds, targets)]
        moves.append((_dup_high(report_w), REPORT_FD))
        for fd in fds + [report_w]:
            os.close(fd)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
        for high, target in moves:
            os.dup2(high, target)
            os.close(high)
        spec = dict(
            spec,
            kernel_fd=KERNEL_FD,
            report_fd=REPORT_FD,
            workspace_fd=WORKSPACE_FD,
            cgroup_fds=targets[2:],
        )
        error = lib.enter(json.dumps(spec).encode())
        if error is not None:
            _report(f"err {error}")
            os._exit(1)
        _report("ok")
        try:
            os.close(REPORT_FD)
        except OSError:
            pass
        from . import kernel  # pylint: disable=import-outside-toplevel

        kernel.main(KERNEL_FD)
        code = 0
    except BaseException as exc:  # pylint: disable=broad-except
        _report(f"err {type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


def _dup_high(fd: int) -> int:
    import fcntl  # pylint: disable=import-outside-toplevel

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)


def _report(line: str) -> None:
    """Writes a report line to fd 4 if it is still the report pipe."""
    try:
        import stat  # pylint: disable=import-outside-toplevel

        if stat.S_ISFIFO(os.fstat(REPORT_FD).st_mode):
            os.write(REPORT_FD, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def read_report(fd: int) -> str | None:
    """Reads the `ok` / `err msg` line of the sandbox's setup; returns the error, if any."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace").strip()
            if text == "ok":
                return None
            if text.startswith("err"):
                return text[3:].strip() or "sandbox setup failed"
        left = deadline - time.monotonic()
        if left <= 0:
            return "timed out waiting for the sandbox to start"
        try:
            ready, _, _ = select.select([fd], [], [], left)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not data:
            return "the sandbox exited during setup"
        buf += data


class Zygote:
    """The control loop."""

    def __init__(self, ctrl: socket.socket, lib: SandboxLib) -> None:
        self.ctrl = ctrl
        self.lib = lib
        self.pidns = PidNamespaces()
        self.buffer = framing.FrameBuffer()
        self.fds: list[int] = []

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
        wanted = 2 + len(cgroups)
        if len(self.fds) < wanted:
            self.send(
                {"type": "spawn_failed", "id": ident, "error": f"{wanted} descriptors expected"}
            )
            return
        fds, self.fds = self.fds[:wanted], self.fds[wanted:]
        report_r, report_w = os.pipe()
        try:
            self.pidns.new_for_next_child()
            try:
                child = os.fork()
            except OSError:
                self.pidns.restore()
                raise
        except OSError as exc:
            for fd in fds + [report_r, report_w]:
                os.close(fd)
            self.send({"type": "spawn_failed", "id": ident, "error": f"fork: {exc}"})
            return
        if child == 0:
            os.close(report_r)
            _child(self.ctrl, self.lib, self.pidns, fds, report_w, spec)
        self.pidns.restore()
        for fd in fds + [report_w]:
            os.close(fd)
        try:
            error = read_report(report_r)
        finally:
            os.close(report_r)
        if error is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            reap()
            self.send({"type": "spawn_failed", "id": ident, "error": error})
            return
        self.send({"type": "spawned", "id": ident, "pid": child})
        reap()

    def handle(self, msg: dict) -> None:
        """One control request."""
        kind = msg.get("type")
        if kind == "spawn":
            self.spawn(msg)
        else:
            self.send({"type": "error", "error": f"unknown request type {kind!r}"})

    def run(self) -> None:
        """Loops until the server closes the socket."""
        while True:
            try:
                ready, _, _ = select.select([self.ctrl], [], [], REAP_INTERVAL)
            except InterruptedError:
                ready = []
            reap()
            if not ready:
                continue
            if not self.receive():
                return
            while True:
                try:
                    msg = self.buffer.next_frame()
                except framing.FrameError as exc:
                    log(f"closing: {exc}")
                    return
                if msg is None:
                    break
                self.handle(msg)
            # fds that arrived with nothing to claim them would leak.
            if self.fds and not self.buffer.pending():
                for fd in self.fds:
                    os.close(fd)
                self.fds.clear()


# prctl(2) option: orphaned descendants are reparented to us, not to the host's init.
PR_SET_CHILD_SUBREAPER = 36


def main() -> None:
    """Entry point."""
    # A sandbox's init outlives its parent for a moment when the sandbox is
    # killed; as subreaper the zygote reaps it instead of leaving a zombie for
    # the host's pid 1 (which, in a container, may never reap).
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    ctrl = socket.socket(fileno=CONTROL_FD)
    ctrl.setblocking(True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    # pylint: disable=import-outside-toplevel
    from . import kernel

    kernel.prepare()
    lib_path = os.environ.get("PYXIS_SANDBOX_LIB")
    if not lib_path:
        log("PYXIS_SANDBOX_LIB is not set")
        sys.exit(2)
    try:
        lib = SandboxLib(lib_path)
        lib.prepare()
    except (OSError, AttributeError, RuntimeError) as exc:
        log(f"sandbox library: {exc}")
        framing.send(ctrl, {"type": "error", "error": f"sandbox library: {exc}"})
        sys.exit(2)
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


if __name__ == "__main__":
    main()
