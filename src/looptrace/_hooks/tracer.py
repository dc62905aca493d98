"""The tracer: wires the hooks to the recorder, and unwires them.

Everything that patches something lives behind :meth:`Tracer.start` and
:meth:`Tracer.stop`. ``start`` is all-or-nothing: if any step fails, what was done is
undone before the error propagates. ``stop`` restores only what is still ours.

Doors through which loops are found, whoever creates them:

- ``asyncio.events._set_running_loop``: every asyncio loop passes it when it starts or
  stops running (``asyncio.run``, ``Runner``, ``loop_factory=``, ``run_until_complete``,
  any thread);
- ``asyncio.Runner._lazy_init``: loops from ``loop_factory=`` that are not asyncio's own
  (``uvloop.run``);
- the event-loop policy (see :mod:`.policy`);
- the loop running in the thread that calls ``install()``, and loops already running in
  other threads;
- ``BaseEventLoop.close``, to let go of a closed loop's selector.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import threading
import weakref
from asyncio import base_events, events, runners
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from looptrace._config import Options
from looptrace._recorder import LoopRecord, Recorder
from looptrace.events import CodeLocation, DurationSource, SiteSource

from . import context, schedstat
from ._patch import Patch, PatchSet
from .blocks import LongStep
from .frames import CodeMap, absolute, location
from .gcwatch import GcWatch
from .heartbeat import Heartbeat, interval_for
from .native import NativeSampler
from .native import unavailable as native_unavailable
from .nativefeed import NativeFeed
from .nesting import NestedRuns, outside
from .owners import (
    OwnerTable,
    await_point,
    callback_name,
    coroutine_name,
    task_name,
    task_of,
    unwrap_partial,
)
from .policy import PolicyDoor
from .probes import ProbeBuffer, Probes
from .selector import FrozenTimer, detach_timer, is_real_selector, make_select_timer
from .steps import FullStepHook, make_step_hook
from .threadframes import current_frames
from .watchdog import Watchdog

SELECTOR_COVERAGE = ("select-waits", "steps", "blocks", "stacks", "probes")
STEPS_COVERAGE = ("steps", "blocks", "stacks", "probes")
HEARTBEAT_COVERAGE = ("blocks", "stacks", "probes", "lag")
HEARTBEAT_MISSING = ("select-waits", "steps", "busy-time", "exact-durations") + (
    # A C task's context (hence the span of a block found by sampling) can be read only
    # through Task.get_context(), new in 3.12; on 3.11 only probed calls carry their span.
    ("block-spans",) if sys.version_info < (3, 12) else ())
NATIVE = ("native-stacks", "gil-stalls")
"""What the accelerator's native sampler adds to a loop whose steps the C hook times."""

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
        self._attach_lock = threading.RLock()
        self._timers: list[tuple[weakref.ref[Any], Any]] = []
        self._heartbeats: list[Heartbeat] = []
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
        self.policy = PolicyDoor(self._on_new_loop, lambda exc: recorder.fault("doors", exc))
        self.watchdog: Watchdog | None = None
        self._timers_disabled = False
        self._swallowed: dict[object, int] = {}  # errors the hooks caught, already reported
        self._swallowed_lock = threading.RLock()  # reentrant: see _hooks/probes.py

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
            original_run, self.on_long_step, options.threshold_ns,
            accelerated=options.accelerator, owners=self.owners,
            ring_capacity=options.buffer_size)
        # The C hooks (default and full mode) are installed themselves; the Python ones
        # install a function.
        self.accelerated = method is self.step_hook
        native = self._native_feed() if self.accelerated else None
        self.native_reason = None if native is not None else (
            native_unavailable() or "native sampler: off (no accelerator)")
        self.recorder.on_fault("steps", self._disable_steps)
        self.recorder.on_fault("selector", self._disable_timers)
        self.recorder.on_fault("probes", self._disable_probes)
        self._patches.apply(Patch(events.Handle, "_run", method))

        self._open_doors()
        self.policy.open()
        self.gc_watch.start()
        self.active = True
        if self.probes is not None:
            self.probes.patch_available()

        self.watchdog = Watchdog(
            step_hook=self.step_hook, heartbeats=lambda: list(self._heartbeats),
            on_block=self.recorder.add_block, on_fault=self.recorder.fault,
            housekeeping=self._housekeeping, codemap=self.codemap,
            threshold_ns=options.threshold_ns, sample_interval_ns=options.sample_interval_ns,
            sched=self.sched, native=native)
        self.recorder.on_fault("watchdog", self.watchdog.disable_sampling)
        self.watchdog.start()
        self._attach_running_loops()

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

    def _native_coverage(self, coverage: tuple[str, ...], missing: tuple[str, ...]
                         ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if self.native_reason is None:
            return coverage + NATIVE, missing
        return coverage, missing + NATIVE

    def stop(self) -> None:
        """Undo everything; safe to call after a partial start and more than once."""
        was_active = self.active
        self._switch_off(locked=True)
        if was_active:
            self._report_in_progress()
        with self._attach_lock:
            for record in self.recorder.loop_records():
                self._release(record)
            self._timers.clear()
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
        self._patches.revert_all()
        self.policy.close()
        self.gc_watch.stop()
        if self.probes is not None:
            self.probes.revert(locked=locked)
        for heartbeat in self._heartbeats:
            heartbeat.stop()

    def flush(self) -> None:
        """Finalise blocks that ended but are not in the recorder yet."""
        if self.watchdog is not None:
            self.watchdog.finalize_pending()
        self._report_swallowed_faults()

    # -- doors

    def _open_doors(self) -> None:
        tracer_ref = weakref.ref(self)
        original_set = events._set_running_loop

        @functools.wraps(original_set)
        def _set_running_loop(loop: Any) -> None:
            tracer = tracer_ref()
            if tracer is None or not tracer.active:
                original_set(loop)
                return
            previous = events._get_running_loop()
            original_set(loop)
            tracer._on_running_loop(previous, loop)

        self._patches.apply(Patch(events, "_set_running_loop", _set_running_loop))
        if getattr(asyncio, "_set_running_loop", None) is original_set:
            self._patches.apply(Patch(asyncio, "_set_running_loop", _set_running_loop))

        original_lazy_init = vars(runners.Runner)["_lazy_init"]

        @functools.wraps(original_lazy_init)
        def _lazy_init(runner: Any) -> None:
            original_lazy_init(runner)
            tracer = tracer_ref()
            if tracer is not None and tracer.active:
                tracer._on_new_loop(runner._loop)

        self._patches.apply(Patch(runners.Runner, "_lazy_init", _lazy_init))

        original_close = base_events.BaseEventLoop.close

        @functools.wraps(original_close)
        def close(loop: Any) -> None:
            original_close(loop)
            tracer = tracer_ref()
            if tracer is not None:
                tracer._on_closed(loop)

        self._patches.apply(Patch(base_events.BaseEventLoop, "close", close))

    def _on_running_loop(self, previous: Any, loop: Any) -> None:
        try:
            if loop is not None:
                if self.probes is not None and self.active:
                    # Modules the program imported since install (all of them, under
                    # `looptrace run`) get their probes before the loop runs anything, not
                    # at the next housekeeping: else the same blocking line is a slow-step
                    # for up to a second, then a blocking-call (two hotspots for one line).
                    self.probes.patch_available()
                if previous is loop:
                    self._nested_run_mark()
                    return
                record = self.attach(loop)
                if record is not None:
                    slot = self.step_hook.current_slot() if "steps" in record.coverage else None
                    record.run_started(slot)
            elif previous is not None:
                record = self.recorder.loop_record(previous)
                if record is not None:
                    record.run_stopped()
        except Exception as exc:
            self.recorder.fault("doors", exc)

    def _nested_run_mark(self) -> None:
        """The running loop was set again on its own thread: a nested run (nest_asyncio)
        begins or ends inside the step running now."""
        slot = self.step_hook.current_slot() if self.step_hook is not None else None
        handle = slot.handle if slot is not None else None
        if handle is not None:
            self.nested.mark(threading.get_ident(), handle)

    def _on_new_loop(self, loop: Any) -> None:
        try:
            if self.active:
                self.attach(loop)
        except Exception as exc:
            self.recorder.fault("doors", exc)

    def _on_closed(self, loop: Any) -> None:
        try:
            record = self.recorder.loop_record(loop)
            if record is not None:
                with self._attach_lock:
                    self._release(record)
                    record.closed = True
        except Exception as exc:
            self.recorder.fault("doors", exc)

    def _attach_running_loops(self) -> None:
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

    def _on_loop_thread(self, loop: Any) -> None:
        """Runs on ``loop``'s own thread, soon after install() found it running there."""
        if self.active:
            self._on_running_loop(None, loop)

    # -- loops

    def attach(self, loop: Any) -> LoopRecord | None:
        """Start recording ``loop``; idempotent. Returns its record."""
        record = self.recorder.loop_record(loop)
        if record is not None:
            return record
        with self._attach_lock:
            record = self.recorder.loop_record(loop)
            if record is not None or not self.active:  # stop() released everything
                return record
            selector = getattr(loop, "_selector", None)
            options = self.options
            if isinstance(loop, base_events.BaseEventLoop) and is_real_selector(selector) \
                    and not self._timers_disabled:  # after a select-timer fault: steps only
                record = self.recorder.add_loop(
                    loop, f"selector:{type(selector).__name__}",
                    *self._native_coverage(SELECTOR_COVERAGE, ()))
                ring = options.buffer_size if options.mode == "full" else 0
                assert selector is not None
                method, timer = make_select_timer(
                    selector, _guarded(record.on_long_iteration, "selector", self.recorder),
                    options.threshold_ns, accelerated=options.accelerator, ring_capacity=ring)
                selector.select = method
                record.timer = timer
                self._timers.append((weakref.ref(selector), method))
            elif isinstance(loop, base_events.BaseEventLoop):
                record = self.recorder.add_loop(
                    loop, type(loop).__name__,
                    *self._native_coverage(STEPS_COVERAGE, ("select-waits",)))
            else:
                record = self.recorder.add_loop(
                    loop, f"{type(loop).__module__}.{type(loop).__qualname__}",
                    HEARTBEAT_COVERAGE, HEARTBEAT_MISSING + NATIVE)
                interval = interval_for(options.threshold_ns)
                heartbeat = Heartbeat(loop, record.loop_id, interval, options.threshold_ns,
                                      self._on_late_beat,
                                      lambda exc: self.recorder.fault("heartbeat", exc))
                record.heartbeat = heartbeat
                self._heartbeats.append(heartbeat)
                heartbeat.start()
            return record

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
        self.recorder.release_loop(record, self.step_ring())
        if record.heartbeat is not None:
            record.heartbeat.stop()
            self._heartbeats = [h for h in self._heartbeats if h is not record.heartbeat]

    # -- blocks

    def on_long_step(self, handle: Any, start_ns: int, end_ns: int, seq: int) -> None:
        """Called on the loop thread by the step hook after a step at or over the threshold."""
        try:
            thread = threading.current_thread()
            self._long_step(handle, start_ns, end_ns, seq, thread.ident or 0, thread.name)
        except Exception as exc:
            self.recorder.fault("steps", exc)

    def _long_step(self, handle: Any, start_ns: int, end_ns: int, seq: int, ident: int,
                   thread_name: str, in_progress: bool = False) -> None:
        loop = handle._loop
        record = self.recorder.loop_record(loop)
        if record is None and self.active:
            record = self.attach(loop)
        if record is None or self.watchdog is None:
            return
        # Nested runs of the loop inside this step are not its own time: the steps that ran
        # in them are blocks (or not) of their own.
        nested = self.nested.within(ident, handle, start_ns, end_ns)
        nested_ns = sum(end - begin for begin, end in nested)
        if end_ns - start_ns - nested_ns < self.options.threshold_ns:
            return
        record.last_block_end_ns = end_ns
        callback = handle._callback
        task = task_of(callback)
        fallback, source = self._fallback_site(task, callback)
        span = context.span_ids(getattr(handle, "_context", None))
        probe_calls = [c for c in (self.probes.buffer.between(ident, start_ns, end_ns)
                                   if self.probes is not None else [])
                       if outside(nested, c.start_ns)]
        gc_ns, gc_generation = self.gc_watch.within(ident, start_ns, end_ns)
        before, inside = self.sched.around(ident, start_ns, end_ns)
        end_reading = self.sched.read(ident)
        self.watchdog.submit(LongStep(
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
            threshold_ns=self.options.threshold_ns, sched_before=before,
            sched_inside=inside, sched_end=end_reading, nested_ns=nested_ns,
            in_progress=in_progress))

    def _fallback_site(self, task: Any, callback: Any) -> tuple[CodeLocation | None, SiteSource]:
        """Where the step was, when no sample says better: a task's await point after the
        step, or a plain callback's definition."""
        if task is not None:
            frame = await_point(task, self.codemap)
            return (location(frame), "await-point") if frame is not None else (None, "unknown")
        fallback = _callback_location(callback)
        return fallback, "callback" if fallback is not None else "unknown"

    def _report_in_progress(self) -> None:
        """The program is stopping (uninstall, a signal, exit) while a loop may be stuck in
        a step: report such a step as a block with its duration so far, marked in progress.
        Only the innermost step of each thread runs; the hook is already switched off, so
        the step's real end reports nothing twice."""
        now = perf_counter_ns()
        threshold = self.options.threshold_ns
        names = {t.ident: t.name for t in threading.enumerate()}
        for slot in self.step_hook.slots() if self.step_hook is not None else ():
            seq = slot.seq
            handle, start = slot.handle, slot.start_ns
            if handle is not None and slot.seq == seq and now - start >= threshold:
                ident = slot.thread_id
                try:
                    self._long_step(handle, start, now, seq, ident, names.get(ident, "?"),
                                    in_progress=True)
                except Exception as exc:
                    self.recorder.fault("steps", exc)
        for heartbeat in list(self._heartbeats):
            if heartbeat.due_ns() is not None and now - heartbeat.free_ns >= threshold:
                self._on_late_beat(heartbeat, heartbeat.free_ns, now, in_progress=True)

    def _on_late_beat(self, heartbeat: Heartbeat, free_ns: int, now_ns: int,
                      in_progress: bool = False) -> None:
        loop = heartbeat.loop()
        record = self.recorder.loop_record(loop) if loop is not None else None
        if record is None or self.watchdog is None:
            return
        record.last_block_end_ns = now_ns
        ident = heartbeat.thread_id or 0 if in_progress else threading.get_ident()
        thread_name = next((t.name for t in threading.enumerate() if t.ident == ident), "?")
        # The loop was free at free_ns (the end of the previous beat): the block began
        # then or a little later. A probed call that explains the block tells exactly when.
        probe_calls = (self.probes.buffer.between(ident, free_ns, now_ns)
                       if self.probes is not None else [])
        start_ns, source = _heartbeat_start(free_ns, now_ns, probe_calls)
        gc_ns, gc_generation = self.gc_watch.within(ident, start_ns, now_ns)
        sample_key = (heartbeat.key, heartbeat.beats)
        before, inside = self.sched.around(ident, start_ns, now_ns)
        self.watchdog.submit(LongStep(
            loop_id=record.loop_id, thread_id=ident, thread_name=thread_name,
            start_ns=start_ns, end_ns=now_ns, sample_key=sample_key, in_progress=in_progress,
            duration_source=source, task=None, coroutine=None, callback=None,
            fallback_site=None, fallback_source="unknown", trace_id=None, span_id=None,
            probe_calls=probe_calls, gc_ns=gc_ns, gc_generation=gc_generation,
            threshold_ns=self.options.threshold_ns, sched_before=before, sched_inside=inside,
            sched_end=self.sched.read(ident)))

    # -- faults and housekeeping

    def _disable_steps(self) -> None:
        if self.step_hook is not None:
            self.step_hook.enabled = 0

    def _disable_timers(self) -> None:
        self._timers_disabled = True  # loops attached later too
        for record in self.recorder.loop_records():
            if record.timer is not None:
                record.timer.enabled = 0

    def _disable_probes(self) -> None:
        if self.probes is not None:
            self.probes.revert()

    def _report_swallowed_faults(self) -> None:
        """The step hook and select timers (C or Python) catch an error raised inside them
        and count it, since they cannot log from the hot path: turn new counts into faults,
        so the report shows them and the hook is switched off."""
        counters: list[tuple[str, object, Any]] = [("steps", "steps", self.step_hook)]
        counters.extend(("selector", record.loop_id, record.timer)
                        for record in self.recorder.loop_records())
        with self._swallowed_lock:
            for hook, key, counter in counters:
                count = int(getattr(counter, "faults", 0) or 0)
                new = count - self._swallowed.get(key, 0)
                if new > 0:
                    self._swallowed[key] = count
                    self.recorder.fault(hook, RuntimeError(
                        f"an error inside the {hook} hook (caught and counted by the hook)"),
                        new)

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

    def step_ring(self) -> Callable[[Any], list[tuple[int, int, int]]] | None:
        hook = self.step_hook
        return hook.ring if isinstance(hook, FullStepHook) else None


def _guarded(callback: Callable[..., None], hook: str,
             recorder: Recorder) -> Callable[..., None]:
    """``callback`` for a hook to call from the hot path: an error in it is a fault of
    ``hook`` (counted, logged once, hook disabled), never an error in the program."""

    def call(*args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:
            recorder.fault(hook, exc)

    return call


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
