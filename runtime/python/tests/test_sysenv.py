"""The kernel environment for the system tools, and the parsing of the pins."""

from __future__ import annotations

from pathlib import Path

from pyxis_runtime import sysenv

ROOT = Path(__file__).resolve().parents[3]


def test_writable_state_goes_to_the_sandbox_tmp(tmp_path):
    env = sysenv.kernel_env(str(tmp_path))
    for key in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "NUMBA_CACHE_DIR", "MAGICK_TEMPORARY_PATH"):
        assert env[key].startswith(str(tmp_path)), key


def test_openmp_is_one_thread_unless_asked(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    assert sysenv.kernel_env(str(tmp_path))["OMP_THREAD_LIMIT"] == "1"
    monkeypatch.setenv("OMP_THREAD_LIMIT", "4")
    assert sysenv.kernel_env(str(tmp_path))["OMP_THREAD_LIMIT"] == "4"


def test_apply_needs_a_writable_tmp(tmp_path):
    environ: dict = {}
    sysenv.apply(environ, str(tmp_path / "missing"))
    assert not environ
    sysenv.apply(environ, str(tmp_path))
    assert environ["XDG_CACHE_HOME"] == f"{tmp_path}/.cache"


def test_pins_parse_names_and_versions():
    text = (ROOT / "runtime/python/requirements.txt").read_text(encoding="utf-8")
    pins = dict(sysenv.pinned(text))
    assert pins["numpy"] and pins["plotly"] and pins["pymupdf"]
    assert all(not name.startswith("#") for name in pins)
    assert sysenv.pinned("# comment\nfoo==1.2  # why\n\nbar>=2\n") == [("foo", "1.2")]


def test_packages_installed_after_start_are_found(tmp_path, monkeypatch):
    """The session's site-packages goes first on sys.path, PYTHONPATH and PATH; a module
    written there after the kernel started (by pip or uv) imports without a restart."""
    import importlib  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    prefix = str(tmp_path / "packages")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "path_hooks", list(sys.path_hooks))
    monkeypatch.setenv("PYTHONPATH", "/runtime/lib")
    monkeypatch.setenv("PATH", "/usr/bin")
    site = sysenv.add_packages(prefix=prefix)
    assert sys.path[0] == site
    assert site.startswith(prefix) and site.endswith("site-packages")
    assert sysenv.os.environ["PYTHONPATH"] == f"{site}:/runtime/lib"
    assert sysenv.os.environ["PATH"] == f"{prefix}/bin:/usr/bin"
    # Twice is once.
    sysenv.add_packages(prefix=prefix)
    assert sys.path.count(site) == 1
    assert sysenv.os.environ["PYTHONPATH"] == f"{site}:/runtime/lib"
    name = "pyxis_late_module_for_test"
    try:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("imported before it was installed")
        Path(site).mkdir(parents=True)
        (Path(site) / f"{name}.py").write_text("VALUE = 7\n", encoding="utf-8")
        assert importlib.import_module(name).VALUE == 7
    finally:
        sys.modules.pop(name, None)
        sys.path_importer_cache.pop(site, None)
