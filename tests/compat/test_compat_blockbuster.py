"""looptrace under an active blockbuster: its hooks make no blocking call on the loop
thread, so blockbuster never raises inside them and nothing is switched off.

blockbuster (used by anyio's own test suite, among others) raises ``BlockingError`` from
``os.path.abspath``, ``os.getcwd``, file reads and more whenever a loop is running on the
thread. looptrace used to call ``os.path.abspath`` in its step hook and its probes: the
error was caught, counted as a fault, and the hooks stayed off for the rest of the run.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable
from typing import Any

import pytest
from blockbuster import blockbuster_ctx

import looptrace
from helpers.lines import line_of
from looptrace._hooks import frames


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
    # On uvloop the probed call that explains the block gives its start (issue 10).
    assert block.duration_source == ("heartbeat+probe" if loop == "uvloop" else "step-timer")


def test_file_names_are_made_absolute_as_abspath_does_without_a_system_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """frames.absolute() gives os.path.abspath's answer for absolute, relative and dotted
    names, from the working directory read once; pseudo-files stay as they are."""
    frames.remember_working_directory()
    names = ["/srv/app/../lib/db.py", "/srv//app/./main.py", "uvloop/loop.pyx", "./x.py",
             "../up.py"]
    expected = [os.path.abspath(name) for name in names]

    def forbidden() -> str:
        raise AssertionError("getcwd called")

    monkeypatch.setattr(os, "getcwd", forbidden)
    assert [frames.absolute(name) for name in names] == expected
    assert frames.absolute("<string>") == "<string>"
