"""A Jupyter kernel client over one WebSocket, in the legacy JSON text protocol.

This is what JupyterLab does against a jupyter server (`/api/kernels/{id}/channels`): every
frame is one JSON message with a top-level `channel`. Transport: `websocket-client` from PyPI.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import websocket


class KernelTimeout(AssertionError):
    """The kernel did not answer in time."""


@dataclass
class Execution:
    """What one execute_request produced, as the client saw it."""

    msg_id: str
    iopub: list[dict] = field(default_factory=list)
    reply: dict | None = None
    stdin: list[dict] = field(default_factory=list)

    @property
    def outputs(self) -> list[dict]:
        """The iopub messages that are outputs (not status nor execute_input)."""
        return [m for m in self.iopub if m["msg_type"] not in ("status", "execute_input")]

    def stream(self, name: str = "stdout") -> str:
        return "".join(
            m["content"]["text"]
            for m in self.iopub
            if m["msg_type"] == "stream" and m["content"]["name"] == name
        )

    def of_type(self, msg_type: str) -> list[dict]:
        return [m for m in self.iopub if m["msg_type"] == msg_type]

    @property
    def status(self) -> str:
        assert self.reply is not None
        return self.reply["content"]["status"]


class KernelSocket:  # pylint: disable=too-many-instance-attributes
    """One WebSocket to a kernel; a reader thread keeps every frame received."""

    def __init__(self, url: str, header: list[str] | None = None, timeout: float = 30) -> None:
        self.url = url
        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(url, header=header or [], timeout=timeout)
        self.ws.settimeout(None)
        self._frames: list[dict] = []
        self._raw: list[str | bytes] = []
        self._cv = threading.Condition()
        self._closed = False
        self._error: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- transport ---------------------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except (websocket.WebSocketException, OSError) as e:
                with self._cv:
                    if not self._closed:
                        self._error = f"connection lost: {e!r}"
                    self._closed = True
                    self._cv.notify_all()
                return
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                with self._cv:
                    self._closed = True
                    self._cv.notify_all()
                return
            with self._cv:
                self._raw.append(data if opcode == websocket.ABNF.OPCODE_BINARY else data.decode())
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    self._error = f"binary frame received ({len(data)} bytes), expected JSON text"
                else:
                    msg = json.loads(data)
                    if "channel" not in msg:
                        self._error = f"frame without a top-level channel: {data[:300]!r}"
                    self._frames.append(msg)
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (a client that vanishes)."""
        with self._cv:
            self._closed = True
        sock = self.ws.sock
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    @property
    def protocol_error(self) -> str | None:
        return self._error if self._error and not self._error.startswith("connection") else None

    # -- messages ----------------------------------------------------------------------------

    def send(self, channel: str, msg_type: str, content: dict, metadata: dict | None = None) -> str:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "session": self.session,
            "username": "tester",
            "date": datetime.now(timezone.utc).isoformat(),
            "version": "5.3",
        }
        msg = {
            "channel": channel,
            "msg_id": msg_id,
            "msg_type": msg_type,
            "header": header,
            "parent_header": {},
            "metadata": metadata or {},
            "content": content,
            "buffers": [],
        }
        self.ws.send(json.dumps(msg))
        return msg_id

    def take(self, pred: Callable[[dict], bool], timeout: float) -> dict:
        """Remove and return the first frame (received or to come) for which `pred` holds."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for i, m in enumerate(self._frames):
                    if pred(m):
                        return self._frames.pop(i)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise KernelTimeout(f"no matching message within {timeout} s on {self.url}")
                if self._closed:
                    raise KernelTimeout(f"socket closed ({self._error}) on {self.url}")
                self._cv.wait(left)

    def seen(self) -> list[dict]:
        """A copy of the frames received and not taken yet."""
        with self._cv:
            return list(self._frames)

    def request(self, channel: str, msg_type: str, content: dict, timeout: float = 30) -> dict:
        """Send a request and return its reply (the frame on `channel` parented to it)."""
        mid = self.send(channel, msg_type, content)
        reply_type = msg_type.replace("_request", "_reply")
        return self.take(
            lambda m: m["channel"] == channel
            and m["msg_type"] == reply_type
            and m["parent_header"].get("msg_id") == mid,
            timeout,
        )

    def wait_ready(self, timeout: float = 60) -> dict:
        """What jupyter_client's `wait_for_ready` does: kernel_info until iopub answers too."""
        deadline = time.monotonic() + timeout
        while True:
            mid = self.send("shell", "kernel_info_request", {})
            try:
                reply = self.take(
                    lambda m, mid=mid: m["msg_type"] == "kernel_info_reply"
                    and m["parent_header"].get("msg_id") == mid,
                    min(5.0, max(0.1, deadline - time.monotonic())),
                )
                self.take(
                    lambda m, mid=mid: m["channel"] == "iopub"
                    and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle"
                    and m["parent_header"].get("msg_id") == mid,
                    2.0,
                )
                return reply
            except KernelTimeout:
                if time.monotonic() > deadline:
                    raise

    def start_execute(self, code: str, allow_stdin: bool = False, **extra) -> str:
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": allow_stdin,
            "stop_on_error": True,
        }
        content.update(extra)
        return self.send("shell", "execute_request", content)

    def collect(
        self,
        msg_id: str,
        timeout: float = 60,
        on_input: Callable[[dict], str] | None = None,
        on_message: Callable[[dict], None] | None = None,
    ) -> Execution:
        """Gather everything parented to `msg_id` until both the reply and iopub idle are in."""
        ex = Execution(msg_id)
        deadline = time.monotonic() + timeout
        idle = False
        while ex.reply is None or not idle:
            left = deadline - time.monotonic()
            m = self.take(lambda m: m["parent_header"].get("msg_id") == msg_id, max(left, 0))
            if on_message:
                on_message(m)
            if m["channel"] == "iopub":
                ex.iopub.append(m)
                if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                    idle = True
            elif m["channel"] == "shell" and m["msg_type"] == "execute_reply":
                ex.reply = m
            elif m["channel"] == "stdin" and m["msg_type"] == "input_request":
                ex.stdin.append(m)
                assert on_input is not None, f"unexpected input_request: {m['content']}"
                self.answer_input(m, on_input(m))
        return ex

    def answer_input(self, request: dict, value: str) -> None:
        """Send the input_reply to an input_request."""
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "channel": "stdin",
                    "msg_id": msg_id,
                    "msg_type": "input_reply",
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "input_reply",
                        "session": self.session,
                        "username": "tester",
                        "date": datetime.now(timezone.utc).isoformat(),
                        "version": "5.3",
                    },
                    "parent_header": request["header"],
                    "metadata": {},
                    "content": {"value": value},
                    "buffers": [],
                }
            )
        )

    def execute(self, code: str, timeout: float = 60, **kw) -> Execution:
        on_input = kw.pop("on_input", None)
        return self.collect(
            self.start_execute(code, allow_stdin=on_input is not None, **kw),
            timeout,
            on_input=on_input,
        )
