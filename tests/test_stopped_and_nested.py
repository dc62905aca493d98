"""Programs stopped inside a block, and nested loop runs (issue 10, items 5 and 6).

A block in progress when the program is stopped (SIGTERM, Ctrl-C, ``uninstall()``, an
exception out of the loop) is reported with its duration so far, and the loop's busy time
agrees with it. A nested ``run_until_complete`` inside a step (nest_asyncio) charges each
call only its own time: blocks never add up to more than the recording."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.lines import line_of

PROGRAM = str(Path(__file__).resolve().parent / "helpers" / "stopped_programs.py")
STUCK = line_of(PROGRAM, "# STUCK")


def start(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def only_block(report: dict) -> dict:  # type: ignore[type-arg]
    (block,) = report["blocks"]
    (loop,) = report["loops"]
    assert loop["blocks"] == 1 and loop["block_ms"] == pytest.approx(block["duration_ms"])
    if loop["busy_ms"] is not None:  # the loop's figures agree with the block
        assert loop["busy_ms"] >= block["duration_ms"] * 0.95, (loop, block)
        assert loop["utilization"] is not None and loop["utilization"] > 0.5, loop
    return block  # type: ignore[no-any-return]


def test_sigterm_reports_the_block_in_progress(tmp_path: Path) -> None:
    """A service stuck in time.sleep, stopped by SIGTERM as a process manager does: the
    report has the block, with its duration so far, marked in progress."""
    report = tmp_path / "report.json"
    proc = start([sys.executable, "-m", "looptrace", "run", "--quiet", "--threshold-ms", "50",
                  "--json", str(report), PROGRAM, "sigterm"])
    time.sleep(0.7)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    block = only_block(json.loads(report.read_text()))
    assert block["in_progress"] is True and block["site"]["line"] == STUCK
    # A probe reports a call when it returns: a call still in progress is known from the
    # stack samples only (a slow-step at its line).
    assert 600 <= block["duration_ms"] <= 600 + (time.monotonic() - sent) * 1000 + 2000


def test_ctrl_c_in_run_until_complete_keeps_the_block_and_the_busy_time(
        tmp_path: Path) -> None:
    """SIGINT inside a step of a manual run_until_complete: the step ends with
    KeyboardInterrupt; its block is reported and the loop's busy time includes it (it was
    0.10 ms: the cut-short iteration was never counted)."""
    report = tmp_path / "report.json"
    proc = start([sys.executable, PROGRAM, "sigint", str(report)])
    time.sleep(0.7)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    block = only_block(json.loads(report.read_text()))
    assert block["in_progress"] is False and block["site"]["line"] == STUCK
    assert block["duration_ms"] >= 600


def test_uninstall_from_another_thread_reports_the_block_so_far(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = start([sys.executable, PROGRAM, "uninstall", str(report)])
    proc.communicate(timeout=60)
    block = only_block(json.loads(report.read_text()))
    assert block["in_progress"] is True and block["site"]["line"] == STUCK
    assert 400 <= block["duration_ms"] <= 1000


def test_an_exception_out_of_the_loop_keeps_the_block_and_the_busy_time(
        tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, PROGRAM, "raise", str(report)], check=False,
                          timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    block = only_block(json.loads(report.read_text()))
    assert block["site"]["line"] == line_of(PROGRAM, "# RAISE")
    assert block["duration_ms"] >= 350


def test_a_nested_run_charges_each_call_only_its_own_time(tmp_path: Path) -> None:
    """With nest_asyncio, a step sleeps 130 ms, then runs the loop again for a task that
    sleeps 130 ms in its own step: two blocks of about 130 ms each (not one of 260+ for
    the outer step), and they add up to less than the recording."""
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, PROGRAM, "nested", str(report)], check=True,
                          timeout=60, capture_output=True, text=True)
    recording_ms = json.loads(proc.stdout.splitlines()[-1])["recording_ms"]
    blocks = json.loads(report.read_text())["blocks"]
    lines = sorted(b["site"]["line"] for b in blocks)
    assert lines == sorted([line_of(PROGRAM, "# OUTER"), line_of(PROGRAM, "# INNER")]), blocks
    for block in blocks:
        assert block["call"] == "time.sleep"
        assert 120 <= block["duration_ms"] <= 200 + (block["cpu_wait_ms"] or 0), block
    assert sum(b["duration_ms"] for b in blocks) <= recording_ms
