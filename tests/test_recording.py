"""What looptrace records, on real loops with real sockets: select waits, steps, blocks."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
import urllib.request

import pytest

import looptrace
from helpers import blocking
from helpers.lines import line_of
from looptrace._hooks.blocks import CPU_STARVED
from looptrace.session import Session

HERE = __file__


@pytest.fixture(params=[True, False], ids=["c-hooks", "python-hooks"])
def accelerator(request: pytest.FixtureRequest) -> bool:
    """Run a test with the C accelerator and with the pure-Python hooks."""
    if request.param:
        pytest.importorskip("looptrace._speedups", reason="the C accelerator is not built")
    return bool(request.param)


def record(main: object, **options: object) -> Session:
    with looptrace.installed(**options) as tracing:
        asyncio.run(main())  # type: ignore[operator]
    return tracing.snapshot()


def busy_loop(seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < deadline:  # BUSY_LOOP
        total += 1
    return total


# -- select waits


def test_select_wait_records_timeout_duration_and_events() -> None:
    """Full mode keeps every select wait: a 60 ms sleep is a wait asked for ~60 ms that
    returns no event; a socket read is a wait with no timeout that returns one event."""
    left, right = socket.socketpair()

    def send_later() -> None:
        time.sleep(0.08)
        right.sendall(b"ping")

    async def main() -> None:
        await asyncio.sleep(0.06)
        loop = asyncio.get_running_loop()
        left.setblocking(False)
        sender = threading.Thread(target=send_later)
        sender.start()
        assert await loop.sock_recv(left, 4) == b"ping"
        sender.join()

    try:
        session = record(main, mode="full")
    finally:
        left.close()
        right.close()
    assert session.timeline is not None
    (loop_timeline,) = session.timeline.loops
    waits = loop_timeline.selects
    sleep_waits = [w for w in waits if w[2] is not None and 40 <= w[2] <= 61]
    assert sleep_waits, waits
    assert any(w[1] >= 40 and w[3] == 0 for w in sleep_waits)
    socket_waits = [w for w in waits if w[2] is None and w[3] >= 1]
    assert any(w[1] >= 50 for w in socket_waits), waits
    (loop,) = session.loops
    assert loop.select_calls == loop.iterations and loop.select_calls >= 2
    assert loop.io_wait_ms is not None and loop.io_wait_ms >= 120
    assert loop.utilization is not None and loop.utilization < 0.5
    assert "select-waits" in loop.coverage and loop.missing == ()


def test_default_mode_counts_waits_but_keeps_no_timeline() -> None:
    """The default mode keeps per-loop figures (iterations, io-wait, lag), not every wait."""

    async def main() -> None:
        for _ in range(5):
            await asyncio.sleep(0.01)

    session = record(main)
    assert session.timeline is None
    (loop,) = session.loops
    assert loop.iterations is not None and loop.iterations >= 5
    assert loop.io_wait_ms is not None and loop.io_wait_ms >= 40
    # The lag is counted per iteration; these iterations run one tiny step each, so their
    # typical lag is far below the threshold (100 ms) even on a busy machine.
    assert loop.lag_ms.source == "iterations"
    assert loop.lag_ms.p50 is not None and loop.lag_ms.p50 < 100


# -- steps


async def named_worker(steps: int) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)


def test_steps_are_attributed_to_their_task_and_coroutine() -> None:
    """Full mode sums steps per task: a named task keeps its name and its real coroutine;
    default-named tasks group by coroutine."""

    async def main() -> None:
        await asyncio.gather(
            asyncio.create_task(named_worker(10), name="worker-A"),
            asyncio.create_task(named_worker(20)),
            asyncio.create_task(named_worker(20)),
        )

    session = record(main, mode="full")
    rows = {(t.name, t.coroutine): t for t in session.tasks}
    named = rows[("worker-A", "named_worker")]
    assert named.kind == "task"
    assert named.steps is not None and 11 <= named.steps <= 13
    grouped = rows[("Task-*", "named_worker")]
    assert grouped.steps is not None and 42 <= grouped.steps <= 46
    assert session.timeline is not None
    owners = session.timeline.owners
    worker_ids = {i for i, o in enumerate(owners) if o.name == "worker-A"}
    (loop_timeline,) = session.timeline.loops
    assert sum(1 for s in loop_timeline.steps if s[2] in worker_ids) == named.steps


# -- blocks


def test_executor_urlopen_then_read_on_the_loop_is_one_blocking_call(
        slow_http_server: str, accelerator: bool) -> None:
    """The seed pattern: urlopen offloaded, read() on the loop thread. One blocking-call
    hotspot at the read() line naming HTTPResponse.read, one occurrence per read, each as
    long as the body's delay."""
    delays_ms = [150, 250, 350]

    async def fetch(url: str) -> bytes:
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(None, urllib.request.urlopen, url)
        body: bytes = response.read()  # SEED_READ
        response.close()
        return body

    async def main() -> None:
        for delay in delays_ms:
            await fetch(f"{slow_http_server}/delay/{delay}")

    session = record(main, threshold_ms=50, accelerator=accelerator)
    assert len(session.hotspots) == 1, session.hotspots
    hotspot = session.hotspots[0]
    assert hotspot.kind == "blocking-call"
    assert hotspot.call == "http.client.HTTPResponse.read"
    assert hotspot.site is not None
    assert (hotspot.site.file, hotspot.site.line) == (HERE, line_of(HERE, "# SEED_READ"))
    assert hotspot.count == len(delays_ms)
    assert "executor" in hotspot.advice and "aiohttp" in hotspot.advice
    durations = [b.duration_ms for b in session.blocks]
    for measured, delay in zip(durations, delays_ms, strict=True):
        # On a loaded machine the server thread wakes late from its delay: the read is
        # that much longer (the step timer measures it exactly; the delay is a lower bound).
        assert delay * 0.9 <= measured <= delay * 1.1 + 50, (durations, delays_ms)
    assert all(b.task and b.coroutine == "test_executor_urlopen_then_read_on_the_loop_is_one_"
               "blocking_call.<locals>.main" for b in session.blocks)


def test_offloaded_read_and_sleep_make_no_hotspot(slow_http_server: str) -> None:
    """The same work offloaded (to_thread, run_in_executor(None, resp.read)) blocks nothing."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(
            None, urllib.request.urlopen, f"{slow_http_server}/delay/200")
        await loop.run_in_executor(None, response.read)
        response.close()
        await asyncio.to_thread(time.sleep, 0.2)

    session = record(main, threshold_ms=50)
    assert session.hotspots == ()
    assert session.blocks == ()


def test_cpu_loop_is_a_slow_step_inside_the_function(accelerator: bool) -> None:
    """A pure-Python CPU loop has no blocking call to name: a slow-step whose site is a line
    of the looping function, found by the watchdog's samples."""

    async def main() -> None:
        await asyncio.sleep(0)
        busy_loop(0.3)

    session = record(main, threshold_ms=50, accelerator=accelerator)
    (hotspot,) = session.hotspots
    assert hotspot.kind == "slow-step"
    assert hotspot.site is not None and hotspot.site.file == HERE
    assert hotspot.site.function == "busy_loop"
    start = line_of(HERE, "def busy_loop")
    assert start < hotspot.site.line <= line_of(HERE, "# BUSY_LOOP") + 1
    assert 280 <= hotspot.max_ms <= 600
    (block,) = session.blocks
    # late-sample: the watchdog sampled late (a loaded machine); the line is still the loop's.
    assert block.site_source in ("samples", "native-samples", "late-sample")
    assert block.samples >= 3
    assert "ProcessPoolExecutor" in hotspot.advice


def test_sleep_in_a_helper_module_is_reported_at_the_helper_line() -> None:
    """time.sleep one call away, in a user module: the site is the helper's sleep line."""

    async def main() -> None:
        await asyncio.sleep(0)
        blocking.nap(0.15)

    session = record(main, threshold_ms=50)
    (hotspot,) = session.hotspots
    assert hotspot.kind == "blocking-call" and hotspot.call == "time.sleep"
    assert hotspot.site is not None
    assert hotspot.site.file == blocking.__file__
    assert hotspot.site.line == line_of(blocking.__file__, "# NAP_LINE")
    assert hotspot.site.function == "nap"


def on_timer(fired: list[float]) -> None:
    time.sleep(0.15)  # TIMER_SLEEP
    fired.append(time.perf_counter())


def test_block_in_a_call_later_callback() -> None:
    """A plain callback (no task) that blocks is a block of that callback."""
    fired: list[float] = []

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.01, on_timer, fired)
        await asyncio.sleep(0.3)

    session = record(main, threshold_ms=50)
    assert len(fired) == 1
    (block,) = session.blocks
    assert block.task is None
    assert block.callback is not None and block.callback.endswith("on_timer")
    assert block.site is not None and block.site.line == line_of(HERE, "# TIMER_SLEEP")
    assert block.kind == "blocking-call" and block.call == "time.sleep"


def test_block_in_a_loop_on_a_second_thread_is_attributed_to_that_thread() -> None:
    """Each thread's loop is its own loop in the report; a block names its thread."""

    async def blocked() -> None:
        await asyncio.sleep(0)
        time.sleep(0.15)  # THREAD_SLEEP

    async def main() -> None:
        await asyncio.sleep(0.05)

    def in_thread() -> None:
        asyncio.run(blocked())

    with looptrace.installed(threshold_ms=50) as tracing:
        worker = threading.Thread(target=in_thread, name="second-loop")
        worker.start()
        asyncio.run(main())
        worker.join()
    session = tracing.snapshot()
    (block,) = session.blocks
    assert block.thread == "second-loop"
    assert block.site is not None and block.site.line == line_of(HERE, "# THREAD_SLEEP")
    loops = {loop.id: loop for loop in session.loops}
    assert len(loops) == 2
    assert loops[block.loop].thread == "second-loop"
    assert loops[block.loop].blocks == 1
    main_loop = next(loop for loop in session.loops if loop.thread == "MainThread")
    assert main_loop.blocks == 0


def test_block_under_uvloop_is_found_by_the_heartbeat() -> None:
    """uvloop runs callbacks from C: no step timer, no select timer. The heartbeat and the
    watchdog still catch the block at its line, and the report says what is missing."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # UVLOOP_SLEEP
        await asyncio.sleep(0.05)
        busy_loop(0.3)
        await asyncio.sleep(0.05)  # UVLOOP_AFTER_BUSY

    with looptrace.installed(threshold_ms=50) as tracing, \
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    session = tracing.snapshot()
    (loop,) = session.loops
    assert loop.kind == "uvloop.Loop"
    assert "steps" in loop.missing and "select-waits" in loop.missing
    assert loop.lag_ms.source == "heartbeat"
    # A loaded machine may starve the loop between them: such a block is named so.
    blocks = sorted((b for b in session.blocks if b.call != CPU_STARVED),
                    key=lambda b: b.start_ms)
    assert len(blocks) == 2, session.blocks
    sleep_block, cpu_block = blocks
    assert sleep_block.duration_source == "heartbeat+probe"
    assert sleep_block.kind == "blocking-call" and sleep_block.call == "time.sleep"
    assert sleep_block.site is not None
    assert sleep_block.site.line == line_of(HERE, "# UVLOOP_SLEEP")
    assert 240 <= sleep_block.duration_ms <= 500
    assert cpu_block.kind == "slow-step"
    assert cpu_block.site is not None
    if cpu_block.site_source == "late-sample" and cpu_block.site.function != "busy_loop":
        # The watchdog, starved by a saturated machine, first looked as the step was
        # ending: the report says the line may be late, and it is the step's next one.
        assert cpu_block.site.line == line_of(HERE, "# UVLOOP_AFTER_BUSY")
    else:
        assert cpu_block.site.function == "busy_loop"


def test_many_short_steps_in_one_iteration_are_saturation_not_a_hotspot(
        accelerator: bool) -> None:
    """40,000 short callbacks ready at once make a long iteration but no long step: the
    loop's saturated_iterations counts it; there is no hotspot at any line."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        remaining = [40_000]

        def tick() -> None:
            deadline = time.perf_counter() + 0.000005
            while time.perf_counter() < deadline:
                pass
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set_result(None)

        async def schedule(count: int) -> None:
            for _ in range(count):
                loop.call_soon(tick)

        # 40 tasks whose steps all run in one iteration, each scheduling 1,000 callbacks,
        # so the next iteration has 40,000 ready at once and no step is long.
        schedulers = [loop.create_task(schedule(1_000)) for _ in range(40)]
        await done
        await asyncio.gather(*schedulers)

    session = record(main, threshold_ms=50, accelerator=accelerator)
    # A garbage collection may stop the loop too; it is named as such (its line, kept as
    # evidence, is only the allocation that triggered it).
    # A step preempted for the threshold on a loaded machine is named for that
    # (cpu.run_queue), never as the line's fault either.
    assert [h for h in session.hotspots
            if not (h.call or "").startswith(("gc.collect", CPU_STARVED))] == []
    (loop,) = session.loops
    assert loop.long_iterations >= 1
    # Every long iteration is saturation, unless a step in it was itself stopped past the
    # threshold (a collection, or preempted on a loaded machine: a block, named so).
    assert loop.saturated_iterations >= 1 or session.blocks
    assert all(b.call and b.call.startswith(("gc.collect", CPU_STARVED))
               for b in session.blocks)


def test_block_in_an_eager_task_is_attributed_to_that_task() -> None:
    """An eager task's first step runs inside its creator's step; the samples know better.
    (Its name is read when the step ends: create_task names a task after its eager step.)
    Eager tasks are new in 3.12; on 3.11 the same task runs its first step on its own."""

    async def eager_child() -> None:
        time.sleep(0.15)
        await asyncio.sleep(0)

    async def main() -> None:
        if sys.version_info >= (3, 12):
            asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        task = asyncio.create_task(eager_child(), name="eager-child")
        await task

    session = record(main, threshold_ms=50)
    (block,) = session.blocks
    assert block.task == "eager-child"


def test_blocks_carry_exact_durations_not_sample_counts() -> None:
    """Durations come from the step timer: a 0.23 s sleep is not rounded to samples."""

    async def main() -> None:
        await asyncio.sleep(0)
        time.sleep(0.23)

    session = record(main, threshold_ms=50, sample_interval_ms=10)
    (block,) = session.blocks
    assert 229 <= block.duration_ms <= 300
    assert block.duration_source == "step-timer"


def test_full_mode_keeps_closed_loops_steps_within_one_ring() -> None:
    """Each closed loop keeps its steps for the timeline, but all closed loops together keep
    at most one ring's worth: the oldest give way, and the report counts what they lost."""

    async def main() -> None:
        await named_worker(60)

    with looptrace.installed(mode="full", buffer_size=100) as tracing:
        for _ in range(5):
            asyncio.run(main())
    session = tracing.snapshot()
    assert session.timeline is not None
    kept = [len(loop.steps) for loop in session.timeline.loops]
    assert kept[-1] >= 60
    assert sum(kept[:-1]) <= 100
    assert session.dropped.get("timeline_steps", 0) >= 60
