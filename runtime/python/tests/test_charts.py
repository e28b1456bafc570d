"""Charts as data: what `charts.figure_chart` reads back equals what was plotted; a kernel
adds it to a figure's display bundle; plotly and pyecharts give their rich results."""

from __future__ import annotations

import json

import matplotlib
import pytest

matplotlib.use("Agg")

# pylint: disable=wrong-import-position,wrong-import-order,ungrouped-imports
import matplotlib.pyplot as plt  # noqa: E402

from conftest import of_type, reply  # noqa: E402
from pyxis_runtime import charts  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_line_chart_points_equal_the_series():
    xs = [0, 1, 2, 3, 4]
    fig, ax = plt.subplots()
    ax.plot(xs, [x * x for x in xs], label="square")
    ax.plot(xs, [2.5 * x for x in xs], label="linear")
    ax.set_title("Growth 增长")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("value")
    ax.grid(True)
    chart = charts.figure_chart(fig)
    assert chart["type"] == "line"
    assert chart["title"] == "Growth 增长"
    assert chart["x_label"] == "time (s)" and chart["y_label"] == "value"
    assert [e["label"] for e in chart["elements"]] == ["square", "linear"]
    assert chart["elements"][0]["points"] == [[x, x * x] for x in xs]
    assert chart["elements"][1]["points"] == [[x, 2.5 * x] for x in xs]
    assert chart["x_scale"] == "linear"
    assert chart["x_ticks"] and len(chart["x_ticks"]) == len(chart["x_tick_labels"])
    assert all(0 <= t <= 4 for t in chart["x_ticks"])
    json.dumps(chart)  # JSON as it is


def test_bar_chart_values_equal_the_series():
    names, values = ["apple", "pear", "苹果"], [3, 7, 5]
    fig, ax = plt.subplots()
    ax.bar(names, values, label="sold")
    ax.set_title("Fruit")
    chart = charts.figure_chart(fig)
    assert chart["type"] == "bar"
    assert chart["x_scale"] == "categorical"
    assert chart["x_ticks"] == names
    got = [(e["label"], e["value"], e["group"]) for e in chart["elements"]]
    assert got == [(n, v, "sold") for n, v in zip(names, values)]


def test_grouped_bars_keep_each_group():
    import numpy as np  # pylint: disable=import-outside-toplevel

    x = np.arange(3)
    fig, ax = plt.subplots()
    ax.bar(x - 0.2, [1, 2, 3], width=0.4, label="2024")
    ax.bar(x + 0.2, [4, 5, 6], width=0.4, label="2025")
    ax.set_xticks(x, ["a", "b", "c"])
    chart = charts.figure_chart(fig)
    assert chart["type"] == "bar"
    by_group = {}
    for e in chart["elements"]:
        by_group.setdefault(e["group"], []).append(e["value"])
    assert by_group == {"2024": [1, 2, 3], "2025": [4, 5, 6]}


def test_horizontal_bars():
    fig, ax = plt.subplots()
    ax.barh(["x", "y"], [10, 20])
    chart = charts.figure_chart(fig)
    assert chart["type"] == "bar"
    assert [(e["label"], e["value"]) for e in chart["elements"]] == [("x", 10), ("y", 20)]


def test_scatter_points():
    fig, ax = plt.subplots()
    ax.scatter([1, 2, 3], [4.5, 5.5, 6.5], label="obs")
    chart = charts.figure_chart(fig)
    assert chart["type"] == "scatter"
    assert chart["elements"] == [{"label": "obs", "points": [[1, 4.5], [2, 5.5], [3, 6.5]]}]


def test_histogram_bins_and_counts():
    data = [1, 1, 2, 2, 2, 3, 4, 4]
    fig, ax = plt.subplots()
    ax.hist(data, bins=[1, 2, 3, 4, 5])
    chart = charts.figure_chart(fig)
    assert chart["type"] == "histogram"
    assert chart["elements"][0]["bins"] == [[1, 2, 2], [2, 3, 3], [3, 4, 1], [4, 5, 2]]


def test_pie_fractions():
    fig, ax = plt.subplots()
    ax.pie([1, 1, 2], labels=["a", "b", "c"])
    chart = charts.figure_chart(fig)
    assert chart["type"] == "pie"
    assert [(e["label"], round(e["fraction"], 4)) for e in chart["elements"]] == [
        ("a", 0.25),
        ("b", 0.25),
        ("c", 0.5),
    ]


@pytest.mark.parametrize("patch_artist", [False, True])
def test_box_quartiles(patch_artist):
    data = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 20, 30, 40, 50, 60, 70, 80, 200]]
    fig, ax = plt.subplots()
    ax.boxplot(data, patch_artist=patch_artist)
    ax.set_xticks([1, 2], ["small", "large"])
    chart = charts.figure_chart(fig)
    assert chart["type"] == "box"
    first, second = chart["elements"]
    assert first["label"] == "small"
    assert (first["min"], first["first_quartile"], first["median"]) == (1, 3, 5)
    assert (first["third_quartile"], first["max"], first["outliers"]) == (7, 9, [])
    assert second["median"] == 50 and second["outliers"] == [200]
    assert second["max"] == 80


def test_dates_become_iso_strings():
    import datetime  # pylint: disable=import-outside-toplevel

    days = [datetime.date(2024, 1, d) for d in (1, 2, 3)]
    fig, ax = plt.subplots()
    ax.plot(days, [1, 2, 3])
    chart = charts.figure_chart(fig)
    assert chart["x_scale"] == "datetime"
    assert chart["elements"][0]["points"][0] == ["2024-01-01", 1]
    assert all(isinstance(t, str) for t in chart["x_ticks"])


def test_several_axes_are_a_composite():
    fig, (left, right) = plt.subplots(1, 2)
    left.plot([1, 2], [3, 4])
    right.bar(["a"], [1])
    fig.suptitle("Two")
    chart = charts.figure_chart(fig)
    assert chart["type"] == "composite" and chart["title"] == "Two"
    assert [c["type"] for c in chart["elements"]] == ["line", "bar"]


def test_blank_figure_has_no_chart():
    fig = plt.figure()
    assert charts.figure_chart(fig) is None
    bundle: dict = {}
    charts.add_chart(bundle, fig)
    assert not bundle


def test_a_huge_series_is_bounded():
    fig, ax = plt.subplots()
    ax.plot(range(100_000), range(100_000))
    chart = charts.figure_chart(fig)
    assert len(chart["elements"][0]["points"]) == charts.MAX_POINTS


def test_nan_is_null():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1, float("nan"), 3])
    chart = charts.figure_chart(fig)
    assert chart["elements"][0]["points"][1] == [2, None]
    json.dumps(chart, allow_nan=False)


# --------------------------------------------------------------------------- in a kernel


def test_kernel_figure_carries_chart_data(kernel):
    code = (
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\n"
        "ax.bar(['q1', 'q2'], [10, 20], label='revenue')\n"
        "ax.set_title('Sales')\n"
        "plt.show()\n"
    )
    events = kernel.run(code)
    assert reply(events)["status"] == "ok"
    (shown,) = of_type(events, "display_data")
    assert "image/png" in shown["data"]
    chart = shown["data"][charts.MIME]
    assert chart["type"] == "bar" and chart["title"] == "Sales"
    assert [(e["label"], e["value"]) for e in chart["elements"]] == [("q1", 10), ("q2", 20)]


def test_kernel_plotly_last_expression_and_show(kernel):
    code = (
        "import plotly.graph_objects as go\n"
        "fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[4, 5, 6]))\n"
        "fig"
    )
    for cell in (code, "fig.show()"):
        events = kernel.run(cell)
        assert reply(events)["status"] == "ok", events
        # Plotly displays itself (_ipython_display_), as in Jupyter: display_data.
        (shown,) = of_type(events, "display_data") + of_type(events, "execute_result")
        spec = shown["data"]["application/vnd.plotly.v1+json"]
        assert spec["data"][0]["type"] == "scatter"
        assert list(spec["data"][0]["y"]) == [4, 5, 6]
        html = shown["data"]["text/html"]
        # plotly.js is loaded from its CDN, not embedded (4 MB) in every output.
        assert "plotly" in html and len(html) < 64 * 1024


def test_kernel_pyecharts_render_notebook_is_html(kernel):
    code = (
        "from pyecharts.charts import Bar\n"
        "Bar().add_xaxis(['一', '二']).add_yaxis('s', [1, 2]).render_notebook()"
    )
    events = kernel.run(code)
    assert reply(events)["status"] == "ok"
    (result,) = of_type(events, "execute_result")
    html = result["data"]["text/html"]
    assert "echarts" in html and ('"一"' in html or '"\\u4e00"' in html)


def test_seaborn_charts():
    # pylint: disable=import-outside-toplevel
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame({"x": [1, 2, 3, 1, 2, 3], "y": [1, 2, 3, 2, 3, 4]})
    fig, ax = plt.subplots()
    sns.lineplot(data=frame, x="x", y="y", ax=ax)  # mean line and its confidence band
    chart = charts.figure_chart(fig)
    assert chart["type"] == "line"
    assert chart["elements"][0]["points"] == [[1, 1.5], [2, 2.5], [3, 3.5]]
    fig, ax = plt.subplots()
    sns.histplot([1, 1, 2, 3, 3, 3], bins=3, ax=ax)
    assert charts.figure_chart(fig)["type"] == "histogram"
    fig, ax = plt.subplots()
    sns.barplot(x=["a", "b"], y=[3, 4], ax=ax)
    chart = charts.figure_chart(fig)
    assert chart["type"] == "bar"
    assert [(e["label"], e["value"]) for e in chart["elements"]] == [("a", 3), ("b", 4)]
