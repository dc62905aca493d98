"""Full mode: where each task's time goes besides its steps, and how its life ended.

The step hook (``_hooks/steps.py``) sums each task's busy time; this module adds what the
step hook cannot see by itself, with class-level patches applied while looptrace is
installed in full mode (none in default mode: ``call_soon`` runs several times per step,
and default mode's budget has no room for it):

- ``BaseEventLoop.call_soon``: every wake of a task goes through it (``Task.__init__``, a
  future's done callbacks and the C ``_asyncio`` call the loop's ``call_soon`` method; a
  timer ends by setting a future). When the callback is a task's step, the handle gets a
  ready mark (``OwnerTable.ready[id(handle)] = now``); the step hook pops it when that
  handle runs and adds start - ready to the task's *scheduled* time. A wake the task makes
  of itself while its own step runs (``await asyncio.sleep(0)``, a bare ``yield``) is a
  *self-wake*. The first mark of a task is its birth, for its *idle* time (lifetime minus
  busy minus scheduled).
- ``BaseEventLoop.call_exception_handler`` (always called through): asyncio's own
  "Task exception was never retrieved" and "Task was destroyed but it is pending!".
- ``asyncio.runners._cancel_all_tasks``: the tasks still pending when ``asyncio.run``'s
  main coroutine returned (asyncio.run cancels them before closing the loop), and
  ``BaseEventLoop.close``: tasks still pending when a loop closes. Both count as *pending
  at close*, each task once.

Not measured: wakes that bypass ``call_soon`` (``call_soon_threadsafe`` with a task's step,
rare) leave that step's scheduled time out; uvloop's loop is Cython, out of reach of these
class patches: its loops carry ``task-scheduled`` in their ``missing`` list.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import weakref
from asyncio import base_events, runners, tasks
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from ._patch import Patch, PatchSet
from .owners import OwnerTable, task_of

DESTROYED_PENDING = "Task was destroyed but it is pending!"
NEVER_RETRIEVED = " exception was never retrieved"  # "Task exception was never retrieved"

_current_task = asyncio.current_task
_all_tasks = asyncio.all_tasks


def _current_task_of() -> Callable[[Any], Any]:
    """``current_task(loop)`` as cheap as it gets: on 3.11 ``asyncio.current_task`` is
    Python, over the dict ``_current_tasks`` (shared with the C tasks), whose ``get`` is C."""
    current_tasks = getattr(tasks, "_current_tasks", None)
    if sys.version_info < (3, 12) and isinstance(current_tasks, dict):
        getter: Callable[[Any], Any] = current_tasks.get
        return getter
    return _current_task


class TaskWatch:
    """The full-mode patches that feed an :class:`OwnerTable`'s per-task time and life."""

    def __init__(self, owners: OwnerTable, on_fault: Callable[[BaseException], None], *,
                 accelerated: bool = True) -> None:
        self.owners = owners
        self._accelerated = accelerated
        self._on_fault = on_fault
        self._patches = PatchSet()
        self._closed_counted: weakref.WeakSet[Any] = weakref.WeakSet()

    def install(self) -> None:
        loop_class = base_events.BaseEventLoop
        try:
            self._patches.apply(Patch(loop_class, "call_soon",
                                      self._call_soon(loop_class.call_soon)))
            self._patches.apply(Patch(loop_class, "call_exception_handler",
                                      self._exception_handler(
                                          loop_class.call_exception_handler)))
            self._patches.apply(Patch(loop_class, "close",
                                      self._counting_pending(loop_class.close)))
            original = getattr(runners, "_cancel_all_tasks", None)
            if original is not None:
                self._patches.apply(Patch(runners, "_cancel_all_tasks",
                                          self._counting_pending(original)))
        except BaseException:
            self.revert()
            raise

    def revert(self) -> None:
        self._patches.revert_all()

    # -- the patches (each calls the original whatever happens in our part)

    def _call_soon(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """The C ``ReadyMarks`` when the accelerator is asked for and built (call_soon
        runs once or twice per task step: a Python wrapper alone cost ~1 µs of a ~4 µs
        ``sleep(0)`` step), else the same in Python."""
        if self._accelerated:
            try:
                from looptrace._speedups import ReadyMarks
            except ImportError:
                pass
            else:
                marks: Callable[..., Any] = ReadyMarks(
                    original, self.owners, _current_task_of(), asyncio.Future, self._mark,
                    self._on_fault)
                return marks
        mark = self._mark
        task_types = self.owners.task_types
        watch = self

        def call_soon(self: Any, callback: Any, *args: Any, context: Any = None) -> Any:
            handle = original(self, callback, *args, context=context)
            owner = getattr(callback, "__self__", None)
            if owner is not None and (owner.__class__ in task_types
                                      or isinstance(owner, asyncio.Future)):
                try:
                    mark(self, callback, handle)
                except Exception as exc:  # never into the program: counted, then reverted
                    watch._on_fault(exc)
            return handle

        call_soon.__wrapped__ = original  # type: ignore[attr-defined]
        return call_soon

    def _mark(self, loop: Any, callback: Any, handle: Any) -> None:
        """A step of a task was made ready: mark the handle, note the task's birth, count a
        wake the task made of itself. The C ``ReadyMarks`` does the same, and calls this
        for its rare cases."""
        task = task_of(callback)
        if task is None:
            return
        owners = self.owners
        now = perf_counter_ns()
        owners.mark_ready(handle, now)
        key = id(task)
        if key not in owners.born:
            owners.born[key] = now
        if _current_task(loop) is task:
            oid = owners.ids.get(key)
            owners.counts["self_wakes"][oid if oid is not None else owners.task_row_id(task)] += 1

    def _exception_handler(self, original: Callable[..., Any]) -> Callable[..., Any]:
        watch = self

        def call_exception_handler(self: Any, context: Any) -> Any:
            try:
                watch._on_exception(context)
            except Exception as exc:
                watch._on_fault(exc)
            return original(self, context)

        call_exception_handler.__wrapped__ = original  # type: ignore[attr-defined]
        return call_exception_handler

    def _on_exception(self, context: Any) -> None:
        if not isinstance(context, dict):
            return
        message = context.get("message")
        if message == DESTROYED_PENDING:
            column, task = "destroyed_pending", context.get("task")
        elif isinstance(message, str) and message.endswith(NEVER_RETRIEVED):
            column, task = "never_retrieved", context.get("future")
        else:
            return
        if task is not None and isinstance(task, asyncio.Future) and hasattr(task, "get_coro"):
            self.owners.counts[column][self.owners.task_row_id(task)] += 1

    def _counting_pending(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """``original(loop, ...)`` (``BaseEventLoop.close``, ``runners._cancel_all_tasks``)
        after counting the loop's pending tasks; never raises into the program."""
        watch = self

        @functools.wraps(original)
        def counting(loop: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                watch._count_pending(loop)
            except Exception as exc:
                watch._on_fault(exc)
            return original(loop, *args, **kwargs)

        return counting

    def _count_pending(self, loop: Any) -> None:
        """Tasks of ``loop`` not done: counted once each, as pending at close."""
        counted = self._closed_counted
        column = self.owners.counts["pending_at_close"]
        for task in _all_tasks(loop):
            if not task.done() and task not in counted:
                counted.add(task)
                column[self.owners.task_row_id(task)] += 1
