"""The one clock every looptrace record uses.

Hooks record ``perf_counter_ns`` integers: monotonic, cheap, and the same clock the C
accelerator reads. Exporters need wall-clock (epoch) times, so the offset between the two
is measured once per session and applied when a record leaves the process.
"""

from __future__ import annotations

from time import perf_counter_ns, time_ns

now_ns = perf_counter_ns
"""Monotonic nanoseconds; the timestamp of every recorded event."""


def epoch_offset_ns() -> int:
    """Return ``time_ns() - perf_counter_ns()``, measured as tightly as this machine allows.

    The tightest of a few bracketed readings wins, so a preemption between two clock reads
    cannot skew every exported timestamp.
    """
    best_gap = None
    offset = 0
    for _ in range(5):
        before = perf_counter_ns()
        wall = time_ns()
        after = perf_counter_ns()
        gap = after - before
        if best_gap is None or gap < best_gap:
            best_gap = gap
            offset = wall - (before + after) // 2
    return offset
