"""CPU-bound work in a coroutine: every other task waits.

A coroutine multiplies matrices in pure Python. ``async def`` does not make that
concurrent: the loop runs one step at a time, and this step has no ``await`` in it, so a
ticker task that wants to run every 10 ms waits for the whole multiplication. looptrace
names the function and the line the loop was stuck on.

The fix: send the work to a process pool (``loop.run_in_executor(pool, ...)``). The loop
stays free (the ticker keeps ticking) and, with a core per process, the jobs run in
parallel. (A thread pool would free the loop too, but pure-Python arithmetic holds the GIL,
so the jobs would still run one at a time.)

    python demos/cpu_bound.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _servers import Recorded, recorded

TICK_S = 0.010

Matrix = list[list[float]]


def random_matrix(size: int, seed: int) -> Matrix:
    generator = random.Random(seed)
    return [[generator.random() for _ in range(size)] for _ in range(size)]


def multiply(a: Matrix, b: Matrix) -> Matrix:
    """Plain O(n^3) matrix product: pure-Python arithmetic that never yields."""
    product = []
    for row in a:
        out = [0.0] * len(b[0])
        for x, b_row in zip(row, b, strict=True):
            for j, y in enumerate(b_row):
                out[j] += x * y  # HOT: the loop thread spends its time here
        product.append(out)
    return product


def job(size: int, seed: int) -> float:
    """One unit of work: multiply two random matrices, return a checksum."""
    product = multiply(random_matrix(size, seed), random_matrix(size, seed + 1))
    return sum(map(sum, product))


async def jobs_in_the_loop(size: int, count: int, pool: ProcessPoolExecutor) -> list[float]:
    """Variant 1: the work runs inside the coroutines, on the loop thread."""

    async def one(seed: int) -> float:
        return job(size, seed)

    return await asyncio.gather(*(one(seed) for seed in range(count)))


async def jobs_in_processes(size: int, count: int, pool: ProcessPoolExecutor) -> list[float]:
    """Variant 2: the work runs in a process pool; the coroutines only await it."""
    loop = asyncio.get_running_loop()
    return await asyncio.gather(*(loop.run_in_executor(pool, job, size, seed)
                                  for seed in range(count)))


VARIANTS = [
    ("1. matrix products inside the coroutines", jobs_in_the_loop),
    ("2. matrix products in a process pool", jobs_in_processes),
]


@dataclass
class Ticks:
    """What the ticker saw: how often it ran, and the longest time between two of its runs
    (or between its start and the end)."""

    count: int
    longest_gap_s: float


async def with_ticker(variant: object, size: int, count: int,
                      pool: ProcessPoolExecutor) -> tuple[list[float], Ticks]:
    loop = asyncio.get_running_loop()
    ticks, longest, last = 0, 0.0, loop.time()

    async def ticker() -> None:
        nonlocal ticks, longest, last
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            longest, last = max(longest, now - last), now
            ticks += 1

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    results = await variant(size, count, pool)  # type: ignore[operator]
    ticking.cancel()
    return results, Ticks(ticks, max(longest, loop.time() - last))


def worker_pid(pause_s: float) -> int:
    time.sleep(pause_s)
    return os.getpid()


def start_workers(pool: ProcessPoolExecutor, workers: int) -> None:
    """Start every worker process before timing (the pool starts them on demand, and a
    spawned Python takes a few hundred milliseconds to start)."""
    for _ in range(20):
        if len(set(pool.map(worker_pid, [0.05] * workers))) == workers:
            return


def run(size: int, count: int) -> list[tuple[Recorded, Ticks]]:
    """Run ``count`` jobs of ``size`` with each variant; wall times, ticks, verdicts."""
    # spawn, not fork: looptrace (like many libraries) runs threads, and forking a
    # threaded process is unsafe.
    context = multiprocessing.get_context("spawn")
    workers = min(count, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        start_workers(pool, workers)
        results = []
        expected: list[float] | None = None
        for label, variant in VARIANTS:
            with recorded(label) as record:
                started = time.perf_counter()
                sums, ticks = asyncio.run(with_ticker(variant, size, count, pool))
                record.wall_s = time.perf_counter() - started
            assert expected is None or sums == expected  # same work, same answers
            expected = sums
            results.append((record, ticks))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU-bound work in a coroutine")
    parser.add_argument("--quick", action="store_true", help="smaller matrices (for the tests)")
    args = parser.parse_args(argv)
    size, count = (130, 3) if args.quick else (150, 4)
    print(f"{count} jobs, each the product of two {size}x{size} matrices in pure Python; "
          f"a ticker task wants to run every {TICK_S * 1000:.0f} ms; "
          f"{os.cpu_count()} CPU cores.\n")
    for record, ticks in run(size, count):
        print(f"{record.label}: {record.wall_s:.2f} s, ticker ran {ticks.count}x, "
              f"longest gap {ticks.longest_gap_s * 1000:.0f} ms")
        print("   looptrace: " + record.verdict().replace("\n", "\n              "))
        print("              " + record.loop_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
