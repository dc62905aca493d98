"""Every process of a traced program traced: workers forked, spawned or executed.

A service rarely runs its loops in the process that was started: uvicorn ``--workers``
spawns fresh interpreters, gunicorn forks its workers, ``multiprocessing`` does either.
With the ``subprocesses`` option on, looptrace follows them all:

- **fork** (gunicorn, ``multiprocessing`` fork and forkserver): ``os.register_at_fork``
  runs in the child; :mod:`looptrace._api` switches the parent's hooks off there and
  installs again with the same options and an empty recorder, so the child reports only
  what it did itself. ``multiprocessing`` ends its children with ``os._exit`` (no
  ``atexit``), so there the report is written by one of its own finalizers.
- **spawn or exec of a Python interpreter** (uvicorn ``--workers``, ``multiprocessing``
  spawn, ``ProcessPoolExecutor``, ``subprocess.run([sys.executable, ...])``): the
  environment. The first traced process (the *root*) puts its options in ``LOOPTRACE_*``
  and the directory ``looptrace/_bootstrap`` first on ``PYTHONPATH``; the
  ``sitecustomize.py`` there runs in every new interpreter, imports the
  ``sitecustomize`` it hides (a distribution's, OpenTelemetry's), then installs looptrace.

Why a ``sitecustomize`` on ``PYTHONPATH`` and not a ``.pth`` file (coverage.py's
``process_startup`` hook, and its ``patch = subprocess``, write one into site-packages):
a ``.pth`` is seen by every interpreter of that environment, including other programs
run at the same time, and it needs write access to site-packages (a read-only container
image has none). An environment variable reaches exactly the process tree of the traced
program, works in a read-only image, and is what ``opentelemetry-instrument`` and
``ddtrace-run`` do. What it cannot reach: an interpreter started with ``-I``, ``-E`` or
``-S`` (they ignore ``PYTHONPATH`` or ``site``), and a child whose environment is
replaced (``env={...}`` without ``PYTHONPATH``). Those run untraced, and if they were
forked they are listed as having left no report.

Each child leaves ``<pid>.started`` when it starts and ``<pid>.json`` (its report) when
it stops, in a directory the root made (``LOOPTRACE_COLLECT``). When the root stops it
combines them with its own report (:mod:`looptrace._combine`), says how many processes
were traced and which left no report, writes the shared report files and the summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._combine import Combined
from ._config import COLLECT_VARIABLE, Options, to_environment
from .session import ReportError, Session

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
"""The directory that goes first on ``PYTHONPATH`` of the traced program's children."""

LAST_PROCESS_LINES: list[str] = []
"""The summary's account of the processes from the last combine (``looptrace run``
prints it under the summary)."""

_WAIT_FOR_CHILDREN_S = 2.0
"""How long a stopping root waits for children that are still alive to leave a report."""


_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
"""``multiprocessing``'s own processes: they run no code of the program. The resource
tracker is not traced at all; the fork server is (its forks are the workers) but is not
listed, and leaves no report: it often outlives the process that combines them."""


def _helper() -> str | None:
    command = " ".join(getattr(sys, "orig_argv", ()))
    return next((name for name in _HELPERS if f"from {name} import" in command), None)


def describe() -> str:
    """The command of this process, as the summary shows it."""
    helper = _helper()
    if "--multiprocessing-fork" in sys.argv:
        return "(multiprocessing spawn worker)"
    if helper == "multiprocessing.forkserver":
        return "(multiprocessing forkserver worker)"
    return " ".join(sys.argv)


@dataclass(slots=True)
class Role:
    """What this process does with its report: combine (root), leave it for the root
    (child), or neither (a lone process)."""

    directory: str | None = None
    root: bool = False
    saved_environment: dict[str, str | None] | None = None
    silent: bool = False

    @property
    def child(self) -> bool:
        return self.directory is not None and not self.root


def _collector() -> tuple[int, str] | None:
    """The root's pid and directory named by ``LOOPTRACE_COLLECT``, if it is valid."""
    pid, _, directory = os.environ.get(COLLECT_VARIABLE, "").partition(":")
    if not pid.isdigit() or not os.path.isdir(directory):
        return None
    return int(pid), directory


def start(options: Options) -> Role:
    """Decide this process's role at install time, and prepare the environment of the
    processes it will start. Never raises: tracing children is worth less than the host."""
    try:
        collector = _collector()
        if collector is not None and collector[0] != os.getpid():
            if _helper() is not None and not _forked_from_helper():
                return Role(directory=collector[1], silent=True)
            _mark_started(collector[1])
            return Role(directory=collector[1])
        if not options.subprocesses:
            return Role()
        directory = tempfile.mkdtemp(prefix="looptrace-workers-")
        saved = _export(options, directory)
        return Role(directory=directory, root=True, saved_environment=saved)
    except OSError as exc:
        _warn(f"cannot trace subprocesses: {exc}")
        return Role()


def _export(options: Options, directory: str) -> dict[str, str | None]:
    """Set the variables children read; return what they were before."""
    wanted: dict[str, str | None] = dict(to_environment(options))
    wanted[COLLECT_VARIABLE] = f"{os.getpid()}:{directory}"
    path = os.environ.get("PYTHONPATH", "")
    entries = [p for p in path.split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    wanted["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *entries])
    saved = {name: os.environ.get(name) for name in wanted}
    for name, value in wanted.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return saved


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_helper_pid: int | None = None


def _forked_from_helper() -> bool:
    """A fork server's child is a worker: its pid is not the server's."""
    global _helper_pid
    if _helper_pid is None:
        _helper_pid = os.getpid()
    return _helper_pid != os.getpid()


def _mark_started(directory: str) -> None:
    record = {"pid": os.getpid(), "ppid": os.getppid(), "argv": [describe()]}
    with open(os.path.join(directory, f"{os.getpid()}.started"), "w", encoding="utf-8",
              errors="backslashreplace") as f:
        json.dump(record, f)


def leave_report(role: Role, session: Session) -> None:
    """In a child: write this process's report where the root will find it."""
    if role.directory is None or role.silent or not os.path.isdir(role.directory):
        return  # a helper, or the root is gone (it stopped first): nobody would read it
    try:
        session.save(os.path.join(role.directory, f"{os.getpid()}.json"))
    except OSError as exc:
        _warn(f"could not leave this worker's report: {exc}")


@dataclass(frozen=True, slots=True)
class Child:
    pid: int
    argv: tuple[str, ...]
    session: Session | None


def _children(directory: str) -> list[Child]:
    """Every child that said it started, with its report when it left one; waits a
    little for children still alive (a worker finishing its shutdown)."""
    deadline = time.monotonic() + _WAIT_FOR_CHILDREN_S
    while True:
        names = set(os.listdir(directory))
        started = sorted(int(n.split(".")[0]) for n in names if n.endswith(".started"))
        missing = [pid for pid in started if f"{pid}.json" not in names and _alive(pid)]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    children = []
    for pid in started:
        session = None
        with contextlib.suppress(ReportError, OSError):
            session = Session.load(os.path.join(directory, f"{pid}.json"))
        argv: tuple[str, ...] = ()
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError), \
                open(os.path.join(directory, f"{pid}.started"), encoding="utf-8") as f:
            argv = tuple(str(a) for a in json.load(f)["argv"])
        children.append(Child(pid, argv, session))
    return children


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process with that pid: not ours to wait for
        return False
    return True


def combine(role: Role, own: Session, max_blocks: int) -> tuple[Session, list[str]]:
    """In the root: its report combined with its children's, and the lines that say
    which processes were traced. Cleans the directory and the environment up."""
    if not role.root or role.directory is None:
        return own, []
    try:
        children = _children(role.directory)
    except OSError as exc:
        _warn(f"cannot read the workers' reports: {exc}")
        children = []
    finally:
        if role.saved_environment is not None:
            _restore(role.saved_environment)
        shutil.rmtree(role.directory, ignore_errors=True)
    if not children:
        return own, []
    combined = Combined(max_blocks=max_blocks)
    combined.add(own, process=own.pid)
    for child in children:
        if child.session is not None:
            combined.add(child.session, process=child.pid)
    lines = process_lines(own, children)
    LAST_PROCESS_LINES[:] = lines
    return combined.session(), lines


def _figures(session: Session) -> str:
    loops = len(session.loops)
    if not loops:
        return "no event loop"
    blocks = sum(h.count for h in session.hotspots)
    total = sum(h.total_ms for h in session.hotspots)
    return (f"{loops} loop{'s' if loops != 1 else ''}, {blocks} block"
            f"{'s' if blocks != 1 else ''} ({total:.0f} ms)")


def _command(argv: tuple[str, ...]) -> str:
    text = " ".join(argv)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 60 else text[:57] + "..."


def process_lines(own: Session, children: list[Child]) -> list[str]:
    """The summary's account of the processes: one line per process, then the total."""
    reported = [c for c in children if c.session is not None]
    lost = [c for c in children if c.session is None]
    lines = ["Processes",
             f"  pid {own.pid}  (this one)  {_figures(own)}  {_command((describe(),))}"]
    for child in reported:
        assert child.session is not None
        lines.append(f"  pid {child.pid}  {_figures(child.session)}  {_command(child.argv)}")
    for child in lost:
        lines.append(f"  pid {child.pid}  started, left no report (killed, or still "
                     f"running)  {_command(child.argv)}")
    traced = 1 + len(reported)
    tail = f", {len(lost)} started but left no report" if lost else ""
    lines.append(f"looptrace: {traced} process{'es' if traced != 1 else ''} traced{tail}")
    return lines


def register_multiprocessing_exit(stop: Callable[[], object]) -> None:
    """In a forked child: make sure ``stop`` runs when a ``multiprocessing`` child ends.

    Its children end with ``os._exit``, which skips ``atexit``; they run their module's
    finalizers first. The finalizer registry is cleared when the child starts, after
    this fork hook, so the finalizer is registered from the after-fork list it runs next.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return

    def arm(_: object) -> None:
        util.Finalize(None, stop, exitpriority=0)

    util.register_after_fork(_ARM_TOKEN, arm)


class _Token:
    """A weak-referenceable key for ``multiprocessing.util.register_after_fork``."""


_ARM_TOKEN = _Token()


def _warn(message: str) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(f"looptrace: {message}\n")


def bootstrap() -> None:
    """Install looptrace at the start of an interpreter the traced program started
    (called by the bootstrap ``sitecustomize``). Options come from ``LOOPTRACE_*``; the
    ``subprocesses`` option is on unless a variable turns it off, as for ``looptrace run``."""
    from . import _api

    if _helper() == "multiprocessing.resource_tracker":
        return
    explicit = {} if "LOOPTRACE_SUBPROCESSES" in os.environ else {"subprocesses": True}
    try:
        _api.install(**explicit)
    except (TypeError, ValueError) as exc:
        _warn(f"not tracing this process: {str(exc).removeprefix('looptrace: ')}")
    except Exception as exc:  # never take the host down, whatever failed
        _warn(f"not tracing this process: {type(exc).__name__}: {exc}")
