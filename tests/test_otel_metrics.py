"""Loop metrics through the OpenTelemetry metrics API (``looptrace.eventloop.*``), read
with the SDK's in-memory reader."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import looptrace
from looptrace.sinks._otel_metrics import LAG_BUCKETS_S, thin
from otel_helpers import memory_otel


def _points(data: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != "looptrace":
                continue
            for metric in scope_metrics.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
                assert metric.unit in ("s", "1", "{block}", "{iteration}")
    return found


async def _one_block_and_some_waits() -> None:
    for _ in range(20):
        await asyncio.sleep(0.002)
    time.sleep(0.03)
    await asyncio.sleep(0.01)


def test_loop_metrics_are_exported() -> None:
    """A run with one block gives: the lag histogram (seconds, explicit buckets from 100 µs
    to 10 s) holding every iteration including the 30 ms one; busy and io_wait time; a
    utilisation between 0 and 1; the iteration count; the block counted by kind and call."""
    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=20) as tracing:
            asyncio.run(_one_block_and_some_waits())
        session = tracing.snapshot()
        points = _points(otel.metrics.get_metrics_data())
    loop = session.loops[0]
    (lag,) = points["looptrace.eventloop.lag"]
    assert tuple(lag.explicit_bounds) == LAG_BUCKETS_S
    # Every iteration but the first of each run_until_complete (asyncio.run makes three).
    assert loop.iterations - 3 <= lag.count < loop.iterations
    # The block sleeps 30 ms: at least that, more on a busy machine.
    assert lag.max >= 0.025
    assert sum(lag.bucket_counts[LAG_BUCKETS_S.index(0.025) + 1:]) >= 1
    states = {p.attributes["looptrace.eventloop.state"]: p.value
              for p in points["looptrace.eventloop.time"]}
    assert abs(states["busy"] * 1000 - loop.busy_ms) < 1
    assert abs(states["io_wait"] * 1000 - loop.io_wait_ms) < 1
    (utilization,) = points["looptrace.eventloop.utilization"]
    assert 0 < utilization.value < 1
    (iterations,) = points["looptrace.eventloop.iterations"]
    assert iterations.value == loop.iterations
    assert iterations.attributes == {"looptrace.loop.id": loop.id, "thread.name": loop.thread}
    (blocks,) = [p for p in points["looptrace.eventloop.blocks"]
                 if p.attributes.get("looptrace.call") == "time.sleep"]
    assert blocks.value == 1
    assert blocks.attributes == {"looptrace.kind": "blocking-call", "looptrace.call": "time.sleep"}
    assert sum(p.value for p in points["looptrace.eventloop.blocks"]) == loop.blocks


def test_a_second_installation_reports_through_the_same_instruments() -> None:
    """Installing again with the same MeterProvider reports the new run (the SDK keeps the
    first instrument of each name, so the instruments are shared, not re-created)."""
    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=20):
            asyncio.run(_one_block_and_some_waits())
        otel.metrics.get_metrics_data()
        with looptrace.installed(threshold_ms=20):
            asyncio.run(_one_block_and_some_waits())
            asyncio.run(_one_block_and_some_waits())
        points = _points(otel.metrics.get_metrics_data())
    assert sum(p.value for p in points["looptrace.eventloop.blocks"]
               if p.attributes.get("looptrace.call") == "time.sleep") == 3
    assert {p.attributes["looptrace.loop.id"] for p in points["looptrace.eventloop.iterations"]
            } == {1, 2}


def test_metrics_are_read_off_the_loop_thread() -> None:
    """Metric callbacks and the lag pump never run on the loop's thread."""
    seen: set[str] = set()
    original = thin

    def spy(deltas: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
        seen.add(threading.current_thread().name)
        return original(deltas, budget)

    import looptrace.sinks._otel_metrics as metrics_module
    metrics_module.thin = spy
    try:
        with memory_otel() as otel, looptrace.installed(threshold_ms=20):
            loop_thread = threading.Thread(
                target=lambda: asyncio.run(_one_block_and_some_waits()), name="loop-thread")
            loop_thread.start()
            loop_thread.join()
            otel.metrics.get_metrics_data()
    finally:
        metrics_module.thin = original
    assert seen and "loop-thread" not in seen


def test_thinning_keeps_every_bucket_and_the_budget() -> None:
    """Above the budget, sub-millisecond buckets shrink in proportion; none vanishes."""
    deltas = [(1_000, 90_000), (20_000, 9_000), (500_000, 3)]
    thinned = dict(thin(deltas, 1000))
    assert thinned == {1_000: 909, 20_000: 90, 500_000: 1}  # 99,003 -> 1,000
    assert thin(deltas[:1], 100_000) == deltas[:1]
