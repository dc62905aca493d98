"""The evidence of a long step: what the loop thread knows of it, handed to the watchdog.

A step at or over the threshold (from the step hook), a late beat of a heartbeat loop, and
a step still running when looptrace stops each become a :class:`~.blocks.LongStep`: times,
owner, span ids, probed calls, GC and scheduler readings over the same interval. This runs
on the loop thread (or the stopping thread), never on the per-step path: the step hook
calls :meth:`LongSteps.on_long_step` only after a step lasted the threshold.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from time import perf_counter_ns
from typing import Any, Protocol

from looptrace._recorder import LoopRecord, Recorder
from looptrace.events import CodeLocation, DurationSource, SiteSource, Victims

from . import context
from .blocks import LongStep
from .frames import CodeMap, absolute, location
from .gcwatch import GcWatch
from .heartbeat import Heartbeat
from .nesting import NestedRuns, outside
from .owners import await_point, callback_name, coroutine_name, task_name, task_of, unwrap_partial
from .probes import Probes
from .schedstat import SchedHistory
from .victims import LiveSpans, collect
from .watchdog import Watchdog


class TracerState(Protocol):
    """What the long steps read of the tracer: it starts, gets its watchdog and stops after
    they are made."""

    @property
    def active(self) -> bool: ...

    @property
    def watchdog(self) -> Watchdog | None: ...

    def attach(self, loop: Any) -> LoopRecord | None: ...


class LongSteps:
    def __init__(self, tracer: TracerState, recorder: Recorder, *, threshold_ns: int,
                 codemap: CodeMap, probes: Probes | None, gc_watch: GcWatch,
                 sched: SchedHistory, nested: NestedRuns) -> None:
        self._tracer = tracer
        self._recorder = recorder
        self._threshold_ns = threshold_ns
        self._codemap = codemap
        self._probes = probes
        self._gc_watch = gc_watch
        self._sched = sched
        self._nested = nested
        self.live_spans = LiveSpans()
        """Spans of recent victims, for the OpenTelemetry sink's links back."""
        self.victims_enabled = True

    def disable_victims(self) -> None:
        """After a fault in victim collection: blocks go on, without their victims."""
        self.victims_enabled = False

    def on_long_step(self, handle: Any, start_ns: int, end_ns: int, seq: int) -> None:
        """Called on the loop thread by the step hook after a step at or over the threshold."""
        try:
            thread = threading.current_thread()
            self._long_step(handle, start_ns, end_ns, seq, thread.ident or 0, thread.name)
        except Exception as exc:
            self._recorder.fault("steps", exc)

    def _long_step(self, handle: Any, start_ns: int, end_ns: int, seq: int, ident: int,
                   thread_name: str, in_progress: bool = False) -> None:
        tracer = self._tracer
        loop = handle._loop
        record = self._recorder.loop_record(loop)
        if record is None and tracer.active:
            record = tracer.attach(loop)
        watchdog = tracer.watchdog
        if record is None or watchdog is None:
            return
        # Nested runs of the loop inside this step are not its own time: the steps that ran
        # in them are blocks (or not) of their own.
        nested = self._nested.within(ident, handle, start_ns, end_ns)
        nested_ns = sum(end - begin for begin, end in nested)
        if end_ns - start_ns - nested_ns < self._threshold_ns:
            return
        record.last_block_end_ns = end_ns
        callback = handle._callback
        task = task_of(callback)
        fallback, source = self._fallback_site(task, callback)
        span = context.span_ids(getattr(handle, "_context", None))
        probe_calls = [c for c in (self._probes.buffer.between(ident, start_ns, end_ns)
                                   if self._probes is not None else [])
                       if outside(nested, c.start_ns)]
        gc_ns, gc_generation = self._gc_watch.within(ident, start_ns, end_ns)
        before, inside = self._sched.around(ident, start_ns, end_ns)
        end_reading = self._sched.read(ident)
        victims = self._victims(loop, watchdog, (ident, seq), start_ns, end_ns, nested)
        watchdog.submit(LongStep(
            loop_id=record.loop_id, thread_id=ident, thread_name=thread_name,
            start_ns=start_ns, end_ns=end_ns, sample_key=(ident, seq),
            duration_source="step-timer",
            task=task_name(task) if task is not None else None,
            coroutine=coroutine_name(task) if task is not None else None,
            callback=None if task is not None else callback_name(callback),
            fallback_site=fallback, fallback_source=source,
            trace_id=span[0] if span else None, span_id=span[1] if span else None,
            trace_sampled=span[2] if span else True,
            probe_calls=probe_calls, gc_ns=gc_ns, gc_generation=gc_generation,
            threshold_ns=self._threshold_ns, sched_before=before,
            sched_inside=inside, sched_end=end_reading, nested_ns=nested_ns,
            in_progress=in_progress, victims=victims))

    def _victims(self, loop: Any, watchdog: Watchdog, key: tuple[object, int],
                 start_ns: int, end_ns: int, nested: list[tuple[int, int]]) -> Victims | None:
        """Who the step delayed; an error here is a fault of its own, and the block is
        reported all the same, without its victims (and later ones without theirs)."""
        if not self.victims_enabled:
            return None
        try:
            # What was ready or due before a nested run inside the step ran in it: only
            # the time after the last nested run counts.
            since = max([start_ns, *(end for _, end in nested)])
            return collect(loop, since, end_ns, watchdog.ready_at_first_look(key),
                           self.live_spans, watchdog.arrived_io.get(key))
        except Exception as exc:
            # Its own hook name: a "steps" fault would switch the step hook off.
            self._recorder.fault("victims", exc)
            return None

    def _fallback_site(self, task: Any, callback: Any) -> tuple[CodeLocation | None, SiteSource]:
        """Where the step was, when no sample says better: a task's await point after the
        step, or a plain callback's definition."""
        if task is not None:
            frame = await_point(task, self._codemap)
            return (location(frame), "await-point") if frame is not None else (None, "unknown")
        fallback = _callback_location(callback)
        return fallback, "callback" if fallback is not None else "unknown"

    def report_in_progress(self, step_hook: Any, heartbeats: Iterable[Heartbeat]) -> None:
        """The program is stopping (uninstall, a signal, exit) while a loop may be stuck in
        a step: report such a step as a block with its duration so far, marked in progress.
        Only the innermost step of each thread runs; the hook is already switched off, so
        the step's real end reports nothing twice."""
        now = perf_counter_ns()
        threshold = self._threshold_ns
        names = {t.ident: t.name for t in threading.enumerate()}
        for slot in step_hook.slots() if step_hook is not None else ():
            seq = slot.seq
            handle, start = slot.handle, slot.start_ns
            if handle is not None and slot.seq == seq and now - start >= threshold:
                ident = slot.thread_id
                try:
                    self._long_step(handle, start, now, seq, ident, names.get(ident, "?"),
                                    in_progress=True)
                except Exception as exc:
                    self._recorder.fault("steps", exc)
        for heartbeat in list(heartbeats):
            if heartbeat.due_ns() is not None and now - heartbeat.free_ns >= threshold:
                self.on_late_beat(heartbeat, heartbeat.free_ns, now, in_progress=True)

    def on_late_beat(self, heartbeat: Heartbeat, free_ns: int, now_ns: int,
                     in_progress: bool = False) -> None:
        """A heartbeat loop was not free from ``free_ns`` to ``now_ns``."""
        loop = heartbeat.loop()
        record = self._recorder.loop_record(loop) if loop is not None else None
        watchdog = self._tracer.watchdog
        if record is None or watchdog is None:
            return
        record.last_block_end_ns = now_ns
        ident = heartbeat.thread_id or 0 if in_progress else threading.get_ident()
        thread_name = next((t.name for t in threading.enumerate() if t.ident == ident), "?")
        # The loop was free at free_ns (the end of the previous beat): the block began
        # then or a little later. A probed call that explains the block tells exactly when.
        probe_calls = (self._probes.buffer.between(ident, free_ns, now_ns)
                       if self._probes is not None else [])
        start_ns, source = _heartbeat_start(free_ns, now_ns, probe_calls)
        gc_ns, gc_generation = self._gc_watch.within(ident, start_ns, now_ns)
        sample_key = (heartbeat.key, heartbeat.beats)
        before, inside = self._sched.around(ident, start_ns, now_ns)
        watchdog.submit(LongStep(
            loop_id=record.loop_id, thread_id=ident, thread_name=thread_name,
            start_ns=start_ns, end_ns=now_ns, sample_key=sample_key, in_progress=in_progress,
            duration_source=source, task=None, coroutine=None, callback=None,
            fallback_site=None, fallback_source="unknown", trace_id=None, span_id=None,
            probe_calls=probe_calls, gc_ns=gc_ns, gc_generation=gc_generation,
            threshold_ns=self._threshold_ns, sched_before=before, sched_inside=inside,
            sched_end=self._sched.read(ident)))


def _heartbeat_start(free_ns: int, now_ns: int,
                     probe_calls: list[Any]) -> tuple[int, DurationSource]:
    """Where a block found by the heartbeat began: at the first call of a probed function
    whose calls explain at least half of it, else when the loop was last known free."""
    by_call: dict[str, int] = {}
    for call in probe_calls:
        by_call[call.call] = by_call.get(call.call, 0) + call.duration_ns
    explaining = [c for c in probe_calls if by_call[c.call] * 2 >= now_ns - free_ns]
    if explaining:
        return max(free_ns, min(c.start_ns for c in explaining)), "heartbeat+probe"
    return free_ns, "heartbeat"


def _callback_location(callback: Any) -> CodeLocation | None:
    code = getattr(unwrap_partial(callback), "__code__", None)
    if code is None:
        return None
    return CodeLocation(absolute(code.co_filename), code.co_firstlineno, code.co_qualname)
