"""The README's library list is the one `scripts/readme-pins` makes from the pins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pyxis_runtime import sysenv

ROOT = Path(__file__).resolve().parents[3]


def test_readme_lists_exactly_the_pins():
    script = ROOT / "scripts" / "readme-pins"
    done = subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_pins_parse_names_and_versions():
    text = (ROOT / "runtime/python/requirements.txt").read_text(encoding="utf-8")
    pins = dict(sysenv.pinned(text))
    assert pins["numpy"] and pins["plotly"] and pins["pymupdf"]
    assert all(not name.startswith("#") for name in pins)
    assert sysenv.pinned("# comment\nfoo==1.2  # why\n\nbar>=2\n") == [("foo", "1.2")]
