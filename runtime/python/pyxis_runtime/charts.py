"""A matplotlib figure as data: `application/vnd.pyxis.chart+json`.

`figure_chart(fig)` reads what a figure shows — its kind of chart, title, axis labels, ticks
and each series' points — from the artists matplotlib keeps, so an agent can read the chart it
drew without looking at pixels. The idea follows E2B's chart extraction; the code is ours.

The shape (every key always present for its type; values are JSON scalars):

    {"type": "line" | "scatter" | "bar" | "histogram" | "pie" | "box" | "unknown",
     "title": str | None,
     # 2-D charts (all but pie):
     "x_label", "y_label": str | None,
     "x_scale", "y_scale": "linear" | "log" | "categorical" | "datetime" | ...,
     "x_ticks", "y_ticks": [number | str], "x_tick_labels", "y_tick_labels": [str],
     "elements": [...]}

Elements per type: line/scatter `{"label", "points": [[x, y], ...]}`; bar
`{"label", "group", "value"}` (label: the category, group: the series); histogram
`{"label", "bins": [[left, right, count], ...]}`; pie `{"label", "angle", "fraction",
"radius"}`; box `{"label", "min", "first_quartile", "median", "third_quartile", "max",
"outliers"}`. A figure with several axes is `{"type": "composite", "title": suptitle,
"elements": [chart, ...]}`. A blank figure has no chart (None).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

MIME = "application/vnd.pyxis.chart+json"
# Bounds on what one chart carries, so a plot of a million points stays a small message.
MAX_POINTS = 10_000
MAX_ELEMENTS = 200
MAX_AXES = 16
# Relative tolerance when comparing bar edges (floats from the transform stack).
EDGE_TOLERANCE = 1e-9


def register(shell) -> None:
    """Makes every matplotlib Figure the shell displays carry its chart under `MIME` (an
    IPython formatter of its own, beside the image/png one), and sets up plotly."""
    # pylint: disable=import-outside-toplevel
    from IPython.core.formatters import BaseFormatter
    from matplotlib.figure import Figure
    from traitlets import ObjectName, Unicode

    class ChartFormatter(BaseFormatter):  # pylint: disable=too-few-public-methods
        """`application/vnd.pyxis.chart+json` of the types registered with it."""

        format_type = Unicode(MIME)
        _return_type = dict
        print_method = ObjectName("_repr_pyxis_chart_")

    formatters = shell.display_formatter.formatters
    if MIME not in formatters:
        formatters[MIME] = ChartFormatter(parent=shell.display_formatter)
    formatters[MIME].for_type(Figure, safe_figure_chart)
    setup_plotly()


def safe_figure_chart(fig) -> dict | None:
    """`figure_chart`, or None for a figure we cannot read (the PNG is what matters, the
    data is a bonus)."""
    try:
        return figure_chart(fig)
    except Exception:  # pylint: disable=broad-except
        return None


def add_chart(bundle: dict, fig) -> None:
    """Adds the figure's chart to a display bundle; a figure we cannot read adds nothing
    (the PNG is what matters, the data is a bonus)."""
    chart = safe_figure_chart(fig)
    if chart is not None:
        bundle[MIME] = chart


def setup_plotly() -> None:
    """Plotly figures render as their JSON (`application/vnd.plotly.v1+json`) and an HTML
    snippet that loads plotly.js from its CDN, for `fig.show()` and as a cell's last value.

    Plotly's own fallback ("plotly_mimetype+notebook") would embed the 4 MB plotly.js in the
    first figure's output; the HTML renderer here is the "connected" one without its global
    init, so each figure's HTML stands alone. Cheap to import (plotly.io loads its figure
    classes lazily)."""
    try:
        # pylint: disable=import-outside-toplevel
        import plotly.io as pio
        from plotly.io._base_renderers import HtmlRenderer
    except ImportError:
        return
    pio.renderers["pyxis"] = HtmlRenderer(connected=True, full_html=False)
    pio.renderers.default = "plotly_mimetype+pyxis"


def figure_chart(fig) -> dict | None:
    """The chart a figure shows, or None (blank figure, or nothing we recognise)."""
    axes = [ax for ax in fig.get_axes() if ax.has_data()][:MAX_AXES]
    if not axes:
        return None
    if len(axes) == 1:
        return axes_chart(axes[0])
    return {
        "type": "composite",
        "title": fig.get_suptitle() or None,
        "elements": [axes_chart(ax) for ax in axes],
    }


def axes_chart(ax) -> dict:
    """The chart of one Axes."""
    kind = _kind(ax)
    chart: dict[str, Any] = {"type": kind, "title": ax.get_title() or None}
    if kind == "pie":
        chart["elements"] = _pie(ax)
        return chart
    chart.update(_axes_info(ax))
    if kind == "line":
        chart["elements"] = _lines(ax)
    elif kind == "scatter":
        chart["elements"] = _scatter(ax)
    elif kind == "bar":
        chart["elements"] = _bars(ax)
    elif kind == "histogram":
        chart["elements"] = _histogram(ax)
    elif kind == "box":
        chart["elements"] = _boxes(ax)
    else:
        chart["elements"] = []
    return chart


# --------------------------------------------------------------------------- detection


def _kind(ax) -> str:  # pylint: disable=too-many-return-statements
    # pylint: disable=import-outside-toplevel
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.lines import Line2D
    from matplotlib.patches import PathPatch, Rectangle, Wedge

    lines = [line for line in ax.get_lines() if not _is_rule(line)]
    patches = list(ax.patches)
    collections = list(ax.collections)
    if patches and all(isinstance(p, Wedge) for p in patches) and not lines:
        return "pie"
    if _box_rectangles(ax):
        return "box"
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    if bars and all(isinstance(p, Rectangle) for p in patches) and not collections:
        if all(_is_histogram(c) for c in bars):
            return "histogram"
        return "bar"
    if collections and all(isinstance(c, PathCollection) for c in collections):
        if not patches:
            return "scatter"
    if lines and not patches and not any(isinstance(c, PathCollection) for c in collections):
        return "line"  # bands (fill_between, seaborn's confidence intervals) stay a line chart
    if any(isinstance(p, PathPatch) for p in patches) and all(
        isinstance(a, (Line2D, PathPatch)) for a in lines + patches
    ):
        return "box"
    return "unknown"


def _is_rule(line) -> bool:
    """A horizontal or vertical two-point line (axhline, grid-like rules), not a series."""
    x, y = line.get_xydata().T if len(line.get_xydata()) else ([], [])
    return len(x) == 2 and (x[0] == x[1] or y[0] == y[1]) and line.get_label().startswith("_")


def _is_histogram(container) -> bool:
    """Bars of one series that touch edge to edge (what `hist` draws)."""
    rects = list(container)
    if len(rects) < 2:
        return False
    vertical = getattr(container, "orientation", "vertical") != "horizontal"
    edges = [
        (
            (r.get_x(), r.get_x() + r.get_width())
            if vertical
            else (r.get_y(), r.get_y() + r.get_height())
        )
        for r in rects
    ]
    for (_, right), (left, _) in zip(edges, edges[1:]):
        if not math.isclose(right, left, rel_tol=EDGE_TOLERANCE, abs_tol=EDGE_TOLERANCE):
            return False
    return True


# --------------------------------------------------------------------------- axes


def _axes_info(ax) -> dict:
    info: dict[str, Any] = {"x_label": ax.get_xlabel() or None, "y_label": ax.get_ylabel() or None}
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        ticks = [float(t) for t in axis.get_majorticklocs()]
        lo, hi = sorted(axis.get_view_interval())
        ticks = [t for t in ticks if lo - 1e-12 * abs(hi - lo) <= t <= hi + 1e-12 * abs(hi - lo)]
        labels = _tick_labels(axis, ticks)
        scale = _scale(axis)
        info[f"{name}_scale"] = scale
        if scale == "datetime":
            info[f"{name}_ticks"] = [_num2iso(t) for t in ticks]
        elif scale == "categorical":
            info[f"{name}_ticks"] = labels
        else:
            info[f"{name}_ticks"] = [_num(t) for t in ticks]
        info[f"{name}_tick_labels"] = labels
    return info


def _tick_labels(axis, ticks: list) -> list:
    formatter = axis.get_major_formatter()
    try:
        labels = formatter.format_ticks(ticks)
    except Exception:  # pylint: disable=broad-except
        labels = [t.get_text() for t in axis.get_majorticklabels()]
    return [str(label).replace("\u2212", "-") for label in labels]


def _scale(axis) -> str:
    # pylint: disable=import-outside-toplevel
    from matplotlib import category, dates

    converter = axis.get_converter() if hasattr(axis, "get_converter") else axis.converter
    if isinstance(converter, category.StrCategoryConverter):
        return "categorical"
    if isinstance(converter, (dates.DateConverter, dates.ConciseDateConverter)) or (
        type(converter).__name__ == "_SwitchableDateConverter"
    ):
        return "datetime"
    return axis.get_scale()


def _category_names(axis) -> dict:
    """Category axis: position → name."""
    units = axis.get_units()
    mapping = getattr(units, "_mapping", None)
    if not mapping:
        return {}
    return {float(v): str(k) for k, v in mapping.items()}


# --------------------------------------------------------------------------- elements


def _lines(ax) -> list:
    out = []
    for i, line in enumerate(ax.get_lines()):
        if _is_rule(line):
            continue
        xs, ys = line.get_xdata(orig=True), line.get_ydata(orig=True)
        out.append({"label": _series_label(line.get_label(), "Line", i), "points": _points(xs, ys)})
    return out[:MAX_ELEMENTS]


def _scatter(ax) -> list:
    xnames, ynames = _category_names(ax.xaxis), _category_names(ax.yaxis)
    xdate, ydate = _scale(ax.xaxis) == "datetime", _scale(ax.yaxis) == "datetime"
    out = []
    for i, coll in enumerate(ax.collections):
        offsets = coll.get_offsets()
        points = []
        for x, y in list(offsets)[:MAX_POINTS]:
            x, y = float(x), float(y)
            px = xnames.get(x, _num2iso(x) if xdate else _num(x))
            py = ynames.get(y, _num2iso(y) if ydate else _num(y))
            points.append([px, py])
        out.append({"label": _series_label(coll.get_label(), "Series", i), "points": points})
    return out[:MAX_ELEMENTS]


def _bars(ax) -> list:
    # pylint: disable=import-outside-toplevel
    from matplotlib.container import BarContainer

    out = []
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    for i, container in enumerate(containers):
        group = _series_label(container.get_label(), "Group", i)
        horizontal = getattr(container, "orientation", "vertical") == "horizontal"
        axis = ax.yaxis if horizontal else ax.xaxis
        names = _category_names(axis)
        ticks = [float(t) for t in axis.get_majorticklocs()]
        labels = _tick_labels(axis, ticks)
        for rect in list(container)[:MAX_POINTS]:
            if horizontal:
                center, value = rect.get_y() + rect.get_height() / 2, rect.get_width()
            else:
                center, value = rect.get_x() + rect.get_width() / 2, rect.get_height()
            out.append(
                {
                    "label": _bar_label(center, names, ticks, labels),
                    "group": group,
                    "value": _num(value),
                }
            )
    return out[:MAX_POINTS]


def _bar_label(center: float, names: dict, ticks: list, labels: list) -> str:
    if names:
        nearest = min(names, key=lambda pos: abs(pos - center))
        return names[nearest]
    for tick, label in zip(ticks, labels):
        if math.isclose(tick, center, rel_tol=1e-6, abs_tol=1e-9):
            return label
    return _fmt(center)


def _histogram(ax) -> list:
    # pylint: disable=import-outside-toplevel
    from matplotlib.container import BarContainer

    out = []
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    for i, container in enumerate(containers):
        horizontal = getattr(container, "orientation", "vertical") == "horizontal"
        bins = []
        for rect in list(container)[:MAX_POINTS]:
            if horizontal:
                left, right, count = (
                    rect.get_y(),
                    rect.get_y() + rect.get_height(),
                    rect.get_width(),
                )
            else:
                left, right, count = (
                    rect.get_x(),
                    rect.get_x() + rect.get_width(),
                    rect.get_height(),
                )
            bins.append([_num(left), _num(right), _num(count)])
        out.append({"label": _series_label(container.get_label(), "Series", i), "bins": bins})
    return out[:MAX_ELEMENTS]


def _pie(ax) -> list:
    wedges = list(ax.patches)[:MAX_ELEMENTS]
    out = []
    for wedge in wedges:
        angle = abs(float(wedge.theta2) - float(wedge.theta1))
        out.append(
            {
                "label": wedge.get_label(),
                "angle": round(angle, 6),
                "fraction": round(angle / 360.0, 6),
                "radius": _num(wedge.r),
            }
        )
    return out


def _box_rectangles(ax) -> list:
    """Boxes of a boxplot: (artist, x0, x1, y0, y1), from PathPatch boxes (patch_artist=True)
    or from the closed five-point lines `bxp` draws otherwise."""
    # pylint: disable=import-outside-toplevel
    from matplotlib.patches import PathPatch

    boxes = []
    for patch in ax.patches:
        if isinstance(patch, PathPatch):
            v = patch.get_path().vertices
            boxes.append((patch, v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max()))
    for line in ax.get_lines():
        xy = line.get_xydata()
        if len(xy) == 5 and (xy[0] == xy[4]).all():
            xs, ys = set(xy[:, 0]), set(xy[:, 1])
            if len(xs) == 2 and len(ys) == 2:
                boxes.append((line, min(xs), max(xs), min(ys), max(ys)))
    return boxes


def _boxes(ax) -> list:  # pylint: disable=too-many-locals
    boxes = _box_rectangles(ax)
    if not boxes:
        return []
    # Vertical boxplots (the default) have boxes side by side along x.
    widths = {round(b[2] - b[1], 9) for b in boxes}
    heights = {round(b[4] - b[3], 9) for b in boxes}
    vertical = len(widths) <= len(heights)
    axis = ax.xaxis if vertical else ax.yaxis
    ticks = [float(t) for t in axis.get_majorticklocs()]
    labels = _tick_labels(axis, ticks)
    box_artists = {id(b[0]) for b in boxes}
    lines, fliers = [], []
    for line in ax.get_lines():
        if id(line) in box_artists:
            continue
        marker_only = line.get_linestyle() in ("None", "", " ") and line.get_marker() not in (
            None,
            "None",
            "",
        )
        (fliers if marker_only else lines).append(line.get_xydata())
    out = []
    for _, x0, x1, y0, y1 in boxes[:MAX_ELEMENTS]:
        # Along: the axis the boxes sit on; across: the value axis.
        span = (x0, x1, y0, y1) if vertical else (y0, y1, x0, x1)
        entry = _box_entry(span, vertical, lines, fliers)
        entry["label"] = _bar_label((span[0] + span[1]) / 2, {}, ticks, labels)
        out.append(entry)
    return out


def _box_entry(  # pylint: disable=too-many-locals
    span: tuple, vertical: bool, lines: list, fliers: list
) -> dict:
    """One box's statistics from the lines around it: whiskers, median, outliers."""
    a0, a1, v0, v1 = span
    entry = {
        "label": "",
        "min": _num(v0),
        "first_quartile": _num(v0),
        "median": None,
        "third_quartile": _num(v1),
        "max": _num(v1),
        "outliers": [],
    }

    def split(xy):
        return (xy[:, 0], xy[:, 1]) if vertical else (xy[:, 1], xy[:, 0])

    def inside(along):
        return all(a0 - 1e-9 <= a <= a1 + 1e-9 for a in along)

    for xy in fliers:
        if xy.size:
            along, across = split(xy)
            if inside(along):
                entry["outliers"].extend(_num(v) for v in across[:MAX_POINTS])
    for xy in lines:
        if len(xy) != 2:
            continue
        along, across = split(xy)
        if not inside(along):
            continue
        if across[0] == across[1] and v0 <= across[0] <= v1:
            if along.min() > a0 + 1e-9 or along.max() < a1 - 1e-9:
                continue  # a cap narrower than the box is not the median
            entry["median"] = _num(across[0])
        elif along[0] == along[1]:
            lo, hi = float(min(across)), float(max(across))
            if hi <= v0 or math.isclose(hi, v0):
                entry["min"] = _num(min(lo, float(entry["min"])))
            elif lo >= v1 or math.isclose(lo, v1):
                entry["max"] = _num(max(hi, float(entry["max"])))
    return entry


# --------------------------------------------------------------------------- values


def _series_label(label: str, kind: str, index: int) -> str:
    if not label or label.startswith("_"):
        return f"{kind} {index + 1}"
    return label


def _points(xs, ys) -> list:
    return [[_value(x), _value(y)] for x, y in list(zip(xs, ys))[:MAX_POINTS]]


def _value(v):  # pylint: disable=too-many-return-statements
    """A data value as JSON: numbers stay numbers (NaN → None), dates → ISO, else str."""
    # pylint: disable=import-outside-toplevel
    import numpy as np

    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    if isinstance(v, np.datetime64):
        return str(v.astype("datetime64[s]"))
    if hasattr(v, "isoformat") and not isinstance(v, (int, float, np.number)):
        return v.isoformat()
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _num(v)
    return str(v)


def _num(v) -> float | int | None:
    f = float(v)
    if math.isnan(f) or math.isinf(f):
        return None
    if f.is_integer() and abs(f) < 2**53:
        return int(f)
    return f


def _fmt(v: float) -> str:
    n = _num(v)
    return "" if n is None else str(n)


def _num2iso(v: float) -> str | None:
    # pylint: disable=import-outside-toplevel
    from matplotlib import dates

    try:
        return dates.num2date(v).isoformat()
    except (ValueError, OverflowError):
        return None
