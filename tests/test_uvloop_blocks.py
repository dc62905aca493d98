"""uvloop as a first-class loop: every block at or over the threshold is reported, its
duration close to the truth, with its task and request span; what uvloop cannot give is in
the loop's ``missing`` list."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider

import looptrace
from helpers.lines import line_of

uvloop = pytest.importorskip("uvloop")
HERE = __file__


def within(measured_ms: float, true_ms: float) -> bool:
    """The issue's bound: within 5 % or 5 ms of the true duration."""
    return abs(measured_ms - true_ms) <= max(5.0, 0.05 * true_ms)


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i  # UV_SPIN
    return total


def test_every_block_just_over_the_threshold_is_reported_with_its_duration() -> None:
    """Ten 110 ms sleeps at the 100 ms threshold (between 1x and 1.25x of it, where the
    heartbeat used to lose nine of ten): ten blocks, each within 5 % or 5 ms."""
    true_ms: list[float] = []

    async def main() -> None:
        for _ in range(10):
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            time.sleep(0.11)  # UV_SLEEP
            true_ms.append((time.perf_counter() - started) * 1000)

    with looptrace.installed(threshold_ms=100) as tracing:
        uvloop.run(main())
    line = line_of(HERE, "# UV_SLEEP")
    blocks = sorted((b for b in tracing.snapshot().blocks if b.site and b.site.line == line),
                    key=lambda b: b.start_ms)  # a loaded machine may add a block elsewhere
    assert len(blocks) == 10, [b.duration_ms for b in blocks]
    for block, truth in zip(blocks, true_ms, strict=True):
        assert (block.kind, block.call) == ("blocking-call", "time.sleep")
        assert block.duration_source == "heartbeat+probe"
        assert within(block.duration_ms, truth), (block.duration_ms, truth)


def test_cpu_blocks_on_uvloop_have_their_line_task_and_duration() -> None:
    """CPU work (no probe) is timed from the last moment the loop was known free: each
    block is reported at its line, with its task, within 5 % or 5 ms of the time the work
    took, plus the little the loop ran around it: from when the task's timer was due (the
    loop was idle in its poll until then) to the beat after the work, which on a busy
    machine may wait for a CPU (seen in CI: 9 ms; the block's ``cpu_wait_ms`` measures
    such waits, and is 0 on an idle machine, where the bound is tight)."""
    true_ms: list[tuple[float, float]] = []  # (the work, since the timer was due)

    async def handler() -> None:
        due = time.perf_counter() + 0.01
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        spin(1_500_000)
        ended = time.perf_counter()
        true_ms.append(((ended - started) * 1000, (ended - min(due, started)) * 1000))

    async def main() -> None:
        for i in range(5):
            await asyncio.create_task(handler(), name=f"uv-request-{i}")

    with looptrace.installed(threshold_ms=50) as tracing:
        uvloop.run(main())
    blocks = sorted((b for b in tracing.snapshot().blocks
                     if b.task and b.task.startswith("uv-request-")), key=lambda b: b.start_ms)
    assert len(blocks) == len(true_ms) == 5, [b.duration_ms for b in blocks]
    for i, (block, (work, since_due)) in enumerate(zip(blocks, true_ms, strict=True)):
        assert block.kind == "slow-step" and block.duration_source == "heartbeat"
        assert block.site is not None and block.site.line == line_of(HERE, "# UV_SPIN")
        assert block.task == f"uv-request-{i}"
        slack = max(5.0, 0.05 * work)  # the bound: 5 % or 5 ms
        assert work - slack <= block.duration_ms <= since_due + slack + block.cpu_wait_ms, \
            (block.duration_ms, work, since_due, block.cpu_wait_ms)


def test_blocks_on_uvloop_carry_their_request_span() -> None:
    """The span current in the blocked task is the block's parent, as on asyncio: read at
    the probed call, and for sampled blocks from the task's context (``get_context()``:
    uvloop runs C tasks, whose context only that method gives, from 3.12)."""
    tracer = TracerProvider().get_tracer("test")
    spans: dict[str, tuple[int, int]] = {}

    async def request(name: str, work: str) -> None:
        with tracer.start_as_current_span(name) as span:
            ctx = span.get_span_context()
            spans[name] = (ctx.trace_id, ctx.span_id)
            await asyncio.sleep(0.01)
            if work == "sleep":
                time.sleep(0.08)
            else:
                spin(1_000_000)

    async def main() -> None:
        await asyncio.create_task(request("sleeping", "sleep"))
        await asyncio.create_task(request("spinning", "spin"))

    with looptrace.installed(threshold_ms=40) as tracing:
        uvloop.run(main())
    session = tracing.snapshot()
    by_call = {b.call: b for b in session.blocks}
    sleeping = by_call["time.sleep"]
    assert (sleeping.trace_id, sleeping.span_id) == (
        f"{spans['sleeping'][0]:032x}", f"{spans['sleeping'][1]:016x}")
    (loop,) = session.loops
    spinning = by_call[None]
    if sys.version_info >= (3, 12):
        assert (spinning.trace_id, spinning.span_id) == (
            f"{spans['spinning'][0]:032x}", f"{spans['spinning'][1]:016x}")
        assert "block-spans" not in loop.missing
    else:
        assert spinning.trace_id is None and "block-spans" in loop.missing
    assert "select-waits" in loop.missing
