"""The MCP door through the official MCP Python SDK client over Streamable HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import httpx2
import jsonschema
import pytest
from helpers import PNG_MAGIC, new_session, run, text_of
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

TOOLS = {
    "create_session",
    "list_sessions",
    "close_session",
    "run_code",
    "upload_file",
    "download_file",
    "list_files",
    "interrupt",
    "restart",
    "import_url",
}
# Tools that reach beyond the server (the open world).
OPEN_WORLD = {"import_url"}


def test_initialize_and_list_tools(pyxis):
    async def body():
        async with pyxis.client() as client:
            init = client.initialize_result
            assert init.server_info.name == "pyxis"
            assert init.server_info.version and init.server_info.title
            assert init.capabilities.tools is not None
            assert init.capabilities.resources is not None
            assert "create_session" in init.instructions and "session_id" in init.instructions
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert TOOLS <= set(tools), sorted(tools)
            for name in TOOLS:
                t = tools[name]
                assert t.title and t.description, name
                assert t.annotations is not None, name
                assert t.annotations.read_only_hint is not None, name
                assert t.annotations.destructive_hint is not None, name
                assert t.annotations.idempotent_hint is not None, name
                assert t.annotations.open_world_hint is (name in OPEN_WORLD), name
                for schema in (t.input_schema, t.output_schema):
                    assert schema is not None and schema.get("type") == "object", name
                    jsonschema.Draft202012Validator.check_schema(schema)
            assert tools["list_files"].annotations.read_only_hint is True
            assert tools["close_session"].annotations.destructive_hint is True
            assert "code" in tools["run_code"].input_schema["required"]

    run(body())


def test_state_is_kept_between_calls(pyxis):
    async def body():
        async with pyxis.client() as client:
            sid = await new_session(client)
            listed = await client.call_tool("list_sessions", {})
            assert sid in [s["id"] for s in listed.structured_content["sessions"]]
            r1 = await client.call_tool(
                "run_code", {"session_id": sid, "code": "x = 20\nprint('hi')"}
            )
            assert not r1.is_error, text_of(r1)
            assert "hi" in text_of(r1)
            r2 = await client.call_tool("run_code", {"session_id": sid, "code": "x * 2 + 2"})
            assert not r2.is_error, text_of(r2)
            assert "42" in text_of(r2)
            assert r2.structured_content["status"] == "ok"
            assert r2.structured_content["execution_count"] == 2
            data = r2.structured_content["results"][-1]["data"]
            assert data["text/plain"] == "42"
            closed = await client.call_tool("close_session", {"id": sid})
            assert not closed.is_error and closed.structured_content["done"] is True
            gone = await client.call_tool("run_code", {"session_id": sid, "code": "x"})
            assert gone.is_error and "no session" in text_of(gone)

    run(body())


def test_one_shot_has_no_state(pyxis):
    async def body():
        async with pyxis.client() as client:
            r = await client.call_tool("run_code", {"code": "y = 5\nprint(y + 1)"})
            assert not r.is_error, text_of(r)
            assert "6" in text_of(r)
            r = await client.call_tool("run_code", {"code": "y"})
            assert r.is_error
            assert r.structured_content["error"]["name"] == "NameError"

    run(body())


def test_plot_is_an_image_block(pyxis):
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [3, 1, 2])\n"
        "plt.show()\n"
        "import pandas as pd\n"
        "pd.DataFrame({'a': [1, 2]})\n"
    )

    async def body():
        async with pyxis.client() as client:
            sid = await new_session(client)
            r = await client.call_tool("run_code", {"session_id": sid, "code": code})
            assert not r.is_error, text_of(r)
            images = [c for c in r.content if c.type == "image"]
            assert len(images) == 1, r.content
            assert images[0].mime_type == "image/png"
            assert base64.b64decode(images[0].data, validate=True).startswith(PNG_MAGIC)
            assert "<table" in text_of(r)
            await client.call_tool("close_session", {"id": sid})

    run(body())


def test_error_has_traceback_and_is_error(pyxis):
    async def body():
        async with pyxis.client() as client:
            sid = await new_session(client)
            r = await client.call_tool(
                "run_code", {"session_id": sid, "code": "def f():\n    return 1 / 0\nf()"}
            )
            assert r.is_error is True
            text = text_of(r)
            assert "ZeroDivisionError" in text and "f()" in text, text
            err = r.structured_content["error"]
            assert err["name"] == "ZeroDivisionError" and err["traceback"]
            assert r.structured_content["status"] == "error"
            await client.call_tool("close_session", {"id": sid})

    run(body())


def test_upload_download_list_binary(pyxis):
    blob = bytes(range(256)) * 40

    async def body():
        async with pyxis.client() as client:
            sid = await new_session(client)
            up = await client.call_tool(
                "upload_file",
                {
                    "session_id": sid,
                    "path": "data/blob.bin",
                    "content_base64": base64.b64encode(blob).decode(),
                },
            )
            assert not up.is_error, text_of(up)
            assert up.structured_content == {"path": "data/blob.bin", "size": len(blob)}
            up = await client.call_tool(
                "upload_file", {"session_id": sid, "path": "notes.txt", "text": "héllo\n"}
            )
            assert not up.is_error, text_of(up)
            # The kernel sees the files.
            r = await client.call_tool(
                "run_code",
                {"session_id": sid, "code": "len(open('data/blob.bin','rb').read())"},
            )
            assert str(len(blob)) in text_of(r)
            down = await client.call_tool(
                "download_file", {"session_id": sid, "path": "data/blob.bin"}
            )
            assert not down.is_error, text_of(down)
            (block,) = down.content
            assert block.type == "resource"
            assert base64.b64decode(block.resource.blob) == blob
            assert block.resource.uri.startswith(f"pyxis://sessions/{sid}/files/")
            down = await client.call_tool("download_file", {"session_id": sid, "path": "notes.txt"})
            assert down.content[0].type == "text" and down.content[0].text == "héllo\n"
            listing = await client.call_tool("list_files", {"session_id": sid})
            names = {e["name"]: e for e in listing.structured_content["entries"]}
            assert names["data"]["kind"] == "dir" and names["notes.txt"]["size"] == 7
            sub = await client.call_tool("list_files", {"session_id": sid, "path": "data"})
            assert [e["path"] for e in sub.structured_content["entries"]] == ["data/blob.bin"]
            bad = await client.call_tool(
                "download_file", {"session_id": sid, "path": "../../etc/passwd"}
            )
            assert bad.is_error
            missing = await client.call_tool("download_file", {"session_id": sid, "path": "nope"})
            assert missing.is_error and "nope" in text_of(missing)
            both = await client.call_tool(
                "upload_file",
                {"session_id": sid, "path": "x", "text": "a", "content_base64": "YQ=="},
            )
            assert both.is_error
            await client.call_tool("close_session", {"id": sid})

    run(body())


def test_interrupt_and_restart(pyxis):
    async def body():
        async with pyxis.client() as client:
            sid = await new_session(client)
            await client.call_tool("run_code", {"session_id": sid, "code": "z = 1"})
            long = asyncio.ensure_future(
                client.call_tool(
                    "run_code", {"session_id": sid, "code": "import time\ntime.sleep(30)"}
                )
            )
            await asyncio.sleep(1.5)
            intr = await client.call_tool("interrupt", {"session_id": sid})
            assert intr.structured_content["done"] is True
            r = await asyncio.wait_for(long, 20)
            assert r.is_error and "KeyboardInterrupt" in text_of(r)
            r = await client.call_tool("restart", {"session_id": sid})
            assert not r.is_error, text_of(r)
            r = await client.call_tool("run_code", {"session_id": sid, "code": "z"})
            assert r.is_error and "NameError" in text_of(r)
            await client.call_tool("close_session", {"id": sid})

    run(body())


def test_progress_notifications(pyxis):
    code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(1)\n"

    async def body():
        seen: list[tuple[float, str | None]] = []

        async def on_progress(progress, _total, message):
            seen.append((progress, message))

        async with pyxis.client() as client:
            sid = await new_session(client)
            r = await client.call_tool(
                "run_code", {"session_id": sid, "code": code}, progress_callback=on_progress
            )
            assert not r.is_error, text_of(r)
            assert len(seen) >= 3, seen
            assert [p for p, _ in seen] == sorted(p for p, _ in seen)
            assert "tick 0" in seen[0][1] and "tick 2" in seen[-1][1]
            await client.call_tool("close_session", {"id": sid})

    run(body())


def test_bad_input(pyxis):
    async def body():
        async with pyxis.client() as client:
            with pytest.raises(MCPError):
                await client.call_tool("no_such_tool", {})
            # Arguments that do not fit the input schema are tool errors the model can read
            # and correct (the current revision's rule for input validation), naming the field.
            for name, args, word in [
                ("run_code", {}, "code"),
                ("run_code", {"code": 42}, "string"),
                ("create_session", {"timeout_s": "soon"}, "soon"),
                ("upload_file", {"session_id": "x", "path": "a", "bogus": 1}, "bogus"),
            ]:
                r = await client.call_tool(name, args)
                assert r.is_error is True, (name, args)
                assert word in text_of(r), text_of(r)
            r = await client.call_tool("run_code", {"code": "1", "session_id": "no-such-session"})
            assert r.is_error and "no-such-session" in text_of(r)
            r = await client.call_tool("interrupt", {"session_id": "no-such-session"})
            assert r.is_error
            r = await client.call_tool("create_session", {"language": "cobol"})
            assert r.is_error
            r = await client.call_tool("run_code", {"code": "1", "timeout_s": -1})
            assert r.is_error
            # The connection still works after all that.
            r = await client.call_tool("run_code", {"code": "1 + 1"})
            assert "2" in text_of(r)

    run(body())


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def test_no_token_is_401(pyxis):
    r = httpx2.post(pyxis.url, content=json.dumps(INIT), headers=ACCEPT, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"]
    wrong = httpx2.post(
        pyxis.url,
        content=json.dumps(INIT),
        headers=ACCEPT | {"Authorization": "Bearer nope"},
        timeout=10,
    )
    assert wrong.status_code == 401

    async def body():
        async with pyxis.client(headers={}):
            pass

    with pytest.raises(BaseException):
        run(body())


def test_origin_is_checked(pyxis):
    auth = {"Authorization": f"Bearer {pyxis.token}"}
    r = httpx2.post(
        pyxis.url,
        content=json.dumps(INIT),
        headers=ACCEPT | auth | {"Origin": "https://evil.example"},
        timeout=10,
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "origin_not_allowed"
    ok = httpx2.post(
        pyxis.url,
        content=json.dumps(INIT),
        headers=ACCEPT | auth | {"Origin": "http://localhost:6274"},
        timeout=10,
    )
    assert ok.status_code == 200, ok.text


def test_not_json_is_a_jsonrpc_error(pyxis):
    auth = {"Authorization": f"Bearer {pyxis.token}"}
    r = httpx2.post(pyxis.url, content=b"{not json", headers=ACCEPT | auth, timeout=10)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def test_capabilities_say_how_to_add_pyxis_to_a_client(pyxis):
    """The snippets `/v1/capabilities` gives, filled with the token, work as they are: the
    HTTP one with the SDK's Streamable HTTP client, the stdio one launching `pyxis mcp`."""
    caps = httpx2.get(
        pyxis.base + "/v1/capabilities",
        headers={"Authorization": f"Bearer {pyxis.token}"},
        timeout=30,
    ).json()
    mcp = caps["mcp"]
    assert mcp["url"] == pyxis.url, mcp
    http_cfg = mcp["http_config"]["mcpServers"]["pyxis"]
    assert http_cfg["url"] == pyxis.url
    headers = {k: v.replace("<token>", pyxis.token) for k, v in http_cfg["headers"].items()}
    stdio_cfg = mcp["stdio_config"]["mcpServers"]["pyxis"]
    assert stdio_cfg["command"] == "pyxis"
    args = [a.replace("<token>", pyxis.token) for a in stdio_cfg["args"]]

    async def body():
        async with pyxis.client(headers=headers) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == TOOLS
        params = StdioServerParameters(
            command=pyxis.binary,
            args=args,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYXIS_LOG": "warn"},
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                names = {t.name for t in (await session.list_tools()).tools}
                assert names == TOOLS

    asyncio.run(body())
