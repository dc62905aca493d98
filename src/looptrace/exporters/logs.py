"""Blocks as log events, through structlog or the stdlib ``looptrace`` logger (issue 5).
Placeholder."""

from __future__ import annotations

from typing import Any


def live_sink(options: Any) -> Any:
    """Return a LiveSink ``(name, listener, close)`` or None."""
    return None
