"""A collector that is down or never answers costs bounded memory and under 2 s at exit;
every span that could not be sent is counted in the report's ``dropped``.

The collectors here are real loopback ports: one that refuses connections (nothing
listens) and one that black-holes them (it listens, never accepts, never answers).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import looptrace
from helpers.collectors import dead_endpoint, otlp_collector
from looptrace._clock import epoch_offset_ns
from looptrace._config import resolve
from looptrace._recorder import Recorder
from looptrace.analysis import block_event
from looptrace.events import Block, CodeLocation
from looptrace.sinks import SinkInputs, otel

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
print(time.time())  # the program's end: what follows is looptrace's exit
"""


@pytest.fixture(params=["refused", "black-holed"])
def dead_collector(request: pytest.FixtureRequest) -> Iterator[str]:
    """The base URL of a loopback OTLP endpoint that is down (refuses) or hangs."""
    with dead_endpoint(request.param) as url:
        yield url


@pytest.fixture(scope="module")
def live_collector() -> Iterator[str]:
    """A loopback OTLP/HTTP endpoint that accepts everything: the baseline."""
    with otlp_collector() as collector:
        yield collector.url


def _run(tmp_path: Path, name: str, *options: str) -> tuple[float, dict[str, object]]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    report = tmp_path / f"{name}.json"
    env = {**os.environ, "OTEL_SERVICE_NAME": "collector-down-test"}
    done = subprocess.run(
        [sys.executable, "-m", "looptrace", "run", "--quiet", "--threshold-ms", "8",
         "--json", str(report), *options, str(script)],
        capture_output=True, text=True, timeout=120, env=env, check=False)
    exited = time.time()
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(report.read_text())
    # From the program's end to the process's: the exit, without the start-up (imports
    # on a busy machine vary by seconds).
    return exited - float(done.stdout.split()[-1]), data


def test_program_exit_is_bounded_and_drops_are_reported(
        tmp_path: Path, live_collector: str, dead_collector: str) -> None:
    """``looptrace run --otlp`` against a dead collector takes less than 2 s more to exit
    than against one that works, and each of the program's blocks is a dropped span."""
    baseline, delivered = _run(tmp_path, "baseline", "--otlp", live_collector)
    assert delivered["dropped"] == {}
    wall, report = _run(tmp_path, "exported", "--otlp", dead_collector)
    blocks = len(report["blocks"])  # type: ignore[arg-type]
    assert blocks >= BLOCKS_IN_PROGRAM  # a busy machine may add a few
    # The last metrics could not be delivered either: counted too (issue 11).
    assert {k: v for k, v in report["dropped"].items() if k != "metrics"} == {"spans": blocks}
    assert wall - baseline < 2.0, \
        f"exit took {wall:.2f} s with a dead collector, {baseline:.2f} s without"


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_100k_blocks_in_flat_memory_and_a_bounded_close(dead_collector: str) -> None:
    """100,000 blocks' spans into a dead collector: memory stays flat after the bounded
    queue fills, close() returns within its deadline, and all 100,000 are counted dropped."""
    options = resolve({"otlp": dead_collector})
    recorder = Recorder(options, epoch_offset_ns())
    sink = otel.live_sink(options, SinkInputs(loops=recorder, count_dropped=recorder.drop))
    assert sink is not None
    _, on_block, close = sink

    def listener(block: Block) -> None:
        on_block(block_event(block, recorder.started_ns, recorder.epoch_offset_ns))
    stack = tuple(CodeLocation(f"/srv/app/module{i}.py", 10 + i, f"function_{i}")
                  for i in range(12))

    def block(i: int) -> Block:
        return Block(loop_id=1, thread_id=1, thread_name="MainThread",
                     start_ns=time.perf_counter_ns(), duration_ns=150_000_000,
                     duration_source="step-timer", kind="blocking-call", call="time.sleep",
                     site=stack[-1], site_source="probe", stack=stack, task=f"Task-{i}",
                     coroutine="handler", callback=None, samples=30,
                     trace_id=(i + 1) * 7919, span_id=(i + 1) * 104729)

    gc.collect()
    start = _rss_mb()
    samples = []
    for i in range(100_000):
        listener(block(i))
        if i % 25_000 == 24_999:
            gc.collect()
            samples.append(_rss_mb())
    started = time.perf_counter()
    close(1.0)
    closing = time.perf_counter() - started
    dropped = dict(recorder.recording(accelerated=False, probes=0).dropped)
    # The queue (2,048 spans) and a batch on the wire are the whole cost; once they are
    # full, memory no longer follows the number of spans.
    assert samples[-1] - start < 40.0, f"{samples[-1] - start:.1f} MB for the bounded queue"
    assert samples[-1] - samples[1] < 5.0, f"memory grew from 50k to 100k spans: {samples}"
    assert closing < 1.5, f"close took {closing:.2f} s"
    assert dropped.pop("spans") == 100_000
    assert set(dropped) <= {"metrics"}  # the last metrics, lost as well (issue 11)


def test_spans_still_unsent_at_the_deadline_are_counted_before_close_returns(
        dead_collector: str) -> None:
    """close() with a deadline too short to finish (a starved machine is the same): every
    span not sent is in ``dropped`` when close() returns, so the report written next has
    them (the closing thread would count them only after)."""
    options = resolve({"otlp": dead_collector})
    recorder = Recorder(options, epoch_offset_ns())
    sink = otel.live_sink(options, SinkInputs(loops=recorder, count_dropped=recorder.drop))
    assert sink is not None
    _, on_block, close = sink
    for i in range(100):
        on_block(block_event(
            Block(loop_id=1, thread_id=1, thread_name="MainThread",
                  start_ns=time.perf_counter_ns(), duration_ns=150_000_000,
                  duration_source="step-timer", kind="blocking-call", call="time.sleep",
                  site=CodeLocation("/srv/app.py", 3, "handler"), site_source="probe",
                  stack=(), task=f"Task-{i}", coroutine="handler", callback=None,
                  samples=3, trace_id=i + 1, span_id=i + 1),
            recorder.started_ns, recorder.epoch_offset_ns))
    close(0.01)
    dropped = dict(recorder.recording(accelerated=False, probes=0).dropped)
    assert dropped.get("spans") == 100, dropped
    time.sleep(0.5)  # the closing thread ends its work later: it must not count them again
    again = dict(recorder.recording(accelerated=False, probes=0).dropped)
    assert again.get("spans") == 100, again


def test_uninstall_on_a_loop_thread_does_not_wait_for_the_collector(
        dead_collector: str) -> None:
    """uninstall() called from a coroutine (on the loop thread) hands the flush to a thread
    of its own and returns at once: the loop never waits for a dead collector."""
    async def main(otlp: str | bool) -> float:
        looptrace.install(threshold_ms=20, otlp=otlp)
        await asyncio.sleep(0)
        time.sleep(0.03)
        await asyncio.sleep(0)
        started = time.perf_counter()
        session = looptrace.uninstall()
        assert session is not None and len(session.blocks) == 1
        return time.perf_counter() - started

    # Against uninstall() with no export at all, on this machine as busy as it is now (its
    # own work, stopping the watchdog and building the session, is not the collector's).
    with_collector = asyncio.run(main(dead_collector))
    without = asyncio.run(main(False))
    assert with_collector < without + 0.25, (with_collector, without)


def test_install_on_a_loop_thread_sets_up_off_the_loop(dead_collector: str) -> None:
    """install(otlp=...) called from a coroutine in a fresh process returns quickly:
    importing OpenTelemetry and building the pipeline happen on a thread of their own, and
    the block that follows still becomes a span (here: counted as dropped)."""
    code = (
        "import asyncio, json, time\n"
        "import looptrace\n"
        "async def main():\n"
        "    started = time.perf_counter()\n"
        f"    looptrace.install(threshold_ms=20, otlp={dead_collector!r})\n"
        "    took = time.perf_counter() - started\n"
        "    await asyncio.sleep(0)\n"
        "    time.sleep(0.03)\n"
        "    await asyncio.sleep(0)\n"
        "    return took\n"
        "took = asyncio.run(main())\n"
        "session = looptrace.uninstall()\n"
        "print(json.dumps({'took': took, 'dropped': session.dropped}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # What install() would hold the loop for if it set the export up on it: importing the
    # SDK and the exporter, timed now, on this machine as busy as it is.
    importing = subprocess.run(
        [sys.executable, "-c", "import time; t = time.perf_counter(); "
         "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter; "
         "print(time.perf_counter() - t)"],
        capture_output=True, text=True, timeout=60, check=True)
    import_s = float(importing.stdout)
    assert result["took"] < import_s / 2, (
        f"install() held the loop for {result['took']:.3f} s; importing OpenTelemetry "
        f"takes {import_s:.3f} s")
    assert result["dropped"].get("spans", 0) >= 1
