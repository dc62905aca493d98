#!/usr/bin/env python3
"""Instructions per step, counted by valgrind's callgrind: a figure the machine's load
cannot move.

    python benchmarks/instructions.py       # needs valgrind (Debian package)

Each configuration runs the task ping-pong (100 tasks) and the callback chain at two
sizes under callgrind; the difference of the two totals divided by the difference in
steps is the cost of one step with everything that scales with steps (the hooks, the
select timer, the sink's drains), and without start-up, imports and the final report.
Instructions are not time (a clock read costs few instructions and tens of nanoseconds),
so this complements the A/B timings of overhead.py; it does not replace them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import callgrind
import harness

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "none": "",
    "looptrace": "looptrace.install()",
    "looptrace (Python hooks)": "looptrace.install(accelerator=False)",
    "looptrace_full": "looptrace.install(mode='full')",
    "looptrace_full (Python hooks)": "looptrace.install(mode='full', accelerator=False)",
}

# The loop is never closed: closing it converts full mode's rings for the report, which is
# not a per-step cost.
PROGRAM = """
import asyncio, os, sys
sys.path.insert(0, {here!r})
import workloads
import looptrace
{install}
loop = asyncio.new_event_loop()
nop = lambda: None
if {workload!r} == "task_pingpong":
    loop.run_until_complete(workloads.task_pingpong(100, {size}, nop, nop))
else:
    loop.run_until_complete(workloads.callback_chain(100 * {size}, nop, nop))
os._exit(0)
"""

SIZES = (50, 150)  # per task: 5,000 and 15,000 steps (or hops)
WORKLOADS = ("task_pingpong", "callback_chain")


def count(python: str, workload: str, install: str, size: int) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PROGRAM.format(here=HERE, install=install, workload=workload, size=size))
        path = f.name
    try:
        proc = subprocess.run([*callgrind.COMMAND, python, path], capture_output=True,
                              text=True, check=False, env=callgrind.ENV)
    finally:
        os.unlink(path)
    return callgrind.total(proc.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", help="results file (default benchmarks/results/"
                                       "instructions-py<version>.json)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is missing (apt-get install valgrind)", file=sys.stderr)
        return 2
    version = callgrind.python_version(args.python)
    steps = (100 * SIZES[1]) - (100 * SIZES[0])
    results: dict[str, dict[str, float]] = {}
    for workload in WORKLOADS:
        for name, install in CONFIGS.items():
            low, high = (count(args.python, workload, install, size) for size in SIZES)
            per_step = (high - low) / steps
            results.setdefault(workload, {})[name] = per_step
            print(f"{workload:<15} {name:<30} {per_step:,.0f} instructions per step",
                  flush=True)
    markdown = callgrind.table(
        f"Python {version}, callgrind, instructions per step (task ping-pong, 100 tasks) "
        "or per hop (callback chain), added over no tracer in parentheses.",
        WORKLOADS, CONFIGS, results)
    out = args.json or os.path.join(HERE, "results",
                                    f"instructions-py{'.'.join(version.split('.')[:2])}.json")
    harness.save_with_table(out, {"python": version, "per_step": results}, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
