"""The OpenTelemetry collector is down, black-holed, or answers every export after 5 s:
the traced program prints and returns exactly what it does alone, its wall time stays
within 2 s of a run against a working collector, it exits less than 2 s after its last
line, and every span that could not be delivered is counted in the report's ``dropped``.
Memory stays flat while a slow collector holds the exporter.

(``tests/test_otel_collector_down.py`` tests the exporter itself against refused and
black-holed collectors; these tests take the traced program's side, and add the slow one.)
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import run_python

from helpers.collectors import dead_endpoint, otlp_collector
from looptrace._clock import epoch_offset_ns
from looptrace._config import resolve
from looptrace._recorder import Recorder
from looptrace.analysis import block_event
from looptrace.events import Block, CodeLocation
from looptrace.sinks import SinkInputs, otel

SLOW_ANSWER_S = 5.0
BLOCKS = 25

PROGRAM = f"""
import asyncio, sys, time

async def handler(i):
    await asyncio.sleep(0)
    time.sleep(0.012)
    return i

async def main():
    started = time.perf_counter()
    results = [await asyncio.create_task(handler(i)) for i in range({BLOCKS})]
    print("sum", sum(results), flush=True)
    print("program seconds", round(time.perf_counter() - started, 3), file=sys.stderr)

asyncio.run(main())
print("END", time.time(), flush=True)
sys.exit(4)
"""


@pytest.fixture
def collector(request: pytest.FixtureRequest) -> Iterator[str]:
    """An OTLP/HTTP endpoint on loopback: refused, black-holed, or slow."""
    mode = request.param
    assert mode in ("refused", "black-holed", "slow"), mode
    if mode in ("refused", "black-holed"):
        with dead_endpoint(mode) as url:
            yield url
        return
    with otlp_collector(delay_s=SLOW_ANSWER_S) as live:
        yield live.url


def _traced(script: Path, report: Path, endpoint: str | None
            ) -> tuple[float, float, str, str, int]:
    """(wall s, s from the program's last line to exit, stdout, stderr, status)."""
    otlp = ["--otlp", endpoint] if endpoint else []
    started = time.perf_counter()
    result = run_python(["-m", "looptrace", "run", "--quiet", "--threshold-ms", "8",
                         "--json", str(report), *otlp, str(script)],
                        env={"OTEL_SERVICE_NAME": "reliability", "OTEL_BSP_SCHEDULE_DELAY":
                             "200"}, timeout=120)
    ended = time.time()
    wall = time.perf_counter() - started
    last = float(result.stdout.split("END ")[-1]) if "END " in result.stdout else ended
    return wall, ended - last, result.stdout, result.stderr, result.returncode


@pytest.fixture(scope="module")
def working_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, str, int]:
    """(script, wall s, stdout without the END line, status) against a collector that
    takes everything at once."""
    directory = tmp_path_factory.mktemp("exporter")
    script = directory / "program.py"
    script.write_text(PROGRAM)
    with otlp_collector() as live:
        wall, _, stdout, stderr, status = _traced(script, directory / "working.json", live.url)
    report = json.loads((directory / "working.json").read_text())
    assert "spans" not in report["dropped"], report["dropped"]
    assert status == 4, stderr
    return script, wall, stdout.split("END ")[0], status


@pytest.mark.parametrize("collector", ["refused", "black-holed", "slow"], indirect=True)
def test_the_program_does_not_notice_a_collector_that_is_down_or_slow(
        working_run: tuple[Path, float, str, int], collector: str, tmp_path: Path) -> None:
    """Same output and status as with a working collector; wall time within 2 s of it;
    exit within 2 s of the program's last line; each block's span counted as dropped."""
    script, working_wall, working_stdout, working_status = working_run
    report_path = tmp_path / "report.json"
    wall, exit_s, stdout, stderr, status = _traced(script, report_path, collector)
    print(f"wall {wall:.2f} s (working collector: {working_wall:.2f} s), exit {exit_s:.2f} s")
    assert status == working_status, stderr
    assert stdout.split("END ")[0] == working_stdout
    assert "Traceback" not in stderr
    assert wall - working_wall < 2.0, f"{wall:.2f} s, {working_wall:.2f} s when it works"
    assert exit_s < 2.0, f"the exit took {exit_s:.2f} s"
    report = json.loads(report_path.read_text())
    blocks = sum(h["count"] for h in report["hotspots"])
    assert blocks >= BLOCKS
    assert report["dropped"].get("spans") == blocks, report["dropped"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("collector", ["slow"], indirect=True)
def test_a_slow_collector_holds_no_memory_and_no_exit(collector: str) -> None:
    """100,000 blocks' spans while the collector takes 5 s per export: memory flat once the
    bounded queue is full, close() within its deadline, every span accounted for (the
    ones a slow answer could still deliver are not counted as dropped)."""
    options = resolve({"otlp": collector})
    recorder = Recorder(options, epoch_offset_ns())
    sink = otel.live_sink(options, SinkInputs(loops=recorder, count_dropped=recorder.drop))
    assert sink is not None
    _, on_block, close = sink

    def listener(block: Block) -> None:
        on_block(block_event(block, recorder.started_ns, recorder.epoch_offset_ns))
    site = CodeLocation("/srv/app/handlers.py", 42, "handle")
    samples = []
    gc.collect()
    start = _rss_mb()
    began = time.perf_counter()
    for i in range(100_000):
        listener(Block(loop_id=1, thread_id=1, thread_name="MainThread",
                       start_ns=time.perf_counter_ns(), duration_ns=20_000_000,
                       duration_source="step-timer", kind="blocking-call", call="time.sleep",
                       site=site, site_source="probe", stack=(site,), task=f"Task-{i}",
                       coroutine="handle", callback=None, samples=3, trace_id=None,
                       span_id=None))
        if i % 25_000 == 24_999:
            gc.collect()
            samples.append(_rss_mb())
    started = time.perf_counter()
    close(1.0)
    closing = time.perf_counter() - started
    dropped = dict(recorder.recording(accelerated=False, probes=0).dropped).get("spans", 0)
    print(f"RSS {start:.1f} MB, then {samples} MB; close {closing:.2f} s; dropped {dropped}")
    assert samples[-1] - start < 40, f"{samples[-1] - start:.1f} MB for a bounded queue"
    assert samples[-1] - samples[1] < 5, f"memory grew from 50k to 100k spans: {samples}"
    assert closing < 1.5, f"close() took {closing:.2f} s"
    # Each answer takes 5 s: one batch per 5 s may have been delivered (a slow machine
    # takes that long to end 100,000 spans), and at most one batch was on the wire.
    answered = int((time.perf_counter() - began) // 5)
    assert 100_000 - 512 * (answered + 1) <= dropped <= 100_000, (dropped, answered)
