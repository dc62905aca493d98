"""structlog and stdlib logging: the processors, and blocks as ``looptrace.block`` events.

Spans are real OpenTelemetry SDK spans (in-memory exporter); the request is a real HTTP
request to a real aiohttp server on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import structlog
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

import looptrace
from looptrace.structlog import add_loop_context, add_trace_ids
from otel_apps.blocking_service import serve_and_get


@pytest.fixture
def spans() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    """A real SDK tracer (not the global one) exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("tests"), exporter
    provider.shutdown()


def legacy_lookup() -> None:
    time.sleep(0.08)  # blocks the loop


def test_add_loop_context_names_task_and_loop_figures() -> None:
    """On a loop thread the processor adds the task's name and, while looptrace records,
    the loop's id, its blocks so far, its utilisation and how long the current step has
    run; off the loop the event is unchanged; keys already set are kept."""
    log = structlog.get_logger("app")

    async def worker() -> None:
        log.info("before")
        legacy_lookup()
        # The watchdog reports a block within a poll interval of its end; on a saturated
        # machine that thread may wait for a CPU much longer (seen in CI's busy pass).
        for _ in range(500):
            if add_loop_context(None, "info", {}).get("loop_blocks"):
                break
            await asyncio.sleep(0.01)
        log.info("after", task="mine")

    async def main() -> None:
        await asyncio.create_task(worker(), name="worker-1")

    with capture_logs(processors=[add_loop_context]) as logs, \
            looptrace.installed(threshold_ms=30):
        asyncio.run(main())
        log.info("outside")
    before, after, outside = logs
    assert before["task"] == "worker-1"
    assert before["loop_id"] == 1 and before["loop_blocks"] >= 0
    assert 0 <= before["loop_step_ms"] < 1000
    assert after["task"] == "mine"  # the event's own value wins
    assert after["loop_blocks"] >= before["loop_blocks"] + 1
    assert 0 < after["loop_utilization"] <= 1
    assert outside == {"event": "outside", "log_level": "info"}


def test_add_loop_context_without_looptrace() -> None:
    """Without looptrace installed only the task is added."""
    log = structlog.get_logger("app")

    async def main() -> None:
        log.info("hello")

    with capture_logs(processors=[add_loop_context]) as logs:
        asyncio.run(main())
    # The task's number depends on the tasks made before it in this process.
    (event,) = logs
    assert set(event) == {"event", "log_level", "task"}
    assert event["task"].startswith("Task-")


def test_add_trace_ids_from_the_current_span(
        spans: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    """Inside a span the processor adds its trace_id, span_id (lowercase hex) and
    trace_flags; outside any span it adds nothing."""
    tracer, exporter = spans
    log = structlog.get_logger("app")
    with capture_logs(processors=[add_trace_ids]) as logs:
        with tracer.start_as_current_span("work"):
            log.info("inside")
        log.info("outside")
    (span,) = exporter.get_finished_spans()
    context = span.get_span_context()
    assert context is not None
    assert logs[0]["trace_id"] == trace.format_trace_id(context.trace_id)
    assert logs[0]["span_id"] == trace.format_span_id(context.span_id)
    assert logs[0]["trace_flags"] == f"{int(context.trace_flags):02x}"
    assert logs[1] == {"event": "outside", "log_level": "info"}


async def _serve_and_request(tracer: trace.Tracer) -> None:
    """A real aiohttp server whose middleware opens the request's SERVER span; the handler
    blocks the loop; a real client requests it over loopback."""

    @web.middleware
    async def server_span(request: web.Request, handler: object) -> web.StreamResponse:
        with tracer.start_as_current_span(f"GET {request.path}", kind=trace.SpanKind.SERVER):
            return await handler(request)  # type: ignore[operator, no-any-return]

    async def slow(request: web.Request) -> web.Response:
        legacy_lookup()
        return web.Response(text="ok")

    app = web.Application(middlewares=[server_span])
    app.router.add_get("/slow", slow)
    await serve_and_get(app, ["/slow"])


def test_block_is_one_structlog_event_with_the_request_span_ids(
        spans: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    """install(log="structlog"): a block inside a request's span is one looptrace.block
    event, with site, call, duration, task and that span's trace and span ids."""
    tracer, exporter = spans
    with capture_logs() as logs:
        looptrace.install(threshold_ms=30, log="structlog")
        try:
            asyncio.run(_serve_and_request(tracer))
        finally:
            looptrace.uninstall()
    # On a busy machine some other step may also pass 30 ms; the sleep is one event.
    blocks = [e for e in logs if e["event"] == "looptrace.block" and e["call"] == "time.sleep"]
    assert len(blocks) == 1, logs
    (event,) = blocks
    (request_span,) = [s for s in exporter.get_finished_spans() if s.name == "GET /slow"]
    context = request_span.get_span_context()
    assert context is not None
    assert event["trace_id"] == trace.format_trace_id(context.trace_id)
    assert event["span_id"] == trace.format_span_id(context.span_id)
    assert event["log_level"] == "warning"
    assert event["call"] == "time.sleep"
    assert event["site"] == f"{__file__}:{legacy_lookup.__code__.co_firstlineno + 1}"
    assert event["function"] == "legacy_lookup"
    assert 70 <= event["duration_ms"] < 2000
    assert event["task"].startswith("Task-")
    assert event["loop_thread"] == "MainThread"


def test_block_is_one_stdlib_record(caplog: pytest.LogCaptureFixture) -> None:
    """install(log="stdlib"): one WARNING on the looptrace logger per block, a readable
    message and the fields on the record; it is emitted off the loop thread."""
    async def main() -> None:
        await asyncio.create_task(asyncio.to_thread(lambda: None))
        legacy_lookup()

    with caplog.at_level(logging.WARNING, logger="looptrace"), \
            looptrace.installed(threshold_ms=30, log="stdlib"):
        asyncio.run(main())
    records = [r for r in caplog.records if r.getMessage().startswith("looptrace.block")
               and r.__dict__.get("call") == "time.sleep"]
    assert len(records) == 1, caplog.records
    (record,) = records
    assert record.levelno == logging.WARNING and record.name == "looptrace"
    assert record.threadName == "looptrace-dispatch"
    message = record.getMessage()
    assert "by time.sleep at" in message and "in legacy_lookup" in message
    fields = record.__dict__
    assert fields["call"] == "time.sleep"
    assert fields["site"].endswith(f"test_structlog.py:{legacy_lookup.__code__.co_firstlineno + 1}")
    assert fields["duration_ms"] >= 70
    assert "trace_id" not in fields  # no span was current


def test_stdlib_message_says_who_the_block_delayed(caplog: pytest.LogCaptureFixture) -> None:
    """The readable message names the block's victims: three tasks whose 10 ms timers
    expired during an 80 ms block were each delayed most of it."""
    async def tick() -> None:
        await asyncio.sleep(0.01)

    async def main() -> None:
        ticks = [asyncio.create_task(tick()) for _ in range(3)]
        await asyncio.sleep(0)  # the ticks start their timers
        legacy_lookup()
        await asyncio.gather(*ticks)

    with caplog.at_level(logging.WARNING, logger="looptrace"), \
            looptrace.installed(threshold_ms=30, log="stdlib"):
        asyncio.run(main())
    records = [r for r in caplog.records if r.__dict__.get("call") == "time.sleep"]
    assert len(records) == 1, caplog.records
    fields = records[0].__dict__
    assert fields["victims"] >= 3
    assert fields["victim_max_delay_ms"] >= 40  # the block less the timers' 10 ms, less slack
    assert "delayed 3 tasks and callbacks by" in records[0].getMessage() or \
        f"delayed {fields['victims']} tasks and callbacks by" in records[0].getMessage()


def test_structlog_is_never_configured() -> None:
    """In a program that never configures structlog, install(log="structlog") leaves it
    unconfigured: the block event goes through structlog's own defaults (to stdout)."""
    code = (
        "import asyncio, time, structlog, looptrace\n"
        "async def main():\n"
        "    time.sleep(0.08)\n"
        "looptrace.install(threshold_ms=30, log='structlog')\n"
        "asyncio.run(main())\n"
        "looptrace.uninstall()\n"
        "print('configured:', structlog.is_configured())\n")
    environment = {**os.environ, "NO_COLOR": "1"}  # plain key=value, whatever the terminal
    environment.pop("FORCE_COLOR", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, env=environment).stdout
    assert "configured: False" in out
    (line,) = [line for line in out.splitlines()
               if "looptrace.block" in line and "call=time.sleep" in line]
    assert "call=time.sleep" in line and "duration_ms=" in line and "task=Task-1" in line


def test_import_looptrace_imports_no_structlog() -> None:
    """``import looptrace`` (and a plain install) import neither structlog nor
    OpenTelemetry."""
    code = ("import sys, looptrace; looptrace.install(); looptrace.uninstall(); "
            "print(sorted(m for m in sys.modules if m.startswith(('structlog', "
            "'opentelemetry'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
