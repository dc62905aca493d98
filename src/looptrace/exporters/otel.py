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

import logging
from collections.abc import Callable
from typing import Any

from looptrace._config import Options
from looptrace.events import Block

logger = logging.getLogger("looptrace")

LiveSink = tuple[str, Callable[[Block], None], Callable[[float], None]]

_explicit_providers: dict[str, Any] = {"tracer_provider": None, "meter_provider": None}


def use_providers(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Export through these providers instead of the global ones (None: the global one).
    Takes effect at the next ``install()``."""
    _explicit_providers.update(tracer_provider=tracer_provider, meter_provider=meter_provider)


def live_sink(options: Options, recorder: Any = None,
              snapshot: Callable[[], Any] | None = None) -> LiveSink | None:
    """Return ``(name, listener, close)`` for :mod:`looptrace._api`, or None when
    OpenTelemetry is not installed.

    ``listener(block)`` runs on looptrace's dispatch thread and makes the block's span;
    ``close(timeout_s)`` flushes looptrace's own pipeline within ``timeout_s``. ``recorder``
    supplies the clock offset, the loop figures for metrics, and the drop counters;
    ``snapshot`` the final session, for loop and task spans.
    """
    try:
        # OpenTelemetry loads only now, and may be missing: see the module's docstring.
        from ._otel_sink import OtelSink
    except ImportError as exc:
        if options.otlp:
            logger.warning("looptrace: OTLP export needs OpenTelemetry (pip install "
                           "'looptrace[otel]'); continuing without it (%s)", exc)
        return None
    try:
        sink = OtelSink(options, recorder, snapshot, **_explicit_providers)
    except ImportError as exc:
        logger.warning("looptrace: OTLP export needs the OTLP/HTTP exporter (pip install "
                       "'looptrace[otel]'); continuing without it (%s)", exc)
        return None
    return "opentelemetry", sink.on_block, sink.close
