"""Per-cell overhead of the kernel driver (not sandboxed): python bench_kernel.py

Prints, per cell, the time inside the kernel from reading the request to writing the reply
(`kernel_us`, reported when PYXIS_KERNEL_TIMING is set) and the socket round trip.
"""

import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pyxis_runtime import framing  # noqa: E402  pylint: disable=wrong-import-position

a, b = socket.socketpair()
env = dict(os.environ, PYTHONPATH=HERE, PYXIS_KERNEL_TIMING="1", MPLBACKEND="Agg")
proc = subprocess.Popen(  # pylint: disable=consider-using-with
    [sys.executable, "-c", f"from pyxis_runtime.kernel import main; main({b.fileno()})"],
    pass_fds=[b.fileno()],
    env=env,
    stdin=subprocess.DEVNULL,
)
b.close()
reader = framing.FrameReader(a)
reader.read()
CELLS = ["x = 1", "1+1", "print(1)", "df", "display(df)"]


def run(ident: int, source: str) -> dict:
    """Runs one cell; returns its reply."""
    framing.send(
        a,
        {"type": "execute_request", "id": str(ident), "code": source, "max_output_bytes": 1 << 20},
    )
    while True:
        msg = reader.read()
        if msg["type"] == "execute_reply":
            return msg


def main() -> None:
    """Runs each cell 300 times."""
    run(0, "import pandas as pd; df = pd.DataFrame({'a': range(5), 'b': list('abcde')})")
    for source in CELLS:
        inside = []
        trip = []
        for i in range(300):
            started = time.perf_counter()
            inside.append(run(i + 1, source)["kernel_us"])
            trip.append((time.perf_counter() - started) * 1e6)
        print(
            f"{source!r:14} kernel p50={statistics.median(inside):7.1f}us "
            f"p90={sorted(inside)[270]:7.1f}us  round trip p50={statistics.median(trip):7.1f}us"
        )
    framing.send(a, {"type": "shutdown"})
    proc.wait()


if __name__ == "__main__":
    main()
