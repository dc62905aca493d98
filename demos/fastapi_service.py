"""The FastAPI service that ``demos/fastapi_workers.py`` runs under uvicorn.

Two endpoints: ``/hello`` answers at once; ``/checkout`` renders a receipt with a
synchronous call (a blocking client library, say) that takes 120 ms, inside an ``async
def`` handler, so it runs on the worker's event loop and holds it.
"""

import os
import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/checkout")
async def checkout() -> dict[str, object]:
    receipt = render_receipt()
    return {"pid": os.getpid(), "receipt": receipt}


def render_receipt() -> str:
    time.sleep(0.12)  # BLOCKS: a synchronous call in an async handler's path
    return "paid"
