"""The IPython shell of a kernel: output goes to the kernel's frames, not to a terminal."""

from __future__ import annotations

import ast
import bdb
import builtins
import re
import sys
import warnings

from IPython.core.autocall import IPyAutocall
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.formatters import DisplayFormatter
from IPython.core.history import HistoryManager
from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult, InteractiveShell
from IPython.core.macro import Macro
from IPython.lib import pretty
from traitlets import All, Type

# Anything IPython's input transformers or prefilter could change: magics, shell escapes,
# help, autocall escapes, pasted prompts.
_NEEDS_TRANSFORM = re.compile(r"[%!?]|^[ \t]*[,;/]|>>>|In \[|\.\.\.:|^\.\.\.", re.M)
_FIRST_NAME = re.compile(r"\s*([A-Za-z_][\w.]*)")
# Exact types whose only representation is text/plain (unless a formatter is registered).
_PLAIN_TYPES = frozenset(
    {int, float, complex, bool, str, bytes, list, tuple, dict, set, frozenset, type(None)}
)
# Exact types whose text/plain IPython's default printers make with repr() alone (one line,
# no pretty-printing): _repr_pprint, or PlainTextFormatter's float printer at "%r".
_REPR_TYPES = frozenset({int, float, str, bool, type(None)})
_FLOAT_PRINTER = "PlainTextFormatter._type_printers_default.<locals>.<lambda>"
_REPR_PRINTER = pretty._repr_pprint  # pylint: disable=protected-access,invalid-name


_NONE: dict = {}


def _as_transformed(plain_cell: str) -> str:
    """What IPython's transform_cell makes of a plain cell: the same, ending in a newline."""
    return plain_cell if plain_cell.endswith("\n") else plain_cell + "\n"


def _needs_own_module(node) -> bool:
    """A statement that behaves differently once it is not the first of its module
    (IPython compiles each statement alone): a __future__ import, or a string that
    would be that module's docstring."""
    if isinstance(node, ast.ImportFrom):
        return node.module == "__future__"
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _set_quietly(obj, name: str, value) -> None:
    """Sets trait `name` without traitlets' validation and change events when nothing
    validates or observes it (the value is of the trait's type): ~3 µs less per set."""
    # pylint: disable=protected-access
    notifiers = obj._trait_notifiers
    if (
        name in obj._trait_validators
        or any(notifiers.get(name, _NONE).values())
        or any(notifiers.get(All, _NONE).values())
    ):
        setattr(obj, name, value)
    else:
        obj._trait_values[name] = value


class PyxisDisplayPublisher(DisplayPublisher):
    """display() → display_data / update_display_data events; clear_output() → clear_output."""

    def publish(  # pylint: disable=arguments-differ,too-many-arguments
        self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs
    ) -> None:
        kernel = self.shell.kernel
        if kernel is not None:
            kernel.display(data, metadata, transient, update)

    def clear_output(self, wait=False) -> None:
        kernel = self.shell.kernel
        if kernel is not None:
            kernel.clear_output(wait)


class PyxisDisplayFormatter(DisplayFormatter):
    """IPython's formatters; while they run, a traceback is a formatter's, not the cell's."""

    def format(self, obj, include=None, exclude=None):
        shell = self.parent
        kernel = shell.kernel
        if kernel is not None and kernel.out.full():
            return {}, {}  # it would be dropped: spend nothing on it
        shell.formatting += 1
        try:
            return super().format(obj, include=include, exclude=exclude)
        finally:
            shell.formatting -= 1


class PyxisDisplayHook(DisplayHook):
    """The last expression's value → execute_result events (no Out[n] prompt text)."""

    def start_displayhook(self) -> None:
        pass

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict, md_dict=None) -> None:
        kernel = self.shell.kernel
        if kernel is not None:
            kernel.execute_result(self.prompt_count, format_dict, md_dict)

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
            shell = self.shell
            formatters = shell.display_formatter.formatters
            if not any(kind in f.type_printers for m, f in formatters.items() if m != "text/plain"):
                plain = formatters["text/plain"]
                if kind in _REPR_TYPES:
                    text = _repr_text(plain, result, kind)
                    if text is not None:
                        return {"text/plain": text}, {}
                shell.formatting += 1
                try:
                    return {"text/plain": plain(result)}, {}
                finally:
                    shell.formatting -= 1
        return super().compute_format_data(result)

    def update_user_ns(self, result):
        # IPython's, reading each trait once (it reads `shell` nine times, ~0.5 µs each).
        shell = self.shell
        user_ns = shell.user_ns
        cache_size = self.cache_size
        if not cache_size or result is user_ns["_oh"]:
            return
        full = self.do_full_cache
        if len(user_ns["_oh"]) >= cache_size and full:
            self.cull_cache()
        # `_` and friends are left alone once the user assigned one of them, or when `_`
        # is a builtin (gettext).
        update_unders = all(
            name not in user_ns or getattr(self, name) is user_ns.get(name)
            for name in ("_", "__", "___")
        )
        self.___ = self.__
        self.__ = self._
        self._ = result
        hidden = shell.user_ns_hidden
        if "_" not in builtins.__dict__ and update_unders:
            unders = {"_": result, "__": self.__, "___": self.___}
            user_ns.update(unders)
            hidden.update(unders)
        if full:
            count = shell.execution_count
            to_main = {f"_{count}": result}
            user_ns.update(to_main)
            hidden.update(to_main)
            user_ns["_oh"][count] = result

    def log_output(self, format_dict):
        # IPython's, reading each trait once.
        if "text/plain" not in format_dict:
            return
        shell = self.shell
        if shell.logger.log_output:
            shell.logger.log_write(format_dict["text/plain"], "output")
        shell.history_manager.output_hist_reprs[shell.execution_count] = format_dict["text/plain"]


def _repr_text(plain, result, kind) -> str | None:
    """What PlainTextFormatter makes of an int, float, str, bool or None while its printer
    for it is IPython's default: repr(), without the ~10 µs of a RepresentationPrinter.
    None when another printer is registered, or repr raises (the formatter then reports
    it as it does)."""
    if kind is bool or result is None:
        # Singletons are printed by their own table first.
        if plain.singleton_printers.get(id(result)) is not _REPR_PRINTER:
            return None
    else:
        printer = plain.type_printers.get(kind)
        if kind is float:
            if plain.float_format != "%r" or getattr(printer, "__qualname__", "") != _FLOAT_PRINTER:
                return None
        elif printer is not _REPR_PRINTER:
            return None
    try:
        text = repr(result)
    except Exception:  # pylint: disable=broad-except
        return None  # a huge int (the digit limit): the formatter reports it
    return text if "\n" not in text else None


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
    # The kernel that receives this shell's events (set in the kernel process; None in
    # the zygote, where nothing is sent), the matplotlib backend `%matplotlib` selects,
    # and how deep display formatters are running.
    kernel = None
    mpl_backend = "agg"
    formatting = 0

    def init_display_formatter(self):
        self.display_formatter = PyxisDisplayFormatter(parent=self)
        self.configurables.append(self.display_formatter)

    def init_history(self):
        self.history_manager = PyxisHistoryManager(shell=self, parent=self)
        self.configurables.append(self.history_manager)

    def transform_cell(self, raw_cell):
        # Plain Python needs none of IPython's transformations (~50 µs per cell).
        if raw_cell and self._is_plain(raw_cell):
            return _as_transformed(raw_cell)
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

    def hold_traps(self) -> None:
        """Installs IPython's builtins (exit, quit, get_ipython) and displayhook for good,
        instead of around each cell as run_cell does: a kernel runs nothing but cells."""
        self.builtin_trap.__enter__()  # pylint: disable=unnecessary-dunder-call
        self.display_trap.__enter__()  # pylint: disable=unnecessary-dunder-call

    def run_cell(  # pylint: disable=too-many-arguments
        self, raw_cell, store_history=False, silent=False, shell_futures=True, cell_id=None
    ):
        # As IPython, each cell starts with the shell's displayhook, whatever the last
        # one did to sys.displayhook (a no-op when it is already in place).
        self.display_trap.set()
        # The common cell (plain Python, no await, default settings) takes a shorter
        # road with the same outcome; anything else goes IPython's way.
        if store_history and not silent and shell_futures and self._short_road_for(raw_cell):
            result = self._run_plain_cell(raw_cell, _as_transformed(raw_cell), cell_id)
            if result is not None:
                return result
        return super().run_cell(raw_cell, store_history, silent, shell_futures, cell_id)

    def _short_road_for(self, raw_cell: str) -> bool:
        if not raw_cell or raw_cell.isspace():
            return False
        if "await" in raw_cell or "async" in raw_cell:
            return False
        return self._fast_path_settings() and self._is_plain(raw_cell)

    def _fast_path_settings(self) -> bool:
        return (
            self.ast_node_interactivity == "last_expr"
            and not self.ast_transformers
            and not self.custom_exceptions
            and self.trio_runner is None
            and not self.logger.log_active
        )

    def _is_plain(self, raw_cell: str) -> bool:
        return raw_cell[0] not in " \t\r\n\f" and self._plain(raw_cell)

    def _run_plain_cell(self, raw_cell: str, cell: str, cell_id):
        """IPython's run_cell for plain Python: one parse, at most two compiles, no
        coroutine runner, traps entered once per kernel. None (nothing done yet) when
        the cell does not parse or needs IPython's own handling."""
        compiler = self.compile
        count = self.execution_count
        cell_name = compiler.cache(cell, count, raw_code=raw_cell)
        try:
            body = compiler.ast_parse(cell, filename=cell_name).body
        except Exception:  # pylint: disable=broad-except
            return None  # IPython reports it
        if not body or any(map(_needs_own_module, body[1:])):
            return None
        if "get_ipython().run_line_magic(" in cell and "paste" in cell:
            return None  # IPython keeps (c)paste out of the history and the count
        info = ExecutionInfo(raw_cell, True, False, True, cell_id)
        result = ExecutionResult(info)
        result.execution_count = count
        events = self.events
        try:
            events.trigger("pre_execute")
            events.trigger("pre_run_cell", info)
            self.history_manager.store_inputs(count, cell, raw_cell)
            displayhook = self.displayhook
            with self.builtin_trap, self.display_trap:
                _set_quietly(displayhook, "exec_result", result)
                has_raised = self._run_nodes(body, cell_name, result)
                _set_quietly(self, "last_execution_succeeded", not has_raised)
                _set_quietly(self, "last_execution_result", result)
                _set_quietly(displayhook, "exec_result", None)
            self.history_manager.store_output(count)
            _set_quietly(self, "execution_count", count + 1)
        finally:
            events.trigger("post_execute")
            events.trigger("post_run_cell", result)
        return result

    def _run_nodes(self, body: list, cell_name: str, result) -> bool:
        """run_ast_nodes with interactivity 'last_expr': the statements before a final
        expression compile as one module, the expression alone in 'single' mode."""
        if isinstance(body[-1], ast.Expr):
            head, last = body[:-1], body[-1]
        else:
            head, last = body, None
        try:
            code = self.compile(ast.Module(head, []), cell_name, "exec") if head else None
            single = (
                self.compile(ast.Interactive([last]), cell_name, "single")
                if last is not None
                else None
            )
        except:  # noqa: E722  pylint: disable=bare-except
            result.error_before_exec = sys.exc_info()[1]
            self.showtraceback()
            return True
        if code is not None and self._run_code(code, result):
            return True
        return single is not None and self._run_code(single, result)

    def _run_code(self, code_obj, result) -> bool:
        """run_code without the coroutine: True if the code raised."""
        # pylint: disable=unused-variable
        __tracebackhide__ = "__ipython_bottom__"  # noqa: F841
        old_excepthook, sys.excepthook = sys.excepthook, self.excepthook
        self.sys_excepthook = old_excepthook
        try:
            try:
                exec(code_obj, self.user_global_ns, self.user_ns)  # pylint: disable=exec-used
            finally:
                sys.excepthook = old_excepthook
        except SystemExit as e:
            result.error_in_exec = e
            self.showtraceback(exception_only=True)
            warnings.warn("To exit: use 'exit', 'quit', or Ctrl-D.", stacklevel=1)
        except bdb.BdbQuit:
            result.error_in_exec = sys.exc_info()[1]
        except:  # noqa: E722  pylint: disable=bare-except
            result.error_in_exec = sys.exc_info()[1]
            self.showtraceback(running_compiled_code=True)
        else:
            return False
        return True

    def _showtraceback(self, etype, evalue, stb) -> None:
        kernel = self.kernel
        if kernel is None:
            return
        if self.formatting:
            kernel.formatter_error(stb)
            return
        try:
            evalue_text = str(evalue)
        except Exception:  # pylint: disable=broad-except
            evalue_text = "<unprintable exception value>"
        kernel.error(getattr(etype, "__name__", str(etype)), evalue_text, stb)

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
        import matplotlib  # pylint: disable=import-outside-toplevel
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

        plt.switch_backend(self.mpl_backend)
        matplotlib.interactive(True)
        return "inline", self.mpl_backend

    def init_virtualenv(self):
        """The runtime's venv is the interpreter's own: nothing to adjust."""
