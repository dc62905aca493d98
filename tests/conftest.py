"""Shared fixtures: a pristine-asyncio guard around every test, and real loopback servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import http.server
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from asyncio import base_events, events, runners
from collections.abc import Iterator

import pytest

import looptrace
from helpers.busy import busy_cpus, competitors_asked
from looptrace._hooks.probes import CATALOGUE

# Tests send SIGINT to the programs they start, as a user's Ctrl-C. A shell that starts a
# command in the background without job control (``cmd &`` in a script, ``nohup``) starts
# it with SIGINT ignored, and every child inherits that: its Ctrl-C would be lost (seen in
# a CI run started with ``nohup``). The children get the disposition a terminal gives.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _asyncio_state() -> dict[str, object]:
    """Every attribute looptrace may patch, as it is now."""
    state: dict[str, object] = {
        "Handle._run": vars(events.Handle)["_run"],
        "events._set_running_loop": events._set_running_loop,
        "asyncio._set_running_loop": asyncio._set_running_loop,
        "Runner._lazy_init": vars(runners.Runner)["_lazy_init"],
        "BaseEventLoop.close": vars(base_events.BaseEventLoop)["close"],
        "BaseEventLoop.run_in_executor": vars(base_events.BaseEventLoop)["run_in_executor"],
        "events.set_event_loop_policy": events.set_event_loop_policy,
        "asyncio.set_event_loop_policy": asyncio.set_event_loop_policy,
    }
    policy = events._event_loop_policy
    if policy is not None:
        state["policy.new_event_loop"] = vars(policy).get("new_event_loop")
    for name, module_name, path in CATALOGUE:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        owner: object = module
        *parents, attribute = path.split(".")
        for part in parents:
            owner = getattr(owner, part, None)
        if owner is not None:
            state[name] = vars(owner).get(attribute) if hasattr(owner, "__dict__") else None
    return state


_PRISTINE = _asyncio_state()


@pytest.fixture(scope="session", autouse=True)
def busy_machine() -> Iterator[None]:
    """``LOOPTRACE_TEST_BUSY=1``: every CPU is kept busy by competing processes for the
    whole session (the CI load pass: verdicts must not depend on load)."""
    count = competitors_asked()
    if count == 0:
        yield
        return
    with busy_cpus(count):
        yield


@pytest.fixture(autouse=True)
def asyncio_pristine() -> Iterator[None]:
    """Every test starts and ends with asyncio exactly as Python made it."""
    assert not looptrace.is_installed(), "a previous test left looptrace installed"
    before = _asyncio_state()
    common = before.keys() & _PRISTINE.keys()
    assert {k: before[k] for k in common} == {k: _PRISTINE[k] for k in common}
    assert before.get("policy.new_event_loop") is None
    yield
    if looptrace.is_installed():
        looptrace.uninstall()
        pytest.fail("the test left looptrace installed")
    after = _asyncio_state()
    changed = sorted(k for k in after if after[k] is not before.get(k, after[k]))
    assert not changed, f"attributes left patched: {changed}"


class SlowBodyHandler(http.server.BaseHTTPRequestHandler):
    """``GET /delay/<ms>``: headers at once, the body ``<ms>`` milliseconds later."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        delay_ms = 0
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "delay":
            delay_ms = int(parts[1])
        body = b"x" * 64
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.flush()
        time.sleep(delay_ms / 1000)
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def slow_http_server() -> Iterator[str]:
    """Base URL of a loopback HTTP server whose bodies arrive after ``/delay/<ms>``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowBodyHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="slow-http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


# Imported so the first snapshot already holds their (probed) attributes: a module that
# appears later must not look like an attribute looptrace patched.
_ = (concurrent.futures, http.client, queue, subprocess, urllib.request)
