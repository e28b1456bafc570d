"""Fixtures: a real Pyxis server and a real `jupyter server --gateway-url` in front of it.

Both are started once per test run, on random loopback ports, with their own temporary
directories and tokens. Tests then talk to the jupyter server's own REST and WebSocket API (as
JupyterLab does); the jupyter server's GatewayClient talks to Pyxis.

Settings (environment):
  PYXIS_BIN          the pyxis binary (default: target/debug/pyxis of this checkout)
  PYXIS_RUNTIME_DIR  the Python runtime (default: /opt/pyxis/runtime)
  PYXIS_JUPYTER_LOGS keep the servers' logs in this directory (default: a temp dir, printed)
"""

from __future__ import annotations

import ctypes
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from jclient import KernelSocket

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


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Servers that failed to start, by log name: later tests fail at once with the same message.
_START_FAILED: dict[str, str] = {}


class Proc:
    """A server process we started, with its log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        if log.name in _START_FAILED:
            pytest.fail(f"{name} failed to start earlier:\n{_START_FAILED[log.name]}")
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            # The test process is single-threaded when servers start; prctl is async-safe.
            # pylint: disable-next=consider-using-with,subprocess-popen-preexec-fn
            self.popen = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def wait_http(self, url: str, headers: dict[str, str], limit: float) -> None:
        try:
            self._wait_http(url, headers, limit)
        except RuntimeError as e:
            _START_FAILED[self.log.name] = str(e)
            raise

    def _wait_http(self, url: str, headers: dict[str, str], limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}:\n{_tail(self.log)}"
                )
            try:
                if requests.get(url, headers=headers, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {limit} s:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Pyxis:
    """A running `pyxis serve`."""

    def __init__(self, base: str, token: str, proc: Proc) -> None:
        self.base = base
        self.ws_base = base.replace("http://", "ws://", 1)
        self.token = token
        self.proc = proc
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **kw) -> requests.Response:
        return self.http.get(self.base + path, timeout=kw.pop("timeout", 60), **kw)

    def session(self, sid: str) -> dict:
        """`GET /v1/sessions/{sid}`: the Pyxis view of a kernel."""
        r = self.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200, (
            f"GET /v1/sessions/{sid} on Pyxis: {r.status_code} {r.text[:300]} "
            "(a Jupyter kernel should be a Pyxis session with the kernel's id)"
        )
        return r.json()

    def wait_idle(self, sid: str, limit: float = 10.0) -> dict:
        """The session once Pyxis reports it idle (fails after `limit` seconds)."""
        deadline = time.monotonic() + limit
        while True:
            view = self.session(sid)
            if view["state"] == "idle" or time.monotonic() > deadline:
                return view
            time.sleep(0.1)


class Jupyter:
    """A running `jupyter server --gateway-url=<pyxis>`."""

    def __init__(self, base: str, token: str, proc: Proc, root: Path) -> None:
        self.base = base
        self.ws_base = base.replace("http://", "ws://", 1)
        self.token = token
        self.proc = proc
        self.root = root
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def request(self, method: str, path: str, **kw) -> requests.Response:
        return self.http.request(method, self.base + path, timeout=kw.pop("timeout", 90), **kw)

    def start_kernel(self) -> str:
        r = self.request("POST", "/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, f"POST /api/kernels via jupyter: {r.status_code} {r.text}"
        return r.json()["id"]

    def delete_kernel(self, kid: str) -> None:
        self.request("DELETE", f"/api/kernels/{kid}")

    def connect(self, kid: str, session_id: str | None = None) -> KernelSocket:
        sid = session_id or secrets.token_hex(16)
        return KernelSocket(
            f"{self.ws_base}/api/kernels/{kid}/channels?session_id={sid}",
            header=[f"Authorization: token {self.token}"],
        )


@pytest.fixture(scope="session")
def logs_dir():
    keep = os.environ.get("PYXIS_JUPYTER_LOGS")
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pyxis-jupyter-logs-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def pyxis(logs_dir):
    binary = os.environ.get("PYXIS_BIN") or str(REPO / "target" / "debug" / "pyxis")
    runtime = os.environ.get("PYXIS_RUNTIME_DIR", "/opt/pyxis/runtime")
    port = _free_port()
    token = "jupyter-test-" + secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="pyxis-jupyter-data-") as data:
        # The environment of the tests, as the Rust harness passes it, and our settings.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYXIS_")}
        env |= {
            "PYXIS_LISTEN": f"127.0.0.1:{port}",
            "PYXIS_DATA_DIR": data,
            "PYXIS_TOKEN": token,
            "PYXIS_RUNTIME_DIR": runtime,
            # Away from the Rust black-box tests' 300 000..800 000, which may run alongside.
            "PYXIS_UID_BASE": str(850_000 + random.randrange(100) * 1000),
            "PYXIS_POOL_MIN_IDLE": "2",
        }
        proc = Proc("pyxis", [binary, "serve"], env, logs_dir / "pyxis.log")
        try:
            proc.wait_http(f"http://127.0.0.1:{port}/healthz", {}, 300)
            yield Pyxis(f"http://127.0.0.1:{port}", token, proc)
        finally:
            proc.stop()


def _jupyter_server(pyxis, logs_dir, token: str, extra: list[str], log: str):
    """Start `jupyter server --gateway-url=<pyxis>`; a generator yielding a `Jupyter`."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="pyxis-jupyter-root-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        env = dict(os.environ)
        for key in ("JUPYTER_GATEWAY_URL", "JUPYTER_GATEWAY_AUTH_TOKEN", "MPLBACKEND"):
            env.pop(key, None)
        env.update(
            {
                "JUPYTER_CONFIG_DIR": f"{tmp}/config",
                "JUPYTER_DATA_DIR": f"{tmp}/data",
                "JUPYTER_RUNTIME_DIR": f"{tmp}/runtime",
                "JUPYTER_PLATFORM_DIRS": "1",
            }
        )
        argv = [
            str(Path(sys.executable).parent / "jupyter-server"),
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={token}",
            f"--gateway-url={pyxis.base}",
            f"--GatewayClient.auth_token={pyxis.token}",
            *extra,
        ]
        proc = Proc("jupyter server", argv, env, logs_dir / log)
        try:
            # /api/me answers without asking the gateway (/api/status lists its kernels).
            proc.wait_http(
                f"http://127.0.0.1:{port}/api/me", {"Authorization": f"token {token}"}, 120
            )
            yield Jupyter(f"http://127.0.0.1:{port}", token, proc, root)
        finally:
            proc.stop()


@pytest.fixture(scope="session")
def jupyter(pyxis, logs_dir):
    """The jupyter server in front of Pyxis, with a token of its own (as users run it)."""
    yield from _jupyter_server(
        pyxis, logs_dir, "jserver-" + secrets.token_hex(16), [], "jupyter-server.log"
    )


@pytest.fixture(scope="session")
def relay(pyxis, logs_dir):
    """A jupyter server in front of Pyxis with no token of its own, for clients that open their
    WebSocket without credentials (nbclient and papermill with GatewayKernelManager): loopback
    only, as the README says to run it."""
    yield from _jupyter_server(
        pyxis, logs_dir, "", ["--ServerApp.disable_check_xsrf=True"], "jupyter-relay.log"
    )


@pytest.fixture
def kernel(jupyter):
    """A fresh kernel started through the jupyter server, and a WebSocket to it."""
    kid = jupyter.start_kernel()
    sock = jupyter.connect(kid)
    try:
        sock.wait_ready()
        yield kid, sock
    finally:
        sock.close()
        jupyter.delete_kernel(kid)


def pytest_report_header(config):  # pylint: disable=unused-argument
    return [f"pyxis jupyter tests: servers' logs in $PYXIS_JUPYTER_LOGS ({REPO})"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
    """On a failure, append the tail of both servers' logs to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "logs_dir" in getattr(item, "funcargs", {}):
        logs = item.funcargs["logs_dir"]
        for name in ("pyxis.log", "jupyter-server.log", "jupyter-relay.log"):
            report.sections.append((f"tail of {name}", _tail(logs / name, 25)))
