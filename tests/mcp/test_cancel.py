"""A client that gives up on a `run_code` call interrupts its cell, on both roads the SDK
takes: `notifications/cancelled` (the 2025 revisions, after `initialize`) and closing the
request's stream (the 2026-07-28 revision, after `server/discover`)."""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest
from helpers import new_session, run, text_of

# Counts to 600 over a minute; `i` says how far it got before it was stopped.
LONG = "import time\nfor i in range(600):\n    time.sleep(0.1)\nfinished = True\n"


async def cancel_then_check(client, sid: str) -> None:
    call = asyncio.ensure_future(client.call_tool("run_code", {"session_id": sid, "code": LONG}))
    await asyncio.sleep(2.0)
    assert not call.done()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    cancelled_at = time.monotonic()
    # The next cell waits for the cancelled one in the session's queue: it comes back at
    # once only if that cell was interrupted.
    r = await asyncio.wait_for(
        client.call_tool("run_code", {"session_id": sid, "code": "print(i, 'finished' in dir())"}),
        20,
    )
    waited = time.monotonic() - cancelled_at
    assert not r.is_error, text_of(r)
    count, finished = text_of(r).split()[:2]
    assert finished == "False", text_of(r)
    assert 5 <= int(count) < 200, text_of(r)
    assert waited < 15, waited
    # The session is alive and keeps its state.
    r = await client.call_tool("run_code", {"session_id": sid, "code": "i >= 5"})
    assert "True" in text_of(r), text_of(r)


@pytest.mark.parametrize("modern", [False, True], ids=["notification", "closed-stream"])
def test_cancel_interrupts_the_cell(pyxis, modern):
    async def body():
        async with pyxis.client(modern=modern) as client:
            if modern:
                assert client.initialize_result is None
            sid = await new_session(client)
            await cancel_then_check(client, sid)
            await client.call_tool("close_session", {"id": sid})

    run(body())


def test_cancel_of_a_queued_cell_does_not_touch_the_running_one(pyxis):
    """Cancelling a call that waits behind another must not interrupt the other."""

    async def body():
        async with pyxis.client() as client:
            sid = await new_session(client)
            first = asyncio.ensure_future(
                client.call_tool(
                    "run_code", {"session_id": sid, "code": "import time\ntime.sleep(3)\n'first'"}
                )
            )
            await asyncio.sleep(0.8)
            queued = asyncio.ensure_future(
                client.call_tool("run_code", {"session_id": sid, "code": "queued = True"})
            )
            await asyncio.sleep(0.5)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            r = await asyncio.wait_for(first, 20)
            assert not r.is_error and "first" in text_of(r), text_of(r)
            r = await client.call_tool("run_code", {"session_id": sid, "code": "'queued' in dir()"})
            assert "False" in text_of(r), text_of(r)
            await client.call_tool("close_session", {"id": sid})

    run(body())


def cells_total(pyxis, status: str) -> float:
    """`pyxis_cells_total{status=...}` of the server's metrics."""
    text = httpx2.get(
        pyxis.base + "/metrics", headers={"Authorization": f"Bearer {pyxis.token}"}, timeout=10
    ).text
    for line in text.splitlines():
        if line.startswith("pyxis_cells_total{") and f'status="{status}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_cancel_of_a_one_shot(pyxis):
    """A cancelled one-shot's cell is interrupted (it ends as an error at once), not left
    to run out its minute in a sandbox nobody reads."""

    async def body():
        async with pyxis.client() as client:
            errors = cells_total(pyxis, "error")
            call = asyncio.ensure_future(client.call_tool("run_code", {"code": LONG}))
            await asyncio.sleep(2.0)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            deadline = time.monotonic() + 15
            while cells_total(pyxis, "error") <= errors:
                assert time.monotonic() < deadline, "the cancelled one-shot kept running"
                await asyncio.sleep(0.2)
            r = await client.call_tool("run_code", {"code": "1 + 1"})
            assert "2" in text_of(r)

    run(body())
