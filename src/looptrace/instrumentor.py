"""``opentelemetry-instrument python app.py`` turns looptrace on.

The ``opentelemetry_instrumentor`` entry point ``looptrace`` names
:class:`LooptraceInstrumentor`; OpenTelemetry's auto-instrumentation calls its
``instrument()`` at interpreter start, after the SDK configured the global providers, so
every block becomes a span exported with the application's other spans. Disable it with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=looptrace``. looptrace's own options come from the
``LOOPTRACE_*`` environment, or from ``instrument(**options)`` when called by hand::

    LooptraceInstrumentor().instrument(threshold_ms=50, tracer_provider=provider)
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from . import _api
from ._config import OPTION_NAMES
from .sinks import otel


class LooptraceInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs looptrace (``looptrace.install``) as an OpenTelemetry instrumentation.

    ``instrument(tracer_provider=..., meter_provider=..., **options)``: the providers to
    export through (default: the global ones) and any ``looptrace.install`` option.
    ``uninstrument()`` uninstalls looptrace if this instrumentor installed it.
    """

    _installed_by_us = False

    def instrumentation_dependencies(self) -> Collection[str]:
        """Nothing to check: asyncio is part of Python."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        otel.use_providers(kwargs.get("tracer_provider"), kwargs.get("meter_provider"))
        options = {name: value for name, value in kwargs.items() if name in OPTION_NAMES}
        self._installed_by_us = not _api.is_installed()
        _api.install(**options)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._installed_by_us:
            self._installed_by_us = False
            _api.uninstall()
        otel.use_providers(None, None)
