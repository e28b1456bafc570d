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


# Where a session's own packages go (`pip install --prefix`; `PACKAGES_PREFIX` of the egress
# crate): inside the workspace, so they count against its quota, survive a kernel restart and
# die with the session. The runtime's site-packages stay read-only.
PACKAGES_PREFIX = "/workspace/.pyxis/packages"


def site_packages(prefix: str = PACKAGES_PREFIX) -> str:
    """The `site-packages` directory under `prefix` for this Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"{prefix}/lib/python{version}/site-packages"


class PackagesFinder:
    """The path entry finder of the session's `site-packages`, which need not exist yet.

    The import system's own hook refuses a directory that does not exist and remembers that
    (a `None` in `sys.path_importer_cache`), so a package installed later in the same kernel
    would not be found. This one looks again until the directory is there, then hands every
    lookup to a regular `FileFinder` of it. The directory is not made in advance: an empty
    workspace lets the server skip its file scan."""

    def __init__(self, path: str, file_hook) -> None:
        self.path = path
        self.file_hook = file_hook
        self.finder = None

    def find_spec(self, fullname, target=None):
        """The module's spec from the directory, once it exists."""
        if self.finder is None:
            if not os.path.isdir(self.path):
                return None
            self.finder = self.file_hook(self.path)
        return self.finder.find_spec(fullname, target)

    def invalidate_caches(self) -> None:
        """Forgets the directory's listing."""
        if self.finder is not None:
            self.finder.invalidate_caches()


def add_packages(environ=os.environ, path=None, hooks=None, prefix: str = PACKAGES_PREFIX):
    """Puts the session's packages ahead of the runtime's: on `sys.path` (found even when
    installed after the kernel started), on `PYTHONPATH` for subprocesses, and their scripts
    on `PATH`. Returns the `site-packages` directory."""
    path = sys.path if path is None else path
    hooks = sys.path_hooks if hooks is None else hooks
    site = site_packages(prefix)
    file_hooks = [h for h in hooks if "FileFinder" in getattr(h, "__qualname__", "")]
    if file_hooks and not any(getattr(h, "pyxis_packages", False) for h in hooks):
        file_hook = file_hooks[0]

        def packages_hook(entry):
            if entry != site:
                raise ImportError("not the session's site-packages")
            return PackagesFinder(entry, file_hook)

        packages_hook.pyxis_packages = True
        hooks.insert(0, packages_hook)
    if site in path:
        path.remove(site)
    path.insert(0, site)
    sys.path_importer_cache.pop(site, None)
    tail = environ.get("PYTHONPATH", "")
    if site not in tail.split(os.pathsep):
        environ["PYTHONPATH"] = site + (os.pathsep + tail if tail else "")
    bin_dir = f"{prefix}/bin"
    tail = environ.get("PATH", "")
    if bin_dir not in tail.split(os.pathsep):
        environ["PATH"] = bin_dir + (os.pathsep + tail if tail else "")
    return site
