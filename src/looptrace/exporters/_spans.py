"""What a block looks like as a span, shared by the live OpenTelemetry export and the
Jaeger JSON file, so both show the same name, the same attributes and the same parent.

Nothing here imports OpenTelemetry: a span is described as plain values (:class:`SpanRecord`)
that :mod:`looptrace.sinks.otel` turns into SDK spans and :mod:`.jaeger_json` into Jaeger's
JSON. Both read the same record of a block, a :class:`~looptrace.session.BlockEvent`, so
this is the one mapping from a block to a span.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from looptrace.events import CodeLocation
from looptrace.session import BlockEvent, LoopSummary, Session, TaskSummary, VictimEvent

AttributeValue = str | bool | int | float | tuple[str, ...]
Attributes = dict[str, AttributeValue]

SCOPE_NAME = "looptrace"
"""The instrumentation scope of every span and metric looptrace emits."""
SCHEMA_URL = "https://opentelemetry.io/schemas/1.33.0"
"""The semantic-conventions version whose ``code.*`` names the spans use (stable since 1.33)."""

BLOCK_SPAN = "looptrace.block"
LOOP_SPAN = "looptrace.loop"
TASK_SPAN = "looptrace.task"

_MAX_STACK_FRAMES = 64
_MAX_STACKTRACE_CHARS = 8192  # OTel's attribute length is unlimited by default: cap ours


def format_stacktrace(stack: tuple[CodeLocation, ...]) -> str:
    """``stack`` (outermost first) in Python's traceback form, as ``code.stacktrace`` asks,
    with the innermost frames kept when it is too long."""
    frames = stack[-_MAX_STACK_FRAMES:]
    lines = ["Traceback (most recent call last):\n"]
    if len(stack) > len(frames):
        lines.append(f"  ... {len(stack) - len(frames)} outer frames not shown\n")
    lines.extend(f'  File "{f.file}", line {f.line}, in {f.function}\n' for f in frames)
    text = "".join(lines)
    if len(text) > _MAX_STACKTRACE_CHARS:
        text = "Traceback (most recent call last):\n  ...\n" + text[-_MAX_STACKTRACE_CHARS:]
    return text


def block_attributes(event: BlockEvent) -> Attributes:
    """The attributes of one block's span, live or from a file: OpenTelemetry's ``code.*``
    and ``thread.*`` names where they exist, ``looptrace.*`` for the rest. Absent values
    are left out, and so are causes that took no time (see :func:`evidence_fields`)."""
    attributes: Attributes = {}
    site = event.site
    if site is not None:
        attributes["code.function.name"] = site.function
        attributes["code.file.path"] = site.file
        attributes["code.line.number"] = site.line
    if event.stack:
        attributes["code.stacktrace"] = format_stacktrace(event.stack)
    attributes["thread.id"] = event.thread_id
    attributes["thread.name"] = event.thread
    attributes["looptrace.kind"] = event.kind
    optional: dict[str, str | None] = {
        "looptrace.call": event.call, "looptrace.task": event.task,
        "looptrace.coroutine": event.coroutine, "looptrace.callback": event.callback,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    attributes["looptrace.duration_ms"] = event.duration_ms
    attributes["looptrace.duration_source"] = event.duration_source
    attributes["looptrace.site_source"] = event.site_source
    attributes["looptrace.samples"] = event.samples
    attributes["looptrace.loop.id"] = event.loop
    attributes.update({f"looptrace.{name}": value
                       for name, value in evidence_fields(event).items()})
    return attributes


EvidenceValue = str | int | float | bool | tuple[str, ...]


def evidence_fields(event: BlockEvent) -> dict[str, EvidenceValue]:
    """What a block's evidence adds beside its site and call (how the call was known, the
    CPU and GIL figures, the causes, a block still running at stop), under the names the
    JSON report uses. Values that say nothing are left out: a cause that took no time, no
    GIL holder, a block that ended. One list for every output (spans, log events, the
    Perfetto trace), so that none of them lags behind the report."""
    site = event.gil_holder_site
    fields: dict[str, EvidenceValue | None] = {
        "call_source": event.call_source,
        "gc_ms": event.gc_ms or None,
        "cpu_wait_ms": event.cpu_wait_ms or None,
        "cpu_ms": event.cpu_ms,
        "causes": event.causes or None,
        "in_progress": event.in_progress or None,
        "gil_wait_ms": event.gil_wait_ms or None,
        "gil_holder": event.gil_holder,
        "gil_holder_call": event.gil_holder_call,
        "gil_holder_site": f"{site.file}:{site.line}" if site is not None else None,
        **victim_fields(event),
    }
    return {name: value for name, value in fields.items() if value is not None}


def victim_fields(event: BlockEvent) -> dict[str, EvidenceValue | None]:
    """Who the block delayed: none when not measured; the count (even 0) when measured,
    the rest when there were victims. Each victim in detail is one line of text
    (``name (coroutine) 12.3 ms trace <id> span <id>``): outputs take flat values."""
    if event.victims is None:
        return {}
    some = event.victims > 0
    return {
        "victims": event.victims,
        "victim_delay_ms": event.victim_delay_ms if some else None,
        "victim_max_delay_ms": event.victim_max_delay_ms if some else None,
        "victim_requests": event.victim_requests or None,
        "victim_request_count": event.victim_request_count or None,
        "victim_detail": tuple(victim_line(v) for v in event.victim_detail) or None,
    }


def victim_line(victim: VictimEvent) -> str:
    """One delayed task or callback, as text."""
    text = victim.name + (f" ({victim.coroutine})" if victim.coroutine else "")
    text += f" {victim.delay_ms:g} ms"
    if victim.trace_id is not None:
        text += f" trace {victim.trace_id} span {victim.span_id}"
    return text


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """A span to emit, as plain values.

    ``parent`` is an existing span (``(trace_id, span_id)``, e.g. the request a block hit);
    ``key``/``parent_key`` link records emitted together (a task span under its loop span).
    """

    name: str
    start_unix_ns: int
    end_unix_ns: int
    attributes: Attributes
    parent: tuple[int, int] | None = None
    parent_sampled: bool = True
    """The parent's own sampling decision (a block in a request that was not sampled is
    not sampled either, under a ParentBased sampler)."""
    key: str | None = None
    parent_key: str | None = None
    links: tuple[tuple[int, int, float], ...] = ()
    """Spans this one links to, ``(trace_id, span_id, delay_ms)``: the requests a block
    delayed, and by how much (``looptrace.victim.delay_ms`` on each link)."""


def block_record(event: BlockEvent) -> SpanRecord:
    """The span of one block of a report."""
    start = event.start_unix_ns
    parent = None
    if event.trace_id is not None and event.span_id is not None:
        parent = (int(event.trace_id, 16), int(event.span_id, 16))
    return SpanRecord(BLOCK_SPAN, start, start + round(event.duration_ms * 1e6),
                      block_attributes(event), parent, event.trace_sampled,
                      links=victim_links(event, parent))


def victim_links(event: BlockEvent,
                 parent: tuple[int, int] | None) -> tuple[tuple[int, int, float], ...]:
    """The spans of the requests the block delayed (its victims in detail), each once with
    its longest delay; the block's own parent is not linked (it is the parent)."""
    delays: dict[tuple[int, int], float] = {}
    for victim in event.victim_detail:
        if victim.trace_id is None or victim.span_id is None:
            continue
        try:
            key = (int(victim.trace_id, 16), int(victim.span_id, 16))
        except ValueError:  # a report file may say anything
            continue
        if key != parent and key[0] and key[1]:
            delays[key] = max(delays.get(key, 0.0), victim.delay_ms)
    return tuple((trace_id, span_id, delay) for (trace_id, span_id), delay in delays.items())


def _loop_attributes(loop: LoopSummary) -> Attributes:
    attributes: Attributes = {
        "looptrace.loop.id": loop.id, "looptrace.loop.kind": loop.kind,
        "thread.id": loop.thread_id, "thread.name": loop.thread,
        "looptrace.loop.coverage": ",".join(loop.coverage),
        "looptrace.blocks": loop.blocks, "looptrace.block_ms": loop.block_ms,
    }
    optional: dict[str, float | int | None] = {
        "looptrace.iterations": loop.iterations, "looptrace.steps": loop.steps,
        "looptrace.busy_ms": loop.busy_ms, "looptrace.io_wait_ms": loop.io_wait_ms,
        "looptrace.utilization": loop.utilization, "looptrace.lag.p50_ms": loop.lag_ms.p50,
        "looptrace.lag.p99_ms": loop.lag_ms.p99, "looptrace.lag.max_ms": loop.lag_ms.max,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes


def _task_attributes(task: TaskSummary) -> Attributes:
    attributes: Attributes = {"looptrace.task": task.name, "looptrace.task.kind": task.kind,
                              "looptrace.blocks": task.blocks,
                              "looptrace.block_ms": task.block_ms,
                              "looptrace.max_block_ms": task.max_block_ms}
    if task.coroutine is not None:
        attributes["looptrace.coroutine"] = task.coroutine
    if task.steps is not None:
        attributes["looptrace.steps"] = task.steps
    if task.busy_ms is not None:
        attributes["looptrace.busy_ms"] = task.busy_ms
    return attributes


def loop_and_task_records(session: Session, kinds: Iterable[str]) -> list[SpanRecord]:
    """Deep-tracing spans of a finished session: one per loop (its figures) and, when asked,
    one per row of the task table under its loop's span.

    A loop span covers the session. A task span covers the task's first to last recorded
    step when the session kept a timeline (``mode="full"``), else its loop's span.
    """
    wanted = set(kinds)
    if not wanted & {"loops", "tasks"} or not session.loops:
        return []
    start = session.started_unix_ns
    end = start + round(session.wall_ms * 1e6)
    records = [SpanRecord(LOOP_SPAN, start, end, _loop_attributes(loop), key=f"loop-{loop.id}")
               for loop in session.loops]
    if "tasks" not in wanted:
        return records
    # Where each task row ran: the loop and the extent of its steps in the timeline.
    extent: dict[tuple[str, str | None], tuple[int, float, float]] = {}
    if session.timeline is not None:
        owners = session.timeline.owners
        for loop_timeline in session.timeline.loops:
            for step_start, step_ms, owner in loop_timeline.steps:
                if not 0 <= owner < len(owners):
                    continue
                key = (owners[owner].name, owners[owner].coroutine)
                first = extent.get(key)
                low, high = step_start, step_start + step_ms
                if first is not None:
                    low, high = min(low, first[1]), max(high, first[2])
                extent[key] = (loop_timeline.loop, low, high)
    default_loop = session.loops[0].id
    for index, task in enumerate(session.tasks):
        found = extent.get((task.name, task.coroutine))
        loop_id, task_start, task_end = default_loop, start, end
        if found is not None:
            loop_id = found[0]
            task_start = start + round(found[1] * 1e6)
            task_end = start + round(found[2] * 1e6)
        records.append(SpanRecord(TASK_SPAN, task_start, max(task_end, task_start),
                                  _task_attributes(task), key=f"task-{index}",
                                  parent_key=f"loop-{loop_id}"))
    return records


def service_name() -> str:
    """The service name OpenTelemetry's SDK would give this process: ``OTEL_SERVICE_NAME``,
    else ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, else ``unknown_service:python``."""
    name = os.environ.get("OTEL_SERVICE_NAME", "").strip()
    if name:
        return name
    for item in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return "unknown_service:python"
