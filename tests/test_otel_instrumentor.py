"""``LooptraceInstrumentor``: the ``opentelemetry_instrumentor`` entry point, by hand and
under ``opentelemetry-instrument``; and OTLP export asked without OpenTelemetry installed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import looptrace
from helpers.lines import line_of
from looptrace.instrumentor import LooptraceInstrumentor
from otel_helpers import memory_otel

APP = str(Path(__file__).parent / "otel_apps" / "blocking_service.py")


async def _block() -> None:
    await asyncio.sleep(0)
    time.sleep(0.04)


def test_entry_point_names_the_instrumentor() -> None:
    """opentelemetry-instrument finds looptrace through the opentelemetry_instrumentor group."""
    (found,) = [ep for ep in entry_points(group="opentelemetry_instrumentor")
                if ep.name == "looptrace"]
    assert found.load() is LooptraceInstrumentor
    assert LooptraceInstrumentor().instrumentation_dependencies() == ()


def test_instrument_installs_and_uninstrument_uninstalls() -> None:
    """instrument(tracer_provider=..., **options) installs looptrace with those options and
    exports through that provider; uninstrument() uninstalls it."""
    instrumentor = LooptraceInstrumentor()
    with memory_otel() as otel:
        instrumentor.instrument(tracer_provider=otel.tracer_provider,
                                meter_provider=otel.meter_provider, threshold_ms=20)
        try:
            assert looptrace.is_installed()
            assert looptrace.snapshot().threshold_ms == 20
            asyncio.run(_block())
        finally:
            instrumentor.uninstrument()
        assert not looptrace.is_installed()
        sleeps = [s for s in otel.finished("looptrace.block")
                  if dict(s.attributes or {}).get("looptrace.call") == "time.sleep"]
        assert len(sleeps) == 1


def test_uninstrument_leaves_an_installation_it_did_not_make() -> None:
    """If the program installed looptrace itself, uninstrument() does not take it away."""
    instrumentor = LooptraceInstrumentor()
    looptrace.install(threshold_ms=20)
    try:
        instrumentor.instrument()
        instrumentor.uninstrument()
        assert looptrace.is_installed()
    finally:
        looptrace.uninstall()


def _json_objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    found, index = [], 0
    while True:
        start = text.find("{", index)
        if start < 0:
            return found
        value, index = decoder.raw_decode(text, start)
        found.append(value)


def test_opentelemetry_instrument_turns_looptrace_on(slow_http_server: str) -> None:
    """``opentelemetry-instrument python app.py`` (console exporter): the blocking handlers'
    looptrace.block spans come out as children of the aiohttp request spans."""
    command = Path(sys.executable).parent / "opentelemetry-instrument"
    env = {**os.environ, "OTEL_SERVICE_NAME": "looptrace-instrument-test",
           "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", "LOOPTRACE_THRESHOLD_MS": "30"}
    done = subprocess.run([str(command), sys.executable, APP, slow_http_server],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    spans = _json_objects(done.stdout)
    servers = {s["context"]["span_id"]: s for s in spans if s["kind"] == "SpanKind.SERVER"}
    lines = {"time.sleep": line_of(APP, "# BLOCK: sleep"),
             "http.client.HTTPResponse.read": line_of(APP, "# BLOCK: read")}
    blocks = [s for s in spans if s["name"] == "looptrace.block"
              and s["attributes"].get("looptrace.call") in lines]
    assert sorted(b["attributes"]["looptrace.call"] for b in blocks) == sorted(lines), (
        done.stdout)
    for block in blocks:
        parent = servers[block["parent_id"]]
        assert parent["context"]["trace_id"] == block["context"]["trace_id"]
        attributes = block["attributes"]
        assert attributes["code.line.number"] == lines[attributes["looptrace.call"]]
        assert block["resource"]["attributes"]["service.name"] == "looptrace-instrument-test"


def test_otlp_without_opentelemetry_installed_warns_and_runs() -> None:
    """install(otlp=True) where OpenTelemetry cannot be imported: one warning naming the
    extra, and the program runs and is recorded as usual."""
    code = (
        "import sys, asyncio, time\n"
        "sys.modules['opentelemetry'] = None  # as if the otel extra were not installed\n"
        "import looptrace\n"
        "looptrace.install(otlp=True, threshold_ms=20)\n"
        "async def main():\n"
        "    time.sleep(0.03)\n"
        "asyncio.run(main())\n"
        "print(len(looptrace.uninstall().blocks))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert "pip install 'looptrace[otel]'" in done.stderr
    assert done.stderr.count("looptrace:") == 1
