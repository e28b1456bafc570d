"""The MCP Inspector's command-line mode (`@modelcontextprotocol/inspector --cli`, pinned in
inspector/package-lock.json and installed by tests/mcp/run) against the real server:
`tools/list` and `tools/call`, with the token as a header, and without it."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest


def inspector(pyxis, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    binary = os.environ.get("PYXIS_INSPECTOR")
    if not binary:
        pytest.fail("PYXIS_INSPECTOR is not set: run these tests through tests/mcp/run")
    with tempfile.TemporaryDirectory(prefix="pyxis-inspector-") as home:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "MCP_CATALOG_PATH": os.path.join(home, "mcp.json"),
        }
        header = ["--header", f"Authorization: Bearer {token or pyxis.token}"]
        return subprocess.run(
            [binary, "--cli", pyxis.url, "--transport", "http", *header, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def test_inspector_lists_tools(pyxis):
    p = inspector(pyxis, "--method", "tools/list")
    assert p.returncode == 0, p.stderr[-2000:]
    tools = {t["name"]: t for t in json.loads(p.stdout)["tools"]}
    assert {"create_session", "run_code", "upload_file", "import_url"} <= set(tools)
    assert tools["run_code"]["inputSchema"]["required"] == ["code"]
    assert tools["run_code"]["outputSchema"]["type"] == "object"


def test_inspector_calls_run_code(pyxis):
    p = inspector(
        pyxis,
        "--method",
        "tools/call",
        "--tool-name",
        "run_code",
        "--tool-arg",
        "code=print(6 * 7)",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout)
    assert not result.get("isError"), result
    assert "42" in result["content"][0]["text"], result
    assert result["structuredContent"]["status"] == "ok"


def test_inspector_without_the_token_fails_cleanly(pyxis):
    # A 401 reads to the Inspector as "authorization needed"; without a terminal and with
    # stored credentials only it stops there, saying so.
    p = inspector(pyxis, "--method", "tools/list", "--stored-auth-only", token="wrong")
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "auth" in out.lower() and "tools" not in out, out[-2000:]
