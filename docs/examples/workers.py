"""Worker processes, each running an event loop: how multiprocessing and servers work."""

import asyncio
import multiprocessing
import sys
import time


async def serve() -> None:
    await asyncio.sleep(0)
    time.sleep(0.1)  # a synchronous call on the worker's loop
    await asyncio.sleep(0)


def worker() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    method = sys.argv[1] if len(sys.argv) > 1 else "spawn"
    context = multiprocessing.get_context(method)
    workers = [context.Process(target=worker) for _ in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
