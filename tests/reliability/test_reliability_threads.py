"""Threads and loops: ten threads each running its own loop, loops created and closed
over and over, install() and uninstall() while loops run. Every loop is recorded under its
own id and its own thread, no block is credited to another loop, nothing crashes, and no
thread or file descriptor is left behind."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from reliability_helpers import PROGRAMS, run_python

import looptrace
from looptrace._hooks.blocks import CPU_STARVED
from looptrace.session import Session

THREADS = 10
BLOCKS_PER_LOOP = 3


def _check_no_cross_talk(session: Session) -> None:
    """Each block's thread and task are those of the loop it is credited to."""
    loops = {loop.id: loop for loop in session.loops}
    assert len(loops) == len(session.loops), "two loops share an id"
    for block in session.blocks:
        loop = loops[block.loop]
        assert block.thread == loop.thread, (block, loop)
        number = loop.thread.rsplit("-", 1)[-1]
        # A block of the machine's making may be a step of no task (a GIL stall between
        # steps, asyncio's own callbacks); a task it names is the loop's own.
        owners = {f"worker-{number}"} if block.call == "time.sleep" else {f"worker-{number}", None}
        assert block.task in owners, (block.task, loop.thread)


async def _worker(number: int, blocks: int, stop: threading.Event | None = None) -> int:
    asyncio.current_task().set_name(f"worker-{number}")  # type: ignore[union-attr]
    done = 0
    while (stop is None and done < blocks) or (stop is not None and not stop.is_set()):
        await asyncio.sleep(0.002)
        time.sleep(0.03)  # a block of this loop, and only this one
        done += 1
    return done


def _run_threads(target: Callable[[int], None], count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(n,), name=f"loop-{n}")
               for n in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_ten_threads_each_with_its_own_loop(no_leaks: None) -> None:
    """10 threads run a loop each at the same time: 10 loops, each under its own id and
    thread, each with exactly its own 3 blocks, from its own task."""
    results: dict[int, int] = {}

    def run(number: int) -> None:
        results[number] = asyncio.run(_worker(number, BLOCKS_PER_LOOP))

    with looptrace.installed(threshold_ms=15) as tracing:
        for thread in _run_threads(run, THREADS):
            thread.join(60)
    session = tracing.snapshot()

    assert results == {n: BLOCKS_PER_LOOP for n in range(THREADS)}
    assert sorted(loop.thread for loop in session.loops) == sorted(
        f"loop-{n}" for n in range(THREADS))
    assert not session.faults
    # Each loop's own three sleeps; on a busy machine a step may also wait for a CPU, or
    # for the GIL another loop's thread holds, past the 15 ms threshold: a block too, named
    # for that cause and never for another loop's sleep.
    machine = [b for b in session.blocks if b.call != "time.sleep"]
    assert all(b.call == CPU_STARVED or b.kind == "gil-stall" for b in machine), machine
    for loop in session.loops:
        sleeps = [b for b in session.blocks if b.loop == loop.id and b.call == "time.sleep"]
        assert len(sleeps) == BLOCKS_PER_LOOP, (loop, sleeps)
        assert loop.blocks == BLOCKS_PER_LOOP + sum(b.loop == loop.id for b in machine), loop
        assert loop.select_calls and loop.steps
    assert len(session.blocks) == THREADS * BLOCKS_PER_LOOP + len(machine)
    assert sum(h.count for h in session.hotspots) == len(session.blocks)
    _check_no_cross_talk(session)


def test_loops_created_and_closed_over_and_over(no_leaks: None) -> None:
    """4 threads each make 60 loops one after another (asyncio.run, and new_event_loop +
    run_until_complete + close): 480 loops, 480 distinct ids, none left patched."""
    selectors: list[object] = []
    lock = threading.Lock()

    async def short() -> None:
        await asyncio.sleep(0)

    def churn(number: int) -> None:
        for _ in range(60):
            asyncio.run(short())
            loop = asyncio.new_event_loop()
            loop.run_until_complete(short())
            selector = loop._selector  # type: ignore[attr-defined]
            loop.close()
            with lock:
                selectors.append(selector)

    with looptrace.installed(threshold_ms=50) as tracing:
        for thread in _run_threads(churn, 4):
            thread.join(60)
    session = tracing.snapshot()

    assert len(session.loops) == 480
    assert len({loop.id for loop in session.loops}) == 480
    assert Counter(loop.thread for loop in session.loops) == {f"loop-{n}": 120
                                                              for n in range(4)}
    assert all(loop.steps for loop in session.loops)
    assert not session.faults
    assert len(selectors) == 240
    for selector in selectors:  # a closed loop's selector keeps no timer of ours
        assert "select" not in vars(selector)


def test_more_loops_than_the_report_keeps_stay_bounded() -> None:
    """Regression: every loop ever created stayed in the recorder and the report (memory
    and report size grew without bound in a program that calls asyncio.run per request).
    Now the oldest closed loops make room; they are counted in dropped.loops."""

    async def short() -> None:
        await asyncio.sleep(0)

    with looptrace.installed(threshold_ms=50) as tracing:
        for _ in range(1200):
            asyncio.run(short())
    session = tracing.snapshot()
    assert len(session.loops) <= 1000
    assert len(session.loops) + session.dropped.get("loops", 0) == 1200
    assert len({loop.id for loop in session.loops}) == len(session.loops)
    assert max(loop.id for loop in session.loops) == 1200  # ids are never reused


def test_install_and_uninstall_while_loops_run(no_leaks: None) -> None:
    """4 threads keep their loops running while the main thread installs and uninstalls
    looptrace 8 times: each report holds exactly those 4 loops, under their own threads,
    with only their own blocks; asyncio is restored after each uninstall; the loops never
    notice."""
    stop = threading.Event()
    results: dict[int, int] = {}

    def run(number: int) -> None:
        results[number] = asyncio.run(_worker(number, 0, stop))

    threads = _run_threads(run, 4)
    try:
        time.sleep(0.05)
        for _ in range(8):
            looptrace.install(threshold_ms=15)
            time.sleep(0.2)
            session = looptrace.uninstall()
            assert session is not None
            assert sorted(loop.thread for loop in session.loops) == [f"loop-{n}"
                                                                     for n in range(4)]
            assert not session.faults
            assert all(loop.steps for loop in session.loops), session.loops
            assert session.blocks
            _check_no_cross_talk(session)
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(count > 0 for count in results.values())


@pytest.mark.parametrize("accelerator", [True, False], ids=["c-hooks", "python-hooks"])
def test_a_thread_that_ends_mid_step_leaves_no_slot_behind(accelerator: bool,
                                                           no_leaks: None) -> None:
    """Threads come and go (200 short-lived threads running a loop each): the step hook's
    per-thread slots of dead threads are forgotten, so the watchdog never samples a thread
    that no longer exists."""

    async def short() -> None:
        await asyncio.sleep(0)

    with looptrace.installed(threshold_ms=50, accelerator=accelerator) as tracing:
        for _ in range(20):
            for thread in _run_threads(lambda n: asyncio.run(short()), 10):
                thread.join(10)
        installation = looptrace._api._current
        assert installation is not None
        hook = installation.tracer.step_hook
        # The watchdog's housekeeping (about once a second) forgets dead threads' slots:
        # wait for it, however late a busy machine runs it.
        deadline = time.monotonic() + 30
        while True:
            alive = {t.ident for t in threading.enumerate()}
            stale = {slot.thread_id for slot in hook.slots()} - alive
            if not stale or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not stale, f"slots of {len(stale)} dead threads kept after 30 s"
    assert not tracing.snapshot().faults


@pytest.mark.parametrize("accelerator", ["1", "0"], ids=["c-hooks", "python-hooks"])
def test_install_uninstall_and_snapshot_race_from_four_threads(accelerator: str) -> None:
    """Regression: on Python 3.11 the process hung (or crashed) within seconds: the
    watchdog's sys._current_frames() started a garbage collection that freed the discarded
    Python step hook's threading.local, whose destructor waits for the lock
    _current_frames holds (CPython gh-106883). 4 threads installing, uninstalling and
    snapshotting at random while 4 loops block: no error, no fault, no hang, asyncio
    restored, no thread left."""
    result = run_python([str(PROGRAMS / "lifecycle_race.py"), "4"], timeout=90,
                        env={"LOOPTRACE_ACCELERATOR": accelerator})
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == {"errors": [], "restored": True, "threads": ["MainThread"]}
