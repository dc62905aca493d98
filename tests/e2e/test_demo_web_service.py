"""The web-service demo's tracing story, against a real Jaeger: with ``--otlp`` every block
of the blocking ``/report`` handler arrives as a ``looptrace.block`` span inside its
``GET /report`` request span, at the synchronous call's line, linked to the requests of
other endpoints it delayed, and those link back (docs/demos/web_service.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from conftest import Jaeger

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demos" / "web_service.py"
_ARRIVAL_TIMEOUT_S = 30


def _line_of(marker: str) -> int:
    lines = DEMO.read_text(encoding="utf-8").splitlines()
    (number,) = [n for n, text in enumerate(lines, 1) if f"# {marker}" in text]
    return number


def _traces(jaeger: Jaeger, service: str, operation: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"service": service, "operation": operation,
                                    "limit": 5000})
    status, body = jaeger.get(f"/api/traces?{query}")
    assert status == 200, body
    return list(body["data"] or [])


def _report_traces(jaeger: Jaeger, service: str, blocks: int) -> list[dict[str, Any]]:
    """The GET /report traces of ``service``, once ``blocks`` urlopen block spans have
    arrived."""
    deadline = time.monotonic() + _ARRIVAL_TIMEOUT_S
    while True:
        traces = _traces(jaeger, service, "GET /report")
        found = sum(s["operationName"] == "looptrace.block" and _tags(s).get("looptrace.call")
                    == "urllib.request.urlopen" for t in traces for s in t["spans"])
        if found >= blocks:
            time.sleep(0.5)  # anything beyond the expected spans would have arrived too
            return _traces(jaeger, service, "GET /report")
        if time.monotonic() > deadline:
            raise AssertionError(f"{found}/{blocks} block spans of {service} reached Jaeger "
                                 f"in {_ARRIVAL_TIMEOUT_S} s")
        time.sleep(0.2)


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span["tags"]}


def _link_delays(jaeger: Jaeger, trace_id: str, span_id: str) -> dict[tuple[str, str], float]:
    """The links of one span as the OTLP API (/api/v3) returns them, with their attribute
    ``looptrace.victim.delay_ms`` (the v1 API's references carry no attributes):
    ``{(trace id, span id): delay}``."""
    status, body = jaeger.get(f"/api/v3/traces/{trace_id}")
    assert status == 200, body
    spans = [span for resource in body["result"]["resourceSpans"]
             for scope in resource["scopeSpans"] for span in scope["spans"]
             if span["spanId"] == span_id]
    assert len(spans) == 1, (trace_id, span_id, spans)
    delays = {}
    for link in spans[0].get("links", []):
        values = {a["key"]: a["value"] for a in link.get("attributes", [])}
        delay = values.get("looptrace.victim.delay_ms", {}).get("doubleValue")
        delays[(link["traceId"], link["spanId"])] = delay
    return delays


def _run_demo(jaeger: Jaeger, service: str) -> str:
    # The whole demo (3 s per round), not --quick: three times the blocks, so that some
    # delayed requests are still open when their block's span is made (see below).
    done = subprocess.run(
        [sys.executable, str(DEMO), "--otlp", jaeger.otlp_endpoint],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "OTEL_SERVICE_NAME": service, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"as service {service!r}" in done.stdout
    return done.stdout


def test_demo_blocks_arrive_inside_their_report_requests_and_link_the_delayed(
        jaeger: Jaeger) -> None:
    """``python demos/web_service.py --otlp`` exports one block span per block the demo
    reports, each CHILD_OF a ``GET /report`` server span, at ``fetch_report``'s ``urlopen``
    line; the fixed round adds none. The blocks delayed requests of other endpoints: each
    block span links (FOLLOWS_FROM, another trace) to the requests it delayed, with the
    delay on the link, and delayed requests still open when the block's span was made link
    back to it, with ``looptrace.delayed_ms``."""
    service = f"looptrace-demo-web-{uuid.uuid4().hex[:8]}"
    stdout = _run_demo(jaeger, service)
    reported = re.search(r"looptrace: (\d+) blocks? urllib\.request\.urlopen at line "
                         rf"{_line_of('SYNC CALL')} in fetch_report", stdout)
    assert reported, stdout
    blocks = int(reported.group(1))
    assert re.search(r"delayed \d+ tasks and callbacks by .* in all, longest .*, in \d+ "
                     r"requests?\n", stdout), stdout

    block_spans = _check_block_spans(_report_traces(jaeger, service, blocks), blocks)
    linked_from_blocks = {(ref["traceID"], ref["spanID"]): (trace_id, span)
                          for trace_id, span in block_spans.values()
                          for ref in span["references"] if ref["refType"] == "FOLLOWS_FROM"}
    assert linked_from_blocks, "no block span links to a request it delayed"

    requests = {(trace["traceID"], span["spanID"]): span
                for operation in ("GET /hello", "GET /orders", "GET /report", "GET /thumbnail")
                for trace in _traces(jaeger, service, operation) for span in trace["spans"]
                if span["operationName"] == operation}
    for (trace_id, span_id), (block_trace, block) in linked_from_blocks.items():
        # A block links to requests of others, never to its own, each a request of the
        # service in Jaeger, with the delay on the link.
        assert trace_id != block_trace, block
        assert (trace_id, span_id) in requests, (trace_id, span_id, block)
    for span_id, (trace_id, span) in block_spans.items():
        forward = {(ref["traceID"], ref["spanID"]) for ref in span["references"]
                   if ref["refType"] == "FOLLOWS_FROM"}
        if forward:
            delays = _link_delays(jaeger, trace_id, span_id)
            assert all((delays[key] or 0) > 0 for key in forward), delays
            assert max(delays.values()) <= _tags(span)["looptrace.victim_max_delay_ms"] + 1

    linked_back = _check_links_back(jaeger, requests, block_spans, linked_from_blocks)
    assert linked_back, ("no delayed request links back to its block; requests the blocks "
                         f"link to: {sorted(linked_from_blocks)}")


def _check_block_spans(traces: list[dict[str, Any]], blocks: int
                       ) -> dict[str, tuple[str, dict[str, Any]]]:
    """The spans of the urlopen blocks (``{span id: (trace id, span)}``), each checked:
    inside its GET /report request, at the synchronous call's line; as many as the first
    round reported (the fixed round adds none)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for trace in traces:
        spans = {span["spanID"]: span for span in trace["spans"]}
        for span in trace["spans"]:
            tags = _tags(span)
            # (A step starved of CPU on a saturated machine may be a block span of its own,
            # named after what it was running: not the demo's story.)
            if span["operationName"] != "looptrace.block" or tags.get(
                    "looptrace.call") != "urllib.request.urlopen":
                continue
            found[span["spanID"]] = (trace["traceID"], span)
            assert tags["code.function.name"] == "fetch_report"
            assert tags["code.line.number"] == _line_of("SYNC CALL")
            assert tags["code.file.path"] == str(DEMO)
            (reference,) = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
            assert spans[reference["spanID"]]["operationName"] == "GET /report"
            for link in span["references"]:
                if link["refType"] != "CHILD_OF":
                    assert link["refType"] == "FOLLOWS_FROM", link
            assert 130_000 <= span["duration"] < 5_000_000  # µs: the backend's 150 ms and more
    assert len(found) == blocks
    return found


def _check_links_back(jaeger: Jaeger, requests: dict[tuple[str, str], dict[str, Any]],
                      block_spans: dict[str, tuple[str, dict[str, Any]]],
                      linked_from_blocks: dict[tuple[str, str], Any]) -> list[str]:
    """The delayed requests that link back to a block span (in another trace), each checked:
    the block links to it too, the link carries the delay, the request span its
    ``looptrace.delayed_ms``. Returns their operations."""
    linked_back = []
    for (trace_id, span_id), span in requests.items():
        to_blocks = [ref for ref in span["references"] if ref["spanID"] in block_spans]
        if not to_blocks:
            continue
        linked_back.append(span["operationName"])
        for ref in to_blocks:
            assert ref["refType"] == "FOLLOWS_FROM", ref
            assert ref["traceID"] == block_spans[ref["spanID"]][0] != trace_id, ref
        assert (trace_id, span_id) in linked_from_blocks, span
        assert _tags(span)["looptrace.delayed_ms"] > 0, span
        delays = _link_delays(jaeger, trace_id, span_id)
        assert all((delays[(ref["traceID"], ref["spanID"])] or 0) > 0 for ref in to_blocks), delays
    return linked_back
