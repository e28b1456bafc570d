"""What the zygote does once for every kernel (`kernel.preset`) and what a forked kernel
then does at start: the same process state as a kernel that did it all itself, and random
state of its own."""

import json
import os
import subprocess
import sys
import textwrap

import pytest


def run(code: str, **env) -> dict:
    """Runs `code` in a fresh interpreter (the settings change the process) and returns the
    JSON it prints last."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


CHILD = """
import json, os, sys
def in_child(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            value = fn()
        except BaseException as exc:  # pylint: disable=broad-except
            value = {"error": repr(exc)}
        os.write(w, json.dumps(value).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)
"""


def test_a_preset_kernel_starts_with_the_same_process_state(tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    code = CHILD + f"""
from pyxis_runtime import kernel
def state():
    kernel._setup_process()
    env = {{k: v for k, v in os.environ.items() if k != "PYXIS_SANDBOX_LIB"}}
    hooks = [getattr(h, "pyxis_packages", False) for h in sys.path_hooks]
    finders = [type(f).__name__ for f in sys.meta_path]
    return {{"env": env, "cwd": os.getcwd(), "path": sys.path, "hooks": hooks,
             "finders": finders}}
alone = in_child(state)
kernel.preset({str(workspace)!r})
preset = in_child(state)
print(json.dumps({{"alone": alone, "preset": preset}}))
"""
    got = run(code, PYXIS_WORKSPACE=str(workspace), PYXIS_SANDBOX_LIB="/host/lib.so")
    alone, preset = got["alone"], got["preset"]
    assert "error" not in alone and "error" not in preset, got
    assert alone["cwd"] == preset["cwd"] == str(workspace)
    assert alone["env"]["HOME"] == str(workspace)
    assert alone["env"]["TMPDIR"] == "/tmp"
    assert alone["env"] == preset["env"]
    assert alone["path"] == preset["path"]
    assert alone["hooks"] == preset["hooks"] and any(preset["hooks"])
    assert alone["finders"] == preset["finders"]
    assert "AutoInstaller" in preset["finders"]


def test_a_kernel_whose_workspace_differs_does_it_all_itself(tmp_path):
    preset_for = tmp_path / "zygote-guess"
    actual = tmp_path / "actual"
    actual.mkdir()
    code = CHILD + f"""
from pyxis_runtime import kernel
kernel.preset({str(preset_for)!r})
def state():
    kernel._setup_process()
    return {{"cwd": os.getcwd(), "home": os.environ["HOME"]}}
print(json.dumps(in_child(state)))
"""
    got = run(code, PYXIS_WORKSPACE=str(actual))
    assert got == {"cwd": str(actual), "home": str(actual)}


def test_forked_kernels_get_numpy_keys_of_their_own():
    pytest.importorskip("numpy")
    code = CHILD + """
import numpy
from pyxis_runtime import kernel
numpy.random.normal()  # leaves a cached Gaussian in the parent
kernel._NUMPY_STATE = kernel._numpy_state(numpy)
def draw():
    kernel._rekey_numpy(numpy)
    state = numpy.random.get_state(legacy=False)["state"]
    return {"random": numpy.random.random(4).tolist(), "normal": numpy.random.normal(),
            "key0": int(state["key"][0]), "pos": int(state["pos"]),
            "pandas_like": numpy.random.randint(0, 2**31, 4).tolist()}
a, b = in_child(draw), in_child(draw)
# The fallback (no address known) reseeds through numpy itself.
kernel._NUMPY_STATE = None
c = in_child(draw)
print(json.dumps({"a": a, "b": b, "c": c, "parent": numpy.random.random(4).tolist()}))
"""
    got = run(code)
    a, b, c = got["a"], got["b"], got["c"]
    assert "error" not in a and "error" not in b and "error" not in c, got
    assert a["pos"] == b["pos"] == 624
    assert a["key0"] & 0x80000000 and b["key0"] & 0x80000000
    assert a["random"] != b["random"] != c["random"]
    assert a["random"] != got["parent"] and b["random"] != got["parent"]
    assert a["normal"] != b["normal"]
    assert a["pandas_like"] != b["pandas_like"]
