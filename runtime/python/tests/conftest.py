"""Drives a kernel (`pyxis_runtime.kernel.main`) in a subprocess over a socketpair."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyxis_runtime import framing  # noqa: E402  pylint: disable=wrong-import-position


def sandbox_library() -> tuple[Path, bool]:
    """The sandbox library the zygote tests load, and whether it was named: by
    `PYXIS_SANDBOX_LIB` (scripts/test sets it to the build it just made) or
    `PYXIS_TEST_SANDBOX_LIB`, else the repository's debug build. A named library that is
    missing fails those tests; only an unnamed, unbuilt one skips them."""
    for var in ("PYXIS_SANDBOX_LIB", "PYXIS_TEST_SANDBOX_LIB"):
        if os.environ.get(var):
            return Path(os.environ[var]), True
    return ROOT.parents[1] / "target" / "debug" / "libpyxis_sandbox.so", False


def skip_without_sandbox_library(lib: Path, named: bool) -> pytest.MarkDecorator:
    """A skip mark for a library that is neither named nor built (see `sandbox_library`)."""
    return pytest.mark.skipif(
        not named and not lib.exists(), reason=f"sandbox library not built at {lib}"
    )


class KernelProcess:
    """A kernel subprocess and the supervisor end of its socket."""

    def __init__(self, tmp_path: Path, prelude: str = "") -> None:
        parent, child = socket.socketpair()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(tmp_path),
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": str(tmp_path / "mpl"),
            "PYTHONPATH": str(ROOT),
            "PYXIS_WORKSPACE": str(tmp_path / "workspace"),
        }
        cache = Path(os.environ.get("MPLCONFIGDIR", Path.home() / ".cache" / "matplotlib"))
        if cache.is_dir():  # reuse a built font cache: a cold one takes seconds
            env["MPLCONFIGDIR"] = str(cache)
        (tmp_path / "workspace").mkdir()
        self.workspace = tmp_path / "workspace"
        fd = child.fileno()
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-c", f"{prelude}\nfrom pyxis_runtime.kernel import main; main({fd})"],
            pass_fds=[fd],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        child.close()
        self.sock = parent
        self.sock.settimeout(120)
        self.reader = framing.FrameReader(parent)
        self.counter = 0
        ready = self.reader.read()
        assert ready == {"type": "ready"}, ready

    def send(self, msg: dict) -> None:
        """Sends one request."""
        framing.send(self.sock, msg)

    def read(self) -> dict | None:
        """The next event."""
        return self.reader.read()

    def start(self, code: str, max_output_bytes: int = 1 << 20) -> str:
        """Sends an execute_request; returns its id."""
        self.counter += 1
        ident = f"c{self.counter}"
        self.send(
            {
                "type": "execute_request",
                "id": ident,
                "code": code,
                "max_output_bytes": max_output_bytes,
                "silent": False,
            }
        )
        return ident

    def collect(self, ident: str) -> list[dict]:
        """Events of one cell, up to and including its reply."""
        events = []
        while True:
            msg = self.read()
            assert msg is not None, "kernel closed the socket"
            assert msg.get("id") == ident, msg
            events.append(msg)
            if msg["type"] == "execute_reply":
                return events

    def run(self, code: str, **kwargs) -> list[dict]:
        """Runs a cell and returns its events."""
        return self.collect(self.start(code, **kwargs))

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The kernel's resident memory."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(field)

    def close(self) -> None:
        """Shuts the kernel down."""
        try:
            self.send({"type": "shutdown"})
        except OSError:
            pass
        self.sock.close()
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """Waits for a process to exit (kills it after 10 s) and closes its stderr pipe."""
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


def stream(events: list[dict], name: str = "stdout") -> str:
    """All text of one stream."""
    return "".join(e["text"] for e in events if e["type"] == "stream" and e["name"] == name)


def of_type(events: list[dict], kind: str) -> list[dict]:
    """Events of one type."""
    return [e for e in events if e["type"] == kind]


def reply(events: list[dict]) -> dict:
    """The execute_reply."""
    assert events[-1]["type"] == "execute_reply"
    return events[-1]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One kernel shared by a test module."""
    proc = KernelProcess(tmp_path_factory.mktemp("kernel"))
    yield proc
    proc.close()


@pytest.fixture
def fresh_kernel(tmp_path):
    """A kernel of its own."""
    proc = KernelProcess(tmp_path)
    yield proc
    proc.close()


@pytest.fixture
def wait_for():
    """Polls a predicate."""

    def _wait(pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return False

    return _wait
