"""Full mode's per-task time (busy, scheduled, idle, longest step), life (created, done,
cancelled, exception never retrieved, destroyed while pending, pending at close) and
warnings, against ground truth the tests build on real asyncio: known spins, a known
block with tasks ready behind it, a known sleep, a sleep(0) poller."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from asyncio import base_events, runners
from typing import Any

import pytest

import looptrace
from looptrace.exporters import html, text
from looptrace.session import Session, TaskSummary

THRESHOLD_MS = 20.0
SPIN_S = 0.03
BLOCK_S = 0.1
SLEEP_S = 0.2

_kept: list[asyncio.Task[Any]] = []  # keeps the task left pending at close alive


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _row(session: Session, name: str) -> TaskSummary:
    (row,) = [t for t in session.tasks if t.name == name]
    return row


async def _spinner(steps: int) -> None:
    for _ in range(steps):
        _spin(SPIN_S)
        await asyncio.sleep(0)


async def _poller(steps: int) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)


async def _polite(steps: int) -> None:
    for _ in range(steps):
        await asyncio.sleep(0.001)


async def _workload() -> None:
    """A spinner, a busy-poller, a polite poller, three tasks ready behind a known block,
    and a sleeper."""
    ready = [asyncio.create_task(asyncio.sleep(0), name=f"ready-{i}") for i in range(3)]
    time.sleep(BLOCK_S)  # the three are ready (call_soon at creation) for all of it
    await asyncio.gather(*ready)
    await asyncio.gather(
        asyncio.create_task(_spinner(5), name="spinner"),
        asyncio.create_task(_poller(150), name="poller"),
        asyncio.create_task(_polite(150), name="polite"),
        asyncio.create_task(asyncio.sleep(SLEEP_S), name="sleeper"))


def _full_session(main: Any, *, accelerator: bool = True) -> Session:
    with looptrace.installed(mode="full", threshold_ms=THRESHOLD_MS, accelerator=accelerator,
                             summary=False) as tracing:
        asyncio.run(main())
        gc.collect()
        session = tracing.snapshot()
    assert session.faults == ()
    return session


@pytest.fixture(scope="module")
def session() -> Session:
    return _full_session(_workload)


def test_busy_and_longest_step_of_a_spinning_task(session: Session) -> None:
    """Five steps of a 30 ms spin: busy at least 150 ms, the longest step at least 30 ms,
    over the 20 ms threshold: a "long-step" warning (it did not yield for that long)."""
    row = _row(session, "spinner")
    assert row.steps == 6
    assert row.busy_ms is not None and row.busy_ms >= 5 * SPIN_S * 1000
    assert row.max_step_ms is not None and row.max_step_ms >= SPIN_S * 1000
    assert row.busy_ms >= row.max_step_ms
    assert row.created == row.done == 1 and row.cancelled == 0
    assert "long-step" in row.warnings


def test_tasks_ready_behind_a_block_were_scheduled_for_all_of_it(session: Session) -> None:
    """Three tasks made ready, then the loop blocked 100 ms: each one waited ready at
    least the block's length."""
    for i in range(3):
        row = _row(session, f"ready-{i}")
        assert row.scheduled_ms is not None and row.scheduled_ms >= BLOCK_S * 1000, row
        assert row.busy_ms is not None and row.busy_ms < row.scheduled_ms


def test_a_sleeping_task_is_idle_for_its_sleep(session: Session) -> None:
    """A task that sleeps 200 ms is idle (awaiting) for about that long: its lifetime minus
    its busy and scheduled time."""
    row = _row(session, "sleeper")
    assert row.idle_ms is not None and row.idle_ms >= SLEEP_S * 1000 * 0.95
    assert row.busy_ms is not None and row.busy_ms < row.idle_ms
    assert row.warnings == ()


def test_a_sleep_zero_poller_is_a_busy_poll(session: Session) -> None:
    """150 ``sleep(0)``: 150 wakes the task made of itself, a "busy-poll" warning; the
    same with ``sleep(0.001)`` (a timer wakes it) makes no self-wake and no warning."""
    poller = _row(session, "poller")
    assert poller.steps == 151 and poller.self_wakes == 150
    assert "busy-poll" in poller.warnings
    polite = _row(session, "polite")
    assert polite.steps == 151 and polite.self_wakes == 0
    assert polite.warnings == ()
    # Woken 150 times while others ran: its scheduled time is real and counted per step.
    assert poller.scheduled_ms is not None and poller.scheduled_ms > 0


def test_callbacks_have_no_idle_time(session: Session) -> None:
    callbacks = [t for t in session.tasks if t.kind == "callback"]
    assert callbacks
    assert all(t.idle_ms is None and t.scheduled_ms is None for t in callbacks)


def test_exception_never_retrieved_and_destroyed_while_pending_are_counted() -> None:
    """asyncio's own messages, counted on the task's row; the program's exception handler
    still gets them."""
    seen: list[str] = []

    async def boom() -> None:
        raise ValueError("nobody looks")

    async def forever() -> None:
        await asyncio.get_running_loop().create_future()

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: seen.append(context["message"]))
        failing = asyncio.create_task(boom(), name="boom")
        lost = asyncio.create_task(forever(), name="lost")
        await asyncio.sleep(0.01)
        assert failing.done() and not lost.done()
        del failing, lost
        gc.collect()

    session = _full_session(main)
    boom_row = _row(session, "boom")
    assert boom_row.exception_never_retrieved == 1
    assert "exception-never-retrieved" in boom_row.warnings
    lost_row = _row(session, "lost")
    assert lost_row.destroyed_pending == 1 and lost_row.done == 0
    assert "destroyed-pending" in lost_row.warnings
    assert sorted(seen) == ["Task exception was never retrieved",
                            "Task was destroyed but it is pending!"]


def test_a_task_left_pending_when_main_returns_is_pending_at_close() -> None:
    """asyncio.run cancels what main left running before it closes the loop: such a task
    counts as pending at close (and then done, cancelled)."""
    _kept.clear()

    async def forever() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        _kept.append(asyncio.create_task(forever(), name="left-behind"))
        await asyncio.sleep(0.01)

    session = _full_session(main)
    _kept.clear()
    row = _row(session, "left-behind")
    assert row.pending_at_close == 1
    assert row.done == 1 and row.cancelled == 1
    assert "pending-at-close" in row.warnings


def test_a_loop_closed_with_a_pending_task_counts_it_once() -> None:
    with looptrace.installed(mode="full", summary=False) as tracing:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(asyncio.sleep(10), name="never-finished")
            loop.run_until_complete(asyncio.sleep(0.01))
        finally:
            loop.close()
        session = tracing.snapshot()
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # asyncio's own switch
        del task
    assert _row(session, "never-finished").pending_at_close == 1


def _figures(session: Session) -> set[tuple[Any, ...]]:
    return {(t.kind, t.name, t.coroutine, t.steps, t.self_wakes, t.created, t.done,
             t.cancelled, t.scheduled_ms is None, t.idle_ms is None) for t in session.tasks}


def test_c_and_python_hooks_agree() -> None:
    pytest.importorskip("looptrace._speedups")
    c_session = _full_session(_workload, accelerator=True)
    py_session = _full_session(_workload, accelerator=False)
    assert c_session.accelerated and not py_session.accelerated
    assert _figures(c_session) == _figures(py_session)
    for name in ("ready-0", "ready-1", "ready-2"):
        for one in (c_session, py_session):
            scheduled = _row(one, name).scheduled_ms
            assert scheduled is not None and scheduled >= BLOCK_S * 1000


def test_outputs_show_the_task_time_and_warnings(session: Session) -> None:
    summary = text.render(session)
    assert "Tasks by busy time" in summary and "spinner" in summary
    assert "Tasks by scheduled time" in summary
    assert "busy-poll" in summary and "poller" in summary
    page = html.render(session)
    assert '<th class="num">scheduled</th>' in page and 'class="sortable" id="task-table"' in page
    assert "busy-poll" in page
    again = Session.from_json(json.dumps(session.to_dict()))
    assert _row(again, "poller") == _row(session, "poller")


def test_an_old_report_reads_with_defaults(session: Session) -> None:
    data = session.to_dict()
    new = ("scheduled_ms", "idle_ms", "max_step_ms", "created", "done", "cancelled",
           "exception_never_retrieved", "pending_at_close", "destroyed_pending",
           "self_wakes", "warnings")
    for row in data["tasks"]["rows"]:
        for field in new:
            del row[field]
    old = Session.from_dict(data)
    row = _row(old, "poller")
    assert row.steps == 151 and row.scheduled_ms is None and row.warnings == ()


def test_default_mode_adds_no_patch_and_no_task_time() -> None:
    originals = (vars(base_events.BaseEventLoop)["call_soon"],
                 vars(base_events.BaseEventLoop)["call_exception_handler"],
                 runners._cancel_all_tasks)
    with looptrace.installed(summary=False) as tracing:
        assert (vars(base_events.BaseEventLoop)["call_soon"],
                vars(base_events.BaseEventLoop)["call_exception_handler"],
                runners._cancel_all_tasks) == originals
        asyncio.run(_poller(10))
        session = tracing.snapshot()
    assert all(t.scheduled_ms is None and t.self_wakes == 0 for t in session.tasks)
    assert "task-scheduled" not in session.loops[0].coverage
    with looptrace.installed(mode="full", summary=False):
        assert vars(base_events.BaseEventLoop)["call_soon"] is not originals[0]
    assert (vars(base_events.BaseEventLoop)["call_soon"],
            vars(base_events.BaseEventLoop)["call_exception_handler"],
            runners._cancel_all_tasks) == originals


def test_full_mode_on_asyncio_covers_task_scheduled(session: Session) -> None:
    assert "task-scheduled" in session.loops[0].coverage


def test_uvloop_says_scheduled_time_is_missing() -> None:
    """uvloop's call_soon is Cython, out of reach of the class patch: the program runs as
    always, no fault, and the loop lists ``task-scheduled`` as missing."""
    uvloop = pytest.importorskip("uvloop")
    with looptrace.installed(mode="full", summary=False) as tracing:
        assert uvloop.run(_poller(20)) is None
    session = tracing.snapshot()
    assert session.faults == ()
    (loop,) = session.loops
    assert "task-scheduled" in loop.missing
    assert "task-scheduled" in text.render(session)


def test_the_scheduled_time_histogram_is_exported() -> None:
    """With OpenTelemetry, full mode records each task step's time ready (seconds) under
    its row: the three tasks ready behind the 100 ms block add up at least that each."""
    from otel_helpers import memory_otel

    with memory_otel() as otel:
        with looptrace.installed(mode="full", summary=False):
            asyncio.run(_workload())
        data = otel.metrics.get_metrics_data()
    points = [point for resource_metrics in data.resource_metrics
              for scope_metrics in resource_metrics.scope_metrics
              for metric in scope_metrics.metrics
              if metric.name == "looptrace.task.scheduled.duration" and metric.unit == "s"
              for point in metric.data.data_points]
    by_name = {p.attributes["looptrace.task.name"]: p for p in points}
    for i in range(3):
        point = by_name[f"ready-{i}"]
        assert point.count == 2 and point.sum >= BLOCK_S
    # 151 steps in one pass: thinned to the pass's budget shared among the rows.
    assert 1 <= by_name["poller"].count <= 151 and by_name["poller"].min > 0
