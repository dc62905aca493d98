"""OpenTelemetry export: every block as a ``looptrace.block`` span inside the span it
slowed down, and loop metrics under ``looptrace.eventloop.*`` (see ``docs/jaeger.md``).

This module is the door :mod:`looptrace._api` opens when a program uses OpenTelemetry or
asks for OTLP export. It imports OpenTelemetry only when called, so a missing
``looptrace[otel]`` extra is one warning, never an error in the host program.

Which providers are used, checked for every block (the application may set its own after
``install()``):

1. the providers given to :func:`use_providers` (``LooptraceInstrumentor().instrument(
   tracer_provider=..., meter_provider=...)``);
2. the application's global TracerProvider/MeterProvider, once it has set one;
3. when OTLP export was asked (``otlp=True`` or an endpoint), looptrace's own, built from
   the ``OTEL_*`` environment with the OTLP/HTTP protobuf exporter.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from looptrace._config import Options
from looptrace.session import BlockEvent

from . import LiveSink, SinkInputs

if TYPE_CHECKING:
    from ._otel_sink import OtelSink

logger = logging.getLogger("looptrace")

_explicit_providers: dict[str, Any] = {"tracer_provider": None, "meter_provider": None}


def use_providers(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Export through these providers instead of the global ones (None: the global one).
    Takes effect at the next ``install()``."""
    _explicit_providers.update(tracer_provider=tracer_provider, meter_provider=meter_provider)


def live_sink(options: Options, inputs: SinkInputs) -> LiveSink | None:
    """The OpenTelemetry sink for :mod:`looptrace._api`, or None when OpenTelemetry is not
    installed.

    ``on_block(event)`` runs on looptrace's dispatch thread and makes the block's span;
    ``close(timeout_s)`` flushes looptrace's own pipeline within ``timeout_s``. ``inputs``
    supplies the loop figures for metrics, the drop counter for spans that could not be
    sent, and the final session, for loop and task spans.

    Called on a loop thread (``install()`` inside a coroutine), the setup (importing
    OpenTelemetry, building the pipeline: a few hundred milliseconds) runs on a thread of
    its own instead, so that the loop is not blocked by looptrace itself.
    """
    if asyncio.events._get_running_loop() is not None:
        deferred = _DeferredSink(options, inputs)
        return LiveSink("opentelemetry", deferred.on_block, deferred.close)
    sink = _make_sink(options, inputs)
    return LiveSink("opentelemetry", sink.on_block, sink.close) if sink is not None else None


def _make_sink(options: Options, inputs: SinkInputs) -> OtelSink | None:
    try:
        # OpenTelemetry loads only now, and may be missing: see the module's docstring.
        from ._otel_sink import OtelSink
    except ImportError as exc:
        if options.otlp:
            logger.warning("looptrace: OTLP export needs OpenTelemetry (pip install "
                           "'looptrace[otel]'); continuing without it (%s)", exc)
        return None
    try:
        return OtelSink(options, inputs, **_explicit_providers)
    except ImportError as exc:
        logger.warning("looptrace: OTLP export needs the OTLP/HTTP exporter (pip install "
                       "'looptrace[otel]'); continuing without it (%s)", exc)
        return None


class _DeferredSink:
    """A sink whose setup runs on the ``looptrace-otel-setup`` thread; blocks that come
    before it is ready wait for it on the dispatch thread, never on a loop thread."""

    def __init__(self, options: Options, inputs: SinkInputs) -> None:
        self._sink: OtelSink | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._setup, args=(options, inputs),
                                        name="looptrace-otel-setup", daemon=True)
        self._thread.start()

    def _setup(self, options: Options, inputs: SinkInputs) -> None:
        try:
            self._sink = _make_sink(options, inputs)
        except Exception as exc:  # a broken OpenTelemetry: say so, and export nothing
            logger.warning("looptrace: setting up the OpenTelemetry export failed: %s: %s",
                           type(exc).__name__, exc)
        finally:
            self._ready.set()

    def on_block(self, event: BlockEvent) -> None:
        self._ready.wait()
        if self._sink is not None:
            self._sink.on_block(event)

    def close(self, timeout_s: float) -> None:
        if asyncio.events._get_running_loop() is not None:
            # On a loop thread nothing may wait: finish on a thread of its own.
            threading.Thread(target=self._close, args=(timeout_s,),
                             name="looptrace-otel-close", daemon=True).start()
        else:
            self._close(timeout_s)

    def _close(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if self._ready.wait(timeout_s) and self._sink is not None:
            self._sink.close(max(deadline - time.monotonic(), 0.0))
