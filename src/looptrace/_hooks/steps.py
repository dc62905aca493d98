"""Step timing: every ``Handle._run`` is a step of some loop.

The hook publishes what each thread's loop is running (handle, start time) in a per-thread
slot that the watchdog reads, and hands every step at or over the threshold to
``on_long_step(handle, start_ns, end_ns, seq)`` on the loop thread. asyncio's own exception
handling is untouched: the Python hooks call the original ``_run``; the C hook, for the
stdlib's own handle classes, runs the step inline (as ``Handle._run`` does) and hands a
callback's exception to the original ``_run`` to report, so the message, the handler's
context and the traceback are asyncio's (see "inline steps" in ``_speedups.c``).

Three implementations share that contract:

- the C ``StepHook`` (``looptrace._speedups``), the default when it was built;
- :class:`PythonStepHook`, the same in pure Python (``accelerator=False`` or no compiler);
- :class:`FullStepHook`, which also records every step for timelines (``mode="full"``),
  and its C twin ``looptrace._speedups.FullStepHook`` (registered as a virtual subclass, so
  ``isinstance(hook, FullStepHook)`` holds for both).

In full mode each thread's slot has a ring of plain integers, three per step (start_ns,
duration_ns, owner id; step ``k`` at ``(k % ring_capacity) * 3``), and ``ring_written``:
``memoryview(slot.ring)`` lets an exporter copy the steps written since its last visit.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
from abc import ABCMeta
from array import array
from asyncio import events
from collections.abc import Callable, Collection
from time import perf_counter_ns
from typing import Any, Protocol

from .owners import OwnerTable

OnLongStep = Callable[[Any, int, int, int], None]


class Slot(Protocol):
    """What one thread's loop is running now. Written by the hook, read by the watchdog."""

    @property
    def handle(self) -> Any: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def blocks(self) -> int: ...
    @property
    def thread_id(self) -> int: ...


class StepHook(Protocol):
    """The object installed as ``Handle._run`` plus its slot registry."""

    enabled: int | bool
    threshold_ns: int

    @property
    def faults(self) -> int: ...
    def slots(self) -> list[Any]: ...
    def current_slot(self) -> Any: ...
    def prune(self, alive: Collection[int], /) -> None: ...


class PythonSlot:
    """Pure-Python twin of the C ``StepSlot``."""

    __slots__ = ("blocks", "handle", "ring", "ring_written", "seq", "start_ns", "thread_id")

    def __init__(self, thread_id: int) -> None:
        self.handle: Any = None
        self.start_ns = 0
        self.seq = 0
        self.blocks = 0
        self.thread_id = thread_id
        self.ring: array[int] | None = None
        self.ring_written = 0


class PythonStepHook:
    """Pure-Python twin of the C ``StepHook``; :attr:`method` goes into ``Handle._run``."""

    def __init__(self, original: Callable[[Any], Any], on_long_step: OnLongStep,
                 threshold_ns: int) -> None:
        self.original = original
        self.on_long_step = on_long_step
        self.threshold_ns = threshold_ns
        self.enabled: int | bool = True
        self.faults = 0
        self._registry: dict[int, PythonSlot] = {}
        self._local = threading.local()
        self.method: Callable[[Any], Any] = self._build()

    def _new_slot(self) -> PythonSlot:
        ident = threading.get_ident()
        slot = self._registry.get(ident)
        if slot is None:
            slot = self._registry[ident] = PythonSlot(ident)
        self._local.slot = slot
        return slot

    def current_slot(self) -> PythonSlot:
        try:
            slot: PythonSlot = self._local.slot
        except AttributeError:
            slot = self._new_slot()
        return slot

    def slots(self) -> list[PythonSlot]:
        return list(self._registry.values())

    def prune(self, alive: Collection[int], /) -> None:
        for ident in list(self._registry):
            if ident not in alive:
                del self._registry[ident]

    def _build(self) -> Callable[[Any], Any]:
        hook = self
        original = self.original
        local = self._local
        new_slot = self._new_slot
        clock = perf_counter_ns

        def _run(handle: Any) -> Any:
            if not hook.enabled:
                return original(handle)
            try:
                slot = local.slot
            except AttributeError:
                slot = new_slot()
            outer_handle = slot.handle
            outer_start = slot.start_ns
            slot.seq = seq = slot.seq + 1
            slot.handle = handle
            slot.start_ns = start = clock()
            try:
                return original(handle)
            finally:
                end = clock()
                slot.handle = outer_handle
                slot.start_ns = outer_start
                if end - start >= hook.threshold_ns and hook.enabled:
                    slot.blocks += 1
                    try:
                        hook.on_long_step(handle, start, end, seq)
                    except Exception:  # never into the program; the tracer reports faults
                        hook.faults += 1

        _run.__wrapped__ = original  # type: ignore[attr-defined]
        return _run


class FullStepHook(PythonStepHook, metaclass=ABCMeta):
    """Also records every step, (start_ns, duration_ns, owner id), in a per-thread ring, and
    the busy time and step count of each owner (task or callback)."""

    def __init__(self, original: Callable[[Any], Any], on_long_step: OnLongStep,
                 threshold_ns: int, owners: OwnerTable, ring_capacity: int) -> None:
        self.owners = owners
        self.ring_capacity = ring_capacity
        super().__init__(original, on_long_step, threshold_ns)

    def _new_slot(self) -> PythonSlot:
        slot = super()._new_slot()
        if slot.ring is None:
            slot.ring = array("q", bytes(8 * 3 * self.ring_capacity))
        return slot

    def ring(self, slot: PythonSlot) -> list[tuple[int, int, int]]:
        """The kept steps of one thread, oldest first."""
        ring = slot.ring
        if ring is None:
            return []
        cap = self.ring_capacity
        count = min(slot.ring_written, cap)
        first = slot.ring_written - count
        out = []
        for k in range(first, first + count):
            i = (k % cap) * 3
            out.append((ring[i], ring[i + 1], ring[i + 2]))
        return out

    def _build(self) -> Callable[[Any], Any]:  # noqa: PLR0915 - the hot path, inlined
        hook = self
        original = self.original
        local = self._local
        new_slot = self._new_slot
        clock = perf_counter_ns
        owners = self.owners
        ids = owners.ids
        task_types = owners.task_types
        register = owners.register
        busy = owners.busy_ns
        steps = owners.steps
        scheduled = owners.scheduled_ns
        max_step = owners.max_step_ns
        ready = owners.ready
        finished = owners.finished
        cap = self.ring_capacity

        def _run(handle: Any) -> Any:
            if not hook.enabled:
                return original(handle)
            try:
                slot = local.slot
            except AttributeError:
                slot = new_slot()
            outer_handle = slot.handle
            outer_start = slot.start_ns
            slot.seq = seq = slot.seq + 1
            slot.handle = handle
            slot.start_ns = start = clock()
            try:
                return original(handle)
            finally:
                end = clock()
                slot.handle = outer_handle
                slot.start_ns = outer_start
                try:
                    duration = end - start
                    callback = handle._callback
                    owner: Any = getattr(callback, "__self__", None)
                    is_task = owner.__class__ in task_types
                    if is_task:
                        key: Any = id(owner)
                    else:
                        key = getattr(callback, "__qualname__", None) or type(callback)
                    oid = ids.get(key)
                    if oid is None:
                        oid = register(key, owner, callback)
                    busy[oid] += duration
                    steps[oid] += 1
                    if duration > max_step[oid]:  # noqa: PLR1730 - no call on the hot path
                        max_step[oid] = duration
                    if is_task:
                        # Marked by call_soon (_hooks/tasks.py); a wake the step made of
                        # its own task is another handle, left for the next step.
                        ready_ns = ready.pop(id(handle), None)
                        if ready_ns is not None:
                            scheduled[oid] += start - ready_ns
                        if owner.done():
                            finished(owner, oid, end)
                    ring = slot.ring
                    i = (slot.ring_written % cap) * 3
                    ring[i] = start
                    ring[i + 1] = duration
                    ring[i + 2] = oid
                    slot.ring_written += 1
                    if duration >= hook.threshold_ns and hook.enabled:
                        slot.blocks += 1
                        hook.on_long_step(handle, start, end, seq)
                except Exception:  # never into the program; the tracer reports faults
                    hook.faults += 1

        _run.__wrapped__ = original  # type: ignore[attr-defined]
        return _run


def make_step_hook(original: Callable[[Any], Any], on_long_step: OnLongStep, threshold_ns: int,
                   *, accelerated: bool, owners: OwnerTable | None = None,
                   ring_capacity: int = 0) -> tuple[Any, StepHook]:
    """Return ``(method for Handle._run, hook)`` for the mode asked.

    ``owners`` selects full mode. The C hook is used when asked for and importable.
    """
    if owners is not None:
        if accelerated:
            try:
                from looptrace._speedups import FullStepHook as CFullStepHook
            except ImportError:
                pass
            else:
                c_full = CFullStepHook(original, on_long_step, threshold_ns, owners,
                                       ring_capacity)
                _run_inline_when_stdlib(c_full, original)
                return c_full, c_full
        full = FullStepHook(original, on_long_step, threshold_ns, owners, ring_capacity)
        return full.method, full
    if accelerated:
        try:
            from looptrace._speedups import StepHook as CStepHook
        except ImportError:
            pass
        else:
            c_hook = CStepHook(original, on_long_step, threshold_ns)
            _run_inline_when_stdlib(c_hook, original)
            return c_hook, c_hook
    py_hook = PythonStepHook(original, on_long_step, threshold_ns)
    return py_hook.method, py_hook


def _run_inline_when_stdlib(hook: Any, original: Callable[[Any], Any]) -> None:
    """Let the C hook run steps itself, as ``Handle._run`` does, when ``original`` is the
    standard library's own ``_run`` of Python 3.11-3.13 (whose body is one call and an
    except block): that saves the interpreter entry for ``_run``, about half of the hook's
    cost per step. An exception still goes through the original ``_run``, so asyncio
    reports it exactly as always. Anything else (someone else's patch, a newer Python)
    keeps the plain call of the original."""
    code = getattr(original, "__code__", None)
    if (sys.version_info >= (3, 14) or code is None
            or getattr(original, "__qualname__", None) != "Handle._run"
            or os.path.normcase(code.co_filename) != os.path.normcase(events.__file__)):
        return
    slots = vars(events.Handle)
    hook.enable_inline((events.Handle, events.TimerHandle),
                       (slots["_callback"], slots["_args"], slots["_context"]),
                       contextvars.Context.run)


def _register_c_full_hook() -> None:
    try:
        from looptrace._speedups import FullStepHook as CFullStepHook
    except ImportError:
        return
    FullStepHook.register(CFullStepHook)


_register_c_full_hook()

