"""Who a step belongs to: a task (by name and real coroutine) or a plain callback."""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from asyncio import tasks as _tasks
from dataclasses import dataclass
from time import perf_counter_ns
from types import CoroutineType, FrameType, GeneratorType
from typing import Any

from looptrace._text import printable
from looptrace.events import TaskFigures, task_group

from .frames import USER, CodeMap

_OTEL_WRAPPER = "trace_coroutine"  # opentelemetry-instrumentation-asyncio's coroutine wrapper

TASK_TYPES: set[type] = {asyncio.Task}
if hasattr(_tasks, "_PyTask"):
    TASK_TYPES.add(_tasks._PyTask)


def task_of(callback: Any) -> Any:
    """The task whose step ``callback`` is, or None for a plain callback."""
    owner = getattr(callback, "__self__", None)
    if owner.__class__ in TASK_TYPES:
        return owner
    if isinstance(owner, asyncio.Future) and hasattr(owner, "get_coro"):
        TASK_TYPES.add(owner.__class__)  # a Task subclass: learn it once
        return owner
    return None


def real_coroutine(task: Any) -> Any:
    """The task's coroutine, seen through OpenTelemetry's ``trace_coroutine`` wrapper,
    which would otherwise name every instrumented task ``AsyncioInstrumentor.trace_coroutine``."""
    coro = task.get_coro()
    for _ in range(8):
        # A coroutine object of a library's own making may have any __qualname__ (None
        # was seen in anyio's test suite): only a string can name the wrapper.
        qualname = getattr(coro, "__qualname__", None)
        if not isinstance(qualname, str) or not qualname.endswith(_OTEL_WRAPPER):
            break
        frame = getattr(coro, "cr_frame", None)
        inner = frame.f_locals.get("coro") if frame is not None else None
        if inner is None:
            inner = getattr(coro, "cr_await", None)
        if inner is None:
            break
        coro = inner
    return coro


def coroutine_name(task: Any) -> str:
    coro = real_coroutine(task)
    qualname = getattr(coro, "__qualname__", None)
    return qualname if isinstance(qualname, str) and qualname else type(coro).__qualname__


def task_name(task: Any) -> str:
    # get_name() may be overridden to return anything, even what str() cannot print.
    return printable(task.get_name())


def unwrap_partial(callback: Any) -> Any:
    """The function inside (nested) ``functools.partial`` objects."""
    for _ in range(8):
        if not isinstance(callback, functools.partial):
            break
        callback = callback.func
    return callback


def callback_name(callback: Any) -> str:
    """``module.Qualname`` of a callback, looking through ``functools.partial``."""
    callback = unwrap_partial(callback)
    qualname = getattr(callback, "__qualname__", None)
    if qualname is None:
        return type(callback).__qualname__
    module = getattr(callback, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


def await_point(task: Any, codemap: CodeMap) -> FrameType | None:
    """The innermost user frame where a suspended task waits (its current ``await``)."""
    chosen: FrameType | None = None
    awaitable = real_coroutine(task)
    for _ in range(64):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            break
        if chosen is None or codemap.category(frame.f_code.co_filename) == USER:
            chosen = frame
        if isinstance(awaitable, CoroutineType):
            awaitable = awaitable.cr_await
        elif isinstance(awaitable, GeneratorType):
            awaitable = awaitable.gi_yieldfrom
        else:
            break
    return chosen


def task_row(task: Any) -> tuple[str, str]:
    """Group tasks for the per-task table: default names (``Task-123``) are not identities,
    so such tasks group by coroutine; named tasks keep their name."""
    return task_group(task_name(task)), coroutine_name(task)


@dataclass(slots=True)
class OwnerRow:
    """A row of the per-task table: a group of tasks, or one callback function."""

    kind: str  # "task" or "callback"
    name: str
    coroutine: str | None


class OwnerTable:
    """Full mode: maps each step's owner to a small integer, and sums busy time per owner.

    The hot path reads :attr:`ids` and bumps :attr:`busy_ns`/:attr:`steps` (and, for the
    per-task time of ``_hooks/tasks.py``, :attr:`scheduled_ns`, :attr:`max_step_ns`, the
    :attr:`ready` marks and :meth:`finished`); everything else (naming, weak references
    that forget a dead task's id) happens in :meth:`register`, once per task or callback
    function.
    """

    OTHER = 0
    MAX_READY = 100_000
    """Ready marks kept (a mark whose handle never runs, on a loop closed with ready
    handles, would stay): past this the marks are dropped, counted in ``ready_dropped``."""

    COUNTS = ("created", "done", "cancelled", "never_retrieved", "destroyed_pending",
              "pending_at_close", "self_wakes")
    """Per-row counters of the task lifecycle (see ``_hooks/tasks.py``)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.task_types = TASK_TYPES
        self.ids: dict[Any, int] = {}
        self.rows: list[OwnerRow] = [OwnerRow("other", "(more tasks than max_tasks)", None)]
        self.busy_ns: list[int] = [0]
        self.steps: list[int] = [0]
        self.scheduled_ns: list[int] = [0]
        self.max_step_ns: list[int] = [0]
        self.lifetime_ns: list[int] = [0]
        self.counts: dict[str, list[int]] = {name: [0] for name in self.COUNTS}
        self.ready: dict[int, int] = {}
        """id(handle) -> when ``call_soon`` made a task's step ready (perf_counter ns)."""
        self.born: dict[int, int] = {}
        """id(task) -> its first ready time, for the tasks alive."""
        self.ready_dropped = 0
        self.dropped = 0
        self._by_row: dict[tuple[str, str, str | None], int] = {}
        self._refs: dict[int, weakref.ref[Any]] = {}
        self._lock = threading.RLock()  # reentrant: see _hooks/probes.py

    def register(self, key: Any, owner: Any, callback: Any) -> int:
        with self._lock:
            task = task_of(callback)
            if task is not None:
                key = id(task)
                name, coroutine = task_row(task)
                oid = self._row_id(("task", name, coroutine))
                self.counts["created"][oid] += 1
            else:
                oid = self._row_id(("callback", callback_name(callback), None))
            self.ids[key] = oid
            if task is not None:
                # When the task dies its id may be reused by another object: forget it.
                self._refs[key] = weakref.ref(task, functools.partial(self._forget, key))
            return oid

    def _row_id(self, row_key: tuple[str, str, str | None]) -> int:
        oid = self._by_row.get(row_key)
        if oid is None:
            if len(self.rows) > self.max_rows:
                self.dropped += 1
                return self.OTHER
            oid = len(self.rows)
            self.rows.append(OwnerRow(*row_key))
            for column in (self.busy_ns, self.steps, self.scheduled_ns, self.max_step_ns,
                           self.lifetime_ns, *self.counts.values()):
                column.append(0)
            self._by_row[row_key] = oid
        return oid

    def task_row_id(self, task: Any) -> int:
        """The row of ``task`` without registering it (it may be in its finaliser)."""
        with self._lock:
            oid = self.ids.get(id(task))
            if oid is None:
                name, coroutine = task_row(task)
                oid = self._row_id(("task", name, coroutine))
            return oid

    def mark_ready(self, handle: Any, now: int) -> None:
        ready = self.ready
        if len(ready) >= self.MAX_READY:
            self.ready_dropped += len(ready)
            ready.clear()
        ready[id(handle)] = now

    def finished(self, task: Any, oid: int, end_ns: int) -> None:
        """A task step ended with the task done: count it, and end its lifetime."""
        born = self.born.pop(id(task), None)
        if born is not None:
            self.lifetime_ns[oid] += end_ns - born
        self.counts["done"][oid] += 1
        if task.cancelled():
            self.counts["cancelled"][oid] += 1

    def alive_lifetime_ns(self, now: int) -> list[int]:
        """Per row: the time so far of the tasks alive (born, not finished)."""
        alive = [0] * len(self.rows)
        ids = self.ids
        for key, born in list(self.born.items()):
            oid = ids.get(key)
            if oid is not None and oid < len(alive):
                alive[oid] += now - born
        return alive

    def task_figures(self) -> list[TaskFigures]:
        """The task rows' steps, busy and scheduled time so far (for the metrics pump, off
        the loop threads: it reads lists the loop threads append to, never resizes)."""
        rows = list(self.rows)
        size = min(len(rows), len(self.steps), len(self.busy_ns), len(self.scheduled_ns))
        return [TaskFigures("task", row.name, row.coroutine, self.steps[oid],
                            self.busy_ns[oid], 0, 0, 0, scheduled_ns=self.scheduled_ns[oid])
                for oid, row in enumerate(rows[:size]) if row.kind == "task"]

    def _forget(self, key: int, _ref: object) -> None:
        oid = self.ids.pop(key, None)
        self._refs.pop(key, None)
        born = self.born.pop(key, None)
        if oid is not None and born is not None:  # died unfinished: destroyed while pending
            self.lifetime_ns[oid] += perf_counter_ns() - born
