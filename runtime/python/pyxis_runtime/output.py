"""A kernel's output machinery: the per-cell buffer and byte cap, the fd 1/2 pipes and the
I/O thread that drains them, and the `sys.stdout`/`sys.stderr` writers.

Everything a cell makes the supervisor hold is charged against the cell's cap: stream text,
each rich event's whole frame (data, metadata, MIME keys, transient) and a fixed overhead per
event, so that neither many tiny results nor huge metadata can get past it.
"""

from __future__ import annotations

import codecs
import ctypes
import fcntl
import io
import os
import select
import signal
import socket
import sys
import threading
import time

from . import framing

STREAM_FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 0.1
IDLE_OUTPUT_LIMIT = 1024 * 1024
PIPE_SIZE = 1024 * 1024
# Between two checks of the fd-level pipes from Python-level writes (keeps print() cheap
# while output of a finished subprocess still comes before the next print).
PIPE_SYNC_INTERVAL = 0.0005
# Charged for every event on top of its bytes: what the supervisor spends to hold one.
EVENT_OVERHEAD = 64
# Below this much room a rich event is not even computed (formatted, rendered): it would
# hardly fit. Stream text still fills the rest.
FULL_ROOM = 512


def nbytes(text: str) -> int:
    """UTF-8 size of a text."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def cut(text: str, size: int) -> str:
    """The longest prefix of `text` of at most `size` UTF-8 bytes."""
    if text.isascii():
        return text[:size]
    return text.encode("utf-8", "replace")[:size].decode("utf-8", "ignore")


def block_sigint():
    """Blocks SIGINT in the calling thread; returns the previous mask."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


class _Timespec(ctypes.Structure):  # pylint: disable=too-few-public-methods
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):  # pylint: disable=too-few-public-methods
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


# Looked up once, in the zygote; every kernel inherits them.
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.srandom.argtypes = [ctypes.c_uint]
LIBC.srand48.argtypes = [ctypes.c_long]
_timerfd_create = LIBC.timerfd_create
_timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_timerfd_settime = LIBC.timerfd_settime
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
        n = nbytes(text)
        if not n:
            return
        with self.lock:
            room = self.limit - self.used
            if not self.pend or self.pend_name != name:
                # This text starts a new stream event: charge its overhead now.
                if room <= EVENT_OVERHEAD:
                    self.truncated = True
                    return
                self.used += EVENT_OVERHEAD
                room -= EVENT_OVERHEAD
            if n > room:
                self.truncated = True
                text = cut(text, room)
                n = room
                if not text:
                    return
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

    def event(self, msg: dict, size: int = 0) -> bool:
        """Queues a rich event after the pending text; False if the cap dropped it.

        `size` is a lower bound of the event's bytes known before encoding (its data): an
        event that cannot fit is dropped without being encoded. What is charged is the
        encoded frame plus EVENT_OVERHEAD."""
        with self.lock:
            if self.used + size + EVENT_OVERHEAD > self.limit:
                self.truncated = True
                return False
            if self.cell_id:
                msg.setdefault("id", self.cell_id)
            frame = framing.encode(msg)
            cost = len(frame) + EVENT_OVERHEAD
            if self.used + cost > self.limit:
                self.truncated = True
                return False
            self.used += cost
            self._flush_stream()
            self.queue.append(frame)
            self.queued += len(frame)
            big = self.queued >= STREAM_FLUSH_BYTES
            if not big:
                self._arm()
        if big:
            self.send()
        return True

    def force_event(self, msg: dict) -> None:
        """Queues a small event past the cap (the name of a cell's exception) and flags
        the cell truncated."""
        with self.lock:
            self.truncated = True
            if self.cell_id:
                msg.setdefault("id", self.cell_id)
            self._flush_stream()
            self._enqueue(msg)
            self._arm()

    def room(self) -> int:
        """Bytes left under the cap."""
        return self.limit - self.used

    def full(self) -> bool:
        """No room is left for another event (and the cell is flagged truncated): what
        would make one need not even be computed."""
        if self.limit - self.used > FULL_ROOM:
            return False
        self.mark_truncated()
        return True

    def mark_truncated(self) -> None:
        """Something of this cell was cut or dropped."""
        with self.lock:
            self.truncated = True

    def start_cell(self, cell_id: str, limit: int) -> None:
        """A cell begins: its id and cap (text still pending from before counts)."""
        with self.lock:
            self.cell_id = cell_id
            self.limit = limit
            self.used = self.pend_len + (EVENT_OVERHEAD if self.pend else 0)
            self.truncated = False

    def finish_cell(self, reply: dict) -> None:
        """Queues the cell's reply after its pending text and sends everything."""
        with self.lock:
            self._flush_stream()
            self._enqueue(reply)
            self.limit = IDLE_OUTPUT_LIMIT
            self.used = 0
        self.send()
        self.disarm()

    def reply(self, msg: dict) -> None:
        """Queues and sends one message that is not a cell's output (not charged)."""
        with self.lock:
            self._enqueue(msg)
        self.send()

    def send(self) -> None:
        """Writes every queued frame, in order, with one sendall."""
        # SIGINT raises only while a cell runs; a send after it cannot be cut short.
        masked = self.executing and threading.get_ident() == self.main_ident
        old = block_sigint() if masked else None
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
    block_sigint()
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


class Pipes:
    """fds 1 and 2 as pipes, read by the I/O thread and synced by the main thread."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.readers: list[PipeReader] = []
        self.poll = select.poll()
        self.last_sync = 0.0

    def install(self) -> None:
        """fds 1/2 become pipes read by a thread; sys.stdout/err feed the buffer directly."""
        for fd, name in ((1, "stdout"), (2, "stderr")):
            rfd, wfd = os.pipe()
            try:
                fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
            os.dup2(wfd, fd)
            os.close(wfd)
            self.readers.append(PipeReader(self.out, name, rfd))
            self.poll.register(rfd, select.POLLIN)
        threading.Thread(
            target=io_loop, args=(self.out, self.readers), name="pyxis-io", daemon=True
        ).start()
        sys.stdout = TextWriter(self.out, self, "stdout", 1)
        sys.stderr = TextWriter(self.out, self, "stderr", 2)
        sys.__stdout__ = sys.stdout
        sys.__stderr__ = sys.stderr

    def sync(self, now: float | None = None) -> None:
        """Takes in fd-level output written so far, so it keeps its place in the order."""
        self.last_sync = time.perf_counter() if now is None else now
        # One poll tells which pipes hold data; each pipe's lock is still taken, so a
        # drain the I/O thread has begun is complete before this returns.
        ready = {fd for fd, _ in self.poll.poll(0)}
        for pipe in self.readers:
            pipe.sync(pipe.fd in ready)


class TextWriter(io.TextIOBase):
    """sys.stdout / sys.stderr: feeds the cell's buffer directly."""

    def __init__(self, out: Output, pipes: Pipes, name: str, fd: int) -> None:
        super().__init__()
        self._out = out
        self._pipes = pipes
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
        pipes = self._pipes
        now = time.perf_counter()
        if now - pipes.last_sync > PIPE_SYNC_INTERVAL:
            pipes.sync(now)
        self._out.write(self._name, s)
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
