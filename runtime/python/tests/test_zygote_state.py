"""Kernels forked by the real zygote into real sandboxes each get random state of their own
(skipped where the sandbox library is not built or not root)."""

from __future__ import annotations

import json
import os
import socket

import pytest
from test_zygote import LIB, Zygote, make_spec, run_cell, workspace_fd

from conftest import reply, stream
from pyxis_runtime import framing

pytestmark = [
    pytest.mark.skipif(not LIB.exists(), reason=f"sandbox library not built at {LIB}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="building a sandbox needs root"),
]

PROBE = (
    "import ctypes, json, multiprocessing, random, tempfile, uuid\n"
    "import numpy as np, pandas as pd\n"
    "print(json.dumps({\n"
    "    'numpy': np.random.rand(3).tolist(),\n"
    "    'random': random.random(),\n"
    "    'pandas_sample': pd.DataFrame({'a': range(1000)}).sample(5)['a'].tolist(),\n"
    "    'tempfile': next(tempfile._get_candidate_names()),\n"
    "    'uuid4': str(uuid.uuid4()),\n"
    "    'mp_authkey': multiprocessing.current_process().authkey.hex(),\n"
    "    'libc_rand': ctypes.CDLL(None).rand(),\n"
    "}))"
)


def spawn(zygote: Zygote, tmp, ident: str) -> tuple[socket.socket, framing.FrameReader]:
    """A sandboxed kernel of the zygote, ready for cells."""
    frame = framing.encode({"type": "spawn", "id": ident, "spec": make_spec(tmp)})
    ours, theirs = socket.socketpair()
    ws = workspace_fd(tmp)
    try:
        socket.send_fds(zygote.sock, [frame], [theirs.fileno(), ws])
    finally:
        theirs.close()
        os.close(ws)
    spawned = zygote.reader.read()
    assert spawned["type"] == "spawned", spawned
    ours.settimeout(60)
    reader = framing.FrameReader(ours)
    assert reader.read() == {"type": "ready"}
    return ours, reader


def test_three_sandboxed_kernels_draw_different_numbers(tmp_path):
    zygote = Zygote(tmp_path)
    results = []
    try:
        assert zygote.reader.read()["type"] == "ready"
        for n in range(3):
            tmp = tmp_path / f"k{n}"
            tmp.mkdir()
            ours, reader = spawn(zygote, tmp, f"k{n}")
            events = run_cell(ours, reader, "p", PROBE)
            assert reply(events)["status"] == "ok", json.dumps(events)[:2000]
            results.append(json.loads(stream(events)))
            framing.send(ours, {"type": "shutdown"})
            assert reader.read() is None
            ours.close()
    finally:
        zygote.close()
    for key in results[0]:
        values = [json.dumps(r[key]) for r in results]
        assert len(set(values)) == 3, (key, values)
