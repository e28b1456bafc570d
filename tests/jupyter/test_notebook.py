"""One notebook run two ways: through `jupyter server --gateway-url=<pyxis>`, and by nbclient on
a local ipykernel (same Python, same libraries: the devtools venv reads the Pyxis runtime's
site-packages). The outputs of the deterministic cells must be equal.

How the Pyxis run goes: a session is created on the jupyter server (`POST /api/sessions`, as
JupyterLab does), its kernel's WebSocket is opened through the jupyter server, and each code
cell is sent as an execute_request; every iopub message parented to it is fed to nbclient's own
`NotebookClient.process_message`, which builds the cell's outputs exactly as in the reference run
(stream, display_data, execute_result, error, clear_output, update_display_data).

What is compared, cell by cell (see `normalise`):
  - the sequence of outputs, in order, with their output_type;
  - streams: name and text (consecutive chunks of one stream joined, as chunk boundaries are the
    kernel's choice);
  - execute_result / display_data: the set of MIME types (less Pyxis's own
    application/vnd.pyxis.* additions, which frontends skip), and the exact text/plain, text/html,
    text/markdown and application/json; image/png only for presence and a valid PNG signature
    (not bytes: renderers may differ in a pixel); execute_result's execution_count;
  - error: ename and evalue (not the traceback, whose frames name different files);
  - the cell's execution_count.
Cells tagged `nondeterministic` are compared on output types and MIME sets only.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from jupyter_server.gateway.gateway_client import GatewayClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionComplete
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from jclient import KernelSocket

PYXIS = "application/vnd.pyxis."

CELLS = [
    ("markdown", "# A notebook for Pyxis\nState, a plot, a table, an error, displays."),
    (
        "code",
        "%matplotlib inline\nimport numpy as np\nimport pandas as pd\n"
        "import matplotlib.pyplot as plt\nfrom IPython.display import HTML, Markdown, display",
    ),
    ("code", 'x = 21\ny = x * 2\nprint("x is", x)'),
    ("code", "y"),
    ("code", 'print("before")\ndisplay(pd.DataFrame({"a": [1, 2], "b": [3, 4]}))\nprint("after")'),
    ("code", 'df = pd.DataFrame({"n": range(5), "square": [i * i for i in range(5)]})\ndf'),
    (
        "code",
        'fig, ax = plt.subplots()\nax.plot(df["n"], df["square"])\nax.set_title("squares")\n'
        "plt.show()",
    ),
    ("code:raises-exception", "1 / 0"),
    ("code", 'print(x, y, int(df["square"].sum()))'),
    (
        "code",
        'display(Markdown("**bold** text"))\ndisplay(HTML("<b>hi</b>"))\n'
        'display(3.5, {"k": [1, 2]})',
    ),
    (
        "code",
        'import sys\nprint("to stdout", flush=True)\n'
        'print("to stderr", file=sys.stderr, flush=True)',
    ),
    ("code", "def square(n):\n    return n ** 2\n\n[square(i) for i in range(4)]"),
    ("code", "df.describe()"),
    ("code:nondeterministic", "np.random.rand(3)"),
    (
        "code",
        'fig2, ax2 = plt.subplots()\nax2.bar(["a", "b"], [3, 5])\nplt.close(fig2)\nfig2',
    ),
    ("code", "display(fig2)"),
    ("code", 'h = display("one", display_id=True)\nh.update("two")'),
    (
        "code",
        'from IPython.display import clear_output\nprint("gone")\n'
        'clear_output(wait=True)\nprint("kept")',
    ),
    ("code", "x + 1;"),
    ("code", "for i in range(3):\n    print(i)\ndf.shape"),
    ("code", "import json\nprint(json.dumps({'b': 1, 'a': [1, 2]}, sort_keys=True))"),
]


def build_notebook() -> nbformat.NotebookNode:
    cells = []
    for kind, source in CELLS:
        if kind == "markdown":
            cells.append(new_markdown_cell(source))
            continue
        tags = kind.split(":")[1:]
        cells.append(new_code_cell(source, metadata={"tags": tags} if tags else {}))
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    nbformat.validate(nb)
    return nb


def _png_ok(b64: str) -> bool:
    return base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")


def _rich(o: nbformat.NotebookNode, loose: bool) -> dict:
    # Pyxis's own vendor types (application/vnd.pyxis.*, e.g. a figure's chart data) ride
    # along; frontends without a renderer for them skip them, so they are not compared.
    item = {"type": o.output_type, "mimes": sorted(m for m in o.data if not m.startswith(PYXIS))}
    if loose:
        return item
    for mime in ("text/plain", "text/html", "text/markdown", "application/json"):
        if mime in o.data:
            item[mime] = o.data[mime]
    if "image/png" in o.data:
        item["image/png"] = "valid PNG" if _png_ok(o.data["image/png"]) else "bad"
    if o.output_type == "execute_result":
        item["execution_count"] = o.execution_count
    return item


def normalise(cell: nbformat.NotebookNode) -> dict:
    loose = "nondeterministic" in cell.metadata.get("tags", [])
    outs: list = []
    for o in cell.outputs:
        if o.output_type == "stream":
            if outs and outs[-1]["type"] == "stream" and outs[-1]["name"] == o.name:
                outs[-1]["text"] += o.text
            else:
                outs.append({"type": "stream", "name": o.name, "text": o.text})
        elif o.output_type in ("execute_result", "display_data"):
            outs.append(_rich(o, loose))
        elif o.output_type == "error":
            outs.append({"type": "error", "ename": o.ename, "evalue": o.evalue})
        else:
            outs.append({"type": o.output_type})
    if loose:
        for item in outs:
            item.pop("text", None)
    return {"execution_count": cell.execution_count, "outputs": outs}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The notebook run by nbclient on a local ipykernel (the pytest interpreter)."""
    tmp = tmp_path_factory.mktemp("reference")
    data_dir = tmp / "jupyter-data"
    spec_dir = data_dir / "kernels" / "pyxis-reference"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "reference ipykernel",
                "language": "python",
            }
        )
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_DATA_DIR", str(data_dir))
    mp.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "runtime"))
    # A lasting matplotlib cache (its font list takes seconds to build).
    mp.setenv("MPLCONFIGDIR", str(Path(sys.prefix) / "mplconfig"))
    mp.delenv("MPLBACKEND", raising=False)
    try:
        nb = build_notebook()
        NotebookClient(
            nb, kernel_name="pyxis-reference", timeout=120, resources={"metadata": {"path": tmp}}
        ).execute()
    finally:
        mp.undo()
    return nb


def run_through_gateway(jupyter, pyxis) -> tuple[nbformat.NotebookNode, dict]:
    """The notebook run through the jupyter server (and so on Pyxis), cell by cell."""
    nb = build_notebook()
    r = jupyter.request(
        "POST",
        "/api/sessions",
        json={
            "path": "pyxis-test.ipynb",
            "name": "pyxis-test.ipynb",
            "type": "notebook",
            "kernel": {"name": "python3"},
        },
    )
    assert r.status_code == 201, f"POST /api/sessions via jupyter: {r.status_code} {r.text}"
    session = r.json()
    kid = session["kernel"]["id"]
    assert pyxis.session(kid)["state"] in ("idle", "busy")  # the kernel is a Pyxis session
    sock = KernelSocket(
        f"{jupyter.ws_base}/api/kernels/{kid}/channels?session_id={secrets.token_hex(16)}",
        header=[f"Authorization: token {jupyter.token}"],
    )
    processor = NotebookClient(nb, record_timing=False)
    try:
        sock.wait_ready()
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue

            def feed(msg, cell=cell, index=index):
                if msg["channel"] == "iopub":
                    try:
                        processor.process_message(msg, cell, index)
                    except CellExecutionComplete:
                        pass

            # What nbclient's own execute_cell sets before each cell.
            processor.clear_before_next_output = False
            mid = sock.start_execute(cell.source)
            ex = sock.collect(mid, timeout=120, on_message=feed)
            if ex.status == "error":
                assert "raises-exception" in cell.metadata.get(
                    "tags", []
                ), f"cell {index} failed on Pyxis: {ex.reply['content']}\n{cell.source}"
            cell.execution_count = ex.reply["content"].get("execution_count")
            assert sock.protocol_error is None, sock.protocol_error
    finally:
        sock.close()
        jupyter.request("DELETE", f"/api/sessions/{session['id']}")
    nbformat.validate(nb)
    return nb, session


def assert_same_outputs(reference: nbformat.NotebookNode, ours: nbformat.NotebookNode) -> None:
    code = [i for i, c in enumerate(reference.cells) if c.cell_type == "code"]
    assert len(code) >= 10
    diffs = []
    for i in code:
        want, got = normalise(reference.cells[i]), normalise(ours.cells[i])
        if want != got:
            diffs.append(
                f"cell {i}:\n{reference.cells[i].source}\n"
                f"  ipykernel: {json.dumps(want)[:1500]}\n"
                f"  pyxis:     {json.dumps(got)[:1500]}"
            )
    assert not diffs, f"{len(diffs)} of {len(code)} code cells differ:\n" + "\n".join(diffs)


def test_notebook_matches_local_ipykernel(jupyter, pyxis, reference):
    ours, session = run_through_gateway(jupyter, pyxis)
    assert session["kernel"]["name"] == "python3"
    assert_same_outputs(reference, ours)


def test_nbclient_through_a_jupyter_server(relay, reference, monkeypatch):
    """nbclient itself (as papermill runs it) executes the notebook on Pyxis: its kernel manager
    is jupyter_server's GatewayKernelManager pointed at a jupyter server in front of Pyxis."""
    monkeypatch.setenv("JUPYTER_GATEWAY_URL", relay.base)
    GatewayClient.clear_instance()
    try:
        nb = build_notebook()
        NotebookClient(
            nb,
            kernel_name="python3",
            timeout=120,
            kernel_manager_class="jupyter_server.gateway.managers.GatewayKernelManager",
        ).execute()
    finally:
        GatewayClient.clear_instance()
    nbformat.validate(nb)
    assert_same_outputs(reference, nb)


def test_reference_notebook_is_meaningful(reference):
    """The comparison above compares something: the reference has the outputs we expect."""
    kinds = [o.output_type for c in reference.cells if c.cell_type == "code" for o in c.outputs]
    assert "error" in kinds and "execute_result" in kinds and "display_data" in kinds
    pngs = [
        o
        for c in reference.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(pngs) == 3, len(pngs)
    ordered = normalise(reference.cells[4])["outputs"]
    assert [o["type"] for o in ordered] == ["stream", "display_data", "stream"], ordered


def test_papermill_through_a_jupyter_server(relay, pyxis, tmp_path, monkeypatch):
    """papermill (nbclient underneath) with the same kernel manager: parameters are injected and
    the notebook runs on Pyxis (its runtime's module is loaded in the kernel)."""
    source = tmp_path / "in.ipynb"
    nb = new_notebook(
        cells=[
            new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
            new_code_cell("import sys\nprint(n * 2, 'pyxis_runtime' in sys.modules)"),
            new_code_cell("import pandas as pd\npd.DataFrame({'n': [n]})"),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, source)
    before = {s["id"] for s in pyxis.get("/v1/sessions").json()["sessions"]}
    monkeypatch.setenv("JUPYTER_GATEWAY_URL", relay.base)
    GatewayClient.clear_instance()
    try:
        out = papermill.execute_notebook(
            str(source),
            str(tmp_path / "out.ipynb"),
            parameters={"n": 21},
            kernel_name="python3",
            kernel_manager_class="jupyter_server.gateway.managers.GatewayKernelManager",
            progress_bar=False,
        )
    finally:
        GatewayClient.clear_instance()
    injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "n = 21" in injected[0].source
    printed = [o for c in out.cells for o in c.get("outputs", []) if o.output_type == "stream"]
    assert "".join(o.text for o in printed) == "42 True\n", printed
    (table,) = [o for o in out.cells[-1].outputs if o.output_type == "execute_result"]
    assert "<table" in table.data["text/html"]
    # The kernel was a Pyxis session, and papermill's shutdown deleted it.
    after = {s["id"] for s in pyxis.get("/v1/sessions").json()["sessions"]}
    assert after <= before, after - before
