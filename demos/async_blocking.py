"""async + blocking: the worst of both worlds, and its two fixes.

Several sites, served from this process on 127.0.0.1, send their pages at different speeds.
Three ways to download them all "concurrently" with asyncio.gather:

1. ``urlopen`` in the executor, then ``response.read()`` on the loop thread. It looks
   asynchronous, but ``urlopen`` returns as soon as the headers arrive: the body is read by
   the blocking ``read()``, on the loop thread. While one read waits, the loop runs nothing
   else, and nobody reads the other sockets: their downloads stall (TCP flow control), so
   the sites are downloaded one after another.
2. The fix that keeps urllib: the read goes to the executor too.
3. Fully asynchronous: aiohttp (or asyncio streams when aiohttp is not installed).

    python demos/async_blocking.py [--quick]
    looptrace run demos/async_blocking.py

Prints each variant's wall time and looptrace's verdict for it: a blocking-call hotspot at
the ``read()`` line for the first variant, none for the fixes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from types import ModuleType

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _servers import Recorded, Site, paced_sites, recorded

aiohttp: ModuleType | None
try:
    import aiohttp
except ImportError:  # the third variant then uses asyncio streams
    aiohttp = None



async def download_blocking(url: str) -> int:
    """Variant 1: the classic trap."""
    loop = asyncio.get_running_loop()
    response = await loop.run_in_executor(None, urllib.request.urlopen, url)
    body = response.read()  # BLOCKS: the loop thread waits here for the whole body
    response.close()
    return len(body)


async def download_in_executor(url: str) -> int:
    """Variant 2: the read runs in the executor too."""
    loop = asyncio.get_running_loop()
    response = await loop.run_in_executor(None, urllib.request.urlopen, url)
    body = await loop.run_in_executor(None, response.read)
    response.close()
    return len(body)


async def download_async(url: str) -> int:
    """Variant 3: an asynchronous client; the loop waits in epoll for every socket at once."""
    if aiohttp is None:
        return await _download_with_streams(url)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body = await response.read()
    return len(body)


async def _download_with_streams(url: str) -> int:
    """The same as aiohttp's GET, for an installation without aiohttp: asyncio streams."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n"
                 .encode())
    headers = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in headers.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return len(body)


def variants() -> list[tuple[str, Callable[[str], Awaitable[int]]]]:
    """The three ways to download, with their labels."""
    third = "(aiohttp)" if aiohttp is not None else "(asyncio streams; aiohttp is not installed)"
    return [
        ("1. run_in_executor(urlopen) + blocking read()", download_blocking),
        ("2. read() in the executor too", download_in_executor),
        (f"3. fully async {third}", download_async),
    ]


def make_sites(quick: bool) -> list[Site]:
    """Sites of different speeds: the slowest takes 0.4 s (0.33 s with --quick), the fastest
    longer than looptrace's default threshold (100 ms)."""
    size = 1_000_000 if quick else 2_000_000
    rates_mb_s = [3, 4, 5, 6, 8] if quick else [5, 6, 8, 10, 12]
    return [Site(f"site{i}", size, rate * 1_000_000) for i, rate in enumerate(rates_mb_s, 1)]


async def download_all(fetch: Callable[[str], Awaitable[int]], urls: dict[str, str]) -> None:
    sizes = await asyncio.gather(*(fetch(url) for url in urls.values()))
    assert all(size > 0 for size in sizes)


def run(sites: list[Site]) -> list[Recorded]:
    """Download every site with each variant; return what each took and what looptrace saw."""
    results = []
    with paced_sites(sites) as urls:
        for label, fetch in variants():
            with recorded(label) as record:
                started = time.perf_counter()
                asyncio.run(download_all(fetch, urls))
                record.wall_s = time.perf_counter() - started
            results.append(record)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="async + blocking, and its two fixes")
    parser.add_argument("--quick", action="store_true", help="smaller pages (for the tests)")
    args = parser.parse_args(argv)
    sites = make_sites(args.quick)
    print(f"{len(sites)} sites on 127.0.0.1, {sites[0].size / 1e6:g} MB each, at "
          + ", ".join(f"{s.rate / 1e6:g}" for s in sites) + " MB/s: "
          f"{sum(s.seconds for s in sites):.2f} s one after another, "
          f"{max(s.seconds for s in sites):.2f} s all at once.\n")
    results = run(sites)
    for record in results:
        print(f"{record.label}: {record.wall_s:.2f} s")
        print("   looptrace: " + record.verdict().replace("\n", "\n              "))
        print("              " + record.loop_line())
    blocking, in_executor, fully_async = (r.wall_s for r in results)
    print(f"\nThe blocking read() made the downloads {blocking / in_executor:.1f}x slower than "
          f"reading in the executor, {blocking / fully_async:.1f}x slower than fully async.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
