"""The display hook's shortcuts (repr for scalars, one read of each trait) give what
IPython's own display hook gives.

Each cell runs in two kernels: one as shipped, one with IPython's PlainTextFormatter for
every result and IPython's update_user_ns / log_output. Their events must be the same.
"""

from __future__ import annotations

import pytest

from conftest import KernelProcess, of_type

IPYTHON_ONLY = (
    "from IPython.core.displayhook import DisplayHook\n"
    "from pyxis_runtime import shell\n"
    "shell._repr_text = lambda plain, result, kind: None\n"
    "shell.PyxisDisplayHook.update_user_ns = DisplayHook.update_user_ns\n"
    "shell.PyxisDisplayHook.log_output = DisplayHook.log_output"
)

CELLS = [
    "1 + 1",
    "-0",
    "2 ** 200",
    "10 ** 5000",  # past the int's digit limit: repr raises, the formatter reports it
    "1.5",
    "1e300 * 10",
    "float('nan')",
    "0.1 + 0.2",
    "'text'",
    "'two\\nlines'",
    "'quote \\' and \" and é 你好'",
    "'\\ud800'",
    "True",
    "False",
    "None",
    "x = 3\nx",
    "_",
    "__",
    "___",
    "Out[1]",
    "_1",
    "_oh[2]",
    "get_ipython().history_manager.output_hist_reprs.get(3)",
    "_ = 'mine'",
    "7",
    "_",
    "del _\n8",
    "_",
    "%precision 3",
    "2.0 / 3",
    "%precision",
    "2.0 / 3",
    "plain = get_ipython().display_formatter.formatters['text/plain']\n"
    "plain.for_type(int, lambda o, p, cycle: p.text(f'<int {o}>'))\n"
    "5",
    "plain.for_type(str, lambda o, p, cycle: p.text('<str>'))\n'x'",
    "plain.for_type(float, lambda o, p, cycle: p.text('<float>'))\n2.5",
    "plain.singleton_printers[id(None)] = lambda o, p, cycle: p.text('<none>')\nNone",
    "plain.singleton_printers[id(True)] = lambda o, p, cycle: p.text('<yes>')\nTrue",
    "get_ipython().display_formatter.formatters['text/html'].for_type(bool, lambda o: '<b/>')\n"
    "False",
    "plain.pprint = False\n12",
    "get_ipython().displayhook.cache_size = 0\n13",
    "_",
    "len(Out)",
]


@pytest.fixture(scope="module", name="pair")
def pair_fixture(tmp_path_factory):
    shipped = KernelProcess(tmp_path_factory.mktemp("shipped"))
    ipython = KernelProcess(tmp_path_factory.mktemp("ipython"), prelude=IPYTHON_ONLY)
    yield shipped, ipython
    shipped.close()
    ipython.close()


def comparable(events: list[dict]) -> list[dict]:
    """The events without the per-cell ids."""
    return [{k: v for k, v in event.items() if k != "id"} for event in events]


def test_same_results_and_namespace_as_ipython(pair):
    shipped, ipython = pair
    for cell in CELLS:
        assert comparable(shipped.run(cell)) == comparable(ipython.run(cell)), cell


def test_a_scalar_result_is_its_repr(tmp_path):
    kernel = KernelProcess(tmp_path)
    try:
        for cell, text in [("1 + 1", "2"), ("0.5", "0.5"), ("'a'", "'a'"), ("None", None)]:
            results = of_type(kernel.run(cell), "execute_result")
            if text is None:
                assert not results, cell  # None is not displayed
            else:
                assert results[0]["data"] == {"text/plain": text}, cell
    finally:
        kernel.close()
