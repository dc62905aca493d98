"""The OpenTelemetry span current in some code, read without importing OpenTelemetry.

A block's span must be the child of the span that was current *in the code that
blocked*. That span lives in a ContextVar of the blocked task's context; the watchdog reads
it from another thread while the loop is blocked (``Context.get`` works across threads
where ``Context.run`` would not), and probes read it at the blocking call. If the program
never imported OpenTelemetry there is nothing to read and nothing is imported.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any


def _span_key() -> str | None:
    # ``opentelemetry.trace.propagation._SPAN_KEY`` is "current-span-<uuid4>" (made by
    # ``create_key``), so it must be read from the module, never spelled out here.
    module = sys.modules.get("opentelemetry.trace.propagation")
    key = getattr(module, "_SPAN_KEY", None)
    return key if isinstance(key, str) else None


def _otel_var() -> contextvars.ContextVar[Any] | None:
    module = sys.modules.get("opentelemetry.context")
    if module is None:
        return None
    runtime = getattr(module, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    return var if isinstance(var, contextvars.ContextVar) else None


def readable() -> bool:
    """Whether the program imported OpenTelemetry's context at all (else no span to read)."""
    return _otel_var() is not None


def current_span(ctx: contextvars.Context | None) -> Any:
    """The OpenTelemetry span object current in ``ctx`` (None: the calling code's own
    context), or None."""
    var = _otel_var()
    if var is None:
        return None
    otel_context = var.get(None) if ctx is None else ctx.get(var)
    if not otel_context:
        return None
    key = _span_key()
    return otel_context.get(key) if key is not None else None


def span_ids(ctx: contextvars.Context | None) -> tuple[int, int, bool] | None:
    """``(trace_id, span_id, sampled)`` of the span current in ``ctx`` (None: the calling
    code's own context), or None when there is no valid span. ``sampled`` lets the block's
    span follow its parent's sampling decision."""
    return ids_of(current_span(ctx))


def ids_of(span: Any) -> tuple[int, int, bool] | None:
    """``(trace_id, span_id, sampled)`` of a span object, or None when it is not valid."""
    if span is None:
        return None
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    return (int(span_context.trace_id), int(span_context.span_id),
            bool(int(span_context.trace_flags) & 0x01))
