"""Jupyter behaviour of the kernel over its socket: figures, formatter errors, the Jupyter
requests (complete, inspect, is_complete, input, comms, user_expressions), display ids."""

from __future__ import annotations

import base64
import signal
import time

import pytest

from conftest import of_type, reply, stream

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(event: dict) -> bool:
    data = event["data"]
    return "image/png" in data and base64.b64decode(data["image/png"]).startswith(PNG_MAGIC)


def request(kernel, msg: dict) -> dict:
    """Sends a non-execute request and returns its one answer."""
    kernel.counter += 1
    ident = f"r{kernel.counter}"
    kernel.send(dict(msg, id=ident))
    answer = kernel.read()
    assert answer is not None and answer["id"] == ident, answer
    return answer


# --------------------------------------------------------------------------- figures


def test_figure_value_is_a_png_as_in_jupyter(kernel):
    events = kernel.run(
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nfig"
    )
    assert reply(events)["status"] == "ok"
    result = of_type(events, "execute_result")
    assert len(result) == 1 and is_png(result[0])
    assert result[0]["data"]["text/plain"].startswith("<Figure size")
    # Left open, pyplot's figure is also shown at the end of the cell, as ipykernel's
    # inline backend does (execute_result, then display_data).
    shown = of_type(events, "display_data")
    assert len(shown) == 1 and is_png(shown[0])
    assert not of_type(kernel.run("plt.get_fignums()"), "display_data")


def test_figure_closed_or_not_from_pyplot_comes_out_once(kernel):
    events = kernel.run(
        "from matplotlib.figure import Figure\nf = Figure()\nf.add_subplot().plot([3, 1])\nf"
    )
    assert [e["type"] for e in events] == ["execute_result", "execute_reply"]
    assert is_png(events[0])
    events = kernel.run("fig, ax = plt.subplots()\nax.plot([1])\nplt.close(fig)\nfig")
    assert [e["type"] for e in events] == ["execute_result", "execute_reply"]
    assert is_png(events[0])


def test_display_figure_gives_a_png(kernel):
    events = kernel.run("f2 = Figure()\nf2.add_subplot().bar([1, 2], [3, 4])\ndisplay(f2)")
    shown = of_type(events, "display_data")
    assert len(shown) == 1 and is_png(shown[0])
    assert not of_type(events, "execute_result")


def test_ioff_figure_is_not_shown_at_cell_end(kernel):
    events = kernel.run("plt.ioff()\nfig3, ax3 = plt.subplots()\nax3.plot([2, 1])\nfig3")
    assert [e["type"] for e in events] == ["execute_result", "execute_reply"]
    events = kernel.run("plt.ion()\nplt.close('all')")
    assert reply(events)["status"] == "ok" and not of_type(events, "display_data")


def test_matplotlib_inline_magic_keeps_our_backend(kernel):
    events = kernel.run(
        "%matplotlib inline\nimport matplotlib\nprint(matplotlib.get_backend())\nplt.plot([1])"
    )
    assert reply(events)["status"] == "ok"
    assert stream(events) == "module://pyxis_runtime.mplbackend\n"
    assert len(of_type(events, "display_data")) == 1


def png_width(event: dict) -> int:
    return int.from_bytes(base64.b64decode(event["data"]["image/png"])[16:20], "big")


def test_inline_backend_config_is_honoured(fresh_kernel):
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
    normal = png_width(of_type(fresh_kernel.run(code), "display_data")[0])
    events = fresh_kernel.run("%config InlineBackend.figure_format = 'retina'\n" + code)
    assert reply(events)["status"] == "ok"
    retina = of_type(events, "display_data")[0]
    assert abs(png_width(retina) - 2 * normal) <= 4
    events = fresh_kernel.run("%config InlineBackend.figure_formats = ['svg']\n" + code)
    shown = of_type(events, "display_data")[0]["data"]
    assert "image/svg+xml" in shown and "image/png" not in shown


def test_empty_figure_value_has_no_png(kernel):
    events = kernel.run("Figure()")
    result = of_type(events, "execute_result")
    assert result and "image/png" not in result[0]["data"]


# --------------------------------------------------------------------------- formatter errors


def test_failing_formatter_is_not_a_cell_error(kernel):
    events = kernel.run(
        "class Bad:\n"
        "    def _repr_html_(self):\n"
        "        raise ValueError('formatter boom')\n"
        "Bad()"
    )
    assert reply(events)["status"] == "ok"
    assert not of_type(events, "error")
    assert "formatter boom" in stream(events, "stderr")
    assert of_type(events, "execute_result")[0]["data"]["text/plain"].startswith("<__main__.Bad")
    events = kernel.run("display(Bad())")
    assert reply(events)["status"] == "ok" and "formatter boom" in stream(events, "stderr")
    events = kernel.run("class BadRepr:\n    __repr__ = lambda self: 1 / 0\nBadRepr()")
    assert reply(events)["status"] == "ok" and not of_type(events, "error")
    # The cell's own exception still is one.
    events = kernel.run("Bad()\nraise KeyError('own')")
    assert reply(events)["status"] == "error"
    assert of_type(events, "error")[0]["ename"] == "KeyError"


# --------------------------------------------------------------------------- display ids


def test_display_ids_updates_and_clear_output(kernel):
    events = kernel.run(
        "from IPython.display import clear_output, update_display\n"
        "h = display('a', display_id=True)\n"
        "h.update('b')\n"
        "display('c', display_id='fixed')\n"
        "update_display('d', display_id='fixed')\n"
        "clear_output(wait=True)\n"
        "clear_output()"
    )
    assert reply(events)["status"] == "ok"
    kinds = [e["type"] for e in events[:-1]]
    assert kinds == [
        "display_data",
        "update_display_data",
        "display_data",
        "update_display_data",
        "clear_output",
        "clear_output",
    ]
    first, update, fixed, fixed_update, wait, now = events[:-1]
    assert len(first["transient"]["display_id"]) == 32
    assert update["transient"] == first["transient"]
    assert update["data"] == {"text/plain": "'b'"}
    assert fixed["transient"] == {"display_id": "fixed"} == fixed_update["transient"]
    assert fixed_update["data"] == {"text/plain": "'d'"}
    assert wait["wait"] is True and now["wait"] is False
    plain = of_type(kernel.run("display('x')"), "display_data")[0]
    assert "transient" not in plain


# --------------------------------------------------------------------------- requests


def test_complete_request(kernel):
    kernel.run("import os\nñame_xyz = 1")
    answer = request(kernel, {"type": "complete_request", "code": "os.pa", "cursor_pos": 5})
    assert answer["type"] == "complete_reply"
    assert "os.path" in answer["matches"] or "path" in answer["matches"]
    assert answer["cursor_end"] == 5
    code = "x = 1\nñame_x"
    answer = request(kernel, {"type": "complete_request", "code": code, "cursor_pos": len(code)})
    # Positions count unicode code points (the "ñ" is one), as Jupyter defines them.
    assert answer["matches"] == ["ñame_xyz"]
    assert (answer["cursor_start"], answer["cursor_end"]) == (6, 12)
    kinds = answer["metadata"]["_jupyter_types_experimental"]
    assert kinds[0]["text"] == "ñame_xyz"
    # A cursor out of range is the end of the code; nothing breaks.
    answer = request(kernel, {"type": "complete_request", "code": "pri", "cursor_pos": 99})
    assert "print" in answer["matches"]
    answer = request(kernel, {"type": "complete_request", "code": 5, "cursor_pos": "x"})
    assert answer["type"] == "complete_reply"


def test_inspect_request(kernel):
    kernel.run("def documented(a, b=2):\n    '''Adds things.'''\n    return a + b")
    answer = request(
        kernel,
        {"type": "inspect_request", "code": "documented(1", "cursor_pos": 4, "detail_level": 0},
    )
    assert answer["type"] == "inspect_reply" and answer["found"] is True
    text = answer["data"]["text/plain"]
    assert "Adds things." in text and "documented(a, b=2)" in text
    answer = request(
        kernel,
        {"type": "inspect_request", "code": "documented", "cursor_pos": 10, "detail_level": 1},
    )
    assert "return a + b" in answer["data"]["text/plain"]
    answer = request(kernel, {"type": "inspect_request", "code": "no_such_name", "cursor_pos": 3})
    assert answer["found"] is False and answer["data"] == {}


def test_is_complete_request(kernel):
    cases = {
        "x = 1": ("complete", ""),
        "if x:": ("incomplete", "    "),
        "for i in range(3):\n    if i:": ("incomplete", "        "),
        "x = (1,": ("incomplete", ""),
        "1 +* 2 )": ("invalid", ""),
    }
    for code, (status, indent) in cases.items():
        answer = request(kernel, {"type": "is_complete_request", "code": code})
        assert answer["type"] == "is_complete_reply"
        assert answer["status"] == status, code
        if status == "incomplete" and indent:
            assert answer["indent"] == indent, code
    assert request(kernel, {"type": "is_complete_request"})["status"] == "unknown"


def test_comms_are_closed_and_never_break_the_kernel(kernel):
    answer = request(kernel, {"type": "comm_info_request", "target_name": None})
    assert answer == {"type": "comm_info_reply", "id": answer["id"], "comms": {}}
    answer = request(
        kernel,
        {
            "type": "comm_open",
            "comm_id": "c-1",
            "target_name": "jupyter.widget",
            "data": {"state": {}},
        },
    )
    assert answer == {"type": "comm_close", "id": answer["id"], "comm_id": "c-1", "data": {}}
    # Messages and closes of unknown comms, and unknown requests, are ignored.
    for msg in (
        {"type": "comm_msg", "id": "m", "comm_id": "c-1", "data": {"x": 1}},
        {"type": "comm_close", "id": "m", "comm_id": "nope", "data": {}},
        {"type": "comm_msg", "id": "m"},
        {"type": "no_such_request", "id": "m"},
        {"type": "input_reply", "id": "m", "value": "stray"},
    ):
        kernel.send(msg)
    assert reply(kernel.run("40 + 2"))["status"] == "ok"


def test_user_expressions_and_store_history(kernel):
    kernel.counter += 1
    ident = f"u{kernel.counter}"
    kernel.send(
        {
            "type": "execute_request",
            "id": ident,
            "code": "ue = 20",
            "max_output_bytes": 1 << 20,
            "user_expressions": {"double": "ue * 2", "bad": "1 / 0"},
        }
    )
    answer = reply(kernel.collect(ident))
    results = answer["user_expressions"]
    assert results["double"] == {"status": "ok", "data": {"text/plain": "40"}, "metadata": {}}
    assert results["bad"]["status"] == "error" and results["bad"]["ename"] == "ZeroDivisionError"
    before = reply(kernel.run("pass"))["execution_count"]
    kernel.counter += 1
    ident = f"u{kernel.counter}"
    kernel.send(
        {
            "type": "execute_request",
            "id": ident,
            "code": "print('no history')",
            "max_output_bytes": 1 << 20,
            "store_history": False,
        }
    )
    assert stream(kernel.collect(ident)) == "no history\n"
    assert reply(kernel.run("pass"))["execution_count"] == before + 1


def start_with_stdin(kernel, code: str) -> str:
    kernel.counter += 1
    ident = f"i{kernel.counter}"
    kernel.send(
        {
            "type": "execute_request",
            "id": ident,
            "code": code,
            "max_output_bytes": 1 << 20,
            "allow_stdin": True,
        }
    )
    return ident


def test_input_asks_the_client(kernel):
    ident = start_with_stdin(kernel, "print('before')\nname = input('Name? ')\nprint('hi', name)")
    events = []
    while True:
        msg = kernel.read()
        events.append(msg)
        if msg["type"] == "input_request":
            break
    assert stream(events) == "before\n"  # output so far comes before the prompt
    assert msg == {"type": "input_request", "id": ident, "prompt": "Name? ", "password": False}
    kernel.send({"type": "input_reply", "id": "someone-else", "value": "no"})
    kernel.send({"type": "input_reply", "id": ident, "value": "Ada"})
    events = kernel.collect(ident)
    assert reply(events)["status"] == "ok" and stream(events) == "hi Ada\n"

    ident = start_with_stdin(kernel, "import getpass\nsecret = getpass.getpass()\nlen(secret)")
    msg = kernel.read()
    assert msg == {"type": "input_request", "id": ident, "prompt": "Password: ", "password": True}
    kernel.send({"type": "input_reply", "id": ident, "value": "s3cret"})
    events = kernel.collect(ident)
    assert of_type(events, "execute_result")[0]["data"]["text/plain"] == "6"


def test_requests_while_waiting_for_input_are_served_after_the_cell(kernel):
    ident = start_with_stdin(kernel, "v = input()")
    assert kernel.read()["type"] == "input_request"
    kernel.send({"type": "is_complete_request", "id": "while", "code": "x = 1"})
    time.sleep(0.2)
    kernel.send({"type": "input_reply", "id": ident, "value": "done"})
    events = kernel.collect(ident)
    assert reply(events)["status"] == "ok"
    assert kernel.read() == {
        "type": "is_complete_reply",
        "id": "while",
        "status": "complete",
        "indent": "",
    }


def test_input_without_stdin_raises_as_ipykernel(kernel):
    events = kernel.run("input('x')")
    assert reply(events)["status"] == "error"
    error = of_type(events, "error")[0]
    assert error["ename"] == "StdinNotImplementedError"
    assert "does not support input requests" in error["evalue"]
    events = kernel.run("import getpass\ngetpass.getpass()")
    assert of_type(events, "error")[0]["ename"] == "StdinNotImplementedError"


def test_interrupt_while_waiting_for_input(fresh_kernel):
    k = fresh_kernel
    ident = start_with_stdin(k, "input('wait: ')")
    assert k.read()["type"] == "input_request"
    time.sleep(0.1)
    k.proc.send_signal(signal.SIGINT)
    events = k.collect(ident)
    assert reply(events)["status"] == "error"
    assert of_type(events, "error")[0]["ename"] == "KeyboardInterrupt"
    assert reply(k.run("1"))["status"] == "ok"


@pytest.mark.parametrize("code", ["input()", "import getpass; getpass.getpass('p')"])
def test_shutdown_while_waiting_for_input_ends_the_kernel(tmp_path, code):
    from conftest import KernelProcess  # pylint: disable=import-outside-toplevel

    k = KernelProcess(tmp_path)
    try:
        ident = start_with_stdin(k, code)
        assert k.read()["type"] == "input_request"
        k.send({"type": "shutdown"})
        events = k.collect(ident)
        assert of_type(events, "error")[0]["ename"] == "EOFError"
        assert k.read() is None
        assert k.proc.wait(10) == 0
    finally:
        k.close()
