"""The zygote's huge-page collapse, run in a throwaway interpreter (it changes its mappings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

RUNTIME = os.path.join(os.path.dirname(__file__), "..")

# An anonymous mapping; from a 2 MiB boundary in it: 8 MiB written in full, a read-only
# page, then 8 MiB with one written page per 2 MiB. Then Python objects, then a fork
# whose child changes shared data: it must see its own write, the parent its old value.
PROGRAM = r"""
import ctypes, json, mmap, os, sys
from pyxis_runtime import hugepages

HUGE = 2 << 20
raw = mmap.mmap(-1, 14 * HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
base = ctypes.addressof(ctypes.c_char.from_buffer(raw))
off = (-(base + 4096)) % HUGE + 4096
for i in range(0, 4 * HUGE, 4096):
    raw[off + i] = 1
# Read-only pages around and between the two parts make each its own mapping, not merged
# with a neighbour (smaps counts huge pages per mapping).
libc = ctypes.CDLL(None)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
for guard in (base, base + off + 4 * HUGE, base + off + 9 * HUGE):
    assert libc.mprotect(guard, 4096, mmap.PROT_READ) == 0
for k in range(5, 9):
    raw[off + k * HUGE] = 1
objects = [str(i) * 3 for i in range(300_000)]

def huge_kib(start, end):
    total, cur = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                a, b = (int(x, 16) for x in head.split("-"))
                cur = (a, b)
            elif line.startswith("AnonHugePages:") and cur[0] < end and start < cur[1]:
                total += int(line.split()[1])
    return total

sparse_before = huge_kib(base + off + 5 * HUGE, base + off + 9 * HUGE)
report = hugepages.collapse()
dense = huge_kib(base + off, base + off + 4 * HUGE)
sparse = huge_kib(base + off + 5 * HUGE, base + off + 9 * HUGE)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    raw[off + 5] = 7
    objects[10] = "child"
    os.write(w, bytes([raw[off + 5], raw[off]]) + objects[10].encode())
    os._exit(0)
child = os.read(r, 100)
os.waitpid(pid, 0)
print(json.dumps({
    "report": report, "dense_kib": dense, "sparse_kib": sparse, "sparse_before_kib": sparse_before,
    "child": list(child[:2]), "child_obj": child[2:].decode(),
    "parent": [raw[off + 5], raw[off]], "parent_obj": objects[10],
}))
"""


def thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return "none"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "none"


def run_program() -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(RUNTIME))
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_dense_ranges_become_huge_pages_and_sparse_ones_do_not():
    if thp_mode() == "never":
        pytest.skip("transparent huge pages are disabled on this host")
    result = run_program()
    report = result["report"]
    if report["error"]:
        pytest.skip(report["error"])
    assert report["collapsed_mib"] >= 8, report
    # The 8 MiB written in full are huge pages now; the 8 MiB with one page per 2 MiB
    # were left alone instead of being filled with zero pages (under THP "always" the
    # kernel may have given them huge pages at the first touch already).
    assert result["dense_kib"] == 8 * 1024, result
    assert result["sparse_kib"] == result["sparse_before_kib"], result
    if thp_mode() == "madvise":
        assert result["sparse_kib"] == 0, result


def test_a_fork_after_the_collapse_still_copies_on_write():
    result = run_program()
    assert result["child"] == [7, 1]
    assert result["child_obj"] == "child"
    assert result["parent"] == [0, 1]
    assert result["parent_obj"] == "101010"


def test_recollapse_waits_for_spawns_idleness_and_decay(monkeypatch):
    """The zygote collapses again only after enough spawns, once idle, and only when less
    than `keep` of its huge pages are left."""
    # pylint: disable=import-outside-toplevel
    from pyxis_runtime import hugepages

    huge = {"kib": 64 << 10}
    calls = []
    monkeypatch.setattr(hugepages, "anon_huge_kib", lambda: huge["kib"])
    monkeypatch.setattr(hugepages, "collapse", lambda: calls.append(1) or {"collapsed_mib": 1})
    again = hugepages.Recollapse(idle_s=0.05, after_spawns=3, keep=0.75)
    assert not again.due()
    for _ in range(3):
        again.spawned()
    huge["kib"] = 40 << 10
    assert not again.due(), "not idle yet"
    time.sleep(0.06)
    assert again.due()
    huge["kib"] = 60 << 10
    assert not again.due(), "not decayed enough"
    huge["kib"] = 30 << 10
    again.run()
    assert calls == [1]
    assert not again.due(), "the spawn count starts again"
