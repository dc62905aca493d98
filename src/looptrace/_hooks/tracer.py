"""The tracer: wires the hooks to the recorder, and unwires them.

Everything that patches something lives behind :meth:`Tracer.start` and
:meth:`Tracer.stop`. ``start`` is all-or-nothing: if any step fails, what was done is
undone before the error propagates. ``stop`` restores only what is still ours.

The tracer owns the state its parts share (the step hook, the watchdog, whether it is
active) and wires them; each part has one job:

- :mod:`.doors`: how loops are found, attached and let go of;
- :mod:`.longsteps`: a long step or a late beat made into the evidence the watchdog
  turns into a block;
- :mod:`.hookfaults`: errors inside the hooks routed to the fault policy;
- here: start, stop, and the watchdog's periodic housekeeping.
"""

from __future__ import annotations

import threading
from asyncio import events
from collections.abc import Callable
from typing import Any

from looptrace._config import Options
from looptrace._recorder import LoopRecord, Recorder

from . import schedstat
from ._patch import Patch, PatchSet
from .doors import Doors
from .executors import ExecutorCalls
from .frames import CodeMap
from .gcwatch import GcWatch
from .hookfaults import SwallowedFaults
from .longsteps import LongSteps
from .native import NativeSampler
from .native import unavailable as native_unavailable
from .nativefeed import NativeFeed
from .nesting import NestedRuns
from .owners import OwnerTable
from .probes import ProbeBuffer, Probes
from .steps import FullStepHook, make_step_hook
from .tasks import TaskWatch
from .threadframes import current_frames
from .watchdog import Watchdog

_MIN_PROBE_NS = 20_000


class Tracer:
    def __init__(self, options: Options, recorder: Recorder) -> None:
        self.options = options
        self.recorder = recorder
        self.codemap = CodeMap()
        self.active = False
        self.accelerated = False
        self.native_reason: str | None = "native sampler: off (not started)"
        self._patches = PatchSet()
        threshold = options.threshold_ns
        self.owners = OwnerTable(options.max_tasks) if options.mode == "full" else None
        self.step_hook: Any = None
        self.probes: Probes | None = None
        if options.probes:
            buffer = ProbeBuffer(max(threshold // 100, _MIN_PROBE_NS), self.codemap)
            self.probes = Probes(buffer, lambda exc: recorder.fault("probes", exc))
        self.gc_watch = GcWatch(max(threshold // 100, _MIN_PROBE_NS))
        self.sched = schedstat.SchedHistory()
        self.nested = NestedRuns()
        self.watchdog: Watchdog | None = None
        self.long_steps = LongSteps(
            self, recorder, threshold_ns=threshold, codemap=self.codemap, probes=self.probes,
            gc_watch=self.gc_watch, sched=self.sched, nested=self.nested)
        self.doors = Doors(self, options, recorder, probes=self.probes, nested=self.nested,
                           on_late_beat=self.long_steps.on_late_beat)
        self._swallowed = SwallowedFaults(recorder)  # errors the hooks caught themselves
        # Full mode only: timing a call costs 5-12 µs on the loop and worker threads, more
        # than the 5% of a trivial to_thread call (~110 µs) default mode may spend
        # (benchmarks/executor_overhead.py).
        self.executors = ExecutorCalls(self.codemap, lambda exc: recorder.fault("executors", exc))
        # Full mode only: call_soon runs several times per step (see _hooks/tasks.py).
        self.task_watch = (TaskWatch(self.owners, lambda exc: recorder.fault("tasks", exc),
                                     accelerated=options.accelerator)
                           if self.owners is not None else None)

    # -- lifecycle

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        options = self.options
        original_run = events.Handle._run
        method, self.step_hook = make_step_hook(
            original_run, self.long_steps.on_long_step, options.threshold_ns,
            accelerated=options.accelerator, owners=self.owners,
            ring_capacity=options.buffer_size)
        # The C hooks (default and full mode) are installed themselves; the Python ones
        # install a function.
        self.accelerated = method is self.step_hook
        native = self._native_feed() if self.accelerated else None
        self.native_reason = None if native is not None else (
            native_unavailable() or "native sampler: off (no accelerator)")
        self.recorder.on_fault("steps", self._disable_steps)
        self.recorder.on_fault("selector", self.doors.disable_timers)
        self.recorder.on_fault("probes", self._disable_probes)
        self.recorder.on_fault("victims", self.long_steps.disable_victims)
        self._patches.apply(Patch(events.Handle, "_run", method))

        self.doors.open()
        self.gc_watch.start()
        self.active = True
        if self.probes is not None:
            self.probes.patch_available()
        if options.mode == "full":
            self.recorder.on_fault("executors", self.executors.revert)
            self.executors.install()
            if self.task_watch is not None:
                self.recorder.on_fault("tasks", self.task_watch.revert)
                self.task_watch.install()

        doors = self.doors
        self.watchdog = Watchdog(
            step_hook=self.step_hook, heartbeats=lambda: list(doors.heartbeats),
            on_block=self.recorder.add_block, on_fault=self.recorder.fault,
            on_unexamined=self.recorder.add_unexamined, housekeeping=self._housekeeping,
            codemap=self.codemap,
            threshold_ns=options.threshold_ns, sample_interval_ns=options.sample_interval_ns,
            sched=self.sched, native=native)
        self.recorder.on_fault("watchdog", self.watchdog.disable_sampling)
        self.watchdog.start()
        self.doors.attach_running_loops()

    def _native_feed(self) -> NativeFeed | None:
        if native_unavailable() is not None:
            return None
        options = self.options
        return NativeFeed(NativeSampler(self.codemap), threshold_ns=options.threshold_ns,
                          interval_ns=max(options.sample_interval_ns, 500_000),
                          on_block=self.recorder.add_block, loop_of_thread=self._loop_of_thread)

    def _loop_of_thread(self, thread_id: int) -> tuple[int, str] | None:
        """The loop a thread ran last: (loop id, thread name)."""
        for record in reversed(self.recorder.loop_records()):
            if record.thread_id == thread_id:
                return record.loop_id, record.thread_name
        return None

    def stop(self) -> None:
        """Undo everything; safe to call after a partial start and more than once."""
        was_active = self.active
        self._switch_off(locked=True)
        if was_active:
            self.long_steps.report_in_progress(self.step_hook, self.doors.heartbeats)
        self.doors.release_all()
        if self.watchdog is not None:
            self.watchdog.stop()
        self.sched.close()

    def abandon(self) -> None:
        """Switch every hook off without taking a lock (in a forked child, a lock held by
        one of the parent's threads at fork time is never released)."""
        self._switch_off(locked=False)
        for record in self.recorder.loop_records(locked=False):
            if record.timer is not None:
                record.timer.enabled = 0

    def _switch_off(self, *, locked: bool) -> None:
        self.active = False
        if self.step_hook is not None:
            self.step_hook.enabled = 0
        # The task watch went in after the doors (both wrap BaseEventLoop.close), the doors
        # after Handle._run: they come out in the reverse order.
        if self.task_watch is not None:
            self.task_watch.revert()
        self.doors.close()
        self._patches.revert_all()
        self.gc_watch.stop()
        if self.probes is not None:
            self.probes.revert(locked=locked)
        self.executors.revert()

    def flush(self) -> None:
        """Finalise blocks that ended but are not in the recorder yet."""
        if self.watchdog is not None:
            self.watchdog.finalize_pending()
        self._report_swallowed_faults()

    def attach(self, loop: Any) -> LoopRecord | None:
        """Start recording ``loop``; idempotent. Returns its record."""
        return self.doors.attach(loop)

    # -- faults and housekeeping

    def _disable_steps(self) -> None:
        if self.step_hook is not None:
            self.step_hook.enabled = 0

    def _disable_probes(self) -> None:
        if self.probes is not None:
            self.probes.revert()

    def _report_swallowed_faults(self) -> None:
        self._swallowed.report(self.step_hook, self.recorder.loop_records())

    def _housekeeping(self) -> None:
        self._report_swallowed_faults()
        if self.probes is not None and self.active:
            self.probes.patch_available()
        # A thread without a Python frame right now is still alive if threading knows it:
        # pruning a live thread's slot would leave its C thread-local pointing at nothing.
        alive = set(current_frames()) | {t.ident for t in threading.enumerate()
                                         if t.ident is not None}
        if self.step_hook is not None:
            self.step_hook.prune(alive)
        if self.probes is not None:
            self.probes.buffer.forget_threads(alive)
        self.gc_watch.forget_threads(alive)
        self.sched.forget_threads(alive)
        self.nested.forget_threads(alive)
        self.executors.fold()

    def step_ring(self) -> Callable[[Any], list[tuple[int, int, int]]] | None:
        hook = self.step_hook
        return hook.ring if isinstance(hook, FullStepHook) else None
