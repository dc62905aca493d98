#!/usr/bin/env python3
"""Instructions per aiohttp request, counted by callgrind: the server's cost per request
with and without looptrace, free of the machine's noise.

    python benchmarks/instructions_aiohttp.py      # needs valgrind and the bench extra

On a shared 2-core machine a 2% difference in requests per second is below what A/B runs
with wrk can resolve (their pairs spread by 20-50%). This counts instead what the server
executes: an aiohttp server runs under callgrind and serves N requests of ``/hello`` (and
of ``/json``, which gathers two coroutines), sent one after another on one keep-alive
connection by a client in another process; the difference between two values of N divided
by the difference in requests is the cost of one request, without start-up and shutdown.
Instructions are not time (a clock read costs few instructions and tens of nanoseconds),
so this complements the A/B figures of overhead.py.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time

import callgrind
import harness

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "none": "",
    "looptrace": "import looptrace; looptrace.install()",
    "looptrace_full": "import looptrace; looptrace.install(mode='full')",
}

SERVER = """
import asyncio, json, os, sys
from aiohttp import web
{install}

target = int(sys.argv[1])
port_file = sys.argv[2]
served = 0


async def part(n):
    await asyncio.sleep(0)
    return n


async def count():
    global served
    served += 1
    if served == target:
        asyncio.get_running_loop().call_soon(done.set)


async def hello(request):
    await count()
    return web.Response(text="Hello, world")


async def json_view(request):
    a, b = await asyncio.gather(part(1), part(2))
    await count()
    return web.json_response({{"a": a, "b": b}})


async def main():
    global done
    done = asyncio.Event()
    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/json", json_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    await done.wait()
    await runner.cleanup()


asyncio.run(main())
os._exit(0)
"""

SIZES = (200, 600)
PATHS = ("/hello", "/json")


def serve(python: str, install: str, path: str, requests: int) -> int:
    """Instructions the server executed to start, serve ``requests`` and stop."""
    with tempfile.TemporaryDirectory() as work:
        program = os.path.join(work, "server.py")
        port_file = os.path.join(work, "port")
        with open(program, "w") as f:
            f.write(SERVER.format(install=install))
        server = subprocess.Popen(
            [*callgrind.COMMAND, python, program, str(requests), port_file],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=callgrind.ENV)
        try:
            deadline = time.monotonic() + 300
            while not os.path.exists(port_file):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start:\n{server.communicate()[1]}")
                time.sleep(0.05)
            with open(port_file) as f:
                port = int(f.read())
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            for _ in range(requests):
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"{path} answered {response.status}")
            connection.close()
            _, stderr = server.communicate(timeout=300)
        finally:
            if server.poll() is None:
                server.kill()
    return callgrind.total(stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", help="results file (default benchmarks/results/"
                                       "instructions-aiohttp-py<version>.json)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("instructions_aiohttp: valgrind is missing (apt-get install valgrind)",
              file=sys.stderr)
        return 2
    version = callgrind.python_version(args.python)
    results: dict[str, dict[str, float]] = {}
    for path in PATHS:
        for name, install in CONFIGS.items():
            low, high = (serve(args.python, install, path, n) for n in SIZES)
            per_request = (high - low) / (SIZES[1] - SIZES[0])
            results.setdefault(path, {})[name] = per_request
            print(f"{path:<7} {name:<16} {per_request:,.0f} instructions per request",
                  flush=True)
    markdown = callgrind.table(
        f"Python {version}, callgrind, instructions per aiohttp request (server side), "
        "added over no tracer in parentheses.", PATHS, CONFIGS, results)
    out = args.json or os.path.join(
        HERE, "results", f"instructions-aiohttp-py{'.'.join(version.split('.')[:2])}.json")
    harness.save_with_table(
        out, {"python": version, "per_request": results, "sizes": SIZES}, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
