"""The seed pattern told as one story, and a thread pool too small for its work.

    looptrace run --mode full docs/examples/executor_story.py

Part 1: three tasks offload ``urlopen`` to the default executor, then read the body on the
loop thread (a local server sends it 150 ms after the headers): each task's executor row
and its block carry the same task name. Part 2: twelve 50 ms jobs on a pool of two workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import threading
import time
import urllib.request


class SlowBody(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.flush()
        time.sleep(0.15)  # the headers are out; the body comes later
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


async def fetch(url: str) -> bytes:
    loop = asyncio.get_running_loop()
    response = await loop.run_in_executor(None, urllib.request.urlopen, url)
    body: bytes = response.read()  # blocks the loop thread until the body arrives
    response.close()
    return body


def resize(n: int) -> int:
    time.sleep(0.05)  # stands for 50 ms of blocking work
    return n


async def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowBody)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    await asyncio.gather(*(asyncio.create_task(fetch(url), name=f"fetch-{i}")
                           for i in range(3)))
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, resize, i) for i in range(12)))
    server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
