"""Which frame is the user's: the line a block is reported at.

A stack sampled from a blocked loop runs through asyncio, maybe a framework, the user's
code, then a library or the standard library where the time is actually spent. The site
of a block is the innermost frame of *user* code: not the standard library, not an
installed package (site-packages), not looptrace. The full stack is kept beside it.

Only the frames of the step count: those above the loop's own frames (``Handle._run``,
``_run_once``, ``run_until_complete``, ``Runner.run``). Below them is whoever started the
loop (``uvicorn/server.py``, the program's ``main``), which is never where a step blocked.
A step with no user code at all (a framework serialising a response, an application
installed as a package) is sited at its innermost installed-package frame, then its
innermost frame; the user's frame that called the library is in the stack (and named by
the callee when the library was called from user code). A sample that shows no frame of
the step (taken as the step ended, the loop already back in its own code) has no site.

Nothing here touches the file system: these functions run on the loop thread (the step
hook's slow path, the probes) where a ``getcwd`` or ``stat`` is a blocking call, and tools
such as blockbuster raise on it. A relative ``co_filename`` (Cython modules, ``compile()``
with a relative name) is joined to the working directory read once, when looptrace is
installed; ``os.path.abspath`` would call ``getcwd`` on every use.
"""

from __future__ import annotations

import os
import site
import sysconfig
from asyncio import base_events, events, runners
from types import CodeType, FrameType

from looptrace.events import CodeLocation

USER, LIBRARY, STDLIB, LOOPTRACE = range(4)

_MAX_DEPTH = 128

_OWN_FILES: set[str] = set()

_base_directory: str | None = None
"""The working directory relative file names are joined to (read by :class:`CodeMap`)."""

_absolute_paths: dict[str, str] = {}
"""co_filename -> its absolute path: one entry per source file, bounded all the same."""

_MAX_PATHS = 10_000


def remember_working_directory() -> None:
    """Read the working directory once, off the hot path (at install)."""
    global _base_directory
    try:
        directory = os.getcwd()
    except Exception:  # deleted, or a tool that forbids the call here: keep the last one
        return
    if directory != _base_directory:
        _base_directory = directory
        _absolute_paths.clear()


def absolute(filename: str) -> str:
    """``filename`` made absolute and normalised as ``os.path.abspath`` would, without a
    system call. Pseudo-files (``<string>``) are kept as they are."""
    found = _absolute_paths.get(filename)
    if found is not None:
        return found
    if filename.startswith("<"):  # generated code may make a new name each time: no entry
        return filename
    if os.path.isabs(filename) or _base_directory is None:
        path = os.path.normpath(filename)
    else:
        path = os.path.normpath(os.path.join(_base_directory, filename))
    if len(_absolute_paths) >= _MAX_PATHS:
        _absolute_paths.clear()
    _absolute_paths[filename] = path
    return path


def treat_as_looptrace(path: str) -> None:
    """Count a file outside the package as looptrace's own (the ``looptrace`` launcher
    script), so its frames are never taken for the program's."""
    remember_working_directory()
    _OWN_FILES.add(os.path.normcase(absolute(path)))


def _prefixes(paths: set[str]) -> tuple[str, ...]:
    cleaned = {os.path.normcase(absolute(p)) for p in paths if p}
    # Longest first, so site-packages inside the stdlib directory wins over the stdlib.
    return tuple(sorted((p.rstrip(os.sep) + os.sep for p in cleaned), key=len, reverse=True))


class CodeMap:
    """Classifies source files as user code, installed packages, stdlib or looptrace."""

    def __init__(self) -> None:
        remember_working_directory()
        paths = sysconfig.get_paths()
        library = {paths.get("purelib", ""), paths.get("platlib", "")}
        try:
            library.update(site.getsitepackages())
            library.add(site.getusersitepackages())
        except AttributeError:  # some embedded interpreters lack these
            pass
        stdlib = {paths.get("stdlib", ""), paths.get("platstdlib", "")}
        self._looptrace = _prefixes({os.path.dirname(os.path.dirname(__file__))})
        self._library = _prefixes(library)
        self._stdlib = _prefixes(stdlib)
        self._cache: dict[str, int] = {}
        self.loop_codes = _loop_codes()
        # The same frames as the native sampler sees them: (file, qualified name).
        self.loop_names = frozenset((c.co_filename, c.co_qualname) for c in self.loop_codes)

    def category(self, filename: str) -> int:
        found = self._cache.get(filename)
        if found is None:
            found = self._cache[filename] = self._classify(filename)
        return found

    def _classify(self, filename: str) -> int:
        if filename.startswith("<"):
            # <frozen importlib._bootstrap> is the stdlib; <string>, <stdin> are the user's.
            return STDLIB if filename.startswith("<frozen") else USER
        path = os.path.normcase(absolute(filename))
        if path.startswith(self._looptrace) or path in _OWN_FILES:
            return LOOPTRACE
        if path.startswith(self._library):
            return LIBRARY
        if f"{os.sep}site-packages{os.sep}" in path or f"{os.sep}dist-packages{os.sep}" in path:
            return LIBRARY
        if path.startswith(self._stdlib):
            return STDLIB
        return USER


def _loop_codes() -> frozenset[CodeType]:
    """The code of the frames that run a loop: everything above them is a step."""
    loop = base_events.BaseEventLoop
    functions = (events.Handle._run, getattr(loop, "_run_once", None), loop.run_forever,
                 loop.run_until_complete, runners.Runner.run)
    # A function replaced by C code (or missing on another version) has no __code__.
    return frozenset(code for f in functions if (code := getattr(f, "__code__", None)))


def location(frame: FrameType) -> CodeLocation:
    code = frame.f_code
    return CodeLocation(absolute(code.co_filename), frame.f_lineno or code.co_firstlineno,
                        code.co_qualname)


def qualified_name(frame: FrameType) -> str:
    """``module.Qualname`` of the function a frame runs, e.g. ``http.client.HTTPResponse.read``."""
    module = frame.f_globals.get("__name__", "?")
    return f"{module}.{frame.f_code.co_qualname}"


def locate(frame: FrameType | None, codemap: CodeMap
           ) -> tuple[CodeLocation | None, str | None, tuple[CodeLocation, ...]]:
    """Return ``(site, callee, stack)`` for the stack that ends at ``frame`` (innermost).

    ``callee`` names the function the site was calling when that function is Python code
    (``http.client.HTTPResponse.read``); ``stack`` runs outermost first, without looptrace.
    """
    frames: list[FrameType] = []
    current = frame
    while current is not None and len(frames) < _MAX_DEPTH:
        frames.append(current)
        current = current.f_back
    categories = [codemap.category(f.f_code.co_filename) for f in frames]
    chosen = _site_index(frames, categories, codemap.loop_codes)
    site_location: CodeLocation | None = None
    callee: str | None = None
    if chosen >= 0:
        site_location = location(frames[chosen])
        if chosen > 0 and categories[chosen - 1] != LOOPTRACE:
            callee = qualified_name(frames[chosen - 1])
    stack = tuple(location(f) for f, category in zip(reversed(frames), reversed(categories),
                                                     strict=True) if category != LOOPTRACE)
    return site_location, callee, stack


def _site_index(frames: list[FrameType], categories: list[int],
                loop_codes: frozenset[CodeType]) -> int:
    """Index (innermost first) of the site's frame among the step's frames, or -1."""
    step_end = next((i for i, f in enumerate(frames) if f.f_code in loop_codes), len(frames))
    for wanted in (USER, LIBRARY, STDLIB):
        for index in range(step_end):
            if categories[index] == wanted:
                return index
    return -1

