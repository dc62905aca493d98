"""Faults inside looptrace never reach the traced program.

An exception is planted in each hook (select timer, step hook, watchdog, probes, the
exporters' dispatcher, the loop doors), with the C accelerator and without. The program's
output and exit status are exactly those it has on its own; the fault is counted in the
report's ``faults`` and logged once to the ``looptrace`` logger; the rest of looptrace keeps
recording.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import HERE, PROGRAMS, run_python

PROGRAM = PROGRAMS / "blocking_app.py"
BLOCKS = 8  # two loops, four tasks each, one time.sleep block per task


@pytest.fixture(scope="module")
def untraced() -> subprocess.CompletedProcess[str]:
    """The program on its own: what every traced run must print and return."""
    result = run_python([str(PROGRAM)])
    assert result.returncode == 3, result.stderr
    return result


def _blocks_found(report: dict[str, Any]) -> None:
    assert sum(h["count"] for h in report["hotspots"]) >= BLOCKS - 1
    for hotspot in report["hotspots"]:
        # A busy machine may add a step that waited for a CPU, with no site.
        assert hotspot["site"] is None or hotspot["site"]["file"] == str(PROGRAM)


def _sleep_named(report: dict[str, Any]) -> None:
    _blocks_found(report)
    assert any(h["call"] == "time.sleep" for h in report["hotspots"])


def _selects_counted(report: dict[str, Any]) -> None:
    assert report["loops"] and all(loop["select_calls"] for loop in report["loops"])


def _no_samples_after(report: dict[str, Any]) -> None:
    _sleep_named(report)  # probes and the step timer still find and name every block
    assert report["blocks"][-1]["samples"] == 0


def _nothing(report: dict[str, Any]) -> None:
    pass


# fault -> (hooks expected in `faults`, what must still work, accelerators it applies to)
FAULTS: dict[str, tuple[set[str], Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "selector-callback": ({"selector"}, _sleep_named, ("1", "0")),
    "selector-internal": ({"selector"}, _sleep_named, ("0",)),  # Python timer's own code
    "steps-callback": ({"steps"}, _selects_counted, ("1", "0")),
    "steps-internal": ({"steps"}, _selects_counted, ("1", "0")),
    "watchdog-sampling": ({"watchdog"}, _no_samples_after, ("1", "0")),
    "watchdog-blocks": ({"watchdog"}, _selects_counted, ("1", "0")),
    "probes": ({"probes"}, _blocks_found, ("1", "0")),
    "exporter": ({"failing-exporter"}, _sleep_named, ("1", "0")),
    # attach() fails: loops go unrecorded, and the step hook that meets an unknown loop
    # fails the same way.
    "doors": ({"doors", "steps"}, _nothing, ("1", "0")),
}
CASES = [(fault, accelerator) for fault, (_, _, accelerators) in FAULTS.items()
         for accelerator in accelerators]


@pytest.mark.parametrize(("fault", "accelerator"), CASES,
                         ids=[f"{f}-{'C' if a == '1' else 'python'}" for f, a in CASES])
def test_a_fault_inside_looptrace_leaves_the_program_untouched(
        untraced: subprocess.CompletedProcess[str], tmp_path: Path, fault: str,
        accelerator: str) -> None:
    """Same stdout, stderr and exit status as the program alone; the fault counted in the
    report and logged once per hook to the `looptrace` logger; the rest keeps working."""
    hooks, still_works, _ = FAULTS[fault]
    report_path = tmp_path / "report.json"
    log_path = tmp_path / "looptrace.log"
    result = run_python(
        [str(HERE / "fault_runner.py"), fault, "--quiet", "--threshold-ms", "20", "--json",
         str(report_path), str(PROGRAM)],
        env={"LOOPTRACE_ACCELERATOR": accelerator, "LOOPTRACE_LOG": "stdlib",
             "FAULT_RUNNER_LOG": str(log_path)})

    assert result.returncode == untraced.returncode, result.stderr
    assert result.stdout == untraced.stdout
    logged = log_path.read_text().splitlines() if log_path.exists() else []
    assert result.stderr.splitlines() == untraced.stderr.splitlines(), result.stderr
    assert "Traceback" not in result.stderr

    report = json.loads(report_path.read_text())
    faults = {f["hook"]: f for f in report["faults"]}
    assert set(faults) == hooks, report["faults"]
    for hook in hooks:
        assert faults[hook]["count"] >= 1
        failed = [line for line in logged if f"the {hook} hook failed" in line]
        assert len(failed) == 1, logged
        assert failed[0].startswith("LOGGED looptrace WARNING ")
    if fault == "watchdog-blocks":
        assert faults["watchdog"]["count"] == BLOCKS  # every lost block is counted
    still_works(report)


def test_the_c_hooks_caught_errors_become_faults_in_the_report() -> None:
    """Regression: the C step hook and select timer swallowed an error raised by their
    callback (counted only in the hook's own `faults`, never reported). Now every error
    they count appears in the report's faults and the hook is switched off."""
    import asyncio
    import time

    import looptrace
    from looptrace import _seams

    calls = []

    def broken(self: object, *args: object) -> None:
        calls.append(args)
        raise RuntimeError("broken callback")

    restore = _seams.replace("steps-callback", broken)  # what the step hook calls
    try:
        async def main() -> None:
            for _ in range(3):
                time.sleep(0.02)
                await asyncio.sleep(0)

        with looptrace.installed(threshold_ms=10) as tracing:
            asyncio.run(main())
    finally:
        restore()
    (fault,) = tracing.snapshot().faults
    assert fault.hook == "steps"
    assert fault.count == len(calls) >= 1


@pytest.mark.parametrize("where", ["steps", "selector"])
@pytest.mark.parametrize("accelerator", [True, False], ids=["c-hooks", "python-hooks"])
def test_a_keyboard_interrupt_during_looptrace_code_reaches_the_program(
        monkeypatch: pytest.MonkeyPatch, accelerator: bool, where: str) -> None:
    """Regression: a KeyboardInterrupt raised (by the program's SIGINT handler) while the C
    hook's callback ran was swallowed and counted as a fault: Ctrl-C was lost. It belongs
    to the program: it leaves run_until_complete as it would without looptrace."""
    import asyncio
    import time

    import looptrace
    from looptrace import _recorder, _seams

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    if where == "steps":
        owner, attribute, _ = _seams.resolve("steps-internal")  # task_of, in the long steps
        monkeypatch.setattr(owner, attribute, interrupted)
    else:
        monkeypatch.setattr(_recorder.LoopRecord, "on_long_iteration", interrupted)

    async def main() -> str:
        for _ in range(3):
            time.sleep(0.012)
            await asyncio.sleep(0)
        return "finished"

    loop = asyncio.new_event_loop()
    with looptrace.installed(threshold_ms=5, accelerator=accelerator) as tracing:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(main())
        loop.close()
    assert tracing.snapshot().faults == ()
