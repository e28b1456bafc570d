"""Everything a cell makes the supervisor hold counts against max_output_bytes: rich data,
metadata, MIME keys, transient, the number of results, tracebacks, stream text."""

from __future__ import annotations

import pytest

from conftest import of_type, reply
from pyxis_runtime import framing
from pyxis_runtime.output import EVENT_OVERHEAD


def held(events: list) -> int:
    """What the supervisor holds for a cell's output, as the kernel charges it: the text of
    each stream event, the whole frame of any other, and a fixed overhead per event."""
    return sum(
        (len(e["text"].encode()) if e["type"] == "stream" else len(framing.encode(e)))
        + EVENT_OVERHEAD
        for e in events[:-1]
    )


CAP = 200_000


@pytest.mark.parametrize(
    "code",
    [
        # 100k tiny results
        "for i in range(100_000):\n    display(i)",
        # results with 1 MiB of metadata each
        (
            "for i in range(20):\n"
            "    display({'text/plain': 'x'}, raw=True, metadata={'k': 'v' * (1 << 20)})"
        ),
        # thousands of MIME keys
        "for i in range(20):\n    display({f'text/x-{j}': '' for j in range(5000)}, raw=True)",
        # huge transient (display ids)
        "for i in range(20):\n    display('x', display_id='d' * (1 << 20))",
        # many clear_output and update events
        (
            "from IPython.display import clear_output\n"
            "for i in range(100_000):\n    clear_output(wait=True)"
        ),
        "h = display('a', display_id=True)\nfor i in range(100_000):\n    h.update(i)",
        # many tiny stream events (stdout and stderr alternate)
        (
            "import sys\nfor i in range(100_000):\n"
            "    print(i)\n    print(i, file=sys.stderr)\n    sys.stdout.flush()"
        ),
    ],
    ids=["tiny-results", "big-metadata", "mime-keys", "transient", "clear", "update", "streams"],
)
def test_cap_counts_every_byte(kernel, code):
    events = kernel.run(code, max_output_bytes=CAP)
    assert reply(events)["status"] == "ok", events[-2:]
    assert reply(events)["truncated"] is True
    assert held(events) <= CAP + 4096, held(events)
    assert reply(kernel.run("1", max_output_bytes=CAP))["truncated"] is False


def test_one_huge_metadata_result_is_dropped_whole(kernel):
    events = kernel.run(
        "display({'text/plain': 'x'}, raw=True, metadata={'k': 'v' * (1 << 20)})",
        max_output_bytes=CAP,
    )
    assert not of_type(events, "display_data")
    assert reply(events)["truncated"] is True


def test_tracebacks_count_and_the_error_still_arrives(kernel):
    code = "print('p' * 3000)\nraise ValueError('e' * 5_000)"
    events = kernel.run(code, max_output_bytes=4000)
    assert reply(events)["status"] == "error" and reply(events)["truncated"] is True
    error = of_type(events, "error")
    assert len(error) == 1 and error[0]["ename"] == "ValueError"
    assert error[0]["evalue"].startswith("eee")
    assert held(events) <= 4000 + 2048
    # With room, the whole message and traceback come.
    events = kernel.run(code, max_output_bytes=1 << 20)
    assert len(of_type(events, "error")[0]["evalue"]) == 5_000
    assert reply(events)["truncated"] is False


def test_user_expressions_count(kernel):
    kernel.counter += 1
    ident = f"ue{kernel.counter}"
    kernel.send(
        {
            "type": "execute_request",
            "id": ident,
            "code": "big = 'z' * 500_000",
            "max_output_bytes": CAP,
            "user_expressions": {"big": "big", "small": "1"},
        }
    )
    answer = reply(kernel.collect(ident))
    assert answer["user_expressions"] == {} and answer["truncated"] is True


def test_figures_beyond_the_cap_are_not_rendered(kernel):
    events = kernel.run(
        "import matplotlib.pyplot as plt\n"
        "for i in range(50):\n"
        "    plt.figure()\n    plt.plot([i, 1])\n    plt.show()",
        max_output_bytes=60_000,
    )
    assert reply(events)["truncated"] is True
    assert 1 <= len(of_type(events, "display_data")) < 50
    assert held(events) <= 60_000 + 4096
