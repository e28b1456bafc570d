"""Hostile input on the MCP door: oversized arguments, a flood of sessions up to the cap and
beyond, junk JSON-RPC. Each is a clean error (a JSON-RPC error, a tool error or an HTTP
4xx), never a 500, a crash or a hang, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest
from helpers import RAW_INIT, run, text_of

from conftest import MAX_BODY_BYTES, MAX_SESSIONS

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def test_oversized_argument(pyxis):
    async def body():
        async with pyxis.client() as client:
            # Below the body limit: a big but acceptable cell runs (larger than the
            # 1 MiB history, which once made the server recurse until it crashed).
            big = "x = '" + "a" * (MAX_BODY_BYTES // 3) + "'\nlen(x)"
            r = await asyncio.wait_for(client.call_tool("run_code", {"code": big}), 60)
            assert str(MAX_BODY_BYTES // 3) in text_of(r), text_of(r)[:200]
            # Above it: refused before it is read whole (HTTP 413 under the SDK), quickly.
            huge = "a" * (MAX_BODY_BYTES + 1024)
            with pytest.raises(BaseException):
                await asyncio.wait_for(
                    client.call_tool("upload_file", {"session_id": "x", "path": "a", "text": huge}),
                    30,
                )
        # The server still answers a fresh client.
        async with pyxis.client() as client:
            r = await client.call_tool("run_code", {"code": "6 * 7"})
            assert "42" in text_of(r)

    run(body())


def test_oversized_body_is_413(pyxis):
    auth = {"Authorization": f"Bearer {pyxis.token}"}
    payload = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "run_code", "arguments": {"code": "a" * (MAX_BODY_BYTES + 1)}},
        }
    )
    r = httpx2.post(pyxis.url, content=payload, headers=ACCEPT | auth, timeout=30)
    assert r.status_code == 413, (r.status_code, r.text[:300])


def test_a_flood_of_sessions_meets_the_cap(pyxis):
    """More create_session calls at once than the cap: up to the cap succeed, the rest are
    tool errors that say why, nothing hangs, and closing them frees the slots."""

    async def body():
        async with pyxis.client() as client:
            listed = (await client.call_tool("list_sessions", {})).structured_content
            free = MAX_SESSIONS - len(listed["sessions"])
            calls = [client.call_tool("create_session", {}) for _ in range(MAX_SESSIONS + 6)]
            results = await asyncio.wait_for(asyncio.gather(*calls), 120)
            made = [r.structured_content["id"] for r in results if not r.is_error]
            refused = [text_of(r) for r in results if r.is_error]
            assert 0 < len(made) <= free, (len(made), free)
            assert len(refused) >= 6, refused
            for t in refused:
                assert "session" in t.lower() and "internal" not in t.lower(), t
            # Each live session still runs code.
            outs = await asyncio.gather(
                *[client.call_tool("run_code", {"session_id": s, "code": "1 + 1"}) for s in made]
            )
            assert all("2" in text_of(o) for o in outs)
            await asyncio.gather(*[client.call_tool("close_session", {"id": s}) for s in made])
            r = await client.call_tool("create_session", {})
            assert not r.is_error, text_of(r)
            await client.call_tool("close_session", {"id": r.structured_content["id"]})

    run(body())


def test_junk_jsonrpc(pyxis):
    auth = {"Authorization": f"Bearer {pyxis.token}"}
    with httpx2.Client(timeout=10) as http:
        r = http.post(pyxis.url, content=json.dumps(RAW_INIT), headers=ACCEPT | auth)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        hdrs = ACCEPT | auth | {"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
        http.post(
            pyxis.url,
            content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            headers=hdrs,
        )
        for junk in [
            b"[]",
            b"42",
            b'{"jsonrpc": "2.0"}',
            b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": "no"}',
            b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 7}}',
            b'{"jsonrpc": "2.0", "id": 4, "method": "no/such/method"}',
            b'{"jsonrpc": "1.0", "id": 5, "method": "tools/list"}',
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 6,
                    "method": "tools/call",
                    "params": {"name": "run_code", "arguments": {"code": ["a"] * 10000}},
                }
            ).encode(),
        ]:
            r = http.post(pyxis.url, content=junk, headers=hdrs)
            assert r.status_code < 500, (junk[:80], r.status_code, r.text[:300])
        # Still the same working MCP session.
        r = http.post(
            pyxis.url,
            content=json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}),
            headers=hdrs,
        )
        assert r.status_code == 200 and "run_code" in r.text, r.text[:300]
