"""E2B SDK bench against Pyxis on loopback: `Sandbox.create()` + first `run_code` +
`kill()` (p50/p95 over N rounds) and the `run_code` round trip of a trivial cell on a live
sandbox. Uses E2B's own Python SDK (the tests' venv, tests/e2b/requirements.txt).

    PYXIS_BIN=target/release/pyxis <runtime>/devtools-e2b/bin/python bench/e2b/bench.py [rounds]

It starts its own `pyxis serve` (loopback, random port). E2B's published start time
(~150 ms) is measured over a network to their cloud; this is one machine, on loopback.
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    binary = os.environ.get("PYXIS_BIN", "target/release/pyxis")
    port, token = _port(), secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="pyxis-e2b-bench-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYXIS_")}
        env |= {
            "PYXIS_LISTEN": f"127.0.0.1:{port}",
            "PYXIS_DATA_DIR": data,
            "PYXIS_TOKEN": token,
            "PYXIS_UID_BASE": str(4_000_000 + secrets.randbelow(100) * 1000),
            "PYXIS_LOG": "warn",
        }
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            for _ in range(3000):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            base = f"http://127.0.0.1:{port}"
            os.environ |= {"E2B_API_URL": base, "E2B_SANDBOX_URL": base, "E2B_API_KEY": "e2b_" + token}
            from e2b_code_interpreter import Sandbox  # pylint: disable=import-outside-toplevel

            starts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                sbx = Sandbox.create()
                assert sbx.run_code("1 + 1").text == "2"
                sbx.kill()
                starts.append((time.perf_counter() - t0) * 1000)
            sbx = Sandbox.create()
            sbx.run_code("x = 0")
            trips = []
            for i in range(rounds * 10):
                t0 = time.perf_counter()
                assert sbx.run_code(f"x = {i}\nx").text == str(i)
                trips.append((time.perf_counter() - t0) * 1000)
            sbx.kill()
            print(f"e2b create+run_code+kill: p50 {statistics.median(starts):.1f} ms, "
                  f"p95 {_pct(starts, 95):.1f} ms over {rounds} rounds")
            print(f"e2b run_code round trip: p50 {statistics.median(trips):.2f} ms, "
                  f"p95 {_pct(trips, 95):.2f} ms over {len(trips)} cells")
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
