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


def send(sock: socket.socket, *msgs: dict) -> None:
    """Writes the messages with a single sendall."""
    sock.sendall(b"".join(encode(m) for m in msgs))
