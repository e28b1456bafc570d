"""The kernel driver: runs cells with IPython inside the sandbox and streams framed events.

`prepare()` does the expensive, user-invisible setup (imports, matplotlib configuration, the
IPython shell, a warm-up); the zygote calls it once before forking so that every kernel
inherits it. `main(fd)` then serves one kernel socket until EOF or `shutdown`.
"""

from __future__ import annotations

import base64
import builtins
import collections
import ctypes
import getpass
import io
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from . import charts, framing, output, packages, sysenv
from .output import Output, Pipes, block_sigint, nbytes

DEFAULT_MAX_OUTPUT = 1024 * 1024
# Bound of an answer that is not a cell's output (completions, inspection).
REPLY_LIMIT = 1024 * 1024
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

_SHELL = None


# --------------------------------------------------------------------------- preparation


def _configure_matplotlib() -> None:
    """Selects the Pyxis backend and a sans-serif font list with CJK fallbacks."""
    # pylint: disable=import-outside-toplevel,protected-access
    import matplotlib

    matplotlib.use(MPL_BACKEND, force=True)
    # As IPython's `%matplotlib inline` does: figures made by pyplot in a cell are shown
    # at its end.
    matplotlib.interactive(True)
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
    shell.mpl_backend = MPL_BACKEND
    _register_figure_formatter(shell)
    return shell


def _register_figure_formatter(shell) -> None:
    """A Figure's image/png, as `%matplotlib inline` registers it in Jupyter
    (IPython's print_figure with the inline backend's bbox_inches="tight")."""
    # pylint: disable=import-outside-toplevel
    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    def png(fig):
        kernel = shell.kernel
        if kernel is not None and kernel.out.full():
            return None  # no room: do not even render it
        return print_figure(fig, "png", bbox_inches="tight", base64=True)

    shell.display_formatter.formatters["image/png"].for_type(Figure, png)
    # `%config InlineBackend.figure_format = 'retina'` (or 'svg', …) works as in Jupyter:
    # matplotlib-inline's configurable then registers IPython's formatters of that choice.
    try:
        from matplotlib_inline.config import InlineBackend
    except ImportError:
        return
    config = InlineBackend.instance(parent=shell)
    config.shell = shell
    if config not in shell.configurables:
        shell.configurables.append(config)


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
    _drop_open_fonts()


def _drop_open_fonts() -> None:
    """Closes the fonts the warm-up opened. matplotlib clears its font cache in every forked
    child (`os.register_at_fork`), and there each cached font's file descriptor is already
    closed (the sandbox keeps only its own): closing them raised an ignored OSError per font,
    whose traceback every kernel formatted (reading zygote.py's source) as it started.
    Cleared here once, the children have nothing to clear; a kernel opens the fonts it draws
    with, as it did."""
    font_manager = sys.modules.get("matplotlib.font_manager")
    get_font = getattr(font_manager, "_get_font", None)
    if get_font is not None and hasattr(get_font, "cache_clear"):
        get_font.cache_clear()


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
    shell.display_formatter.format(fig)
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


# --------------------------------------------------------------------------- kernel


def _mime_bundle(data: dict) -> tuple[dict, int]:
    """JSON-safe MIME bundle (binary as base64) and its size in bytes."""
    bundle = {}
    size = 0
    for mime, value in data.items():
        mime = str(mime)
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = base64.b64encode(bytes(value)).decode("ascii")
        elif mime.startswith(BINARY_MIME_PREFIXES) and isinstance(value, str):
            value = value.replace("\n", "")
        if isinstance(value, str):
            size += nbytes(value)
        else:
            try:
                size += len(json.dumps(value, default=str))
            except (TypeError, ValueError, RecursionError):
                value = str(value)
                size += nbytes(value)
        bundle[mime] = value
        size += len(mime)
    return bundle, size


def _json_object(value) -> dict:
    """A dict that JSON can carry (metadata, transient, comm data): anything else is {}."""
    if not isinstance(value, dict) or not value:
        return {}
    try:
        json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):
        return {}
    return value


# numpy's MT19937 state: 624 32-bit words, then the position of the next one.
_MT_KEY_BYTES = 624 * 4
# Set in the zygote by `preset()`: (id of numpy's global bit generator, its state's address).
_NUMPY_STATE = None


def _rekey_numpy(numpy) -> None:
    """Gives numpy's legacy global RandomState a fresh MT19937 key from the OS.

    In a kernel forked from the zygote the state is written in place, at the address the
    zygote found (a fork keeps addresses): numpy's own seeding path, run in every kernel,
    writes ~400 KiB of the zygote's pages (its casting and ufunc machinery), which then
    count as the session's own memory. A key of 624 random words with the position at the
    end is a valid state (the next draw regenerates from it); its first word's top bit is
    set as MT's own seeding does, so it is never all zero. The zygote seeded once after its
    warm-up, so no cached Gaussian is carried over."""
    bit_generator = numpy.random.mtrand._rand._bit_generator  # pylint: disable=protected-access
    if _NUMPY_STATE is not None and _NUMPY_STATE[0] == id(bit_generator):
        key = bytearray(os.urandom(_MT_KEY_BYTES))
        key[3] |= 0x80  # little-endian: the top bit of key[0]
        address = _NUMPY_STATE[1]
        ctypes.memmove(address, bytes(key), _MT_KEY_BYTES)
        ctypes.c_int.from_address(address + _MT_KEY_BYTES).value = 624
        return
    # 128 bits from the OS, as a fresh process's SeedSequence would draw (its own
    # seeding path costs more than the array form).
    numpy.random.seed(numpy.frombuffer(os.urandom(16), dtype=numpy.uint32))


def _reseed() -> None:
    """Gives this kernel random state of its own: a fork copied the zygote's.

    Python's `random` reseeds itself in a forked child already (os.register_at_fork);
    the rest does not: numpy's legacy global RandomState (which np.random.*, pandas'
    sample, scikit-learn's and scipy's random_state=None use), tempfile's name
    sequence, multiprocessing's authentication key, and the C library's rand()."""
    import random  # pylint: disable=import-outside-toplevel

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        _rekey_numpy(numpy)
    tempfile._name_sequence = None  # pylint: disable=protected-access
    mp_process = sys.modules.get("multiprocessing.process")
    if mp_process is not None:
        mp_process.current_process().authkey = os.urandom(32)
    seed = int.from_bytes(os.urandom(4), "little")
    output.LIBC.srandom(seed)
    output.LIBC.srand48(seed)
    jedi_settings = sys.modules.get("jedi.settings")
    if jedi_settings is not None:
        # Its default (~/.cache of the zygote's HOME) is a host path; completions may write it.
        jedi_settings.cache_directory = "/tmp/.cache/jedi"


def _stdin_not_implemented(what: str) -> Exception:
    """ipykernel's error for input() in a cell whose client cannot answer."""
    from IPython.core.error import (  # pylint: disable=import-outside-toplevel
        StdinNotImplementedError,
    )

    return StdinNotImplementedError(
        f"{what} was called, but this frontend does not support input requests."
    )


class Kernel:
    """Serves execute, completion, inspection, input and comm requests on one socket."""

    # pylint: disable=too-many-instance-attributes

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = Output(sock)
        self.pipes = Pipes(self.out)
        self.shell = _SHELL
        self.reader = framing.FrameReader(sock)
        # Requests that arrived while a cell waited for input; served after it.
        self.deferred: collections.deque = collections.deque()
        self.allow_stdin = False
        self.stopping = False
        self.early = framing.EarlyInterrupts(self.reader)
        self.timing = bool(os.environ.get("PYXIS_KERNEL_TIMING"))

    # ---- setup

    def setup_io(self) -> None:
        """fds 1/2 become pipes read by a thread; sys.stdout/err feed the buffers directly."""
        self.pipes.install()

    def sync_pipes(self) -> None:
        """Takes in fd-level output written so far, so it keeps its place in the order."""
        self.pipes.sync()

    def install_input(self) -> None:
        """input() and getpass.getpass() ask the client (when the cell allows it)."""
        builtins.input = self.raw_input
        getpass.getpass = self.getpass

    # ---- events from the shell

    def display(
        self, data: dict, metadata: dict | None, transient: dict | None = None, update=False
    ) -> None:
        """display_data (display(), figures), or update_display_data."""
        if self.out.full():
            return
        self.sync_pipes()
        bundle, size = _mime_bundle(data)
        msg = {
            "type": "update_display_data" if update else "display_data",
            "data": bundle,
            "metadata": _json_object(metadata),
        }
        transient = _json_object(transient)
        if transient or update:
            msg["transient"] = transient
        self.out.event(msg, size)

    def execute_result(self, count: int, data: dict, metadata: dict | None) -> None:
        """execute_result from the displayhook."""
        self.sync_pipes()
        bundle, size = _mime_bundle(data)
        msg = {
            "type": "execute_result",
            "execution_count": count,
            "data": bundle,
            "metadata": _json_object(metadata),
        }
        self.out.event(msg, size)

    def clear_output(self, wait: bool) -> None:
        """clear_output from IPython.display.clear_output()."""
        if self.out.full():
            return
        self.sync_pipes()
        self.out.event({"type": "clear_output", "wait": bool(wait)})

    def error(self, ename: str, evalue: str, stb: list) -> None:
        """An exception of the cell, bounded: a huge message or traceback is
        cut (and the reply flagged truncated), never sent whole. It counts against
        the cell's cap; without room, only its name and the start of its message go."""
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
            self.out.mark_truncated()
        msg = {"type": "error", "ename": ename[:256], "evalue": evalue, "traceback": lines}
        if not self.out.event(msg, total + len(evalue)):
            # The client must still learn what was raised.
            short = {"type": "error", "ename": ename[:256], "evalue": evalue[:1024]}
            self.out.force_event(dict(short, traceback=[]))

    def formatter_error(self, stb: list) -> None:
        """A display formatter raised: its traceback goes to stderr, as IPython prints it;
        the cell's own code did not fail."""
        text = "\n".join(str(entry) for entry in stb)
        self.sync_pipes()
        self.out.write("stderr", text if text.endswith("\n") else text + "\n")

    # ---- input

    def raw_input(self, prompt: object = "") -> str:
        """builtins.input of a cell."""
        return self._input("raw_input", prompt, password=False)

    def getpass(self, prompt: str = "Password: ", stream=None) -> str:  # pylint: disable=W0613
        """getpass.getpass of a cell."""
        return self._input("getpass", prompt, password=True)

    def _input(self, what: str, prompt: object, password: bool) -> str:
        if not (self.allow_stdin and self.out.executing):
            raise _stdin_not_implemented(what)
        self.sync_pipes()
        ident = self.out.cell_id
        with self.out.lock:
            self.out._flush_stream()  # pylint: disable=protected-access
        self.out.reply(
            {"type": "input_request", "id": ident, "prompt": str(prompt), "password": password}
        )
        while True:
            msg = self._next_request_interruptible()
            if msg is None:
                self.stopping = True
                raise EOFError("the client went away")
            kind = msg.get("type")
            if kind == "input_reply":
                if msg.get("id") == ident:
                    value = msg.get("value")
                    return value if isinstance(value, str) else str(value or "")
                continue  # an answer to an earlier prompt
            self.deferred.append(msg)
            if kind == "shutdown":
                raise EOFError("the kernel is shutting down")

    def _next_request_interruptible(self) -> dict | None:
        """The next request while a cell waits: SIGINT (KeyboardInterrupt) may end the
        wait, but never between a read and its buffering."""
        reader = self.reader
        while True:
            try:
                msg = reader.buffer.next_frame()
            except framing.FrameError:
                return None
            if msg is not None:
                return msg
            reader._poll.poll()  # pylint: disable=protected-access
            old = block_sigint()
            try:
                try:
                    data = self.sock.recv(1 << 18)
                except OSError:
                    data = b""
                if data:
                    reader.buffer.feed(data)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            if not data:
                return None

    # ---- requests

    def execute(self, msg: dict, started: float) -> None:
        """Runs one cell and sends its events and reply."""
        # pylint: disable=too-many-branches
        out = self.out
        shell = self.shell
        code = msg.get("code") or ""
        if not isinstance(code, str):
            code = str(code)
        silent = bool(msg.get("silent"))
        store_history = msg.get("store_history")
        store_history = (not silent) if store_history is None else bool(store_history)
        out.start_cell(
            str(msg.get("id", "")), int(msg.get("max_output_bytes") or DEFAULT_MAX_OUTPUT)
        )
        self.allow_stdin = bool(msg.get("allow_stdin"))
        result = None
        status = "ok"
        try:
            out.executing = True
            try:
                if self.early.take():
                    raise KeyboardInterrupt
                result = shell.run_cell(code, store_history=store_history, silent=silent)
                self._flush_figures()
            finally:
                out.executing = False
        except KeyboardInterrupt:
            out.executing = False
            status = "error"
            self.error("KeyboardInterrupt", "", ["KeyboardInterrupt"])
        self.allow_stdin = False
        try:
            self.sync_pipes()
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
        expressions = msg.get("user_expressions")
        if expressions and isinstance(expressions, dict):
            reply["user_expressions"] = (
                self._user_expressions(expressions) if status == "ok" else {}
            )
            reply["truncated"] = out.truncated
        if self.timing:
            reply["kernel_us"] = round((time.perf_counter() - started) * 1e6, 1)
        out.finish_cell(reply)

    def _flush_figures(self) -> None:
        """The figures pyplot made in this cell, shown and closed (the inline backend's
        post_execute)."""
        backend = sys.modules.get("pyxis_runtime.mplbackend")
        if backend is not None:
            backend.flush_figures()

    def _user_expressions(self, expressions: dict) -> dict:
        """IPython's user_expressions, charged against the cell's cap."""
        out = self.out
        try:
            out.executing = True
            try:
                results = self.shell.user_expressions(
                    {str(k): str(v) for k, v in expressions.items()}
                )
            finally:
                out.executing = False
        except KeyboardInterrupt:
            return {}
        try:
            size = len(framing.encode(results)) + output.EVENT_OVERHEAD * len(results)
        except (TypeError, ValueError, RecursionError):
            return {}
        with out.lock:
            if out.used + size > out.limit:
                out.truncated = True
                return {}
            out.used += size
        return results

    def complete(self, msg: dict) -> None:
        """complete_request → complete_reply (IPython's completer, as ipykernel uses it)."""
        # pylint: disable=import-outside-toplevel
        from IPython.core.completer import provisionalcompleter, rectify_completions

        code, cursor = self._code_and_cursor(msg)
        matches: list = []
        types: list = []
        start = end = cursor
        try:
            with provisionalcompleter():
                raw = self.shell.Completer.completions(code, cursor)
                completions = list(rectify_completions(code, raw))
        except Exception:  # pylint: disable=broad-except
            completions = []
        budget = REPLY_LIMIT
        for comp in completions:
            budget -= 2 * nbytes(comp.text) + nbytes(comp.signature or "") + 64
            if budget < 0:
                break
            matches.append(comp.text)
            types.append(
                {
                    "start": comp.start,
                    "end": comp.end,
                    "text": comp.text,
                    "type": comp.type,
                    "signature": comp.signature,
                }
            )
        if completions:
            start, end = completions[0].start, completions[0].end
        self.out.reply(
            {
                "type": "complete_reply",
                "id": msg.get("id", ""),
                "matches": matches,
                "cursor_start": start,
                "cursor_end": end,
                "metadata": {"_jupyter_types_experimental": types},
            }
        )

    def inspect(self, msg: dict) -> None:
        """inspect_request → inspect_reply (IPython's object_inspect_mime)."""
        from IPython.utils.tokenutil import token_at_cursor  # pylint: disable=C0415

        code, cursor = self._code_and_cursor(msg)
        level = msg.get("detail_level")
        level = 1 if level == 1 else 0
        data: dict = {}
        found = False
        try:
            name = token_at_cursor(code, cursor)
            bundle = self.shell.object_inspect_mime(name, detail_level=level)
            if not self.shell.enable_html_pager:
                bundle.pop("text/html", None)
            data, _ = _mime_bundle(bundle)
            found = True
        except KeyError:
            pass
        except Exception:  # pylint: disable=broad-except
            pass  # an object whose inspection raises is reported as not found
        encoded = len(framing.encode({"data": data}))
        if encoded > REPLY_LIMIT:
            text = str(data.get("text/plain", ""))
            data = {"text/plain": output.cut(text, REPLY_LIMIT // 2) + "\n… [truncated]"}
        self.out.reply(
            {
                "type": "inspect_reply",
                "id": msg.get("id", ""),
                "found": found,
                "data": data,
                "metadata": {},
            }
        )

    def is_complete(self, msg: dict) -> None:
        """is_complete_request → is_complete_reply."""
        code = msg.get("code")
        status, indent = "unknown", ""
        if isinstance(code, str):
            try:
                status, spaces = self.shell.input_transformer_manager.check_complete(code)
                if status == "incomplete":
                    indent = " " * int(spaces or 0)
            except Exception:  # pylint: disable=broad-except
                status = "unknown"
        self.out.reply(
            {
                "type": "is_complete_reply",
                "id": msg.get("id", ""),
                "status": status,
                "indent": indent,
            }
        )

    def comm(self, msg: dict) -> None:
        """Comm requests: no targets are registered, so an open is answered by a close
        (as ipykernel's comm manager does) and messages on unknown comms are ignored."""
        kind = msg.get("type")
        ident = msg.get("id", "")
        if kind == "comm_info_request":
            self.out.reply({"type": "comm_info_reply", "id": ident, "comms": {}})
        elif kind == "comm_open":
            comm_id = msg.get("comm_id")
            comm_id = comm_id if isinstance(comm_id, str) else str(comm_id)
            self.out.reply(
                {"type": "comm_close", "id": ident, "comm_id": comm_id[:256], "data": {}}
            )

    @staticmethod
    def _code_and_cursor(msg: dict) -> tuple[str, int]:
        code = msg.get("code")
        code = code if isinstance(code, str) else ""
        cursor = msg.get("cursor_pos")
        if not isinstance(cursor, int) or isinstance(cursor, bool) or not 0 <= cursor <= len(code):
            cursor = len(code)
        return code, cursor

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
        self.out.reply(msg)

    def next_request(self) -> dict | None:
        """A deferred request first, then the socket; None at EOF or a bad frame."""
        if self.deferred:
            return self.deferred.popleft()
        if self.stopping:
            return None
        try:
            return self.reader.read()
        except (framing.FrameError, OSError):
            return None

    def serve(self) -> None:
        """The request loop; returns at EOF or shutdown."""
        handlers = {
            "configure": self.configure,
            "complete_request": self.complete,
            "inspect_request": self.inspect,
            "is_complete_request": self.is_complete,
            "comm_info_request": self.comm,
            "comm_open": self.comm,
            "comm_msg": self.comm,
            "comm_close": self.comm,
        }
        while True:
            msg = self.early.next_request(self.next_request)
            started = time.perf_counter()
            if msg is None:
                return
            kind = msg.get("type")
            if kind == "execute_request":
                self.execute(msg, started)
            elif kind == "shutdown":
                return
            else:
                handler = handlers.get(kind)
                if handler is not None:
                    try:
                        handler(msg)
                    except KeyboardInterrupt:
                        pass
                # Anything else (a stray input_reply, an unknown type) is ignored.

    def on_sigint(self, _signum, _frame) -> None:
        """SIGINT interrupts a running cell (KeyboardInterrupt), or the one about to run
        (`framing.EarlyInterrupts`), nothing else."""
        if self.out.executing:
            raise KeyboardInterrupt
        self.early.signalled()


# What `preset()` did in the zygote: the workspace it set the environment for.
_PRESET_WORKSPACE = None


def preset(workspace: str = "/workspace") -> None:
    """In the zygote, after `prepare()`: the process settings every kernel it forks makes
    the same at start (the environment, the session's package path, the auto-installer,
    numpy's state's address), so that a kernel's `_setup_process` finds them done.
    Anything a kernel changes after the fork is copied from the zygote's pages into its
    own: each of these, done in every kernel, cost it 100–400 KiB of private memory."""
    global _PRESET_WORKSPACE, _NUMPY_STATE  # pylint: disable=global-statement
    os.environ.pop("PYXIS_SANDBOX_LIB", None)
    os.environ.update(KERNEL_ENV)
    os.environ["HOME"] = workspace
    os.environ["MPLCONFIGDIR"] = "/tmp/.matplotlib"
    sysenv.apply()
    sysenv.add_packages()
    packages.add_auto_installer()
    os.environ.setdefault("MPLBACKEND", "Agg")
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        _NUMPY_STATE = _numpy_state(numpy)
    _PRESET_WORKSPACE = workspace


def _numpy_state(numpy) -> tuple[int, int] | None:
    """Seeds numpy's legacy global RandomState (dropping a cached Gaussian: every kernel
    re-keys the state, see `_rekey_numpy`) and says where its MT19937 state is."""
    numpy.random.seed(0)
    bit_generator = numpy.random.mtrand._rand._bit_generator  # pylint: disable=protected-access
    if type(bit_generator).__name__ != "MT19937":
        return None
    return id(bit_generator), bit_generator.ctypes.state_address


def _setup_process() -> None:
    workspace = os.environ.get("PYXIS_WORKSPACE", "/workspace")
    if (
        workspace == _PRESET_WORKSPACE
        and os.path.isdir(workspace)
        and os.access("/tmp", os.W_OK)
        and os.environ.get("HOME") == workspace
    ):
        os.chdir(workspace)  # the rest was done by `preset()` in the zygote
        return
    # The zygote's own settings (host paths) are not the user's business.
    os.environ.pop("PYXIS_SANDBOX_LIB", None)
    os.environ.update(KERNEL_ENV)
    if os.path.isdir(workspace):
        os.environ["HOME"] = workspace
        os.chdir(workspace)
        if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK):
            os.environ["MPLCONFIGDIR"] = "/tmp/.matplotlib"
        sysenv.apply()  # the system tools' caches in /tmp, ImageMagick's policy
        sysenv.add_packages()  # the session's own packages, in the workspace
        packages.add_auto_installer()  # PYX_AUTO_INSTALL, when the server sets it
    os.environ.setdefault("MPLBACKEND", "Agg")


def main(fd: int = 3) -> None:
    """Serves the kernel socket `fd` until EOF or shutdown."""
    prepare()
    _setup_process()
    _reseed()
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    kernel = Kernel(sock)
    # Ready first: the pipes and threads below are made while the supervisor answers its
    # client, and before this thread reads the first request.
    kernel.reply({"type": "ready"})
    kernel.setup_io()
    kernel.install_input()
    if _SHELL is not None:
        _SHELL.kernel = kernel
        _SHELL.user_ns["_dh"][:] = [os.getcwd()]
        _SHELL.hold_traps()
    signal.signal(signal.SIGINT, kernel.on_sigint)
    try:
        kernel.serve()
    finally:
        if _SHELL is not None:
            _SHELL.kernel = None
        try:
            kernel.out.send()
        except Exception:  # pylint: disable=broad-except
            pass


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
