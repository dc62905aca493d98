"""The live OpenTelemetry sink: blocks to spans, loop figures to metrics, bounded close.

Threads: :meth:`OtelSink.on_block` runs on ``looptrace-dispatch``; metrics are read on the
metric reader's thread and by ``looptrace-metrics``; spans leave on ``looptrace-otlp-spans``
(looptrace's own pipeline) or the application's span processors; :meth:`OtelSink.close`
does its work on ``looptrace-otel-close``. None of it ever runs on a loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanContext,
    SpanKind,
    TraceFlags,
)

from looptrace._config import Options
from looptrace._version import __version__
from looptrace.exporters._spans import (
    SCHEMA_URL,
    SCOPE_NAME,
    SpanRecord,
    block_record,
    loop_and_task_records,
)
from looptrace.session import BlockEvent

from . import SinkInputs
from ._otel_metrics import LoopMetrics, instruments_for

logger = logging.getLogger("looptrace")

_SPAN_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_METRIC_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.metric_exporter"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
VICTIM_DELAY = "looptrace.victim.delay_ms"
"""On a link between a block's span and a delayed request's span: the delay."""
DELAYED = "looptrace.delayed_ms"
"""On a delayed request's span: how long blocks of other code delayed it, in all."""
_METRICS_EXIT_S = 0.25
_MARGIN_S = 0.05


class _ExporterTrouble(logging.Filter):
    """Keeps the complaints the OTLP exporters make on looptrace's own threads (a collector
    that is down gets a warning per retry of every batch) out of the program's stderr.
    The first is kept for the one line looptrace writes when it closes, if spans were lost.
    Records from the application's own threads pass untouched."""

    def __init__(self, threads: tuple[str, ...]) -> None:
        super().__init__()
        self._threads = threads
        self.first: str | None = None
        self.closing_thread: int | None = None
        """The thread that runs the last flush itself (no thread can start at shutdown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not ((record.threadName or "").startswith(self._threads)
                or record.thread == self.closing_thread):
            return True
        if self.first is None and record.levelno >= logging.WARNING:
            self.first = record.getMessage()
        return False

    def reason(self) -> str:
        """What went wrong, in a few words."""
        text = self.first or ""
        errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
        if errno:
            return errno.group(0).strip()
        # The collector answered, with an error: say which, it is not "unreachable".
        answered = re.search(r"batch code: (\d{3}), reason: ([^\n]*)", text)
        if answered:
            return f"the collector answered HTTP {answered.group(1)} {answered.group(2)}"
        transient = re.search(r"Transient error (.+?) encountered", text)
        if transient and "timed out" not in text.lower():
            return f"the collector answered {transient.group(1)}"
        if "timed out" in text.lower():
            return "no answer in time"
        return "unreachable" if text else "the export queue was full"


def _on_loop_thread() -> bool:
    return asyncio.events._get_running_loop() is not None


def _is_real_meter_provider(provider: Any) -> bool:
    name = type(provider).__name__
    return name not in ("_ProxyMeterProvider", "NoOpMeterProvider")


class OtelSink:
    """One installation's OpenTelemetry export. See :mod:`looptrace.sinks.otel`."""

    def __init__(self, options: Options, inputs: SinkInputs, tracer_provider: Any = None,
                 meter_provider: Any = None) -> None:
        self._inputs = inputs
        self._span_kinds = tuple(k for k in options.otel_spans.split(",") if k)
        self._explicit_tracer_provider = tracer_provider
        self._tracers: dict[Any, trace.Tracer] = {}
        self._own_tracer_provider: Any = None
        self._own_processor: Any = None
        self._own_meter_provider: Any = None
        self._metric_exporter: Any = None
        self._span_trouble: _ExporterTrouble | None = None
        self._metric_trouble: _ExporterTrouble | None = None
        self._closed = False
        if options.otlp:
            self._build_own_pipeline(options.otlp if isinstance(options.otlp, str) else None,
                                     build_meter=meter_provider is None
                                     and not _is_real_meter_provider(metrics.get_meter_provider()))
        self._metrics = self._start_metrics(meter_provider)

    # -- providers

    def _build_own_pipeline(self, endpoint: str | None, *, build_meter: bool) -> None:
        # The SDK and the OTLP exporter load only when looptrace's own pipeline is needed.
        from ._otel_pipeline import (
            build_meter_provider,
            build_tracer_provider,
        )

        self._own_tracer_provider, self._own_processor = build_tracer_provider(
            endpoint, self._count_dropped_spans)
        self._span_trouble = _ExporterTrouble(("looptrace-",))
        logging.getLogger(_SPAN_EXPORTER_LOGGER).addFilter(self._span_trouble)
        if build_meter:
            built = build_meter_provider(endpoint, self._count_dropped_metrics)
            if built is not None:
                self._own_meter_provider, self._metric_exporter = built
                # Only looptrace's meter provider exists while this filter is on.
                self._metric_trouble = _ExporterTrouble(
                    ("looptrace-", "OtelPeriodicExportingMetricReader"))
                logging.getLogger(_METRIC_EXPORTER_LOGGER).addFilter(self._metric_trouble)

    def _count_dropped_spans(self, count: int) -> None:
        self._inputs.count_dropped("spans", count)

    def _count_dropped_metrics(self, count: int) -> None:
        self._inputs.count_dropped("metrics", count)

    def _start_metrics(self, explicit: Any) -> LoopMetrics | None:
        """Instruments on the explicit, else the application's, else looptrace's own
        MeterProvider. With none of them (the application set no MeterProvider and OTLP
        export was not asked), no metrics: nothing would read them."""
        provider = explicit
        if provider is None:
            provider = metrics.get_meter_provider()
            if not _is_real_meter_provider(provider):
                provider = self._own_meter_provider
        if provider is None or not _is_real_meter_provider(provider):
            return None
        instruments = instruments_for(provider, lambda: provider.get_meter(
            SCOPE_NAME, __version__, schema_url=SCHEMA_URL))
        return LoopMetrics(instruments, self._inputs.loops, self._inputs.executors,
                           self._inputs.tasks)

    def _tracer(self) -> trace.Tracer | None:
        provider = self._explicit_tracer_provider
        if provider is None:
            provider = trace.get_tracer_provider()
            if isinstance(provider, ProxyTracerProvider):
                provider = self._own_tracer_provider
                if provider is None:
                    return None  # nobody exports spans (yet): make none
        if isinstance(provider, NoOpTracerProvider):
            return None
        tracer = self._tracers.get(provider)
        if tracer is None:
            tracer = self._tracers[provider] = provider.get_tracer(
                SCOPE_NAME, __version__, schema_url=SCHEMA_URL)
        return tracer

    # -- spans

    def on_block(self, event: BlockEvent) -> None:
        """The block's span (on the dispatch thread), the same span the Jaeger JSON file
        holds for it, and its count in the metrics."""
        self._emit([block_record(event)])
        if self._metrics is not None:
            self._metrics.on_block(event)

    def _emit(self, records: list[SpanRecord]) -> None:
        tracer = self._tracer()
        if tracer is None:
            return
        by_key: dict[str, Any] = {}
        for record in records:
            if record.parent_key is not None and record.parent_key in by_key:
                context = trace.set_span_in_context(by_key[record.parent_key], Context())
            elif record.parent is not None:
                context = _parent(*record.parent, record.parent_sampled)
            else:
                context = Context()
            links = [Link(SpanContext(t, s, is_remote=False, trace_flags=_SAMPLED),
                          {VICTIM_DELAY: delay}) for t, s, delay in record.links]
            span = tracer.start_span(record.name, context=context, kind=SpanKind.INTERNAL,
                                     start_time=record.start_unix_ns,
                                     attributes=record.attributes, links=links)
            span.end(end_time=record.end_unix_ns)
            if record.links:
                self._link_back(span, record.links)
            if record.key is not None:
                by_key[record.key] = span

    def _link_back(self, block_span: Any, links: tuple[tuple[int, int, float], ...]) -> None:
        """A delayed request's span that still records gets a link to the block that
        delayed it and its delay so far (``looptrace.delayed_ms``, added up over blocks):
        a slow request that did nothing wrong itself points at the culprit."""
        live_span = self._inputs.live_span
        if live_span is None or not block_span.get_span_context().trace_flags.sampled:
            return
        target = block_span.get_span_context()
        for trace_id, span_id, delay in links:
            try:
                victim = live_span(trace_id, span_id)
                if victim is None or not victim.is_recording():
                    continue
                victim.add_link(target, {VICTIM_DELAY: delay})
                so_far = (getattr(victim, "attributes", None) or {}).get(DELAYED, 0.0)
                total = (so_far if isinstance(so_far, int | float) else 0.0) + delay
                victim.set_attribute(DELAYED, round(total, 3))
            except Exception as exc:  # the application's span: never break it or us
                logger.debug("looptrace: linking a delayed span back failed: %s", exc)

    # -- close

    def close(self, timeout_s: float) -> None:
        """Finish within ``timeout_s``: last metrics, loop/task spans if asked, and a flush
        of looptrace's own pipeline. The work runs on a thread of its own; on a loop thread
        this returns at once (nothing may wait there), elsewhere it waits at most
        ``timeout_s``. Spans that could not be sent by then are counted as dropped."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        worker = threading.Thread(target=self._shutdown, args=(deadline,),
                                  name="looptrace-otel-close", daemon=True)
        try:
            worker.start()
        except RuntimeError:
            # The interpreter is finalising (Python 3.12 refuses new threads from the
            # start of its shutdown, before atexit): finish here, bounded all the same
            # (the last exports use exporters whose timeouts fit the deadline).
            if not _on_loop_thread():
                if self._span_trouble is not None:
                    self._span_trouble.closing_thread = threading.get_ident()
                self._shutdown(deadline)
            return
        if not _on_loop_thread():
            worker.join(max(deadline - time.monotonic(), 0.0))
            if worker.is_alive() and self._own_processor is not None:
                # Out of time: what is still unsent is lost, and the report, written next,
                # must say so (the worker would count it only after).
                self._own_processor.give_up()

    def _shutdown(self, deadline: float) -> None:
        try:
            snapshot = self._inputs.snapshot
            if snapshot is not None and ("loops" in self._span_kinds
                                         or "tasks" in self._span_kinds):
                self._emit(loop_and_task_records(snapshot(), self._span_kinds))
            if self._own_processor is not None:
                # Spans first, with most of the time: what is not sent by then is counted
                # as dropped, early enough for the report to include it.
                left = max(deadline - time.monotonic() - _METRICS_EXIT_S - _MARGIN_S, 0.05)
                self._own_processor.shutdown(timeout_millis=left * 1000)
                self._report_lost_spans()
            if self._own_tracer_provider is not None:
                self._own_tracer_provider.shutdown()
            if self._metrics is not None:
                self._metrics.close()
            if self._own_meter_provider is not None:
                # The last metrics get what is left, at most a quarter second: a collector
                # that is down would otherwise hold the exit for the whole deadline.
                left = min(max(deadline - time.monotonic(), 0.05), _METRICS_EXIT_S)
                self._own_meter_provider.shutdown(timeout_millis=left * 1000)
                if self._metric_exporter is not None:  # still waiting for an answer: lost
                    self._metric_exporter.abandon()
        except Exception as exc:  # never raise at exit
            logger.warning("looptrace: closing the OpenTelemetry export failed: %s: %s",
                           type(exc).__name__, exc)
        finally:
            self._remove_filters()

    def _report_lost_spans(self) -> None:
        dropped = self._own_processor.dropped if self._own_processor is not None else 0
        if not dropped or self._span_trouble is None:
            return
        endpoint = getattr(self._own_processor.exporter, "_endpoint", None) or "the collector"
        logger.warning("looptrace: %d span%s not sent to %s (%s); the report counts them in "
                       "dropped.spans", dropped, "" if dropped == 1 else "s", endpoint,
                       self._span_trouble.reason())

    def _remove_filters(self) -> None:
        # A worker still waiting on a collector that never answers may complain later:
        # its filter stays (it only ever touches looptrace's threads).
        worker_done = self._own_processor is None or not self._own_processor.alive
        if self._span_trouble is not None and worker_done:
            logging.getLogger(_SPAN_EXPORTER_LOGGER).removeFilter(self._span_trouble)
        reader_done = not any(t.name == "OtelPeriodicExportingMetricReader"
                              for t in threading.enumerate())
        if self._metric_trouble is not None and reader_done:
            logging.getLogger(_METRIC_EXPORTER_LOGGER).removeFilter(self._metric_trouble)


def _parent(trace_id: int | None, span_id: int | None, sampled: bool = True) -> Context:
    """A context whose current span is the block's parent (the span that was current in
    the code that blocked), or an empty one: the block starts its own trace."""
    if not trace_id or not span_id:
        return Context()
    # The parent's own sampling decision: under a ParentBased sampler, a block inside a
    # request that was not sampled is not sampled either (no orphan spans in the backend).
    flags = _SAMPLED if sampled else TraceFlags(TraceFlags.DEFAULT)
    parent = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(parent), Context())
