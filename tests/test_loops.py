"""Every loop is recorded, whoever creates it and however it is run."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import looptrace
from helpers.lines import line_of
from looptrace.session import Session

HERE = __file__


async def blocking_main() -> str:
    await asyncio.sleep(0)
    time.sleep(0.12)  # LOOP_BLOCK
    await asyncio.sleep(0)
    return "done"


def assert_one_block(session: Session, kind_prefix: str = "selector:") -> None:
    (block,) = session.blocks
    assert block.site is not None and block.site.line == line_of(HERE, "# LOOP_BLOCK")
    assert block.kind == "blocking-call" and block.call == "time.sleep"
    loop = next(loop for loop in session.loops if loop.id == block.loop)
    assert loop.kind.startswith(kind_prefix)
    assert loop.blocks == 1


@pytest.fixture
def restore_policy() -> Iterator[None]:
    """Tests that set an event-loop policy put the default back."""
    yield
    asyncio.set_event_loop_policy(None)


def test_asyncio_run() -> None:
    """asyncio.run's loop is recorded."""
    with looptrace.installed(threshold_ms=50) as tracing:
        assert asyncio.run(blocking_main()) == "done"
    assert_one_block(tracing.snapshot())


def test_asyncio_runner() -> None:
    """asyncio.Runner's loop is recorded, across several run() calls."""
    with looptrace.installed(threshold_ms=50) as tracing, asyncio.Runner() as runner:
        runner.run(blocking_main())
        runner.run(asyncio.sleep(0.01))
    session = tracing.snapshot()
    assert_one_block(session)
    (loop,) = session.loops
    assert loop.io_wait_ms is not None and loop.io_wait_ms >= 5


def test_asyncio_run_with_a_loop_factory() -> None:
    """A loop from loop_factory= bypasses the policy and is still recorded (asyncio.run
    takes loop_factory= from 3.12; on 3.11, Runner, which asyncio.run is built on)."""
    with looptrace.installed(threshold_ms=50) as tracing:
        if sys.version_info >= (3, 12):
            asyncio.run(blocking_main(), loop_factory=asyncio.SelectorEventLoop)
        else:
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                runner.run(blocking_main())
    assert_one_block(tracing.snapshot())


def test_runner_with_a_loop_factory() -> None:
    """Runner(loop_factory=) (3.11+) is recorded."""
    with looptrace.installed(threshold_ms=50) as tracing, \
            asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(blocking_main())
    assert_one_block(tracing.snapshot())


def test_new_event_loop_and_run_until_complete() -> None:
    """A loop made with new_event_loop() and driven by run_until_complete is recorded."""
    with looptrace.installed(threshold_ms=50) as tracing:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(blocking_main())
        finally:
            loop.close()
    assert_one_block(tracing.snapshot())


def test_loop_created_before_install_is_recorded_when_it_runs() -> None:
    """A loop that exists before install() is recorded from its next run on."""
    loop = asyncio.new_event_loop()
    try:
        with looptrace.installed(threshold_ms=50) as tracing:
            loop.run_until_complete(blocking_main())
    finally:
        loop.close()
    assert_one_block(tracing.snapshot())


def test_policy_subclass_set_after_install(restore_policy: None) -> None:
    """Loops from a policy the application sets after install() are recorded, and the
    application still gets its own policy object back."""

    class AppPolicy(asyncio.DefaultEventLoopPolicy):
        pass

    with looptrace.installed(threshold_ms=50) as tracing:
        policy = AppPolicy()
        asyncio.set_event_loop_policy(policy)
        assert asyncio.get_event_loop_policy() is policy
        assert type(asyncio.get_event_loop_policy()) is AppPolicy
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(blocking_main())
        finally:
            loop.close()
    assert_one_block(tracing.snapshot())
    assert "new_event_loop" not in vars(policy)


def test_uvloop_policy_set_after_install(restore_policy: None) -> None:
    """uvloop's policy makes C loops that no asyncio hook sees: the policy door attaches a
    heartbeat to them."""
    uvloop = pytest.importorskip("uvloop")
    with looptrace.installed(threshold_ms=50) as tracing:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(blocking_main())
        finally:
            loop.close()
    assert_one_block(tracing.snapshot(), kind_prefix="uvloop")


def test_install_from_inside_a_running_loop() -> None:
    """install() called by a coroutine attaches to the loop that is already running."""

    async def main() -> Session | None:
        looptrace.install(threshold_ms=50)
        await asyncio.sleep(0.02)
        await blocking_main()
        return looptrace.uninstall()

    session = asyncio.run(main())
    assert session is not None
    assert_one_block(session)
    (loop,) = session.loops
    assert loop.select_calls is not None and loop.select_calls >= 2


def test_loop_running_in_another_thread_at_install() -> None:
    """A loop already running in another thread when install() is called is recorded."""
    started = threading.Event()
    go = threading.Event()

    async def worker() -> None:
        started.set()
        while not go.is_set():
            await asyncio.sleep(0.005)
        await blocking_main()

    thread = threading.Thread(target=lambda: asyncio.run(worker()), name="early-loop")
    thread.start()
    started.wait(5)
    try:
        with looptrace.installed(threshold_ms=50) as tracing:
            go.set()
            thread.join(5)
    finally:
        go.set()
        thread.join(5)
    session = tracing.snapshot()
    assert_one_block(session)
    assert session.blocks[0].thread == "early-loop"


def test_looptrace_loop_factory() -> None:
    """looptrace.loop_factory() installs looptrace and returns a recorded loop."""
    try:
        with asyncio.Runner(loop_factory=looptrace.loop_factory) as runner:
            assert looptrace.is_installed()
            runner.run(blocking_main())
        session = looptrace.snapshot()
    finally:
        looptrace.uninstall()
    assert_one_block(session)


def test_closed_loops_keep_their_figures_and_release_their_selector() -> None:
    """After a loop closes, its figures stay in the report and looptrace no longer holds
    its selector's select."""
    with looptrace.installed(threshold_ms=50) as tracing:
        loop = asyncio.new_event_loop()
        selector = loop._selector  # type: ignore[attr-defined]
        loop.run_until_complete(asyncio.sleep(0.02))
        assert "select" in vars(selector)
        loop.close()
        assert "select" not in vars(selector)
    (figures,) = tracing.snapshot().loops
    assert figures.select_calls is not None and figures.select_calls >= 1
    assert figures.io_wait_ms is not None and figures.io_wait_ms >= 15


def test_uninstall_releases_loops_that_are_still_open() -> None:
    """uninstall() leaves an open loop exactly as it was: its selector is untouched."""
    loop = asyncio.new_event_loop()
    try:
        with looptrace.installed():
            loop.run_until_complete(asyncio.sleep(0))
            assert "select" in vars(loop._selector)  # type: ignore[attr-defined]
        assert "select" not in vars(loop._selector)  # type: ignore[attr-defined]
        assert loop.run_until_complete(blocking_main()) == "done"
    finally:
        loop.close()
