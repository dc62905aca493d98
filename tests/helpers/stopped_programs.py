"""Programs stopped in the middle of a block, for test_stopped_and_nested.py.

    python stopped_programs.py sigterm           # under `looptrace run`: stuck in a step
    python stopped_programs.py sigint REPORT     # manual run_until_complete, Ctrl-C
    python stopped_programs.py uninstall REPORT  # uninstall() from another thread
    python stopped_programs.py raise REPORT      # an exception out of the loop
    python stopped_programs.py nested REPORT     # nest_asyncio: a run inside a step

nest_asyncio patches asyncio for the whole process, for good: it runs here, never in the
test process.

Each prints ``ready`` once the loop is about to block, so the test knows when to signal.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import looptrace


async def stuck(seconds: float = 5.0) -> None:
    await asyncio.sleep(0.05)
    print("ready", flush=True)
    time.sleep(seconds)  # STUCK


def stop_with(exc: BaseException) -> None:
    time.sleep(0.4)  # RAISE
    raise exc


async def inner() -> None:
    await asyncio.sleep(0.02)
    time.sleep(0.13)  # INNER
    await asyncio.sleep(0.02)


async def outer() -> None:
    await asyncio.sleep(0)
    time.sleep(0.13)  # OUTER
    asyncio.get_running_loop().run_until_complete(inner())
    await asyncio.sleep(0)


def nested(report: str | None) -> None:
    import json

    import nest_asyncio

    loop = asyncio.new_event_loop()
    nest_asyncio.apply(loop)
    started = time.perf_counter()
    with looptrace.installed(threshold_ms=50) as tracing:
        loop.run_until_complete(outer())
    recording_ms = (time.perf_counter() - started) * 1000
    loop.close()
    _save(tracing.snapshot(), report)
    print(json.dumps({"recording_ms": recording_ms}))


def main(kind: str, report: str | None) -> None:
    if kind == "nested":
        nested(report)
        return
    if kind == "sigterm":  # looptrace run installs and writes the report on SIGTERM
        asyncio.run(stuck())
        return
    looptrace.install(threshold_ms=50)
    loop = asyncio.new_event_loop()
    try:
        if kind == "uninstall":
            threading.Timer(0.6, lambda: _save(looptrace.uninstall(), report)).start()
            loop.run_until_complete(stuck(1.0))
        elif kind == "raise":
            loop.call_later(0.05, stop_with, SystemExit("out of the loop"))  # sys.exit()
            loop.run_until_complete(asyncio.sleep(10))
        else:
            loop.run_until_complete(stuck())
    except (KeyboardInterrupt, SystemExit):  # out of the loop (asyncio catches the rest)
        _save(looptrace.uninstall(), report)
    finally:
        loop.close()


def _save(session: object, report: str | None) -> None:
    if session is not None and report is not None:
        session.save(report)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
