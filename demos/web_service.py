"""A web service with one blocking handler and one thread pool too small: every endpoint
gets slow.

An aiohttp server (on 127.0.0.1) has four endpoints:

- ``/hello``: answers at once;
- ``/orders``: awaits two 10 ms asynchronous "database" calls;
- ``/report``: calls an internal HTTP service with ``urllib``, synchronously. That service
  takes 150 ms to answer, and during those 150 ms the loop serves nobody: the ``/hello``
  and ``/orders`` requests in flight wait for it (looptrace's victims of the block);
- ``/thumbnail``: fetches a picture from the image store with a synchronous client (40 ms,
  an I/O wait) in a thread pool of 2 workers, as one would call a synchronous SDK. The
  loop stays free, but a client that loads a gallery asks for 6 thumbnails at once: 6
  calls for 2 workers, so each thumbnail waits for a worker longer than it runs
  (looptrace's pool verdict: the pool, not the work, is the bottleneck).

A load generator (its own thread and event loop, aiohttp client) keeps a few requests in
flight, mostly to ``/hello`` and ``/orders``, sometimes to ``/report`` or a gallery of
thumbnails. It runs twice: against the first version of the service, then against the
fixed one. The fixes: ``/report`` makes the same call in ``asyncio.to_thread``;
``/thumbnail`` fetches the picture with an asynchronous client (aiohttp), no thread at
all. (A bigger pool would also do, as the work waits on I/O, but a pool of one thread per
call in flight makes those threads queue for the GIL instead: on a busy 2-CPU machine,
36 workers waited tens of milliseconds each to start. For CPU work in pure Python more
threads would not help at all; a process pool would.) The latency percentiles show the
blocking handler slowing down *every* endpoint and the thumbnails waiting for the pool;
looptrace shows where, and who paid.

    looptrace run --mode full demos/web_service.py [--quick] [--otlp [ENDPOINT]]
    python demos/web_service.py [--quick] [--otlp [ENDPOINT]]

Executor calls are timed in looptrace's full mode only: run as ``python``, the demo asks
for it itself; under ``looptrace run``, give ``--mode full`` (or ``LOOPTRACE_MODE=full``).

With ``--otlp`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``LOOPTRACE_OTLP`` set), every request
becomes an OpenTelemetry server span sent over OTLP/HTTP (to a Jaeger, for instance); each
block is a span inside the request it blocked, linked to the requests it delayed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import random
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _servers import Recorded, milliseconds, recorded, serve

import looptrace
from looptrace.exporters.text import victim_summary
from looptrace.session import ExecutorSite

try:
    from aiohttp import ClientSession, web
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("web_service.py needs aiohttp: pip install 'looptrace[demos]' "
             "(or pip install '.[demos]' in a checkout)")

BACKEND_DELAY_S = 0.150
PICTURE_DELAY_S = 0.040
MIX = {"/hello": 40, "/orders": 40, "/report": 10, "/thumbnail": 10}
"""How the load generator picks endpoints (weights)."""
GALLERY = 6
"""Thumbnails a client asks for at once when it picks ``/thumbnail`` (a gallery page)."""
POOL_WORKERS = 2
"""The pictures' thread pool in the first version."""
PICTURE_CLIENT = web.AppKey("picture_client", ClientSession)
SERVICE_NAME = "looptrace-demo-web-service"


class _SlowBackend(http.server.BaseHTTPRequestHandler):
    """The internal services: ``/report`` answers after BACKEND_DELAY_S, the image store's
    ``/picture`` after PICTURE_DELAY_S."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm, the body of a kept-alive
    # connection (the async client's) would wait 40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        picture = self.path.startswith("/picture")
        time.sleep(PICTURE_DELAY_S if picture else BACKEND_DELAY_S)
        body = b"\x89PNG picture" if picture else b'{"report": "ready"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def fetch_report(backend: str) -> bytes:
    with urllib.request.urlopen(f"{backend}/report") as response:  # SYNC CALL
        data: bytes = response.read()
    return data


def fetch_picture(backend: str) -> bytes:
    """The image store's synchronous client (think of a cloud SDK): run in a thread."""
    with urllib.request.urlopen(f"{backend}/picture") as response:
        data: bytes = response.read()
    return data


def make_app(backend: str, blocking: bool,
             pictures: ThreadPoolExecutor | None) -> web.Application:
    """The service: ``/report`` blocking or not; ``/thumbnail`` fetching its picture in
    ``pictures``, or with an asynchronous client when there is no pool."""
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def orders(request: web.Request) -> web.Response:
        await asyncio.sleep(0.010)  # two asynchronous database calls: the orders,
        await asyncio.sleep(0.010)  # then their lines
        return web.json_response({"orders": 3})

    async def report(request: web.Request) -> web.Response:
        if blocking:
            data = fetch_report(backend)  # BLOCKS: a synchronous HTTP call in a handler
        else:
            data = await asyncio.to_thread(fetch_report, backend)  # FIXED
        return web.Response(body=data, content_type="application/json")

    async def thumbnail(request: web.Request) -> web.Response:
        if pictures is not None:  # 2 workers, 6 thumbnails at once: they queue
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(pictures, fetch_picture, backend)  # WAITS
        else:  # the fix: an asynchronous client, no thread to wait for
            async with request.app[PICTURE_CLIENT].get(f"{backend}/picture") as response:
                data = await response.read()
        return web.Response(body=data, content_type="image/png")

    async def picture_client(app: web.Application) -> AsyncIterator[None]:
        async with ClientSession() as client:
            app[PICTURE_CLIENT] = client
            yield

    app = web.Application()
    if pictures is None:
        app.cleanup_ctx.append(picture_client)
    app.router.add_get("/hello", hello)
    app.router.add_get("/orders", orders)
    app.router.add_get("/report", report)
    app.router.add_get("/thumbnail", thumbnail)
    return app


@dataclass
class Latencies:
    """Response times per endpoint, in seconds."""

    by_path: dict[str, list[float]] = field(default_factory=dict)

    def percentile(self, path: str, fraction: float) -> float:
        values = sorted(self.by_path.get(path, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(fraction * len(values)))]

    def median(self, path: str) -> float:
        return statistics.median(self.by_path.get(path, [float("nan")]))


async def generate_load(base: str, seconds: float, concurrency: int) -> Latencies:
    """``concurrency`` clients, each sending requests back to back for ``seconds``."""
    latencies = Latencies({path: [] for path in MIX})
    paths, weights = list(MIX), list(MIX.values())
    deadline = time.perf_counter() + seconds

    async def get(session: ClientSession, path: str) -> None:
        started = time.perf_counter()
        async with session.get(base + path) as response:
            await response.read()
            assert response.status == 200, response.status
        latencies.by_path[path].append(time.perf_counter() - started)

    async def client(seed: int, session: ClientSession) -> None:
        pick = random.Random(seed)
        while time.perf_counter() < deadline:
            path = pick.choices(paths, weights)[0]
            if path == "/thumbnail":  # a gallery page: its thumbnails at once, as a browser
                await asyncio.gather(*(get(session, path) for _ in range(GALLERY)))
            else:
                await get(session, path)

    async with ClientSession() as session:
        await asyncio.gather(*(client(seed, session) for seed in range(concurrency)))
    return latencies


def load_from_a_thread(base: str, seconds: float, concurrency: int) -> Latencies:
    """The load generator runs on its own thread and loop, like a separate client would."""
    result: list[Latencies] = []
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(generate_load(base, seconds, concurrency))),
        name="load-generator")
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("the load generator failed (see the traceback above)")
    return result[0]


def started_pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool whose threads are all running. A ThreadPoolExecutor starts a thread
    inside ``submit``, on the caller's thread (here the loop's), and waits for it to boot:
    on a busy machine, that alone can block the loop. The service starts them first."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="pictures")
    everyone = threading.Barrier(workers + 1)
    for _ in range(workers):  # each job holds its thread until all have one
        pool.submit(everyone.wait)
    everyone.wait()
    return pool


async def serve_under_load(backend: str, blocking: bool, pictures: ThreadPoolExecutor | None,
                           seconds: float, concurrency: int) -> Latencies:
    runner = web.AppRunner(make_app(backend, blocking, pictures))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        return await asyncio.to_thread(load_from_a_thread, f"http://{host}:{port}", seconds,
                                       concurrency)
    finally:
        await runner.cleanup()


# -- OpenTelemetry (optional)


def otlp_endpoint(flag: str | None) -> str | None:
    """Where to send spans: --otlp [ENDPOINT], else the standard environment, else none."""
    if flag is not None:
        return flag or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
    looptrace_otlp = os.environ.get("LOOPTRACE_OTLP", "")
    if looptrace_otlp.startswith(("http://", "https://")):
        return looptrace_otlp
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
    if looptrace_otlp.strip().lower() in {"1", "true", "yes", "on"}:
        return "http://localhost:4318"
    return None


@contextmanager
def tracing_requests(endpoint: str) -> Iterator[None]:
    """A TracerProvider exporting over OTLP/HTTP, and a server span for every request."""
    # Imported here: OpenTelemetry is optional, and only --otlp needs it.
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        sys.exit(f"--otlp needs OpenTelemetry ({exc.name} is missing): "
                 "pip install 'looptrace[demos]'")
    service = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=5)))
    trace.set_tracer_provider(provider)
    instrumentor = AioHttpServerInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


# -- the demo


@dataclass
class Round:
    """One load run against one version of the service."""

    record: Recorded
    latencies: Latencies
    executors: list[ExecutorSite] = field(default_factory=list)
    """The executor call sites of this round (full mode), most queue wait first."""


def _calls_so_far() -> dict[tuple[Any, str], int]:
    """Under ``looptrace run`` (one recording for both rounds): the calls of each executor
    site so far, so that a round's sites are the ones whose calls grew during it."""
    if not looptrace.is_installed():
        return {}
    return {(row.site, row.function): row.calls for row in looptrace.snapshot().executors}


def run(seconds: float, concurrency: int, otlp: str | None = None) -> list[Round]:
    """Load the first version of the service, then the fixed one; latencies and looptrace's
    verdicts (blocks, who they delayed, executor calls)."""
    # Full mode: executor calls are timed only there (the victims need no more than the
    # default). Under ``looptrace run`` the command's options rule instead.
    options: dict[str, Any] = {"mode": "full", **({"otlp": otlp} if otlp else {})}
    rounds = []
    with serve(_SlowBackend) as backend:
        for label, blocking in (
                ("1. /report calls the backend synchronously; 2 workers fetch the pictures",
                 True),
                ("2. /report calls it in asyncio.to_thread; an async client fetches the "
                 "pictures",
                 False)):
            before = _calls_so_far()
            pool = started_pool(POOL_WORKERS) if blocking else nullcontext()
            with recorded(label, **options) as record, pool as pictures:
                started = time.perf_counter()
                latencies = asyncio.run(serve_under_load(backend, blocking, pictures,
                                                         seconds, concurrency))
                record.wall_s = time.perf_counter() - started
            executors = [row for row in (record.session.executors if record.session else ())
                         if row.calls > before.get((row.site, row.function), 0)]
            rounds.append(Round(record, latencies, executors))
    return rounds


def table(latencies: Latencies) -> list[str]:
    lines = ["   endpoint     requests    p50       p99"]
    for path in MIX:
        count = len(latencies.by_path[path])
        lines.append(f"   {path:<11} {count:7d}  {latencies.median(path) * 1000:6.1f} ms "
                     f"{latencies.percentile(path, 0.99) * 1000:6.1f} ms")
    return lines


def executor_line(row: ExecutorSite) -> str:
    """One executor site of a round: calls, queue wait against run time, and the verdict."""
    where = f"line {row.site.line}" if row.site else "(site unknown)"
    workers = f"{row.workers} workers" if row.workers is not None else "its workers"
    calls = f"{row.calls} {row.function.rsplit('.', 1)[-1]} call{'s' if row.calls != 1 else ''}"
    text = (f"{calls} at {where} waited "
            f"{milliseconds(row.queue_ms)} for {workers}, ran {milliseconds(row.run_ms)}")
    return text + (": the pool, not the work, is the bottleneck" if row.warning else "")


def verdict_lines(round_: Round) -> list[str]:
    """looptrace's verdict on one round: the blocks, who they delayed, the executor calls,
    the loop's figures."""
    record = round_.record
    lines = record.verdict().split("\n")
    victims = victim_summary(record.blocks)
    if victims:
        lines.append(victims)
    if record.session is not None and record.session.mode != "full":
        lines.append("executor calls not timed: full mode only (looptrace run --mode full)")
    # (The demo's own load generator runs in a thread via to_thread: not the service's.)
    lines.extend(executor_line(row) for row in round_.executors
                 if not row.function.endswith("load_from_a_thread"))
    lines.append(record.loop_line())
    return ["   looptrace: " + lines[0], *("              " + line for line in lines[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="a web service with one blocking handler and a thread pool too small")
    parser.add_argument("--quick", action="store_true", help="a shorter load (for the tests)")
    parser.add_argument("--otlp", nargs="?", const="", metavar="ENDPOINT",
                        help="send spans over OTLP/HTTP (default endpoint: "
                             "OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318)")
    args = parser.parse_args(argv)
    seconds, concurrency = (1.0, 6) if args.quick else (3.0, 8)
    endpoint = otlp_endpoint(args.otlp)
    print(f"{concurrency} clients for {seconds:g} s per round; mix "
          + ", ".join(f"{path} {weight}%" for path, weight in MIX.items())
          + f" (a gallery of {GALLERY}); the backend behind /report takes "
          f"{BACKEND_DELAY_S * 1000:.0f} ms, a picture {PICTURE_DELAY_S * 1000:.0f} ms.\n")
    if endpoint:
        with tracing_requests(endpoint):
            rounds = run(seconds, concurrency, endpoint)
    else:
        rounds = run(seconds, concurrency)
    for round_ in rounds:
        print(f"{round_.record.label}:")
        print("\n".join(table(round_.latencies)))
        print("\n".join(verdict_lines(round_)))
    if endpoint:
        service = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
        print(f"\nSpans sent to {endpoint} as service {service!r}: in Jaeger "
              "(http://localhost:16686), open a GET /report trace; looptrace's block span "
              "sits inside the request it blocked, linked to the requests it delayed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
