"""A kernel driven through `jupyter server --gateway-url=<pyxis>`: its REST API and WebSocket."""

from __future__ import annotations

import base64
import re
import time

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _png(data: dict) -> bytes:
    raw = base64.b64decode(data["image/png"])
    assert raw.startswith(PNG_MAGIC), raw[:16]
    return raw


def test_kernelspecs_through_jupyter(jupyter):
    r = jupyter.request("GET", "/api/kernelspecs")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default"] in body["kernelspecs"], body
    spec = body["kernelspecs"][body["default"]]
    assert set(spec) >= {"name", "spec", "resources"}, spec
    assert spec["spec"]["language"] == "python"
    one = jupyter.request("GET", f"/api/kernelspecs/{body['default']}")
    assert one.status_code == 200, one.text
    assert one.json()["name"] == body["default"]
    missing = jupyter.request("GET", "/api/kernelspecs/no-such-kernel")
    assert missing.status_code == 404, missing.text


def test_kernel_models_parse_and_list(jupyter, pyxis):
    kid = jupyter.start_kernel()
    try:
        # The jupyter server refreshes its models from Pyxis here, parsing last_activity with
        # strptime("%Y-%m-%dT%H:%M:%S.%fZ") and int(connections): a bad field gives a 500.
        listed = jupyter.request("GET", "/api/kernels")
        assert listed.status_code == 200, listed.text
        assert kid in [k["id"] for k in listed.json()]
        one = jupyter.request("GET", f"/api/kernels/{kid}")
        assert one.status_code == 200, one.text
        model = one.json()
        assert set(model) >= {"id", "name", "last_activity", "execution_state", "connections"}
        assert model["execution_state"] in ("idle", "starting", "busy")
        # A kernel is a Pyxis session: listed there too.
        sessions = pyxis.get("/v1/sessions").json()["sessions"]
        assert kid in [s["id"] for s in sessions], sessions
    finally:
        jupyter.delete_kernel(kid)
    gone = pyxis.get(f"/v1/sessions/{kid}")
    assert gone.status_code == 404, gone.text
    listed = jupyter.request("GET", "/api/kernels").json()
    assert kid not in [k["id"] for k in listed]


def test_kernel_info(kernel):
    _, sock = kernel
    reply = sock.request("shell", "kernel_info_request", {})
    c = reply["content"]
    assert c["status"] == "ok"
    assert c["language_info"]["name"] == "python"
    assert c["language_info"]["file_extension"] == ".py"
    assert c["protocol_version"].startswith("5.")
    assert reply["parent_header"]["msg_type"] == "kernel_info_request"
    assert sock.protocol_error is None, sock.protocol_error


def test_execute_message_sequence_and_state(kernel):
    _, sock = kernel
    first = sock.execute("x = 20\ny = x + 1")
    assert first.status == "ok", first.reply
    kinds = [(m["msg_type"], m["content"].get("execution_state")) for m in first.iopub]
    assert kinds[0] == ("status", "busy"), kinds
    assert kinds[1][0] == "execute_input", kinds
    assert kinds[-1] == ("status", "idle"), kinds
    assert first.of_type("execute_input")[0]["content"]["code"] == "x = 20\ny = x + 1"
    second = sock.execute("print(x * 2)\ny")
    assert second.status == "ok", second.reply
    assert second.stream() == "40\n"
    (result,) = second.of_type("execute_result")
    assert result["content"]["data"]["text/plain"] == "21"
    count = second.reply["content"]["execution_count"]
    assert result["content"]["execution_count"] == count
    assert count == first.reply["content"]["execution_count"] + 1


def test_plot_is_png(kernel):
    _, sock = kernel
    ex = sock.execute(
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\nax.plot([1, 2, 3], [1, 4, 9])\nplt.show()"
    )
    assert ex.status == "ok", ex.reply
    shown = [m for m in ex.of_type("display_data") if "image/png" in m["content"]["data"]]
    assert len(shown) == 1, [m["content"]["data"].keys() for m in ex.outputs]
    assert len(_png(shown[0]["content"]["data"])) > 1000
    # A figure as the cell's value is an image as well (issue 13, point 6).
    ex = sock.execute("plt.close(fig)\nfig")
    assert ex.status == "ok", ex.reply
    (result,) = ex.of_type("execute_result")
    _png(result["content"]["data"])


def test_dataframe_is_html(kernel):
    _, sock = kernel
    ex = sock.execute("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert ex.status == "ok", ex.reply
    (result,) = ex.of_type("execute_result")
    data = result["content"]["data"]
    assert "<table" in data["text/html"] and "dataframe" in data["text/html"], data
    assert data["text/plain"].split() == "a b 0 1 x 1 2 y".split()


def test_error_then_kernel_still_serves(kernel):
    _, sock = kernel
    ex = sock.execute("def f():\n    return 1 / 0\nf()")
    assert ex.status == "error", ex.reply
    assert ex.reply["content"]["ename"] == "ZeroDivisionError"
    (err,) = ex.of_type("error")
    assert err["content"]["ename"] == "ZeroDivisionError"
    assert err["content"]["evalue"] == "division by zero"
    plain = ANSI.sub("", "\n".join(err["content"]["traceback"]))
    assert "return 1 / 0" in plain and "ZeroDivisionError" in plain, plain
    ok = sock.execute("print('after')")
    assert ok.status == "ok" and ok.stream() == "after\n"


def test_input_over_stdin(kernel):
    _, sock = kernel
    prompts = []

    def answer(req):
        prompts.append(req["content"])
        return "Ada" if not req["content"].get("password") else "s3cret"

    ex = sock.execute(
        "import getpass\nname = input('name? ')\npw = getpass.getpass('pw: ')\n"
        "print('hello', name, len(pw))",
        on_input=answer,
    )
    assert ex.status == "ok", ex.reply
    assert [p["prompt"] for p in prompts] == ["name? ", "pw: "], prompts
    assert [bool(p.get("password")) for p in prompts] == [False, True]
    assert "hello Ada 6" in ex.stream()
    # Without allow_stdin, input() fails as in IPython (and the kernel does not hang).
    ex = sock.execute("input('x')", timeout=30)
    assert ex.status == "error", ex.reply
    assert ex.reply["content"]["ename"] == "StdinNotImplementedError", ex.reply["content"]


def test_interrupt_running_cell(kernel, jupyter):
    kid, sock = kernel
    mid = sock.start_execute("import time\nprint('start', flush=True)\ntime.sleep(60)")
    sock.take(lambda m: m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == mid, 30)
    t0 = time.monotonic()
    r = jupyter.request("POST", f"/api/kernels/{kid}/interrupt")
    assert r.status_code == 204, r.text
    ex = sock.collect(mid, timeout=30)
    took = time.monotonic() - t0
    assert ex.status == "error", ex.reply
    assert ex.reply["content"]["ename"] == "KeyboardInterrupt"
    assert [m["content"]["ename"] for m in ex.of_type("error")] == ["KeyboardInterrupt"]
    assert took < 10, took
    ok = sock.execute("1 + 1")
    assert ok.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "2"


def test_interrupt_request_on_control(kernel):
    _, sock = kernel
    mid = sock.start_execute("import time\nprint('start', flush=True)\ntime.sleep(60)")
    sock.take(lambda m: m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == mid, 30)
    reply = sock.request("control", "interrupt_request", {}, timeout=15)
    assert reply["content"]["status"] == "ok", reply
    ex = sock.collect(mid, timeout=30)
    assert ex.reply["content"]["ename"] == "KeyboardInterrupt"


def test_restart_clears_state_keeps_id(kernel, jupyter, pyxis):
    kid, sock = kernel
    assert sock.execute("a = 1").status == "ok"
    r = jupyter.request("POST", f"/api/kernels/{kid}/restart", json={})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == kid
    # The jupyter server's socket to Pyxis may have been re-opened: wait until the kernel answers.
    sock.wait_ready(timeout=60)
    ex = sock.execute("'a' in dir()")
    assert ex.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "False"
    assert pyxis.session(kid)["state"] == "idle"


def test_complete_and_inspect(kernel):
    _, sock = kernel
    assert sock.execute("import collections\nmy_variable = 3").status == "ok"
    code = "collections.Ord"
    c = sock.request("shell", "complete_request", {"code": code, "cursor_pos": len(code)})
    c = c["content"]
    assert c["status"] == "ok", c
    completed = [code[: c["cursor_start"]] + m + code[c["cursor_end"] :] for m in c["matches"]]
    assert "collections.OrderedDict" in completed, c
    code = "my_var"
    c = sock.request("shell", "complete_request", {"code": code, "cursor_pos": 6})["content"]
    assert "my_variable" in [code[: c["cursor_start"]] + m for m in c["matches"]], c
    i = sock.request(
        "shell", "inspect_request", {"code": "len", "cursor_pos": 3, "detail_level": 0}
    )["content"]
    assert i["status"] == "ok" and i["found"] is True, i
    assert "Return the number of items" in i["data"]["text/plain"], i
    i = sock.request(
        "shell", "inspect_request", {"code": "no_such_name_q", "cursor_pos": 5, "detail_level": 0}
    )["content"]
    assert i["status"] == "ok" and i["found"] is False, i


def test_is_complete(kernel):
    _, sock = kernel
    r = sock.request("shell", "is_complete_request", {"code": "for i in range(3):"})["content"]
    assert r["status"] == "incomplete", r
    assert r["indent"] == "    ", r
    r = sock.request("shell", "is_complete_request", {"code": "x = 1"})["content"]
    assert r["status"] == "complete", r
    r = sock.request("shell", "is_complete_request", {"code": "x = )"})["content"]
    assert r["status"] == "invalid", r


def test_comms_do_not_break_the_kernel(kernel):
    _, sock = kernel
    info = sock.request("shell", "comm_info_request", {})["content"]
    assert info["status"] == "ok" and isinstance(info["comms"], dict), info
    # A comm to a target nobody registered: the kernel answers comm_close (or nothing) and goes on.
    sock.send(
        "shell",
        "comm_open",
        {"comm_id": "c0ffee", "target_name": "jupyter.widget", "data": {"state": {}}},
    )
    sock.send("shell", "comm_msg", {"comm_id": "c0ffee", "data": {"method": "update"}})
    sock.send("shell", "comm_close", {"comm_id": "c0ffee", "data": {}})
    ex = sock.execute("print('still here')")
    assert ex.status == "ok" and ex.stream() == "still here\n"


def test_two_connections_both_see_iopub(kernel, jupyter):
    kid, sock = kernel
    other = jupyter.connect(kid)
    try:
        other.wait_ready()
        ex = sock.execute("print('to everyone')")
        seen = other.take(
            lambda m: m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == ex.msg_id,
            10,
        )
        assert seen["content"]["text"] == "to everyone\n"
        # And the second connection runs cells too, in the same kernel.
        assert other.execute("print('me too')").stream() == "me too\n"
    finally:
        other.close()


def test_shutdown_request(jupyter, pyxis):
    kid = jupyter.start_kernel()
    sock = jupyter.connect(kid)
    try:
        sock.wait_ready()
        reply = sock.request("control", "shutdown_request", {"restart": False}, timeout=30)
        assert reply["content"]["status"] == "ok", reply
        assert reply["content"]["restart"] is False
    finally:
        sock.close()
        jupyter.delete_kernel(kid)
    deadline = time.monotonic() + 10
    while pyxis.get(f"/v1/sessions/{kid}").status_code != 404:
        assert time.monotonic() < deadline, "kernel still a session after shutdown and delete"
        time.sleep(0.2)


def test_output_arrives_while_cell_runs(kernel):
    _, sock = kernel
    stamps = []

    def note(m):
        if m["msg_type"] == "stream":
            stamps.append(time.monotonic())

    mid = sock.start_execute(
        "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)"
    )
    ex = sock.collect(mid, timeout=30, on_message=note)
    assert ex.stream() == "0\n1\n2\n"
    assert len(stamps) == 3, stamps
    assert stamps[1] - stamps[0] > 0.5 and stamps[2] - stamps[1] > 0.5, stamps


def test_sessions_api_and_last_activity(jupyter):
    """What JupyterLab polls: /api/sessions (the jupyter server checks its kernels on Pyxis) and
    the kernel's last_activity, which moves when a cell runs (the jupyter server culls by it)."""
    r = jupyter.request(
        "POST",
        "/api/sessions",
        json={"path": "poll.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
    )
    assert r.status_code == 201, r.text
    session = r.json()
    kid = session["kernel"]["id"]
    try:
        listed = jupyter.request("GET", "/api/sessions")
        assert listed.status_code == 200, listed.text
        assert session["id"] in [s["id"] for s in listed.json()]
        before = jupyter.request("GET", f"/api/kernels/{kid}").json()["last_activity"]
        time.sleep(0.05)
        sock = jupyter.connect(kid, session_id=session["id"])
        try:
            sock.wait_ready()
            assert sock.execute("1").status == "ok"
        finally:
            sock.close()
        # GET /api/kernels refreshes the jupyter server's models from Pyxis.
        kernels = {k["id"]: k for k in jupyter.request("GET", "/api/kernels").json()}
        after = kernels[kid]
        assert after["last_activity"] > before, (before, after)
        assert after["execution_state"] == "idle", after
    finally:
        jupyter.request("DELETE", f"/api/sessions/{session['id']}")
    assert kid not in [k["id"] for k in jupyter.request("GET", "/api/kernels").json()]
