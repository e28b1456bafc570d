"""Fixtures: a real `pyxis serve` on a random loopback port, and MCP clients on it.

The client is the official MCP Python SDK (`mcp` on PyPI, pinned in requirements.txt),
unmodified: over Streamable HTTP (the token in the `Authorization` header of its HTTP
client), negotiating either the handshake revision (`initialize`, 2025-11-25) or the
stateless one (`server/discover`, 2026-07-28); and over stdio, launching `pyxis mcp`.

Settings (environment):
  PYXIS_BIN          the pyxis binary (default: target/debug/pyxis of this checkout)
  PYXIS_RUNTIME_DIR  the Python runtime (default: /opt/pyxis/runtime)
"""

from __future__ import annotations

import contextlib
import ctypes
import http.server
import os
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1
# Few enough that the flood test reaches the cap quickly.
MAX_SESSIONS = 12
# Small enough that the oversized-argument test stays quick.
MAX_BODY_BYTES = 4 * 1024 * 1024


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

    def __init__(self, base: str, token: str, binary: str) -> None:
        self.base = base
        self.token = token
        self.url = base + "/mcp"
        self.binary = binary

    @contextlib.asynccontextmanager
    async def client(self, headers: dict[str, str] | None = None, modern: bool = False):
        """A ready MCP `ClientSession` over Streamable HTTP: `initialize`d (2025-11-25), or
        with `modern`, `discover`ed (2026-07-28, no MCP session, stateless requests)."""
        hdrs = {"Authorization": f"Bearer {self.token}"} if headers is None else headers
        async with create_mcp_http_client(headers=hdrs) as http_client:
            async with streamable_http_client(self.url, http_client=http_client) as (read, write):
                async with ClientSession(read, write) as session:
                    if modern:
                        await session.discover()
                    else:
                        await session.initialize()
                    yield session

    @contextlib.asynccontextmanager
    async def stdio(self):
        """An initialized MCP `ClientSession` over stdio: the SDK launches `pyxis mcp`."""
        params = StdioServerParameters(
            command=self.binary,
            args=["mcp", "--url", self.url, "--token", self.token],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYXIS_LOG": "warn"},
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves the test's own files (for import_url), quietly."""

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass


@pytest.fixture(scope="session")
def file_server():
    """A loopback HTTP server of a temporary directory: (base URL, directory)."""
    with tempfile.TemporaryDirectory(prefix="pyxis-mcp-files-") as root:

        def handler(*args, **kwargs):
            return _Files(*args, directory=root, **kwargs)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", Path(root)
        finally:
            server.shutdown()


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
            "PYXIS_MAX_SESSIONS": str(MAX_SESSIONS),
            "PYXIS_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            # import_url is tested against the test's own loopback file server.
            "PYXIS_IMPORT_ALLOW": "127.0.0.1",
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
            yield Pyxis(f"http://127.0.0.1:{port}", token, binary)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
