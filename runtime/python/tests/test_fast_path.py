"""The shell's short road for plain cells gives what IPython's run_cell gives.

Each cell runs in two kernels: one as shipped, one with the short road turned off
(IPython's own run_cell for every cell). Their events must be the same.
"""

from __future__ import annotations

import re

import pytest

from conftest import KernelProcess, of_type, reply

IPYTHON_ONLY = (
    "from pyxis_runtime.shell import PyxisShell\n"
    "PyxisShell._fast_path_settings = lambda self: False"
)

CELLS = [
    "x = 1",
    "x + 1",
    "x = 2; x * 3",
    "y = [1, 2]\ny",
    "y;",
    "print('a')\n'b'",
    "if True:\n    5",
    "1\n2\n3",
    "z = 3\nz",
    "'first string'\nw = 1\n'second string'\nw2 = 2\n__doc__",
    "'only string'",
    "del __doc__\n__doc__ if '__doc__' in dir() else None",
    "1/0",
    "class R:\n    def __repr__(self):\n        raise ValueError('bad repr')\nR()",
    "__import__ = None\n5",
    "del __import__",
    "import builtins\nreal_import = builtins.__import__\n"
    "def spy(name, *args, **kwargs):\n    print('import', name)\n"
    "    return real_import(name, *args, **kwargs)\nbuiltins.__import__ = spy",
    "6",
    "builtins.__import__ = real_import\n7",
    "def f():\n    return 1/0\nf()",
    "return 5",
    "x = (",
    "  indented = 1",
    "raise SystemExit(3)",
    "import warnings\nwarnings.warn('careful')\n4",
    "import sys\nsys.displayhook = lambda v: print('custom', v)\n7",
    "8",
    "_ + 1",
    "__",
    "_i",
    "_ii",
    "In[-1]",
    "Out.get(2)",
    "_2",
    "from __future__ import annotations\ndef g(a: Undefined) -> None: pass\ng.__annotations__",
    "def h(a: Undefined): pass\nh.__annotations__",
    "ip = get_ipython()\n"
    "ip.events.register('post_run_cell', lambda r: print('post', r.execution_count, r.success))",
    "9",
    "ip.observe(lambda change: print('count', change['new']), 'execution_count')",
    "10",
    "ip.last_execution_succeeded, ip.last_execution_result.result",
    "len(In), sorted(Out)[-3:]",
    "get_ipython().execution_count",
    "get_ipython().run_line_magic('who', '')  # paste",
    "get_ipython().execution_count",
]


# A warning names the file and line that raised it: IPython's or the shell's.
WARNING_SOURCE = re.compile(r"^\S+:\d+: (\w+Warning: .*)\n  .*\n", re.M)


def comparable(events: list[dict]) -> list[dict]:
    """The events without the per-cell ids and the warnings' source lines."""
    out = []
    for event in events:
        event = {k: v for k, v in event.items() if k != "id"}
        if event["type"] == "stream":
            event["text"] = WARNING_SOURCE.sub(r"\1\n", event["text"])
        out.append(event)
    return out


@pytest.fixture(scope="module", name="pair")
def pair_fixture(tmp_path_factory):
    fast = KernelProcess(tmp_path_factory.mktemp("fast"))
    slow = KernelProcess(tmp_path_factory.mktemp("slow"), prelude=IPYTHON_ONLY)
    yield fast, slow
    fast.close()
    slow.close()


def test_same_events_as_ipython(pair):
    fast, slow = pair
    for cell in CELLS:
        assert comparable(fast.run(cell)) == comparable(slow.run(cell)), cell


def test_the_shipped_kernel_takes_the_short_road(pair):
    fast, slow = pair
    probe = "import sys\nsys._getframe().f_back.f_code.co_name"
    assert of_type(fast.run(probe), "execute_result")[0]["data"]["text/plain"] == "'_run_code'"
    assert of_type(slow.run(probe), "execute_result")[0]["data"]["text/plain"] == "'run_code'"
    assert reply(fast.run("pass"))["status"] == "ok"
