"""Where each task's time went (docs/tasks.md): run with `looptrace run --mode full`."""

import asyncio
import time


def crunch(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # CPU work on the loop thread
        pass


async def report_builder() -> None:
    for _ in range(4):
        crunch(0.03)  # 30 ms without yielding, four times
        await asyncio.sleep(0)


async def poller() -> None:
    for _ in range(200):
        await asyncio.sleep(0)  # woken by itself, never by an event: a busy-poll


async def request(number: int) -> None:
    await asyncio.sleep(0.05 * number)  # waiting for I/O: idle
    crunch(0.002)


async def main() -> None:
    background = asyncio.create_task(asyncio.Event().wait(), name="forgotten")
    await asyncio.gather(
        asyncio.create_task(report_builder(), name="report-builder"),
        asyncio.create_task(poller(), name="poller"),
        *(asyncio.create_task(request(n), name=f"request-{n}") for n in range(3)))
    assert not background.done()  # main returns with it pending: asyncio.run cancels it


asyncio.run(main())
