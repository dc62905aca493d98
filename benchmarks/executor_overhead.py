#!/usr/bin/env python3
"""What timing executor calls costs: ``asyncio.to_thread`` of a trivial function, with and
without looptrace, in alternating rounds of one process.

    python benchmarks/executor_overhead.py                 # 9 rounds of 5,000 calls each
    python benchmarks/executor_overhead.py --rounds 15 --calls 20000

Three configurations alternate round by round (so a slower period of a shared machine
hits all three): ``none`` (looptrace not installed), ``no-executor-hook`` (installed in
full mode, with the ``run_in_executor`` patch taken out again) and ``looptrace`` (full
mode as a program gets it; executor calls are timed in full mode only, because of what
this benchmark measures). Two patterns: ``serial`` (one call awaited at a time: each call is a
full thread handoff and back, the worst case per call) and ``burst`` (100 calls gathered
at once, the pool's queue in use). Prints the median microseconds per call and the
ratios (the median of the ratios within each round); the executor hook's own cost is
``looptrace`` / ``no-executor-hook``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from typing import Any

import looptrace
from looptrace import _api


def trivial() -> int:
    return 1


async def serial(calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await asyncio.to_thread(trivial)
    return time.perf_counter() - start


async def burst(calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls // 100):
        await asyncio.gather(*(asyncio.to_thread(trivial) for _ in range(100)))
    return time.perf_counter() - start


PATTERNS = {"serial": serial, "burst": burst}
CONFIGS = ("none", "no-executor-hook", "looptrace")


def one_round(config: str, pattern: str, calls: int) -> float:
    """Microseconds per call."""
    if config != "none":
        looptrace.install(summary=False, mode="full")  # executor calls are timed in full mode
        if config == "no-executor-hook":
            installation = _api._current
            assert installation is not None
            installation.tracer.executors.revert()
    try:
        elapsed = asyncio.run(PATTERNS[pattern](calls))
    finally:
        if config != "none":
            looptrace.uninstall()
    return elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--json", help="write every round's figures here")
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {p: {c: [] for c in CONFIGS} for p in PATTERNS}
    for pattern in PATTERNS:
        one_round("none", pattern, args.calls // 5)  # warm up: threads, imports
        for index in range(args.rounds):
            # Rotate the order too, so none of the three always runs first.
            order = CONFIGS[index % 3:] + CONFIGS[:index % 3]
            for config in order:
                results[pattern][config].append(one_round(config, pattern, args.calls))
    summary: dict[str, Any] = {"python": platform.python_version(), "rounds": args.rounds,
                               "calls": args.calls, "patterns": {}}
    print(f"Python {platform.python_version()}, {args.rounds} rounds of {args.calls} calls")
    print(f"{'pattern':8} {'none µs':>9} {'no-hook µs':>11} {'looptrace µs':>13} "
          f"{'hook ratio':>11} {'total ratio':>12}")
    for pattern, by_config in results.items():
        medians = {c: statistics.median(v) for c, v in by_config.items()}
        # Ratios within each round (the three ran back to back), then their median: a
        # slow period of the machine cancels out of a ratio, not out of a median of times.
        hook = statistics.median(t / b for t, b in zip(by_config["looptrace"],
                                                       by_config["no-executor-hook"],
                                                       strict=True))
        total = statistics.median(t / b for t, b in zip(by_config["looptrace"],
                                                        by_config["none"], strict=True))
        summary["patterns"][pattern] = {"median_us": medians, "hook_ratio": hook,
                                        "total_ratio": total, "rounds_us": by_config}
        print(f"{pattern:8} {medians['none']:9.2f} {medians['no-executor-hook']:11.2f} "
              f"{medians['looptrace']:13.2f} {hook:10.3f}x {total:11.3f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
