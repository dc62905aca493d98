"""Stopping `looptrace run`: SIGTERM at any moment, Ctrl-C while the report is written.

Never a hang, always a report, and the process ends the way it ends without looptrace.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

LOOPTRACE = [sys.executable, "-m", "looptrace"]

LOOPS_FOREVER = """
    import asyncio, time

    async def tick():
        await asyncio.sleep(0)
        time.sleep(0)  # a probed call, so the probes are live

    print("ready", flush=True)
    while True:  # a loop starts, runs a step and closes, over and over
        asyncio.run(tick())
"""

RUNS = int(os.environ.get("SIGTERM_RUNS", "200"))
PARALLEL = 4
HANG_S = 60.0


def _one_sigterm(script: Path, report: Path, delay_s: float, *,
                 under_looptrace: bool = True) -> tuple[int | None, float]:
    command = ([*LOOPTRACE, "run", "--quiet", "--json", str(report), str(script)]
               if under_looptrace else [sys.executable, str(script)])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(delay_s)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            status: int | None = process.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            status = None  # a hang: the assertion below names it
        return status, time.monotonic() - sent
    finally:
        process.kill()
        process.wait()


def test_sigterm_at_random_moments_never_hangs_and_always_reports(tmp_path: Path) -> None:
    """Item 7: SIGTERM sent at a random moment to a program that starts loops continually
    (so the signal often lands inside looptrace's loop-start hooks, which hold locks),
    200 times: every run ends within the bound, by SIGTERM as without looptrace, with a
    complete report."""
    script = tmp_path / "loops.py"
    script.write_text(textwrap.dedent(LOOPS_FOREVER))
    plain_status, _ = _one_sigterm(script, tmp_path / "unused.json", 0.01,
                                   under_looptrace=False)
    assert plain_status == -signal.SIGTERM
    rng = random.Random(11)
    delays = [rng.uniform(0.0, 0.05) for _ in range(RUNS)]
    started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = list(pool.map(
            lambda item: _one_sigterm(script, tmp_path / f"r{item[0]}.json", item[1]),
            enumerate(delays)))
    elapsed = time.monotonic() - started
    hangs = [i for i, (status, _) in enumerate(outcomes) if status is None]
    assert not hangs, f"{len(hangs)} of {RUNS} runs hung after SIGTERM"
    statuses = {status for status, _ in outcomes}
    assert statuses == {plain_status}
    for index in range(RUNS):
        data = json.loads((tmp_path / f"r{index}.json").read_text())
        assert data["schema"] == "looptrace.report/1"
    slowest = max(seconds for _, seconds in outcomes)
    print(f"\n{RUNS} SIGTERMs, {PARALLEL} at a time: {elapsed:.1f} s in all, slowest "
          f"exit {slowest:.2f} s after the signal")


SIGNAL_WHILE_WRITING = """
    import asyncio, os, signal, threading, time
    import looptrace

    def send_when_writing():
        while looptrace.is_installed():  # uninstalled: the report is being written now
            pass
        os.kill(os.getpid(), signal.{name})

    async def main():
        await asyncio.sleep(0)
        time.sleep(0.06)
        for _ in range(3000):
            await asyncio.sleep(0)

    threading.Thread(target=send_when_writing, daemon=True).start()
    asyncio.run(main())
    print("program done", flush=True)
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_report_is_written_still_ends_with_the_report(
        tmp_path: Path, name: str) -> None:
    """Item 8: Ctrl-C or SIGTERM while the reports are written (full mode, four outputs):
    no traceback, every report complete, and the process ends killed by that signal."""
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(SIGNAL_WHILE_WRITING).replace("{name}", name))
    outputs = {"--json": "r.json", "--html": "r.html", "--chrome-trace": "c.json",
               "--jaeger-json": "j.json"}
    options = [part for option, file in outputs.items()
               for part in (option, str(tmp_path / file))]
    result = subprocess.run([*LOOPTRACE, "run", "--mode", "full", "--threshold-ms", "30",
                             *options, str(script)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert "program done" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == -getattr(signal, name), result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["hotspots"]
    assert (tmp_path / "r.html").read_text().rstrip().endswith("</html>")
    json.loads((tmp_path / "c.json").read_text())
    json.loads((tmp_path / "j.json").read_text())
    assert not list(tmp_path.glob("*.tmp*"))


def test_install_with_otlp_and_no_uninstall_flushes_before_thread_shutdown() -> None:
    """Item 9: ``install(otlp=...)`` and no ``uninstall()``: the spans are flushed before
    Python's thread shutdown (after it, Python 3.12+ cannot start the thread the bounded
    flush needs), so they reach the collector and nothing fails at exit. The program's
    own atexit callbacks already see looptrace uninstalled."""
    from helpers.collectors import otlp_collector

    program = textwrap.dedent("""
        import asyncio, atexit, sys, time
        import looptrace
        looptrace.install(threshold_ms=20, otlp=sys.argv[1])
        atexit.register(lambda: print("installed at atexit:", looptrace.is_installed()))
        async def main():
            await asyncio.sleep(0)
            time.sleep(0.05)
        asyncio.run(main())
    """)
    with otlp_collector() as collector:
        result = subprocess.run([sys.executable, "-c", program, collector.url],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "installed at atexit: False" in result.stdout
        assert "failed" not in result.stderr, result.stderr
        assert any(b"looptrace.block" in body for body in collector.bodies)
