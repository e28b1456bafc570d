"""Pyxis's Jupyter door on its own: the token on every route and on the WebSocket, the shapes the
gateway client parses strictly, and bad input."""

from __future__ import annotations

import json
import re
import struct
import uuid

import pytest
import requests
import websocket

from jclient import KernelSocket

# jupyter_server routes kernels only by ids of this form (services/kernels/handlers.py).
JUPYTER_KERNEL_ID = re.compile(r"^\w+-\w+-\w+-\w+-\w+$")
# GatewayKernelManager.refresh_model: strptime(last_activity, "%Y-%m-%dT%H:%M:%S.%fZ").
LAST_ACTIVITY = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,6}Z$")


def _auth(pyxis, scheme="token"):
    return {"Authorization": f"{scheme} {pyxis.token}"}


@pytest.fixture
def direct_kernel(pyxis):
    r = requests.post(
        f"{pyxis.base}/api/kernels", json={"name": "python3"}, headers=_auth(pyxis), timeout=60
    )
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    yield kid
    requests.delete(f"{pyxis.base}/api/kernels/{kid}", headers=_auth(pyxis), timeout=60)


def _ws_refused(url: str, header: list[str] | None = None) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(url, header=header or [], timeout=10)
    return e.value.status_code


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/kernelspecs"),
        ("GET", "/api/kernelspecs/python3"),
        ("GET", "/api/kernels"),
        ("POST", "/api/kernels"),
    ],
)
def test_rest_needs_the_token(pyxis, method, path):
    url = pyxis.base + path
    assert requests.request(method, url, timeout=30).status_code == 401
    bad = {"Authorization": "token not-the-token"}
    assert requests.request(method, url, headers=bad, timeout=30).status_code == 401
    assert (
        requests.request(method, url, headers={"Authorization": "token "}, timeout=30).status_code
        == 401
    )
    # A token in the query string is for the WebSocket only.
    assert requests.request(method, f"{url}?token={pyxis.token}", timeout=30).status_code == 401


@pytest.mark.parametrize("scheme", ["token", "Bearer"])
def test_both_auth_schemes(pyxis, scheme):
    r = requests.get(f"{pyxis.base}/api/kernelspecs", headers=_auth(pyxis, scheme), timeout=30)
    assert r.status_code == 200, r.text


def test_kernel_routes_need_the_token(pyxis, direct_kernel):
    kid = direct_kernel
    for method, path in [
        ("GET", f"/api/kernels/{kid}"),
        ("DELETE", f"/api/kernels/{kid}"),
        ("POST", f"/api/kernels/{kid}/interrupt"),
        ("POST", f"/api/kernels/{kid}/restart"),
    ]:
        r = requests.request(method, pyxis.base + path, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code)
    # Still there after all that.
    r = requests.get(f"{pyxis.base}/api/kernels/{kid}", headers=_auth(pyxis), timeout=30)
    assert r.status_code == 200


def test_websocket_needs_the_token(pyxis, direct_kernel):
    url = f"{pyxis.ws_base}/api/kernels/{direct_kernel}/channels"
    assert _ws_refused(url) == 401
    assert _ws_refused(f"{url}?token=wrong") == 401
    assert _ws_refused(url, ["Authorization: token wrong"]) == 401
    assert _ws_refused(f"{url}?session_id=abc") == 401


@pytest.mark.parametrize("how", ["query", "token-header", "bearer-header"])
def test_websocket_with_the_token(pyxis, direct_kernel, how):
    url = f"{pyxis.ws_base}/api/kernels/{direct_kernel}/channels?session_id={uuid.uuid4()}"
    header = []
    if how == "query":
        url += f"&token={pyxis.token}"
    else:
        header = [f"Authorization: {'token' if how == 'token-header' else 'Bearer'} {pyxis.token}"]
    sock = KernelSocket(url, header=header)
    try:
        sock.wait_ready()
        ex = sock.execute("6 * 7")
        assert ex.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
    finally:
        sock.close()


def test_websocket_to_unknown_kernel(pyxis):
    url = f"{pyxis.ws_base}/api/kernels/{uuid.uuid4()}/channels?token={pyxis.token}"
    assert _ws_refused(url) == 404


def test_models_parse_as_the_gateway_client_parses_them(pyxis, direct_kernel):
    kid = direct_kernel
    assert JUPYTER_KERNEL_ID.match(kid), (
        f"kernel id {kid!r} does not match jupyter_server's route regex \\w+-\\w+-\\w+-\\w+-\\w+: "
        "every /api/kernels/{id}... request through a jupyter server would be its own 404"
    )
    model = requests.get(f"{pyxis.base}/api/kernels/{kid}", headers=_auth(pyxis), timeout=30).json()
    assert LAST_ACTIVITY.match(model["last_activity"]), model
    assert int(model["connections"]) == 0
    assert model["execution_state"] in ("idle", "starting", "busy")
    listed = requests.get(f"{pyxis.base}/api/kernels", headers=_auth(pyxis), timeout=30).json()
    assert isinstance(listed, list) and kid in [k["id"] for k in listed]
    specs = requests.get(f"{pyxis.base}/api/kernelspecs", headers=_auth(pyxis), timeout=30).json()
    assert "python3" in specs["kernelspecs"], specs
    for name, spec in specs["kernelspecs"].items():
        assert spec["name"] == name and isinstance(spec["resources"], dict), spec
    r = requests.post(
        f"{pyxis.base}/api/kernels/{kid}/restart", json={}, headers=_auth(pyxis), timeout=60
    )
    assert r.status_code == 200 and r.json()["id"] == kid, r.text
    r = requests.post(
        f"{pyxis.base}/api/kernels/{kid}/interrupt", json={}, headers=_auth(pyxis), timeout=60
    )
    assert r.status_code in (200, 204), r.text


def test_connections_counted(pyxis, direct_kernel):
    kid = direct_kernel
    socks = [
        KernelSocket(f"{pyxis.ws_base}/api/kernels/{kid}/channels?token={pyxis.token}")
        for _ in range(2)
    ]
    try:
        for s in socks:
            s.wait_ready()
        model = requests.get(
            f"{pyxis.base}/api/kernels/{kid}", headers=_auth(pyxis), timeout=30
        ).json()
        assert model["connections"] == 2, model
    finally:
        for s in socks:
            s.close()


def test_start_body_as_the_gateway_client_sends_it(pyxis):
    body = {
        "name": "python3",
        "env": {
            "KERNEL_LAUNCH_TIMEOUT": "40",
            "KERNEL_WORKING_DIR": "/home/someone/notebooks/not-in-the-sandbox",
            "KERNEL_USERNAME": "someone",
        },
    }
    for payload in (body, None):
        r = requests.post(
            f"{pyxis.base}/api/kernels", json=payload, headers=_auth(pyxis), timeout=60
        )
        assert r.status_code == 201, r.text
        kid = r.json()["id"]
        sock = KernelSocket(f"{pyxis.ws_base}/api/kernels/{kid}/channels?token={pyxis.token}")
        try:
            sock.wait_ready()
            ex = sock.execute(
                "import os\nprint(os.getcwd() != '/home/someone/notebooks/not-in-the-sandbox')"
            )
            assert ex.stream() == "True\n", ex.reply
        finally:
            sock.close()
            requests.delete(f"{pyxis.base}/api/kernels/{kid}", headers=_auth(pyxis), timeout=60)


@pytest.mark.parametrize(
    "body,want",
    [
        # As on /v1: a body that is not JSON, or JSON of the wrong shape, is a JSON 422.
        (b"{not json", 422),
        (b'{"name": 3}', 422),
        (b'{"name": "no-such-kernel"}', 404),
        (b'{"name": "python3", "env": "PATH=/x"}', 422),
        (b'{"name": "python3", "env": {"A": 1}}', 422),
        (b"[]", 422),
    ],
)
def test_bad_start_bodies(pyxis, body, want):
    headers = {**_auth(pyxis), "Content-Type": "application/json"}
    r = requests.post(f"{pyxis.base}/api/kernels", data=body, headers=headers, timeout=60)
    assert r.status_code == want, (body, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert json.loads(r.text), r.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/kernels/{u}",
        "/api/kernels/{u}/restart",
        "/api/kernels/{u}/interrupt",
        "/api/kernelspecs/nope",
    ],
)
def test_unknown_ids_are_404(pyxis, path):
    method = "POST" if path.endswith(("restart", "interrupt")) else "GET"
    r = requests.request(
        method, pyxis.base + path.format(u=uuid.uuid4()), headers=_auth(pyxis), json={}, timeout=30
    )
    assert r.status_code == 404, (path, r.status_code, r.text)


def test_garbage_frames_leave_the_socket_usable(pyxis, direct_kernel):
    sock = KernelSocket(f"{pyxis.ws_base}/api/kernels/{direct_kernel}/channels?token={pyxis.token}")
    try:
        sock.wait_ready()
        # What JupyterLab's legacy serializer sends for a message with buffers (ipywidgets).
        doc = json.dumps(
            {
                "channel": "shell",
                "header": {
                    "msg_id": "b1",
                    "msg_type": "comm_msg",
                    "session": "s",
                    "username": "u",
                    "date": "2026-01-01T00:00:00Z",
                    "version": "5.3",
                },
                "msg_id": "b1",
                "msg_type": "comm_msg",
                "parent_header": {},
                "metadata": {},
                "content": {"comm_id": "none", "data": {}},
            }
        ).encode()
        buf = b"\x00\x01\x02"
        offsets = [8 + 4, 8 + 4 + len(doc)]
        frame = struct.pack(">I", 2) + struct.pack(">II", *offsets) + doc + buf
        sock.ws.send_binary(frame)
        sock.ws.send("not json at all")
        sock.ws.send(json.dumps({"channel": "shell"}))
        sock.ws.send(json.dumps({"channel": "nope", "msg_type": "execute_request", "header": {}}))
        sock.ws.send(json.dumps([1, 2, 3]))
        sock.send("shell", "no_such_request", {})
        sock.send("shell", "execute_request", {"code": 5})
        ex = sock.execute("print('alive')", timeout=30)
        assert ex.status == "ok" and ex.stream() == "alive\n"
    finally:
        sock.close()
    assert requests.get(f"{pyxis.base}/healthz", timeout=10).status_code == 200
