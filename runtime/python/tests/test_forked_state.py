"""Kernels forked from one prepared process (as the zygote forks them) each get random
state of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import ROOT

# Runs in a process that prepares once (as the zygote does), seeds every generator the same
# way (so a copy would be visible at once), forks three kernels, runs PROBE in each and
# prints what each drew.
FORKER = textwrap.dedent("""
    import json, os, random, socket, sys
    from pyxis_runtime import framing, kernel
    kernel.prepare()
    import numpy
    random.seed(7)
    numpy.random.seed(7)
    probe = sys.stdin.read()
    results = []
    for n in range(3):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            try:
                kernel.main(theirs.fileno())
            finally:
                os._exit(0)
        theirs.close()
        reader = framing.FrameReader(ours)
        assert reader.read() == {"type": "ready"}
        framing.send(ours, {"type": "execute_request", "id": "p", "code": probe,
                            "max_output_bytes": 1 << 20})
        text, events = "", []
        while True:
            msg = reader.read()
            events.append(msg)
            if msg["type"] == "stream" and msg["name"] == "stdout":
                text += msg["text"]
            if msg["type"] == "execute_reply":
                break
        assert msg["status"] == "ok", events
        results.append(json.loads(text))
        framing.send(ours, {"type": "shutdown"})
        os.waitpid(pid, 0)
    print(json.dumps(results))
    """)

PROBE = textwrap.dedent("""
    import ctypes, hashlib, json, multiprocessing, random, sys, tempfile, types, uuid
    import numpy as np, pandas as pd

    def generators():
        # Every generator object a module holds at its top level, by where it lives.
        kinds = (random.Random, np.random.RandomState, np.random.Generator,
                 np.random.BitGenerator)
        found = {}
        for name, mod in list(sys.modules.items()):
            if not isinstance(mod, types.ModuleType) or name == "__main__":
                continue
            for attr, value in list(vars(mod).items()):
                if isinstance(value, kinds) and not isinstance(value, random.SystemRandom):
                    if isinstance(value, random.Random):
                        state = value.getstate()
                    elif isinstance(value, np.random.RandomState):
                        state = value.get_state(legacy=False)
                    elif isinstance(value, np.random.Generator):
                        state = value.bit_generator.state
                    else:
                        state = value.state
                    digest = hashlib.sha256(repr(state).encode()).hexdigest()
                    found[f"{name}.{attr}"] = digest
        return found

    print(json.dumps({
        "numpy": np.random.rand(3).tolist(),
        "random": random.random(),
        "pandas_sample": pd.DataFrame({"a": range(1000)}).sample(5)["a"].tolist(),
        "default_rng": np.random.default_rng().random(),
        "tempfile": next(tempfile._get_candidate_names()),
        "mkdtemp": tempfile.mkdtemp(),
        "uuid1": str(uuid.uuid1()),
        "uuid4": str(uuid.uuid4()),
        "mp_authkey": multiprocessing.current_process().authkey.hex(),
        "libc_rand": ctypes.CDLL(None).rand(),
        "libc_lrand48": ctypes.CDLL(None).lrand48(),
        "generators": generators(),
    }))
    """)


def test_three_forked_kernels_draw_different_numbers(tmp_path):
    (tmp_path / "workspace").mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path),
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", str(tmp_path / "mpl")),
        "PYTHONPATH": str(ROOT),
        "PYXIS_WORKSPACE": str(tmp_path / "workspace"),
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", FORKER],
        input=PROBE,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 3
    for key in results[0]:
        if key == "generators":
            continue
        values = [json.dumps(r[key]) for r in results]
        assert len(set(values)) == 3, (key, values)
    # Every generator any preloaded module holds is the kernel's own.
    names = set(results[0]["generators"])
    assert "numpy.random.mtrand._rand" in names and "random._inst" in names
    for name in names:
        states = {r["generators"].get(name) for r in results}
        assert len(states) == 3, (name, states)
