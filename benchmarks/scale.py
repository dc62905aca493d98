#!/usr/bin/env python3
"""Does looptrace's cost per step grow with the number of tasks or of loops?

    python benchmarks/scale.py [--pairs 5] [--quick]

Task ping-pong with 10, 1,000 and 100,000 concurrent tasks, and 4 threads each running its
own loop at once, every scenario in A/B pairs (fresh processes, malloc pinned) against no
tracer: looptrace's default configuration and full mode. The added nanoseconds per step
should be flat across the rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

# (label, workload, sizes); about a million steps each. The tasks are created and started
# before the timed region (workloads.started_pingpong): the figure is a step's cost.
SCENARIOS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("10 tasks", "started_pingpong", {"tasks": 10, "steps": 100_000}),
    ("1,000 tasks", "started_pingpong", {"tasks": 1000, "steps": 1000}),
    ("100,000 tasks", "started_pingpong", {"tasks": 100_000, "steps": 10}),
    ("4 loops in 4 threads × 1,000 tasks", "threaded_pingpong",
     {"threads": 4, "tasks": 1000, "steps": 250}),
)
TOOLS = ("looptrace", "looptrace_full")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps")
    parser.add_argument("--python", help="the interpreter that runs the workloads")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness for the runs (default -10: ahead of other work on a "
                             "shared machine; needs root, else ignored)")
    parser.add_argument("--json", help="results file (default benchmarks/results/"
                                       "scale-py<version>.json)")
    args = parser.parse_args(argv)
    python = harness.python_of(args.python)
    niceness = harness.raise_priority(args.nice)
    info = harness.python_info(python)
    config = harness.Config(python=python, tools=TOOLS, workloads=(), pairs=args.pairs,
                            mode="full")
    machine = harness.machine()
    began = time.monotonic()
    print(f"scale: Python {info['version']}, {args.pairs} pairs; load average "
          f"{machine['loadavg_start'][0]:.2f}", flush=True)
    runs: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        for label, workload, scenario_sizes in SCENARIOS:
            sizes = dict(scenario_sizes)
            if args.quick:
                sizes["steps"] = max(2, sizes["steps"] // 10)
            for tool in TOOLS:
                order = ("none", tool) if pair % 2 == 0 else (tool, "none")
                measured = {name: harness.run_inprocess_workload(config, workload, name, sizes)
                            for name in order}
                runs.append({"pair": pair, "scenario": label, "tool": tool, "sizes": sizes,
                             "loadavg": os.getloadavg()[0], "base": measured["none"],
                             "tool_run": measured[tool]})
                ratio = measured[tool]["per_op_ns"] / measured["none"]["per_op_ns"]
                print(f"pair {pair + 1} {label:<36} {tool:<15} {ratio:.3f}x", flush=True)
    rows = summarize(runs)
    version = ".".join(info["version"].split(".")[:2])
    out = args.json or os.path.join(harness.HERE, "results", f"scale-py{version}.json")
    document = {"schema": "looptrace.bench.scale/1", "started": harness.now_iso(),
                "wall_s": time.monotonic() - began, "machine": machine, "niceness": niceness,
                "loadavg_end": os.getloadavg(), "python": info, "pairs": args.pairs,
                "quick": args.quick, "runs": runs, "rows": rows}
    harness.save_with_table(out, document, render(document))
    print(f"scale: wrote {out}")
    return 0


def _stats(group: list[dict[str, Any]], key: str) -> dict[str, float]:
    base = [r["base"][key] for r in group]
    other = [r["tool_run"][key] for r in group]
    ratios = [t / b for b, t in zip(base, other, strict=True)]
    return {"base_ns": statistics.median(base), "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "added_ns": statistics.median(t - b for b, t in zip(base, other, strict=True))}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and tool: wall-time and CPU-time ratios per step (median, min, max) and
    the added nanoseconds per step."""
    rows = []
    for label, _, _ in SCENARIOS:
        row: dict[str, Any] = {"scenario": label}
        for tool in TOOLS:
            group = [r for r in runs if r["scenario"] == label and r["tool"] == tool]
            if group:
                row[tool] = {"wall": _stats(group, "per_op_ns"),
                             "cpu": _stats(group, "cpu_per_op_ns")}
        rows.append(row)
    return rows


def _cell(stats: dict[str, float]) -> str:
    return (f"**{stats['ratio_median']:.2f}×** ({stats['ratio_min']:.2f}–"
            f"{stats['ratio_max']:.2f}), {stats['added_ns']:+,.0f} ns")


def render(document: dict[str, Any]) -> str:
    lines = [f"Run {document['started']} · {document['pairs']} A/B pairs · Python "
             f"{document['python']['version']} · load average "
             f"{document['machine']['loadavg_start'][0]:.2f} at start, "
             f"{document['loadavg_end'][0]:.2f} at end · wall {document['wall_s'] / 60:.1f} min",
             "", "Per step, tool/baseline median (min–max) over pairs, and the median added "
             "nanoseconds per step; wall time and the process's CPU time.", "",
             "| scenario | no tracer (wall, CPU) | default: wall | default: CPU | "
             "full mode: wall | full mode: CPU |", "|---|---|---|---|---|---|"]
    for row in document["rows"]:
        first = row.get(TOOLS[0]) or row.get(TOOLS[1])
        cells = [row["scenario"], f"{first['wall']['base_ns']:,.0f} ns, "
                                  f"{first['cpu']['base_ns']:,.0f} ns"]
        for tool in TOOLS:
            stats = row.get(tool)
            cells += [_cell(stats["wall"]), _cell(stats["cpu"])] if stats else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
