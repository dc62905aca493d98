"""Competing processes that keep every CPU busy, as a loaded production host does.

The verdicts of looptrace must come out the same on an idle and on a saturated machine
(DESIGN.md 3): tests that reproduce load start these beside the program under test, and
``LOOPTRACE_TEST_BUSY=1`` starts them for a whole test session (the CI load pass)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

BUSY_ENV = "LOOPTRACE_TEST_BUSY"


def competitors_asked() -> int:
    """How many busy processes ``LOOPTRACE_TEST_BUSY`` asks for (``1``: one per CPU)."""
    value = os.environ.get(BUSY_ENV, "").strip()
    if value in ("", "0"):
        return 0
    return os.cpu_count() or 2 if value == "1" else int(value)


@contextmanager
def busy_cpus(count: int | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes (default: one per CPU) spinning ``while True: pass``."""
    count = count if count is not None else os.cpu_count() or 2
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              stdin=subprocess.DEVNULL) for _ in range(count)]
    try:
        time.sleep(0.2)  # let them start spinning before the measurement
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
