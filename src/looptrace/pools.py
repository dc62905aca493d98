"""Executor calls in the report: one row per call site, and the pool verdict.

A call handed to a thread pool waits for a free worker (its queue wait), then runs. When
the waiting is a large share of the time and adds up to more than the block threshold, the
pool, not the work, made the program wait: the rule below says so on that site's row. In
the manner of tokio-console's warnings it needs a few calls before it judges (one slow
start of a pool is no pattern).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from .events import ExecutorFigures
from .session import ExecutorSite

MIN_CALLS = 5
"""Calls a site must have finished before the verdict judges it."""
QUEUE_SHARE = 1 / 3
"""The share of queue wait in queue + run from which the pool is the bottleneck: the calls
waited for a worker at least half as long as they ran. (A pool of ``n`` workers given
``3n`` equal jobs at once waits exactly as long as it runs, a share of 1/2: a rule at 1/2
would call that case by a coin's toss on a busy machine.)"""
_WAITED_NS = 1_000_000
"""A call counts as having waited for a worker from this queue wait on (1 ms)."""


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def pool_warning(row: ExecutorSite, threshold_ms: float) -> str | None:
    """The warning for a site whose calls mostly waited for a worker, else None."""
    busy = row.queue_ms + row.run_ms
    if row.completed < MIN_CALLS or busy <= 0:
        return None
    if row.queue_ms < QUEUE_SHARE * busy or row.queue_ms < threshold_ms:
        return None
    workers = f"{row.workers} workers" if row.workers is not None else "the pool's workers"
    return (f"the pool, not the work, is the bottleneck: {workers}, {row.waited} calls waited "
            f"{row.queue_ms:.0f} ms in all for a worker (longest {row.max_queue_ms:.0f} ms, "
            f"up to {row.peak_queue_depth} queued); raise max_workers "
            "(`ThreadPoolExecutor(max_workers=...)`; for `to_thread` and "
            "`run_in_executor(None, ...)`, `loop.set_default_executor(...)`) if the work "
            "waits on I/O, or bound the calls in flight with an `asyncio.Semaphore`; "
            "pure-Python CPU work gains nothing from more threads: use a "
            "ProcessPoolExecutor")


def ordered(rows: Iterable[ExecutorSite]) -> tuple[ExecutorSite, ...]:
    """Most queue wait first."""
    return tuple(sorted(rows, key=lambda r: (-r.queue_ms, -r.run_ms, -r.calls, r.function)))


def executor_rows(figures: Iterable[ExecutorFigures], threshold_ms: float
                  ) -> tuple[ExecutorSite, ...]:
    """The report's rows, most queue wait first, each with its verdict."""
    rows = []
    for f in figures:
        row = ExecutorSite(
            site=f.site, function=f.function, calls=f.calls, completed=f.completed,
            queue_ms=_ms(f.queue_ns), max_queue_ms=_ms(f.queue_max_ns), run_ms=_ms(f.run_ns),
            max_run_ms=_ms(f.run_max_ns), workers=f.workers,
            peak_queue_depth=f.peak_queue_depth, task=f.task,
            trace_id=f"{f.trace_id:032x}" if f.trace_id is not None else None,
            span_id=f"{f.span_id:016x}" if f.span_id is not None else None,
            warning=None,
            waited=sum(count for low, count in f.queue_histogram if low >= _WAITED_NS),
            tasks=f.tasks)
        rows.append(replace(row, warning=pool_warning(row, threshold_ms)))
    return ordered(rows)
