"""The cost of tracing a uvicorn worker: requests per second and server CPU time per
request on a CPU-bound endpoint and on /hello, with and without ``looptrace run``.

    python benchmarks/uvicorn_worker.py [--rounds 5] [--seconds 5] [--connections 8]
                                        [--out benchmarks/results/uvicorn-worker-py3.11]

The server (one uvicorn process, FastAPI, ``--loop asyncio``) runs pinned to CPU 1 with
``taskset``; the load generator (this process: asyncio, keep-alive HTTP/1.1 connections,
one request in flight on each) is pinned to CPU 0. Each round runs both variants in a
fresh server, in alternating order (A/B then B/A), each after a warm-up; the result is
the median of the per-round ratios (traced / untraced) with their min and max. CPU time
per request is the server's utime + stime (``/proc/PID/stat``) over the measured window
divided by the requests answered in it. Needs fastapi, uvicorn and two CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

APP = '''
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/hello", response_class=PlainTextResponse)
async def hello() -> str:
    return "hello"


@app.get("/work", response_class=PlainTextResponse)
async def work() -> str:
    # About a millisecond of pure-Python CPU work on the loop: a CPU-bound endpoint.
    total = 0
    for i in range(20_000):
        total += i * i
    return str(total)
'''

PATHS = ("/hello", "/work")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


async def _client(port: int, path: str, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").encode()
    try:
        while time.perf_counter() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def _load(port: int, path: str, seconds: float, connections: int) -> int:
    counts = [0]
    until = time.perf_counter() + seconds
    await asyncio.gather(*(_client(port, path, until, counts) for _ in range(connections)))
    return counts[0]


def _start(traced: bool, app_dir: str, port: int) -> subprocess.Popen[bytes]:
    server = ["-m", "uvicorn", "bench_app:app", "--app-dir", app_dir, "--port", str(port),
              "--loop", "asyncio", "--http", "h11", "--log-level", "warning"]
    prefix = ([sys.executable, "-m", "looptrace", "run", "--quiet", "--threshold-ms", "50"]
              if traced else [sys.executable])
    process = subprocess.Popen(["taskset", "-c", "1", *prefix, *server],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise harness.BenchError("the server did not start") from None
            time.sleep(0.1)


def measure(traced: bool, app_dir: str, seconds: float, connections: int
            ) -> dict[str, dict[str, float]]:
    port = _free_port()
    process = _start(traced, app_dir, port)
    try:
        figures = {}
        for path in PATHS:
            asyncio.run(_load(port, path, 1.0, connections))  # warm-up
            before = _cpu_ticks(process.pid)
            started = time.perf_counter()
            answered = asyncio.run(_load(port, path, seconds, connections))
            wall = time.perf_counter() - started
            cpu_s = (_cpu_ticks(process.pid) - before) / os.sysconf("SC_CLK_TCK")
            figures[path] = {"requests": answered, "req_per_s": answered / wall,
                             "cpu_us_per_request": cpu_s / max(answered, 1) * 1e6}
        return figures
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _ratio_text(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}× ({min(values):.3f}–{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    if args.rounds < 2 or (os.cpu_count() or 1) < 2:
        print("uvicorn_worker.py: needs --rounds 2 or more and two CPUs", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {0})
    load_before = os.getloadavg()[0]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as app_dir:
        Path(app_dir, "bench_app.py").write_text(APP)
        for number in range(args.rounds):
            order = (False, True) if number % 2 == 0 else (True, False)
            pair = {("traced" if traced else "baseline"):
                    measure(traced, app_dir, args.seconds, args.connections)
                    for traced in order}
            runs.append(pair)
            print(json.dumps({"round": number + 1, **pair}), flush=True)
    rows = ["| endpoint | req/s traced/untraced | CPU per request traced/untraced |",
            "|---|---|---|"]
    summary = {}
    for path in PATHS:
        rps = [r["traced"][path]["req_per_s"] / r["baseline"][path]["req_per_s"] for r in runs]
        cpu = [r["traced"][path]["cpu_us_per_request"] /
               r["baseline"][path]["cpu_us_per_request"] for r in runs]
        summary[path] = {"req_per_s_ratio": _ratio_text(rps), "cpu_ratio": _ratio_text(cpu)}
        rows.append(f"| {path} | {_ratio_text(rps)} | {_ratio_text(cpu)} |")
    table = "\n".join(rows)
    print(f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    if args.out:
        document = {"benchmark": "uvicorn_worker", "when": harness.now_iso(),
                    "machine": harness.machine(), "python": sys.version.split()[0],
                    "rounds": args.rounds, "seconds": args.seconds,
                    "connections": args.connections, "runs": runs, "summary": summary,
                    "load_average": [load_before, os.getloadavg()[0]]}
        harness.save_with_table(f"{args.out}.json", document, table + "\n")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
