"""The bash kernel driver over a socketpair, outside a sandbox: state between cells, exit
statuses, streams, interrupts, the output cap."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pyxis_runtime import framing


@pytest.fixture(name="kernel")
def fixture_kernel(tmp_path):
    """A driver in a session of its own (as the join path starts it), and its socket."""
    ours, theirs = socket.socketpair()
    env = dict(os.environ, PYXIS_WORKSPACE=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", "pyxis_runtime.bash_kernel", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        env=env,
        start_new_session=True,
    )
    theirs.close()
    reader = framing.FrameReader(ours)
    assert reader.read() == {"type": "ready"}
    yield proc, ours, reader
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run(kernel, code: str, cap: int = 1 << 20, interrupt_after: float | None = None) -> list:
    """The events of one cell, its reply last."""
    proc, sock, reader = kernel
    framing.send(
        sock, {"type": "execute_request", "id": "c", "code": code, "max_output_bytes": cap}
    )
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        proc.send_signal(signal.SIGINT)
    return read_cell(reader)


def read_cell(reader) -> list:
    """The events of the cell under way, its reply last."""
    events = []
    while True:
        msg = reader.read()
        assert msg is not None, f"the kernel exited: {events}"
        events.append(msg)
        if msg["type"] == "execute_reply":
            return events


def stdout(events: list) -> str:
    """The cell's stdout."""
    return "".join(e["text"] for e in events if e["type"] == "stream" and e["name"] == "stdout")


def test_directory_variables_and_functions_persist(kernel, tmp_path):
    (tmp_path / "sub").mkdir()
    events = run(kernel, "cd sub; export A=1; f() { echo f$1; }; pwd")
    assert stdout(events) == f"{tmp_path}/sub\n"
    events = run(kernel, "pwd; f 2; echo $A")
    assert stdout(events) == f"{tmp_path}/sub\nf2\n1\n"
    assert events[-1]["execution_count"] == 2


def test_a_non_zero_status_is_an_exit_code_error(kernel):
    events = run(kernel, "echo out; echo err >&2; false")
    names = [e["type"] for e in events]
    assert names[-2:] == ["error", "execute_reply"]
    assert events[-2]["ename"] == "ExitCode"
    assert events[-1]["status"] == "error"
    assert any(e.get("name") == "stderr" and e["text"] == "err\n" for e in events)


def test_an_interrupt_ends_the_cell_and_keeps_the_shell(kernel):
    run(kernel, "KEPT=yes")
    events = run(kernel, "sleep 20; echo not reached", interrupt_after=0.3)
    assert events[-2]["ename"] == "KeyboardInterrupt"
    assert "not reached" not in stdout(events)
    assert stdout(run(kernel, "echo $KEPT")) == "yes\n"


def _shell_pid(driver: int) -> int:
    """The driver's bash."""
    with open(f"/proc/{driver}/task/{driver}/children", encoding="ascii") as f:
        return int(f.read().split()[0])


def test_an_interrupt_that_comes_with_its_request_ends_the_cell(kernel):
    """The server signals right after it writes a request: the driver may get the signal
    before it has read it (stopped while both are sent, it gets them so)."""
    proc, sock, reader = kernel
    run(kernel, "KEPT=yes")
    proc.send_signal(signal.SIGSTOP)
    try:
        framing.send(sock, {"type": "execute_request", "id": "c", "code": "sleep 20"})
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    finally:
        proc.send_signal(signal.SIGCONT)
    started = time.monotonic()
    events = read_cell(reader)
    assert time.monotonic() - started < 5
    assert events[-2]["ename"] == "KeyboardInterrupt"
    # Idle, with no request there: not the next cell's.
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    assert stdout(run(kernel, "echo $KEPT")) == "yes\n"


def test_an_interrupt_the_shell_got_before_the_cell_is_sent_again(kernel):
    """A SIGINT that reaches the shell before it has read the cell is lost there: the
    driver signals again while the cell runs on."""
    proc, sock, reader = kernel
    run(kernel, "KEPT=yes")
    shell = _shell_pid(proc.pid)
    os.kill(shell, signal.SIGSTOP)
    try:
        framing.send(sock, {"type": "execute_request", "id": "c", "code": "sleep 20"})
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    finally:
        os.kill(shell, signal.SIGCONT)
    started = time.monotonic()
    events = read_cell(reader)
    assert time.monotonic() - started < 5
    assert events[-2]["ename"] == "KeyboardInterrupt"
    assert stdout(run(kernel, "echo $KEPT")) == "yes\n"


def test_output_beyond_the_cap_is_dropped_and_flagged(kernel):
    events = run(kernel, "head -c 100000 /dev/zero | tr '\\0' x", cap=1000)
    assert len(stdout(events)) == 1000
    assert events[-1]["truncated"] is True


def test_a_cell_cannot_read_the_drivers_commands_or_forge_a_status(kernel):
    events = run(kernel, "cat; echo 'deadbeef 0' >&199; echo after")
    assert stdout(events) == "after\n"
    assert events[-1]["status"] == "ok"


def test_exit_ends_the_kernel(kernel):
    proc, sock, _ = kernel
    framing.send(
        sock, {"type": "execute_request", "id": "c", "code": "exit 3", "max_output_bytes": 100}
    )
    assert proc.wait(timeout=10) == 0
