"""Blocks as OpenTelemetry spans, checked with the SDK's in-memory exporter: the parent is
the request the block slowed down, attributes name the line and the call, timestamps are
the recorded block's, one span per block, none for a clean program."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

import looptrace
from helpers.lines import line_of
from looptrace.session import BlockEvent, Session
from otel_apps import blocking_service
from otel_helpers import memory_otel, serve_and_request

APP_FILE = blocking_service.__file__

# The aiohttp-server instrumentation subclasses web.Application, which aiohttp discourages.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class _InstrumentedApplication:DeprecationWarning")


def _block_spans(spans: list[ReadableSpan], call: str | None = None) -> list[ReadableSpan]:
    """The block spans (of one blocking call). Tests pick their blocks by call: on a busy
    machine, a step that lost the CPU for long enough is a real block too."""
    return sorted((s for s in spans if s.name == "looptrace.block"
                   and (call is None or dict(s.attributes or {}).get("looptrace.call") == call)),
                  key=lambda s: s.start_time or 0)


def _matching_event(span: ReadableSpan, session: Session) -> BlockEvent:
    starts = {event.start_unix_ns: event for event in session.blocks}
    assert span.start_time in starts, "every block span starts exactly when its block did"
    return starts[span.start_time]


def test_block_spans_are_children_of_the_aiohttp_request_span(slow_http_server: str) -> None:
    """A time.sleep and a synchronous read() in aiohttp handlers each become one
    looptrace.block span, child of that request's SERVER span, naming the line."""
    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=30) as tracing:
            asyncio.run(serve_and_request(slow_http_server, ["/sleep", "/read", "/clean"],
                                          otel.tracer_provider))
        session = tracing.snapshot()
        spans = otel.finished()
    servers = {s.context.span_id: s for s in spans if s.kind is SpanKind.SERVER}
    assert len(_block_spans(spans)) == len(session.blocks), "one span per block"
    expected = [("time.sleep", line_of(APP_FILE, "# BLOCK: sleep"), "/sleep"),
                ("http.client.HTTPResponse.read", line_of(APP_FILE, "# BLOCK: read"), "/read")]
    for call, line, path in expected:
        (span,) = _block_spans(spans, call)
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is not None, "the block span has the request's span as parent"
        server = servers[span.parent.span_id]
        assert span.context.trace_id == server.context.trace_id
        assert server.name == f"GET {path}"
        attributes = dict(span.attributes or {})
        assert attributes["looptrace.call"] == call
        assert attributes["looptrace.kind"] == "blocking-call"
        assert attributes["code.line.number"] == line
        assert attributes["code.file.path"] == APP_FILE
        assert attributes["code.function.name"] in ("sleepy", "reader")
        assert f'line {line}, in {attributes["code.function.name"]}' in str(
            attributes["code.stacktrace"])
        assert attributes["thread.name"] == threading.main_thread().name
        assert attributes["thread.id"] == threading.main_thread().ident
        assert attributes["looptrace.site_source"] == "probe"
        assert attributes["looptrace.coroutine"] == "RequestHandler._handle_request"
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "looptrace"


def test_span_times_are_the_recorded_block_times() -> None:
    """Start and end of each span are the block's (to the millisecond, and in fact to the
    nanosecond for the start), and its duration attribute agrees."""
    async def main() -> None:
        for pause in (0.04, 0.07):
            await asyncio.sleep(0)
            time.sleep(pause)

    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=20) as tracing:
            asyncio.run(main())
        session = tracing.snapshot()
        assert len(_block_spans(otel.finished())) == len(session.blocks)
        blocks = _block_spans(otel.finished(), "time.sleep")
    assert len(blocks) == 2
    for span in blocks:
        event = _matching_event(span, session)
        assert span.end_time is not None and span.start_time is not None
        duration_ms = (span.end_time - span.start_time) / 1e6
        assert abs(duration_ms - event.duration_ms) < 1.0
        assert abs(dict(span.attributes or {})["looptrace.duration_ms"] - duration_ms) < 0.01
        assert abs(span.start_time - time.time_ns()) < 60e9, "epoch time, not monotonic"


def test_a_block_outside_any_span_starts_its_own_trace() -> None:
    """With no span current in the blocked code, the block span is a root, one per block."""
    async def main() -> None:
        await asyncio.sleep(0)
        time.sleep(0.05)

    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=20):
            asyncio.run(main())
        blocks = _block_spans(otel.finished(), "time.sleep")
    assert len(blocks) == 1
    assert blocks[0].parent is None
    assert dict(blocks[0].attributes or {})["looptrace.task"].startswith("Task-")


def test_a_clean_program_makes_no_spans() -> None:
    """A program that never blocks the loop exports no span at all."""
    async def main() -> None:
        await asyncio.gather(*(asyncio.sleep(0.01) for _ in range(50)))

    # 200 ms: well above what a busy machine's scheduler can take from a step.
    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=200) as tracing:
            asyncio.run(main())
        assert tracing.snapshot().blocks == ()
        assert otel.finished() == []


class _ThreadRecorder(SpanProcessor):
    def __init__(self) -> None:
        self.threads: set[str] = set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.threads.add(threading.current_thread().name)

    def on_end(self, span: ReadableSpan) -> None:
        self.threads.add(threading.current_thread().name)


def test_spans_are_never_made_on_the_loop_thread() -> None:
    """Span creation and export run on looptrace's dispatch thread, never the loop's."""
    recorder = _ThreadRecorder()

    def run_loop() -> None:
        async def main() -> None:
            for _ in range(3):
                await asyncio.sleep(0)
                time.sleep(0.03)
        asyncio.run(main())

    with memory_otel() as otel:
        otel.tracer_provider.add_span_processor(recorder)
        with looptrace.installed(threshold_ms=20):
            loop_thread = threading.Thread(target=run_loop, name="the-loop-thread")
            loop_thread.start()
            loop_thread.join()
        assert len(_block_spans(otel.finished(), "time.sleep")) == 3
    assert recorder.threads == {"looptrace-dispatch"}


def test_loop_and_task_spans_are_opt_in() -> None:
    """otel_spans="blocks,loops,tasks" adds, at uninstall, a span per loop with its figures
    and a span per task under it; the default adds neither."""
    async def worker() -> None:
        for _ in range(3):
            await asyncio.sleep(0.001)
        time.sleep(0.03)

    async def main() -> None:
        await asyncio.gather(asyncio.create_task(worker(), name="worker-a"),
                             asyncio.create_task(worker(), name="worker-b"))

    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=20):
            asyncio.run(main())
        assert {s.name for s in otel.finished()} == {"looptrace.block"}
        assert len(_block_spans(otel.finished(), "time.sleep")) == 2
    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=20, mode="full", otel_spans="blocks,loops,tasks"):
            asyncio.run(main())
        loops = otel.finished("looptrace.loop")
        tasks = {dict(s.attributes or {})["looptrace.task"]: s
                 for s in otel.finished("looptrace.task")}
    assert len(loops) == 1
    loop_attributes = dict(loops[0].attributes or {})
    assert loop_attributes["looptrace.blocks"] >= 2
    assert 0 < loop_attributes["looptrace.utilization"] <= 1
    for name in ("worker-a", "worker-b"):
        task = tasks[name]
        assert task.parent is not None and task.parent.span_id == loops[0].context.span_id
        attributes = dict(task.attributes or {})
        assert attributes["looptrace.steps"] >= 4
        assert attributes["looptrace.busy_ms"] >= 30
        assert attributes["looptrace.blocks"] >= 1


@pytest.mark.parametrize("value", ["loops", "blocks,spans", "", 3])
def test_otel_spans_option_is_validated(value: object) -> None:
    """A bad otel_spans value is one clear error naming the option, before anything runs."""
    with pytest.raises((ValueError, TypeError), match="otel_spans"):
        looptrace.install(otel_spans=value)
    assert not looptrace.is_installed()


def test_importing_looptrace_does_not_import_opentelemetry() -> None:
    """import looptrace, install and uninstall pull in no OpenTelemetry module when the
    program uses none and OTLP export is off."""
    import subprocess

    code = ("import sys, looptrace; looptrace.install(); looptrace.uninstall(); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_a_block_follows_its_parents_sampling_decision() -> None:
    """Under the SDK's default ParentBased sampler, a block inside a request that was not
    sampled is not exported (no orphan span); inside a sampled one, it is."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    def parent(trace_id: int, flags: int) -> NonRecordingSpan:
        return NonRecordingSpan(SpanContext(trace_id, 0x1234, is_remote=True,
                                            trace_flags=TraceFlags(flags)))

    async def request(trace_id: int, flags: int) -> None:
        with trace.use_span(parent(trace_id, flags)):
            await asyncio.sleep(0)
            time.sleep(0.05)
            await asyncio.sleep(0)

    async def main() -> None:
        await request(0xA1, TraceFlags.DEFAULT)
        await request(0xB2, TraceFlags.SAMPLED)

    with memory_otel() as otel:
        with looptrace.installed(threshold_ms=30) as tracing:
            asyncio.run(main())
        session = tracing.snapshot()
        spans = _block_spans(otel.finished(), "time.sleep")
    assert [(b.trace_id, b.trace_sampled) for b in session.blocks] == [
        (f"{0xA1:032x}", False), (f"{0xB2:032x}", True)]
    (span,) = spans
    assert span.context.trace_id == 0xB2
    assert span.parent is not None and span.parent.span_id == 0x1234
