"""await and gather: how a coroutine learns that other tasks finished, without polling.

Tasks sleep for random times. They finish in the order of their sleeps, not the order they
were created in, and ``gather`` still returns their results in creation order. Three ways
to wait for all of them:

1. ``await asyncio.gather(*tasks)``.
2. What gather does, by hand: a future, and a done-callback on every task; the last task
   to finish sets the future's result, which wakes the coroutine awaiting it.
3. Polling: ``while not all(t.done() for t in tasks): await asyncio.sleep(0)``.

The first two wait without busy-waiting: between two completions the loop sleeps in
epoll (its timeout is the next timer due), wakes once per finished task, and runs a few
callbacks. Polling never lets it sleep: the loop spins at 100% of a core, thousands of
iterations, for the same wall time. None of them blocks the loop (every step is short),
so looptrace reports no hotspot; its loop figures tell them apart.

    python demos/await_and_gather.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _servers import Recorded, recorded


async def wait_with_gather(tasks: list[asyncio.Task[int]]) -> list[int]:
    """Variant 1."""
    return await asyncio.gather(*tasks)


async def wait_with_callbacks(tasks: list[asyncio.Task[int]]) -> list[int]:
    """Variant 2: gather written out. No loop, no polling: the tasks tell us."""
    everything_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    pending = len(tasks)

    def one_done(task: asyncio.Task[int]) -> None:  # called by the loop as a task finishes
        nonlocal pending
        pending -= 1
        if pending == 0:
            everything_done.set_result(None)  # schedules our wakeup: the await below returns

    for task in tasks:
        task.add_done_callback(one_done)
    await everything_done  # suspends this task; the future holds its wakeup callback
    return [task.result() for task in tasks]


async def wait_by_polling(tasks: list[asyncio.Task[int]]) -> list[int]:
    """Variant 3: the busy-wait (do not do this)."""
    while not all(task.done() for task in tasks):
        await asyncio.sleep(0)  # POLL: yield, and ask again at once
    return [task.result() for task in tasks]


VARIANTS: list[tuple[str, Callable[[list[asyncio.Task[int]]], Awaitable[list[int]]]]] = [
    ("1. asyncio.gather", wait_with_gather),
    ("2. a future and done-callbacks (gather by hand)", wait_with_callbacks),
    ("3. polling with asyncio.sleep(0)", wait_by_polling),
]


@dataclass
class Waited:
    """How one way of waiting went."""

    finished: list[int]
    """task numbers in the order they finished"""
    results: list[int]
    """what the wait returned (task numbers, in creation order)"""
    cpu_s: float


async def sleepers(delays: list[float],
                   wait: Callable[[list[asyncio.Task[int]]], Awaitable[list[int]]]) -> Waited:
    finished: list[int] = []

    async def sleeper(number: int, delay: float) -> int:
        await asyncio.sleep(delay)
        finished.append(number)
        return number

    tasks = [asyncio.create_task(sleeper(n, d), name=f"sleeper-{n}")
             for n, d in enumerate(delays, 1)]
    cpu = time.thread_time()
    results = await wait(tasks)
    return Waited(finished, results, time.thread_time() - cpu)


def run(count: int, longest_s: float) -> list[tuple[Recorded, Waited]]:
    """Wait for ``count`` sleeping tasks with each variant; what each cost."""
    generator = random.Random(7)
    delays = [round(generator.uniform(0.2, 1.0) * longest_s, 3) for _ in range(count)]
    results = []
    for label, wait in VARIANTS:
        with recorded(label) as record:
            started = time.perf_counter()
            waited = asyncio.run(sleepers(delays, wait))
            record.wall_s = time.perf_counter() - started
        results.append((record, waited))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="await and gather without busy-waiting")
    parser.add_argument("--quick", action="store_true", help="shorter sleeps (for the tests)")
    args = parser.parse_args(argv)
    count, longest_s = (6, 0.3) if args.quick else (8, 0.8)
    results = run(count, longest_s)
    print(f"{count} tasks sleep between {longest_s * 200:.0f} and {longest_s * 1000:.0f} ms; "
          f"created in the order 1..{count}.\n")
    for record, waited in results:
        print(f"{record.label}: {record.wall_s:.2f} s, CPU {waited.cpu_s * 1000:.0f} ms")
        print(f"   finished in the order {waited.finished}, results {waited.results}")
        print("   looptrace: " + record.verdict())
        print("              " + record.loop_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
