#!/usr/bin/env python3
"""Per-step cost measured in short interleaved rounds in one process: precise on a busy
machine.

    python benchmarks/interleaved.py [--rounds 41]

overhead.py runs every measurement in a fresh process, as the issue asks; on a shared
machine whose load changes from second to second, that puts the noise of seconds between
the two sides of a pair. Here one process alternates, round after round, the same short
workload (about 50 ms) without looptrace and with it (``install()`` before the round's loop
is created, ``uninstall()`` after), in alternating order. Adjacent rounds see the same
machine, so the per-round ratio is far steadier; the median over many rounds is the
figure. Configurations: default and full mode (with the in-process sink); workloads: the
task ping-pong (1,000 tasks started before the timed region, 50 steps each) and the
callback chain (40,000 hops). Wall and CPU time are both reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness
import tools
import workloads
from sink import FullTraceSink

import looptrace


class CpuClock:
    """CPU time of the process inside the workload's timed region only (closing the loop,
    which in full mode copies the rings for the report, is not a per-step cost)."""

    def __init__(self) -> None:
        self.start_ns = 0
        self.cpu_ns = 0

    def start(self) -> None:
        self.start_ns = time.process_time_ns()

    def stop(self) -> None:
        self.cpu_ns = time.process_time_ns() - self.start_ns


def _pingpong(clock: CpuClock) -> tuple[int, int]:
    # Tasks created before the timed region: with 50 steps per task, creating them would
    # otherwise weigh on both sides and dilute the ratio.
    return asyncio.run(workloads.started_pingpong(1000, 50, clock.start, clock.stop))


def _callbacks(clock: CpuClock) -> tuple[int, int]:
    return asyncio.run(workloads.callback_chain(40_000, clock.start, clock.stop))


WORKLOADS: dict[str, Callable[[CpuClock], tuple[int, int]]] = {
    "task_pingpong": _pingpong, "callback_chain": _callbacks}


def _measure(run: Callable[[CpuClock], tuple[int, int]], config: str) -> tuple[float, float]:
    """(wall ns per op, CPU ns per op) of one round under ``config``."""
    sink = None
    if config == "looptrace":
        looptrace.install()
    elif config == "looptrace_full":
        looptrace.install(mode="full")
        sink = FullTraceSink()
        sink.start()
    clock = CpuClock()
    ops, elapsed = run(clock)
    cpu = clock.cpu_ns
    if sink is not None:
        figures = sink.stop()
        if figures["lost"]:
            raise SystemExit(f"the sink lost {figures['lost']} records")
    if config != "none":
        looptrace.uninstall()
    return elapsed / ops, cpu / ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--nice", type=int, default=-10)
    parser.add_argument("--json", help="results file (default benchmarks/results/"
                                       "interleaved-py<version>.json)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the table shows quartiles over rounds)")
    if os.environ.get("GLIBC_TUNABLES") != tools.MALLOC_PINNED:
        # Pin malloc as every other benchmark does: re-exec with the tunables set.
        env = {**os.environ, "GLIBC_TUNABLES": tools.MALLOC_PINNED}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    niceness = harness.raise_priority(args.nice)
    machine = harness.machine()
    began = time.monotonic()
    results: dict[str, Any] = {}
    for workload, run in WORKLOADS.items():
        run(CpuClock())  # warm up: imports, first allocations
        for config in ("looptrace", "looptrace_full"):
            rounds = []
            for i in range(args.rounds):
                order = ("none", config) if i % 2 == 0 else (config, "none")
                measured = {name: _measure(run, name) for name in order}
                rounds.append({"base_wall": measured["none"][0], "base_cpu": measured["none"][1],
                               "tool_wall": measured[config][0], "tool_cpu": measured[config][1]})
            results[f"{workload}|{config}"] = _stats(rounds)
            cell = results[f"{workload}|{config}"]
            print(f"{workload:<15} {config:<15} wall {cell['wall']['ratio_median']:.3f}x "
                  f"(IQR {cell['wall']['ratio_p25']:.3f}-{cell['wall']['ratio_p75']:.3f}), CPU "
                  f"{cell['cpu']['ratio_median']:.3f}x (IQR {cell['cpu']['ratio_p25']:.3f}-"
                  f"{cell['cpu']['ratio_p75']:.3f})", flush=True)
    version = ".".join(sys.version.split()[0].split(".")[:2])
    document = {"schema": "looptrace.bench.interleaved/1", "started": harness.now_iso(),
                "wall_s": time.monotonic() - began, "machine": machine, "niceness": niceness,
                "loadavg_end": os.getloadavg(), "python": sys.version.split()[0],
                "rounds": args.rounds, "results": results}
    out = args.json or os.path.join(harness.HERE, "results", f"interleaved-py{version}.json")
    harness.save_with_table(out, document, render(document))
    return 0


def _stats(rounds: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": rounds}
    for kind in ("wall", "cpu"):
        ratios = sorted(r[f"tool_{kind}"] / r[f"base_{kind}"] for r in rounds)
        quartiles = statistics.quantiles(ratios, n=4)
        out[kind] = {"ratio_median": statistics.median(ratios), "ratio_p25": quartiles[0],
                     "ratio_p75": quartiles[2], "ratio_min": ratios[0], "ratio_max": ratios[-1],
                     "base_ns": statistics.median(r[f"base_{kind}"] for r in rounds),
                     "added_ns": statistics.median(r[f"tool_{kind}"] - r[f"base_{kind}"]
                                                   for r in rounds)}
    return out


def render(document: dict[str, Any]) -> str:
    lines = [f"Run {document['started']} · {document['rounds']} interleaved rounds per cell · "
             f"Python {document['python']} · load average "
             f"{document['machine']['loadavg_start'][0]:.2f} at start, "
             f"{document['loadavg_end'][0]:.2f} at end · wall {document['wall_s'] / 60:.1f} min",
             "", "Tool/baseline per round: median (interquartile range) [min–max]; baseline "
             "median per operation, and the median added per operation.", "",
             "| workload | configuration | wall time | CPU time |", "|---|---|---|---|"]
    for key, cell in document["results"].items():
        workload, config = key.split("|")
        parts = []
        for kind in ("wall", "cpu"):
            s = cell[kind]
            parts.append(f"**{s['ratio_median']:.3f}×** ({s['ratio_p25']:.3f}–"
                         f"{s['ratio_p75']:.3f}) [{s['ratio_min']:.2f}–{s['ratio_max']:.2f}]"
                         f"<br>{s['base_ns']:,.0f} ns {s['added_ns']:+,.0f} ns")
        lines.append(f"| {workload} | `{config}` | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
