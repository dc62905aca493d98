"""Several reports as one: the pytest plugin records each test on its own and writes the
run's report from all of them; a traced service's root process combines its workers'
reports; ``looptrace report a.json b.json`` combines saved ones.

Loops stay as they were recorded (renumbered, and their blocks and timelines with them;
named after their process when reports come from several processes);
hotspots and the per-task table are summed over reports; block and timeline times are
moved onto the first report's clock. Everything stays bounded: the individual blocks keep
the most recent ``max_blocks``, timelines at most ``max_timeline`` entries in all (the
oldest go first), and what is left out is counted in ``dropped``.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .analysis import median_low, task_warnings
from .events import CodeLocation
from .hotspots import advise
from .pools import ordered, pool_warning
from .session import (
    BlockEvent,
    ExecutorSite,
    Exemption,
    FaultSummary,
    Hotspot,
    LoopSummary,
    LoopTimeline,
    Owner,
    Session,
    TaskSummary,
    Timeline,
)

SiteKey = tuple[str, str | None, CodeLocation | None]


@dataclass(slots=True)
class _TaskTotal:
    """Per-task figures summed over reports."""

    steps: int | None = None
    busy_ms: float | None = None
    blocks: int = 0
    block_ms: float = 0.0
    max_block_ms: float = 0.0
    scheduled_ms: float | None = None
    idle_ms: float | None = None
    max_step_ms: float | None = None
    counts: Counter[str] = field(default_factory=Counter)

    def add_time(self, task: TaskSummary) -> None:
        """Full mode's per-task time and life, summed (the longest step kept)."""
        if task.scheduled_ms is not None:
            self.scheduled_ms = (self.scheduled_ms or 0.0) + task.scheduled_ms
        if task.idle_ms is not None:
            self.idle_ms = (self.idle_ms or 0.0) + task.idle_ms
        if task.max_step_ms is not None:
            self.max_step_ms = max(self.max_step_ms or 0.0, task.max_step_ms)
        for name in _TASK_COUNTS:
            self.counts[name] += getattr(task, name)

    def summary(self, kind: str, name: str, coroutine: str | None,
                threshold_ms: float) -> TaskSummary:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        counts = self.counts
        row = TaskSummary(kind, name, coroutine, self.steps, rounded(self.busy_ms),
                          self.blocks, round(self.block_ms, 3), self.max_block_ms,
                          scheduled_ms=rounded(self.scheduled_ms), idle_ms=rounded(self.idle_ms),
                          max_step_ms=self.max_step_ms, created=counts["created"],
                          done=counts["done"], cancelled=counts["cancelled"],
                          exception_never_retrieved=counts["exception_never_retrieved"],
                          pending_at_close=counts["pending_at_close"],
                          destroyed_pending=counts["destroyed_pending"],
                          self_wakes=counts["self_wakes"])
        return replace(row, warnings=task_warnings(row, threshold_ms))


_TASK_COUNTS = ("created", "done", "cancelled", "exception_never_retrieved",
                "pending_at_close", "destroyed_pending", "self_wakes")


@dataclass(slots=True)
class _SiteTotal:
    """Hotspot figures summed over reports."""

    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    p50_weighted: list[tuple[float, int]] = field(default_factory=list)
    worst: Hotspot | None = None


def _site_key(kind: str, call: str | None, site: CodeLocation | None) -> SiteKey:
    return (kind, call, site)


def hotspots_from_blocks(blocks: Iterable[BlockEvent]) -> tuple[Hotspot, ...]:
    """Hotspots rebuilt from individual blocks (for a slice of a longer recording)."""
    groups: dict[SiteKey, list[BlockEvent]] = {}
    for block in blocks:
        groups.setdefault(_site_key(block.kind, block.call, block.site), []).append(block)
    hotspots = []
    for (kind, call, site), group in groups.items():
        worst = max(group, key=lambda b: b.duration_ms)
        tasks = Counter((b.task, b.coroutine) for b in group)
        (task, coroutine), _ = tasks.most_common(1)[0]
        durations_us = tuple(round(b.duration_ms * 1000) for b in group)
        hotspots.append(Hotspot(
            kind=kind, call=call, site=site, count=len(group),
            total_ms=round(sum(b.duration_ms for b in group), 3), max_ms=worst.duration_ms,
            p50_ms=median_low(durations_us) / 1000, thread=worst.thread, task=task,
            coroutine=coroutine, stack=worst.stack, advice=advise(kind, call)))
    return _ordered_hotspots(hotspots)


def _ordered_hotspots(hotspots: Iterable[Hotspot]) -> tuple[Hotspot, ...]:
    return tuple(sorted(hotspots, key=lambda h: (-h.total_ms, -h.count, h.call or "")))


def _weighted_median(values: list[tuple[float, int]]) -> float:
    ordered = sorted(values)
    half = sum(weight for _, weight in ordered) / 2
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= half:
            return value
    return ordered[-1][0] if ordered else 0.0


def _labelled(session: Session, prefix: str) -> Session:
    if any(loop.thread.startswith("pid ") for loop in session.loops):
        return session  # already a combined report: its loops are named by process
    return replace(
        session,
        loops=tuple(replace(loop, thread=prefix + loop.thread) for loop in session.loops),
        blocks=tuple(replace(block, thread=prefix + block.thread) for block in session.blocks),
        hotspots=tuple(replace(h, thread=prefix + h.thread) for h in session.hotspots))


class Combined:
    """Adds reports one at a time; :meth:`session` is the combined report so far."""

    def __init__(self, *, max_blocks: int = 1000, max_timeline: int = 200_000) -> None:
        self._first: Session | None = None
        self._end_unix_ns = 0
        self._sources: dict[str, str] = {}  # the first fingerprint of each file wins
        self._loops: list[LoopSummary] = []
        self._blocks: deque[BlockEvent] = deque(maxlen=max_blocks)
        self._sites: dict[SiteKey, _SiteTotal] = {}
        self._tasks: dict[tuple[str, str, str | None], _TaskTotal] = {}
        self._owners: list[Owner] = []
        self._timelines: deque[LoopTimeline] = deque()
        self._timeline_size = 0
        self._max_timeline = max_timeline
        self._dropped: Counter[str] = Counter()
        self._faults: dict[str, FaultSummary] = {}
        self._exemptions: list[Exemption] = []
        self._executors: dict[tuple[CodeLocation | None, str], ExecutorSite] = {}
        self._threshold_ms = float("inf")
        self._modes: set[str] = set()
        self._accelerated = True
        self._probes = 0
        self.reports = 0

    def add(self, session: Session, *, process: int | None = None) -> None:
        """Add one report; ``process`` (a pid) names its loops' threads ``pid N: thread``
        so that the loops, blocks and hotspots of several processes stay apart."""
        self._add(session if process is None else _labelled(session, f"pid {process}: "))

    def _add(self, session: Session) -> None:
        if self._first is None:
            self._first = session
        first = self._first
        self.reports += 1
        self._sources = {**session.sources, **self._sources}
        offset_ms = (session.started_unix_ns - first.started_unix_ns) / 1e6
        self._end_unix_ns = max(self._end_unix_ns,
                                session.started_unix_ns + int(session.wall_ms * 1e6))
        self._threshold_ms = min(self._threshold_ms, session.threshold_ms)
        self._modes.add(session.mode)
        self._accelerated = self._accelerated and session.accelerated
        self._probes = max(self._probes, session.probes)

        new_ids = {}
        for loop in session.loops:
            new_ids[loop.id] = len(self._loops) + 1
            self._loops.append(replace(loop, id=new_ids[loop.id]))
        for block in session.blocks:
            if len(self._blocks) == self._blocks.maxlen:
                self._dropped["blocks"] += 1
            self._blocks.append(replace(block, loop=new_ids.get(block.loop, block.loop),
                                        start_ms=round(block.start_ms + offset_ms, 3)))
        for hotspot in session.hotspots:
            total = self._sites.setdefault(
                _site_key(hotspot.kind, hotspot.call, hotspot.site), _SiteTotal())
            total.count += hotspot.count
            total.total_ms += hotspot.total_ms
            total.p50_weighted.append((hotspot.p50_ms, hotspot.count))
            if hotspot.max_ms >= total.max_ms:
                total.max_ms = hotspot.max_ms
                total.worst = hotspot
        for task in session.tasks:
            row = self._tasks.setdefault((task.kind, task.name, task.coroutine), _TaskTotal())
            if task.steps is not None:
                row.steps = (row.steps or 0) + task.steps
            if task.busy_ms is not None:
                row.busy_ms = (row.busy_ms or 0.0) + task.busy_ms
            row.blocks += task.blocks
            row.block_ms += task.block_ms
            row.max_block_ms = max(row.max_block_ms, task.max_block_ms)
            row.add_time(task)
        if session.timeline is not None:
            self._add_timeline(session.timeline, new_ids, offset_ms)
        for what, count in session.dropped.items():
            self._dropped[what] += count
        for fault in session.faults:
            known = self._faults.get(fault.hook)
            self._faults[fault.hook] = (fault if known is None else
                                        replace(known, count=known.count + fault.count))
        self._exemptions.extend(session.exemptions)
        self._add_executors(session.executors)

    def _add_executors(self, rows: Iterable[ExecutorSite]) -> None:
        """Executor rows of one site and function summed; the task and trace stay those of
        the call that waited longest; the verdict is judged again on the sums."""
        for row in rows:
            key = (row.site, row.function)
            known = self._executors.get(key)
            self._executors[key] = row if known is None else _summed(known, row)

    def _add_timeline(self, timeline: Timeline, new_ids: dict[int, int],
                      offset_ms: float) -> None:
        base = len(self._owners)
        self._owners.extend(timeline.owners)
        for lt in timeline.loops:
            moved = LoopTimeline(
                new_ids.get(lt.loop, lt.loop),
                tuple((round(s + offset_ms, 3), d, t, n) for s, d, t, n in lt.selects),
                tuple((round(s + offset_ms, 3), d, owner + base) for s, d, owner in lt.steps))
            self._timelines.append(moved)
            self._timeline_size += len(moved.selects) + len(moved.steps)
        while self._timeline_size > self._max_timeline and len(self._timelines) > 1:
            oldest = self._timelines.popleft()
            size = len(oldest.selects) + len(oldest.steps)
            self._timeline_size -= size
            # The names the recorder's own counter uses (the report has one vocabulary).
            self._dropped["timeline_steps"] += len(oldest.steps)
            self._dropped["timeline_selects"] += len(oldest.selects)

    def session(self, *, argv: Iterable[str] | None = None) -> Session:
        """The combined report (raises ``ValueError`` when no report was added)."""
        first = self._first
        if first is None:
            raise ValueError("no report to combine")
        hotspots = []
        for (kind, call, site), total in self._sites.items():
            worst = total.worst
            assert worst is not None
            exact = [b.duration_ms for b in self._blocks
                     if b.kind == kind and b.call == call and b.site == site]
            p50 = (median_low(tuple(round(d * 1000) for d in exact)) / 1000
                   if len(exact) == total.count else _weighted_median(total.p50_weighted))
            hotspots.append(replace(worst, count=total.count,
                                    total_ms=round(total.total_ms, 3), max_ms=total.max_ms,
                                    p50_ms=p50))
        tasks = sorted(
            (row.summary(kind, name, coroutine, self._threshold_ms)
             for (kind, name, coroutine), row in self._tasks.items()),
            key=lambda t: (-t.block_ms, -(t.busy_ms or 0.0), t.name))
        timeline = (Timeline(tuple(self._owners), tuple(self._timelines))
                    if self._timelines else None)
        return replace(
            first,
            argv=tuple(argv) if argv is not None else first.argv,
            pid=os.getpid(),
            threshold_ms=self._threshold_ms,
            mode=next(iter(self._modes)) if len(self._modes) == 1 else "default",
            accelerated=self._accelerated,
            probes=self._probes,
            wall_ms=round((self._end_unix_ns - first.started_unix_ns) / 1e6, 3),
            loops=tuple(self._loops),
            hotspots=_ordered_hotspots(hotspots),
            blocks=tuple(sorted(self._blocks, key=lambda b: b.start_ms)),
            tasks=tuple(tasks),
            timeline=timeline,
            dropped={k: v for k, v in sorted(self._dropped.items()) if v},
            faults=tuple(self._faults.values()),
            exemptions=tuple(self._exemptions),
            sources=dict(self._sources),
            executors=ordered(replace(row, warning=pool_warning(row, self._threshold_ms))
                              for row in self._executors.values()),
        )


def _summed(known: ExecutorSite, row: ExecutorSite) -> ExecutorSite:
    longest = row if row.max_queue_ms > known.max_queue_ms else known
    workers = [w for w in (known.workers, row.workers) if w is not None]
    return replace(
        longest, calls=known.calls + row.calls, completed=known.completed + row.completed,
        waited=known.waited + row.waited,
        queue_ms=round(known.queue_ms + row.queue_ms, 3),
        run_ms=round(known.run_ms + row.run_ms, 3),
        max_run_ms=max(known.max_run_ms, row.max_run_ms),
        workers=max(workers) if workers else None,
        peak_queue_depth=max(known.peak_queue_depth, row.peak_queue_depth),
        tasks=tuple(dict.fromkeys(known.tasks + row.tasks))[:8])
