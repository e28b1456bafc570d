"""Fixtures: a real `pyxis serve` on a random loopback port, and MCP clients on it.

The client is the official MCP Python SDK (`mcp` on PyPI, pinned in requirements.txt) over
Streamable HTTP, unmodified: the token goes in the `Authorization` header of its HTTP client.

Settings (environment):
  PYXIS_BIN          the pyxis binary (default: target/debug/pyxis of this checkout)
  PYXIS_RUNTIME_DIR  the Python runtime (default: /opt/pyxis/runtime)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Child side of Popen: SIGTERM when the test process ends, whatever the way."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Pyxis:
    """A running `pyxis serve`: its base URL and token."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.url = base + "/mcp"

    @contextlib.asynccontextmanager
    async def client(self, headers: dict[str, str] | None = None):
        """An initialized MCP `ClientSession` over Streamable HTTP."""
        hdrs = {"Authorization": f"Bearer {self.token}"} if headers is None else headers
        async with create_mcp_http_client(headers=hdrs) as http:
            async with streamable_http_client(self.url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    yield session


@pytest.fixture(scope="session")
def pyxis():
    binary = os.environ.get("PYXIS_BIN") or str(REPO / "target" / "debug" / "pyxis")
    runtime = os.environ.get("PYXIS_RUNTIME_DIR", "/opt/pyxis/runtime")
    port = _free_port()
    token = "mcp-test-" + secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="pyxis-mcp-data-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYXIS_")}
        env |= {
            "PYXIS_LISTEN": f"127.0.0.1:{port}",
            "PYXIS_DATA_DIR": data,
            "PYXIS_TOKEN": token,
            "PYXIS_RUNTIME_DIR": runtime,
            # Away from the Rust black-box tests' and the Jupyter tests' uid ranges.
            "PYXIS_UID_BASE": str(960_000 + random.randrange(30) * 1000),
            "PYXIS_POOL_MIN_IDLE": "2",
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
                    if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"pyxis not ready:\n{log.read_text()[-4000:]}")
                time.sleep(0.1)
            yield Pyxis(f"http://127.0.0.1:{port}", token)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
