"""Blocking patterns of real programs, each with its known line and its known duration.

Every pattern blocks the loop once per run, on the line marked ``# BLOCK`` in its own
function, and measures the true duration of the blocking part itself (``Truth.block``).
Sizes aim at about 100 ms on an idle machine (twice the 50 ms threshold the benchmark
uses); the measured truth is what the report is compared with, whatever the machine did.

Categories: ``c-gil`` (C code that holds the GIL, or releases it but still runs on the loop
thread), ``cpu`` (Python loops), ``io`` (sync clients, files, pipes, sockets, subprocesses),
``sync`` (locks, queues, futures), ``gc``, ``thread-gil`` (a worker thread holding the GIL
stalls the loop: the line is the worker's) and ``shape`` (where the blocking code runs:
plain callbacks, timers, async generators, done-callbacks).
"""

from __future__ import annotations

import asyncio
import bz2
import collections
import concurrent.futures
import decimal
import gc
import hashlib
import http.client
import inspect
import json
import lzma
import math
import os
import pickle
import queue
import re
import select
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.abspath(__file__)


@dataclass
class Truth:
    """What a pattern's run really did: where and for how long the blocking part ran."""

    start_ns: int = 0
    duration_ns: int = 0
    cpu_ns: int = 0
    """This thread's CPU time during the block (sizes are calibrated on it: wall time on a
    shared machine says little)."""

    @contextmanager
    def block(self) -> Iterator[None]:
        start, cpu = time.perf_counter_ns(), time.thread_time_ns()
        try:
            yield
        finally:
            self.start_ns, self.duration_ns = start, time.perf_counter_ns() - start
            self.cpu_ns = time.thread_time_ns() - cpu


@dataclass
class Pattern:
    name: str
    category: str
    run: Callable[[Truth, Env], Awaitable[None]]
    line: int = 0
    needs: str | None = None


@dataclass
class Env:
    """What patterns share: a loopback HTTP server, data made once, a scratch directory."""

    http_port: int = 0
    tmp: str = ""
    data: dict[str, Any] = field(default_factory=dict)


PATTERNS: list[Pattern] = []


def pattern(name: str, category: str, needs: str | None = None
            ) -> Callable[[Callable[[Truth, Env], Awaitable[None]]],
                          Callable[[Truth, Env], Awaitable[None]]]:
    def register(fn: Callable[[Truth, Env], Awaitable[None]]
                 ) -> Callable[[Truth, Env], Awaitable[None]]:
        PATTERNS.append(Pattern(name, category, fn, _marked_line(fn), needs))
        return fn
    return register


def _marked_line(fn: Any) -> int:
    """The line marked ``# BLOCK`` in ``fn`` (0: none; the block is in a helper)."""
    lines, first = inspect.getsourcelines(fn)
    for offset, text in enumerate(lines):
        if "# BLOCK" in text:
            return first + offset
    return 0


# -- C code that holds the GIL (or runs on the loop thread without it)

@pattern("sorted", "c-gil")
async def p_sorted(t: Truth, env: Env) -> None:
    data = env.data["ints"]
    with t.block():
        sorted(data)  # BLOCK


@pattern("re.match backtracking", "c-gil")
async def p_re(t: Truth, env: Env) -> None:
    text = "a" * env.data["re_n"] + "!"
    with t.block():
        re.match(r"(a|aa)+$", text)  # BLOCK


@pattern("json.dumps", "c-gil")
async def p_json_dumps(t: Truth, env: Env) -> None:
    payload = env.data["payload"]
    with t.block():
        json.dumps(payload)  # BLOCK


@pattern("json.loads", "c-gil")
async def p_json_loads(t: Truth, env: Env) -> None:
    text = env.data["payload_json"]
    with t.block():
        json.loads(text)  # BLOCK


@pattern("pickle.dumps", "c-gil")
async def p_pickle_dumps(t: Truth, env: Env) -> None:
    payload = env.data["payload_to_pickle"]
    with t.block():
        pickle.dumps(payload)  # BLOCK


@pattern("pickle.loads", "c-gil")
async def p_pickle_loads(t: Truth, env: Env) -> None:
    blob = env.data["payload_pickle"]
    with t.block():
        pickle.loads(blob)  # BLOCK


@pattern("zlib.compress", "c-gil")
async def p_zlib(t: Truth, env: Env) -> None:
    blob = env.data["blob_zlib"]
    with t.block():
        zlib.compress(blob, 9)  # BLOCK


@pattern("bz2.compress", "c-gil")
async def p_bz2(t: Truth, env: Env) -> None:
    blob = env.data["blob_bz2"]
    with t.block():
        bz2.compress(blob)  # BLOCK


@pattern("lzma.compress", "c-gil")
async def p_lzma(t: Truth, env: Env) -> None:
    blob = env.data["blob_lzma"]
    with t.block():
        lzma.compress(blob)  # BLOCK


@pattern("hashlib.sha256", "c-gil")
async def p_sha256(t: Truth, env: Env) -> None:
    blob = env.data["blob_sha"]
    with t.block():
        hashlib.sha256(blob).hexdigest()  # BLOCK


@pattern("hashlib.pbkdf2_hmac", "c-gil")
async def p_pbkdf2(t: Truth, env: Env) -> None:
    rounds = env.data["pbkdf2_rounds"]
    with t.block():
        hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", rounds)  # BLOCK


@pattern("sqlite3 query", "c-gil")
async def p_sqlite(t: Truth, env: Env) -> None:
    db = env.data["sqlite"]
    n = env.data["sqlite_n"]
    with t.block():
        db.execute("SELECT count(*) FROM t a, t b WHERE a.x + b.x < ?", (n,)).fetchone()  # BLOCK


@pattern("decimal arithmetic", "c-gil")
async def p_decimal(t: Truth, env: Env) -> None:
    digits = env.data["decimal_digits"]
    with t.block(), decimal.localcontext(decimal.Context(prec=digits)):
        decimal.Decimal(2).sqrt()  # BLOCK


@pattern("math.factorial", "c-gil")
async def p_factorial(t: Truth, env: Env) -> None:
    n = env.data["factorial_n"]
    with t.block():
        math.factorial(n)  # BLOCK


@pattern("collections.Counter", "c-gil")
async def p_counter(t: Truth, env: Env) -> None:
    words = env.data["words"]
    with t.block():
        collections.Counter(words)  # BLOCK


@pattern("str.join", "c-gil")
async def p_join(t: Truth, env: Env) -> None:
    parts = env.data["parts"]
    with t.block():
        ",".join(parts).encode()  # BLOCK


@pattern("numpy", "c-gil", needs="numpy")
async def p_numpy(t: Truth, env: Env) -> None:
    matrix = env.data["matrix"]
    with t.block():
        matrix @ matrix  # BLOCK


# -- Python CPU work

def busy_python(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i  # BLOCK in busy_python
    return total


@pattern("python loop", "cpu")
async def p_loop(t: Truth, env: Env) -> None:
    n = env.data["loop_n"]
    with t.block():
        total = 0
        for i in range(n):
            total += i * i  # BLOCK


@pattern("statistics-like pure Python", "cpu")
async def p_pure(t: Truth, env: Env) -> None:
    values = env.data["floats"]
    with t.block():
        mean = sum(values) / len(values)
        sum((v - mean) ** 2 for v in values)  # BLOCK


# -- I/O on the loop thread

@pattern("time.sleep", "io")
async def p_sleep(t: Truth, env: Env) -> None:
    with t.block():
        time.sleep(0.1)  # BLOCK


@pattern("urllib.request.urlopen", "io")
async def p_urlopen(t: Truth, env: Env) -> None:
    url = f"http://127.0.0.1:{env.http_port}/delay/100"
    with t.block():
        urllib.request.urlopen(url).read()  # BLOCK


@pattern("http.client", "io")
async def p_http_client(t: Truth, env: Env) -> None:
    with t.block():
        conn = http.client.HTTPConnection("127.0.0.1", env.http_port)
        conn.request("GET", "/delay/100")
        conn.getresponse().read()  # BLOCK
        conn.close()


@pattern("requests.get", "io", needs="requests")
async def p_requests(t: Truth, env: Env) -> None:
    import requests

    with t.block():
        requests.get(f"http://127.0.0.1:{env.http_port}/delay/100", timeout=10)  # BLOCK


@pattern("socket.recv", "io")
async def p_socket(t: Truth, env: Env) -> None:
    left, right = socket.socketpair()
    timer = threading.Timer(0.1, right.send, (b"x",))
    timer.start()
    await asyncio.sleep(0)  # the setup is a step of its own
    try:
        with t.block():
            left.recv(1)  # BLOCK
    finally:
        timer.join()
        left.close()
        right.close()


@pattern("select.select", "io")
async def p_select(t: Truth, env: Env) -> None:
    left, right = socket.socketpair()
    try:
        with t.block():
            select.select([left], [], [], 0.1)  # BLOCK
    finally:
        left.close()
        right.close()


@pattern("os.read of a pipe", "io")
async def p_pipe(t: Truth, env: Env) -> None:
    r, w = os.pipe()
    timer = threading.Timer(0.1, os.write, (w, b"x"))
    timer.start()
    await asyncio.sleep(0)
    try:
        with t.block():
            os.read(r, 1)  # BLOCK
    finally:
        timer.join()
        os.close(r)
        os.close(w)


@pattern("os.fsync of a written file", "io")
async def p_file(t: Truth, env: Env) -> None:
    path = os.path.join(env.tmp, "detection.bin")
    with open(path, "wb") as f:
        f.write(env.data["file_blob"])
        await asyncio.sleep(0)  # the write is a step of its own, the fsync the block
        with t.block():
            os.fsync(f.fileno())  # BLOCK
        # Closing and unlinking 30 MB are steps of their own: in the fsync's step they made
        # its block 35-45% longer than the call.
        await asyncio.sleep(0)
    os.unlink(path)


@pattern("subprocess.run", "io")
async def p_subprocess(t: Truth, env: Env) -> None:
    with t.block():
        subprocess.run(["sleep", "0.1"], check=True)  # BLOCK


# -- waiting for other threads

@pattern("threading.Lock", "sync")
async def p_lock(t: Truth, env: Env) -> None:
    lock = threading.Lock()
    lock.acquire()
    timer = threading.Timer(0.1, lock.release)
    timer.start()
    await asyncio.sleep(0)
    with t.block():
        lock.acquire()  # BLOCK
    lock.release()
    timer.join()


@pattern("queue.Queue.get", "sync")
async def p_queue(t: Truth, env: Env) -> None:
    q: queue.Queue[int] = queue.Queue()
    timer = threading.Timer(0.1, q.put, (1,))
    timer.start()
    await asyncio.sleep(0)
    with t.block():
        q.get()  # BLOCK
    timer.join()


@pattern("concurrent.futures result()", "sync")
async def p_future(t: Truth, env: Env) -> None:
    pool: concurrent.futures.ThreadPoolExecutor = env.data["pool"]
    future = pool.submit(time.sleep, 0.1)
    await asyncio.sleep(0)
    with t.block():
        future.result()  # BLOCK


# -- garbage collection

@pattern("gc.collect of a big heap", "gc")
async def p_gc(t: Truth, env: Env) -> None:
    with t.block():
        gc.collect()  # BLOCK


# -- another thread holds the GIL

def _hold_gil(text: str) -> None:
    re.match(r"(a|aa)+$", text)  # BLOCK in _hold_gil


@pattern("to_thread(re.match): GIL held by a worker", "thread-gil")
async def p_thread_gil(t: Truth, env: Env) -> None:
    text = "a" * env.data["re_n"] + "!"
    with t.block():
        await asyncio.to_thread(_hold_gil, text)


# -- where the blocking code runs

def _callback_work(t: Truth, n: int, done: asyncio.Future[None]) -> None:
    with t.block():
        busy_python(n)
    done.set_result(None)


@pattern("plain callback (call_soon)", "shape")
async def p_callback(t: Truth, env: Env) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.call_soon(_callback_work, t, env.data["loop_n"], done)
    await done


@pattern("timer callback (call_later)", "shape")
async def p_timer(t: Truth, env: Env) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.005, _callback_work, t, env.data["loop_n"], done)
    await done


async def _agen(t: Truth, n: int) -> Any:
    for _ in range(2):
        yield 1
    with t.block():
        busy_python(n)
    yield 2


@pattern("async generator body", "shape")
async def p_agen(t: Truth, env: Env) -> None:
    async for _ in _agen(t, env.data["loop_n"]):
        pass


@pattern("done-callback", "shape")
async def p_done_callback(t: Truth, env: Env) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    source: asyncio.Future[None] = loop.create_future()
    n = env.data["loop_n"]
    source.add_done_callback(lambda _: _callback_work(t, n, done))
    loop.call_soon(source.set_result, None)
    await done


# Patterns whose line is in a helper, not in the pattern function itself.
HELPER_LINES = {
    "plain callback (call_soon)": busy_python,
    "timer callback (call_later)": busy_python,
    "async generator body": busy_python,
    "done-callback": busy_python,
    "to_thread(re.match): GIL held by a worker": _hold_gil,
}


def expected_line(p: Pattern) -> int:
    helper = HELPER_LINES.get(p.name)
    return _marked_line(helper) if helper is not None else p.line


def make_env(http_port: int, tmp: str, scale: float = 1.0) -> Env:
    """Data sized for about 100 ms per block on an idle machine (``scale`` multiplies)."""
    import random

    rng = random.Random(7)

    def payload(n: int) -> list[dict[str, Any]]:
        return [{"id": i, "name": f"user-{i}", "tags": ["a", "b", "c"], "score": i * 0.5}
                for i in range(int(n * scale))]

    data: dict[str, Any] = {
        "ints": [rng.random() for _ in range(int(260_000 * scale))],
        "re_n": 28,
        "sqlite_n": 10 ** 9,
        "payload": payload(33_000),
        "payload_json": json.dumps(payload(11_000)),
        "payload_pickle": pickle.dumps(payload(64_000)),
        "payload_to_pickle": payload(75_000),
        "blob_zlib": rng.randbytes(int(2_700_000 * scale)),
        "blob_bz2": rng.randbytes(int(450_000 * scale)),
        "blob_lzma": rng.randbytes(int(260_000 * scale)),
        "blob_sha": bytes(int(100_000_000 * scale)),
        "pbkdf2_rounds": int(170_000 * scale),
        "decimal_digits": int(16_000 * scale),
        "factorial_n": int(60_000 * scale),
        "words": [f"w{rng.randrange(50_000)}" for _ in range(int(220_000 * scale))],
        "parts": [f"part-{i}" for i in range(int(3_000_000 * scale))],
        "loop_n": int(1_000_000 * scale),
        "floats": [rng.random() for _ in range(int(600_000 * scale))],
        "file_blob": rng.randbytes(int(30_000_000 * scale)),
        "pool": concurrent.futures.ThreadPoolExecutor(2),
        "heap": [[i] for i in range(int(300_000 * scale))],
    }
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("CREATE TABLE t (x INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(int(950 * scale))])
    data["sqlite"] = db
    try:
        import numpy

        data["matrix"] = numpy.random.default_rng(7).random((600, 600))
    except ImportError:
        pass
    return Env(http_port=http_port, tmp=tmp or tempfile.gettempdir(), data=data)
