"""A FastAPI service as it is deployed: one endpoint that blocks its worker's loop."""

import os
import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/block")
async def block() -> dict[str, int]:
    time.sleep(0.12)  # HANDLER_BLOCK: a synchronous call in an async handler
    return {"pid": os.getpid()}
