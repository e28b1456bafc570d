"""The door's wire, with a plain HTTP client: E2B's error shapes for bad input, the
hostile cases (another sandbox's token, malformed and huge Connect envelopes), and the
`{port}-{sandboxId}.{domain}` host-name road (sent as a Host header to 127.0.0.1: nothing
resolves a name)."""

from __future__ import annotations

import json
import struct

import httpx
import pytest
from e2b_code_interpreter import Sandbox

from conftest import DOMAIN


def envd(sbx, token=None, port=49983):
    """Headers addressing a sandbox's port as the SDK does."""
    h = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)}
    if token is not None:
        h["X-Access-Token"] = token
    return h


def envelope(payload: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def frames(body: bytes) -> list[tuple[int, dict]]:
    out = []
    while body:
        flag, n = struct.unpack(">BI", body[:5])
        out.append((flag, json.loads(body[5 : 5 + n])))
        body = body[5 + n :]
    return out


@pytest.fixture
def two(pyxis):  # pylint: disable=unused-argument
    a, b = Sandbox.create(), Sandbox.create()
    try:
        yield a, b
    finally:
        a.kill()
        b.kill()


def test_control_plane_errors_are_code_and_message(pyxis):
    key = {"X-API-KEY": pyxis.api_key}
    r = httpx.get(f"{pyxis.base}/sandboxes/nope", headers=key)
    assert r.status_code == 404
    assert set(r.json()) == {"code", "message"} and r.json()["code"] == 404
    r = httpx.get(f"{pyxis.base}/sandboxes", headers={"X-API-KEY": "e2b_bad"})
    assert (r.status_code, r.json()["code"]) == (401, 401)
    r = httpx.post(f"{pyxis.base}/sandboxes", headers=key, content=b"{not json")
    assert (r.status_code, r.json()["code"]) == (400, 400)
    r = httpx.post(f"{pyxis.base}/sandboxes", headers=key, json={"templateID": "my-own"})
    assert r.status_code == 404 and "template" in r.json()["message"]
    r = httpx.post(f"{pyxis.base}/sandboxes", headers=key, json={"templateID": "base", "timeout": -1})
    assert r.status_code == 400
    r = httpx.post(f"{pyxis.base}/sandboxes/x/pause", headers=key)
    assert r.status_code == 501
    # The bare token works as the key too, and the v1 bearer token is not an E2B key here.
    assert httpx.get(f"{pyxis.base}/v2/sandboxes", headers={"X-API-KEY": pyxis.token}).status_code == 200
    r = httpx.get(f"{pyxis.base}/sandboxes", headers={"X-Auth-Token": pyxis.token})
    assert r.status_code == 401


def test_create_answers_201_with_the_fields_the_sdk_reads(pyxis):
    key = {"X-API-KEY": pyxis.api_key}
    r = httpx.post(f"{pyxis.base}/sandboxes", headers=key, json={"templateID": "base", "timeout": 30})
    assert r.status_code == 201
    body = r.json()
    try:
        for field in ("templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken"):
            assert body[field], field
        assert body["domain"] == DOMAIN
    finally:
        assert httpx.delete(f"{pyxis.base}/sandboxes/{body['sandboxID']}", headers=key).status_code == 204
    assert httpx.delete(f"{pyxis.base}/sandboxes/{body['sandboxID']}", headers=key).status_code == 404


def test_another_sandboxs_token_is_refused(pyxis, two):
    a, b = two
    # b's token on a's files, on a's code interpreter, on a's process service.
    tok_b = b._envd_access_token  # pylint: disable=protected-access
    r = httpx.get(f"{pyxis.base}/files", params={"path": "/home/user/x"}, headers=envd(a, tok_b))
    assert (r.status_code, r.json()["code"]) == (401, 401)
    r = httpx.post(f"{pyxis.base}/execute", json={"code": "1"}, headers=envd(a, tok_b, 49999))
    assert r.status_code == 401
    r = httpx.post(
        f"{pyxis.base}/filesystem.Filesystem/ListDir",
        json={"path": "/home/user"},
        headers=envd(a, tok_b) | {"Content-Type": "application/json"},
    )
    assert (r.status_code, r.json()["code"]) == (401, "unauthenticated")
    # No token at all, and a wrong one of the right length.
    r = httpx.get(f"{pyxis.base}/files", params={"path": "x"}, headers=envd(a))
    assert r.status_code == 401
    tok_a = a._envd_access_token  # pylint: disable=protected-access
    r = httpx.get(f"{pyxis.base}/files", params={"path": "x"}, headers=envd(a, "0" * len(tok_a)))
    assert r.status_code == 401
    # An unknown sandbox: the proxy's 502 "was not found".
    r = httpx.get(f"{pyxis.base}/health", headers={"E2b-Sandbox-Id": "nope", "E2b-Sandbox-Port": "49983"})
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    r = httpx.get(f"{pyxis.base}/health", headers=envd(a, port=8080))
    assert r.status_code == 502 and "port is not open" in r.json()["message"]


def test_malformed_and_huge_envelopes(pyxis, sbx):
    tok = sbx._envd_access_token  # pylint: disable=protected-access
    h = envd(sbx, tok) | {"Content-Type": "application/connect+json"}
    url = f"{pyxis.base}/process.Process/Start"
    cases = {
        b"\x00\x00": "invalid_argument",  # a cut header
        envelope(b'{"process": {"cmd": "true"}}')[:-3]: "invalid_argument",  # a cut payload
        envelope(b"not json"): "invalid_argument",
        envelope(b"{}", flag=1): "unimplemented",  # compressed
        b"\x00\xff\xff\xff\xff{": "resource_exhausted",  # a 4 GiB length
        envelope(b"{}") + envelope(b"{}"): "invalid_argument",  # two requests
    }
    for body, code in cases.items():
        r = httpx.post(url, content=body, headers=h)
        assert r.status_code == 200, body
        got = frames(r.content)
        assert [f for f, _ in got] == [2], (body, got)
        assert got[0][1]["error"]["code"] == code, (body, got)
    # A unary call with a body that is not JSON.
    r = httpx.post(
        f"{pyxis.base}/filesystem.Filesystem/Stat",
        content=b"{",
        headers=envd(sbx, tok) | {"Content-Type": "application/json"},
    )
    assert (r.status_code, r.json()["code"]) == (400, "invalid_argument")
    # The server still serves the sandbox.
    assert sbx.run_code("1 + 1").text == "2"


def test_a_started_process_streams_start_data_end(pyxis, sbx):
    tok = sbx._envd_access_token  # pylint: disable=protected-access
    h = envd(sbx, tok) | {"Content-Type": "application/connect+json"}
    req = {"process": {"cmd": "/bin/bash", "args": ["-c", "echo hi; exit 3"]}}
    r = httpx.post(f"{pyxis.base}/process.Process/Start", content=envelope(json.dumps(req).encode()), headers=h)
    got = frames(r.content)
    assert "start" in got[0][1]["event"] and got[0][1]["event"]["start"]["pid"] > 0
    data = [f[1]["event"]["data"] for f in got if "data" in f[1].get("event", {})]
    import base64  # pylint: disable=import-outside-toplevel

    assert base64.b64decode(data[0]["stdout"]) == b"hi\n"
    end = [f[1]["event"]["end"] for f in got if "end" in f[1].get("event", {})]
    assert end[0]["exitCode"] == 3
    assert got[-1] == (2, {})


def test_host_name_road(pyxis, sbx):
    tok = sbx._envd_access_token  # pylint: disable=protected-access
    host = lambda port: {"Host": f"{port}-{sbx.sandbox_id}.{DOMAIN}"}  # noqa: E731
    assert httpx.get(f"{pyxis.base}/health", headers=host(49983)).status_code == 204
    sbx.files.write("/home/user/road.txt", "via host")
    r = httpx.get(
        f"{pyxis.base}/files", params={"path": "/home/user/road.txt"}, headers=host(49983) | {"X-Access-Token": tok}
    )
    assert (r.status_code, r.text) == (200, "via host")
    r = httpx.post(f"{pyxis.base}/execute", json={"code": "6 * 7"}, headers=host(49999) | {"X-Access-Token": tok})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [x["type"] for x in lines][-1] == "end_of_execution"
    assert [x["text"] for x in lines if x["type"] == "result"] == ["42"]
    # Another domain is not E2B's: the request goes on to the other doors (and their auth).
    r = httpx.get(f"{pyxis.base}/health", headers={"Host": f"49983-{sbx.sandbox_id}.elsewhere.test"})
    assert r.status_code != 204


def test_interpreter_bad_input(pyxis, sbx):
    tok = sbx._envd_access_token  # pylint: disable=protected-access
    h = envd(sbx, tok, 49999)
    r = httpx.post(f"{pyxis.base}/execute", json={"code": "1", "context_id": "x", "language": "python"}, headers=h)
    assert r.status_code == 400
    r = httpx.post(f"{pyxis.base}/execute", json={"code": "1", "context_id": "nope"}, headers=h)
    assert r.status_code == 404
    r = httpx.post(f"{pyxis.base}/execute", json={"code": "1", "language": "cobol"}, headers=h)
    assert r.status_code == 400
    r = httpx.post(f"{pyxis.base}/execute", content=b"[", headers=h | {"Content-Type": "application/json"})
    assert r.status_code == 400
