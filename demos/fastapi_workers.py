"""Every worker of a FastAPI service: ``looptrace run -m uvicorn app:app --workers 2``.

uvicorn's ``--workers`` spawns fresh interpreters; each one runs its own event loop and
serves its share of the connections. looptrace follows them (its bootstrap directory on
``PYTHONPATH``), each worker writes its own report, and the first process combines them.
This demo does what a process manager does: start the service (under ``looptrace run``,
on 127.0.0.1), send it requests from a few clients (mostly ``/hello``, some ``/checkout``,
whose handler blocks its worker's loop for 120 ms), stop it with SIGTERM, then read the
combined report: every worker's blocks, at the line that blocked.

    python demos/fastapi_workers.py [--quick]

Needs FastAPI and uvicorn: ``pip install fastapi 'uvicorn[standard]'``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVICE = HERE / "fastapi_service.py"
_START_TIMEOUT_S = 60


@dataclass
class Result:
    """What the clients saw and what looptrace reported."""

    answered_by: Counter[int] = field(default_factory=Counter)  # worker pid -> /checkout
    requests: Counter[str] = field(default_factory=Counter)
    report: dict[str, object] = field(default_factory=dict)
    summary: str = ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as response:
        pid: int = json.loads(response.read())["pid"]
        return pid


def _start(port: int, report: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-m", "looptrace", "run", "--threshold-ms", "50",
               "--json", str(report), "-m", "uvicorn", "fastapi_service:app",
               "--app-dir", str(HERE), "--workers", "2", "--port", str(port),
               "--log-level", "warning",
               # uvicorn kills a worker that does not answer its health check in 5 s: a
               # worker still importing FastAPI on a busy machine would be one.
               "--timeout-worker-healthcheck", "60"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            _get(f"http://127.0.0.1:{port}/hello")
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                sys.exit(f"the service did not start: {process.communicate()[1][-2000:]}")
            time.sleep(0.2)


def _load(port: int, requests: int, result: Result) -> None:
    """Four clients; every fourth request is a /checkout. Until both workers served a
    /checkout, more requests follow (the second worker may still be starting)."""
    rng = random.Random(7)
    paths = ["/checkout" if rng.random() < 0.25 else "/hello" for _ in range(requests)]
    deadline = time.monotonic() + _START_TIMEOUT_S
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while True:
            pids = pool.map(_get, [f"http://127.0.0.1:{port}{p}" for p in paths])
            for path, pid in zip(paths, pids, strict=True):
                result.requests[path] += 1
                if path == "/checkout":
                    result.answered_by[pid] += 1
            if len(result.answered_by) >= 2 or time.monotonic() > deadline:
                return
            paths = ["/checkout"] * 4


def run(quick: bool = False) -> Result:
    """Start, load, stop with SIGTERM; the combined report and the summary."""
    result = Result()
    port = _free_port()
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        process = _start(port, report)
        try:
            _load(port, 16 if quick else 40, result)
        finally:
            process.send_signal(signal.SIGTERM)
            _, result.summary = process.communicate(timeout=60)
        result.report = json.loads(report.read_text())
    return result


def verdict(result: Result) -> list[str]:
    """looptrace's findings, one line each."""
    blocks = [b for b in result.report["blocks"]  # type: ignore[attr-defined]
              if b["site"] and b["site"]["file"] == str(SERVICE)]
    lines = []
    for (line, function, call), count in Counter(
            (b["site"]["line"], b["site"]["function"], b["call"]) for b in blocks).items():
        workers = {b["thread"].split(":")[0] for b in blocks if b["site"]["line"] == line}
        lines.append(f"looptrace: {count} blocks {call} at line {line} in {function}, "
                     f"in {len(workers)} of {len(result.answered_by)} workers")
    traced = [line for line in result.summary.splitlines() if "processes traced" in line]
    return lines + traced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args()
    result = run(args.quick)
    print(f"uvicorn --workers 2 under looptrace run; {sum(result.requests.values())} "
          f"requests from 4 clients: " +
          ", ".join(f"{path} {count}" for path, count in sorted(result.requests.items())))
    for pid, count in sorted(result.answered_by.items()):
        print(f"  worker pid {pid}: {count} /checkout requests")
    for line in verdict(result):
        print(line)


if __name__ == "__main__":
    main()
