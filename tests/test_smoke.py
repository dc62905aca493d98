"""The smallest end-to-end check: a blocking sleep in a coroutine is found at its line."""

import asyncio
import time

import looptrace


def test_sleep_in_coroutine_is_one_blocking_call_at_its_line() -> None:
    """time.sleep(0.15) in a coroutine is one blocking-call hotspot at the sleep line."""

    async def main() -> None:
        await asyncio.sleep(0)
        time.sleep(0.15)
        await asyncio.sleep(0)

    with looptrace.installed(threshold_ms=50) as tracing:
        asyncio.run(main())
    session = tracing.snapshot()
    assert len(session.hotspots) == 1
    hotspot = session.hotspots[0]
    assert hotspot.kind == "blocking-call"
    assert hotspot.call == "time.sleep"
    assert hotspot.site is not None
    assert hotspot.site.file == __file__
    assert hotspot.site.function.endswith("main")
    assert 140 <= hotspot.max_ms < 400
