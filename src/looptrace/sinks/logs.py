"""Blocks as log events: ``install(log="structlog")`` or ``install(log="stdlib")``.

One ``looptrace.block`` event per block, at WARNING, with the site, the blocking call, the
duration, the task and the OpenTelemetry ids of the span that was current in the blocked
code. The listener runs on looptrace's dispatch thread, never on a loop thread, so a slow
handler or renderer never adds to the block it reports.

- ``structlog``: through ``structlog.get_logger("looptrace")``, so the application's own
  ``structlog.configure()`` (processors, renderer, level filter) applies. looptrace never
  configures structlog.
- ``stdlib``: through the ``looptrace`` logger; the fields are also set on the
  ``LogRecord`` (``extra=``) for JSON formatters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from looptrace._config import Options
from looptrace.exporters._spans import evidence_fields
from looptrace.session import BlockEvent

from . import LiveSink

EVENT = "looptrace.block"


def block_fields(event: BlockEvent) -> dict[str, Any]:
    """The event's fields. ``site``, ``call``, ``duration_ms`` and ``task`` are always there
    (``None`` when unknown); ``trace_id``/``span_id`` (lowercase hex, as OpenTelemetry
    writes them) only when a valid span was current in the blocked code; the evidence
    (``cpu_ms``, ``gc_ms``, ``causes``, the GIL holder...) only when it says something."""
    site = event.site
    fields: dict[str, Any] = {
        "site": f"{site.file}:{site.line}" if site is not None else None,
        "function": site.function if site is not None else None,
        "call": event.call,
        "duration_ms": event.duration_ms,
        "kind": event.kind,
        "duration_source": event.duration_source,
        "site_source": event.site_source,
        "samples": event.samples,
        "task": event.task,
        "coroutine": event.coroutine,
        "callback": event.callback,
        "loop_id": event.loop,
        "loop_thread": event.thread,
        **evidence_fields(event),
    }
    if event.trace_id is not None and event.span_id is not None:
        fields["trace_id"] = event.trace_id
        fields["span_id"] = event.span_id
    keep = {"site", "call", "duration_ms", "task"}
    return {k: v for k, v in fields.items() if v is not None or k in keep}


def describe(fields: dict[str, Any]) -> str:
    """One line for people: ``loop blocked 120.3 ms by time.sleep at app.py:4 in f (task t),
    delayed 3 tasks and callbacks by 250.1 ms in all (longest 110.2 ms)``."""
    what = f"by {fields['call']}" if fields.get("call") else "(no blocking function named)"
    where = fields.get("site") or "an unknown site"
    if fields.get("function"):
        where += f" in {fields['function']}"
    owner = fields.get("task") or fields.get("callback") or "?"
    text = f"loop blocked {fields['duration_ms']:.1f} ms {what} at {where} (task {owner})"
    if fields.get("victims"):
        # Who paid: the on-call reader's next question (victims are measured when it ends).
        count = fields["victims"]
        text += (f", delayed {count} {'task or callback' if count == 1 else 'tasks and callbacks'}"
                 f" by {fields['victim_delay_ms']:.1f} ms in all"
                 f" (longest {fields['victim_max_delay_ms']:.1f} ms)")
        requests = fields.get("victim_request_count")
        if requests:
            text += f" in {requests} request{'s' if requests != 1 else ''}"
    if fields.get("trace_id"):
        text += f" trace {fields['trace_id']} span {fields['span_id']}"
    return text


def _structlog_listener() -> Callable[[BlockEvent], None]:
    try:
        import structlog  # optional: imported only when log='structlog'
    except ImportError:
        raise ImportError("looptrace: log='structlog' needs the structlog package "
                          "(pip install 'looptrace[structlog]')") from None
    # A lazy proxy: the application's configuration is read when an event is logged.
    log = structlog.get_logger("looptrace")

    def listener(event: BlockEvent) -> None:
        log.warning(EVENT, **block_fields(event))

    return listener


def _stdlib_listener() -> Callable[[BlockEvent], None]:
    log = logging.getLogger("looptrace")

    def listener(event: BlockEvent) -> None:
        if not log.isEnabledFor(logging.WARNING):
            return
        fields = block_fields(event)
        log.warning("%s: %s", EVENT, describe(fields), extra=fields)

    return listener


def _close(timeout_s: float) -> None:
    """Nothing to flush: logging handlers are the application's."""


def live_sink(options: Options) -> LiveSink | None:
    """The log sink for ``options.log`` (``None``: no logging of blocks)."""
    if options.log == "structlog":
        return LiveSink("log", _structlog_listener(), _close)
    if options.log == "stdlib":
        return LiveSink("log", _stdlib_listener(), _close)
    return None
