"""One blocking step delays five other tasks (docs/report.md, "Who a block delayed")."""

import asyncio
import time


async def fast(n: int) -> None:
    await asyncio.sleep(0.05 * n)  # due while `slow` blocks the loop: it waits


async def slow() -> None:
    await asyncio.sleep(0)
    time.sleep(0.3)  # blocks the loop for 300 ms


async def main() -> None:
    async with asyncio.TaskGroup() as group:
        for n in range(1, 6):
            group.create_task(fast(n), name=f"fast-{n}")
        group.create_task(slow(), name="slow")


asyncio.run(main())
