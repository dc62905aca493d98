"""A Jaeger JSON trace file: ``looptrace run --jaeger-json PATH`` and
``looptrace report FILE --format jaeger``.

The Jaeger UI opens it offline (Search, "JSON File" tab): the document has the shape of
Jaeger's own ``/api/traces`` response, ``{"data": [trace, ...]}``, each trace with its
``spans`` (microsecond times, ``CHILD_OF`` references) and ``processes``. The spans are the
ones the live OpenTelemetry export sends (:mod:`looptrace.sinks.otel`): one
``looptrace.block`` per block, with the same attributes as tags, in the trace of the
request it slowed down, as a child of that request's span. The parent span itself is not
in the file (looptrace never saw it), so the UI lists the block spans at the top of their
trace. A block that happened outside any span gets a trace of its own.

Span and trace ids looptrace makes up are derived from the report (its pid, start time and
the block's position), so rendering the same report twice gives the same file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from looptrace.session import Session

from ._spans import SCOPE_NAME, SpanRecord, block_record, service_name

_PROCESS_ID = "p1"


def _derived_id(session: Session, what: str, index: int, hex_digits: int) -> str:
    seed = f"{session.pid}:{session.started_unix_ns}:{what}:{index}".encode()
    digest = hashlib.sha256(seed).hexdigest()[:hex_digits]
    return digest if int(digest, 16) else "1".rjust(hex_digits, "0")


def _tag(key: str, value: object) -> dict[str, Any]:
    if isinstance(value, bool):
        kind = "bool"
    elif isinstance(value, int):
        kind = "int64"
    elif isinstance(value, float):
        kind = "float64"
    elif isinstance(value, tuple):
        # As Jaeger shows an OTLP array attribute: its JSON text.
        kind, value = "string", json.dumps(list(value))
    else:
        kind, value = "string", str(value)
    return {"key": key, "type": kind, "value": value}


def _span(record: SpanRecord, trace_id: str, span_id: str, version: str) -> dict[str, Any]:
    references = []
    if record.parent is not None:
        references.append({"refType": "CHILD_OF", "traceID": f"{record.parent[0]:032x}",
                           "spanID": f"{record.parent[1]:016x}"})
    # Links (the requests a block delayed) as Jaeger shows OTLP span links.
    references += [{"refType": "FOLLOWS_FROM", "traceID": f"{trace:032x}",
                    "spanID": f"{span:016x}"} for trace, span, _ in record.links]
    tags = [_tag(key, value) for key, value in record.attributes.items()]
    tags += [_tag("otel.scope.name", SCOPE_NAME), _tag("otel.scope.version", version),
             _tag("span.kind", "internal")]
    start_us = record.start_unix_ns // 1000
    return {
        "traceID": trace_id, "spanID": span_id, "flags": 1,
        "operationName": record.name, "references": references,
        "startTime": start_us,
        "duration": max(record.end_unix_ns // 1000 - start_us, 0),
        "tags": tags, "logs": [], "processID": _PROCESS_ID, "warnings": None,
    }


def document(session: Session) -> dict[str, Any]:
    """The file's content as a dictionary (``render`` writes it as JSON)."""
    process = {"serviceName": service_name(), "tags": [
        _tag("process.pid", session.pid),
        _tag("process.runtime.name", session.implementation.lower()),
        _tag("process.runtime.version", session.python),
        _tag("telemetry.sdk.name", "looptrace"),
        _tag("telemetry.sdk.version", session.looptrace_version),
    ]}
    traces: dict[str, list[dict[str, Any]]] = {}
    for index, event in enumerate(session.blocks):
        record = block_record(event)
        if record.parent is not None:
            trace_id = f"{record.parent[0]:032x}"
        else:
            trace_id = _derived_id(session, "trace", index, 32)
        span_id = _derived_id(session, "span", index, 16)
        traces.setdefault(trace_id, []).append(
            _span(record, trace_id, span_id, session.looptrace_version))
    data = [{"traceID": trace_id, "spans": spans, "processes": {_PROCESS_ID: process},
             "warnings": None}
            for trace_id, spans in sorted(traces.items(), key=lambda t: t[1][0]["startTime"])]
    return {"data": data, "total": len(data), "limit": 0, "offset": 0, "errors": None}


def render(session: Session) -> str:
    """The Jaeger JSON file of ``session``'s blocks (see the module's docstring)."""
    return json.dumps(document(session), indent=1, ensure_ascii=False) + "\n"
