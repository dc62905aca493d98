"""looptrace's own OpenTelemetry pipeline, for programs that configured none.

Built only when asked (``install(otlp=True)``, ``looptrace run --otlp``, ``LOOPTRACE_OTLP``)
and only used while the application has no TracerProvider of its own. It follows the
standard ``OTEL_*`` environment (service name, resource, headers, sampler, batch sizes),
exports with the official OTLP/HTTP protobuf exporter, and differs from the SDK's defaults
in two ways a host program needs:

- :class:`BoundedSpanProcessor` replaces ``BatchSpanProcessor``: a bounded queue whose
  overflow and failed exports are *counted* (they reach the report's ``dropped``) instead
  of logging a warning per span, and a shutdown bounded by its caller's deadline (the
  SDK's joins its worker for 30 s when the collector is down).
- The providers are never made global: the application stays free to set its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

logger = logging.getLogger("looptrace")

OnDrop = Callable[[int], None]

_HTTP_PROTOBUF = "http/protobuf"


def _env_int(name: str, default: int, low: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return max(int(text), low)
    except ValueError:
        logger.warning("looptrace: ignoring %s=%r (not an integer)", name, text)
        return default


_SIGNALS = ("traces", "metrics")


def signal_endpoint(endpoint: str, signal: str) -> str:
    """The URL of one signal, from the endpoint given to ``--otlp``/``install(otlp=)``.

    As the OTel exporter spec builds per-signal URLs from ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    the endpoint is a base URL and ``/v1/<signal>`` is appended to its path
    (``http://host:4318`` -> ``http://host:4318/v1/metrics``). A URL that already ends with
    one signal's path (``http://host:4318/v1/traces``, as one would give
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is that signal's URL, used as it is, and its base
    (the URL without that path) serves the other signal: never ``/v1/traces/v1/metrics``.
    """
    base = endpoint.rstrip("/")
    for known in _SIGNALS:
        if base.endswith(f"/v1/{known}"):
            if known == signal:
                return base
            base = base[:-len(f"/v1/{known}")]
            break
    return f"{base}/v1/{signal}"


def check_protocol() -> None:
    """looptrace speaks OTLP over HTTP/protobuf only: say so once if the environment asks
    for gRPC, rather than silently sending to the wrong port."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(name, "").strip()
        if value and value != _HTTP_PROTOBUF:
            logger.warning("looptrace: %s=%s is ignored: looptrace's own exporter sends "
                           "OTLP over HTTP/protobuf (port 4318 by default)", name, value)
            return


class BoundedSpanProcessor(SpanProcessor):
    """Batches finished spans to an exporter on a thread of its own, in bounded memory.

    ``on_end`` (called on looptrace's dispatch thread, never a loop thread) appends to a
    queue of at most ``max_queue_size`` spans; when it is full the oldest span is dropped.
    The worker exports batches of up to ``max_batch_size`` every ``schedule_delay_s`` or as
    soon as a batch is full. Every span that does not reach the collector (evicted, failed
    export, or still queued at shutdown) is passed to ``on_drop``, as a count.

    ``exporter_for_exit(timeout_s)`` makes the exporter of the last flush: one whose
    retries fit in the time left, so a collector that refuses connections costs
    milliseconds at exit, and one that never answers costs the deadline, not 30 s.
    """

    def __init__(self, exporter: SpanExporter, on_drop: OnDrop, *, max_queue_size: int,
                 max_batch_size: int, schedule_delay_s: float,
                 exporter_for_exit: Callable[[float], SpanExporter] | None = None) -> None:
        self._exporter = exporter
        self._exporter_for_exit = exporter_for_exit
        self._on_drop = on_drop
        self._max_queue_size = max_queue_size
        self._max_batch_size = min(max_batch_size, max_queue_size)
        self._schedule_delay_s = schedule_delay_s
        self._queue: deque[ReadableSpan] = deque()
        self._wake = threading.Condition(threading.Lock())
        self._closing = False
        self._abandoned = False
        self._in_flight = 0
        self._exit_left = 0
        """Spans of the exit flush not yet sent (each span is counted once: by whoever
        takes it from the queue, the worker's batch or the exit flush, under the lock)."""
        self.exported = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="looptrace-otlp-spans",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def from_environment(cls, exporter: SpanExporter, on_drop: OnDrop,
                         exporter_for_exit: Callable[[float], SpanExporter] | None = None
                         ) -> BoundedSpanProcessor:
        """Sizes from the standard ``OTEL_BSP_*`` variables (the SDK's defaults)."""
        return cls(exporter, on_drop,
                   max_queue_size=_env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1),
                   max_batch_size=_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1),
                   schedule_delay_s=_env_int("OTEL_BSP_SCHEDULE_DELAY", 5000, 1) / 1000,
                   exporter_for_exit=exporter_for_exit)

    def _drop(self, count: int) -> None:
        if count <= 0:
            return
        self.dropped += count
        try:
            self._on_drop(count)
        except Exception as exc:  # counting must never stop the pipeline
            logger.debug("looptrace: counting dropped spans failed: %s", exc)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        evicted = 0
        with self._wake:
            if self._closing:
                evicted = 1
            else:
                if len(self._queue) >= self._max_queue_size:
                    self._queue.popleft()
                    evicted = 1
                self._queue.append(span)
                if len(self._queue) >= self._max_batch_size:
                    self._wake.notify()
        self._drop(evicted)

    def _run(self) -> None:
        while True:
            with self._wake:
                deadline = time.monotonic() + self._schedule_delay_s
                while (not self._closing and len(self._queue) < self._max_batch_size
                       and (left := deadline - time.monotonic()) > 0):
                    self._wake.wait(left)
                if self._closing:
                    return  # shutdown() sends what is left, within its deadline
                if not self._queue:
                    continue
                count = min(len(self._queue), self._max_batch_size)
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_flight = count
            delivered = _export(self._exporter, batch)
            with self._wake:
                self._in_flight = 0
                counted_by_shutdown = self._abandoned
                self._wake.notify_all()
            if delivered:
                self.exported += len(batch)
            elif not counted_by_shutdown:
                self._drop(len(batch))

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Send what is queued within ``timeout_millis``, then stop; what could not be sent
        by then is counted as dropped. Never waits much longer than ``timeout_millis``."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._wake:
            if self._closing:
                return
            self._closing = True
            self._wake.notify_all()
        # A batch on the wire may finish, for part of the time.
        if self._thread is not threading.current_thread():
            self._thread.join(max((deadline - time.monotonic()) * 0.4, 0.0))
        with self._wake:
            alive = self._thread.is_alive() and not self._abandoned  # give_up() counted it
            stuck = self._in_flight if alive else 0
            self._abandoned = True  # the worker must not count that batch again
            pending = list(self._queue)
            self._queue.clear()
            self._exit_left = len(pending)
        self._drop(stuck)
        final = self._exporter
        if self._exporter_for_exit is not None:
            # Stops the worker's retry backoff at once; a request already on the wire ends
            # with its own timeout, on the worker (a daemon thread), not on ours.
            _shutdown_exporter(self._exporter)
            final = self._exporter_for_exit(max(deadline - time.monotonic(), 0.001))
        sent = 0
        while sent < len(pending) and deadline - time.monotonic() > 0.001:
            batch = pending[sent:sent + self._max_batch_size]
            if not _export(final, batch):
                break  # the collector is not taking spans: do not try the rest
            sent += len(batch)
            with self._wake:
                self._exit_left = max(self._exit_left - len(batch), 0)
        self.exported += sent
        with self._wake:
            left, self._exit_left = self._exit_left, 0
        self._drop(left)
        _shutdown_exporter(final)

    def give_up(self) -> None:
        """The exit's deadline passed with spans still on their way (a collector that never
        answers, a starved machine): count every span not yet sent as dropped now, so the
        report has them. A send that still succeeds later is not taken back."""
        with self._wake:
            lost = len(self._queue) + self._exit_left
            self._queue.clear()
            self._exit_left = 0
            if not self._abandoned:
                lost += self._in_flight
            self._abandoned = True
            self._closing = True
            self._wake.notify_all()
        self._drop(lost)

    @property
    def exporter(self) -> SpanExporter:
        """The exporter the worker sends with."""
        return self._exporter

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs (e.g. a request to a silent collector)."""
        return self._thread.is_alive()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait (on the calling thread, never exporting on it) until the queue is empty."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._wake:
            self._wake.notify_all()
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    return False
                self._wake.wait(min(left, 0.05))
                self._wake.notify_all()
        return True


def _export(exporter: SpanExporter, batch: Sequence[ReadableSpan]) -> bool:
    try:
        return exporter.export(batch) is SpanExportResult.SUCCESS
    except Exception as exc:  # the exporter logs its failures; we count
        logger.debug("looptrace: span export raised %s: %s", type(exc).__name__, exc)
        return False


def _shutdown_exporter(exporter: SpanExporter) -> None:
    try:
        exporter.shutdown()
    except Exception as exc:  # shutting down must not raise at exit
        logger.debug("looptrace: exporter shutdown raised %s: %s", type(exc).__name__, exc)


def _resource() -> Resource:
    """The ``OTEL_*`` resource, plus this process's pid: each worker of a service exports
    its own blocks, and its pid tells them apart (built again in a forked worker)."""
    return Resource.create({"process.pid": os.getpid()})


def build_tracer_provider(endpoint: str | None, on_drop: OnDrop
                          ) -> tuple[TracerProvider, BoundedSpanProcessor]:
    """A TracerProvider from the ``OTEL_*`` environment, exporting OTLP/HTTP protobuf to
    ``endpoint`` (a base URL; None: ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` or
    ``http://localhost:4318``), and its span processor."""
    check_protocol()
    url = signal_endpoint(endpoint, "traces") if endpoint else None

    def exporter(timeout_s: float | None = None) -> SpanExporter:
        # Endpoint, headers, compression and TLS files also come from OTEL_EXPORTER_OTLP_*.
        return OTLPSpanExporter(endpoint=url, timeout=timeout_s)

    provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
    processor = BoundedSpanProcessor.from_environment(exporter(), on_drop, exporter)
    provider.add_span_processor(processor)
    return provider, processor


def build_meter_provider(endpoint: str | None, on_drop: OnDrop
                         ) -> tuple[MeterProvider, CountingMetricExporter] | None:
    """A MeterProvider exporting OTLP/HTTP protobuf every ``OTEL_METRIC_EXPORT_INTERVAL``,
    or None when ``OTEL_METRICS_EXPORTER`` says ``none`` (a Jaeger-only setup: Jaeger has no
    metrics pipeline)."""
    exporters = {e.strip() for e in os.environ.get("OTEL_METRICS_EXPORTER", "otlp").split(",")}
    if "otlp" not in exporters:
        return None
    exporter = (OTLPMetricExporter(endpoint=signal_endpoint(endpoint, "metrics"))
                if endpoint else OTLPMetricExporter())
    counting = CountingMetricExporter(exporter, on_drop)
    reader = PeriodicExportingMetricReader(counting)
    provider = MeterProvider(metric_readers=[reader], resource=_resource(),
                             shutdown_on_exit=False)
    return provider, counting


def _data_points(data: MetricsData) -> int:
    return sum(len(metric.data.data_points) for resource in data.resource_metrics
               for scope in resource.scope_metrics for metric in scope.metrics)


class CountingMetricExporter(MetricExporter):
    """The OTLP metric exporter, counting the data points that never reach the collector:
    a failed export, and (at :meth:`abandon`) an export still waiting on a collector that
    does not answer when looptrace has to go."""

    def __init__(self, exporter: MetricExporter, on_drop: OnDrop) -> None:
        super().__init__(preferred_temporality=exporter._preferred_temporality,
                         preferred_aggregation=exporter._preferred_aggregation)
        self._exporter = exporter
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}
        self._next = 0
        self._abandoned = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: object) -> MetricExportResult:
        points = _data_points(metrics_data)
        with self._lock:
            ticket = self._next
            self._next += 1
            self._in_flight[ticket] = points
        result = MetricExportResult.FAILURE
        try:
            result = self._exporter.export(metrics_data, timeout_millis=timeout_millis)
            return result
        finally:
            with self._lock:
                pending = self._in_flight.pop(ticket, None)
                lost = pending is not None and result is not MetricExportResult.SUCCESS
            if lost and pending:
                self._on_drop(pending)

    def abandon(self) -> None:
        """Count what is still on the wire as lost (a late answer is not counted again)."""
        with self._lock:
            pending = sum(self._in_flight.values())
            self._in_flight.clear()
        if pending:
            self._on_drop(pending)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis)
