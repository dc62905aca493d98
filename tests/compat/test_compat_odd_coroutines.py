"""Found by the compatibility job (anyio's suite, looptrace in sitecustomize): a task's
coroutine object need not be a Python coroutine, and its ``__qualname__`` need not be a
string. Naming such a task switched the watchdog and the step hook off."""

from __future__ import annotations

import asyncio
import collections.abc
import time
from collections.abc import Generator
from typing import Any

import looptrace


class OddCoroutine(collections.abc.Coroutine[Any, Any, int]):
    """A coroutine of a library's own making: one step that blocks, then the result."""

    def __init__(self) -> None:
        self.__qualname__ = None  # type: ignore[assignment]  # what anyio's suite met
        self._steps = 0

    def send(self, value: object) -> None:
        self._steps += 1
        if self._steps == 1:
            time.sleep(0.15)  # a block inside the odd coroutine's first step
            return
        raise StopIteration(42)

    def throw(self, *args: object) -> None:  # type: ignore[override]
        raise StopIteration

    def close(self) -> None:
        pass

    def __await__(self) -> Generator[Any, None, int]:
        return self  # type: ignore[return-value]


def test_a_task_whose_coroutine_has_no_string_qualname_is_named_by_its_type() -> None:
    """The program's result is unchanged, no hook is switched off, and the block is
    recorded with the task named by the coroutine's type."""

    async def main() -> int:
        return await asyncio.get_running_loop().create_task(OddCoroutine())

    with looptrace.installed(threshold_ms=50) as tracing:
        assert asyncio.run(main()) == 42
    session = tracing.snapshot()
    assert session.faults == ()
    (block,) = [b for b in session.blocks if b.call == "time.sleep"]
    assert block.coroutine == "OddCoroutine"
