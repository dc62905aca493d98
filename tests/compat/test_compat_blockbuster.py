"""looptrace under an active blockbuster: its hooks make no blocking call on the loop
thread, so blockbuster never raises inside them and nothing is switched off.

blockbuster (used by anyio's own test suite, among others) raises ``BlockingError`` from
``os.path.abspath``, ``os.getcwd``, file reads and more whenever a loop is running on the
thread. looptrace used to call ``os.path.abspath`` in its step hook and its probes: the
error was caught, counted as a fault, and the hooks stayed off for the rest of the run.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Any

import pytest
from blockbuster import blockbuster_ctx

import looptrace
from helpers.lines import line_of


async def _planted_block() -> None:
    """A task waits while another blocks the loop with a call blockbuster does not know
    (``select.select`` with no file descriptor: a 200 ms sleep)."""
    waiting = asyncio.create_task(asyncio.sleep(0.3))
    await asyncio.sleep(0.01)
    select.select([], [], [], 0.2)  # PLANTED BLOCK
    await asyncio.sleep(0.01)
    await waiting


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    uvloop = pytest.importorskip("uvloop")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@pytest.mark.parametrize(("options", "loop"), [
    pytest.param({}, "asyncio", id="default"),
    pytest.param({"mode": "full"}, "asyncio", id="full"),
    pytest.param({"accelerator": False}, "asyncio", id="pure-python-hooks"),
    pytest.param({}, "uvloop", id="uvloop-heartbeat"),
])
def test_no_hook_is_disabled_under_blockbuster(options: dict[str, Any], loop: str) -> None:
    """With blockbuster active for every module, the run records the planted block at its
    line, named by the probe, and the report has no fault: no hook switched itself off."""
    factory = _uvloop_factory() if loop == "uvloop" else None
    with looptrace.installed(threshold_ms=50, **options) as tracing, blockbuster_ctx(), \
            asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_planted_block())
    session = tracing.snapshot()
    assert session.faults == ()
    planted = [b for b in session.blocks if b.call == "select.select"]
    assert len(planted) == 1, session.blocks
    (block,) = planted
    assert block.site is not None
    assert (block.site.file, block.site.line) == (__file__, line_of(__file__, "PLANTED BLOCK"))
    assert block.duration_ms >= 190
    assert block.duration_source == ("heartbeat" if loop == "uvloop" else "step-timer")
