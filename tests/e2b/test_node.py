"""E2B's JavaScript SDK in Node (`node --test tests/e2b/node/`), against this suite's Pyxis."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"


def test_javascript_sdk(pyxis):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (the E2B JavaScript SDK tests need it)")
    if not (NODE_DIR / "node_modules" / "@e2b" / "code-interpreter").is_dir():
        pytest.fail("run tests/e2b/run (it installs the npm packages with npm ci)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env |= pyxis.sdk_env()
    proc = subprocess.run(
        [node, "--test", "--test-concurrency=1", "--test-reporter=spec", "sdk.test.mjs"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(proc.stdout[-8000:])
    print(proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
