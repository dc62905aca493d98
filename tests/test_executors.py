"""Executor calls (``run_in_executor``, ``to_thread``) timed per call site, against ground
truth the tests build: a pool of known size given jobs of known length, all at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import multiprocessing
import threading
import time
from asyncio import base_events
from typing import Any

import pytest

import looptrace
from looptrace import _combine
from looptrace.exporters import html, text
from looptrace.session import ExecutorSite, Session

JOB_S = 0.1


def _line_of(marker: str) -> int:
    """The line of this file that holds ``marker`` (a comment), so the expected site does
    not hard-code a number."""
    with open(__file__, encoding="utf-8") as f:
        return next(number for number, line in enumerate(f, start=1)
                    if line.rstrip().endswith(marker))


def _rows(session: Session, function: str) -> list[ExecutorSite]:
    return [row for row in session.executors if row.function == function]


async def _six_jobs_on_two_workers() -> None:
    asyncio.current_task().set_name("six-jobs")  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, JOB_S)  # six-jobs
                               for _ in range(6)))


def test_a_pool_of_two_given_six_jobs_waits_and_is_called_the_bottleneck() -> None:
    """Six 100 ms sleeps submitted at once to two workers: six calls at the submitting line,
    each running ~100 ms; they wait ~0, 0, 100, 100, 200, 200 ms for a worker (~600 ms in
    all), the pool has 2 workers, at least 4 calls queued at once, and the row carries the
    pool warning with its figures."""
    with looptrace.installed(mode="full", summary=False) as tracing:
        asyncio.run(_six_jobs_on_two_workers())
    (row,) = _rows(tracing.snapshot(), "time.sleep")
    assert row.site is not None and row.site.file == __file__
    assert row.site.line == _line_of("# six-jobs")
    assert row.calls == row.completed == 6
    assert row.workers == 2
    assert row.peak_queue_depth >= 4
    # Each sleep runs 100 ms, a little more on a busy machine.
    assert 6 * 95 <= row.run_ms <= 6 * 400
    assert 95 <= row.max_run_ms <= 400
    # Waits of ~0/0/100/100/200/200 ms: they follow the runs, so they grow with them.
    assert 550 <= row.queue_ms <= 4 * row.run_ms
    assert 190 <= row.max_queue_ms <= 2 * row.max_run_ms + 200
    assert row.waited >= 4
    assert row.task == "six-jobs" and row.tasks == ("six-jobs",)
    assert row.warning is not None
    assert row.warning.startswith("the pool, not the work, is the bottleneck: 2 workers, ")
    assert "raise max_workers" in row.warning
    summary = text.render(tracing.snapshot())
    assert "Executor calls (run_in_executor, to_thread; by queue wait)" in summary
    assert "WARNING: the pool, not the work, is the bottleneck" in summary
    assert 'id="executor-table"' in html.render(tracing.snapshot())


def test_a_pool_big_enough_gets_no_warning() -> None:
    """The same six jobs on six workers hardly wait: the figures are there, no warning."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, 0.05)
                                   for _ in range(6)))

    with looptrace.installed(mode="full", summary=False) as tracing:
        asyncio.run(main())
    (row,) = _rows(tracing.snapshot(), "time.sleep")
    assert row.calls == 6 and row.workers == 6
    assert row.queue_ms < row.run_ms / 2
    assert row.warning is None


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR")


def _read_var() -> tuple[str, str]:
    return VAR.get("unset"), threading.current_thread().name


def _fails() -> None:
    raise KeyError("from the worker")


async def _to_thread_calls() -> tuple[str, str, BaseException | None]:
    VAR.set("set in the task")
    seen, thread = await asyncio.to_thread(_read_var)  # to-thread-site
    caught = None
    try:
        await asyncio.to_thread(_fails)  # failing-site
    except KeyError as exc:
        caught = exc
    return seen, thread, caught


def test_to_thread_is_sited_at_the_caller_and_keeps_context_and_exceptions() -> None:
    """``asyncio.to_thread(f)`` is counted at the test's line (not asyncio/threads.py) under
    f's name; f still sees the caller's ContextVar, runs in a worker thread, and its
    exception reaches the awaiting code unchanged."""
    with looptrace.installed(mode="full", summary=False) as tracing:
        seen, thread, caught = asyncio.run(_to_thread_calls(), debug=True)
    assert seen == "set in the task"
    assert thread != threading.main_thread().name
    assert isinstance(caught, KeyError) and caught.args == ("from the worker",)
    session = tracing.snapshot()
    (read,) = _rows(session, f"{__name__}._read_var")
    assert read.site is not None and read.site.file == __file__
    assert read.site.line == _line_of("# to-thread-site")
    assert read.site.function == "_to_thread_calls"
    assert read.calls == read.completed == 1
    (failed,) = _rows(session, f"{__name__}._fails")
    assert failed.site is not None and failed.site.line == _line_of("# failing-site")
    assert failed.completed == 1  # a call that raised is timed too
    assert session.faults == ()


def test_uninstall_restores_run_in_executor_and_default_mode_leaves_it_alone() -> None:
    """Full mode patches ``BaseEventLoop.run_in_executor`` and uninstall puts the very same
    function back; default mode does not touch it (timing a call costs more than default
    mode's budget, see docs/performance.md)."""
    original = vars(base_events.BaseEventLoop)["run_in_executor"]
    with looptrace.installed(mode="full", summary=False):
        assert vars(base_events.BaseEventLoop)["run_in_executor"] is not original
    assert vars(base_events.BaseEventLoop)["run_in_executor"] is original
    with looptrace.installed(summary=False) as tracing:
        assert vars(base_events.BaseEventLoop)["run_in_executor"] is original
        asyncio.run(_six_jobs_on_two_workers())
    session = tracing.snapshot()
    assert session.executors == ()
    assert "executor-calls" not in session.loops[0].coverage


def test_process_pools_run_untouched() -> None:
    """A ProcessPoolExecutor pickles the function: it gets the call as it was (no wrapper),
    the result comes back, and nothing is recorded for it."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        # Not fork: the watchdog's thread runs, and fork() with threads is unsafe (3.12 warns).
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return await loop.run_in_executor(pool, abs, -5)

    with looptrace.installed(mode="full", summary=False) as tracing:
        assert asyncio.run(main()) == 5
    assert tracing.snapshot().executors == ()
    assert tracing.snapshot().faults == ()


def test_an_error_of_ours_is_a_fault_and_the_calls_go_on(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """If the executor hook fails, the call still runs and returns, the fault is counted
    in the report, and the hook is switched off (later calls run untimed)."""
    from looptrace._hooks import executors

    def broken(*args: Any) -> Any:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(executors.ExecutorCalls, "prepare", broken)
    original = vars(base_events.BaseEventLoop)["run_in_executor"]

    async def main() -> list[int]:
        return [await asyncio.to_thread(abs, -i) for i in range(3)]

    with looptrace.installed(mode="full", summary=False) as tracing:
        assert asyncio.run(main()) == [0, 1, 2]
        assert vars(base_events.BaseEventLoop)["run_in_executor"] is original  # disabled
    session = tracing.snapshot()
    assert [(f.hook, f.count) for f in session.faults] == [("executors", 1)]
    assert session.executors == ()


def test_the_report_round_trips_and_old_reports_load() -> None:
    """The rows are written in the JSON and read back equal; a report without the field
    (written before it existed) loads with none; combining two reports sums the rows."""
    with looptrace.installed(mode="full", summary=False) as tracing:
        asyncio.run(_six_jobs_on_two_workers())
    session = tracing.snapshot()
    assert Session.from_json(session.to_json()) == session
    old = session.to_dict()
    del old["executors"]
    assert Session.from_dict(old).executors == ()
    combined = _combine.Combined()
    combined.add(session)
    combined.add(session)
    (row,) = _rows(combined.session(), "time.sleep")
    (one,) = _rows(session, "time.sleep")
    assert row.calls == 2 * one.calls and row.waited == 2 * one.waited
    assert row.queue_ms == pytest.approx(2 * one.queue_ms, abs=0.01)
    assert row.warning is not None


def test_uvloop_calls_run_and_are_said_not_measured() -> None:
    """uvloop's run_in_executor is Cython, out of reach of the class patch: the calls run
    as always, nothing is counted, no fault, and the loop lists ``executor-calls`` as
    missing."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        return [await asyncio.to_thread(_read_var),
                await loop.run_in_executor(None, abs, -3)]

    with looptrace.installed(mode="full", summary=False) as tracing:
        (seen, _thread), value = uvloop.run(main())
    assert (seen, value) == ("unset", 3)
    session = tracing.snapshot()
    assert session.executors == () and session.faults == ()
    (loop,) = session.loops
    assert "executor-calls" in loop.missing
    assert "executor-calls" in text.render(session)


def test_the_executor_metrics_are_exported() -> None:
    """With OpenTelemetry, each timed call feeds two histograms (seconds): the queue wait
    and the run time, with the site and the function as attributes."""
    from otel_helpers import memory_otel

    with memory_otel() as otel:
        with looptrace.installed(mode="full", summary=False):
            asyncio.run(_six_jobs_on_two_workers())
        data = otel.metrics.get_metrics_data()
    points: dict[str, list[Any]] = {}
    units = {}
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
                units[metric.name] = metric.unit
    for name in ("looptrace.executor.queue.duration", "looptrace.executor.run.duration"):
        assert units[name] == "s"
        (point,) = [p for p in points[name]
                    if p.attributes.get("looptrace.executor.function") == "time.sleep"]
        assert point.count == 6
        assert point.attributes["code.file.path"] == __file__
        assert point.attributes["code.line.number"] == _line_of("# six-jobs")
    (run,) = points["looptrace.executor.run.duration"]
    assert 0.09 <= run.max <= 0.5
    (queue,) = points["looptrace.executor.queue.duration"]
    assert 0.18 <= queue.max <= 1.0


def test_the_row_carries_the_request_of_the_call_that_waited_longest() -> None:
    """A call made inside a span names that span's trace (the request), so an executor row
    reads with the blocks of the same request."""
    from otel_helpers import memory_otel

    with memory_otel() as otel:
        tracer = otel.tracer_provider.get_tracer("test")

        async def main() -> str:
            with tracer.start_as_current_span("request") as span:
                await asyncio.to_thread(time.sleep, 0.01)  # traced-site
                return f"{span.get_span_context().trace_id:032x}"

        with looptrace.installed(mode="full", summary=False) as tracing:
            trace_id = asyncio.run(main())
    (row,) = _rows(tracing.snapshot(), "time.sleep")
    assert row.site is not None and row.site.line == _line_of("# traced-site")
    assert row.trace_id == trace_id
    assert row.span_id is not None
    assert f"trace {trace_id}" in text.render(tracing.snapshot())


def test_debug_mode_still_refuses_a_coroutine_function() -> None:
    """In debug mode asyncio refuses a coroutine function given to run_in_executor with a
    TypeError: with looptrace the same TypeError comes, from asyncio's own check."""

    async def coroutine_function() -> None:
        pass

    async def main() -> str:
        loop = asyncio.get_running_loop()
        try:
            loop.run_in_executor(None, coroutine_function)
        except TypeError as exc:
            return str(exc)
        return "no error"

    expected = asyncio.run(main(), debug=True)
    with looptrace.installed(mode="full", summary=False) as tracing:
        assert asyncio.run(main(), debug=True) == expected
    assert expected.startswith("coroutines cannot be used with run_in_executor()")
    assert tracing.snapshot().executors == ()
