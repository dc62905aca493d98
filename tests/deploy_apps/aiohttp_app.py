"""An aiohttp service as gunicorn runs it (``aiohttp.GunicornWebWorker``)."""

import os
import time

from aiohttp import web


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"pid": os.getpid()})


async def block(request: web.Request) -> web.Response:
    time.sleep(0.12)  # HANDLER_BLOCK: a synchronous call in an async handler
    return web.json_response({"pid": os.getpid()})


app = web.Application()
app.router.add_get("/ping", ping)
app.router.add_get("/block", block)
