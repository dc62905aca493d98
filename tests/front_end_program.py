"""A small asyncio program recorded for real by the HTML and Chrome-trace tests.

Tasks wait on a real loopback HTTP server (select waits with ready sockets), one blocks the
loop in ``time.sleep`` (a blocking call), one in a CPU loop (a slow step), and one has a
name that is HTML.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import looptrace
from looptrace import Session

EVIL_TASK = "<script>alert(1)</script>"
THRESHOLD_MS = 25.0


def legacy_read() -> None:
    time.sleep(0.06)  # SLEEP_LINE


def crunch() -> int:
    # A fixed amount of work (about 50 ms of CPU), not a deadline: spinning until a clock
    # time is mostly waiting for a CPU on a loaded machine, and rightly named so.
    total = 0
    for i in range(800_000):  # CRUNCH_LINE
        total += i
    return total


async def fetch(base_url: str, delay_ms: int) -> bytes:
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET /delay/{delay_ms} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 .encode())
    await writer.drain()
    body = await reader.read()
    writer.close()
    await writer.wait_closed()
    return body


async def legacy_worker() -> None:
    for _ in range(2):
        await asyncio.sleep(0.01)
        legacy_read()


async def cpu_worker() -> None:
    await asyncio.sleep(0.005)
    crunch()


async def evil() -> None:
    for _ in range(3):
        await asyncio.sleep(0.005)


async def main(base_url: str) -> None:
    await asyncio.gather(
        asyncio.create_task(fetch(base_url, 40), name="fetcher"),
        asyncio.create_task(legacy_worker(), name="legacy"),
        asyncio.create_task(cpu_worker(), name="cruncher"),
        asyncio.create_task(evil(), name=EVIL_TASK),
    )


def line_of(marker: str) -> int:
    """The line of this file that carries ``# marker``."""
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.rstrip().endswith(f"# {marker}"):
                return number
    raise LookupError(marker)


def record(base_url: str, mode: str = "full") -> Session:
    """Run the program under looptrace and return the final report."""
    with looptrace.installed(mode=mode, threshold_ms=THRESHOLD_MS) as tracing:
        asyncio.run(main(base_url))
    return tracing.snapshot()
