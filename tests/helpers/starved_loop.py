"""A loop thread that gets almost no CPU: pinned to one CPU beside a busy process, at the
lowest priority (``nice 19`` for this thread only; the watchdog thread keeps its own).
Each step does a few milliseconds of CPU work, yet the loop is blocked for hundreds:
the run queue, not the line, made the block. Prints the blocks as JSON lines.

    python starved_loop.py BLOCKS CPU_MS_PER_BLOCK
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import looptrace


def work(cpu_ms: float) -> int:
    # CPU time, not a count of iterations: a scheduler that favours a thread waking from
    # a sleep (EEVDF, Linux 6.6+) runs a few milliseconds of it at once; the rest waits.
    total = 0
    end = time.thread_time() + cpu_ms / 1000
    while time.thread_time() < end:
        total += 1  # starved-work
    return total


async def main(blocks: int, cpu_ms: float) -> None:
    for _ in range(blocks):
        await asyncio.sleep(0.02)  # starved-await
        work(cpu_ms)  # starved-call


def run(blocks: int, cpu_ms: float) -> None:
    cpu = min(os.sched_getaffinity(0))
    # The competitor says when it spins: on a loaded machine its interpreter may take
    # longer to start than this program's loop takes to run (seen in CI: no block at all).
    competitor = subprocess.Popen(
        [sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
        stdout=subprocess.PIPE, text=True)
    try:
        os.sched_setaffinity(competitor.pid, {cpu})
        assert competitor.stdout is not None
        competitor.stdout.readline()
        time.sleep(0.1)  # a scheduler tick or two: the competitor runs on the pinned CPU
        with looptrace.installed(threshold_ms=50) as tracing:  # watchdog starts first
            os.sched_setaffinity(0, {cpu})  # this thread only (Linux)
            os.setpriority(os.PRIO_PROCESS, 0, 19)  # this thread only (Linux)
            asyncio.run(main(blocks, cpu_ms))
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
    run(int(sys.argv[1]), float(sys.argv[2]))
