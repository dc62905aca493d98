"""Full mode's C step recorder (``_speedups.FullStepHook``) against its pure-Python twin, the
rings exported as memoryviews, and the benchmark's in-process sink that drains them."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from asyncio import events
from typing import Any

import pytest

import looptrace
from looptrace import _api
from looptrace._hooks.owners import OwnerTable
from looptrace._hooks.steps import FullStepHook

_speedups = pytest.importorskip("looptrace._speedups")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

from sink import FullTraceSink  # noqa: E402


async def _worker(steps: int) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)


async def _mixed_workload() -> None:
    """Tasks, plain callbacks and a loopback socket round trip."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = 50

    def hop() -> None:
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(hop)
        else:
            done.set_result(None)

    loop.call_soon(hop)
    await asyncio.gather(*(_worker(20) for _ in range(5)), done)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    await writer.drain()
    assert await reader.readexactly(4) == b"ping"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


def _owner_steps(accelerator: bool) -> tuple[set[tuple[Any, ...]], bool]:
    with looptrace.installed(mode="full", accelerator=accelerator) as tracing:
        installation = _api._current
        assert installation is not None
        tracer = installation.tracer
        asyncio.run(_mixed_workload())
        accelerated = tracer.accelerated
        assert isinstance(tracer.step_hook, FullStepHook)
    rows = tracing.snapshot().to_dict()["tasks"]["rows"]
    return {(r["kind"], r["name"], r["coroutine"], r["steps"]) for r in rows}, accelerated


def test_c_and_python_full_mode_record_the_same_steps_per_owner() -> None:
    """The C recorder and the Python one attribute the same number of steps to each task
    group and callback of the same program, and the C one is what full mode uses."""
    c_rows, c_accelerated = _owner_steps(accelerator=True)
    py_rows, py_accelerated = _owner_steps(accelerator=False)
    assert c_accelerated and not py_accelerated
    assert c_rows == py_rows
    assert ("task", "Task-*", "_worker", 5 * 21) in c_rows


def test_full_mode_rings_are_readable_as_memoryviews() -> None:
    """Each thread's step ring and each loop's select ring are int64 memoryviews whose
    records match ring_written: starts never go back, durations are not negative, owner ids
    name rows of the owner table."""

    async def main() -> tuple[Any, Any]:
        await asyncio.gather(*(_worker(30) for _ in range(4)))
        installation = _api._current
        assert installation is not None
        tracer = installation.tracer
        record = tracer.recorder.loop_record(asyncio.get_running_loop())
        return tracer.step_hook.current_slot(), record.timer

    with looptrace.installed(mode="full", buffer_size=4096):
        slot, timer = asyncio.run(main())
        owners = _api._current.tracer.owners  # type: ignore[union-attr]
        steps = memoryview(slot.ring)
        assert steps.format == "q" and len(steps) == 3 * slot.ring_capacity == 3 * 4096
        written = slot.ring_written
        assert written >= 4 * 31
        records = [tuple(steps[3 * k:3 * k + 3]) for k in range(written)]
        assert all(b[0] >= a[0] for a, b in itertools.pairwise(records))
        assert all(duration >= 0 for _, duration, _ in records)
        assert all(0 <= oid < len(owners.rows) for _, _, oid in records)
        assert [tuple(r) for r in _api._current.tracer.step_hook.ring(slot)] == records  # type: ignore[union-attr]
        waits = memoryview(timer.ring_view())
        assert waits.format == "q" and timer.ring_written >= 1
        first = tuple(waits[0:4])
        assert first[1] >= 0 and first[3] >= 0


def test_a_failing_owner_table_never_reaches_the_program() -> None:
    """If naming a step's owner raises inside the C recorder, the step still runs and
    returns normally, and the hook counts the fault."""

    class BrokenOwners(OwnerTable):
        def register(self, key: Any, owner: Any, callback: Any) -> int:
            raise RuntimeError("broken on purpose")

    calls: list[int] = []
    original = vars(events.Handle)["_run"]
    hook = _speedups.FullStepHook(original, lambda *a: None, 10**12, BrokenOwners(10), 16)
    loop = asyncio.new_event_loop()
    try:
        handle = events.Handle(calls.append, (1,), loop)
        hook(handle)
        hook(handle)
    finally:
        loop.close()
    assert calls == [1, 1]
    assert hook.faults == 2


def test_sink_exports_every_step_and_wait_even_past_the_ring_size() -> None:
    """With a ring far smaller than the run, the sink's periodic drains still export every
    step and every select wait, and count none lost."""
    sink = FullTraceSink(interval_s=0.005)

    async def main() -> int:
        total = 0
        for _ in range(40):  # sleeps give the sink thread its turn
            await asyncio.gather(*(_worker(10) for _ in range(10)))
            total += 110
            await asyncio.sleep(0.01)
        return total

    with looptrace.installed(mode="full", buffer_size=512) as tracing:
        sink.start()
        asyncio.run(main())
        figures = sink.stop()
        steps = sum(row["steps"] for row in tracing.snapshot().to_dict()["tasks"]["rows"])
        selects = tracing.snapshot().to_dict()["loops"][0]["select_calls"]
    assert figures["lost"] == 0
    assert figures["steps_exported"] == steps
    assert figures["waits_exported"] == selects


def test_sink_counts_what_a_ring_overwrote_before_a_drain() -> None:
    """Steps overwritten before the sink could copy them are counted as lost, not
    silently skipped."""
    sink = FullTraceSink(interval_s=3600)  # no periodic drain: only the final one

    async def main() -> None:
        await asyncio.gather(*(_worker(100) for _ in range(10)))

    with looptrace.installed(mode="full", buffer_size=64) as tracing:
        sink.start()
        asyncio.run(main())
        figures = sink.stop()
        steps = sum(row["steps"] for row in tracing.snapshot().to_dict()["tasks"]["rows"])
    assert figures["steps_exported"] == 64
    assert figures["lost"] == steps - 64
