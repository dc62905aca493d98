"""Executor calls: every ``loop.run_in_executor`` (and so every ``asyncio.to_thread``)
timed from submit to start (the queue wait: no worker was free) and from start to end (the
run), per call site.

``BaseEventLoop.run_in_executor`` is replaced at the class level while looptrace is
installed. On the loop thread, at the call, the wrapper reads the clock, the calling site
(the innermost frame that is neither asyncio's, functools' nor ours), the current task and
span, and hands the pool a small closure around the function instead of the function. In
the worker the closure reads the clock, calls the function with the same arguments, and
appends one tuple to a deque (an atomic append: the worker takes no lock). The tuples are
folded into the per-site table off the loop threads (the watchdog's housekeeping, a
snapshot), or on a loop thread only if nobody else holds the table's lock at that instant
(never waited for).

What the closure changes for the program: nothing it can see. The function gets the same
arguments, its return value and exception reach the awaiting code unchanged, and
``to_thread``'s ``functools.partial(ctx.run, func, ...)`` runs inside the closure, so the
function still runs in the caller's context. Only thread pools are timed: a
ProcessPoolExecutor (or any pool that pickles the function) gets the call untouched.

uvloop's loop implements ``run_in_executor`` in Cython, out of reach of a class patch: its
loops carry ``executor-calls`` in their ``missing`` list, and their calls are not counted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import sys
import threading
from asyncio import base_events, coroutines
from collections import deque
from collections.abc import Callable
from time import perf_counter_ns
from types import CodeType, FrameType
from typing import Any

from looptrace._histogram import bucket_index, bucket_low
from looptrace._text import printable
from looptrace.events import CodeLocation, ExecutorFigures

from . import context
from ._patch import Patch, PatchSet
from .frames import LOOPTRACE, CodeMap, absolute

MAX_SITES = 200
"""Sites kept; calls from further sites are counted in ``dropped["executor_calls"]``."""
_FOLD_AT = 4096
"""Finished calls waiting to be folded before a loop thread folds some itself."""
_FOLD_ON_LOOP = 512
"""At most this many per submit on a loop thread (a few hundred microseconds)."""
_MAX_DEPTH = 32
_MAX_TASKS = 8
_MAX_FILES = 10_000

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_SKIPPED_FILES = frozenset({functools.__file__, contextvars.__file__})
_PARTIAL = functools.partial
_CONTEXT = contextvars.Context
_THREAD_POOL = concurrent.futures.ThreadPoolExecutor
_current_task = asyncio.current_task
_span_ids = context.span_ids
_INTERPRETER_POOL: Any = getattr(concurrent.futures, "InterpreterPoolExecutor", None)

Call = tuple["_Site", int, "str | None", "tuple[int, int, bool] | None"]
"""(site, submit_ns, task, span ids): one call, as submitted."""
Done = tuple[Call, int, int]
"""(call, start_ns, end_ns): one finished call."""


class _Site:
    """One row of the table. ``calls``, ``workers`` and ``peak_depth`` are written on the
    loop thread at submit; the rest only by :meth:`ExecutorCalls.fold`, under its lock."""

    __slots__ = ("calls", "completed", "function", "location", "peak_depth", "queue_hist",
                 "queue_max_ns", "queue_ns", "run_hist", "run_max_ns", "run_ns", "span",
                 "task", "tasks", "workers")

    def __init__(self, location: CodeLocation | None, function: str) -> None:
        self.location = location
        self.function = function
        self.calls = 0
        self.completed = 0
        self.queue_ns = 0
        self.queue_max_ns = -1
        self.run_ns = 0
        self.run_max_ns = 0
        self.workers: int | None = None
        self.peak_depth = 0
        self.task: str | None = None
        self.span: tuple[int, int, bool] | None = None
        self.tasks: dict[str, None] = {}
        self.queue_hist: dict[int, int] = {}
        self.run_hist: dict[int, int] = {}

    def add(self, queue_ns: int, run_ns: int, task: str | None,
            span: tuple[int, int, bool] | None) -> None:
        self.completed += 1
        self.queue_ns += queue_ns
        self.run_ns += run_ns
        if task is not None and task not in self.tasks and len(self.tasks) < _MAX_TASKS:
            self.tasks[task] = None
        if queue_ns > self.queue_max_ns:
            # The call that waited longest names the task and request: the one to look at.
            self.queue_max_ns = queue_ns
            self.task, self.span = (printable(task) if task is not None else None), span
        self.run_max_ns = max(self.run_max_ns, run_ns)
        low = bucket_low(bucket_index(queue_ns))
        self.queue_hist[low] = self.queue_hist.get(low, 0) + 1
        low = bucket_low(bucket_index(run_ns))
        self.run_hist[low] = self.run_hist.get(low, 0) + 1

    def figures(self) -> ExecutorFigures:
        span = self.span
        return ExecutorFigures(
            site=self.location, function=self.function, calls=self.calls,
            completed=self.completed, queue_ns=self.queue_ns,
            queue_max_ns=max(self.queue_max_ns, 0), run_ns=self.run_ns,
            run_max_ns=self.run_max_ns, workers=self.workers, peak_queue_depth=self.peak_depth,
            task=self.task, trace_id=span[0] if span else None,
            span_id=span[1] if span else None,
            queue_histogram=tuple(sorted(self.queue_hist.items())),
            run_histogram=tuple(sorted(self.run_hist.items())),
            tasks=tuple(printable(name) for name in self.tasks))


def _unwrapped(func: Any) -> Any:
    """The function inside ``functools.partial`` objects and inside ``to_thread``'s
    ``partial(ctx.run, func, ...)``."""
    depth = 0
    while func.__class__ is _PARTIAL and depth < 8:
        inner = func.func
        if getattr(inner, "__self__", None).__class__ is _CONTEXT and func.args:
            func = func.args[0]  # Context.run(func, *args)
        else:
            func = inner
        depth += 1
    return func


def function_name(func: Any) -> str:
    """``module.Qualname`` of the function a pool runs (see :func:`_unwrapped`)."""
    func = _unwrapped(func)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _thread_pool(executor: Any) -> bool:
    """Whether ``executor`` runs the function in a thread of this process, so that a
    closure may stand in for it (a process pool pickles it). The loop's default executor
    is always a ThreadPoolExecutor (``set_default_executor`` refuses anything else)."""
    return isinstance(executor, concurrent.futures.ThreadPoolExecutor) and not (
        _INTERPRETER_POOL is not None and isinstance(executor, _INTERPRETER_POOL))


class ExecutorCalls:
    """The patch on ``BaseEventLoop.run_in_executor`` and the per-site table it fills."""

    def __init__(self, codemap: CodeMap, on_fault: Callable[[BaseException], None],
                 max_sites: int = MAX_SITES) -> None:
        self._codemap = codemap
        self._on_fault = on_fault
        self._max_sites = max_sites
        self._sites: dict[tuple[CodeLocation | None, str], _Site] = {}
        self._keys: dict[tuple[int, int, object, object], tuple[CodeType | None, _Site]] = {}
        self._done: deque[Done] = deque()
        self._lock = threading.Lock()  # folding only; a loop thread never waits for it
        self._skip: dict[str, bool] = {}
        self._patches = PatchSet()
        self.enabled = False
        self.dropped = 0
        """Calls from sites beyond the table."""

    # -- lifecycle

    def install(self) -> None:
        original = vars(base_events.BaseEventLoop)["run_in_executor"]
        self._patches.apply(Patch(base_events.BaseEventLoop, "run_in_executor",
                                  _make_wrapper(original, self)))
        self.enabled = True

    def revert(self) -> None:
        """Unpatch; calls in flight still finish (their closures only append)."""
        self.enabled = False
        self._patches.revert_all()

    def fault(self, exc: BaseException) -> None:
        """An error of ours: the calls go on untimed from now on."""
        self.enabled = False
        self._on_fault(exc)

    # -- on the loop thread, at the call

    def prepare(self, loop: Any, executor: Any, func: Any, caller: FrameType | None
                ) -> tuple[_Site, Callable[..., Any]] | None:
        """The site's row and what to submit instead of ``func``; None: submit ``func``
        itself (not a thread pool, a table full, a debug-mode check to keep).

        Every line here runs once per executor call, right after a thread handoff (cold
        caches): it is written flat, without helper calls on the common path."""
        if executor is not None and executor.__class__ is not _THREAD_POOL \
                and not _thread_pool(executor):
            return None
        if loop._debug and (not callable(func) or coroutines.iscoroutine(func) or
                            coroutines.iscoroutinefunction(func)):
            return None  # run_in_executor's own check raises its TypeError, as before
        frame = caller
        skip = self._skip
        depth = 0
        while frame is not None and depth < _MAX_DEPTH:
            filename = frame.f_code.co_filename
            skipped = skip.get(filename)
            if skipped is None:
                skipped = self._skipped(filename)
            if not skipped:
                break
            frame = frame.f_back
            depth += 1
        inner = func
        if func.__class__ is _PARTIAL:
            inner = _unwrapped(func)
        # Cheap to hash on every call: a code object hashes its whole content and
        # f_lineno decodes the line table, so the key is the code's id and the instruction
        # offset (the entry keeps the code, so its id is not reused while the entry
        # lives), and the function's names (strings cache their hash).
        code = frame.f_code if frame is not None else None
        key = (id(code), frame.f_lasti if frame is not None else 0,
               getattr(inner, "__qualname__", None), getattr(inner, "__module__", None))
        entry = self._keys.get(key)
        if entry is not None and entry[0] is code:
            site = entry[1]
        else:
            found = self._new_key(key, code, frame, inner)
            if found is None:
                return None
            site = found
        task = _current_task(loop)
        call = (site, perf_counter_ns(), task.get_name() if task is not None else None,
                _span_ids(None))
        return site, _PARTIAL(_timed_call, self._done.append, call, func)

    def submitted(self, loop: Any, executor: Any, site: _Site) -> None:
        """After the pool took the call: the pool's size and queue (the loop's default
        pool exists only now, the first call made it)."""
        site.calls += 1
        pool = executor if executor is not None else loop._default_executor
        workers = getattr(pool, "_max_workers", None)
        if workers.__class__ is int:
            site.workers = workers
        queue = getattr(pool, "_work_queue", None)
        if queue is not None:
            depth = queue.qsize()
            site.peak_depth = max(site.peak_depth, depth)
        if len(self._done) > _FOLD_AT:
            self.fold(wait=False, limit=_FOLD_ON_LOOP)

    def _new_key(self, key: tuple[int, int, object, object], code: CodeType | None,
                 frame: FrameType | None, inner: Any) -> _Site | None:
        """A call site seen for the first time under this key: its row (a line that calls
        the same function from two instructions has one row)."""
        location = None if frame is None or code is None else CodeLocation(
            absolute(code.co_filename), frame.f_lineno or code.co_firstlineno,
            code.co_qualname)
        function = function_name(inner)
        site = self._sites.get((location, function))
        if site is None:
            if len(self._sites) >= self._max_sites:
                self.dropped += 1
                return None
            site = self._sites[(location, function)] = _Site(location, function)
        if len(self._keys) >= 4 * self._max_sites:
            self._keys.clear()  # a program that makes code objects on the fly: start over
        self._keys[key] = (code, site)
        return site

    def _skipped(self, filename: str) -> bool:
        found = self._skip.get(filename)
        if found is None:
            found = (filename.startswith(_ASYNCIO_DIR) or filename in _SKIPPED_FILES
                     or self._codemap.category(filename) == LOOPTRACE)
            if len(self._skip) >= _MAX_FILES:
                self._skip.clear()
            self._skip[filename] = found
        return found

    # -- off the loop threads

    def fold(self, *, wait: bool = True, limit: int = -1) -> None:
        """Add the finished calls to their sites. ``wait=False`` (on a loop thread): only
        if nobody else is folding right now, and at most ``limit`` of them."""
        if not self._lock.acquire(blocking=wait):
            return
        try:
            done = self._done
            while done and limit != 0:
                limit -= 1
                (site, submit_ns, task, span), start_ns, end_ns = done.popleft()
                site.add(max(start_ns - submit_ns, 0), end_ns - start_ns, task, span)
        except Exception as exc:  # the watchdog's housekeeping or a snapshot goes on
            self.fault(exc)
        finally:
            self._lock.release()

    def figures(self) -> list[ExecutorFigures]:
        """Every site's figures so far (folds first); none after an error of ours."""
        self.fold()
        try:
            with self._lock:
                return [site.figures() for site in list(self._sites.values())]
        except Exception as exc:
            self.fault(exc)
            return []


def _timed_call(append: Callable[[Done], None], call: Call, func: Callable[..., Any],
                *args: Any) -> Any:
    """In the worker: the function runs as if called directly; one atomic append after."""
    start = perf_counter_ns()
    try:
        return func(*args)
    finally:
        append((call, start, perf_counter_ns()))


def _make_wrapper(original: Callable[..., Any], calls: ExecutorCalls) -> Callable[..., Any]:
    getframe = sys._getframe

    @functools.wraps(original)
    def run_in_executor(self: Any, executor: Any, func: Any, *args: Any) -> Any:
        prepared = None
        if calls.enabled:
            try:
                prepared = calls.prepare(self, executor, func, getframe(1))
            except Exception as exc:  # never raise into the program; counted
                calls.fault(exc)
        if prepared is None:
            return original(self, executor, func, *args)
        site, timed = prepared
        future = original(self, executor, timed, *args)
        try:
            calls.submitted(self, executor, site)
        except Exception as exc:
            calls.fault(exc)
        return future

    run_in_executor.__looptrace_executor__ = True  # type: ignore[attr-defined]
    return run_in_executor
