"""E2B's Python SDK (`e2b-code-interpreter`), unmodified, against Pyxis: what a program
written for E2B does, and what it sees."""

from __future__ import annotations

import base64
import threading
import time
from datetime import datetime, timezone

import pytest
from e2b import (
    AuthenticationException,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    SandboxException,
    SandboxQuery,
    TimeoutException,
)
from e2b_code_interpreter import Sandbox


def test_create_and_run_code_with_shared_state(sbx):
    first = sbx.run_code("x = 21\nprint('set')")
    assert first.error is None
    assert first.logs.stdout == ["set\n"]
    second = sbx.run_code("x * 2")
    assert second.error is None
    assert second.text == "42"
    assert second.results[0].is_main_result
    assert second.execution_count == first.execution_count + 1


def test_matplotlib_figure_is_a_png(sbx):
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [3, 1, 2])\n"
        "plt.show()\n"
    )
    execution = sbx.run_code(code)
    assert execution.error is None, execution.error
    pngs = [r.png for r in execution.results if r.png]
    assert pngs, execution.results
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_dataframe_is_html(sbx):
    execution = sbx.run_code(
        "import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})"
    )
    assert execution.error is None, execution.error
    result = execution.results[0]
    assert "<table" in result.html
    assert "a" in result.text and "x" in result.text


def test_error_has_name_value_traceback(sbx):
    execution = sbx.run_code("def f():\n    return 1 / 0\nf()")
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert "ZeroDivisionError" in execution.error.traceback
    assert "f()" in execution.error.traceback
    # The session survives its error.
    assert sbx.run_code("1 + 1").text == "2"


def test_stdout_callbacks_arrive_while_the_cell_runs(sbx):
    seen: list[tuple[float, str]] = []
    code = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "time.sleep(1.5)\n"
        "print('second', flush=True)\n"
    )
    execution = sbx.run_code(code, on_stdout=lambda m: seen.append((time.monotonic(), m.line)))
    end = time.monotonic()
    assert [line for _, line in seen] == ["first\n", "second\n"]
    # The first line came well before the cell ended, not with the whole answer.
    assert end - seen[0][0] > 1.0, seen
    assert execution.logs.stdout == ["first\n", "second\n"]


def test_stderr_and_display_results(sbx):
    execution = sbx.run_code(
        "import sys\nfrom IPython.display import display, HTML\n"
        "sys.stderr.write('warn\\n')\ndisplay(HTML('<b>hi</b>'))\n'done'"
    )
    assert execution.logs.stderr == ["warn\n"]
    assert [r.html for r in execution.results if not r.is_main_result] == ["<b>hi</b>"]
    assert execution.text == "done"


def test_env_vars_of_the_sandbox_and_of_one_run(pyxis):  # pylint: disable=unused-argument
    sandbox = Sandbox.create(envs={"GREETING": "hello"})
    try:
        assert sandbox.run_code("import os; os.environ['GREETING']").text == "hello"
        one = sandbox.run_code("os.environ.get('ONLY_NOW')", envs={"ONLY_NOW": "yes"})
        assert one.text == "yes"
        after = sandbox.run_code("os.environ.get('ONLY_NOW', 'gone')")
        assert after.text == "gone"
    finally:
        sandbox.kill()


def test_files_write_read_list_binary(sbx):
    blob = bytes(range(256)) * 64
    info = sbx.files.write("/home/user/data/blob.bin", blob)
    assert info.path == "/home/user/data/blob.bin"
    assert info.name == "blob.bin"
    assert sbx.files.read("/home/user/data/blob.bin", format="bytes") == blob
    entries = sbx.files.list("/home/user/data")
    assert [(e.name, e.type, e.size) for e in entries] == [("blob.bin", FileType.FILE, len(blob))]
    # The kernel sees the same file, by E2B's path and by Pyxis's.
    check = sbx.run_code(
        "open('/home/user/data/blob.bin', 'rb').read() == open('data/blob.bin', 'rb').read()"
        f" and len(open('data/blob.bin', 'rb').read()) == {len(blob)}"
    )
    assert check.text == "True"
    # Text, and several files at once (multipart).
    sbx.files.write("notes.txt", "héllo")
    assert sbx.files.read("/home/user/notes.txt") == "héllo"
    written = sbx.files.write_files(
        [{"path": "/home/user/m/a.txt", "data": "A"}, {"path": "/home/user/m/b.txt", "data": b"B"}]
    )
    assert sorted(w.path for w in written) == ["/home/user/m/a.txt", "/home/user/m/b.txt"]
    assert sbx.files.read("/home/user/m/b.txt") == "B"


def test_filesystem_operations(sbx):
    assert sbx.files.make_dir("/home/user/d/e")
    assert not sbx.files.make_dir("/home/user/d/e"), "exists already"
    sbx.files.write("/home/user/d/e/f.txt", "x")
    assert sbx.files.exists("/home/user/d/e/f.txt")
    assert not sbx.files.exists("/home/user/d/nothing")
    info = sbx.files.get_info("/home/user/d/e/f.txt")
    assert (info.type, info.size, info.permissions) == (FileType.FILE, 1, "-rw-r--r--")
    assert abs((info.modified_time - datetime.now(timezone.utc)).total_seconds()) < 60
    moved = sbx.files.rename("/home/user/d/e/f.txt", "/home/user/d/g.txt")
    assert moved.path == "/home/user/d/g.txt"
    deep = sbx.files.list("/home/user/d", depth=2)
    assert sorted(e.path for e in deep) == ["/home/user/d/e", "/home/user/d/g.txt"]
    sbx.files.remove("/home/user/d")
    assert not sbx.files.exists("/home/user/d")
    with pytest.raises(NotFoundException):
        sbx.files.read("/home/user/d/g.txt")


def test_list_filters_by_metadata(pyxis):  # pylint: disable=unused-argument
    a = Sandbox.create(metadata={"who": "list-a"})
    b = Sandbox.create(metadata={"who": "list-b", "x": "a b&c=d"})
    try:
        listed = Sandbox.list(query=SandboxQuery(metadata={"who": "list-a"})).next_items()
        assert [s.sandbox_id for s in listed] == [a.sandbox_id]
        assert listed[0].metadata == {"who": "list-a"}
        odd = Sandbox.list(query=SandboxQuery(metadata={"x": "a b&c=d"})).next_items()
        assert [s.sandbox_id for s in odd] == [b.sandbox_id]
        ids = set()
        paginator = Sandbox.list(limit=1)
        while paginator.has_next:
            ids.update(s.sandbox_id for s in paginator.next_items())
        assert {a.sandbox_id, b.sandbox_id} <= ids
    finally:
        a.kill()
        b.kill()


def test_set_timeout_moves_the_end_and_the_end_ends_it(pyxis):  # pylint: disable=unused-argument
    sandbox = Sandbox.create(timeout=120)
    end = sandbox.get_info().end_at
    assert 100 < (end - datetime.now(timezone.utc)).total_seconds() <= 121
    sandbox.set_timeout(2)
    end = sandbox.get_info().end_at
    assert (end - datetime.now(timezone.utc)).total_seconds() <= 3
    time.sleep(3.5)
    assert not sandbox.is_running()
    ids = [s.sandbox_id for s in Sandbox.list().next_items()]
    assert sandbox.sandbox_id not in ids
    with pytest.raises(TimeoutException):
        sandbox.run_code("1")


def test_kill_and_a_later_call(pyxis):  # pylint: disable=unused-argument
    sandbox = Sandbox.create()
    assert sandbox.is_running()
    sandbox.kill()
    assert not sandbox.is_running()
    # The code interpreter says the sandbox timed out or was killed, as E2B's does.
    with pytest.raises(TimeoutException):
        sandbox.run_code("1")
    with pytest.raises(SandboxException):
        sandbox.files.read("/home/user/x")
    assert Sandbox.kill(sandbox.sandbox_id) is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)


def test_connect_to_a_sandbox_by_id(sbx):
    sbx.run_code("shared = 'kept'")
    again = Sandbox.connect(sbx.sandbox_id)
    assert again.run_code("shared").text == "kept"


def test_restart_context_loses_variables_keeps_files(sbx):
    sbx.run_code("v = 1\nopen('keep.txt', 'w').write('k')")
    contexts = sbx.list_code_contexts()
    assert [c.language for c in contexts] == ["python"]
    sbx.restart_code_context(contexts[0])
    assert sbx.run_code("v").error.name == "NameError"
    assert sbx.files.read("/home/user/keep.txt") == "k"


def test_wrong_key_is_refused(pyxis):
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 64)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key=pyxis.token[:-1] + "x").next_items()


def test_unknown_sandbox_id(pyxis):  # pylint: disable=unused-argument
    with pytest.raises(NotFoundException):
        Sandbox.connect("no-such-sandbox")
    with pytest.raises(NotFoundException):
        Sandbox.get_info("no-such-sandbox")


def test_paths_outside_the_workspace_are_refused(sbx):
    with pytest.raises(InvalidArgumentException):
        sbx.files.read("/etc/passwd")
    with pytest.raises(InvalidArgumentException):
        sbx.files.write("/home/user/../../etc/evil", "x")
    with pytest.raises(InvalidArgumentException):
        sbx.files.list("/proc")
    with pytest.raises(InvalidArgumentException):
        sbx.files.write("/tmp/../home/user/x", "x")
    # A symlink planted by code in the sandbox is never followed by the files API.
    sbx.run_code("import os; os.symlink('/etc', 'etc-link')")
    with pytest.raises(SandboxException):
        sbx.files.read("/home/user/etc-link/passwd")


def test_cells_in_parallel_sandboxes(pyxis):  # pylint: disable=unused-argument
    sandboxes = [Sandbox.create() for _ in range(3)]
    try:
        answers: dict[int, str] = {}

        def run(i: int) -> None:
            answers[i] = sandboxes[i].run_code(f"import time; time.sleep(0.5); {i} * 10").text

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == {0: "0", 1: "10", 2: "20"}
    finally:
        for s in sandboxes:
            s.kill()


def test_commands_exit_code_and_output(sbx):
    from e2b import CommandExitException  # pylint: disable=import-outside-toplevel

    ok = sbx.commands.run("echo hello; echo oops >&2")
    assert (ok.exit_code, ok.stdout, ok.stderr) == (0, "hello\n", "oops\n")
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("echo hi; exit 3")
    assert err.value.exit_code == 3
    assert err.value.stdout == "hi\n"
    # Commands share the workspace with the kernel.
    sbx.commands.run("echo from-bash > /home/user/shared.txt")
    assert sbx.run_code("open('shared.txt').read() == 'from-bash\\n'").text == "True"
    streamed: list[str] = []
    sbx.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=streamed.append)
    assert "".join(streamed) == "1\n2\n3\n"


def test_background_command_and_its_kill(sbx):
    handle = sbx.commands.run("sleep 60", background=True)
    assert handle.pid > 0
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(handle.pid)
    from e2b import CommandExitException  # pylint: disable=import-outside-toplevel

    with pytest.raises(CommandExitException):
        handle.wait()
    assert handle.pid not in [p.pid for p in sbx.commands.list()]
    assert not sbx.commands.kill(handle.pid), "a second kill finds nothing"


def test_command_stdin(sbx):
    handle = sbx.commands.run("read line; echo got:$line", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "abc\n")
    assert handle.wait().stdout == "got:abc\n"


def test_javascript_context(sbx):
    ctx = sbx.create_code_context(language="js")
    assert ctx.language == "javascript"
    sbx.run_code("const answer = 40", context=ctx)
    assert sbx.run_code("answer + 2", context=ctx).text == "42"
    # Its own state: Python does not see it.
    assert sbx.run_code("answer").error.name == "NameError"
    assert ctx.id in [c.id for c in sbx.list_code_contexts()]
    by_language = sbx.run_code("1 + 1", language="js")
    assert by_language.text == "2"
    sbx.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(NotFoundException):
        sbx.run_code("1", context=ctx)
