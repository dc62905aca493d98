"""The program behind the HTML and Perfetto examples in docs/html-and-perfetto.md.

Four tasks on one loop: two download pages from a local server (one reads the body on the
loop thread: a blocking call), one computes a checksum in a tight loop (a slow step), and
one only sleeps. Runs offline in about half a second:

    looptrace run --mode full --threshold-ms 20 --html report.html \
        --chrome-trace trace.json docs/examples/report_demo.py
"""

import asyncio
import http.server
import threading
import time
import urllib.request


class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"x" * 2048
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(0.08)  # the body comes 80 ms after the headers
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def checksum(data: bytes) -> int:
    total = 0
    for byte in data * 40:
        total = (total * 31 + byte) % 1_000_003
    return total


async def download_blocking(url: str) -> int:
    loop = asyncio.get_running_loop()
    response = await loop.run_in_executor(None, urllib.request.urlopen, url)
    return len(response.read())  # the body is read on the loop thread


async def download(url: str) -> int:
    loop = asyncio.get_running_loop()
    response = await loop.run_in_executor(None, urllib.request.urlopen, url)
    return len(await loop.run_in_executor(None, response.read))


async def crunch(after: asyncio.Task) -> None:
    # After the blocking read: had the checksum run while the body was on its way, the
    # body would be there when read() began, and read() would not block.
    await asyncio.wait([after])
    checksum(b"payload" * 2000)


async def heartbeat() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def main(url: str) -> None:
    blocking = asyncio.create_task(download_blocking(url), name="download-blocking")
    await asyncio.gather(
        blocking,
        asyncio.create_task(download(url), name="download"),
        asyncio.create_task(crunch(blocking), name="crunch"),
        asyncio.create_task(heartbeat(), name="heartbeat"),
    )


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    asyncio.run(main(f"http://127.0.0.1:{server.server_address[1]}/"))
    server.shutdown()
