#!/usr/bin/env python3
"""CI tripwire: fail when looptrace's default configuration costs over 1.5x per step.

    python benchmarks/tripwire.py [--pairs 9] [--limit 1.5]

A reduced task ping-pong (1,000 tasks x 200 ``sleep(0)``) in A/B pairs, each run in a fresh
process with malloc pinned, no tracer against ``looptrace.install()``. The ratio is of the
process's CPU time per step (it does not count waiting for a CPU, so a busy machine moves
it much less than wall time; wall time is printed too). Exits 1 when the median per-step
ratio is over the limit, or when the C accelerator was not used (its build
is optional, so a broken build would otherwise pass silently at the pure-Python hook's
cost). The real budget (1.10x) is checked by the full run of ``overhead.py``; this only
catches regressions, with a margin wide enough for a busy CI machine. About 20 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

SIZES = {"tasks": 1000, "steps": 200}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--limit", type=float, default=1.5)
    parser.add_argument("--allow-python-hook", action="store_true",
                        help="do not fail when the C accelerator is missing")
    parser.add_argument("--python", help="the interpreter to measure (default: this one)")
    args = parser.parse_args(argv)
    config = harness.Config(python=harness.python_of(args.python), tools=("looptrace",),
                            workloads=("task_pingpong",), pairs=args.pairs, mode="quick")
    ratios = []
    wall_ratios = []
    accelerated = []
    for pair in range(args.pairs):
        order = ("none", "looptrace") if pair % 2 == 0 else ("looptrace", "none")
        runs = {name: harness.run_inprocess_workload(config, "task_pingpong", name, SIZES)
                for name in order}
        ratios.append(runs["looptrace"]["cpu_per_op_ns"] / runs["none"]["cpu_per_op_ns"])
        wall_ratios.append(runs["looptrace"]["per_op_ns"] / runs["none"]["per_op_ns"])
        accelerated.append(bool((runs["looptrace"].get("tool_figures") or {})
                                .get("accelerated")))
    median = statistics.median(ratios)
    print(f"tripwire: task ping-pong, looptrace default vs no tracer, CPU time per step: "
          f"median {median:.3f}x over {args.pairs} pairs (min {min(ratios):.3f}, max "
          f"{max(ratios):.3f}); wall time: median {statistics.median(wall_ratios):.3f}x; "
          f"limit {args.limit}x; C accelerator: "
          f"{'yes' if all(accelerated) else 'NO'}; load average {os.getloadavg()[0]:.2f}")
    if not all(accelerated) and not args.allow_python_hook:
        print("tripwire: FAILED: looptrace ran its pure-Python step hook; the C accelerator "
              "(looptrace._speedups) did not build or did not load", file=sys.stderr)
        return 1
    if median > args.limit:
        print(f"tripwire: FAILED: {median:.3f}x is over {args.limit}x", file=sys.stderr)
        return 1
    print("tripwire: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
