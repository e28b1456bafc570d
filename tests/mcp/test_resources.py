"""Workspace files as resources (`pyxis://sessions/{id}/files/{path}`), and import_url."""

from __future__ import annotations

import base64

import pytest
from helpers import PNG_MAGIC, new_session, run, text_of
from mcp.shared.exceptions import MCPError


def test_files_are_resources(pyxis):
    blob = bytes(range(256)) * 8

    async def body():
        async with pyxis.client() as client:
            templates = (await client.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == [
                "pyxis://sessions/{session_id}/files/{+path}"
            ]
            sid = await new_session(client)
            await client.call_tool(
                "upload_file",
                {
                    "session_id": sid,
                    "path": "raw/blob.bin",
                    "content_base64": base64.b64encode(blob).decode(),
                },
            )
            await client.call_tool(
                "upload_file", {"session_id": sid, "path": "my notes.txt", "text": "héllo"}
            )
            r = await client.call_tool(
                "run_code",
                {
                    "session_id": sid,
                    "code": "import os\nimport matplotlib.pyplot as plt\nos.makedirs('plots')\n"
                    "plt.plot([1, 2])\nplt.savefig('plots/p.png')",
                },
            )
            assert not r.is_error, text_of(r)
            listed = {
                str(res.uri): res
                for res in (await client.list_resources()).resources
                if str(res.uri).startswith(f"pyxis://sessions/{sid}/")
            }
            base = f"pyxis://sessions/{sid}/files/"
            assert set(listed) == {
                base + "raw/blob.bin",
                base + "my%20notes.txt",
                base + "plots/p.png",
            }, sorted(listed)
            assert listed[base + "raw/blob.bin"].size == len(blob)
            assert listed[base + "plots/p.png"].mime_type == "image/png"

            text = (await client.read_resource(base + "my%20notes.txt")).contents
            assert len(text) == 1 and text[0].text == "héllo"
            assert text[0].mime_type == "text/plain"
            (raw,) = (await client.read_resource(base + "raw/blob.bin")).contents
            assert base64.b64decode(raw.blob) == blob
            (png,) = (await client.read_resource(base + "plots/p.png")).contents
            assert png.mime_type == "image/png"
            assert base64.b64decode(png.blob).startswith(PNG_MAGIC)

            for uri in [
                base + "nope.txt",
                base + "../../../etc/passwd",
                base + "%2e%2e/%2e%2e/etc/passwd",
                "pyxis://sessions/no-such-session/files/a.txt",
                "pyxis://elsewhere/a",
                "file:///etc/passwd",
            ]:
                with pytest.raises(MCPError):
                    await client.read_resource(uri)
            await client.call_tool("close_session", {"id": sid})
            # A closed session's files are no longer listed.
            uris = [str(r.uri) for r in (await client.list_resources()).resources]
            assert not [u for u in uris if u.startswith(f"pyxis://sessions/{sid}/")]

    run(body())


def test_import_url(pyxis, file_server):
    base, root = file_server
    (root / "data.csv").write_text("a,b\n1,2\n3,4\n")

    async def body():
        async with pyxis.client() as client:
            sid = await new_session(client)
            r = await client.call_tool("import_url", {"session_id": sid, "url": f"{base}/data.csv"})
            assert not r.is_error, text_of(r)
            assert r.structured_content == {"path": "data.csv", "size": 12}
            r = await client.call_tool(
                "import_url",
                {"session_id": sid, "url": f"{base}/data.csv", "path": "in/copy.csv"},
            )
            assert not r.is_error, text_of(r)
            r = await client.call_tool(
                "run_code",
                {
                    "session_id": sid,
                    "code": "import pandas as pd\nint(pd.read_csv('in/copy.csv').b.sum())",
                },
            )
            assert "6" in text_of(r), text_of(r)
            # The import rules hold: a missing file, a metadata address, a scheme other
            # than http(s), a path out of the workspace.
            for url, path, word in [
                (f"{base}/missing.csv", None, "404"),
                ("http://169.254.169.254/latest/meta-data/", None, "169.254.169.254"),
                ("file:///etc/passwd", None, "http"),
                (f"{base}/data.csv", "../escape.csv", "escape"),
            ]:
                args = {"session_id": sid, "url": url} | ({"path": path} if path else {})
                r = await client.call_tool("import_url", args)
                assert r.is_error, (url, text_of(r))
                assert word in text_of(r), text_of(r)
            r = await client.call_tool("import_url", {"session_id": "nope", "url": base})
            assert r.is_error and "nope" in text_of(r)
            await client.call_tool("close_session", {"id": sid})

    run(body())
