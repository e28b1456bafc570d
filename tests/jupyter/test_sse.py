"""Live output over server-sent events, read by a real SSE client (httpx-sse) from PyPI."""

import time

import httpx
from httpx_sse import connect_sse


def _events(pyxis, path: str, body: dict):
    """Every SSE event of one streamed cell, each with the time it arrived."""
    headers = {"Authorization": f"Bearer {pyxis.token}"}
    out = []
    with httpx.Client(base_url=pyxis.base, headers=headers, timeout=60) as client:
        with connect_sse(client, "POST", path, json=body) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for sse in source.iter_sse():
                out.append((sse.event, sse.id, sse.json(), time.monotonic()))
                if sse.event == "execute_reply":
                    break
    return out


def test_each_line_arrives_before_the_next_is_printed(pyxis):
    sid = pyxis.http.post(pyxis.base + "/v1/sessions", json={}, timeout=60).json()["id"]
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1)"
    events = _events(pyxis, f"/v1/sessions/{sid}/execute", {"code": code})
    kinds = [e[0] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "execute_reply", kinds
    lines = [e for e in events if e[0] == "stream"]
    assert [e[2]["text"] for e in lines] == ["0\n", "1\n", "2\n"]
    for before, after in zip(lines, lines[1:]):
        assert after[3] - before[3] > 0.5, "a line arrived with the next one"
    reply = events[-1][2]
    assert reply["status"] == "ok" and reply["execution_count"] == 1
    assert [int(e[1]) for e in events] == list(range(1, len(events) + 1))
    pyxis.http.delete(pyxis.base + f"/v1/sessions/{sid}", timeout=60)


def test_a_one_shot_streams_its_error(pyxis):
    events = _events(pyxis, "/v1/execute", {"code": "print('a')\n1/0"})
    error = [e for e in events if e[0] == "error"]
    assert error and error[0][2]["ename"] == "ZeroDivisionError"
    assert events[-1][2]["status"] == "error"
