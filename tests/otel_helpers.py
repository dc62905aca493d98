"""Shared by the OpenTelemetry tests: in-memory providers handed to looptrace, and the
blocking handlers of otel_apps/blocking_service.py served in-process (with OpenTelemetry's
aiohttp-server instrumentation)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from looptrace.sinks import otel
from otel_apps.blocking_service import SLOW_URL, reader, serve_and_get, sleepy


@dataclass
class MemoryOtel:
    """Providers that keep what they get, for assertions."""

    tracer_provider: TracerProvider
    spans: InMemorySpanExporter
    meter_provider: MeterProvider
    metrics: InMemoryMetricReader

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(self.spans.get_finished_spans())
        return [s for s in found if name is None or s.name == name]


@contextmanager
def memory_otel() -> Iterator[MemoryOtel]:
    """In-memory providers that looptrace exports through (never made global: a process
    can set its global provider only once)."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    otel.use_providers(tracer_provider, meter_provider)
    try:
        yield MemoryOtel(tracer_provider, spans, meter_provider, reader)
    finally:
        otel.use_providers(None, None)
        tracer_provider.shutdown()
        meter_provider.shutdown()


async def clean(request: web.Request) -> web.Response:
    await asyncio.sleep(0.01)
    return web.Response(text="clean")


async def serve_and_request(slow_url: str, paths: list[str],
                            tracer_provider: TracerProvider) -> None:
    """Run the app on a loopback port, instrumented, and GET each path once, in order."""
    instrumentor = AioHttpServerInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        app = web.Application()
    finally:
        instrumentor.uninstrument()
    app[SLOW_URL] = slow_url
    app.router.add_get("/sleep", sleepy)
    app.router.add_get("/read", reader)
    app.router.add_get("/clean", clean)
    await serve_and_get(app, paths)
