"""The IPython shell of a kernel: output goes to the kernel's frames, not to a terminal."""

from __future__ import annotations

import re
import warnings

from IPython.core.autocall import IPyAutocall
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.history import HistoryManager
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.macro import Macro
from traitlets import Type

from . import kernel as _kernel

# Anything IPython's input transformers or prefilter could change: magics, shell escapes,
# help, autocall escapes, pasted prompts.
_NEEDS_TRANSFORM = re.compile(r"[%!?]|^[ \t]*[,;/]|>>>|In \[|\.\.\.:|^\.\.\.", re.M)
_FIRST_NAME = re.compile(r"\s*([A-Za-z_][\w.]*)")
# Exact types whose only representation is text/plain (unless a formatter is registered).
_PLAIN_TYPES = frozenset(
    {int, float, complex, bool, str, bytes, list, tuple, dict, set, frozenset, type(None)}
)


class PyxisDisplayPublisher(DisplayPublisher):
    """display() → display_data events."""

    def publish(  # pylint: disable=arguments-differ,too-many-arguments
        self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs
    ) -> None:
        sink = _kernel.SINK
        if sink is not None:
            sink.display(data, metadata)

    def clear_output(self, wait=False) -> None:
        """Nothing to clear: events are already sent."""


class PyxisDisplayHook(DisplayHook):
    """The last expression's value → execute_result events (no Out[n] prompt text)."""

    def start_displayhook(self) -> None:
        pass

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict, md_dict=None) -> None:
        sink = _kernel.SINK
        if sink is not None:
            sink.execute_result(self.prompt_count, format_dict, md_dict)

    def finish_displayhook(self) -> None:
        pass

    def quiet(self):
        # The base class tokenizes the cell every time; only a ';' can make it quiet.
        try:
            cell = self.shell.history_manager.input_hist_parsed[-1]
        except IndexError:
            return False
        return ";" in cell and self.semicolon_at_end_of_expression(cell)

    def cull_cache(self):
        # Same culling as IPython, without a warning in the user's stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            super().cull_cache()

    def compute_format_data(self, result):
        # The full formatter chain costs ~200 µs even for an int: skip it when only
        # text/plain can come out.
        kind = type(result)
        if kind in _PLAIN_TYPES:
            formatters = self.shell.display_formatter.formatters
            if not any(kind in f.type_printers for m, f in formatters.items() if m != "text/plain"):
                return {"text/plain": formatters["text/plain"](result)}, {}
        return super().compute_format_data(result)


class PyxisHistoryManager(HistoryManager):
    """In-memory history whose per-cell bookkeeping skips traitlets notifications."""

    def store_inputs(self, line_num, source, source_raw=None):
        if source_raw is None:
            source_raw = source
        source = source.rstrip("\n")
        source_raw = source_raw.rstrip("\n")
        if self._exit_re.match(source_raw.strip()):
            return
        self.input_hist_parsed.append(source)
        self.input_hist_raw.append(source_raw)
        # HistoryManager keeps these for a saving thread that an in-memory history lacks.
        self.db_input_cache.clear()
        values = self._trait_values
        i00, i, ii = self._i00, self._i, self._ii
        values["_iii"] = ii
        values["_ii"] = i
        values["_i"] = i00
        values["_i00"] = source_raw
        shell = self.shell
        if shell is not None:
            to_main = {"_i": i00, "_ii": i, "_iii": ii, f"_i{line_num}": source_raw}
            shell.user_ns.update(to_main)
            shell.user_ns_hidden.update(to_main)


class PyxisShell(InteractiveShell):
    """InteractiveShell whose tracebacks, results and displays become kernel events."""

    displayhook_class = Type(PyxisDisplayHook)
    display_pub_class = Type(PyxisDisplayPublisher)

    def init_history(self):
        self.history_manager = PyxisHistoryManager(shell=self, parent=self)
        self.configurables.append(self.history_manager)

    def transform_cell(self, raw_cell):
        # Plain Python needs none of IPython's transformations (~50 µs per cell).
        if raw_cell and raw_cell[0] not in " \t\r\n\f" and self._plain(raw_cell):
            return raw_cell if raw_cell.endswith("\n") else raw_cell + "\n"
        return super().transform_cell(raw_cell)

    def _plain(self, cell: str) -> bool:
        if _NEEDS_TRANSFORM.search(cell) or self.input_transformers_post:
            return False
        manager = self.input_transformer_manager
        if (
            len(manager.cleanup_transforms) != 4
            or len(manager.line_transforms) != 1
            or len(manager.token_transformers) != 4
        ):
            return False
        if "\n" in cell.rstrip("\n"):
            return True
        # One line: the prefilter may turn it into an automagic, alias, macro or autocall.
        match = _FIRST_NAME.match(cell)
        if match:
            name = match.group(1).split(".", 1)[0]
            if name in self.magics_manager.magics["line"]:
                return False
            if isinstance(self.user_ns.get(name), (IPyAutocall, Macro)):
                return False
        return True

    def _showtraceback(self, etype, evalue, stb) -> None:
        sink = _kernel.SINK
        if sink is None:
            return
        try:
            evalue_text = str(evalue)
        except Exception:  # pylint: disable=broad-except
            evalue_text = "<unprintable exception value>"
        sink.error(getattr(etype, "__name__", str(etype)), evalue_text, stb)

    def should_run_async(self, raw_cell, *, transformed_cell=None, preprocessing_exc_tuple=None):
        # Skips a second compile for the common cell that cannot contain top-level await.
        if "await" not in raw_cell and "async" not in raw_cell:
            return False
        return super().should_run_async(
            raw_cell,
            transformed_cell=transformed_cell,
            preprocessing_exc_tuple=preprocessing_exc_tuple,
        )

    def enable_gui(self, gui=None):
        """No GUI event loops in a kernel."""

    def enable_matplotlib(self, gui=None):
        """`%matplotlib` (any backend): figures are always shown inline as PNG."""
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

        plt.switch_backend(_kernel.MPL_BACKEND)
        return "inline", _kernel.MPL_BACKEND

    def init_virtualenv(self):
        """The runtime's venv is the interpreter's own: nothing to adjust."""
