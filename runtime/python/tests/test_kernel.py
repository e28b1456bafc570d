"""The kernel driver over its socket: events, ordering, rich output, errors, limits."""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path

from conftest import of_type, reply, stream
from pyxis_runtime.output import EVENT_OVERHEAD

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_of(event: dict) -> bytes:
    data = base64.b64decode(event["data"]["image/png"])
    assert data.startswith(PNG_MAGIC)
    return data


def test_state_kept_across_cells(kernel):
    assert reply(kernel.run("x = 41"))["status"] == "ok"
    events = kernel.run("x + 1")
    result = of_type(events, "execute_result")
    assert result[0]["data"]["text/plain"] == "42"
    assert result[0]["execution_count"] == reply(events)["execution_count"]


def test_execution_count_increments(kernel):
    first = reply(kernel.run("pass"))["execution_count"]
    second = reply(kernel.run("pass"))["execution_count"]
    assert second == first + 1


def test_fresh_kernel_starts_clean(fresh_kernel):
    events = fresh_kernel.run("print(sorted(k for k in Out)); print(repr(_))")
    assert reply(events)["execution_count"] == 1
    assert stream(events) == "[]\n''\n"
    events = fresh_kernel.run("In[1]")
    assert of_type(events, "execute_result")[0]["data"]["text/plain"].startswith("'print(")


def test_print_and_fd_output_in_order(kernel):
    code = (
        "import os, subprocess, sys\n"
        "print('a')\n"
        "os.system('echo b')\n"
        "print('c')\n"
        "subprocess.run(['echo', 'd'])\n"
        "sys.stdout.write('e\\n')\n"
        "os.write(1, b'f\\n')\n"
    )
    events = kernel.run(code)
    assert reply(events)["status"] == "ok"
    assert stream(events) == "a\nb\nc\nd\ne\nf\n"


def test_stderr_stream(kernel):
    events = kernel.run("import sys, os\nprint('oops', file=sys.stderr)\nos.system('echo bad >&2')")
    assert stream(events, "stderr") == "oops\nbad\n"


def test_consecutive_writes_are_coalesced(kernel):
    events = kernel.run("for i in range(1000): print(i)")
    streams = of_type(events, "stream")
    assert len(streams) == 1
    assert stream(events) == "".join(f"{i}\n" for i in range(1000))


def test_shell_command(kernel):
    events = kernel.run("!echo from-shell && echo to-err >&2")
    assert "from-shell" in stream(events)
    assert "to-err" in stream(events, "stderr")


def test_last_expression_result(kernel):
    events = kernel.run("a = 3\na * 2")
    (result,) = of_type(events, "execute_result")
    assert result["data"]["text/plain"] == "6"
    assert kernel.run("a = 3;") and not of_type(kernel.run("a;"), "execute_result")


def test_dataframe_html(kernel):
    events = kernel.run("import pandas as pd\npd.DataFrame({'col': [1, 2, 3]})")
    (result,) = of_type(events, "execute_result")
    assert "<table" in result["data"]["text/html"]
    assert "col" in result["data"]["text/plain"]


def test_display_call(kernel):
    events = kernel.run(
        "from IPython.display import display, HTML, Image\n"
        "display(HTML('<b>hi</b>'))\n"
        "display({'k': 1}, raw=False)\n"
    )
    shown = of_type(events, "display_data")
    assert shown[0]["data"]["text/html"] == "<b>hi</b>"
    assert shown[0]["id"] == reply(events)["id"]


def test_display_image_bytes_as_base64(kernel):
    events = kernel.run(
        "import io\nfrom PIL import Image as PI\nfrom IPython.display import Image, display\n"
        "b = io.BytesIO(); PI.new('RGB', (4, 4)).save(b, 'PNG')\n"
        "display(Image(b.getvalue()))"
    )
    (shown,) = of_type(events, "display_data")
    png_of(shown)


def test_plt_show_emits_png(kernel):
    events = kernel.run(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nprint('after')"
    )
    kinds = [e["type"] for e in events]
    assert kinds == ["display_data", "stream", "execute_reply"], kinds
    shown = events[0]
    png_of(shown)
    assert shown["data"]["text/plain"].startswith("<Figure size")
    # closed by show(): nothing more at the next cell's end
    assert not of_type(kernel.run("pass"), "display_data")


def test_open_figure_emitted_at_end(kernel):
    events = kernel.run(
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar([1], [2])"
    )
    shown = of_type(events, "display_data")
    assert len(shown) == 1
    png_of(shown[0])
    assert "1 Axes" in shown[0]["data"]["text/plain"]
    assert not of_type(kernel.run("plt.get_fignums()"), "display_data")
    assert of_type(kernel.run("plt.get_fignums()"), "execute_result")[0]["data"] == {
        "text/plain": "[]"
    }


def test_matplotlib_inline_magic_is_harmless(kernel):
    events = kernel.run("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1])")
    assert reply(events)["status"] == "ok"
    assert len(of_type(events, "display_data")) == 1


def test_error_event(kernel):
    events = kernel.run("def f():\n    return 1 / 0\nf()")
    (error,) = of_type(events, "error")
    assert error["ename"] == "ZeroDivisionError"
    assert error["evalue"] == "division by zero"
    text = "\n".join(error["traceback"])
    assert "\x1b" not in text
    assert "return 1 / 0" in text
    assert reply(events)["status"] == "error"
    assert events[-2] is error


def test_syntax_error(kernel):
    events = kernel.run("def broken(:\n    pass")
    (error,) = of_type(events, "error")
    assert error["ename"] == "SyntaxError"
    assert "\x1b" not in "".join(error["traceback"])
    assert reply(events)["status"] == "error"


def test_output_before_error_kept(kernel):
    events = kernel.run("print('before')\nraise ValueError('bad value')")
    assert [e["type"] for e in events] == ["stream", "error", "execute_reply"]
    assert events[1]["evalue"] == "bad value"


def test_sigint_interrupts_cell(fresh_kernel):
    k = fresh_kernel
    assert reply(k.run("import time\nstate = 'kept'"))["status"] == "ok"
    # idle SIGINT is ignored
    k.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    assert k.proc.poll() is None
    ident = k.start("print('sleeping', flush=True)\ntime.sleep(30)")
    first = k.read()
    assert first["type"] == "stream" and first["text"] == "sleeping\n"
    started = time.monotonic()
    k.proc.send_signal(signal.SIGINT)
    events = k.collect(ident)
    assert time.monotonic() - started < 5
    (error,) = of_type(events, "error")
    assert error["ename"] == "KeyboardInterrupt"
    assert reply(events)["status"] == "error"
    assert stream(k.run("print(state)")) == "kept\n"


def test_sigint_that_comes_with_its_request_interrupts_the_cell(fresh_kernel):
    """The server signals right after it writes a request: the kernel may get the signal
    before it has read the request. Stopped while both are sent, it gets them so."""
    k = fresh_kernel
    assert reply(k.run("import time\nstate = 'kept'"))["status"] == "ok"
    k.proc.send_signal(signal.SIGSTOP)
    try:
        ident = k.start("time.sleep(30)")
        time.sleep(0.05)
        k.proc.send_signal(signal.SIGINT)
    finally:
        k.proc.send_signal(signal.SIGCONT)
    started = time.monotonic()
    events = k.collect(ident)
    assert time.monotonic() - started < 5
    assert of_type(events, "error")[0]["ename"] == "KeyboardInterrupt"
    # A SIGINT after a cell's reply, before the next request, is not the next cell's.
    k.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    assert stream(k.run("print(state)")) == "kept\n"


def test_sigint_during_subprocess(fresh_kernel):
    k = fresh_kernel
    ident = k.start("import subprocess\nsubprocess.run(['sleep', '30'])")
    time.sleep(0.5)
    k.proc.send_signal(signal.SIGINT)
    events = k.collect(ident)
    assert of_type(events, "error")[0]["ename"] == "KeyboardInterrupt"
    assert reply(k.run("1"))["status"] == "ok"


def assert_fills_cap(events: list, cap: int, name: str = "stdout") -> str:
    """The stream text plus the overhead charged per stream event reaches the cap."""
    text = stream(events, name)
    chunks = len(of_type(events, "stream"))
    assert len(text.encode()) + EVENT_OVERHEAD * chunks <= cap
    assert len(text.encode()) >= cap - EVENT_OVERHEAD * (chunks + 1)
    return text


def test_big_print_truncated(fresh_kernel):
    k = fresh_kernel
    events = k.run("print('x' * 10**8)", max_output_bytes=100_000)
    assert reply(events)["truncated"] is True
    assert set(assert_fills_cap(events, 100_000)) == {"x"}
    assert reply(k.run("print('ok')"))["truncated"] is False


def test_flood_keeps_memory_flat(fresh_kernel):
    k = fresh_kernel
    k.run("line = 'y' * (1 << 20)")
    before = k.rss_kib()
    events = k.run("for _ in range(200): print(line)", max_output_bytes=1 << 20)
    assert reply(events)["truncated"] is True
    assert_fills_cap(events, 1 << 20)
    events = k.run(
        "import os\nos.system('head -c 200000000 /dev/zero | tr \"\\\\0\" z')",
        max_output_bytes=1 << 20,
    )
    assert reply(events)["truncated"] is True
    assert set(assert_fills_cap(events, 1 << 20)) == {"z"}
    growth_mib = (k.rss_kib() - before) / 1024
    assert growth_mib < 64, growth_mib
    assert (k.rss_kib("VmHWM") - before) / 1024 < 100


def test_display_dropped_over_cap(kernel):
    events = kernel.run(
        "import matplotlib.pyplot as plt\nprint('x' * 900)\nplt.plot([1, 2])\nplt.show()",
        max_output_bytes=1000,
    )
    assert not of_type(events, "display_data")
    assert reply(events)["truncated"] is True
    assert len(stream(events)) == 901


def test_cjk_title_renders(kernel):
    code = (
        "import io, base64, warnings\n"
        "import numpy as np\n"
        "import matplotlib.pyplot as plt\n"
        "from PIL import Image\n"
        "def render(title):\n"
        "    fig, ax = plt.subplots(figsize=(4, 2))\n"
        "    ax.set_title(title, fontsize=20)\n"
        "    ax.set_axis_off()\n"
        "    b = io.BytesIO(); fig.savefig(b, format='png'); plt.close(fig)\n"
        "    return np.asarray(Image.open(b).convert('L'), dtype=float)\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('always')\n"
        "    empty, cjk = render(''), render('你好，世界')\n"
        "diff = np.abs(empty - cjk)\n"
        "print(int((diff > 50).sum()))\n"
        "from matplotlib import font_manager\n"
        "print(sorted({f.name for f in font_manager.fontManager.ttflist} & "
        "{'WenQuanYi Zen Hei', 'Noto Sans CJK SC', 'Noto Sans CJK JP'}))\n"
    )
    events = kernel.run(code)
    assert reply(events)["status"] == "ok", events
    err = stream(events, "stderr")
    assert "Glyph" not in err and "missing" not in err, err
    changed, fonts = stream(events).splitlines()
    assert int(changed) > 300
    assert fonts != "[]"
    # the figure path used by plt.show() too
    events = kernel.run("plt.title('中文标题'); plt.plot([1, -2]); plt.show()")
    assert "Glyph" not in stream(events, "stderr")
    png_of(of_type(events, "display_data")[0])


def test_configure_sets_env(kernel):
    kernel.send({"type": "configure", "id": "cfg1", "env": {"PYXIS_TEST_VAR": "v1"}})
    assert kernel.read() == {"type": "configure_reply", "id": "cfg1", "status": "ok"}
    events = kernel.run("import os\nprint(os.environ['PYXIS_TEST_VAR'])\n!echo $PYXIS_TEST_VAR")
    assert stream(events) == "v1\nv1\n"


def test_pip_fails_gracefully(kernel):
    kernel.send(
        {"type": "configure", "id": "cfg2", "env": {"PIP_INDEX_URL": "http://127.0.0.1:9/simple"}}
    )
    assert kernel.read()["status"] == "ok"
    started = time.monotonic()
    events = kernel.run("%pip install pyxis-no-such-package")
    assert time.monotonic() - started < 60
    text = stream(events) + stream(events, "stderr")
    assert "pyxis-no-such-package" in text or "ERROR" in text, text


def test_cwd_and_home_are_workspace(kernel):
    events = kernel.run("import os\nprint(os.getcwd() == os.environ['HOME'])")
    assert stream(events) == "True\n"


def test_stdout_attributes(kernel):
    events = kernel.run(
        "import sys\nsys.stdout.buffer.write('é\\n'.encode())\n"
        "print(sys.stdout.isatty(), sys.stdout.fileno(), sys.stdout.encoding)"
    )
    assert stream(events) == "é\nFalse 1 utf-8\n"


def test_lone_surrogate_does_not_break_framing(kernel):
    events = kernel.run("print('a\\udcffb')")
    assert stream(events) == "a?b\n"


def test_top_level_await(kernel):
    events = kernel.run("import asyncio\nawait asyncio.sleep(0)\n'done'")
    assert of_type(events, "execute_result")[0]["data"]["text/plain"] == "'done'"


def test_silent_does_not_count(kernel):
    before = reply(kernel.run("pass"))["execution_count"]
    kernel.counter += 1
    kernel.send(
        {
            "type": "execute_request",
            "id": "s1",
            "code": "1",
            "max_output_bytes": 1000,
            "silent": True,
        }
    )
    events = kernel.collect("s1")
    assert not of_type(events, "execute_result")
    assert reply(kernel.run("pass"))["execution_count"] == before + 1


def test_stream_flushed_while_running(kernel):
    ident = kernel.start("import time\nprint('early')\ntime.sleep(1.5)\nprint('late')")
    started = time.monotonic()
    first = kernel.read()
    assert first["type"] == "stream" and first["text"] == "early\n"
    assert time.monotonic() - started < 1.0
    rest = kernel.collect(ident)
    assert stream(rest) == "late\n"


def test_shutdown_exits(fresh_kernel):
    fresh_kernel.send({"type": "shutdown"})
    assert fresh_kernel.proc.wait(10) == 0


def test_eof_exits(fresh_kernel):
    fresh_kernel.sock.close()
    assert fresh_kernel.proc.wait(10) == 0


def test_oversized_frame_closes(fresh_kernel):
    fresh_kernel.sock.sendall((65 * 1024 * 1024).to_bytes(4, "big"))
    assert fresh_kernel.proc.wait(10) == 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_short_cells_do_not_wake_the_io_thread(fresh_kernel):
    # The flush timer is armed by the first output of a cell and disarmed at its end, so a
    # cell that ends within the flush interval never wakes the I/O thread (a woken thread
    # takes the GIL from the main thread).
    for _ in range(3):
        reply(fresh_kernel.run("print('x')"))
    pid = fresh_kernel.proc.pid
    threads = [tid for tid in os.listdir(f"/proc/{pid}/task") if tid != str(pid)]
    assert threads, "the kernel has its I/O thread"

    def switches() -> int:
        total = 0
        for tid in threads:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text(encoding="ascii")
            total += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        return total

    before = switches()
    for _ in range(8):
        reply(fresh_kernel.run("print('x')"))
        time.sleep(0.15)  # past the flush interval of the cell
    assert switches() - before <= 1


def test_a_closed_timer_descriptor_neither_spins_nor_loses_output(fresh_kernel):
    events = fresh_kernel.run(
        "import os\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        if 'timerfd' in os.readlink(f'/proc/self/fd/{fd}'):\n"
        "            os.close(int(fd))\n"
        "    except OSError:\n"
        "        pass\n"
        "print('closed')"
    )
    assert stream(events) == "closed\n"
    events = fresh_kernel.run("import time\nprint('early')\ntime.sleep(0.3)\nprint('late')")
    assert stream(events) == "early\nlate\n"
    # More than a pipe's capacity from a child: only a live I/O thread lets it finish.
    events = fresh_kernel.run(
        "import subprocess\n"
        "subprocess.run(['sh', '-c', 'head -c 3000000 /dev/zero | tr \"\\\\0\" x'])\n"
        "print('done')"
    )
    assert reply(events)["status"] == "ok"
    assert stream(events).endswith("done\n") or reply(events)["truncated"]
    pid = fresh_kernel.proc.pid
    before = _cpu_seconds(pid)
    time.sleep(1.0)
    assert _cpu_seconds(pid) - before < 0.2, "the kernel spins"


def _voluntary_switches(pid: int) -> int:
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text(encoding="ascii")
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_one_wakeup_per_cell(fresh_kernel):
    # The kernel sleeps once per cell, waiting for the next request. Reading its
    # reply must not wake it again (a Unix socket wakes a task blocked in recv()
    # whenever the peer reads what it sent).
    for _ in range(20):
        fresh_kernel.run("c = globals().get('c', 0) + 1; print(c)")
    before = _voluntary_switches(fresh_kernel.proc.pid)
    cells = 200
    for _ in range(cells):
        fresh_kernel.run("c = globals().get('c', 0) + 1; print(c)")
    per_cell = (_voluntary_switches(fresh_kernel.proc.pid) - before) / cells
    assert per_cell < 1.25, per_cell
