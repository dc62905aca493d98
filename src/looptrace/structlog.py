"""structlog processors: loop context and OpenTelemetry ids on every event.

Add them to *your* processor chain, before the renderer::

    import structlog
    import looptrace.structlog

    structlog.configure(processors=[
        structlog.contextvars.merge_contextvars,
        looptrace.structlog.add_loop_context,
        looptrace.structlog.add_trace_ids,
        structlog.processors.JSONRenderer(),
    ])

looptrace never calls ``structlog.configure()`` itself. Both processors are plain
functions that need neither structlog nor OpenTelemetry to be importable, never raise, and
never overwrite a key the event already has. Blocks themselves are logged as
``looptrace.block`` events with ``looptrace.install(log="structlog")`` (see
:mod:`looptrace.sinks.logs`).
"""

from __future__ import annotations

import asyncio
import sys
from asyncio import events
from collections.abc import MutableMapping
from typing import Any

from . import _api
from ._clock import now_ns

__all__ = ["add_loop_context", "add_trace_ids"]

EventDict = MutableMapping[str, Any]


def _loop_figures(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """What looptrace knows of ``loop`` so far, read from live counters (no snapshot)."""
    now = _api.loop_now(loop)
    if now is None:
        return {}
    figures: dict[str, Any] = {"loop_id": now.loop_id, "loop_blocks": now.blocks}
    busy, idle = now.busy_ns, now.io_wait_ns
    if busy is not None and idle is not None and busy + idle > 0:
        figures["loop_utilization"] = round(busy / (busy + idle), 4)
    if now.step_start_ns:
        # How long the step that is logging has run: a large value means this event was
        # written from inside a block.
        figures["loop_step_ms"] = round((now_ns() - now.step_start_ns) / 1e6, 3)
    return figures


def add_loop_context(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Add the running task and the loop's figures to an event logged on a loop thread.

    ``task`` (the current task's name) whenever a loop is running; while looptrace is
    installed also ``loop_id``, ``loop_blocks`` (blocks so far), ``loop_utilization``
    (busy share of the loop's time so far) and ``loop_step_ms`` (how long the current
    step has been running). Off a loop thread the event is unchanged.
    """
    try:
        loop = events._get_running_loop()
        if loop is None:
            return event_dict
        task = asyncio.current_task(loop)
        if task is not None:
            event_dict.setdefault("task", task.get_name())
        for key, value in _loop_figures(loop).items():
            event_dict.setdefault(key, value)
    except Exception:  # a logging processor must never break the program's logging
        pass
    return event_dict


def add_trace_ids(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Add ``trace_id``, ``span_id`` (lowercase hex) and ``trace_flags`` of the current
    OpenTelemetry span, as the OpenTelemetry spec names them for non-OTLP logs.

    Nothing is added when OpenTelemetry was never imported or no valid span is current;
    the processor does not import OpenTelemetry itself.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return event_dict
    try:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            event_dict.setdefault("trace_id", f"{span_context.trace_id:032x}")
            event_dict.setdefault("span_id", f"{span_context.span_id:016x}")
            event_dict.setdefault("trace_flags", f"{int(span_context.trace_flags):02x}")
    except Exception:  # a logging processor must never break the program's logging
        pass
    return event_dict
