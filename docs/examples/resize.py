"""Three image resizes that each hold the loop for 80 ms (used by docs/jaeger.md)."""

import asyncio
import time


async def resize(image: int) -> None:
    await asyncio.sleep(0.01)
    time.sleep(0.08)  # stands for a synchronous, CPU-heavy resize


async def main() -> None:
    await asyncio.gather(*(resize(i) for i in range(3)))


asyncio.run(main())
