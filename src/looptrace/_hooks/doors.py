"""The doors through which loops are found, attached and let go of, whoever creates them.

- ``asyncio.events._set_running_loop``: every asyncio loop passes it when it starts or
  stops running (``asyncio.run``, ``Runner``, ``loop_factory=``, ``run_until_complete``,
  any thread);
- ``asyncio.Runner._lazy_init``: loops from ``loop_factory=`` that are not asyncio's own
  (``uvloop.run``);
- the event-loop policy (see :mod:`.policy`);
- the loop running in the thread that calls ``install()``, and loops already running in
  other threads;
- ``BaseEventLoop.close``, to let go of a closed loop's selector.

Attaching a loop gives it a record and the best timer it allows: our ``select`` on a real
selector, the step hook alone on another asyncio loop, a heartbeat on any other loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import threading
import weakref
from asyncio import base_events, events, runners
from typing import Any, Protocol

from looptrace._config import Options
from looptrace._recorder import LoopRecord, Recorder, StepRing

from ._patch import Patch, PatchSet
from .heartbeat import Heartbeat, OnLate, interval_for
from .hookfaults import guarded
from .nesting import NestedRuns
from .policy import PolicyDoor
from .probes import Probes
from .selector import FrozenTimer, detach_timer, is_real_selector, make_select_timer
from .threadframes import current_frames

# "victims": who a block delayed, read from asyncio's own queues (_hooks/victims.py).
SELECTOR_COVERAGE = ("select-waits", "steps", "blocks", "stacks", "probes", "victims")
STEPS_COVERAGE = ("steps", "blocks", "stacks", "probes", "victims")
HEARTBEAT_COVERAGE = ("blocks", "stacks", "probes", "lag")
HEARTBEAT_MISSING = ("select-waits", "steps", "busy-time", "exact-durations",
                     # run_in_executor of a loop not built on BaseEventLoop (uvloop's is
                     # Cython) is out of reach of the class patch of _hooks/executors.py.
                     "executor-calls", "victims") + (
    # A C task's context (hence the span of a block found by sampling) can be read only
    # through Task.get_context(), new in 3.12; on 3.11 only probed calls carry their span.
    ("block-spans",) if sys.version_info < (3, 12) else ())
NATIVE = ("native-stacks", "gil-stalls")
"""What the accelerator's native sampler adds to a loop whose steps the C hook times."""
EXECUTOR_CALLS = ("executor-calls",)
"""Full mode on an asyncio loop: its run_in_executor calls are timed (_hooks/executors)."""
TASK_SCHEDULED = ("task-scheduled",)
"""Full mode on an asyncio loop: each task's time ready before its steps (_hooks/tasks);
on another loop (uvloop's call_soon is Cython) it is missing."""


class TracerState(Protocol):
    """What the doors read of the tracer: it starts, gets its step hook and stops after
    they are made."""

    @property
    def active(self) -> bool: ...

    @property
    def step_hook(self) -> Any: ...

    @property
    def native_reason(self) -> str | None: ...

    def step_ring(self) -> StepRing | None: ...


class Doors:
    """Finds loops, attaches each once (under a lock: two doors may meet the same loop in
    two threads) and releases it when it closes or looptrace stops."""

    def __init__(self, tracer: TracerState, options: Options, recorder: Recorder, *,
                 probes: Probes | None, nested: NestedRuns, on_late_beat: OnLate) -> None:
        self._tracer = tracer
        self._options = options
        self._recorder = recorder
        self._probes = probes
        self._nested = nested
        self._on_late_beat = on_late_beat
        self._patches = PatchSet()
        self._attach_lock = threading.RLock()
        self._timers: list[tuple[weakref.ref[Any], Any]] = []
        self._timers_disabled = False
        self.heartbeats: list[Heartbeat] = []
        self.policy = PolicyDoor(self._on_new_loop, lambda exc: recorder.fault("doors", exc))

    # -- opening and closing

    def open(self) -> None:
        doors_ref = weakref.ref(self)
        original_set = events._set_running_loop

        @functools.wraps(original_set)
        def _set_running_loop(loop: Any) -> None:
            doors = doors_ref()
            if doors is None or not doors._tracer.active:
                original_set(loop)
                return
            previous = events._get_running_loop()
            original_set(loop)
            doors._on_running_loop(previous, loop)

        self._patches.apply(Patch(events, "_set_running_loop", _set_running_loop))
        if getattr(asyncio, "_set_running_loop", None) is original_set:
            self._patches.apply(Patch(asyncio, "_set_running_loop", _set_running_loop))

        original_lazy_init = vars(runners.Runner)["_lazy_init"]

        @functools.wraps(original_lazy_init)
        def _lazy_init(runner: Any) -> None:
            original_lazy_init(runner)
            doors = doors_ref()
            if doors is not None and doors._tracer.active:
                doors._on_new_loop(runner._loop)

        self._patches.apply(Patch(runners.Runner, "_lazy_init", _lazy_init))

        original_close = base_events.BaseEventLoop.close

        @functools.wraps(original_close)
        def close(loop: Any) -> None:
            original_close(loop)
            doors = doors_ref()
            if doors is not None:
                doors._on_closed(loop)

        self._patches.apply(Patch(base_events.BaseEventLoop, "close", close))
        self.policy.open()

    def close(self) -> None:
        """No loop comes in any more and no heartbeat beats. Takes no lock: ``abandon()``
        calls it in a forked child."""
        self._patches.revert_all()
        self.policy.close()
        for heartbeat in self.heartbeats:
            heartbeat.stop()

    def attach_running_loops(self) -> None:
        """The loop of the calling thread, and loops running in other threads."""
        own = events._get_running_loop()
        if own is not None:
            self._on_running_loop(None, own)
        if threading.active_count() > 1:
            for loop in _loops_running_elsewhere(own):
                self._on_new_loop(loop)
                # Its thread and step counter can only be read on its own thread (else it
                # is recorded under the installing thread's name, with no steps).
                with contextlib.suppress(RuntimeError):  # closed in the meantime
                    loop.call_soon_threadsafe(self._on_loop_thread, loop)

    def release_all(self) -> None:
        with self._attach_lock:
            for record in self._recorder.loop_records():
                self._release(record)
            self._timers.clear()

    def disable_timers(self) -> None:
        """After a select-timer fault: every loop, and loops attached later, steps only."""
        self._timers_disabled = True
        for record in self._recorder.loop_records():
            if record.timer is not None:
                record.timer.enabled = 0

    # -- what the doors call

    def _on_running_loop(self, previous: Any, loop: Any) -> None:
        try:
            if loop is not None:
                if self._probes is not None and self._tracer.active:
                    # Modules the program imported since install (all of them, under
                    # `looptrace run`) get their probes before the loop runs anything, not
                    # at the next housekeeping: else the same blocking line is a slow-step
                    # for up to a second, then a blocking-call (two hotspots for one line).
                    self._probes.patch_available()
                if previous is loop:
                    self._nested_run_mark()
                    return
                record = self.attach(loop)
                if record is not None:
                    step_hook = self._tracer.step_hook
                    slot = step_hook.current_slot() if "steps" in record.coverage else None
                    record.run_started(slot)
            elif previous is not None:
                record = self._recorder.loop_record(previous)
                if record is not None:
                    record.run_stopped()
        except Exception as exc:
            self._recorder.fault("doors", exc)

    def _nested_run_mark(self) -> None:
        """The running loop was set again on its own thread: a nested run (nest_asyncio)
        begins or ends inside the step running now."""
        step_hook = self._tracer.step_hook
        slot = step_hook.current_slot() if step_hook is not None else None
        handle = slot.handle if slot is not None else None
        if handle is not None:
            self._nested.mark(threading.get_ident(), handle)

    def _on_new_loop(self, loop: Any) -> None:
        try:
            if self._tracer.active:
                self.attach(loop)
        except Exception as exc:
            self._recorder.fault("doors", exc)

    def _on_closed(self, loop: Any) -> None:
        try:
            record = self._recorder.loop_record(loop)
            if record is not None:
                with self._attach_lock:
                    self._release(record)
                    record.closed = True
        except Exception as exc:
            self._recorder.fault("doors", exc)

    def _on_loop_thread(self, loop: Any) -> None:
        """Runs on ``loop``'s own thread, soon after install() found it running there."""
        if self._tracer.active:
            self._on_running_loop(None, loop)

    # -- loops

    def attach(self, loop: Any) -> LoopRecord | None:
        """Start recording ``loop``; idempotent. Returns its record."""
        record = self._recorder.loop_record(loop)
        if record is not None:
            return record
        with self._attach_lock:
            record = self._recorder.loop_record(loop)
            if record is not None or not self._tracer.active:  # stop() released everything
                return record
            selector = getattr(loop, "_selector", None)
            if isinstance(loop, base_events.BaseEventLoop) and is_real_selector(selector) \
                    and not self._timers_disabled:  # after a select-timer fault: steps only
                return self._attach_selector(loop, selector)
            if isinstance(loop, base_events.BaseEventLoop):
                return self._recorder.add_loop(
                    loop, type(loop).__name__,
                    *self._native_coverage(STEPS_COVERAGE, ("select-waits",)))
            return self._attach_heartbeat(loop)

    def _attach_selector(self, loop: Any, selector: Any) -> LoopRecord:
        options = self._options
        record = self._recorder.add_loop(
            loop, f"selector:{type(selector).__name__}",
            *self._native_coverage(SELECTOR_COVERAGE, ()))
        ring = options.buffer_size if options.mode == "full" else 0
        method, timer = make_select_timer(
            selector, guarded(record.on_long_iteration, "selector", self._recorder),
            options.threshold_ns, accelerated=options.accelerator, ring_capacity=ring)
        selector.select = method
        record.timer = timer
        self._timers.append((weakref.ref(selector), method))
        return record

    def _attach_heartbeat(self, loop: Any) -> LoopRecord:
        """A loop whose steps no hook sees (uvloop and other C loops)."""
        threshold_ns = self._options.threshold_ns
        record = self._recorder.add_loop(
            loop, f"{type(loop).__module__}.{type(loop).__qualname__}",
            HEARTBEAT_COVERAGE, HEARTBEAT_MISSING + NATIVE
            + (TASK_SCHEDULED if self._options.mode == "full" else ()))
        heartbeat = Heartbeat(loop, record.loop_id, interval_for(threshold_ns), threshold_ns,
                              self._on_late_beat,
                              lambda exc: self._recorder.fault("heartbeat", exc))
        record.heartbeat = heartbeat
        self.heartbeats.append(heartbeat)
        heartbeat.start()
        return record

    def _native_coverage(self, coverage: tuple[str, ...], missing: tuple[str, ...]
                         ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if self._options.mode == "full":
            coverage += EXECUTOR_CALLS + TASK_SCHEDULED
        if self._tracer.native_reason is None:
            return coverage + NATIVE, missing
        return coverage, missing + NATIVE

    def _release(self, record: LoopRecord) -> None:
        """Let go of a loop: our select goes, its final figures stay."""
        timer = record.timer
        if timer is not None and not isinstance(timer, FrozenTimer):
            loop = record.loop_ref()
            selector = getattr(loop, "_selector", None) if loop is not None else None
            for ref, method in self._timers:
                if ref() is selector and selector is not None:
                    detach_timer(selector, method)
            record.timer = FrozenTimer(timer)
            self._timers = [(r, m) for r, m in self._timers if r() is not None
                            and r() is not selector]
        self._recorder.release_loop(record, self._tracer.step_ring())
        if record.heartbeat is not None:
            record.heartbeat.stop()
            self.heartbeats = [h for h in self.heartbeats if h is not record.heartbeat]


def _loops_running_elsewhere(own: Any) -> list[Any]:
    """Selector loops running in other threads, found on those threads' stacks (a frame of
    ``run_forever`` whose ``self`` is the loop). Scanning every object of the process with
    ``gc.get_objects()`` cost tens of milliseconds per ``install()`` in a test process, and
    grows with the heap; the stacks are a few frames per thread."""
    me = threading.get_ident()
    found: list[Any] = []
    for ident, frame in current_frames().items():
        if ident == me:
            continue
        current: Any = frame
        while current is not None:
            if current.f_code.co_name == "run_forever":
                loop = current.f_locals.get("self")
                if isinstance(loop, base_events.BaseEventLoop) and loop is not own \
                        and loop.is_running():
                    found.append(loop)
                    break
            current = current.f_back
    return found
