"""`--otlp` endpoints as the OTel exporter spec builds them; a collector's errors named;
metrics lost to a collector that never answers counted (issue 11, item 15)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.collectors import dead_endpoint
from looptrace.sinks._otel_pipeline import signal_endpoint

PROGRAM = textwrap.dedent("""
    import asyncio, time
    async def main():
        await asyncio.sleep(0)
        time.sleep(0.06)
    asyncio.run(main())
""")


@pytest.mark.parametrize(("given", "traces", "metrics"), [
    ("http://h:4318", "http://h:4318/v1/traces", "http://h:4318/v1/metrics"),
    ("http://h:4318/", "http://h:4318/v1/traces", "http://h:4318/v1/metrics"),
    ("http://h:4318/v1/traces", "http://h:4318/v1/traces", "http://h:4318/v1/metrics"),
    ("http://h/otlp/v1/metrics", "http://h/otlp/v1/traces", "http://h/otlp/v1/metrics"),
    ("https://h/prefix", "https://h/prefix/v1/traces", "https://h/prefix/v1/metrics"),
])
def test_signal_urls_follow_the_spec(given: str, traces: str, metrics: str) -> None:
    """A base URL gets `/v1/<signal>`; a URL that names one signal is that signal's and
    its base serves the other (never `/v1/traces/v1/metrics`)."""
    assert signal_endpoint(given, "traces") == traces
    assert signal_endpoint(given, "metrics") == metrics


@contextmanager
def _collector(status: int) -> Iterator[tuple[str, list[str]]]:
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # the stdlib names it so
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            paths.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()


def _run(tmp_path: Path, endpoint: str) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    script = tmp_path / "p.py"
    script.write_text(PROGRAM)
    report = tmp_path / "r.json"
    result = subprocess.run([sys.executable, "-m", "looptrace", "run", "--quiet",
                             "--threshold-ms", "30", "--json", str(report), "--otlp", endpoint,
                             str(script)], capture_output=True, text=True, timeout=120,
                            check=False)
    dropped: dict[str, int] = json.loads(report.read_text())["dropped"]
    return result, dropped


def test_a_traces_url_sends_metrics_to_the_metrics_path(tmp_path: Path) -> None:
    """`--otlp http://host:P/v1/traces`: spans to /v1/traces, metrics to /v1/metrics."""
    with _collector(200) as (url, paths):
        result, dropped = _run(tmp_path, url + "/v1/traces")
    assert result.returncode == 0, result.stderr
    assert "/v1/traces" in paths and "/v1/metrics" in paths, paths
    assert set(paths) == {"/v1/traces", "/v1/metrics"}
    assert not dropped


def test_a_collector_answering_500_is_named_as_such(tmp_path: Path) -> None:
    """A collector that answers 500: the line says what it answered, not "unreachable";
    the spans are counted as dropped."""
    with _collector(500) as (url, paths):
        result, dropped = _run(tmp_path, url)
    assert paths
    lines = [line for line in result.stderr.splitlines() if "not sent to" in line]
    assert len(lines) == 1, result.stderr
    assert "unreachable" not in lines[0]
    assert "answered" in lines[0] and "Internal Server Error" in lines[0], lines[0]
    assert dropped.get("spans", 0) >= 1


def test_metrics_lost_to_a_hanging_collector_are_counted(tmp_path: Path) -> None:
    """A collector that accepts the connection and never answers: the last metrics
    cannot be delivered before looptrace must go; `dropped.metrics` says how many."""
    with dead_endpoint("black-holed") as url:
        result, dropped = _run(tmp_path, url)
    assert result.returncode == 0, result.stderr
    assert dropped.get("metrics", 0) >= 1, dropped
    assert dropped.get("spans", 0) >= 1, dropped
