"""Run a program as ``python`` would: a script, a directory or zip app, ``-m module``,
``-c code`` or ``-`` (standard input).

The program must not notice looptrace. So this module reproduces what CPython does before
it runs ``__main__`` (``Modules/main.c``, ``Python/pythonrun.c`` and ``runpy``), checked by
the differential suite in ``tests/test_run_like_python.py``:

- ``sys.argv`` is the program's: ``[script, args...]``, ``['-m', ...]`` until runpy puts
  the module's path there, ``['-c', ...]``, ``['-', ...]``;
- ``sys.path[0]`` is the directory of the script with symbolic links resolved, the app
  itself (absolute) for a directory or zip app, the working directory for ``-m``, ``''``
  for ``-c`` and ``-``; nothing at all under ``python -P`` / ``PYTHONSAFEPATH``;
- ``__main__`` is a fresh module in ``sys.modules`` (never looptrace's own ``__main__``),
  with ``__file__`` absolute as python makes it (the working directory joined with the
  path as given, not normalised), ``__spec__``/``__loader__``/``__cached__`` as python sets
  them; modules and apps go through ``runpy._run_module_as_main``, python's own entry;
- a program that cannot be found gets python's own message and exit status.

coverage.py's ``coverage/execfile.py`` solves the same problem; unlike it we run modules
and apps through python's own runpy entry, so their ``__spec__`` and error lines are
python's by construction.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.util
import marshal
import os
import runpy
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import (
    BuiltinImporter,
    PathFinder,
    SourceFileLoader,
    SourcelessFileLoader,
)
from types import CodeType, ModuleType, TracebackType
from typing import Literal

Kind = Literal["script", "module", "code", "stdin"]
_HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True, slots=True)
class Program:
    """What to run: a script path (or app), a module name, code, or ``-`` for stdin;
    ``args`` are the program's own arguments, untouched."""

    kind: Kind
    target: str
    args: tuple[str, ...] = ()


class ProgramNotFound(Exception):
    """The program cannot start: python's own message, printed as is, and its status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Ending:
    """How the program ended: a ``SystemExit`` to re-raise once the report is written,
    or the status of an uncaught exception (already printed as python prints it)."""

    exit_request: SystemExit | None = None
    status: int = 0
    interrupted: bool = False
    started: bool = True
    """False when runpy refused the module before any of its code ran (``-m a..b``)."""


def _abspath(path: str) -> str:
    """python's ``_Py_abspath``: the working directory joined with the path, unnormalised."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def _set_path0(path0: str) -> None:
    # The launcher (``python -m looptrace`` or the console script) put its own entry first;
    # under ``-P``/PYTHONSAFEPATH python adds none, and neither do we.
    if sys.flags.safe_path:
        return
    if sys.path:
        sys.path[0] = path0
    else:
        sys.path.insert(0, path0)


def _fresh_main() -> ModuleType:
    """A new ``__main__`` as CPython's ``add_main_module`` makes it."""
    main = ModuleType("__main__")
    main.__dict__.update(__annotations__={}, __builtins__=builtins, __loader__=BuiltinImporter)
    sys.modules["__main__"] = main
    return main


def _is_app(path: str) -> bool:
    """A directory or zip file python runs through its ``__main__`` module."""
    return os.path.isdir(path) or (os.path.isfile(path) and zipfile.is_zipfile(path))


def prepare(program: Program) -> Callable[[], None]:
    """Check the program can start and set ``sys.argv``/``sys.path`` as python would;
    return what runs it. Reads standard input for ``-``. Raises :class:`ProgramNotFound`."""
    if program.kind == "module":
        return _prepare_module(program)
    if program.kind in ("code", "stdin"):
        _set_path0("")
        if program.kind == "code":
            source: str | bytes = program.target
            filename, argv0 = "<string>", "-c"
        else:
            try:
                source = sys.stdin.buffer.read()
            except (OSError, ValueError, AttributeError) as exc:  # closed, or not a file
                raise ProgramNotFound(f"{sys.executable}: can't read the program from "
                                      f"standard input: {exc}", 2) from None
            filename, argv0 = "<stdin>", "-"
        sys.argv = [argv0, *program.args]
        return lambda: _exec_source(source, filename, with_file=program.kind == "stdin")
    return _prepare_path(program)


def _prepare_module(program: Program) -> Callable[[], None]:
    _set_path0(os.getcwd())
    name = program.target
    if name.startswith("."):
        raise ProgramNotFound(f"{sys.executable}: Relative module names not supported", 1)
    if "." not in name:
        # A top-level name is found without importing anything: a missing one stops here,
        # before looptrace is installed. Dotted names import their parents, so runpy
        # looks them up under looptrace, as python does.
        try:
            missing = importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            missing = False
        if missing:
            raise ProgramNotFound(f"{sys.executable}: No module named {name}", 1)
    sys.argv = ["-m", *program.args]

    def run() -> None:
        _fresh_main()
        entry = getattr(runpy, "_run_module_as_main", None)
        if entry is None:  # not in this Python: the public equivalent
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            entry(name, True)

    return run


def _prepare_path(program: Program) -> Callable[[], None]:
    path = _abspath(program.target)
    sys.argv = [program.target, *program.args]
    if _is_app(path):
        if PathFinder.find_spec("__main__", [path]) is None:  # imports nothing
            raise ProgramNotFound(f"{sys.executable}: can't find '__main__' module in "
                                  f"{path!r}", 1)
        _set_path0(path)

        def run_app() -> None:
            _fresh_main()
            entry = getattr(runpy, "_run_module_as_main", None)
            if entry is None:
                runpy.run_path(path, run_name="__main__")
            else:
                entry("__main__", False)

        return run_app
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ProgramNotFound(f"{sys.executable}: can't open file {path!r}: "
                              f"[Errno {exc.errno}] {exc.strerror}", 2) from None
    _set_path0(os.path.dirname(os.path.realpath(path)))
    return lambda: _exec_file(path, data)


def _exec_file(path: str, data: bytes) -> None:
    main = _fresh_main()
    main.__dict__.update(__file__=path, __cached__=None)
    code: CodeType
    if path.endswith(".pyc"):
        main.__loader__ = SourcelessFileLoader("__main__", path)
        loaded = marshal.loads(data[16:])  # after the magic, flags and two stamps
        if not isinstance(loaded, CodeType):
            raise RuntimeError(f"Bad code object in .pyc file {path!r}")
        code = loaded
    else:
        main.__loader__ = SourceFileLoader("__main__", path)
        code = compile(data, path, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def _exec_source(source: str | bytes, filename: str, *, with_file: bool) -> None:
    main = _fresh_main()
    if with_file:  # python names stdin's main module "<stdin>"
        main.__dict__.update(__file__=filename, __cached__=None)
    exec(compile(source, filename, "exec", dont_inherit=True), main.__dict__)


def _trimmed(tb: TracebackType | None) -> TracebackType | None:
    """Drop looptrace's and runpy's frames from the head of the program's traceback."""
    while tb is not None:
        raw = tb.tb_frame.f_code.co_filename
        filename = os.path.abspath(raw)
        if filename.startswith(_HERE + os.sep) or raw == "<frozen runpy>" \
                or os.path.basename(filename) == "runpy.py":
            tb = tb.tb_next
        else:
            break
    return tb


def _refused_by_runpy(exc: SystemExit) -> bool:
    """runpy's own ``sys.exit(message)`` for a module or app it could not find."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not isinstance(exc.code, str):
        return False
    filename = tb.tb_frame.f_code.co_filename
    return filename == "<frozen runpy>" or os.path.basename(filename) == "runpy.py"


def execute(run: Callable[[], None]) -> Ending:
    """Run the program; an uncaught exception is printed as python prints it."""
    try:
        run()
    except SystemExit as exc:
        return Ending(exit_request=exc, started=not _refused_by_runpy(exc))
    except BaseException as exc:
        trimmed = _trimmed(exc.__traceback__)
        with contextlib.suppress(Exception):
            sys.excepthook(type(exc), exc.with_traceback(trimmed), trimmed)
        return Ending(status=1, interrupted=isinstance(exc, KeyboardInterrupt))
    return Ending()
