"""The zygote end to end with the real sandbox library (skipped where it is not built)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    ROOT,
    of_type,
    reply,
    sandbox_library,
    skip_without_sandbox_library,
    stop_process,
    stream,
)
from pyxis_runtime import framing

LIB, LIB_NAMED = sandbox_library()
UID = 61234

pytestmark = [
    skip_without_sandbox_library(LIB, LIB_NAMED),
    pytest.mark.skipif(os.geteuid() != 0, reason="building a sandbox needs root"),
]


class Zygote:
    """A zygote process and its control socket."""

    def __init__(self, tmp: Path) -> None:
        parent, child = socket.socketpair()
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(tmp),
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", str(tmp / "mpl")),
            "PYTHONPATH": str(ROOT),
            "PYXIS_SANDBOX_LIB": str(LIB),
        }
        fd = child.fileno()
        # the zygote's control socket must be fd 3
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [
                sys.executable,
                "-c",
                f"import os; os.dup2({fd}, 3); os.close({fd}) if {fd} != 3 else None; "
                "from pyxis_runtime.zygote import main; main()",
            ],
            pass_fds=[fd],
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        child.close()
        parent.settimeout(120)
        self.sock = parent
        self.reader = framing.FrameReader(parent)

    def close(self) -> None:
        """EOF on the control socket ends the zygote."""
        self.sock.close()
        stop_process(self.proc)


def make_spec(tmp: Path) -> dict:
    root = tmp / "root"
    root.mkdir()
    workspace = tmp / "ws"
    workspace.mkdir()
    os.chown(workspace, UID, UID)
    return {
        "uid": UID,
        "gid": UID,
        "hostname": "pyxis-test",
        "cgroup_fds": [],
        "root_mountpoint": str(root),
        "ro_binds": [
            "/usr",
            "/lib",
            "/lib64",
            "/bin",
            "/sbin",
            "/etc/ld.so.cache",
            "/etc/alternatives",
            "/etc/fonts",
            # The runtime this test runs on (its venv), wherever it is.
            str(Path(sys.prefix).parent),
        ]
        # The checkout, unless it sits where the sandbox builds its own
        # directories (a checkout under /tmp): the kernel's modules are
        # already imported by the zygote, so it can do without.
        + ([str(ROOT)] if not str(ROOT).startswith(("/tmp/", "/dev/", "/proc/")) else []),
        "workspace_fd": 5,
        "workspace_aliases": ["/sandbox", "/code"],
        "tmp_bytes": 64 << 20,
        "rlimits": {"fsize_bytes": 1 << 30, "nofile": 1024, "nproc": 256},
        "kernel_fd": 3,
        "report_fd": 4,
        "loopback": True,
    }


def workspace_fd(tmp: Path) -> int:
    """The O_PATH descriptor of the workspace that make_spec created."""
    return os.open(tmp / "ws", os.O_PATH | os.O_DIRECTORY)


def test_zygote_spawns_a_sandboxed_kernel(tmp_path):  # pylint: disable=R0914,R0915
    zygote = Zygote(tmp_path)
    try:
        ready = zygote.reader.read()
        assert ready is not None, zygote.proc.stderr.read().decode()
        assert ready["type"] == "ready", ready
        assert ready["pid"] == zygote.proc.pid
        assert ready["python"].startswith("3.11")
        assert "numpy" in ready["libraries"] and "pandas" in ready["libraries"]

        zygote.sock.sendall(framing.encode({"type": "bogus"}))
        assert zygote.reader.read()["type"] == "error"

        ours, theirs = socket.socketpair()
        started = time.monotonic()
        frame = framing.encode({"type": "spawn", "id": "k1", "spec": make_spec(tmp_path)})
        ws = workspace_fd(tmp_path)
        socket.send_fds(zygote.sock, [frame], [theirs.fileno(), ws])
        theirs.close()
        os.close(ws)
        answer = zygote.reader.read()
        assert answer["type"] == "spawned", answer
        assert answer["id"] == "k1" and answer["pid"] > 0
        spawn_ms = (time.monotonic() - started) * 1000

        ours.settimeout(60)
        kernel = framing.FrameReader(ours)
        assert kernel.read() == {"type": "ready"}
        framing.send(
            ours,
            {
                "type": "execute_request",
                "id": "e1",
                "code": "import os, socket, pandas as pd\n"
                "print(os.getcwd(), os.getuid(), socket.gethostname())\n"
                "open('out.txt', 'w').write('hi')\n"
                "pd.DataFrame({'a': [1]})",
                "max_output_bytes": 1 << 20,
            },
        )
        events = []
        while True:
            msg = kernel.read()
            assert msg is not None
            events.append(msg)
            if msg["type"] == "execute_reply":
                break
        assert reply(events)["status"] == "ok", json.dumps(events)[:2000]
        assert stream(events) == f"/workspace {UID} pyxis-test\n"
        assert "text/html" in of_type(events, "execute_result")[0]["data"]
        assert (tmp_path / "ws" / "out.txt").read_text() == "hi"
        print(f"spawn round trip {spawn_ms:.1f} ms")

        # a bad spec is reported, and the zygote keeps going
        ours2, theirs2 = socket.socketpair()
        bad = dict(make_spec(tmp_path / "x") if (tmp_path / "x").mkdir() is None else {})
        bad["uid"] = 0
        frame = framing.encode({"type": "spawn", "id": "k2", "spec": bad})
        ws = workspace_fd(tmp_path / "x")
        socket.send_fds(zygote.sock, [frame], [theirs2.fileno(), ws])
        theirs2.close()
        os.close(ws)
        answer = zygote.reader.read()
        assert answer["type"] == "spawn_failed" and answer["id"] == "k2", answer
        assert answer["error"]

        # too few descriptors for the spec: refused before any fork
        (tmp_path / "y").mkdir()
        frame = framing.encode({"type": "spawn", "id": "k3", "spec": make_spec(tmp_path / "y")})
        socket.send_fds(zygote.sock, [frame], [ours2.fileno()])
        answer = zygote.reader.read()
        assert answer == {"type": "spawn_failed", "id": "k3", "error": "2 descriptors expected"}
        ours2.close()

        framing.send(ours, {"type": "shutdown"})
        assert kernel.read() is None
        ours.close()
    finally:
        zygote.close()


def run_cell(ours: socket.socket, kernel: framing.FrameReader, ident: str, code: str) -> list:
    """Runs one cell; its events up to the reply."""
    framing.send(
        ours,
        {"type": "execute_request", "id": ident, "code": code, "max_output_bytes": 1 << 20},
    )
    events = []
    while True:
        msg = kernel.read()
        assert msg is not None
        events.append(msg)
        if msg["type"] == "execute_reply":
            return events


def test_zygote_hands_the_egress_channel_to_the_init(tmp_path):
    """With `egress` in the spec, the channel goes after the cgroups, and a connection the
    kernel makes to 127.0.0.1:<port> arrives on the server's end as a descriptor."""
    zygote = Zygote(tmp_path)
    try:
        assert zygote.reader.read()["type"] == "ready"
        ours, theirs = socket.socketpair()
        server_end, init_end = socket.socketpair()
        spec = dict(make_spec(tmp_path), egress={"channel_fd": 6, "port": 3128})
        frame = framing.encode({"type": "spawn", "id": "e1", "spec": spec})
        ws = workspace_fd(tmp_path)
        socket.send_fds(zygote.sock, [frame], [theirs.fileno(), ws, init_end.fileno()])
        theirs.close()
        init_end.close()
        os.close(ws)
        answer = zygote.reader.read()
        assert answer["type"] == "spawned", answer
        ours.settimeout(60)
        kernel = framing.FrameReader(ours)
        assert kernel.read() == {"type": "ready"}
        framing.send(
            ours,
            {
                "type": "execute_request",
                "id": "c1",
                "code": "import socket\n"
                "s = socket.create_connection(('127.0.0.1', 3128), timeout=5)\n"
                "s.sendall(b'from the kernel')\n"
                "print(s.recv(64).decode())",
                "max_output_bytes": 1 << 20,
            },
        )
        server_end.settimeout(10)
        _, fds, _, _ = socket.recv_fds(server_end, 1, 1)
        assert len(fds) == 1
        with socket.socket(fileno=fds[0]) as passed:
            assert passed.getsockname() == ("127.0.0.1", 3128)
            assert passed.recv(64) == b"from the kernel"
            passed.sendall(b"from the server")
        events = []
        while True:
            msg = kernel.read()
            assert msg is not None
            events.append(msg)
            if msg["type"] == "execute_reply":
                break
        assert reply(events)["status"] == "ok", json.dumps(events)[:2000]
        assert stream(events) == "from the server\n"
        # A name: the sandbox has no resolver.
        events = run_cell(
            ours,
            kernel,
            "c2",
            "import socket\n"
            "try:\n"
            "    socket.getaddrinfo('example.com', 80)\n"
            "    print('resolved')\n"
            "except OSError as exc:\n"
            "    print('no resolver', type(exc).__name__)",
        )
        assert stream(events).startswith("no resolver"), json.dumps(events)[:2000]
        framing.send(ours, {"type": "shutdown"})
        assert kernel.read() is None
        ours.close()
        server_end.close()
    finally:
        zygote.close()


def ppid_of(pid: int) -> int:
    """The parent pid of a process (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def gone(pid: int, within: float) -> bool:
    """Whether the process is gone (or a zombie) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_a_cloned_zygote_serves_on_its_own_socket_and_outlives_its_parent(tmp_path):
    """`clone` forks a sibling onto the socket that came with it; the sibling says ready,
    forks kernels that are its own children, keeps serving when the zygote it was forked
    from is killed, and ends when its socket closes."""
    zygote = Zygote(tmp_path)
    try:
        assert zygote.reader.read()["type"] == "ready"
        # without its socket, a clone is refused
        zygote.sock.sendall(framing.encode({"type": "clone", "id": "c0"}))
        answer = zygote.reader.read()
        assert answer == {"type": "spawn_failed", "id": "c0", "error": "1 descriptor expected"}

        ours, theirs = socket.socketpair()
        socket.send_fds(
            zygote.sock, [framing.encode({"type": "clone", "id": "c1"})], [theirs.fileno()]
        )
        theirs.close()
        answer = zygote.reader.read()
        assert answer["type"] == "cloned" and answer["id"] == "c1", answer
        sibling = answer["pid"]
        assert ppid_of(sibling) == zygote.proc.pid
        ours.settimeout(60)
        control = framing.FrameReader(ours)
        ready = control.read()
        assert ready["type"] == "ready" and ready["pid"] == sibling, ready

        # the parent dies; the sibling goes on
        zygote.proc.kill()
        zygote.proc.wait()
        k_ours, k_theirs = socket.socketpair()
        spec = make_spec(tmp_path)
        ws = workspace_fd(tmp_path)
        socket.send_fds(
            ours,
            [framing.encode({"type": "spawn", "id": "k1", "spec": spec})],
            [k_theirs.fileno(), ws],
        )
        k_theirs.close()
        os.close(ws)
        answer = control.read()
        assert answer["type"] == "spawned", answer
        k_ours.settimeout(60)
        kernel = framing.FrameReader(k_ours)
        assert kernel.read() == {"type": "ready"}
        events = run_cell(k_ours, kernel, "e1", "import os\nprint(os.getppid() == 0)")
        assert reply(events)["status"] == "ok", events
        framing.send(k_ours, {"type": "shutdown"})
        assert kernel.read() is None
        k_ours.close()

        ours.close()
        assert gone(sibling, 10), "the sibling did not end when its socket closed"
    finally:
        zygote.close()


# What the executed program reports on its socket (fd 3): a variable of its environment,
# the signals it ignores, its working directory and uid, and whether fd 4 (the setup report
# pipe) is closed.
REPORT_SCRIPT = (
    'printf "%s|%s|%s|%s|%s\\n" "$PYXIS_EXEC_TEST" '
    '"$(grep ^SigIgn /proc/$$/status | cut -f2)" "$PWD" "$(id -u)" '
    '"$( (: <&4) 2>/dev/null && echo open || echo closed)" >&3'
)


def test_a_spawn_can_execute_a_program_in_place_of_the_python_kernel(
    tmp_path,
):  # pylint: disable=R0914
    """`exec` makes the sandboxed kernel process execute a program with exactly the given
    environment, its socket still at fd 3, the signals Python ignores back at their
    defaults; a bad `exec` is refused before any fork, a program that cannot start closes
    the socket, and the zygote goes on."""
    zygote = Zygote(tmp_path)
    try:
        assert zygote.reader.read()["type"] == "ready"

        def spawn(ident: str, sub: str, exec_: object) -> tuple[dict, socket.socket]:
            (tmp_path / sub).mkdir()
            ours, theirs = socket.socketpair()
            frame = framing.encode(
                {"type": "spawn", "id": ident, "spec": make_spec(tmp_path / sub), "exec": exec_}
            )
            ws = workspace_fd(tmp_path / sub)
            socket.send_fds(zygote.sock, [frame], [theirs.fileno(), ws])
            theirs.close()
            os.close(ws)
            ours.settimeout(60)
            return zygote.reader.read(), ours

        program = {"argv": ["/bin/sh", "-c", REPORT_SCRIPT], "env": {"PYXIS_EXEC_TEST": "yes"}}
        answer, ours = spawn("x1", "a", program)
        assert answer["type"] == "spawned", answer
        got = b""
        while not got.endswith(b"\n"):
            chunk = ours.recv(4096)
            assert chunk, f"the program closed its socket after {got!r}"
            got += chunk
        value, ignored, cwd, uid, report = got.decode().strip().split("|")
        assert value == "yes"
        sigpipe, sigxfsz = 1 << (signal.SIGPIPE - 1), 1 << (signal.SIGXFSZ - 1)
        assert int(ignored, 16) & (sigpipe | sigxfsz) == 0, ignored
        assert (cwd, uid, report) == ("/workspace", str(UID), "closed")
        ours.close()

        # An environment of its own only: nothing of the zygote's (PYTHONPATH, the library).
        env_probe = {"argv": ["/bin/sh", "-c", "env >&3"], "env": {}}
        answer, ours = spawn("x2", "b", env_probe)
        assert answer["type"] == "spawned", answer
        text = b""
        while chunk := ours.recv(4096):
            text += chunk
        names = {line.split("=", 1)[0] for line in text.decode().splitlines()}
        assert not names & {"PYTHONPATH", "PYXIS_SANDBOX_LIB", "HOME", "MPLBACKEND"}, names
        ours.close()

        # Refused before any fork: the zygote answers spawn_failed at once.
        for n, bad in enumerate(
            [
                "/bin/sh",
                {"argv": []},
                {"argv": ["sh", "-c", "true"]},
                {"argv": ["/bin/sh", 3]},
                {"argv": ["/bin/sh"], "env": {"A": "b\0c"}},
                {"argv": ["/bin/sh"], "env": {"A=B": "c"}},
                {"argv": ["/bin/sh"], "env": ["A=b"]},
                {"argv": ["/bin/sh"] * 65},
            ]
        ):
            answer, ours = spawn(f"bad{n}", f"bad{n}", bad)
            assert answer["type"] == "spawn_failed" and answer["id"] == f"bad{n}", (bad, answer)
            assert "exec" in answer["error"], answer
            ours.close()

        # A program that does not exist: spawned, then the socket closes without a word.
        answer, ours = spawn("x3", "c", {"argv": ["/nonexistent/kernel"], "env": {}})
        assert answer["type"] == "spawned", answer
        assert ours.recv(4096) == b""
        ours.close()

        # The zygote still forks Python kernels.
        answer, ours = spawn("k1", "d", None)
        assert answer["type"] == "spawned", answer
        kernel = framing.FrameReader(ours)
        assert kernel.read() == {"type": "ready"}
        framing.send(ours, {"type": "shutdown"})
        assert kernel.read() is None
        ours.close()
    finally:
        zygote.close()
