"""Small helpers shared by the MCP tests."""

from __future__ import annotations

import asyncio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(coro):
    """Run one async test body."""
    return asyncio.run(coro)


def text_of(result) -> str:
    """The text blocks of a tool result, joined."""
    return "\n".join(c.text for c in result.content if c.type == "text")


async def new_session(client) -> str:
    """A new Pyxis session's id."""
    r = await client.call_tool("create_session", {})
    assert not r.is_error, text_of(r)
    return r.structured_content["id"]


# A raw `initialize` request (for tests that speak JSON-RPC by hand).
RAW_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
