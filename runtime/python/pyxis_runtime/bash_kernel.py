"""The bash kernel driver: one `bash` whose state (working directory, variables, functions,
options) persists between cells, served over the framed kernel protocol.

Started inside a sandbox by the server through the join path
(`python -m pyxis_runtime.bash_kernel 3`, its socket on fd 3); standard library only.

A cell's code is written to a file under the sandbox's /tmp and sourced by the shell, with
stdin from /dev/null, so `cd`, `export` and function definitions stay. After it, the shell
writes a per-cell random token and the status of the cell's last command to a pipe only the
driver reads (closed inside the cell), so the cell cannot forge the end of another cell. Its
stdout and stderr stream as `stream` events; a non-zero status makes the reply an error
named `ExitCode`.

Interrupt (SIGINT to the driver) is passed to the driver's process group, which the shell and
what it runs share: the running command ends, and the shell's INT trap returns from the
sourced cell (status 130) without the shell exiting. A cell that runs `exit` ends the shell:
the driver then exits, and the server reports the kernel's death and starts a fresh one.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

from . import framing

DEFAULT_MAX_OUTPUT = 1024 * 1024
READ_SIZE = 64 * 1024
# The shell's descriptor for the status pipe: high, so cells rarely collide with it.
STATUS_FD = 199
# After an interrupt, while the cell runs on: SIGINT again this often, this many times.
RESIGNAL_S = 0.3
MAX_RESIGNALS = 5
# Bash's setup: the INT trap that aborts a cell without ending the shell, and the function
# that sources a cell with the status pipe closed inside it.
PRELUDE = f"""
trap 'return 130 2>/dev/null' INT
__pyxis_cell() {{ builtin source "$1" </dev/null {STATUS_FD}>&-; }}
"""


class BashKernel:
    """Serves one kernel socket with one bash process."""

    # pylint: disable=too-many-instance-attributes

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = framing.FrameReader(sock)
        self.count = 0
        self.dir = tempfile.mkdtemp(prefix="pyxis-bash-")
        status_read, status_write = os.pipe()
        os.set_inheritable(status_write, True)
        env = dict(os.environ)
        env.pop("PYXIS_WORKSPACE", None)
        env.setdefault("TERM", "dumb")
        env.setdefault("PAGER", "cat")
        cwd = os.environ.get("PYXIS_WORKSPACE") or os.getcwd()
        self.shell = subprocess.Popen(  # pylint: disable=consider-using-with
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd if os.path.isdir(cwd) else None,
            env=env,
            # In the driver's process group: killing the context's group (the server does)
            # ends the shell and what it runs with the driver.
            pass_fds=(status_write,),
        )
        # The shell's copy moves to STATUS_FD with its first command.
        os.close(status_write)
        self.status = status_read
        self.interrupted = False
        # A cell is with the shell; SIGINT that came before (see `on_sigint`).
        self.executing = False
        self.early = framing.EarlyInterrupts(self.reader)
        # Written by `on_sigint`, so that the wait for a cell's status notices an interrupt
        # (a select interrupted by a signal is resumed with its old timeout, PEP 475).
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        os.set_blocking(self.shell.stdout.fileno(), False)
        os.set_blocking(self.shell.stderr.fileno(), False)
        os.set_blocking(self.status, False)
        self.send_shell(f"exec {STATUS_FD}>&{status_write} {status_write}>&-\n{PRELUDE}")

    def send(self, msg: dict) -> None:
        """One frame to the server."""
        framing.send(self.sock, msg)

    def send_shell(self, text: str) -> None:
        """Writes commands to the shell's stdin."""
        self.shell.stdin.write(text.encode("utf-8", "surrogateescape"))
        self.shell.stdin.flush()

    def on_sigint(self, _signum, _frame) -> None:
        """SIGINT: the process group gets it (the running command and the cell end), the
        driver itself ignoring it meanwhile. Before the cell is with the shell, it is for the
        cell about to run, or for none (`framing.EarlyInterrupts`)."""
        if not self.executing:
            self.early.signalled()
            return
        self.interrupted = True
        self.signal_shell()
        try:
            os.write(self.wake_write, b"!")
        except OSError:
            pass  # full: a wake-up is pending already

    def signal_shell(self) -> None:
        """SIGINT to the process group (the shell and what it runs), not to this driver."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            os.killpg(0, signal.SIGINT)
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGINT, self.on_sigint)

    def execute(self, msg: dict) -> None:
        """Runs one cell; streams its output; replies with the last command's status."""
        ident = str(msg.get("id", ""))
        code = str(msg.get("code", ""))
        if not msg.get("silent"):
            self.count += 1
        if self.early.take():
            self.interrupted_before_start(ident)
            return
        path = os.path.join(self.dir, "cell.sh")
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as cell:
            cell.write(code if code.endswith("\n") else code + "\n")
        token = secrets.token_hex(16)
        self.interrupted = False
        self.executing = True
        try:
            self.send_shell(f"__pyxis_cell {path}; printf '%s %s\\n' {token} $? >&{STATUS_FD}\n")
            out = _CellOutput(self, ident, int(msg.get("max_output_bytes") or DEFAULT_MAX_OUTPUT))
            streams = {self.shell.stdout.fileno(): "stdout", self.shell.stderr.fileno(): "stderr"}
            status = self.wait_status(token, streams, out)
        finally:
            self.executing = False
        # What the cell wrote before its status is in the pipes already.
        for fd, name in streams.items():
            while data := _read(fd):
                out.feed(name, data)
        out.flush()
        if status != 0:
            if self.interrupted or status == 130:
                ename, evalue = "KeyboardInterrupt", "interrupted"
            else:
                ename, evalue = "ExitCode", f"the cell's last command exited with status {status}"
            self.send(
                {
                    "type": "error",
                    "id": ident,
                    "ename": ename,
                    "evalue": evalue,
                    "traceback": [f"{ename}: {evalue}"],
                }
            )
        self.send(
            {
                "type": "execute_reply",
                "id": ident,
                "status": "ok" if status == 0 else "error",
                "execution_count": self.count,
                "truncated": out.truncated,
                "user_expressions": {},
            }
        )

    def interrupted_before_start(self, ident: str) -> None:
        """The reply of a cell interrupted before it was given to the shell."""
        evalue = "interrupted before it started"
        self.send(
            {
                "type": "error",
                "id": ident,
                "ename": "KeyboardInterrupt",
                "evalue": evalue,
                "traceback": [f"KeyboardInterrupt: {evalue}"],
            }
        )
        self.send(
            {
                "type": "execute_reply",
                "id": ident,
                "status": "error",
                "execution_count": self.count,
                "truncated": False,
                "user_expressions": {},
            }
        )

    def wait_status(self, token: str, streams: dict, out: "_CellOutput") -> int:
        """Streams the cell's output until the shell reports its status with `token`.

        A SIGINT can reach the shell before it has read the cell (and is then lost): while
        the cell runs on after an interrupt, the group gets SIGINT again every
        `RESIGNAL_S`, a few times."""
        pending = b""
        resignal = _Resignal(self)
        while True:
            wait = resignal.wait()
            try:
                ready, _, _ = select.select([*streams, self.status, self.wake_read], [], [], wait)
            except InterruptedError:
                continue
            if self.wake_read in ready:
                _read(self.wake_read)
            for fd in ready:
                if fd == self.status:
                    data = _read(fd)
                    if data == b"":
                        raise SystemExit(0)  # the shell is gone
                    pending += data or b""
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        parts = line.decode("ascii", "replace").split()
                        if len(parts) == 2 and parts[0] == token:
                            return int(parts[1]) if parts[1].isdigit() else 1
                elif fd in streams:
                    data = _read(fd)
                    if data == b"":
                        # The cell closed the shell's output; its status still comes.
                        streams.pop(fd)
                    elif data:
                        out.feed(streams[fd], data)

    def configure(self, msg: dict) -> None:
        """Exports the given variables in the shell."""
        env = msg.get("env") or {}
        lines = []
        for key, value in env.items():
            key = str(key)
            if key.isidentifier():
                lines.append(f"export {key}={_quote(str(value))}\n")
        if lines:
            self.send_shell("".join(lines))
        self.send({"type": "configure_reply", "id": str(msg.get("id", "")), "status": "ok"})

    def serve(self) -> None:
        """Answers requests until EOF or shutdown."""
        while True:
            msg = self.early.next_request(self.reader.read)
            if msg is None:
                return
            kind = msg.get("type")
            ident = str(msg.get("id", ""))
            if kind == "execute_request":
                self.execute(msg)
            elif kind == "configure":
                self.configure(msg)
            elif kind == "shutdown":
                return
            elif kind == "complete_request":
                cursor = int(msg.get("cursor_pos") or 0)
                self.send(
                    {
                        "type": "complete_reply",
                        "id": ident,
                        "matches": [],
                        "cursor_start": cursor,
                        "cursor_end": cursor,
                    }
                )
            elif kind == "inspect_request":
                self.send({"type": "inspect_reply", "id": ident, "found": False})
            elif kind == "is_complete_request":
                self.send({"type": "is_complete_reply", "id": ident, "status": "unknown"})
            elif kind == "comm_info_request":
                self.send({"type": "comm_info_reply", "id": ident, "comms": {}})


class _Resignal:
    """After an interrupt, while the cell runs on: SIGINT to the shell's group again every
    `RESIGNAL_S`, at most `MAX_RESIGNALS` times."""

    def __init__(self, kernel: BashKernel) -> None:
        self.kernel = kernel
        self.count = 0
        self.due: float | None = None

    def wait(self) -> float | None:
        """Signals again if it is time; how long the next wait may be (None: no bound)."""
        if not self.kernel.interrupted or self.count >= MAX_RESIGNALS:
            return None
        now = time.monotonic()
        if self.due is None:
            self.due = now + RESIGNAL_S
        elif now >= self.due:
            self.count += 1
            self.due = now + RESIGNAL_S
            self.kernel.signal_shell()
        return max(self.due - now, 0.0)


class _CellOutput:
    """One cell's stream events, decoded as UTF-8 and bounded by its output cap."""

    def __init__(self, kernel: BashKernel, ident: str, cap: int) -> None:
        self.kernel = kernel
        self.ident = ident
        self.cap = cap
        self.sent = 0
        self.truncated = False
        self.decoders = {"stdout": _Utf8(), "stderr": _Utf8()}

    def feed(self, name: str, data: bytes) -> None:
        """Bytes read from the shell's `name` output."""
        self.send(name, self.decoders[name].feed(data))

    def flush(self) -> None:
        """What is left of split characters."""
        for name, decoder in self.decoders.items():
            self.send(name, decoder.flush())

    def send(self, name: str, text: str) -> None:
        """A stream event, within the cap (beyond it, text is dropped and flagged)."""
        if not text:
            return
        raw = text.encode("utf-8", "surrogatepass")
        if self.sent + len(raw) > self.cap:
            self.truncated = True
            raw = raw[: max(self.cap - self.sent, 0)]
            text = raw.decode("utf-8", "ignore")
            raw = text.encode("utf-8", "surrogatepass")
            if not text:
                return
        self.sent += len(raw)
        self.kernel.send({"type": "stream", "id": self.ident, "name": name, "text": text})


def _read(fd: int) -> bytes | None:
    """What `fd` has now: b"" at its end, None when nothing is there yet."""
    try:
        return os.read(fd, READ_SIZE)
    except BlockingIOError:
        return None


class _Utf8:
    """Incremental UTF-8 decoding: a character split between two reads is kept."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> str:
        """The complete characters of what arrived so far."""
        data = self.pending + data
        cut = len(data)
        # Back up over an incomplete trailing sequence (at most 3 bytes).
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte & 0xC0 == 0x80:
                continue
            needed = _sequence_length(byte)
            if needed > back:
                cut = len(data) - back
            break
        self.pending = data[cut:]
        return data[:cut].decode("utf-8", "replace")

    def flush(self) -> str:
        """Whatever is left."""
        rest, self.pending = self.pending, b""
        return rest.decode("utf-8", "replace")


def _sequence_length(lead: int) -> int:
    """How many bytes the UTF-8 sequence that starts with `lead` has."""
    if lead >> 5 == 0b110:
        return 2
    if lead >> 4 == 0b1110:
        return 3
    if lead >> 3 == 0b11110:
        return 4
    return 1


def _quote(value: str) -> str:
    """A single-quoted shell word."""
    return "'" + value.replace("'", "'\\''") + "'"


def main(fd: int = 3) -> None:
    """Serves the kernel socket `fd`."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    kernel = BashKernel(sock)
    signal.signal(signal.SIGINT, kernel.on_sigint)
    kernel.send({"type": "ready"})
    try:
        kernel.serve()
    finally:
        try:
            kernel.shell.kill()
        except OSError:
            pass


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
