"""A small asyncio program with blocks, long iterations, probed calls and an exit status:
the traced program of the fault-injection tests. Its output must not change under
looptrace, whatever fails inside looptrace."""

import asyncio
import sys
import time


async def work(number: int) -> int:
    await asyncio.sleep(0.005)
    time.sleep(0.04)  # a probed blocking call: a block of about 40 ms
    total = 0
    deadline = time.perf_counter() + 0.03
    while time.perf_counter() < deadline:  # CPU work: a slow step without a probe
        total += 1
    await asyncio.sleep(0)
    return number * number


async def main() -> None:
    results = await asyncio.gather(*(work(n) for n in range(4)))
    print("results", results, flush=True)
    print("to stderr", file=sys.stderr, flush=True)


asyncio.run(main())
asyncio.run(main())  # a second loop: hooks keep working (or stay off) across loops
sys.exit(3)
