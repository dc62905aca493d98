"""The recorder: bounded aggregates of what the hooks saw, copied out on demand.

Hooks write integers into their own counters (C or Python); the watchdog thread hands
finished blocks to :meth:`Recorder.add_block`. Everything here is bounded: individual blocks
in a ring, sites and tasks in capped tables, and whatever does not fit is counted in
``dropped``. :meth:`Recorder.recording` copies it all out as plain values for the session.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import weakref
from array import array
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from ._clock import now_ns
from ._config import Options
from ._faults import FaultPolicy
from ._hooks.heartbeat import Heartbeat
from ._hooks.owners import OwnerTable
from ._hooks.selector import SelectTimer
from ._hooks.steps import Slot
from ._text import printable_argv
from .events import (
    Block,
    LoopFigures,
    LoopNow,
    Recording,
    SiteFigures,
    TaskFigures,
    task_group,
)

StepRing = Callable[[Slot], list[tuple[int, int, int]]]
"""Full mode: the steps a thread's ring kept, (start_ns, duration_ns, owner id)."""

_MAX_RUN_PERIODS = 1024
_MAX_LOOPS = 1000
"""Loop records kept; beyond that the oldest closed loop makes room (counted as dropped)."""
_KEPT_DURATIONS = 1024
"""Per site, durations kept exactly; beyond that, a uniform reservoir of this size."""


class SiteStats:
    """Aggregate of the blocks at one (kind, call, site)."""

    __slots__ = ("call", "count", "durations", "kind", "max_ns", "site", "stack", "tasks",
                 "thread_name", "total_ns")

    def __init__(self, block: Block) -> None:
        self.kind = block.kind
        self.call = block.call
        self.site = block.site
        self.stack = block.stack
        self.thread_name = block.thread_name
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0
        self.durations: list[int] = []
        self.tasks: Counter[tuple[str | None, str | None]] = Counter()

    def add(self, block: Block, rng: random.Random) -> None:
        self.count += 1
        self.total_ns += block.duration_ns
        if block.duration_ns > self.max_ns:
            self.max_ns = block.duration_ns
            self.stack = block.stack or self.stack
        if len(self.durations) < _KEPT_DURATIONS:
            self.durations.append(block.duration_ns)
        else:
            slot = rng.randrange(self.count)
            if slot < _KEPT_DURATIONS:
                self.durations[slot] = block.duration_ns
        if len(self.tasks) < 64 or (block.task, block.coroutine) in self.tasks:
            self.tasks[(block.task, block.coroutine)] += 1

    def figures(self) -> SiteFigures:
        (task, coroutine), _ = self.tasks.most_common(1)[0] if self.tasks else ((None, None), 0)
        return SiteFigures(self.kind, self.call, self.site, self.count, self.total_ns,
                           self.max_ns, tuple(self.durations), self.stack, task, coroutine,
                           self.thread_name)


class LoopRecord:
    """One loop's identity and the counters its hooks fill."""

    def __init__(self, loop_id: int, loop: Any, kind: str, coverage: tuple[str, ...],
                 missing: tuple[str, ...]) -> None:
        self.loop_id = loop_id
        self.loop_ref = weakref.ref(loop)
        self.kind = kind
        self.coverage = coverage
        self.missing = missing
        self.thread_id = threading.get_ident()
        self.thread_name = threading.current_thread().name
        self.timer: SelectTimer | None = None  # for selector loops
        self.heartbeat: Heartbeat | None = None  # for loops without a Python selector
        self.slot: Slot | None = None  # the step slot of the thread running the loop
        self.steps_done = 0
        self.steps_base: int | None = None
        # Full mode: when this loop ran, to pick its steps out of its thread's step ring,
        # and those steps once the loop is closed (the ring moves on).
        self.run_periods: deque[list[int]] = deque(maxlen=_MAX_RUN_PERIODS)
        self.closed_steps = array("q")  # flattened (start_ns, duration_ns, owner) triples
        self.blocks = 0
        self.block_ns = 0
        self.saturated_iterations = 0
        self.last_block_end_ns = 0
        self.closed = False
        self.unfinished_busy_ns = 0
        """Busy time of iterations cut short by the loop stopping (an exception or Ctrl-C out
        of a step): no select came after them to count it."""

    def run_started(self, slot: Slot | None) -> None:
        """The loop starts running on the calling thread."""
        self.thread_id = threading.get_ident()
        self.thread_name = threading.current_thread().name
        self.slot = slot
        self.steps_base = slot.seq if slot is not None else None
        self.run_periods.append([now_ns(), 0])
        if self.timer is not None:
            self.timer.forget_last()

    def run_stopped(self) -> None:
        if self.slot is not None and self.steps_base is not None:
            self.steps_done += self.slot.seq - self.steps_base
        self.steps_base = None
        if self.run_periods and self.run_periods[-1][1] == 0:
            self.run_periods[-1][1] = now_ns()
        if self.timer is not None:
            last = getattr(self.timer, "last_end_ns", 0)
            if last:
                self.unfinished_busy_ns += now_ns() - last
            self.timer.forget_last()

    def own_steps(self, thread_steps: list[tuple[int, int, int]]
                  ) -> list[tuple[int, int, int]]:
        """The steps of this loop among those its thread's ring kept. Both lists run in time
        order, so one merged walk picks them (a loop may have run thousands of times)."""
        periods = [(start, end or (1 << 62)) for start, end in self.run_periods]
        own: list[tuple[int, int, int]] = []
        index = 0
        for step in thread_steps:
            while index < len(periods) and periods[index][1] < step[0]:
                index += 1
            if index == len(periods):
                break
            if periods[index][0] <= step[0]:
                own.append(step)
        return own

    def release(self, step_ring: StepRing | None) -> int:
        """The loop closed: keep its steps (full mode), stop counting. Returns how many
        steps it kept."""
        self.run_stopped()
        if step_ring is not None and self.slot is not None:
            kept = array("q")
            for step in self.own_steps(step_ring(self.slot)):
                kept.extend(step)
            self.closed_steps = kept
        self.slot = None
        return len(self.closed_steps) // 3

    def steps(self) -> int:
        running = 0
        if self.slot is not None and self.steps_base is not None:
            running = self.slot.seq - self.steps_base
        return self.steps_done + running

    def on_long_iteration(self, start_ns: int, end_ns: int) -> None:
        """An iteration at or over the threshold with no block in it was saturation: many
        short steps ready at once. It is the loop's figure, never a hotspot."""
        if self.last_block_end_ns < start_ns:
            self.saturated_iterations += 1

    def figures(self, full: bool, step_ring: StepRing | None
                ) -> LoopFigures:
        timer = self.timer
        heartbeat = self.heartbeat
        if timer is not None:
            histogram = tuple(timer.histogram())
            lag_max = timer.max_busy_ns
            lag_source = "iterations"
        elif heartbeat is not None:
            histogram = tuple(heartbeat.histogram())
            lag_max = heartbeat.max_lag_ns
            lag_source = "heartbeat"
        else:
            histogram, lag_max, lag_source = (), 0, "iterations"
        closed = self.closed_steps
        steps_timeline = tuple(zip(closed[0::3], closed[1::3], closed[2::3], strict=True))
        if full and step_ring is not None and self.slot is not None:
            steps_timeline = tuple(self.own_steps(step_ring(self.slot)))
        return LoopFigures(
            loop_id=self.loop_id, kind=self.kind, thread_id=self.thread_id,
            thread_name=self.thread_name, coverage=self.coverage, missing=self.missing,
            select_calls=timer.select_calls if timer is not None else None,
            events=timer.events if timer is not None else None,
            io_wait_ns=_io_wait_so_far(timer) if timer is not None else None,
            busy_ns=_busy_so_far(timer) + self.unfinished_busy_ns if timer is not None else None,
            lag_source=lag_source,  # type: ignore[arg-type]
            lag_histogram=histogram, lag_max_ns=lag_max,
            steps=self.steps() if "steps" in self.coverage else None,
            blocks=self.blocks, block_ns=self.block_ns,
            long_iterations=timer.long_iterations if timer is not None else 0,
            saturated_iterations=self.saturated_iterations,
            selects=tuple(timer.ring()) if (full and timer is not None) else (),
            steps_timeline=steps_timeline,
        )


def _busy_so_far(timer: Any) -> int:
    """The loop's busy time, including the iteration in progress (a loop stuck in a step
    when the report is taken has been busy since its last select returned)."""
    last = getattr(timer, "last_end_ns", 0)
    return int(timer.busy_ns) + (now_ns() - last if last else 0)


def _io_wait_so_far(timer: SelectTimer) -> int:
    """The loop's waiting time, including the wait in progress (a loop asleep in epoll when
    the report is taken has been idle all that time)."""
    since = getattr(timer, "waiting_since_ns", 0)
    return int(timer.io_wait_ns) + (now_ns() - since if since else 0)


class TaskStats:
    __slots__ = ("block_ns", "blocks", "max_block_ns")

    def __init__(self) -> None:
        self.blocks = 0
        self.block_ns = 0
        self.max_block_ns = 0


class Recorder:
    """Holds one installation's loops, blocks and aggregates; thread-safe."""

    def __init__(self, options: Options, epoch_offset_ns: int) -> None:
        self.options = options
        self.epoch_offset_ns = epoch_offset_ns
        self.started_ns = now_ns()
        self._lock = threading.RLock()
        self._rng = random.Random()  # our own: never touch the program's random state
        self._loops: list[LoopRecord] = []
        self._last_loop_id = 0
        self._by_loop: weakref.WeakKeyDictionary[Any, LoopRecord] = weakref.WeakKeyDictionary()
        self._blocks: deque[Block] = deque(maxlen=options.max_blocks)
        self._sites: dict[tuple[str, str | None, str | None, int | None], SiteStats] = {}
        self._tasks: dict[tuple[str, str | None], TaskStats] = {}
        self._dropped: Counter[str] = Counter()
        self.faults = FaultPolicy()
        self.publish: Callable[[Block], None] | None = None
        """Where each new block goes besides the aggregates (the live sinks' dispatcher)."""

    # -- loops

    def add_loop(self, loop: Any, kind: str, coverage: tuple[str, ...],
                 missing: tuple[str, ...]) -> LoopRecord:
        with self._lock:
            record = self._by_loop.get(loop)
            if record is None:
                if len(self._loops) >= _MAX_LOOPS:
                    self._evict_a_closed_loop()
                self._last_loop_id += 1
                record = LoopRecord(self._last_loop_id, loop, kind, coverage, missing)
                self._loops.append(record)
                self._by_loop[loop] = record
            return record

    def _evict_a_closed_loop(self) -> None:
        for index, record in enumerate(self._loops):
            if record.closed or record.loop_ref() is None:
                del self._loops[index]
                self._dropped["loops"] += 1
                return

    def release_loop(self, record: LoopRecord,
                     step_ring: StepRing | None) -> None:
        """A loop closed. Full mode keeps the steps of closed loops for the timeline, within
        one ring's worth in total: the oldest closed loops' steps make room."""
        kept = record.release(step_ring)
        if not kept:
            return
        with self._lock:
            total = sum(len(r.closed_steps) // 3 for r in self._loops)
            for old in self._loops:
                if total <= self.options.buffer_size:
                    break
                if old is not record and old.closed_steps:
                    total -= len(old.closed_steps) // 3
                    self._dropped["timeline_steps"] += len(old.closed_steps) // 3
                    old.closed_steps = array("q")

    def loop_record(self, loop: Any) -> LoopRecord | None:
        try:
            return self._by_loop.get(loop)
        except TypeError:  # not weak-referenceable: not a loop we could have attached
            return None

    def loop_records(self, *, locked: bool = True) -> list[LoopRecord]:
        """Every loop's record. ``locked=False`` reads without the lock: only in a forked
        child, where a lock held by a thread of the parent is never released."""
        if not locked:
            return list(self._loops)
        with self._lock:
            return list(self._loops)

    def loop_figures(self) -> list[LoopFigures]:
        """Each loop's figures so far, without the full-mode rings (what the metrics read,
        as :class:`looptrace.sinks.LoopsView`)."""
        return [record.figures(False, None) for record in self.loop_records()]

    def loop_now(self, loop: object) -> LoopNow | None:
        """``loop``'s live counters, read without a lock (on the loop's own thread)."""
        record = self.loop_record(loop)
        if record is None:
            return None
        timer = record.timer
        slot = record.slot
        return LoopNow(
            loop_id=record.loop_id, blocks=record.blocks,
            busy_ns=timer.busy_ns if timer is not None else None,
            io_wait_ns=timer.io_wait_ns if timer is not None else None,
            step_start_ns=(slot.start_ns if slot is not None else 0) or 0)

    # -- blocks

    def add_block(self, block: Block) -> None:
        with self._lock:
            if len(self._blocks) == self._blocks.maxlen:
                self._dropped["blocks"] += 1  # evicted from the ring; still in the figures
            self._blocks.append(block)
            site = block.site
            key = (block.kind, block.call, site.file if site else None, site.line if site else None)
            stats = self._sites.get(key)
            if stats is None:
                if len(self._sites) >= self.options.max_sites:
                    self._dropped["sites"] += 1
                else:
                    stats = self._sites[key] = SiteStats(block)
            if stats is not None:
                stats.add(block, self._rng)
            task_key = (task_group(block.task or block.callback or "?"), block.coroutine)
            task = self._tasks.get(task_key)
            if task is None and len(self._tasks) < self.options.max_tasks:
                task = self._tasks[task_key] = TaskStats()
            if task is not None:
                task.blocks += 1
                task.block_ns += block.duration_ns
                task.max_block_ns = max(task.max_block_ns, block.duration_ns)
            for record in self._loops:
                if record.loop_id == block.loop_id:
                    record.blocks += 1
                    record.block_ns += block.duration_ns
                    break
        if self.publish is not None:
            self.publish(block)

    def add_unexamined(self, loop_id: int, count: int, duration_ns: int) -> None:
        """Blocks the watchdog counted but could not examine (it fell behind a burst)."""
        with self._lock:
            self._dropped["unexamined_blocks"] += count
            for record in self._loops:
                if record.loop_id == loop_id:
                    record.blocks += count
                    record.block_ns += duration_ns
                    break

    def drop(self, what: str, count: int = 1) -> None:
        with self._lock:
            self._dropped[what] += count

    # -- faults: the policy lives in _faults.py; these are its doors for the hooks

    def on_fault(self, hook: str, disable: Callable[[], None]) -> None:
        """Register what to do when ``hook`` fails: switch it off."""
        self.faults.on_fault(hook, disable)

    def fault(self, hook: str, exc: BaseException, count: int = 1) -> None:
        """An error inside a hook: counted, that hook disabled, logged once. Never raises."""
        self.faults.fault(hook, exc, count)

    # -- copy out

    def recording(self, *, accelerated: bool, probes: int, owners: OwnerTable | None = None,
                  step_ring: StepRing | None = None,
                  extra_dropped: dict[str, int] | None = None) -> Recording:
        full = self.options.mode == "full"
        with self._lock:
            loops = tuple(r.figures(full, step_ring) for r in self._loops)
            sites = tuple(s.figures() for s in self._sites.values())
            blocks = tuple(self._blocks)
            tasks = [TaskFigures("task" if coroutine else "callback", name, coroutine, None, None,
                                 t.blocks, t.block_ns, t.max_block_ns)
                     for (name, coroutine), t in self._tasks.items()]
            dropped = Counter(self._dropped)
            faults = self.faults.faults()
        owner_rows: tuple[tuple[str, str, str | None], ...] = ()
        if owners is not None:
            tasks = _merge_owner_rows(tasks, owners)
            owner_rows = tuple((r.kind, r.name, r.coroutine) for r in owners.rows)
            dropped["tasks"] += owners.dropped
        for what, count in (extra_dropped or {}).items():
            dropped[what] += count
        return Recording(
            threshold_ns=self.options.threshold_ns, mode=self.options.mode,
            started_ns=self.started_ns, now_ns=now_ns(), epoch_offset_ns=self.epoch_offset_ns,
            argv=printable_argv(getattr(sys, "argv", None)), pid=os.getpid(), loops=loops,
            sites=sites, blocks=blocks,
            tasks=tuple(tasks), owners=owner_rows,
            dropped=tuple(sorted((k, v) for k, v in dropped.items() if v)),
            faults=faults, accelerated=accelerated, probes=probes,
        )


def _merge_owner_rows(tasks: list[TaskFigures], owners: OwnerTable) -> list[TaskFigures]:
    """Full mode: join the per-owner busy time with the per-task block figures."""
    by_key = {(t.name, t.coroutine): t for t in tasks}
    alive = owners.alive_lifetime_ns(now_ns())
    merged = []
    for oid, row in enumerate(owners.rows):
        steps = owners.steps[oid]
        if oid == 0 and not steps:
            continue
        blocks = by_key.pop((row.name, row.coroutine), None)
        counts = {name: column[oid] for name, column in owners.counts.items()}
        is_task = row.kind == "task"
        idle = (max(owners.lifetime_ns[oid] + alive[oid] - owners.busy_ns[oid]
                    - owners.scheduled_ns[oid], 0) if is_task else None)
        merged.append(TaskFigures(
            "task" if is_task else "callback", row.name, row.coroutine,
            steps, owners.busy_ns[oid],
            blocks.blocks if blocks else 0, blocks.block_ns if blocks else 0,
            blocks.max_block_ns if blocks else 0,
            scheduled_ns=owners.scheduled_ns[oid] if is_task else None, idle_ns=idle,
            max_step_ns=owners.max_step_ns[oid], **counts))
    merged.extend(by_key.values())
    return merged

