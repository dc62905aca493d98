#!/usr/bin/env python3
"""Does looptrace's memory stay flat over 10 million steps?

    python benchmarks/memory.py [--steps 10000000]

Two soaks, each in a fresh process per configuration (no tracer, looptrace default, full
mode with its in-process sink): 1,000 long-lived tasks, and a churn of short-lived tasks
(1,000 alive at once, each living 10 steps: a million tasks over the run). RSS and the
number of GC-tracked objects are sampled 20 times; growth is measured from the first
sample after a warm-up of 10% of the steps to the last. Budget: RSS growth < 20 MB.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

SOAKS = (
    ("1,000 long-lived tasks", {"tasks": 1000, "steps_per_task": 0}),
    ("task churn (10 steps per task)", {"tasks": 1000, "steps_per_task": 10}),
)
TOOLS = ("none", "looptrace", "looptrace_full")
SAMPLES = 20
BUDGET_MB = 20.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000_000)
    parser.add_argument("--python", help="the interpreter that runs the workloads")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness for the runs (default -10: ahead of other work on a "
                             "shared machine; needs root, else ignored)")
    parser.add_argument("--json", help="results file (default benchmarks/results/"
                                       "memory-py<version>.json)")
    args = parser.parse_args(argv)
    python = harness.python_of(args.python)
    niceness = harness.raise_priority(args.nice)
    info = harness.python_info(python)
    config = harness.Config(python=python, tools=TOOLS, workloads=(), pairs=1, mode="full")
    machine = harness.machine()
    began = time.monotonic()
    rows = []
    for label, sizes in SOAKS:
        for tool in TOOLS:
            per_task = sizes["steps_per_task"] or args.steps // sizes["tasks"]
            spec = {"total_steps": args.steps, "tasks": sizes["tasks"],
                    "steps_per_task": per_task, "samples": SAMPLES}
            result = harness.run_inprocess_workload(config, "memory_soak", tool, spec)
            rows.append(_row(label, tool, result))
            print(f"{label:<32} {tool:<15} RSS {rows[-1]['rss_start_mb']:.1f} -> "
                  f"{rows[-1]['rss_end_mb']:.1f} MB ({rows[-1]['rss_growth_mb']:+.1f}), GC "
                  f"objects {rows[-1]['gc_start']:,} -> {rows[-1]['gc_end']:,}", flush=True)
    version = ".".join(info["version"].split(".")[:2])
    out = args.json or os.path.join(harness.HERE, "results", f"memory-py{version}.json")
    document = {"schema": "looptrace.bench.memory/1", "started": harness.now_iso(),
                "wall_s": time.monotonic() - began, "machine": machine, "niceness": niceness,
                "loadavg_end": os.getloadavg(), "python": info, "steps": args.steps,
                "rows": rows}
    harness.save_with_table(out, document, render(document))
    print(f"memory: wrote {out}")
    over = [r for r in rows if r["tool"] != "none" and r["rss_growth_mb"] >= BUDGET_MB]
    return 1 if over else 0


def _row(label: str, tool: str, result: dict[str, Any]) -> dict[str, Any]:
    trace = result["trace"]
    warm = next((s for s in trace if s["steps"] >= trace[-1]["steps"] // 10), trace[0])
    last = trace[-1]
    figures = result.get("tool_figures") or {}
    return {"soak": label, "tool": tool, "steps": result["ops"],
            "ns_per_step": result["elapsed_ns"] / result["ops"],
            "rss_start_mb": warm["rss_kb"] / 1024, "rss_end_mb": last["rss_kb"] / 1024,
            "rss_growth_mb": (last["rss_kb"] - warm["rss_kb"]) / 1024,
            "rss_max_mb": max(s["rss_kb"] for s in trace) / 1024,
            "gc_start": warm["gc_objects"], "gc_end": last["gc_objects"],
            "gc_max": max(s["gc_objects"] for s in trace),
            "gc_collections": result["gc_collections"],
            "sink": {k: figures[k] for k in ("steps_exported", "lost") if k in figures},
            "trace": trace}


def render(document: dict[str, Any]) -> str:
    lines = [f"Run {document['started']} · {document['steps']:,} steps per soak · Python "
             f"{document['python']['version']} · load average "
             f"{document['machine']['loadavg_start'][0]:.2f} at start, "
             f"{document['loadavg_end'][0]:.2f} at end", "",
             "| soak | configuration | RSS after warm-up → end | growth | GC-tracked objects "
             "after warm-up → end (max) | gen2 collections |", "|---|---|---|---|---|---|"]
    for row in document["rows"]:
        lines.append(f"| {row['soak']} | `{row['tool']}` | {row['rss_start_mb']:.1f} → "
                     f"{row['rss_end_mb']:.1f} MB | {row['rss_growth_mb']:+.1f} MB | "
                     f"{row['gc_start']:,} → {row['gc_end']:,} ({row['gc_max']:,}) | "
                     f"{row['gc_collections'][2]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
