"""What a kernel's environment needs for the system tools, and the runtime's pinned libraries.

Kept light (no third-party imports): the zygote imports it, and `kernel_env()` runs in every
kernel at start.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# The runtime directory: `<dir>/venv` is sys.prefix, `<dir>/requirements.txt` the pins the
# setup installed, `<dir>/imagemagick/policy.xml` our ImageMagick policy.
RUNTIME_DIR = Path(sys.prefix).parent
REQUIREMENTS = RUNTIME_DIR / "requirements.txt"
PIN_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def kernel_env(tmp: str = "/tmp") -> dict:
    """Environment variables that send the tools' writable state to the sandbox's own /tmp
    (never shared between sessions) and bound ImageMagick by our policy."""
    env = {
        # fontconfig's cache (LibreOffice, ImageMagick, matplotlib via fc-list), pip's cache.
        "XDG_CACHE_HOME": f"{tmp}/.cache",
        "XDG_CONFIG_HOME": f"{tmp}/.config",
        "NUMBA_CACHE_DIR": f"{tmp}/.numba",
        "MAGICK_TEMPORARY_PATH": tmp,
        # jieba writes its dictionary cache to the temp dir.
        "TMPDIR": tmp,
    }
    # A session has one core by default, but sees the host's: OpenMP programs (tesseract,
    # xgboost, lightgbm) would start a thread per host core and spin against the cgroup's
    # CPU quota (tesseract: 1.8 s an A4 page with one thread, 11 s with two). A session
    # created with its own OMP_THREAD_LIMIT keeps it.
    env["OMP_THREAD_LIMIT"] = os.environ.get("OMP_THREAD_LIMIT", "1")
    policy_dir = RUNTIME_DIR / "imagemagick"
    if (policy_dir / "policy.xml").is_file():
        env["MAGICK_CONFIGURE_PATH"] = str(policy_dir)
    return env


def pinned(text: str | None = None) -> list:
    """(name, version) of every pinned library, in the file's order."""
    if text is None:
        try:
            text = REQUIREMENTS.read_text(encoding="utf-8")
        except OSError:
            return []
    out = []
    for line in text.splitlines():
        match = PIN_RE.match(line)
        if match:
            out.append((match.group(1), match.group(2)))
    return out


def pinned_names(fallback: list) -> list:
    """Names of the pinned libraries, or `fallback` when the file is not there."""
    names = [name for name, _ in pinned()]
    return names or list(fallback)


def apply(environ=os.environ, tmp: str = "/tmp") -> None:
    """Sets `kernel_env()` where /tmp is writable (inside a sandbox)."""
    if os.path.isdir(tmp) and os.access(tmp, os.W_OK):
        environ.update(kernel_env(tmp))
