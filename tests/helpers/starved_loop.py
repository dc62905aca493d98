"""A loop thread that gets almost no CPU: pinned to one CPU beside a busy process, at the
lowest priority (``nice 19`` for this thread only; the watchdog thread keeps its own).
Each step does a few milliseconds of CPU work, yet the loop is blocked for hundreds:
the run queue, not the line, made the block. Prints the blocks as JSON lines.

    python starved_loop.py BLOCKS WORK_ITERATIONS
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import looptrace


def work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i  # starved-work
    return total


async def main(blocks: int, iterations: int) -> None:
    for _ in range(blocks):
        await asyncio.sleep(0.02)
        work(iterations)


def run(blocks: int, iterations: int) -> None:
    cpu = min(os.sched_getaffinity(0))
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(competitor.pid, {cpu})
        time.sleep(0.5)  # until the competitor spins (its interpreter starts first)
        with looptrace.installed(threshold_ms=50) as tracing:  # watchdog starts first
            os.sched_setaffinity(0, {cpu})  # this thread only (Linux)
            os.setpriority(os.PRIO_PROCESS, 0, 19)  # this thread only (Linux)
            asyncio.run(main(blocks, iterations))
        for block in tracing.snapshot().blocks:
            site = block.site
            print(json.dumps({
                "call": block.call, "line": site.line if site else None,
                "file": site.file if site else None, "duration_ms": block.duration_ms,
                "cpu_ms": block.cpu_ms, "cpu_wait_ms": block.cpu_wait_ms,
                "causes": list(block.causes), "site_source": block.site_source}))
    finally:
        competitor.kill()
        competitor.wait()


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]))
