"""The web-service demo's tracing story, against a real Jaeger: with ``--otlp`` every block
of the blocking ``/report`` handler arrives as a ``looptrace.block`` span inside its
``GET /report`` request span, at the synchronous call's line (docs/demos/web_service.md)."""

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


def _report_traces(jaeger: Jaeger, service: str, blocks: int) -> list[dict[str, Any]]:
    """The GET /report traces of ``service``, once ``blocks`` block spans have arrived."""
    query = urllib.parse.urlencode({"service": service, "operation": "GET /report",
                                    "limit": 1000})
    deadline = time.monotonic() + _ARRIVAL_TIMEOUT_S
    while True:
        status, body = jaeger.get(f"/api/traces?{query}")
        traces = body["data"] if status == 200 and body and body["data"] else []
        found = sum(s["operationName"] == "looptrace.block" for t in traces for s in t["spans"])
        if found >= blocks:
            time.sleep(0.5)  # anything beyond the expected spans would have arrived too
            return list(jaeger.get(f"/api/traces?{query}")[1]["data"])
        if time.monotonic() > deadline:
            raise AssertionError(f"{found}/{blocks} block spans of {service} reached Jaeger "
                                 f"in {_ARRIVAL_TIMEOUT_S} s; last answer {status}: {body}")
        time.sleep(0.2)


def test_demo_blocks_arrive_inside_their_report_requests(jaeger: Jaeger) -> None:
    """``python demos/web_service.py --quick --otlp`` exports one block span per block the
    demo reports, each CHILD_OF a ``GET /report`` server span, at ``fetch_report``'s
    ``urlopen`` line; the fixed round adds none."""
    service = f"looptrace-demo-web-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, str(DEMO), "--quick", "--otlp", jaeger.otlp_endpoint],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "OTEL_SERVICE_NAME": service, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    assert done.returncode == 0, done.stderr[-3000:]
    reported = re.search(r"looptrace: (\d+) blocks? urllib\.request\.urlopen at line "
                         rf"{_line_of('SYNC CALL')} in fetch_report", done.stdout)
    assert reported, done.stdout
    blocks = int(reported.group(1))
    assert f"as service {service!r}" in done.stdout

    spans_found = 0
    for trace in _report_traces(jaeger, service, blocks):
        spans = {span["spanID"]: span for span in trace["spans"]}
        for span in trace["spans"]:
            if span["operationName"] != "looptrace.block":
                continue
            spans_found += 1
            tags = {tag["key"]: tag["value"] for tag in span["tags"]}
            assert tags["looptrace.call"] == "urllib.request.urlopen"
            assert tags["code.function.name"] == "fetch_report"
            assert tags["code.line.number"] == _line_of("SYNC CALL")
            assert tags["code.file.path"] == str(DEMO)
            (reference,) = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
            parent = spans[reference["spanID"]]
            # The other references are links to the requests the block delayed (its
            # victims, e.g. an /orders request whose 10 ms sleep ended during the block):
            # each in a request of its own, never the block's own.
            for link in span["references"]:
                if link["refType"] != "CHILD_OF":
                    assert link["refType"] == "FOLLOWS_FROM", link
                    assert link["spanID"] != reference["spanID"], link
            assert parent["operationName"] == "GET /report"
            assert 130_000 <= span["duration"] < 1_000_000  # µs: the backend's 150 ms
    assert spans_found == blocks
