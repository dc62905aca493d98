"""From a recording (raw integers) to a :class:`~looptrace.session.Session` (the report)."""

from __future__ import annotations

import platform
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ._histogram import percentile
from .events import Block, LoopFigures, Recording, SiteFigures, TaskFigures, Victims
from .hotspots import advise
from .session import (
    BlockEvent,
    FaultSummary,
    Hotspot,
    Lag,
    LoopSummary,
    LoopTimeline,
    Owner,
    Session,
    TaskSummary,
    Timeline,
    VictimEvent,
)


def ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def _opt_ms(ns: int | None) -> float | None:
    return None if ns is None else ms(ns)


def loop_summary(figures: LoopFigures) -> LoopSummary:
    busy, idle = figures.busy_ns, figures.io_wait_ns
    utilization = None
    if busy is not None and idle is not None and busy + idle > 0:
        utilization = round(busy / (busy + idle), 4)
    histogram = figures.lag_histogram
    return LoopSummary(
        id=figures.loop_id, thread=figures.thread_name, thread_id=figures.thread_id,
        kind=figures.kind, coverage=figures.coverage, missing=figures.missing,
        iterations=figures.select_calls, select_calls=figures.select_calls,
        events=figures.events, io_wait_ms=_opt_ms(idle), busy_ms=_opt_ms(busy),
        utilization=utilization,
        lag_ms=Lag(_opt_ms(percentile(histogram, 0.50, figures.lag_max_ns)),
                   _opt_ms(percentile(histogram, 0.99, figures.lag_max_ns)),
                   ms(figures.lag_max_ns) if histogram else None, figures.lag_source),
        steps=figures.steps, blocks=figures.blocks, block_ms=ms(figures.block_ns),
        long_iterations=figures.long_iterations,
        saturated_iterations=figures.saturated_iterations,
    )


def median_low(values: tuple[int, ...]) -> int:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else 0


def hotspot(site: SiteFigures) -> Hotspot:
    return Hotspot(
        kind=site.kind, call=site.call, site=site.site, count=site.count,
        total_ms=ms(site.total_ns), max_ms=ms(site.max_ns),
        p50_ms=ms(median_low(site.durations_ns)), thread=site.thread_name, task=site.task,
        coroutine=site.coroutine, stack=site.stack, advice=advise(site.kind, site.call),
    )


def block_event(block: Block, started_ns: int, epoch_offset_ns: int) -> BlockEvent:
    """The one conversion of a recorded block (monotonic nanoseconds) into the report's
    record (milliseconds from the start, epoch nanoseconds, hex span ids). Every output
    reads the result: the report, and each live sink (converted once per block on the
    dispatch thread, from the recorder's ``started_ns`` and ``epoch_offset_ns``)."""
    return BlockEvent(
        loop=block.loop_id, thread=block.thread_name, thread_id=block.thread_id,
        start_ms=ms(block.start_ns - started_ns),
        start_unix_ns=block.start_ns + epoch_offset_ns,
        duration_ms=ms(block.duration_ns), duration_source=block.duration_source,
        kind=block.kind, call=block.call, site=block.site, site_source=block.site_source,
        task=block.task, coroutine=block.coroutine, callback=block.callback,
        samples=block.samples,
        trace_id=f"{block.trace_id:032x}" if block.trace_id is not None else None,
        span_id=f"{block.span_id:016x}" if block.span_id is not None else None,
        stack=block.stack, gc_ms=ms(block.gc_ns), trace_sampled=block.trace_sampled,
        cpu_wait_ms=ms(block.cpu_wait_ns),
        cpu_ms=ms(block.cpu_ns) if block.cpu_ns is not None else None,
        causes=block.causes, in_progress=block.in_progress, call_source=block.call_source,
        gil_wait_ms=ms(block.gil_wait_ns), gil_holder=block.gil_holder,
        gil_holder_call=block.gil_holder_call, gil_holder_site=block.gil_holder_site,
        **_victim_fields(block.victims),
    )


def _victim_fields(victims: Victims | None) -> dict[str, Any]:
    """A block's victims as the report's flat fields (none: not measured)."""
    if victims is None:
        return {}
    return {
        "victims": victims.count, "victim_delay_ms": ms(victims.total_ns),
        "victim_max_delay_ms": ms(victims.max_ns),
        "victim_requests": tuple(f"{t:032x}" for t in victims.requests),
        "victim_request_count": victims.request_count,
        "victim_detail": tuple(
            VictimEvent(v.kind, v.name, v.coroutine, ms(v.delay_ns),
                        f"{v.trace_id:032x}" if v.trace_id is not None else None,
                        f"{v.span_id:016x}" if v.span_id is not None else None)
            for v in victims.detail),
    }


BUSY_POLL_MIN_STEPS = 100
"""A task is a busy-poller when at least this many steps and more than half of them
self-woken (tokio-console: woken far more often than it does work)."""


def task_warnings(task: TaskSummary, threshold_ms: float) -> tuple[str, ...]:
    """Warnings in tokio-console's manner, for one row of the per-task table (full mode)."""
    found = []
    if task.max_step_ms is not None and task.max_step_ms >= threshold_ms:
        found.append("long-step")  # did not yield for longer than the threshold
    steps = task.steps or 0
    if steps >= BUSY_POLL_MIN_STEPS and task.self_wakes * 2 > steps:
        found.append("busy-poll")
    if task.pending_at_close:
        found.append("pending-at-close")
    if task.destroyed_pending:
        found.append("destroyed-pending")
    if task.exception_never_retrieved:
        found.append("exception-never-retrieved")
    return tuple(found)


def task_summary(t: TaskFigures, threshold_ms: float) -> TaskSummary:
    summary = TaskSummary(
        t.kind, t.name, t.coroutine, t.steps, _opt_ms(t.busy_ns), t.blocks, ms(t.block_ns),
        ms(t.max_block_ns), scheduled_ms=_opt_ms(t.scheduled_ns), idle_ms=_opt_ms(t.idle_ns),
        max_step_ms=_opt_ms(t.max_step_ns), created=t.created, done=t.done,
        cancelled=t.cancelled, exception_never_retrieved=t.never_retrieved,
        pending_at_close=t.pending_at_close, destroyed_pending=t.destroyed_pending,
        self_wakes=t.self_wakes)
    return replace(summary, warnings=task_warnings(summary, threshold_ms))


def timeline(recording: Recording) -> Timeline | None:
    if recording.mode != "full":
        return None
    start = recording.started_ns
    loops = []
    for figures in recording.loops:
        selects = tuple((ms(s - start), ms(d), None if t < 0 else ms(t), n)
                        for s, d, t, n in figures.selects)
        steps = tuple((ms(s - start), ms(d), owner) for s, d, owner in figures.steps_timeline)
        loops.append(LoopTimeline(figures.loop_id, selects, steps))
    owners = tuple(Owner(kind, name, coroutine) for kind, name, coroutine in recording.owners)
    return Timeline(owners, tuple(loops))


def session_from(recording: Recording, version: str) -> Session:
    started_unix_ns = recording.started_ns + recording.epoch_offset_ns
    started_at = datetime.fromtimestamp(started_unix_ns / 1e9, tz=UTC)
    hotspots = sorted((hotspot(s) for s in recording.sites),
                      key=lambda h: (-h.total_ms, -h.count, h.call or ""))
    threshold_ms = ms(recording.threshold_ns)
    tasks = sorted(
        (task_summary(t, threshold_ms) for t in recording.tasks),
        key=lambda t: (-t.block_ms, -(t.busy_ms or 0.0), t.name))
    return Session(
        looptrace_version=version,
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        platform=sys.platform,
        argv=recording.argv,
        pid=recording.pid,
        started_at=started_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        started_unix_ns=started_unix_ns,
        threshold_ms=recording.threshold_ns / 1e6,
        mode=recording.mode,
        accelerated=recording.accelerated,
        probes=recording.probes,
        wall_ms=ms(recording.now_ns - recording.started_ns),
        loops=tuple(loop_summary(f) for f in recording.loops),
        hotspots=tuple(hotspots),
        blocks=tuple(block_event(b, recording.started_ns, recording.epoch_offset_ns)
                     for b in sorted(recording.blocks, key=lambda b: b.start_ns)),
        tasks=tuple(tasks),
        timeline=timeline(recording),
        dropped=dict(recording.dropped),
        faults=tuple(FaultSummary(f.hook, f.count, f.error) for f in recording.faults),
    )
