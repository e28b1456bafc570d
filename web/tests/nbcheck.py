"""Check a notebook downloaded from the playground.

Usage: nbcheck.py NOTEBOOK CODES_JSON

Validates NOTEBOOK with nbformat, checks that its code cells are CODES_JSON
in order with execution counts, then re-runs a copy with nbclient (a local
ipykernel) and compares the text outputs of every cell that imports no
plotting library. Prints one JSON summary line; exits non-zero on a mismatch.
"""

import base64
import copy
import json
import sys

import nbformat
from nbclient import NotebookClient

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def text_outputs(cell):
    """The text a cell showed: each stream's text, then plain results and error names.

    Streams are compared per name: ipykernel buffers stdout and stderr apart and
    flushes them in its own order, while Pyxis keeps the order the code wrote.
    """
    streams = {}
    rest = []
    for o in cell.get("outputs", []):
        kind = o["output_type"]
        if kind == "stream":
            streams[o["name"]] = streams.get(o["name"], "") + o["text"]
        elif kind in ("execute_result", "display_data"):
            plain = o.get("data", {}).get("text/plain")
            if plain is not None:
                rest.append([kind, "".join(plain) if isinstance(plain, list) else plain])
        elif kind == "error":
            rest.append(["error", o["ename"]])
    return {"streams": streams, "rest": rest}


def main():
    path, codes = sys.argv[1], json.loads(sys.argv[2])
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4, nb.nbformat
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    sources = [c.source for c in code_cells]
    assert sources == codes, f"cells {sources!r} != {codes!r}"
    counts = [c.execution_count for c in code_cells]
    assert all(isinstance(n, int) for n in counts), counts
    assert counts == sorted(counts), counts
    images = 0
    errors = []
    for c in code_cells:
        for o in c.outputs:
            png = o.get("data", {}).get("image/png")
            if png is not None:
                assert base64.b64decode(png).startswith(PNG_MAGIC), "image/png is base64 PNG"
                images += 1
            if o.output_type == "error":
                assert o.traceback, "an error has its traceback"
                errors.append(o.ename)

    rerun = copy.deepcopy(nb)
    NotebookClient(rerun, timeout=120, kernel_name="python3", allow_errors=True).execute()
    equal = 0
    mismatches = []
    for before, after in zip(code_cells, [c for c in rerun.cells if c.cell_type == "code"]):
        if "matplotlib" in before.source:
            continue
        if text_outputs(before) == text_outputs(after):
            equal += 1
        else:
            mismatches.append(
                {"source": before.source, "pyxis": text_outputs(before), "local": text_outputs(after)}
            )
    summary = {
        "cells": len(code_cells),
        "rerun_equal": equal,
        "mismatches": mismatches,
        "images": images,
        "errors": errors,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
