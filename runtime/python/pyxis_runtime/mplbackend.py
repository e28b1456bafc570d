"""Matplotlib backend of the kernel: Agg rendering, figures shown as Jupyter's inline backend
(matplotlib-inline) shows them.

A figure is shown with IPython's `display()`, so its image/png comes from the display
formatter the kernel registers for `Figure`, the same one a figure as a cell's value uses.
`plt.show()` and `Figure.show()` show at once; at the end of a cell in which pyplot made a
figure in interactive mode, every open figure is shown and closed. So, as in Jupyter, a
figure that is the cell's value and is also left open comes out twice (execute_result,
then display_data), once with `plt.ioff()` or after `plt.close()`.
"""

from __future__ import annotations

import matplotlib
from IPython.display import display
from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg


class _Pending:
    """Whether pyplot made a figure in interactive mode since the last flush (the inline
    backend's `show._draw_called`)."""

    made = False


def _close_all() -> None:
    if Gcf.get_all_fig_managers():
        from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

        pyplot.close("all")


class FigureManager(FigureManagerBase):
    """`Figure.show()` shows this figure now."""

    def __init__(self, canvas, num) -> None:
        super().__init__(canvas, num)
        if matplotlib.is_interactive():
            _Pending.made = True

    def show(self) -> None:
        display(self.canvas.figure)


class FigureCanvas(FigureCanvasAgg):
    """Agg canvas with the manager above."""

    manager_class = FigureManager


def show(*_args, **_kwargs) -> None:
    """`plt.show()`: shows every open figure, then closes them."""
    try:
        for manager in Gcf.get_all_fig_managers():
            display(manager.canvas.figure)
    finally:
        _close_all()


def flush_figures() -> None:
    """After a cell (the inline backend's post_execute hook): if pyplot made a figure in
    interactive mode, shows every open figure and closes them."""
    if not _Pending.made:
        return
    _Pending.made = False
    show()
