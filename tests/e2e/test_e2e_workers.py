"""A deployed service against a real Jaeger: ``looptrace run --otlp ENDPOINT -m uvicorn
app:app --workers 2``, the FastAPI instrumentation set up in the app's code (OpenTelemetry's
``opentelemetry-instrument`` does not follow uvicorn's spawned workers: upstream issues
open-telemetry/opentelemetry-python-contrib#385 and opentelemetry-python#4927). Every
worker's blocks arrive as ``looptrace.block`` spans CHILD_OF their ``GET /block`` request
span, at the handler's line, each from a process whose resource names its pid."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from conftest import Jaeger
from helpers.lines import line_of

APPS = Path(__file__).resolve().parents[1] / "deploy_apps"
APP = str(APPS / "fastapi_app.py")
HANDLER_LINE = line_of(APP, "HANDLER_BLOCK")
_ARRIVAL_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        pid: int = json.loads(response.read())["pid"]
        return pid


def _start(service: str, jaeger: Jaeger, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "OTEL_SERVICE_NAME": service,
           "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        [sys.executable, "-m", "looptrace", "run", "--threshold-ms", "50", "--otlp",
         jaeger.otlp_endpoint, "-m", "uvicorn", "otel_fastapi_app:app", "--workers", "2",
         "--port", str(port), "--log-level", "warning", "--timeout-worker-healthcheck", "60"],
        cwd=APPS, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _block_spans(jaeger: Jaeger, service: str, pids: set[int]) -> list[dict[str, Any]]:
    """The traces of ``service`` once a block span from each worker has arrived."""
    query = urllib.parse.urlencode({"service": service, "limit": 200})
    deadline = time.monotonic() + _ARRIVAL_TIMEOUT_S
    while True:
        status, body = jaeger.get(f"/api/traces?{query}")
        traces = body["data"] if status == 200 and body and body["data"] else []
        seen = {_pid(t, s) for t in traces for s in t["spans"]
                if s["operationName"] == "looptrace.block"
                and _tags(s).get("looptrace.call") == "time.sleep"}
        if pids <= seen:
            return list(traces)
        if time.monotonic() > deadline:
            raise AssertionError(f"block spans from {seen} of workers {pids} reached Jaeger "
                                 f"in {_ARRIVAL_TIMEOUT_S} s")
        time.sleep(0.2)


def _tags(item: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in item["tags"]}


def _pid(trace: dict[str, Any], span: dict[str, Any]) -> int | None:
    value = _tags(trace["processes"][span["processID"]]).get("process.pid")
    return int(value) if value is not None else None


def test_every_uvicorn_worker_exports_blocks_inside_request_spans(jaeger: Jaeger) -> None:
    """Both workers (told apart by ``process.pid``) export their blocks, each CHILD_OF the
    FastAPI server span of the request it slowed, at the handler's line."""
    service = f"looptrace-e2e-workers-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    process = _start(service, jaeger, port)
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _get(f"http://127.0.0.1:{port}/ping")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (
                    process.stderr.read() if process.stderr else "no server")
                time.sleep(0.2)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # Until both answered: the second worker may still be starting (60 s: a busy machine).
            until = time.monotonic() + 60
            while len(pids) < 2 and time.monotonic() < until:
                pids.update(pool.map(_get, [f"http://127.0.0.1:{port}/block"] * 2))
        assert len(pids) == 2, pids
        traces = _block_spans(jaeger, service, pids)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=60)
        finally:
            process.kill()
    checked = set()
    for trace in traces:
        spans = {s["spanID"]: s for s in trace["spans"]}
        for span in trace["spans"]:
            if span["operationName"] != "looptrace.block":
                continue
            tags = _tags(span)
            if tags.get("looptrace.call") != "time.sleep":
                continue  # a step that lost the CPU on a busy machine is a block too
            (reference,) = span["references"]
            parent = spans[reference["spanID"]]
            assert reference["refType"] == "CHILD_OF"
            assert _tags(parent)["span.kind"] == "server"
            assert parent["operationName"].startswith("GET /block")
            assert tags["code.file.path"] == APP
            assert tags["code.line.number"] == HANDLER_LINE
            checked.add(_pid(trace, span))
    assert checked == pids
