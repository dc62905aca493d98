"""An aiohttp service whose handlers block the loop, run as a program by the OpenTelemetry
tests: under ``opentelemetry-instrument`` (no OpenTelemetry code here), or with
``--own-provider`` (the service sets up its TracerProvider, as many do).

    python blocking_service.py SLOW_URL [--own-provider]

It serves on a loopback port, sends itself GET /sleep then GET /read, and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request

from aiohttp import ClientSession, web

SLOW_URL = web.AppKey("slow_url", str)


async def sleepy(request: web.Request) -> web.Response:
    time.sleep(0.06)  # BLOCK: sleep
    return web.Response(text="slept")


async def reader(request: web.Request) -> web.Response:
    # The classic mistake: the connection is opened in an executor, the body is read on the
    # loop thread (the slow server sends it 80 ms after the headers).
    loop = asyncio.get_running_loop()
    response = await loop.run_in_executor(
        None, urllib.request.urlopen, request.app[SLOW_URL] + "/delay/80")
    body = response.read()  # BLOCK: read
    return web.Response(text=str(len(body)))


def own_provider() -> None:
    """What a service that configures OpenTelemetry itself does at startup."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AioHttpServerInstrumentor().instrument()


async def serve_and_get(app: web.Application, paths: list[str]) -> None:
    """Serve ``app`` on a loopback port and GET each path once, in order (each must answer
    200)."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with ClientSession() as session:
            for path in paths:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 200, await response.text()
                    await response.read()
    finally:
        await runner.cleanup()


async def main(slow_url: str) -> None:
    app = web.Application()
    app[SLOW_URL] = slow_url
    app.router.add_get("/sleep", sleepy)
    app.router.add_get("/read", reader)
    await serve_and_get(app, ["/sleep", "/read"])

if __name__ == "__main__":
    if "--own-provider" in sys.argv[2:]:
        own_provider()
    asyncio.run(main(sys.argv[1]))
