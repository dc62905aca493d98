"""A long run for the reliability tests: STEPS steps of one task, BLOCKS of them blocks
(each spins SPIN_US microseconds, over a tiny threshold), recorded by looptrace.

    python long_run.py STEPS BLOCKS THRESHOLD_MS SPIN_US REPORT

Prints one JSON line: the resident memory (MB) and the number of objects the interpreter
holds (after a collection) at every tenth of the run, the steps and blocks made, and the
seconds it took. The report goes to REPORT.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time

import looptrace

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_MB


async def run(steps: int, blocks: int, spin_ns: int, rss: list[float],
              objects: list[int]) -> int:
    every = steps // blocks
    tenth = steps // 10
    made = 0
    clock = time.perf_counter_ns
    for step in range(1, steps + 1):
        if step % every == 0 and made < blocks:
            deadline = clock() + spin_ns
            while clock() < deadline:  # LONG_RUN_BLOCK
                pass
            made += 1
        if step % tenth == 0:
            gc.collect()
            rss.append(round(rss_mb(), 2))
            objects.append(sys.getallocatedblocks())
        await asyncio.sleep(0)
    return made


def main() -> None:
    steps, blocks = int(sys.argv[1]), int(sys.argv[2])
    threshold_ms, spin_us, report = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    rss: list[float] = []
    objects: list[int] = []
    started = time.perf_counter()
    looptrace.install(threshold_ms=threshold_ms)
    made = asyncio.run(run(steps, blocks, int(spin_us * 1000), rss, objects))
    session = looptrace.uninstall()
    seconds = time.perf_counter() - started
    assert session is not None
    session.save(report)
    print(json.dumps({"rss_mb": rss, "objects": objects, "steps": steps, "blocks": made,
                      "seconds": round(seconds, 1), "final_rss_mb": round(rss_mb(), 2)}))


if __name__ == "__main__":
    main()
