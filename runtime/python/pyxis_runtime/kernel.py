"""The kernel driver: runs cells with IPython inside the sandbox and streams framed events.

`prepare()` does the expensive, user-invisible setup (imports, matplotlib configuration, the
IPython shell, a warm-up); the zygote calls it once before forking so that every kernel
inherits it. `main(fd)` then serves one kernel socket until EOF or `shutdown`.
"""

from __future__ import annotations

import base64
import codecs
import ctypes
import fcntl
import io
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from . import charts, framing, sysenv

STREAM_FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 0.1
IDLE_OUTPUT_LIMIT = 1024 * 1024
DEFAULT_MAX_OUTPUT = 1024 * 1024
PIPE_SIZE = 1024 * 1024
# Between two checks of the fd-level pipes from Python-level writes (keeps print() cheap
# while output of a finished subprocess still comes before the next print).
PIPE_SYNC_INTERVAL = 0.0005
MPL_BACKEND = "module://pyxis_runtime.mplbackend"
CJK_FONTS = ["WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans CJK JP"]
SANS_FONTS = ["DejaVu Sans"] + CJK_FONTS
BINARY_MIME_PREFIXES = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")
PRELOADED = [
    "numpy",
    "pandas",
    "matplotlib",
    "seaborn",
    "scipy",
    "scikit-learn",
    "statsmodels",
    "sympy",
    "openpyxl",
    "xlrd",
    "python-docx",
    "python-pptx",
    "pdfplumber",
    "pypdf",
    "pillow",
    "tabulate",
    "ipython",
]
# Bounds of an error event: an exception's message, one traceback line, and
# the whole traceback (characters).
ERROR_VALUE_CAP = 64 * 1024
TRACEBACK_LINE_CAP = 8 * 1024
TRACEBACK_TOTAL_CAP = 256 * 1024

KERNEL_ENV = {
    "PIP_NO_INPUT": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_DEFAULT_TIMEOUT": "3",
    "PIP_RETRIES": "0",
    "PAGER": "cat",
    "TERM": "dumb",
    "PYTHONUNBUFFERED": "1",
}

# The kernel that receives the shell's output; None in the zygote.
SINK: Kernel | None = None  # pylint: disable=used-before-assignment
_SHELL = None


# --------------------------------------------------------------------------- preparation


def _configure_matplotlib() -> None:
    """Selects the Pyxis backend and a sans-serif font list with CJK fallbacks."""
    # pylint: disable=import-outside-toplevel,protected-access
    import matplotlib

    matplotlib.use(MPL_BACKEND, force=True)
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    if not any(name in names for name in CJK_FONTS):
        # The cache predates fonts installed later: rescan once and store it again.
        known = {f.fname for f in font_manager.fontManager.ttflist}
        if set(font_manager.findSystemFonts()) - known:
            manager = font_manager._load_fontmanager(try_read_cache=False)
            font_manager.fontManager = manager
            font_manager.findfont = manager.findfont
            font_manager.get_font_names = manager.get_font_names
            names = {f.name for f in manager.ttflist}
    installed = [name for name in SANS_FONTS if name in names]
    rc = matplotlib.rcParams
    rc["font.sans-serif"] = installed + [f for f in rc["font.sans-serif"] if f not in installed]
    # Matplotlib falls back glyph by glyph only across the families listed in font.family,
    # so name the CJK families there too.
    rc["font.family"] = ["sans-serif"] + [name for name in installed if name in CJK_FONTS]
    rc["axes.unicode_minus"] = False
    # rcdefaults() and style "default" keep the fallbacks.
    for key in ("font.sans-serif", "font.family", "axes.unicode_minus"):
        dict.__setitem__(matplotlib.rcParamsDefault, key, rc[key])


def _make_shell():
    """The IPython shell shared by the zygote and its kernels."""
    # pylint: disable=import-outside-toplevel
    from traitlets.config import Config

    from .shell import PyxisShell

    cfg = Config()
    cfg.HistoryManager.enabled = False
    cfg.HistoryManager.hist_file = ":memory:"
    cfg.InteractiveShell.colors = "NoColor"
    cfg.InteractiveShell.autocall = 0
    cfg.InteractiveShell.xmode = "Context"
    # IPython creates a profile directory on start; keep it out of the server's HOME.
    own_dir = "IPYTHONDIR" not in os.environ
    if own_dir:
        os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="pyxis-ipython-")
    try:
        shell = PyxisShell.instance(config=cfg)
    finally:
        if own_dir:
            shutil.rmtree(os.environ.pop("IPYTHONDIR"), ignore_errors=True)
    shell.system = shell.system_raw  # no pty needed: output goes to fds 1/2
    return shell


def _warm_up(shell) -> None:
    """Runs the lazy paths once so forked kernels do not pay for them; leaves no trace."""
    before = set(shell.user_ns)
    count = shell.execution_count
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = io.StringIO()
    try:
        _warm_up_cells(shell)
    finally:
        sys.stdout, sys.stderr = saved
    _forget(shell, before, count)


def _warm_up_cells(shell) -> None:
    # pylint: disable=import-outside-toplevel
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    frame._repr_html_()  # pylint: disable=protected-access
    repr(frame)
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1, 4, 9])
    ax.set_title("warm-up 你好")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close("all")
    shell.run_cell("import pandas as _pd\n_pd.DataFrame({'a': [1]})", store_history=True)
    shell.run_cell("print('x')\n1/0", store_history=True)
    shell.run_cell("def f(:\n  pass", store_history=True)
    shell.run_cell("from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))")
    shell.run_cell("!true", store_history=False)


def _forget(shell, before: set, count: int) -> None:
    """Undoes what the warm-up cells left in the shell's visible state."""
    shell.displayhook.flush()
    shell.execution_count = count
    hm = shell.history_manager
    del hm.input_hist_parsed[1:]
    del hm.input_hist_raw[1:]
    hm.output_hist.clear()
    hm.output_hist_reprs.clear()
    hm.dir_hist[:] = [os.getcwd()]
    for key in set(shell.user_ns) - before:
        del shell.user_ns[key]
    for key in ("_i", "_ii", "_iii", "_i1", "_i2", "_i3"):
        if key in before:
            shell.user_ns[key] = ""
    shell.user_ns.update({"_": "", "__": "", "___": ""})
    shell.last_execution_succeeded = True
    shell.last_execution_result = None
    sys.last_type = sys.last_value = sys.last_traceback = None


def prepare() -> None:
    """Imports and configures everything a kernel needs; idempotent."""
    global _SHELL  # pylint: disable=global-statement
    if _SHELL is not None:
        return
    # pylint: disable=import-outside-toplevel,unused-import
    _configure_matplotlib()
    import IPython  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import numpy  # noqa: F401
    import pandas  # noqa: F401

    _SHELL = _make_shell()
    charts.register(_SHELL)  # figures' chart data, plotly's renderer
    _warm_up(_SHELL)


def library_versions() -> dict:
    """Versions of the preinstalled libraries (distribution name → version)."""
    from importlib import metadata  # pylint: disable=import-outside-toplevel

    versions = {}
    for name in sysenv.pinned_names(PRELOADED):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


# --------------------------------------------------------------------------- output


def _nbytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def _cut(text: str, nbytes: int) -> str:
    if text.isascii():
        return text[:nbytes]
    return text.encode("utf-8", "replace")[:nbytes].decode("utf-8", "ignore")


def _block_sigint():
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


class _Timespec(ctypes.Structure):  # pylint: disable=too-few-public-methods
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):  # pylint: disable=too-few-public-methods
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


# Looked up once, in the zygote; every kernel inherits them.
_LIBC = ctypes.CDLL(None, use_errno=True)
_timerfd_create = _LIBC.timerfd_create
_timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_timerfd_settime = _LIBC.timerfd_settime
_timerfd_settime.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Itimerspec),
    ctypes.c_void_p,
]


class FlushTimer:
    """A one-shot timerfd: armed by the thread that writes output, read by the I/O thread.

    Arming is one system call and wakes nobody, so a cell that ends within FLUSH_INTERVAL
    never wakes the I/O thread. A thread woken during a cell competes with the main thread
    for the GIL; on a loaded host the main thread then waits for that thread's turn on a
    CPU, which can be tens of milliseconds.
    """

    _CLOCK_MONOTONIC = 1
    _TFD_NONBLOCK = os.O_NONBLOCK
    _TFD_CLOEXEC = os.O_CLOEXEC

    def __init__(self, interval: float) -> None:
        self._settime = _timerfd_settime
        fd = _timerfd_create(self._CLOCK_MONOTONIC, self._TFD_NONBLOCK | self._TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self._arm = _Itimerspec()
        self._arm.it_value.tv_sec = int(interval)
        self._arm.it_value.tv_nsec = int((interval - int(interval)) * 1e9)
        self._disarm = _Itimerspec()

    def arm(self) -> None:
        """Fires once, FLUSH_INTERVAL from now."""
        self._settime(self.fd, 0, ctypes.byref(self._arm), None)

    def disarm(self) -> None:
        """Cancels a pending expiry."""
        self._settime(self.fd, 0, ctypes.byref(self._disarm), None)

    def clear(self) -> None:
        """Consumes an expiry (the I/O thread, after poll)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass


class Output:
    """Per-cell output: coalesced stream text, queued frames, the byte cap, the sender."""

    # pylint: disable=too-many-instance-attributes

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()  # state and queue
        self.send_lock = threading.Lock()  # order of sendall calls
        self.main_ident = threading.get_ident()
        self.queue: list[bytes] = []
        self.queued = 0
        self.cell_id = ""
        self.executing = False
        self.limit = IDLE_OUTPUT_LIMIT
        self.used = 0
        self.truncated = False
        self.pend_name = ""
        self.pend: list[str] = []
        self.pend_len = 0
        self.armed = False
        self.timer = FlushTimer(FLUSH_INTERVAL)

    # Callers hold self.lock.
    def _flush_stream(self) -> None:
        if self.pend:
            text = self.pend[0] if len(self.pend) == 1 else "".join(self.pend)
            self._enqueue(
                {"type": "stream", "id": self.cell_id, "name": self.pend_name, "text": text}
            )
            self.pend = []
            self.pend_len = 0

    def _enqueue(self, msg: dict) -> None:
        frame = framing.encode(msg)
        self.queue.append(frame)
        self.queued += len(frame)

    def _arm(self) -> None:
        if not self.armed and self.executing:
            self.armed = True
            self.timer.arm()

    def disarm(self) -> None:
        """After a cell: a flush that is still pending has nothing left to do."""
        with self.lock:
            if self.armed:
                self.armed = False
                self.timer.disarm()

    def write(self, name: str, text: str) -> None:
        """Stream text from sys.stdout/sys.stderr or the fd pipes."""
        n = _nbytes(text)
        if not n:
            return
        with self.lock:
            room = self.limit - self.used
            if n > room:
                self.truncated = True
                if room <= 0:
                    return
                text = _cut(text, room)
                n = room
            self.used += n
            if self.pend and self.pend_name != name:
                self._flush_stream()
            self.pend_name = name
            self.pend.append(text)
            self.pend_len += n
            if self.pend_len < STREAM_FLUSH_BYTES or not self.executing:
                self._arm()
                return
            self._flush_stream()
        self.send()

    def event(self, msg: dict, size: int) -> bool:
        """Queues a rich event after the pending text; False if the cap dropped it."""
        with self.lock:
            if size and self.used + size > self.limit:
                self.truncated = True
                return False
            self.used += size
            self._flush_stream()
            self.cell_id and msg.setdefault("id", self.cell_id)  # pylint: disable=W0106
            self._enqueue(msg)
            big = self.queued >= STREAM_FLUSH_BYTES
            if not big:
                self._arm()
        if big:
            self.send()
        return True

    def room(self) -> int:
        """Bytes left under the cap."""
        return self.limit - self.used

    def send(self) -> None:
        """Writes every queued frame, in order, with one sendall."""
        # SIGINT raises only while a cell runs; a send after it cannot be cut short.
        masked = self.executing and threading.get_ident() == self.main_ident
        old = _block_sigint() if masked else None
        try:
            with self.send_lock:
                with self.lock:
                    if not self.queue:
                        return
                    data = self.queue[0] if len(self.queue) == 1 else b"".join(self.queue)
                    self.queue = []
                    self.queued = 0
                try:
                    self.sock.sendall(data)
                except OSError:
                    os._exit(0)  # the supervisor is gone
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def on_timer(self) -> None:
        """The I/O thread, FLUSH_INTERVAL after output appeared in a running cell: sends it."""
        with self.lock:
            self.armed = False
            if not self.executing:
                return
            self._flush_stream()
            if not self.queue:
                return
        self.send()


class PipeReader:
    """Reads one of the fd 1/2 pipes; the lock makes a drain by the main thread exact."""

    def __init__(self, out: Output, name: str, fd: int) -> None:
        self.out = out
        self.name = name
        self.fd = fd
        self.lock = threading.Lock()
        self.closed = False
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        os.set_blocking(fd, False)

    def _read(self, limit: int) -> None:
        total = 0
        while total < limit:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self.closed = True
                text = self.decoder.decode(b"", final=True)
                if text:
                    self.out.write(self.name, text)
                return
            total += len(data)
            text = self.decoder.decode(data)
            if text:
                self.out.write(self.name, text)

    def sync(self, readable: bool = True) -> None:
        """Takes in everything already written to the pipe (bounded if a writer never
        stops); with `readable` false, only waits for a drain in progress. Called by
        the main thread, and by the I/O thread when the pipe is readable."""
        if self.closed:
            return
        with self.lock:
            if readable:
                try:
                    self._read(4 * PIPE_SIZE)
                except OSError:
                    self.closed = True  # user code closed our end


def io_loop(out: Output, pipes: list[PipeReader]) -> None:
    """Thread body: reads the fd pipes and sends output when the flush timer fires."""
    _block_sigint()
    poller = select.poll()
    readers = {pipe.fd: pipe for pipe in pipes}
    for fd in readers:
        poller.register(fd, select.POLLIN)
    timer_fd = out.timer.fd
    poller.register(timer_fd, select.POLLIN)
    while True:
        for fd, events in poller.poll():
            if events & select.POLLNVAL:
                # User code closed one of our descriptors: stop watching it.
                poller.unregister(fd)
                continue
            if fd == timer_fd:
                out.timer.clear()
                out.on_timer()
                continue
            pipe = readers[fd]
            pipe.sync()
            if pipe.closed:
                poller.unregister(fd)


class TextWriter(io.TextIOBase):
    """sys.stdout / sys.stderr: feeds the cell's buffer directly."""

    def __init__(self, kernel: Kernel, name: str, fd: int) -> None:
        super().__init__()
        self._kernel = kernel
        self._name = name
        self._fd = fd
        self.buffer = _BinaryWriter(self)

    @property
    def name(self):  # type: ignore[override]
        return f"<{self._name}>"

    @property
    def encoding(self):  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self):  # type: ignore[override]
        return "replace"

    def write(self, s):  # type: ignore[override]
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        kernel = self._kernel
        now = time.perf_counter()
        if now - kernel.last_sync > PIPE_SYNC_INTERVAL:
            kernel.sync_pipes(now)
        kernel.out.write(self._name, s)
        return len(s)

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def flush(self):
        pass


class _BinaryWriter:
    """`sys.stdout.buffer`."""

    def __init__(self, text: TextWriter) -> None:
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data) -> int:
        """Writes bytes."""
        self._text.write(self._decoder.decode(bytes(data)))
        return len(data)

    def flush(self) -> None:
        """No-op."""

    def fileno(self) -> int:
        """The underlying fd."""
        return self._text.fileno()

    def writable(self) -> bool:
        """Yes."""
        return True


# --------------------------------------------------------------------------- kernel


def _mime_bundle(data: dict) -> tuple[dict, int]:
    """JSON-safe MIME bundle (binary as base64) and its size in bytes."""
    bundle = {}
    size = 0
    for mime, value in data.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = base64.b64encode(bytes(value)).decode("ascii")
        elif mime.startswith(BINARY_MIME_PREFIXES) and isinstance(value, str):
            value = value.replace("\n", "")
        if isinstance(value, str):
            size += _nbytes(value)
        else:
            try:
                size += len(json.dumps(value, default=str))
            except (TypeError, ValueError):
                value = str(value)
                size += _nbytes(value)
        bundle[mime] = value
    return bundle, size


class Kernel:
    """Serves execute/configure requests on one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = Output(sock)
        self.shell = _SHELL
        self.pipes: list[PipeReader] = []
        self.pipe_poll = select.poll()
        self.last_sync = 0.0
        self.timing = bool(os.environ.get("PYXIS_KERNEL_TIMING"))

    # ---- setup

    def setup_io(self) -> None:
        """fds 1/2 become pipes read by threads; sys.stdout/err feed the buffers directly."""
        for fd, name in ((1, "stdout"), (2, "stderr")):
            rfd, wfd = os.pipe()
            try:
                fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            os.dup2(wfd, fd)
            os.close(wfd)
            self.pipes.append(PipeReader(self.out, name, rfd))
            self.pipe_poll.register(rfd, select.POLLIN)
        threading.Thread(
            target=io_loop, args=(self.out, self.pipes), name="pyxis-io", daemon=True
        ).start()
        sys.stdout = TextWriter(self, "stdout", 1)
        sys.stderr = TextWriter(self, "stderr", 2)
        sys.__stdout__ = sys.stdout
        sys.__stderr__ = sys.stderr

    def sync_pipes(self, now: float | None = None) -> None:
        """Takes in fd-level output written so far, so it keeps its place in the order."""
        self.last_sync = time.perf_counter() if now is None else now
        # One poll tells which pipes hold data; each pipe's lock is still taken, so a
        # drain the I/O thread has begun is complete before this returns.
        ready = {fd for fd, _ in self.pipe_poll.poll(0)}
        for pipe in self.pipes:
            pipe.sync(pipe.fd in ready)

    # ---- events from the shell

    def display(self, data: dict, metadata: dict | None) -> None:
        """display_data (from display(), plt.show())."""
        self.sync_pipes()
        bundle, size = _mime_bundle(data)
        msg = {"type": "display_data", "data": bundle, "metadata": metadata or {}}
        self.out.event(msg, size)

    def execute_result(self, count: int, data: dict, metadata: dict | None) -> None:
        """execute_result from the displayhook."""
        self.sync_pipes()
        bundle, size = _mime_bundle(data)
        msg = {
            "type": "execute_result",
            "execution_count": count,
            "data": bundle,
            "metadata": metadata or {},
        }
        self.out.event(msg, size)

    def error(self, ename: str, evalue: str, stb: list) -> None:
        """An exception of the cell, bounded: a huge message or traceback is
        cut (and the reply flagged truncated), never sent whole."""
        self.sync_pipes()
        cut = False
        if len(evalue) > ERROR_VALUE_CAP:
            evalue, cut = evalue[:ERROR_VALUE_CAP] + "… [truncated]", True
        lines: list = []
        total = 0
        for entry in stb:
            for line in str(entry).split("\n"):
                if len(line) > TRACEBACK_LINE_CAP:
                    line, cut = line[:TRACEBACK_LINE_CAP] + "… [truncated]", True
                total += len(line)
                if total > TRACEBACK_TOTAL_CAP:
                    cut = True
                    break
                lines.append(line)
        while lines and not lines[-1]:
            lines.pop()
        if cut:
            with self.out.lock:
                self.out.truncated = True
        msg = {"type": "error", "ename": ename[:256], "evalue": evalue, "traceback": lines}
        self.out.event(msg, 0)

    def figure(self, fig) -> None:
        """One matplotlib figure as image/png + text/plain."""
        if self.out.room() <= 0:
            with self.out.lock:
                self.out.truncated = True
            return
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", bbox_inches="tight")
        except Exception:  # pylint: disable=broad-except
            self.shell.showtraceback()
            return
        bundle = {"image/png": buf.getvalue(), "text/plain": repr(fig)}
        charts.add_chart(bundle, fig)  # application/vnd.pyxis.chart+json
        self.display(bundle, {})

    def flush_figures(self) -> None:
        """Emits and closes every open figure."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        # pylint: disable=import-outside-toplevel
        from matplotlib._pylab_helpers import Gcf

        managers = Gcf.get_all_fig_managers()
        if not managers:
            return
        for manager in managers:
            self.figure(manager.canvas.figure)
        pyplot.close("all")

    # ---- requests

    def execute(self, msg: dict, started: float) -> None:
        """Runs one cell and sends its events and reply."""
        out = self.out
        shell = self.shell
        code = msg.get("code") or ""
        silent = bool(msg.get("silent"))
        with out.lock:
            out.cell_id = str(msg.get("id", ""))
            out.limit = int(msg.get("max_output_bytes") or DEFAULT_MAX_OUTPUT)
            out.used = out.pend_len
            out.truncated = False
        result = None
        status = "ok"
        try:
            out.executing = True
            try:
                result = shell.run_cell(code, store_history=not silent, silent=silent)
            finally:
                out.executing = False
        except KeyboardInterrupt:
            out.executing = False
            status = "error"
            self.error("KeyboardInterrupt", "", ["KeyboardInterrupt"])
        try:
            self.sync_pipes()
            self.flush_figures()
        except KeyboardInterrupt:
            pass
        if result is not None and (result.error_before_exec or result.error_in_exec):
            status = "error"
        if shell.exit_now:
            shell.exit_now = False
        count = shell.execution_count if silent else max(shell.execution_count - 1, 0)
        if result is not None and result.execution_count is not None:
            count = result.execution_count
        reply = {
            "type": "execute_reply",
            "id": out.cell_id,
            "status": status,
            "execution_count": count,
            "truncated": out.truncated,
        }
        if self.timing:
            reply["kernel_us"] = round((time.perf_counter() - started) * 1e6, 1)
        with out.lock:
            out._flush_stream()  # pylint: disable=protected-access
            out._enqueue(reply)  # pylint: disable=protected-access
            out.limit = IDLE_OUTPUT_LIMIT
            out.used = 0
        out.send()
        out.disarm()

    def configure(self, msg: dict) -> None:
        """Sets environment variables."""
        status = "ok"
        try:
            env = msg.get("env") or {}
            os.environ.update({str(k): str(v) for k, v in env.items()})
        except (TypeError, ValueError, AttributeError) as exc:
            status = f"error: {exc}"
        self.reply({"type": "configure_reply", "id": msg.get("id", ""), "status": status})

    def reply(self, msg: dict) -> None:
        """Queues and sends one message."""
        with self.out.lock:
            self.out._enqueue(msg)  # pylint: disable=protected-access
        self.out.send()

    def serve(self) -> None:
        """The request loop; returns at EOF or shutdown."""
        reader = framing.FrameReader(self.sock)
        while True:
            try:
                msg = reader.read()
            except framing.FrameError:
                return
            except OSError:
                return
            started = time.perf_counter()
            if msg is None:
                return
            kind = msg.get("type")
            if kind == "execute_request":
                self.execute(msg, started)
            elif kind == "configure":
                self.configure(msg)
            elif kind == "shutdown":
                return
            # Unknown requests are ignored: the supervisor only sends the above.


def _on_sigint(_signum, _frame):
    kernel = SINK
    if kernel is not None and kernel.out.executing:
        raise KeyboardInterrupt


def _setup_process() -> None:
    # The zygote's own settings (host paths) are not the user's business.
    os.environ.pop("PYXIS_SANDBOX_LIB", None)
    os.environ.update(KERNEL_ENV)
    workspace = os.environ.get("PYXIS_WORKSPACE", "/workspace")
    if os.path.isdir(workspace):
        os.environ["HOME"] = workspace
        os.chdir(workspace)
        if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK):
            os.environ["MPLCONFIGDIR"] = "/tmp/.matplotlib"
        sysenv.apply()  # the system tools' caches in /tmp, ImageMagick's policy
    os.environ.setdefault("MPLBACKEND", "Agg")


def main(fd: int = 3) -> None:
    """Serves the kernel socket `fd` until EOF or shutdown."""
    global SINK  # pylint: disable=global-statement
    prepare()
    _setup_process()
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    kernel = Kernel(sock)
    kernel.shell = _SHELL
    # Ready first: the pipes and threads below are made while the supervisor answers its
    # client, and before this thread reads the first request.
    kernel.reply({"type": "ready"})
    kernel.setup_io()
    SINK = kernel
    if _SHELL is not None:
        _SHELL.user_ns["_dh"][:] = [os.getcwd()]
        _SHELL.hold_traps()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        kernel.serve()
    finally:
        SINK = None
        try:
            kernel.out.send()
        except Exception:  # pylint: disable=broad-except
            pass


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
