"""Fixtures: a real `pyxis serve` on a random loopback port, and E2B's own SDK pointed at it.

The clients are E2B's official SDKs, unmodified: `e2b-code-interpreter` (and `e2b`) from
PyPI, pinned in requirements.txt, and `@e2b/code-interpreter` from npm, pinned in
node/package-lock.json. They find Pyxis through the environment variables their users set:
`E2B_API_URL` (the control plane), `E2B_SANDBOX_URL` (the sandboxes' ports, addressed with
the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers) and `E2B_API_KEY` (`e2b_` and the Pyxis
token, which is hex). Every address is loopback; nothing resolves a name.

Settings (environment):
  PYXIS_BIN          the pyxis binary (default: target/debug/pyxis of this checkout)
  PYXIS_RUNTIME_DIR  the Python runtime (default: /opt/pyxis/runtime)
"""

from __future__ import annotations

import ctypes
import os
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1
DOMAIN = "e2b.localhost"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Child side of Popen: SIGTERM when the test process ends, whatever the way."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Pyxis:
    """A running `pyxis serve`: its base URL, token, binary and log."""

    base: str
    token: str
    binary: str
    log: Path

    @property
    def api_key(self) -> str:
        """The token in E2B's key form."""
        return "e2b_" + self.token

    def sdk_env(self) -> dict[str, str]:
        """The environment E2B's SDKs read."""
        return {
            "E2B_API_URL": self.base,
            "E2B_SANDBOX_URL": self.base,
            "E2B_API_KEY": self.api_key,
        }


@pytest.fixture(scope="session")
def pyxis():
    binary = os.environ.get("PYXIS_BIN") or str(REPO / "target" / "debug" / "pyxis")
    runtime = os.environ.get("PYXIS_RUNTIME_DIR", "/opt/pyxis/runtime")
    port = _free_port()
    token = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="pyxis-e2b-data-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYXIS_", "E2B_"))}
        env |= {
            "PYXIS_LISTEN": f"127.0.0.1:{port}",
            "PYXIS_DATA_DIR": data,
            "PYXIS_TOKEN": token,
            "PYXIS_RUNTIME_DIR": runtime,
            # Away from the other suites' uid ranges (Rust 300k+, Jupyter 850k+, MCP 960k+).
            "PYXIS_UID_BASE": str(3_000_000 + random.randrange(100) * 1000),
            "PYXIS_POOL_MIN_IDLE": "2",
            "PYXIS_MAX_SESSIONS": "24",
            "PYXIS_E2B_DOMAIN": DOMAIN,
        }
        log = Path(data) / "pyxis.log"
        with open(log, "wb") as out:
            # pylint: disable-next=consider-using-with,subprocess-popen-preexec-fn
            proc = subprocess.Popen(
                [binary, "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"pyxis exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"pyxis not ready:\n{log.read_text()[-4000:]}")
                time.sleep(0.1)
            server = Pyxis(f"http://127.0.0.1:{port}", token, binary, log)
            saved = {k: os.environ.get(k) for k in server.sdk_env()}
            os.environ.update(server.sdk_env())
            try:
                yield server
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def sbx(pyxis):  # pylint: disable=redefined-outer-name,unused-argument
    """A fresh sandbox from the SDK, killed after the test."""
    from e2b_code_interpreter import Sandbox  # pylint: disable=import-outside-toplevel

    sandbox = Sandbox.create(metadata={"suite": "e2b"})
    try:
        yield sandbox
    finally:
        sandbox.kill()
