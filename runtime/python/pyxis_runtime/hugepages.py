"""Moves the zygote's preloaded heap onto transparent huge pages before it forks kernels.

A fork copies one page-table entry per 4 KiB page of private anonymous memory, and each
exit drops them again: with ~100 MiB of preloaded Python objects that is ~25,000 entries
per fork and per exit, several milliseconds each, twice per sandbox (its init and its
kernel). A range collapsed into a 2 MiB huge page is copied as one entry. The pages stay
shared after the fork: a child's first write into a shared huge page splits only its own
mapping into 4 KiB entries and copies the one page it wrote (the kernel's copy-on-write
fallback for huge pages), so a session's private memory does not grow.

Only ranges that are mostly resident are collapsed (`MADV_COLLAPSE` fills the holes with
zeroes), and only by the zygote itself; the VMA flags are not changed, so neither the
kernels' later allocations nor khugepaged are affected. Best effort: on kernels without
`MADV_COLLAPSE` (before 6.1) or with THP disabled it changes nothing.
"""

from __future__ import annotations

import ctypes
import errno
import time

HUGE = 2 << 20
PAGE = 4096
MADV_COLLAPSE = 25
# Collapse a 2 MiB range only when at least this share of its pages is resident: the
# rest become zero pages of the zygote, at most half a MiB per range.
MIN_RESIDENT = 0.75
# mincore(2) sets the low bit of a resident page's byte (the others are reserved).
_RESIDENT_BIT = bytes(i & 1 for i in range(256))


def _aligned_ranges(maps: str = "/proc/self/maps"):
    """Start addresses of the 2 MiB-aligned ranges that lie wholly inside a private,
    writable, anonymous region (the brk heap and nameless mappings)."""
    with open(maps, encoding="ascii") as f:
        lines = f.readlines()
    for line in lines:
        parts = line.split()
        name = parts[5] if len(parts) > 5 else ""
        if parts[1] != "rw-p" or name not in ("", "[heap]"):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        yield from range((start + HUGE - 1) & ~(HUGE - 1), end - HUGE + 1, HUGE)


def _collapse_range(libc, addr: int) -> int:
    """MADV_COLLAPSE of one range; 0 or the errno. EAGAIN (a page busy for a moment:
    khugepaged, reclaim) is tried again twice."""
    for _ in range(3):
        if libc.madvise(addr, HUGE, MADV_COLLAPSE) == 0:
            return 0
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            return err
    return errno.EAGAIN


def collapse(min_resident: float = MIN_RESIDENT) -> dict:
    """Collapses the mostly resident 2 MiB ranges of the anonymous regions.

    Returns what it did: `collapsed_mib`, `candidate_mib` (resident anonymous memory
    in aligned ranges), `failed` (ranges the kernel refused), `ms`, and `error` when
    the call is not supported at all.
    """
    t0 = time.perf_counter()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    vec = ctypes.create_string_buffer(HUGE // PAGE)
    wanted = min_resident * (HUGE // PAGE)
    collapsed = candidates = failed = 0
    error = None
    for addr in _aligned_ranges():
        # The arena region (see zygote.py) is a large VMA, mostly never touched: the count
        # must be cheap.
        if libc.mincore(addr, HUGE, vec) != 0 or vec.raw.translate(_RESIDENT_BIT).count(1) < wanted:
            continue
        candidates += 1
        err = _collapse_range(libc, addr)
        if err == 0:
            collapsed += 1
            continue
        failed += 1
        # EINVAL on every range: the kernel has no MADV_COLLAPSE.
        if err == errno.EINVAL and collapsed == 0 and failed >= 4:
            error = "MADV_COLLAPSE is not supported"
            break
    return {
        "collapsed_mib": collapsed * HUGE >> 20,
        "candidate_mib": candidates * HUGE >> 20,
        "failed": failed,
        "ms": round((time.perf_counter() - t0) * 1e3, 1),
        "error": error,
    }


def anon_huge_kib(rollup: str = "/proc/self/smaps_rollup") -> int:
    """The process's anonymous memory mapped with huge pages, in KiB (0 if unknown)."""
    try:
        with open(rollup, encoding="ascii") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Recollapse:
    """Restores the zygote's huge pages while it is idle.

    After a fork the zygote's huge pages are shared with the child, and the zygote's own
    next write into one of them splits its mapping back into 4 KiB entries (the copy-on-write
    fallback above): after a few dozen spawns about half of the preloaded heap is mapped
    with small pages again, and every later fork and exit copies and drops those entries.
    Once the zygote has been idle for `idle_s` after at least `after_spawns` spawns, and
    less than `keep` of what it had is still huge, it collapses again. The kernels forked
    before keep the old pages; the new ones share the new.
    """

    def __init__(self, idle_s: float = 2.0, after_spawns: int = 32, keep: float = 0.75) -> None:
        self.idle_s = idle_s
        self.after_spawns = after_spawns
        self.keep = keep
        self.baseline_kib = anon_huge_kib()
        self.spawns = 0
        self.last = time.monotonic()

    def spawned(self) -> None:
        """One more spawn (the zygote wrote into its heap)."""
        self.spawns += 1
        self.last = time.monotonic()

    def due(self) -> bool:
        """Whether the zygote is idle and its huge pages decayed enough to collapse again."""
        if self.spawns < self.after_spawns or self.baseline_kib == 0:
            return False
        if time.monotonic() - self.last < self.idle_s:
            return False
        return anon_huge_kib() < self.keep * self.baseline_kib

    def run(self) -> dict:
        """Collapses again; what `collapse` did."""
        result = collapse()
        self.spawns = 0
        self.last = time.monotonic()
        self.baseline_kib = max(self.baseline_kib, anon_huge_kib())
        return result
