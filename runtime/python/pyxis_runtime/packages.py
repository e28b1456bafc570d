"""A session's own packages: installed, listed and removed with uv, in the workspace.

The server runs `api()` in the session's kernel (a cell that is not stored in its history):
uv runs as a subprocess of the kernel, under the session's memory, pids and CPU limits, with
the kernel's environment, so it reaches the package index only through the server's egress
proxy (`PIP_INDEX_URL` / `UV_DEFAULT_INDEX` name the mirror the proxy serves). Packages go to
`sysenv.PACKAGES_PREFIX`, whose `site-packages` the kernel already has on `sys.path`.

It also holds the auto-install finder (`PYX_AUTO_INSTALL`, from the server's
`PYXIS_AUTO_INSTALL`): an import of a name on the operator's list that nothing else can find
installs the package and imports it again.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tarfile

from . import sysenv

# The line of the answer on stdout, after uv's own output.
MARKER = "\x1epyxis-packages "
# Most of uv's output kept in an answer.
LOG_LIMIT = 16 << 10
AUTO_INSTALL_ENV = "PYX_AUTO_INSTALL"
INSTALL_TIMEOUT_ENV = "PYX_INSTALL_TIMEOUT_S"


def uv_program() -> str:
    """uv, shipped in the runtime's venv beside its Python."""
    return os.path.join(os.path.dirname(sys.executable), "uv")


def normalize(name: str) -> str:
    """PEP 503 normalization of a project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _uv(args: list, timeout: float) -> tuple[int, str]:
    """Runs `uv pip ARGS` in a process group of its own; its exit status and the tail of its
    output. The whole group is killed when uv is done or out of time: a build backend's
    leftover processes (a daemon started by a `setup.py`) go with it."""
    command = [uv_program(), "pip", *args]
    try:
        # pylint: disable-next=consider-using-with
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        return 127, f"uv could not run: {exc}"
    try:
        out, _ = child.communicate(timeout=timeout)
        code = child.returncode
    except subprocess.TimeoutExpired:
        _kill_group(child.pid)
        out, _ = child.communicate()
        code = 124
        out = (out or "") + f"\nthe install took longer than its limit of {timeout:g} s\n"
    _kill_group(child.pid)
    return code, (out or "")[-LOG_LIMIT:]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _target() -> list:
    return ["--python", sys.executable, "--prefix", sysenv.PACKAGES_PREFIX]


def listed() -> list:
    """The packages the session added: name and version, by name."""
    found = {}
    for dist in importlib.metadata.distributions(path=[sysenv.site_packages()]):
        name = dist.metadata.get("Name")
        if name:
            found[normalize(name)] = {"name": name, "version": dist.version}
    return [found[key] for key in sorted(found)]


def install(requirements: list, timeout: float) -> dict:
    """Installs `requirements` (already checked by the server)."""
    code, log = _uv(["install", *_target(), *requirements], timeout)
    importlib.invalidate_caches()
    return {"ok": code == 0, "exit_code": code, "log": log, "packages": listed()}


def remove(name: str, timeout: float) -> dict:
    """Removes one package the session added."""
    if not any(normalize(p["name"]) == normalize(name) for p in listed()):
        return {"ok": False, "missing": True, "exit_code": 0, "log": "", "packages": listed()}
    code, log = _uv(["uninstall", *_target(), name], timeout)
    importlib.invalidate_caches()
    return {"ok": code == 0, "exit_code": code, "log": log, "packages": listed()}


def unpack(archive: str) -> dict:
    """Extracts `archive` (a tar made by `pack`, in the workspace) into the packages prefix,
    then removes it: the function runner's package set, copied into a fresh sandbox. Only
    regular files and directories inside the prefix are taken (`tarfile`'s `data` filter
    where this Python has it, the same checks by hand where it does not)."""
    prefix = os.path.realpath(sysenv.PACKAGES_PREFIX)
    os.makedirs(prefix, exist_ok=True)
    try:
        with tarfile.open(archive, "r:") as tar:
            members = [m for m in tar.getmembers() if _safe_member(m, prefix)]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(prefix, members=members, filter="data")
            else:  # pragma: no cover - Pythons before 3.11.4
                tar.extractall(prefix, members=members)  # nosec: members checked above
    finally:
        try:
            os.unlink(archive)
        except OSError:
            pass
    importlib.invalidate_caches()
    return {"ok": True, "packages": listed()}


def _safe_member(member: tarfile.TarInfo, prefix: str) -> bool:
    """A regular file or directory whose path stays inside `prefix`."""
    if not (member.isfile() or member.isdir()):
        return False
    target = os.path.realpath(os.path.join(prefix, member.name))
    return target == prefix or target.startswith(prefix + os.sep)


def pack(archive: str) -> dict:
    """Writes the packages prefix (regular files and directories) to the tar `archive`."""
    prefix = sysenv.PACKAGES_PREFIX
    with tarfile.open(archive, "w:") as tar:
        if os.path.isdir(prefix):
            for root, dirs, files in os.walk(prefix):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for name in sorted(files):
                    path = os.path.join(root, name)
                    if os.path.isfile(path) and not os.path.islink(path):
                        tar.add(path, arcname=os.path.relpath(path, prefix), recursive=False)
    return {"ok": True, "packages": listed()}


def api(request: str) -> None:
    """The server's entry: one JSON request in, one marked JSON line out."""
    req = json.loads(request)
    action = req.get("action")
    timeout = float(req.get("timeout_s", 300))
    if action == "install":
        answer = install([str(r) for r in req.get("packages", [])], timeout)
    elif action == "remove":
        answer = remove(str(req.get("name", "")), timeout)
    elif action == "unpack":
        answer = unpack(str(req.get("archive", "")))
    elif action == "pack":
        answer = pack(str(req.get("archive", "")))
    else:
        answer = {"ok": True, "packages": listed()}
    sys.stdout.flush()
    sys.stdout.write(MARKER + json.dumps(answer) + "\n")
    sys.stdout.flush()


class AutoInstaller(importlib.abc.MetaPathFinder):
    """Last on `sys.meta_path`: a top-level import that no other finder found, of a name in
    `PYX_AUTO_INSTALL` (a JSON object, import name → requirement, set by the server),
    installs the requirement once and looks again."""

    def __init__(self) -> None:
        self.tried: set = set()

    def find_spec(self, fullname, path=None, target=None):
        """The spec after installing, or None."""
        if path is not None or fullname in self.tried:
            return None
        try:
            wanted = json.loads(os.environ.get(AUTO_INSTALL_ENV) or "{}")
        except ValueError:
            return None
        requirement = wanted.get(fullname) if isinstance(wanted, dict) else None
        if not isinstance(requirement, str):
            return None
        self.tried.add(fullname)
        timeout = float(os.environ.get(INSTALL_TIMEOUT_ENV) or 300)
        sys.stderr.write(f"pyxis: installing {requirement} for `import {fullname}`\n")
        answer = install([requirement], timeout)
        if not answer["ok"]:
            sys.stderr.write(f"pyxis: installing {requirement} failed:\n{answer['log']}\n")
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, None, target)


def add_auto_installer(meta_path=None) -> None:
    """Appends the auto-installer to `sys.meta_path` (once)."""
    meta_path = sys.meta_path if meta_path is None else meta_path
    if not any(isinstance(finder, AutoInstaller) for finder in meta_path):
        meta_path.append(AutoInstaller())
