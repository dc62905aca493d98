"""OpenTelemetry export (issue 3): each block as a span, loop metrics. Placeholder."""

from __future__ import annotations

from typing import Any


def live_sink(options: Any) -> Any:
    """Return a LiveSink ``(name, listener, close)`` or None when there is nothing to export."""
    return None
