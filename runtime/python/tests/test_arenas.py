"""The zygote's arena region (`SandboxLib.use_arenas`), in a throwaway interpreter: its object
arenas come from the sandbox library's one reserved mapping (skipped where the library is not
built)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, sandbox_library, skip_without_sandbox_library

LIB, LIB_NAMED = sandbox_library()

pytestmark = skip_without_sandbox_library(LIB, LIB_NAMED)

# Objects made after `use_arenas`: where they live, what freeing them gives back, and a
# forked child that goes on allocating from its copy of the region.
PROGRAM = r"""
import gc, json, os, sys
from pyxis_runtime.zygote import ARENA_REGION, SandboxLib

def mappings():
    out = []
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                a, b = (int(x, 16) for x in head.split("-"))
                out.append([a, b, 0])
            elif line.startswith("Rss:"):
                out[-1][2] = int(line.split()[1])
    return out

def where(addrs):
    # each mapping holding some of addrs, with how many, most first
    maps = mappings()
    found = {}
    for x in addrs:
        m = next((a, b) for a, b, _ in maps if a <= x < b)
        found[m] = found.get(m, 0) + 1
    return sorted(([a, b, n] for (a, b), n in found.items()), key=lambda m: -m[2])

def rss_of(region):
    return next(r for a, b, r in mappings() if (a, b) == region)

lib = SandboxLib(sys.argv[1])
problem = lib.use_arenas()
objs = [[i] for i in range(300_000)]
first = where(id(o) for o in objs[::997])
region = tuple(first[0][:2])
full = rss_of(region)
del objs
gc.collect()
freed = rss_of(region)
objs = [[i] for i in range(300_000)]
again = where(id(o) for o in objs[::997])
refilled = rss_of(region)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    more = [str(i) * 4 for i in range(200_000)]
    most = where(id(o) for o in more[::997])[0]
    ok = tuple(most[:2]) == region and more[-1] == "199999" * 4
    os.write(w, b"1" if ok else b"0")
    os._exit(0)
child = os.read(r, 1)
os.waitpid(pid, 0)
print(json.dumps({
    "problem": problem, "first": first, "again": again, "size": region[1] - region[0],
    "reserved": ARENA_REGION, "full_kib": full, "freed_kib": freed, "refilled_kib": refilled,
    "child": child.decode(),
}))
"""


def test_arenas_come_from_one_region_are_given_back_and_reused():
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(LIB)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout)
    assert got["problem"] is None
    # The objects sampled lie in one mapping, the region, not in a mapping per arena (but
    # for a few in the free room of arenas mapped before the switch).
    region, inside = got["first"][0][:2], got["first"][0][2]
    assert inside >= 0.9 * sum(m[2] for m in got["first"]), got
    assert got["again"][0][:2] == region
    assert got["size"] >= got["reserved"]
    # Freed arenas give their memory back; new ones reuse the same ranges.
    assert got["freed_kib"] < got["full_kib"] / 2, got
    assert got["refilled_kib"] < got["full_kib"] * 1.5, got
    assert got["child"] == "1"
