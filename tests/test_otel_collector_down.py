"""A collector that is down or never answers costs bounded memory and under 2 s at exit;
every span that could not be sent is counted in the report's ``dropped``.

The collectors here are real loopback ports: one that refuses connections (nothing
listens) and one that black-holes them (it listens, never accepts, never answers).
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from looptrace._clock import epoch_offset_ns
from looptrace._config import resolve
from looptrace._recorder import Recorder
from looptrace.events import Block, CodeLocation
from looptrace.exporters import otel

BLOCKS_IN_PROGRAM = 30

PROGRAM = f"""
import asyncio, time

async def handler(i):
    await asyncio.sleep(0)
    time.sleep(0.012)

async def main():
    for i in range({BLOCKS_IN_PROGRAM}):
        await asyncio.create_task(handler(i))

asyncio.run(main())
"""


@pytest.fixture(params=["refused", "black-holed"])
def dead_collector(request: pytest.FixtureRequest) -> Iterator[str]:
    """The base URL of a loopback OTLP endpoint that is down (refuses) or hangs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if request.param == "refused":
        sock.close()  # nothing listens there now: connections are refused
        yield f"http://127.0.0.1:{port}"
        return
    sock.listen(1)  # the kernel completes handshakes; nobody ever reads or answers
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        sock.close()


def _run(tmp_path: Path, name: str, *options: str) -> tuple[float, dict[str, object]]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    report = tmp_path / f"{name}.json"
    env = {**os.environ, "OTEL_SERVICE_NAME": "collector-down-test"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "looptrace", "run", "--quiet", "--threshold-ms", "8",
         "--json", str(report), *options, str(script)],
        capture_output=True, text=True, timeout=120, env=env)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(report.read_text())
    return wall, data


def test_program_exit_is_bounded_and_drops_are_reported(tmp_path: Path,
                                                        dead_collector: str) -> None:
    """``looptrace run --otlp`` against a dead collector: the run takes less than 2 s more
    than without export, and each of the program's blocks is a dropped span."""
    baseline, _ = _run(tmp_path, "baseline")
    wall, report = _run(tmp_path, "exported", "--otlp", dead_collector)
    assert len(report["blocks"]) == BLOCKS_IN_PROGRAM  # type: ignore[arg-type]
    assert report["dropped"] == {"spans": BLOCKS_IN_PROGRAM}
    assert wall - baseline < 2.0, f"{wall:.2f} s with a dead collector, {baseline:.2f} s without"


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_100k_blocks_in_flat_memory_and_a_bounded_close(dead_collector: str) -> None:
    """100,000 blocks' spans into a dead collector: memory stays flat after the bounded
    queue fills, close() returns within its deadline, and all 100,000 are counted dropped."""
    options = resolve({"otlp": dead_collector})
    recorder = Recorder(options, epoch_offset_ns())
    sink = otel.live_sink(options, recorder)
    assert sink is not None
    _, listener, close = sink
    stack = tuple(CodeLocation(f"/srv/app/module{i}.py", 10 + i, f"function_{i}")
                  for i in range(12))

    def block(i: int) -> Block:
        return Block(loop_id=1, thread_id=1, thread_name="MainThread",
                     start_ns=time.perf_counter_ns(), duration_ns=150_000_000,
                     duration_source="step-timer", kind="blocking-call", call="time.sleep",
                     site=stack[-1], site_source="probe", stack=stack, task=f"Task-{i}",
                     coroutine="handler", callback=None, samples=30,
                     trace_id=(i + 1) * 7919, span_id=(i + 1) * 104729)

    for i in range(10_000):  # fills the queue (2,048 spans) and every cache
        listener(block(i))
    gc.collect()
    warm = _rss_mb()
    for i in range(10_000, 100_000):
        listener(block(i))
    gc.collect()
    grown = _rss_mb() - warm
    started = time.perf_counter()
    close(1.0)
    closing = time.perf_counter() - started
    dropped = dict(recorder.recording(accelerated=False, probes=0).dropped)
    assert grown < 5.0, f"memory grew by {grown:.1f} MB over 90,000 spans"
    assert closing < 1.5, f"close took {closing:.2f} s"
    assert dropped == {"spans": 100_000}
