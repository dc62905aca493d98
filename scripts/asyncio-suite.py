#!/usr/bin/env python3
"""Run CPython's own asyncio test suite with looptrace installed, and compare.

    scripts/asyncio-suite.py [--python PYTHON] [-j N] [--work DIR]
                             [--baseline FILE | --record-baseline FILE]

Two passes of ``python -m test test_asyncio``: one as Python ships (the baseline), one with
looptrace installed at start-up in every test process, by the ``sitecustomize.py`` in
``tests/reliability/sitecustomize``. Every test case must end the same way in both passes
(passed, failed, skipped). A test that ends differently is run again, alone, with looptrace
(and without, when it also differs from a recorded baseline), so a test that is merely flaky
on a busy machine is reported as such, not as a regression.

Each process of the traced pass writes its looptrace report; the run also fails if any
report shows a fault inside looptrace, or if no process recorded a loop (looptrace was not
really installed).

``--baseline FILE`` compares with a list recorded earlier by ``--record-baseline`` instead
of running the baseline pass (half the time; the lists of this project's Pythons are in
``tests/reliability/asyncio-baseline/``). Exit status: 0 same results, 1 differences.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITECUSTOMIZE = REPO / "tests" / "reliability" / "sitecustomize"

Outcome = str  # "passed" | "failed" | "error" | "skipped"


def parse_junit(path: Path) -> dict[str, Outcome]:
    """Test id -> outcome, from regrtest's JUnit XML."""
    outcomes: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '?')}.{case.get('name', '?')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                break
            if child.tag == "skipped":
                outcome = "skipped"
        outcomes[test_id] = outcome
    return outcomes


def run_suite(python: str, jobs: int, junit: Path, *, traced: bool, reports: Path | None,
              match: list[str] | None = None, timeout_s: int = 300,
              looptrace_env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run regrtest once; return (exit status, seconds, last lines of its output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPTRACE_")}
    env.pop("PYTHONPATH", None)
    if traced:
        env["PYTHONPATH"] = str(SITECUSTOMIZE)
        env.update(looptrace_env or {})
        if reports is not None:
            env["ASYNCIO_SUITE_REPORTS"] = str(reports)
    command = [python, "-m", "test", "test_asyncio", "--timeout", str(timeout_s),
               "--junit-xml", str(junit)]
    if jobs > 1:
        command += ["-j", str(jobs)]
    if match:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(match) + "\n")
        command += ["--matchfile", f.name]
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                            timeout=timeout_s * 4, preexec_fn=_limit_memory)
    output = result.stdout + result.stderr
    junit.with_suffix(".log").write_text(output)
    return result.returncode, time.monotonic() - started, "\n".join(output.splitlines()[-12:])


def env_changed(log: Path) -> set[str]:
    """Test files regrtest found altering the environment (threads, files, signals...)."""
    found = set()
    for line in log.read_text().splitlines():
        if "(env changed)" in line:
            found.update(w for w in line.split() if w.startswith("test_asyncio."))
    return found


def _limit_memory() -> None:
    """At most 4 GB of address space per test process: test_runners sometimes runs away
    allocating on a loaded machine (with or without looptrace); it then fails with a
    MemoryError instead of exhausting the machine."""
    limit = 4 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def differences(base: dict[str, Outcome], traced: dict[str, Outcome]) -> dict[str, str]:
    """Test id -> "baseline outcome -> traced outcome" for every test that differs."""
    found = {}
    for test_id in sorted(base.keys() | traced.keys()):
        before, after = base.get(test_id, "missing"), traced.get(test_id, "missing")
        if before != after:
            found[test_id] = f"{before} -> {after}"
    return found


def check_reports(reports: Path) -> tuple[list[str], dict[str, int]]:
    """Problems found in the traced processes' reports, and totals over them."""
    problems: list[str] = []
    totals = {"reports": 0, "with_loops": 0, "loops": 0, "blocks": 0}
    for path in sorted(reports.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: unreadable report ({exc})")
            continue
        totals["reports"] += 1
        loops = len(data.get("loops", []))
        totals["loops"] += loops
        totals["with_loops"] += loops > 0
        totals["blocks"] += sum(h.get("count", 0) for h in data.get("hotspots", []))
        for fault in data.get("faults", []):
            problems.append(f"{path.name} ({' '.join(data.get('argv', []))[:80]}): fault in "
                            f"looptrace's {fault['hook']} hook x{fault['count']}: "
                            f"{fault['error']}")
    if totals["with_loops"] == 0:
        problems.append("no traced process recorded a loop: was looptrace installed?")
    return problems, totals


def recheck(differing: dict[str, str], base: dict[str, Outcome], args: argparse.Namespace,
            work: Path, reports: Path, looptrace_env: dict[str, str]
            ) -> tuple[dict[str, str], dict[str, str]]:
    """Run the differing tests once more, alone: (regressions, flaky). A test that ends as
    in the baseline when run again is flaky on a busy machine, not changed by looptrace."""
    regressions: dict[str, str] = {}
    flaky: dict[str, str] = {}
    if not differing:
        return regressions, flaky
    names = [test_id.rsplit(".", 1)[-1] for test_id in differing]
    run_suite(args.python, 1, work / "traced-again.xml", traced=True, reports=reports,
              match=names, looptrace_env=looptrace_env)
    again = parse_junit(work / "traced-again.xml")
    base_again = base
    if args.baseline:  # a recorded baseline may be another machine's: check it here too
        run_suite(args.python, 1, work / "baseline-again.xml", traced=False, reports=None,
                  match=names)
        base_again = {**base, **parse_junit(work / "baseline-again.xml")}
    for test_id, change in differing.items():
        if test_id in again and again[test_id] == base_again.get(test_id, "missing"):
            flaky[test_id] = change
        else:
            regressions[test_id] = change
    return regressions, flaky


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, help="where to keep results (default: a temp dir)")
    parser.add_argument("--looptrace-env", action="append", default=[], metavar="NAME=VALUE",
                        help="options of the traced pass, e.g. LOOPTRACE_MODE=full")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--baseline", type=Path, help="compare with this recorded baseline")
    group.add_argument("--record-baseline", type=Path, help="run the baseline pass only and "
                       "write its outcomes here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="asyncio-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    looptrace_env = dict(item.split("=", 1) for item in args.looptrace_env)
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    print(f"asyncio suite on Python {version} ({args.python}), results in {work}", flush=True)

    if args.record_baseline:
        status, seconds, tail = run_suite(args.python, args.jobs, work / "baseline.xml",
                                          traced=False, reports=None)
        outcomes = parse_junit(work / "baseline.xml")
        args.record_baseline.write_text(json.dumps(
            {"python": version, "outcomes": outcomes}, indent=0, sort_keys=True) + "\n")
        print(f"baseline: {len(outcomes)} tests in {seconds:.0f} s, written to "
              f"{args.record_baseline}")
        return 0

    if args.baseline:
        recorded = json.loads(args.baseline.read_text())
        base = recorded["outcomes"]
        print(f"baseline: {len(base)} tests recorded on Python {recorded['python']}")
    else:
        status, seconds, tail = run_suite(args.python, args.jobs, work / "baseline.xml",
                                          traced=False, reports=None)
        base = parse_junit(work / "baseline.xml")
        print(f"without looptrace: {len(base)} tests in {seconds:.0f} s (exit {status})",
              flush=True)

    reports = work / "reports"
    reports.mkdir(exist_ok=True)
    status, seconds, tail = run_suite(args.python, args.jobs, work / "traced.xml",
                                      traced=True, reports=reports, looptrace_env=looptrace_env)
    traced = parse_junit(work / "traced.xml")
    print(f"with looptrace:    {len(traced)} tests in {seconds:.0f} s (exit {status})",
          flush=True)
    if not traced:
        print(tail)
        return 1

    regressions, flaky = recheck(differences(base, traced), base, args, work, reports,
                                 looptrace_env)

    problems, totals = check_reports(reports)
    if not args.baseline:
        altered = env_changed(work / "traced.log") - env_changed(work / "baseline.log")
        problems += [f"{name} altered the environment with looptrace only" for name in altered]
    print(f"looptrace reports: {totals['reports']} processes, {totals['with_loops']} with "
          f"loops, {totals['loops']} loops, {totals['blocks']} blocks recorded")
    for test_id, change in flaky.items():
        print(f"  flaky (same result when run again alone): {test_id}: {change}")
    for test_id, change in regressions.items():
        print(f"  DIFFERENT with looptrace: {test_id}: {change}")
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    same = len(traced) - len(regressions)
    print(f"result: {same}/{len(traced)} tests end as without looptrace; "
          f"{len(regressions)} differ, {len(flaky)} flaky, {len(problems)} report problems")
    return 1 if regressions or problems else 0


if __name__ == "__main__":
    sys.exit(main())
