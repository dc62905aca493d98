"""Real servers started the way they are deployed, under ``looptrace run``: uvicorn with
``--workers 2`` (asyncio and uvloop), gunicorn with ``UvicornWorker`` and with aiohttp's
``GunicornWebWorker``. Requests to a blocking endpoint over loopback, then SIGTERM, as a
process manager stops a service; every worker's blocks must be in the combined report,
at the handler's line."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parent / "deploy_apps"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 30) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        pid: int = json.loads(response.read())["pid"]
        return pid


@dataclass
class Served:
    stderr: str
    status: int
    report: dict[str, object]
    worker_pids: set[int]


@contextmanager
def _server(command: list[str], port: int, report: Path) -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "looptrace", "run", "--threshold-ms", "50", "--json",
         str(report), *command], cwd=APPS, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90  # two workers importing FastAPI on a busy machine
        while True:
            try:
                _get(f"http://127.0.0.1:{port}/ping", timeout=5)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (
                    process.stderr.read() if process.stderr else "server did not start")
                time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def serve_and_block(command: list[str], port: int, tmp_path: Path) -> Served:
    """Start the server, send pairs of concurrent requests to /block until both workers
    answered (a worker busy in a block cannot accept, so the other one does), stop it
    with SIGTERM and read the combined report."""
    report = tmp_path / "report.json"
    pids: set[int] = set()
    with _server(command, port, report) as process, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        # Until both answered: the second worker may still be starting (60 s: a busy machine).
        until = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < until:
            pids.update(pool.map(_get, [f"http://127.0.0.1:{port}/block"] * 2))
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    return Served(stderr, process.returncode, json.loads(report.read_text()), pids)


def _handler_line(app: str) -> int:
    text = (APPS / app).read_text().splitlines()
    return next(n for n, line in enumerate(text, start=1) if "HANDLER_BLOCK" in line)


def check_every_worker(served: Served, app: str) -> None:
    assert len(served.worker_pids) == 2, served.worker_pids
    blocks = served.report["blocks"]
    assert isinstance(blocks, list)
    for pid in served.worker_pids:
        mine = [b for b in blocks if b["thread"].startswith(f"pid {pid}:")]
        assert mine, f"no block of worker {pid} in the report:\n{served.stderr}"
        at_handler = [b for b in mine if b["site"] and b["site"]["line"] == _handler_line(app)
                      and b["site"]["file"] == str(APPS / app)]
        assert at_handler, [b["site"] for b in mine]
        assert all(b["call"] == "time.sleep" for b in at_handler)
    assert "left no report" not in served.stderr, served.stderr
    assert "processes traced" in served.stderr, served.stderr


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_uvicorn_workers(tmp_path: Path, loop: str) -> None:
    """``uvicorn app:app --workers 2``: workers are spawned interpreters, traced through
    the bootstrap directory; uvicorn's master stops them on SIGTERM."""
    port = _free_port()
    served = serve_and_block(["-m", "uvicorn", "fastapi_app:app", "--workers", "2",
                              "--loop", loop, "--port", str(port), "--log-level", "warning",
                              "--timeout-worker-healthcheck", "60"],
                             port, tmp_path)
    assert served.status == 0, served.stderr
    check_every_worker(served, "fastapi_app.py")
    kinds = {loop_["kind"] for loop_ in served.report["loops"]}  # type: ignore[attr-defined]
    assert any(("uvloop" in k) == (loop == "uvloop") for k in kinds), kinds


@pytest.mark.parametrize(("worker", "app"), [
    ("uvicorn.workers.UvicornWorker", "fastapi_app"),
    ("aiohttp.GunicornWebWorker", "aiohttp_app"),
])
def test_gunicorn_workers(tmp_path: Path, worker: str, app: str) -> None:
    """``gunicorn -w 2 -k WORKER``: workers are forked from the arbiter and traced afresh
    in the child; the arbiter stops them on SIGTERM and combines their reports."""
    port = _free_port()
    served = serve_and_block(["-m", "gunicorn", f"{app}:app", "-w", "2", "-k", worker, "-b",
                              f"127.0.0.1:{port}", "--graceful-timeout", "20",
                              "--log-level", "warning"], port, tmp_path)
    assert served.status == 0, served.stderr
    check_every_worker(served, f"{app}.py")
