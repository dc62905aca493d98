"""A real Jaeger v2 for the end-to-end tests: built once from the Go module proxy by
``scripts/install-jaeger.sh`` (cached outside the repository), started on free loopback
ports with in-memory storage (``jaeger-config.yaml``), ready when its health endpoint says
so. When Jaeger cannot be built or started the tests FAIL with the reason: they are never
skipped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("jaeger-config.yaml")
_BUILD_TIMEOUT_S = 900  # a first build fetches and compiles Jaeger: minutes
_START_TIMEOUT_S = 60


@dataclass
class Jaeger:
    """A running Jaeger: where to send OTLP, where to query."""

    otlp_endpoint: str
    query_url: str
    log: Path

    def get(self, path: str) -> tuple[int, Any]:
        """GET ``path`` on the query API: (HTTP status, decoded JSON body)."""
        try:
            with urllib.request.urlopen(self.query_url + path, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            return error.code, json.loads(body) if body else None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _jaeger_binary() -> str:
    script = ROOT / "scripts" / "install-jaeger.sh"
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                              timeout=_BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script} did not finish building Jaeger in {_BUILD_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(f"Jaeger is needed by the end-to-end tests and {script} could not "
                    f"install it (exit {done.returncode}):\n{done.stderr[-3000:]}")
    binary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{script} printed {binary!r}, which is not an executable")
    return binary


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(json.loads(response.read()).get("status") == "StatusOK")
    except (OSError, ValueError):
        return False


def _start(binary: str, log: Path) -> tuple[subprocess.Popen[bytes], int, int] | None:
    """Start Jaeger on free ports; None if it exited (a port taken meanwhile)."""
    query, query_grpc, health, otlp = _free_ports(4)
    env = {**os.environ,
           "LOOPTRACE_JAEGER_QUERY_PORT": str(query),
           "LOOPTRACE_JAEGER_QUERY_GRPC_PORT": str(query_grpc),
           "LOOPTRACE_JAEGER_HEALTH_PORT": str(health),
           "LOOPTRACE_JAEGER_OTLP_HTTP_PORT": str(otlp)}
    with open(log, "w") as out:
        process = subprocess.Popen([binary, "--config", str(CONFIG)], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + _START_TIMEOUT_S
    health_url = f"http://127.0.0.1:{health}/status"
    while not _healthy(health_url):
        if process.poll() is not None:
            return None
        if time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"Jaeger did not become healthy on {health_url} in "
                        f"{_START_TIMEOUT_S} s; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return process, query, otlp


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """A Jaeger listening only on 127.0.0.1, for this test session."""
    binary = _jaeger_binary()
    log = tmp_path_factory.mktemp("jaeger") / "jaeger.log"
    for _ in range(3):  # the free ports may be taken before Jaeger binds them
        started = _start(binary, log)
        if started is not None:
            break
    else:
        pytest.fail(f"Jaeger ({binary}) exited at start, three times; its log:\n"
                    f"{log.read_text()[-3000:]}")
    process, query, otlp = started
    try:
        yield Jaeger(f"http://127.0.0.1:{otlp}", f"http://127.0.0.1:{query}", log)
    finally:
        _stop(process)
