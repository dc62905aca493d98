#!/usr/bin/env python3
"""What reading a block's victims costs, once per block, on the loop thread.

    python benchmarks/victims_cost.py

A real asyncio loop with R handles ready and T timers expired (each timer wakes a task
sleeping inside an OpenTelemetry-free context), plus 10,000 timers not yet due; inside one
step, ``_hooks.victims.collect`` is timed (median of 21 calls). Nothing of this runs per
step: a block already cost the loop at least the threshold (100 ms by default).
"""

from __future__ import annotations

import asyncio
import statistics
import time

from looptrace._clock import now_ns
from looptrace._hooks.victims import collect

SIZES = ((0, 0), (10, 10), (100, 100), (1000, 1000), (10_000, 0))


async def _measure(ready: int, expired: int) -> float:
    loop = asyncio.get_running_loop()
    sleepers = [asyncio.create_task(asyncio.sleep(0.001)) for _ in range(expired)]
    later = [loop.call_later(3600, lambda: None) for _ in range(10_000)]
    await asyncio.sleep(0)  # the sleepers' timers are set
    time.sleep(0.01)  # and now expired, but not run: this step blocks
    for _ in range(ready):
        loop.call_soon(lambda: None)
    start = now_ns() - 20_000_000
    timings = []
    for _ in range(21):
        began = time.perf_counter_ns()
        victims = collect(loop, start, now_ns(), None)
        timings.append(time.perf_counter_ns() - began)
        assert victims is not None and victims.count == ready + expired
    for handle in later:
        handle.cancel()
    await asyncio.gather(*sleepers)
    return statistics.median(timings) / 1000


def main() -> None:
    for ready, expired in SIZES:
        micros = asyncio.run(_measure(ready, expired))
        print(f"victims_cost: {ready:>6} ready, {expired:>5} expired timers "
              f"(+10,000 not due): {micros:9.1f} us per block")


if __name__ == "__main__":
    main()
