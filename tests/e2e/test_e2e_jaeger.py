"""End to end against a real Jaeger: blocks of an instrumented aiohttp service arrive in
Jaeger as ``looptrace.block`` spans, CHILD_OF the request's server span, with the right
``code.line.number``, through both query APIs (``/api/traces`` and ``/api/v3/traces``); the
Jaeger JSON file holds the same spans; looptrace's own OTLP pipeline delivers too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import Jaeger
from helpers.lines import line_of

APP = str(Path(__file__).resolve().parents[1] / "otel_apps" / "blocking_service.py")
LINES = {"time.sleep": line_of(APP, "# BLOCK: sleep"),
         "http.client.HTTPResponse.read": line_of(APP, "# BLOCK: read")}
_ARRIVAL_TIMEOUT_S = 30


def _service(name: str) -> str:
    return f"looptrace-e2e-{name}-{uuid.uuid4().hex[:8]}"


def _env(jaeger: Jaeger, service: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "OTEL_SERVICE_NAME": service,
            "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "100", **extra}


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert done.returncode == 0, f"{command} failed:\n{done.stderr[-3000:]}"


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span["tags"]}


def _is_block(span: dict[str, Any], calls: Iterable[str] = LINES) -> bool:
    """A block span of one of ``calls``: tests pick their blocks by call, since on a busy
    machine a step that lost the CPU for long enough is a real block too."""
    return (span["operationName"] == "looptrace.block"
            and _tags(span).get("looptrace.call") in set(calls))


def _wait_for_traces(jaeger: Jaeger, service: str, blocks: int,
                     calls: Iterable[str] = LINES) -> list[dict[str, Any]]:
    """Poll /api/traces until ``blocks`` block spans of ``calls`` from ``service`` arrived
    (ingestion is asynchronous: a batch processor sits in Jaeger's pipeline)."""
    deadline = time.monotonic() + _ARRIVAL_TIMEOUT_S
    query = urllib.parse.urlencode({"service": service, "limit": 100})
    while True:
        status, body = jaeger.get(f"/api/traces?{query}")
        traces = body["data"] if status == 200 and body and body["data"] else []
        found = sum(1 for t in traces for s in t["spans"] if _is_block(s, calls))
        if found >= blocks:
            return list(traces)
        if time.monotonic() > deadline:
            raise AssertionError(f"{found}/{blocks} block spans of {service} reached Jaeger "
                                 f"in {_ARRIVAL_TIMEOUT_S} s; last answer {status}: {body}")
        time.sleep(0.2)


def _check_blocks_under_requests(traces: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every block span is CHILD_OF its trace's server span; return them by call."""
    by_call = {}
    for trace in traces:
        spans = {s["spanID"]: s for s in trace["spans"]}
        for span in trace["spans"]:
            if not _is_block(span):
                continue
            tags = _tags(span)
            (reference,) = span["references"]
            assert reference["refType"] == "CHILD_OF"
            parent = spans[reference["spanID"]]
            assert _tags(parent)["span.kind"] == "server"
            assert parent["operationName"] in ("GET /sleep", "GET /read")
            assert int(reference["traceID"], 16) == int(trace["traceID"], 16)
            assert tags["code.line.number"] == LINES[tags["looptrace.call"]]
            assert tags["code.file.path"] == APP
            assert tags["span.kind"] == "internal"
            assert tags["otel.scope.name"] == "looptrace"
            by_call[tags["looptrace.call"]] = span
    assert set(by_call) == set(LINES)
    return by_call


def _v3_spans(jaeger: Jaeger, service: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    query = urllib.parse.urlencode({
        "query.service_name": service, "query.num_traces": 20,
        "query.start_time_min": (now - timedelta(minutes=10)).isoformat().replace("+00:00", "Z"),
        "query.start_time_max": (now + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
    })
    status, body = jaeger.get(f"/api/v3/traces?{query}")
    assert status == 200, body
    return [span for resource in body["result"]["resourceSpans"]
            for scope in resource["scopeSpans"] for span in scope["spans"]]


def test_instrumented_service_blocks_are_children_of_request_spans(
        jaeger: Jaeger, slow_http_server: str) -> None:
    """``opentelemetry-instrument`` runs an aiohttp service with the aiohttp-server
    instrumentation and looptrace: in Jaeger, the time.sleep block and the synchronous
    read() block are each CHILD_OF their request's server span, at the right line."""
    service = _service("instrument")
    command = [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable,
               APP, slow_http_server]
    _run(command, _env(jaeger, service, LOOPTRACE_THRESHOLD_MS="30"))
    traces = _wait_for_traces(jaeger, service, blocks=2)
    blocks = _check_blocks_under_requests(traces)
    assert 55 <= blocks["time.sleep"]["duration"] / 1000 < 1000

    # The same through the v3 (OTLP-shaped) API: parentSpanId is the server span's.
    spans = _v3_spans(jaeger, service)
    servers = {s["spanId"]: s for s in spans if s["kind"] == 2}  # SPAN_KIND_SERVER
    calls = []
    for span in (s for s in spans if s["name"] == "looptrace.block"):
        attributes = {a["key"]: a["value"] for a in span["attributes"]}
        call = attributes.get("looptrace.call", {}).get("stringValue")
        if call not in LINES:
            continue
        calls.append(call)
        parent = servers[span["parentSpanId"]]
        assert parent["traceId"] == span["traceId"]
        assert int(attributes["code.line.number"]["intValue"]) == LINES[call]
    assert sorted(calls) == sorted(LINES)


def test_jaeger_json_file_holds_the_spans_jaeger_received(
        jaeger: Jaeger, slow_http_server: str, tmp_path: Path) -> None:
    """``looptrace run --otlp --jaeger-json`` on a service with its own TracerProvider: the
    file's block spans have the references, lines and times of those Jaeger stored, in the
    shape of Jaeger's own /api/traces answer (what the UI's JSON File tab reads); and
    ``looptrace report --format jaeger`` writes the same file from the saved report."""
    service = _service("file")
    jaeger_file, report = tmp_path / "trace.json", tmp_path / "report.json"
    command = [sys.executable, "-m", "looptrace", "run", "--quiet", "--threshold-ms", "30",
               "--otlp", jaeger.otlp_endpoint, "--jaeger-json", str(jaeger_file),
               "--json", str(report), APP, slow_http_server, "--own-provider"]
    _run(command, _env(jaeger, service))
    stored = _check_blocks_under_requests(_wait_for_traces(jaeger, service, blocks=2))

    document = json.loads(jaeger_file.read_text())
    assert set(document) == {"data", "total", "limit", "offset", "errors"}
    written = {}
    for trace in document["data"]:
        assert set(trace) >= {"traceID", "spans", "processes"}
        assert trace["processes"]["p1"]["serviceName"] == service
        for span in trace["spans"]:
            assert set(span) >= {"traceID", "spanID", "operationName", "references",
                                 "startTime", "duration", "tags", "logs", "processID"}
            assert span["processID"] in trace["processes"]
            if _is_block(span):
                written[_tags(span)["looptrace.call"]] = span
    assert set(written) == set(stored)
    for call, span in written.items():
        live = stored[call]
        assert span["references"][0]["refType"] == "CHILD_OF"
        assert int(span["references"][0]["spanID"], 16) == int(
            live["references"][0]["spanID"], 16)
        assert int(span["traceID"], 16) == int(live["traceID"], 16)
        assert span["startTime"] == live["startTime"]
        assert abs(span["duration"] - live["duration"]) <= 1
        same = ("code.line.number", "code.file.path", "code.function.name", "code.stacktrace",
                "looptrace.kind", "looptrace.task", "thread.id", "looptrace.duration_ms")
        assert {k: _tags(span)[k] for k in same} == {k: _tags(live)[k] for k in same}

    rendered = tmp_path / "again.json"
    env = _env(jaeger, service)
    _run([sys.executable, "-m", "looptrace", "report", str(report), "--format", "jaeger",
          "-o", str(rendered)], env)
    assert json.loads(rendered.read_text()) == document


def test_looptrace_own_pipeline_reaches_jaeger(jaeger: Jaeger, tmp_path: Path) -> None:
    """A program with no OpenTelemetry setup, run with ``looptrace run --otlp URL``:
    looptrace's own OTLP/HTTP pipeline delivers its block spans (roots: no request span
    was current) and, with LOOPTRACE_OTEL_SPANS, a loop span with task spans under it."""
    service = _service("own")
    script = tmp_path / "program.py"
    script.write_text(
        "import asyncio, time\n"
        "async def worker():\n"
        "    await asyncio.sleep(0.001)\n"
        "    time.sleep(0.04)  # the block\n"
        "async def main():\n"
        "    await asyncio.gather(asyncio.create_task(worker(), name='w1'),\n"
        "                         asyncio.create_task(worker(), name='w2'))\n"
        "asyncio.run(main())\n")
    env = _env(jaeger, service, LOOPTRACE_OTEL_SPANS="blocks,loops,tasks")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        env.pop(name)  # --otlp names the endpoint
    _run([sys.executable, "-m", "looptrace", "run", "--quiet", "--mode", "full",
          "--threshold-ms", "20", "--otlp", jaeger.otlp_endpoint, str(script)], env)
    sleeps = ("time.sleep",)
    traces = _wait_for_traces(jaeger, service, blocks=2, calls=sleeps)
    spans = [s for t in traces for s in t["spans"]]
    for span in (s for s in spans if _is_block(s, sleeps)):
        assert span["references"] == []
        assert _tags(span)["code.line.number"] == 4
    deadline = time.monotonic() + _ARRIVAL_TIMEOUT_S
    while not any(s["operationName"] == "looptrace.loop" for s in spans):
        assert time.monotonic() < deadline, "no looptrace.loop span reached Jaeger"
        time.sleep(0.2)
        spans = [s for t in _wait_for_traces(jaeger, service, 2, sleeps) for s in t["spans"]]
    (loop,) = [s for s in spans if s["operationName"] == "looptrace.loop"]
    tasks = {_tags(s)["looptrace.task"]: s for s in spans
             if s["operationName"] == "looptrace.task"}
    for name in ("w1", "w2"):
        assert tasks[name]["references"][0]["spanID"] == loop["spanID"]
    assert _tags(loop)["looptrace.blocks"] >= 2
