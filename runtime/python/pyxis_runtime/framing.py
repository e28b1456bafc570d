"""Length-prefixed JSON frames: a 4-byte big-endian length, then UTF-8 JSON (an object)."""

from __future__ import annotations

import json
import select
import socket
import struct

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")
_RECV_SIZE = 256 * 1024
# json.dumps builds a new encoder per call when given options; one will do.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


class FrameError(Exception):
    """The peer sent something that is not a valid frame; the connection must be closed."""


def encode(msg: dict) -> bytes:
    """One frame. Lone surrogates (possible in user text) become '?' so the JSON is UTF-8."""
    body = _ENCODER.encode(msg).encode("utf-8", "replace")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict:
    """The message of one frame body."""
    try:
        msg = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"invalid JSON frame: {exc}") from exc
    if not isinstance(msg, dict):
        raise FrameError("frame is not a JSON object")
    return msg


class FrameBuffer:
    """Accumulates received bytes and yields the complete frames in them."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> None:
        """Adds received bytes."""
        self._buf += data

    def pending(self) -> int:
        """How many bytes are buffered."""
        return len(self._buf)

    def next_frame(self) -> dict | None:
        """The next complete message, or None when more bytes are needed."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = _HEADER.unpack_from(buf, 0)
        if length > self._max:
            raise FrameError(f"frame of {length} bytes exceeds the {self._max} byte limit")
        end = 4 + length
        if len(buf) < end:
            return None
        body = bytes(buf[4:end])
        del buf[:end]
        return decode_body(body)


class FrameReader:
    """Reads frames from a blocking stream socket.

    It waits in poll() for input rather than in recv(): a Unix socket wakes a task
    blocked in recv() also whenever the peer reads what this side sent (to report
    room to write), so each reply would cost the kernel a useless wakeup. poll()
    is woken for input only.
    """

    def __init__(self, sock: socket.socket, max_frame: int = MAX_FRAME) -> None:
        self.sock = sock
        self.buffer = FrameBuffer(max_frame)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def read(self) -> dict | None:
        """The next message, or None at EOF. Raises FrameError on a bad frame."""
        while True:
            msg = self.buffer.next_frame()
            if msg is not None:
                return msg
            self._poll.poll()
            data = self.sock.recv(_RECV_SIZE)
            if not data:
                if self.buffer.pending():
                    raise FrameError("EOF inside a frame")
                return None
            self.buffer.feed(data)

    def has_input(self) -> bool:
        """Whether bytes of a frame are buffered or readable now (no wait)."""
        if self.buffer.pending():
            return True
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False


class EarlyInterrupts:
    """SIGINT that comes before a kernel's cell can get it.

    The server signals only after it has written a cell's request, and writes the next
    request only after the cell's reply. So a SIGINT that comes while the kernel waits for
    a request with none there was for a cell already answered (ignored); one that comes
    while a request is there, or after one was read and before its cell runs, is for that
    cell, which ends at once with KeyboardInterrupt (see `take`).
    """

    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.waiting = False
        self.pending = False

    def signalled(self) -> None:
        """A SIGINT came while no cell could get it."""
        if not self.waiting or self.reader.has_input():
            self.pending = True

    def next_request(self, read) -> dict | None:
        """`read()`, the kernel's wait for its next request, with an interrupt that came
        since the last reply forgotten unless that request is already here."""
        if self.pending and not self.reader.has_input():
            self.pending = False
        self.waiting = True
        try:
            return read()
        finally:
            self.waiting = False

    def take(self) -> bool:
        """Whether the cell about to run was interrupted already (and forgets it)."""
        pending, self.pending = self.pending, False
        return pending


def send(sock: socket.socket, *msgs: dict) -> None:
    """Writes the messages with a single sendall."""
    sock.sendall(b"".join(encode(m) for m in msgs))
