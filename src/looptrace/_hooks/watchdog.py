"""The watchdog: one thread for all loops, sampling the stack of a loop stuck in a step.

It reads each loop thread's slot (what is running, since when). A step that has run for a
quarter of the threshold gets its thread's stack sampled every ``sample_interval`` until it
ends; the step timer then gives the exact duration and the samples give the line. When
nothing is long it sleeps for a quarter of the threshold, so an idle or healthy program
pays a few wake-ups per second. It also finalises the blocks that loop threads hand it,
patches probes for modules imported since, and forgets threads that ended.

With the accelerator's native sampler (3.11-3.13), the loop threads whose steps the C
hook times are sampled by that sampler instead, without the GIL: this thread then only
collects its samples (``nativefeed``). A sample this thread takes itself is late when C
code held the GIL: a step whose first sample came well after it was due says so
(``site_source`` ``late-sample``).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from looptrace._clock import now_ns

from . import context, schedstat
from .blocks import LongStep, StepSamples, build_block
from .frames import CodeMap, locate
from .native import NativeSample
from .nativefeed import NativeFeed, SampleKey
from .owners import coroutine_name
from .threadframes import current_frames
from .victims import ArrivedIo

_MIN_WAIT_NS = 500_000
_MAX_POLL_NS = 50_000_000
_MIN_POLL_NS = 1_000_000
_HOUSEKEEPING_NS = 1_000_000_000
MAX_PENDING = 10_000
"""Long steps waiting to be examined. Beyond, a step is counted (in its loop's figures and
in ``dropped.unexamined_blocks``) but not examined: a burst of blocks faster than the
watchdog can examine them (about 0.25 ms of Python each) must not grow memory without end."""


class Watchdog:
    def __init__(self, *, step_hook: Any, heartbeats: Callable[[], list[Any]],
                 on_block: Callable[[Any], None], on_fault: Callable[[str, BaseException], None],
                 on_unexamined: Callable[[int, int, int], None],
                 housekeeping: Callable[[], None], codemap: CodeMap, threshold_ns: int,
                 sample_interval_ns: int, native: NativeFeed | None = None,
                 sched: schedstat.SchedHistory | None = None) -> None:
        self._step_hook = step_hook
        self._heartbeats = heartbeats
        self._on_block = on_block
        self._on_unexamined = on_unexamined
        # Per loop: [steps, ns] counted but not examined, each written only by its loop's
        # thread (no lock on the loop thread); the watchdog reports what grew since it last
        # looked.
        self._unexamined: dict[int, list[int]] = {}
        self._unexamined_told: dict[int, tuple[int, int]] = {}
        self._on_fault = on_fault
        self._housekeeping = housekeeping
        self._codemap = codemap
        self._sched = sched
        self._arm_ns = max(threshold_ns // 4, 1)
        self._poll_ns = min(max(threshold_ns // 4, _MIN_POLL_NS), _MAX_POLL_NS)
        self._sample_ns = max(sample_interval_ns, _MIN_WAIT_NS)
        # A first sample this much after it was due was held off (by the GIL or the CPU).
        self._late_ns = self._arm_ns + max(threshold_ns // 4, 4 * self._sample_ns)
        self._native = native
        self._late: set[SampleKey] = set()
        self._samples: dict[tuple[object, int], StepSamples] = {}
        self._ready_seen: dict[SampleKey, int] = {}
        self.arrived_io = ArrivedIo()
        """Sockets seen readable during long steps (the blocks' I/O victims)."""
        self._pending: deque[LongStep] = deque()
        self._finalize_lock = threading.RLock()  # reentrant: see _hooks/probes.py
        self.dropped_sample_sites = 0
        """Samples of long steps at more distinct sites than a step keeps (reported)."""
        self._stop = threading.Event()
        self._sampling = True
        self._next_housekeeping = 0
        self._thread = threading.Thread(target=self._run, name="looptrace-watchdog", daemon=True)

    def start(self) -> None:
        if self._native is not None and not self._native.sampler.start(
                self._poll_ns, self._arm_ns, self._sample_ns):
            self._native = None
        self._thread.start()

    @property
    def native_running(self) -> bool:
        return self._native is not None and self._native.sampler.running

    def stop(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if self._native is not None:
            self._native.sampler.stop()
        self.finalize_pending()

    def disable_sampling(self) -> None:
        self._sampling = False
        if self._native is not None:
            self._native.sampler.stop()

    def submit(self, step: LongStep) -> None:
        """Called on the loop thread when a long step ended; cheap and lock-free.

        Task names are read again now, while the tasks certainly live: an eager task
        (3.12+) runs its first step before ``create_task`` names it."""
        samples = self._samples.get(step.sample_key)
        if samples is not None:
            for sampled in list(samples.tasks.values()):
                sampled.name = sampled.current_name()
        if len(self._pending) >= MAX_PENDING:
            counts = self._unexamined.get(step.loop_id)
            if counts is None:
                counts = self._unexamined[step.loop_id] = [0, 0]
            counts[0] += 1
            counts[1] += step.end_ns - step.start_ns - step.nested_ns
            return  # its samples are forgotten with the other ended steps' at the next tick
        self._pending.append(step)

    def finalize_pending(self) -> None:
        """Turn every submitted long step into a block (also called by snapshots)."""
        with self._finalize_lock:
            # Only steps submitted before the native samples are drained: a later one's
            # samples come with the next drain.
            ready = len(self._pending)
            self._drain_native()
            for _ in range(ready):
                step = self._pending.popleft()
                samples = self._samples.pop(step.sample_key, None)
                if samples is not None:
                    self.dropped_sample_sites += samples.overflow
                try:
                    block = self._finish(step.sample_key, build_block(step, samples))
                except Exception as exc:  # counted; the next block gets its chance
                    self._on_fault("watchdog", exc)
                    continue
                self._on_block(block)
            self._tell_unexamined()

    def _tell_unexamined(self) -> None:
        for loop_id, counts in list(self._unexamined.items()):
            steps, ns = counts[0], counts[1]
            told_steps, told_ns = self._unexamined_told.get(loop_id, (0, 0))
            if steps != told_steps or ns != told_ns:
                self._unexamined_told[loop_id] = (steps, ns)
                self._on_unexamined(loop_id, steps - told_steps, ns - told_ns)

    def _finish(self, key: SampleKey, block: Any) -> Any:
        late = key in self._late
        self._late.discard(key)
        if self._native is not None:
            block = self._native.finish(key, block)
        if block.call_source is None and block.call is not None:
            if block.kind == "blocking-call":
                block = replace(block, call_source="probe")
            elif block.site_source == "samples":
                block = replace(block, call_source="python-frame")
        if late and block.site_source == "samples":
            block = replace(block, site_source="late-sample")
        return block

    def _drain_native(self) -> None:
        if self._native is None:
            return
        try:
            slots = {slot.thread_id: slot for slot in self._step_hook.slots()}
            threads = {ident: (slot.seq, slot.handle) for ident, slot in slots.items()}

            def add(key: SampleKey, thread_id: int, sample: NativeSample,
                    handle: Any) -> None:
                self._add_native(key, thread_id, sample, handle, slots.get(thread_id))

            self._native.drain(threads, add)
        except Exception as exc:  # counted; the blocks are built from what there is
            self._on_fault("watchdog", exc)

    def _add_native(self, key: SampleKey, thread_id: int, sample: NativeSample,
                    handle: Any, slot: Any) -> None:
        """A native sample of a step; the task and span are read now if it still runs."""
        task, coroutine, span = self._context(handle, None)
        if handle is not None and not _same_step(slot, key[1], handle):
            task, coroutine, span = None, None, None  # the step ended while they were read
        located = sample.loop
        self._record(key, thread_id, located.site, located.call, located.stack, task,
                     coroutine, span)
        if sample.sched is not None:
            self._samples[key].sched = (sample.t_ns, *sample.sched)

    # -- the thread

    def _run(self) -> None:
        wait_ns = self._poll_ns
        while not self._stop.wait(wait_ns / 1e9):
            try:
                wait_ns = self._tick()
            except Exception as exc:
                self._on_fault("watchdog", exc)
                wait_ns = self._poll_ns

    def _tick(self) -> int:
        now = now_ns()
        # A sample key is (what runs steps, which step): (thread ident, step seq) for
        # timed loops, (heartbeat key, beat number) for heartbeat loops.
        running: list[_Running] = []
        current: dict[object, int] = {}
        slots = self._step_hook.slots()
        heartbeats = self._heartbeats()
        self._note_sched(slots, heartbeats)
        for slot in slots:
            seq = slot.seq
            current[slot.thread_id] = seq
            handle = slot.handle
            start = slot.start_ns
            if handle is not None and slot.seq == seq:  # re-read: no step change in between
                running.append(((slot.thread_id, seq), slot.thread_id, start, handle, None,
                                partial(_same_step, slot, seq, handle)))
                self._note_ready((slot.thread_id, seq), slot, handle)
        for heartbeat in heartbeats:
            beats = heartbeat.beats
            current[heartbeat.key] = beats
            due = heartbeat.due_ns()
            if due is not None and heartbeat.thread_id is not None:
                running.append(((heartbeat.key, beats), heartbeat.thread_id, due,
                                None, heartbeat.loop(), partial(_same_beat, heartbeat, beats)))

        # Steps that ended were submitted before the next one started: finalise them, then
        # forget the samples of steps that ended short.
        self.finalize_pending()
        stale = {key for key in self._samples if key[1] < current.get(key[0], key[1] + 1)}
        for key in stale:
            del self._samples[key]
            self._late.discard(key)
        if self._native is not None:
            self._native.forget(stale)
        self._ready_seen = {key: n for key, n in self._ready_seen.items()
                            if current.get(key[0]) == key[1]}
        self.arrived_io.keep_only(current)
        self._look_at_io(running, now)

        wait = self._sample_running(running, now) if self._sampling else self._poll_ns
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + _HOUSEKEEPING_NS
            self._housekeeping()
        return max(wait, _MIN_WAIT_NS)

    def _sample_running(self, running: list[_Running], now: int) -> int:
        """Sample the steps that run long; returns how long to wait before the next tick."""
        wait = self._poll_ns
        frames: dict[int, Any] | None = None
        native = self.native_running
        for key, thread_id, start, handle, loop, still_running in running:
            elapsed = now - start
            if native and handle is not None and (key in self._samples
                                                   or elapsed < self._late_ns):
                # A timed step: the native sampler samples it. One that still has no native
                # sample when a late Python sample would be due (its samples lost, or the
                # sampler thread starved on a saturated machine) is sampled here too, so that
                # a long step never ends with no line at all.
                continue
            if elapsed < self._arm_ns:
                wait = min(wait, self._arm_ns - elapsed)
                continue
            if frames is None:
                frames = current_frames()
            if key not in self._samples and elapsed >= self._late_ns:
                self._late.add(key)
            self._sample(key, thread_id, frames.get(thread_id), handle, loop, still_running)
            wait = min(wait, self._sample_ns)
        del frames
        return wait

    def _look_at_io(self, running: list[_Running], now: int) -> None:
        """Which sockets of a loop in a long step became readable (``_hooks/victims.py``)."""
        for key, _, start, handle, _, _ in running:
            if handle is not None and now - start >= self._arm_ns:
                self.arrived_io.look(key, getattr(handle, "_loop", None), now)

    def _note_ready(self, key: SampleKey, slot: Any, handle: Any) -> None:
        """How many handles were ready at the first look at a step: those after them in
        the FIFO at its end were made ready during it (see ``_hooks/victims.py``)."""
        if key in self._ready_seen:
            return
        ready = getattr(getattr(handle, "_loop", None), "_ready", None)
        if not isinstance(ready, deque):  # not asyncio's loop: no victims measured anyway
            return
        count = len(ready)
        if _same_step(slot, key[1], handle):
            self._ready_seen[key] = count

    def ready_at_first_look(self, key: SampleKey) -> int | None:
        """``len(loop._ready)`` when this thread first saw step ``key`` run (None: it
        did not see it). Read on the loop thread when the step ends."""
        return self._ready_seen.get(key)

    def _note_sched(self, slots: list[Any], heartbeats: list[Any]) -> None:
        """Read the CPU figures of loop threads whose step counter moved, so that a block's
        start is bracketed by a reading before it and one inside it."""
        sched = self._sched
        if sched is None:
            return
        for slot in slots:
            sched.note(slot.thread_id, slot.seq)
        for heartbeat in heartbeats:
            if heartbeat.thread_id is not None:
                sched.note(heartbeat.thread_id, heartbeat.beats)

    def sampled(self, key: tuple[object, int]) -> bool:
        """Whether the step ``key`` was sampled (so far). The native sampler samples every
        long step it times; its samples may not be collected yet."""
        return key in self._samples or (self.native_running and isinstance(key[0], int))

    def _sample(self, key: tuple[object, int], thread_id: int, frame: Any, handle: Any,
                loop: Any, still_running: Callable[[], bool]) -> None:
        if frame is None:
            return
        site, callee, stack = locate(frame, self._codemap)
        task, coroutine, span = self._context(handle, loop)
        # The loop thread may take the GIL between reading its slot and reading its stack
        # and task, end that step and start the next: such a sample is of another task's
        # step (seen in CI: a CPU loop's block named after the task that ran next).
        if still_running():
            self._record(key, thread_id, site, callee, stack, task, coroutine, span)

    def _context(self, handle: Any, loop: Any) -> tuple[Any, str | None,
                                                         tuple[int, int, bool] | None]:
        """The task current on a blocked loop, its coroutine and the running span."""
        if loop is None and handle is not None:
            loop = getattr(handle, "_loop", None)
        task = None
        if loop is not None:
            try:
                task = asyncio.current_task(loop)
            except RuntimeError:
                task = None
        ctx = getattr(handle, "_context", None) if handle is not None else None
        if ctx is None and task is not None:
            ctx = _task_context(task)
        span = context.span_ids(ctx) if ctx is not None else None
        return task, coroutine_name(task) if task is not None else None, span

    def _record(self, key: tuple[object, int], thread_id: int, site: Any, callee: str | None,
                stack: Any, task: Any, coroutine: str | None,
                span: tuple[int, int, bool] | None) -> None:
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = StepSamples()
            reading = schedstat.of_thread(thread_id)
            if reading is not None:
                samples.sched = (now_ns(), *reading)
        samples.add(site, callee, stack, task, coroutine, span)


_Running = tuple[SampleKey, int, int, Any, Any, Callable[[], bool]]
"""A step being watched: sample key, thread, start, handle (timed steps), loop
(heartbeat loops), and whether that very step still runs."""


def _same_step(slot: Any, seq: int, handle: Any) -> bool:
    return slot is not None and slot.seq == seq and slot.handle is handle


def _same_beat(heartbeat: Any, beats: int) -> bool:
    return heartbeat.beats == beats and heartbeat.due_ns() is not None


def _task_context(task: Any) -> Any:
    """A task's context: ``_context`` on asyncio's Python task, ``get_context()`` on the C
    task (3.12+; uvloop runs C tasks and has no handle to read it from)."""
    ctx = getattr(task, "_context", None)
    if ctx is None:
        get_context = getattr(task, "get_context", None)
        if get_context is not None:
            try:
                ctx = get_context()
            except Exception:  # a task subclass may misbehave: no span then
                ctx = None
    return ctx
