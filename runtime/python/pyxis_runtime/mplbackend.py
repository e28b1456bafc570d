"""Matplotlib backend of the kernel: Agg rendering, show() emits PNG display_data."""

from __future__ import annotations

from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

from . import kernel as _kernel


def _emit(manager) -> None:
    sink = _kernel.SINK
    if sink is not None:
        sink.figure(manager.canvas.figure)
    Gcf.destroy(manager)


class FigureManager(FigureManagerBase):
    """`Figure.show()` emits this figure now."""

    def show(self) -> None:
        _emit(self)


class FigureCanvas(FigureCanvasAgg):
    """Agg canvas with the manager above."""

    manager_class = FigureManager


def show(*_args, **_kwargs) -> None:
    """`plt.show()`: emits every open figure, then closes it."""
    for manager in Gcf.get_all_fig_managers():
        _emit(manager)
