"""install(), uninstall(), snapshot() and installed() called at random from 4 threads while
4 other threads run loops that block every few milliseconds.

    python lifecycle_race.py SECONDS

Prints one JSON line: the errors seen (none expected), whether asyncio was restored, and
the threads left. A hang or a crash here is a bug: the test runs it with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import threading
import time
from asyncio import events

import looptrace

stop = threading.Event()
errors: list[str] = []
ORIGINAL_RUN = vars(events.Handle)["_run"]


async def worker() -> None:
    while not stop.is_set():
        time.sleep(0.003)  # a block at a 2 ms threshold
        await asyncio.sleep(0.001)


def run_loop() -> None:
    try:
        asyncio.run(worker())
    except BaseException as exc:  # reported, not raised
        errors.append(f"loop: {exc!r}")


def control(seed: int) -> None:
    rnd = random.Random(seed)
    while not stop.is_set():
        operation = rnd.choice(["install", "uninstall", "snapshot", "installed"])
        try:
            if operation == "install":
                looptrace.install(threshold_ms=2)
            elif operation == "uninstall":
                session = looptrace.uninstall()
                if session is not None and session.faults:
                    errors.append(f"faults: {session.faults}")
            elif operation == "snapshot":
                with contextlib.suppress(RuntimeError):  # never installed yet
                    looptrace.snapshot()
            else:
                with looptrace.installed(threshold_ms=2):
                    time.sleep(0.01)
        except BaseException as exc:  # reported, not raised
            errors.append(f"{operation}: {exc!r}")


def main() -> None:
    threads = [threading.Thread(target=run_loop, name=f"loop-{n}") for n in range(4)]
    threads += [threading.Thread(target=control, args=(n,), name=f"control-{n}")
                for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(float(sys.argv[1]))
    stop.set()
    for thread in threads:
        thread.join(30)
    looptrace.uninstall()
    time.sleep(0.2)  # looptrace's own threads end
    print(json.dumps({
        "errors": errors,
        "restored": vars(events.Handle)["_run"] is ORIGINAL_RUN,
        "threads": sorted(t.name for t in threading.enumerate()),
    }))


if __name__ == "__main__":
    main()
