"""The report files and the summary that an installation leaves when it stops.

The paths come from the options (``json``, ``html``, ``chrome_trace``, ``jaeger_json``),
given to ``install()``, as ``looptrace run`` flags or as ``LOOPTRACE_*`` variables. A path
is *per process* when it contains ``{pid}`` or names a directory (``reports/``): every
process, each worker of a service, writes its own file there. Any other path is *shared*:
one process writes it (the one that combines the others' reports, see
:mod:`looptrace._subprocesses`). Writing never raises into the program: a file that cannot
be written costs one line on stderr.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterable

from ._config import OUTPUT_OPTIONS, Options
from .session import Session

RENDERERS = {
    "text": "looptrace.exporters.text",
    "json": "looptrace.exporters.json",
    "html": "looptrace.exporters.html",
    "chrome": "looptrace.exporters.chrome",
    "jaeger": "looptrace.exporters.jaeger_json",
}
"""Output format -> the module whose ``render(session) -> str`` writes it."""

_FORMATS = {"json": ("json", ".json"), "html": ("html", ".html"),
            "chrome_trace": ("chrome", ".trace.json"),
            "jaeger_json": ("jaeger", ".jaeger.json")}
"""Output option -> (format, file name suffix in a per-process directory)."""

assert tuple(_FORMATS) == OUTPUT_OPTIONS


def render(session: Session, fmt: str) -> str:
    """The session in one format (``ImportError`` when that renderer cannot load)."""
    module = importlib.import_module(RENDERERS[fmt])
    text: str = module.render(session)
    return text


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically: a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    # A name that was not UTF-8 (an argv item, a file path) is a lone surrogate in Python:
    # written as `\udcff`, which in a JSON string is the escape that reads back the same.
    try:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _is_directory(path: str) -> bool:
    return path.endswith(os.sep) or (os.altsep is not None and path.endswith(os.altsep)) \
        or os.path.isdir(path)


def per_process(path: str) -> bool:
    """Whether every process writes its own file at ``path``."""
    return "{pid}" in path or _is_directory(path)


def expand(path: str, option: str, pid: int) -> str:
    """The file this process writes for ``path``: ``{pid}`` replaced, or a
    ``looptrace-<pid>`` file inside a directory."""
    if _is_directory(path):
        return os.path.join(path, f"looptrace-{pid}{_FORMATS[option][1]}")
    return path.replace("{pid}", str(pid))


def warn(message: str) -> None:
    """One line on stderr; a closed or missing stderr loses it, never the program."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(f"looptrace: {message}\n")
        sys.stderr.flush()


def write_reports(options: Options, own: Session, shared: Session | None) -> list[str]:
    """Write the files the options ask for: this process's own report at the per-process
    paths, and ``shared`` (the whole run's report) at the others when this process speaks
    for the run (else None). Return the paths written."""
    written = []
    for option in OUTPUT_OPTIONS:
        path = getattr(options, option)
        session = own if path is not None and per_process(path) else shared
        if path is None or session is None:
            continue
        target = expand(path, option, os.getpid())
        try:
            if _is_directory(path):
                os.makedirs(path, exist_ok=True)
            write_text(target, render(session, _FORMATS[option][0]))
            written.append(target)
        except (OSError, ImportError) as exc:
            warn(f"could not write {target}: {exc}")
    return written


def print_summary(session: Session, notes: Iterable[str] = ()) -> None:
    """The terminal summary on stderr, after the program's own output."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdout.flush()
    text = render(session, "text")
    extra = "".join(f"{line}\n" for line in notes)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write("\n" + text + ("\n" + extra if extra else ""))
        sys.stderr.flush()
