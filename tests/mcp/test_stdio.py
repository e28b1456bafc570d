"""`pyxis mcp`: the stdio transport, launched by the official SDK's stdio client, bridged to
the running server (the same sessions as its HTTP doors)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess

import httpx2
import pytest
from helpers import PNG_MAGIC, RAW_INIT, new_session, run, text_of
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError


def test_stdio_tools_state_images_files(pyxis):
    async def body():
        async with pyxis.stdio() as client:
            init = client.initialize_result
            assert init.server_info.name == "pyxis" and init.instructions
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"create_session", "run_code", "download_file", "import_url"} <= names
            sid = await new_session(client)
            # The same session the HTTP API sees.
            v1 = httpx2.get(
                f"{pyxis.base}/v1/sessions/{sid}",
                headers={"Authorization": f"Bearer {pyxis.token}"},
                timeout=10,
            )
            assert v1.status_code == 200, v1.text
            await client.call_tool("run_code", {"session_id": sid, "code": "x = 21"})
            r = await client.call_tool(
                "run_code",
                {
                    "session_id": sid,
                    "code": "import matplotlib.pyplot as plt\nplt.plot([1, 3])\nplt.show()\nx * 2",
                },
            )
            assert not r.is_error, text_of(r)
            assert "42" in text_of(r)
            (image,) = [c for c in r.content if c.type == "image"]
            assert base64.b64decode(image.data).startswith(PNG_MAGIC)
            r = await client.call_tool("run_code", {"session_id": sid, "code": "1/0"})
            assert r.is_error and "ZeroDivisionError" in text_of(r)
            up = await client.call_tool(
                "upload_file",
                {
                    "session_id": sid,
                    "path": "b.bin",
                    "content_base64": base64.b64encode(b"\0\1\2").decode(),
                },
            )
            assert not up.is_error, text_of(up)
            down = await client.call_tool("download_file", {"session_id": sid, "path": "b.bin"})
            assert base64.b64decode(down.content[0].resource.blob) == b"\0\1\2"
            (res,) = (await client.read_resource(f"pyxis://sessions/{sid}/files/b.bin")).contents
            assert base64.b64decode(res.blob) == b"\0\1\2"
            with pytest.raises(MCPError):
                await client.call_tool("no_such_tool", {})
            await client.call_tool("close_session", {"id": sid})

    run(body())


def test_stdio_progress_and_cancel(pyxis):
    code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(1)\n"

    async def body():
        seen: list[str | None] = []

        async def on_progress(_progress, _total, message):
            seen.append(message)

        async with pyxis.stdio() as client:
            sid = await new_session(client)
            # Two sessions' cells at once: the bridge does not serialise requests.
            other = await new_session(client)
            slow = asyncio.ensure_future(
                client.call_tool(
                    "run_code", {"session_id": sid, "code": code}, progress_callback=on_progress
                )
            )
            quick = await asyncio.wait_for(
                client.call_tool("run_code", {"session_id": other, "code": "'quick'"}), 2.5
            )
            assert "quick" in text_of(quick)
            r = await slow
            assert not r.is_error, text_of(r)
            assert len(seen) >= 3 and "tick 2" in seen[-1], seen

            long = "import time\nfor i in range(600):\n    time.sleep(0.1)\n"
            call = asyncio.ensure_future(
                client.call_tool("run_code", {"session_id": sid, "code": long})
            )
            await asyncio.sleep(2.0)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            r = await asyncio.wait_for(
                client.call_tool("run_code", {"session_id": sid, "code": "i"}), 15
            )
            assert int(text_of(r).split()[-1]) < 200, text_of(r)
            for s in (sid, other):
                await client.call_tool("close_session", {"id": s})

    run(body())


def test_stdio_wrong_token_is_a_clean_error(pyxis):
    async def body():
        pyxis_bad = type(pyxis)(pyxis.base, "wrong-token", pyxis.binary)
        async with pyxis_bad.stdio():
            pass

    with pytest.raises(BaseException) as info:
        run(body())
    assert "401" in repr(info.value) or "token" in repr(info.value).lower(), repr(info.value)


def test_stdio_defaults_to_the_configured_server(pyxis):
    """Without --url and --token, `pyxis mcp` reaches this host's server as configured
    (PYXIS_LISTEN, PYXIS_TOKEN: the same settings `pyxis serve` reads)."""
    port = pyxis.base.rsplit(":", 1)[1]
    params = StdioServerParameters(
        command=pyxis.binary,
        args=["mcp"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYXIS_LISTEN": f"0.0.0.0:{port}",
            "PYXIS_TOKEN": pyxis.token,
        },
    )

    async def body():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as client:
                await client.initialize()
                r = await client.call_tool("run_code", {"code": "print('via defaults')"})
                assert "via defaults" in text_of(r), text_of(r)

    run(body())


def test_stdio_raw_lines_and_end_of_input(pyxis):
    """The stdio framing by hand: one JSON-RPC message per line in, one per line out; a line
    that is not JSON is a parse error; answers still in flight when stdin ends are written."""
    lines = [
        RAW_INIT,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": "two",
            "method": "tools/call",
            "params": {"name": "run_code", "arguments": {"code": "print('raw', 6 * 7)"}},
        },
    ]
    stdin = "\n".join(json.dumps(m) for m in lines[:2]) + "\n{not json\n" + json.dumps(lines[2])
    p = subprocess.run(
        [pyxis.binary, "mcp", "--url", pyxis.url, "--token", pyxis.token],
        input=stdin + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYXIS_LOG": "warn"},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out = [json.loads(line) for line in p.stdout.splitlines()]
    by_id = {m.get("id"): m for m in out}
    assert by_id[1]["result"]["serverInfo"]["name"] == "pyxis"
    assert by_id[None]["error"]["code"] == -32700
    assert "raw 42" in by_id["two"]["result"]["content"][0]["text"], by_id["two"]
