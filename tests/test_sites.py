"""A block's site is the user's line inside the step, never the frame that started the
loop (a server's ``run``): user code first, then the library the step ran in."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import looptrace

LIBRARY = """
import asyncio
import time


def spin(seconds):
    # Asleep rather than spinning: a CPU loop on a busy machine may be judged a wait for
    # the CPU, and this test is about the site.
    time.sleep(seconds)  # LIB_SPIN


def serve(main):
    # A framework's runner: starts the loop; a user frame sits below it.
    return asyncio.run(main())  # LIB_RUN


def schedule_own_work(loop):
    loop.call_soon(spin, 0.08)  # the step runs library code only
"""


@pytest.fixture
def fakelib(tmp_path: Path) -> Iterator[ModuleType]:
    """A module that looks installed (its path runs through site-packages)."""
    package = tmp_path / "lib" / "site-packages"
    package.mkdir(parents=True)
    (package / "fakelib.py").write_text(LIBRARY)
    spec = importlib.util.spec_from_file_location("fakelib", package / "fakelib.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fakelib"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fakelib", None)


def _line(text: str, marker: str) -> int:
    return next(n for n, line in enumerate(textwrap.dedent(text).splitlines(), start=1)
                if marker in line)


def test_user_code_calling_a_library_is_the_site(fakelib: ModuleType) -> None:
    """The user's line that called into the library is the site; the library's frame is
    in the stack, below it."""
    async def handler() -> None:
        await asyncio.sleep(0)
        fakelib.spin(0.08)  # USER_CALL
        await asyncio.sleep(0)

    with looptrace.installed(threshold_ms=40, probes=False) as tracing:
        fakelib.serve(handler)
    (block,) = tracing.snapshot().blocks
    assert block.site is not None
    assert block.site.file == __file__
    assert block.site.function.endswith("handler")
    assert any(frame.file == fakelib.__file__ for frame in block.stack)


def test_a_step_entirely_in_a_library_is_sited_in_the_library(fakelib: ModuleType) -> None:
    """No user code in the step: the site is the library's line where the time went, not
    the runner's ``asyncio.run`` line below the loop (the uvicorn/server.py case), and the
    user's frame that started it all stays in the stack."""
    async def main() -> None:
        fakelib.schedule_own_work(asyncio.get_running_loop())
        await asyncio.sleep(0.15)

    with looptrace.installed(threshold_ms=40, probes=False) as tracing:
        fakelib.serve(main)  # USER_START
    (block,) = tracing.snapshot().blocks
    assert block.site is not None
    assert block.site.file == fakelib.__file__
    assert block.site.line == _line(LIBRARY, "LIB_SPIN")
    assert any(frame.file == __file__ for frame in block.stack)
