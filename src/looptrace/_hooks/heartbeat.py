"""Heartbeat: blocks on loops whose steps cannot be timed (uvloop and other C loops).

uvloop runs its callbacks from C, so no ``Handle._run`` hook sees them and there is no
Python selector to time. A timer that should fire every ``interval`` is the next best
thing: when it fires late, the loop was blocked. The watchdog samples the loop thread's
stack while a beat is overdue, so such a block still gets its exact line.

Its duration runs from the end of the previous beat (the last moment the loop is known to
have been free) to the late beat: an upper bound, over by at most one interval plus the
short callbacks that ran in between. Measuring from the beat's due time instead (a lower
bound) lost every block between 1x and 1x + one interval of the threshold, so the interval
is short (a twentieth of the threshold, 1 to 5 ms): every block at or over the threshold is
reported, its duration within 5 ms or 5 %.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from looptrace._histogram import bucket_index, bucket_low

OnLate = Callable[["Heartbeat", int, int], None]
"""``on_late(heartbeat, free_ns, now_ns)``: the loop was not free from ``free_ns`` (the end
of the previous beat) to ``now_ns``."""

MIN_INTERVAL_NS = 1_000_000
MAX_INTERVAL_NS = 5_000_000


def interval_for(threshold_ns: int) -> int:
    """A twentieth of the threshold, 1 to 5 ms: the error of a block's duration."""
    return min(max(threshold_ns // 20, MIN_INTERVAL_NS), MAX_INTERVAL_NS)


class Heartbeat:
    def __init__(self, loop: Any, loop_id: int, interval_ns: int, threshold_ns: int,
                 on_late: OnLate, on_fault: Callable[[BaseException], None]) -> None:
        self.loop = weakref.ref(loop)
        self.key = ("heartbeat", loop_id)
        self.interval_ns = interval_ns
        self.threshold_ns = threshold_ns
        self.thread_id: int | None = None
        self.beats = 0
        self.max_lag_ns = 0
        self._last_beat_ns = 0
        self.free_ns = 0
        """When the previous beat ended: the loop was free then."""
        self._paused = True
        self._hist: dict[int, int] = {}
        self._on_late = on_late
        self._on_fault = on_fault
        self.active = True

    def start(self) -> None:
        loop = self.loop()
        if loop is not None:
            loop.call_soon_threadsafe(self._beat)

    def stop(self) -> None:
        """The pending timer fires once more and does nothing."""
        self.active = False

    def due_ns(self) -> int | None:
        """When the next beat is due, or None when no beat is pending on a running loop."""
        loop = self.loop()
        if not self.active or self._paused or loop is None:
            return None
        if not loop.is_running():
            # A stopped loop is not blocked: the first beat after it runs again restarts.
            self._paused = True
            return None
        return self._last_beat_ns + self.interval_ns

    def histogram(self) -> list[tuple[int, int]]:
        return [(bucket_low(i), n) for i, n in sorted(self._hist.items())]

    def _beat(self) -> None:
        if not self.active:
            return
        try:
            now = perf_counter_ns()
            if not self._paused:
                due = self._last_beat_ns + self.interval_ns
                late = max(now - due, 0)
                index = bucket_index(late)
                self._hist[index] = self._hist.get(index, 0) + 1
                self.max_lag_ns = max(self.max_lag_ns, late)
                if now - self.free_ns >= self.threshold_ns:
                    self._on_late(self, self.free_ns, now)
            self.thread_id = threading.get_ident()
            self._last_beat_ns = now
            self._paused = False
            self.beats += 1
            loop = self.loop()
            if loop is not None:
                loop.call_later(self.interval_ns / 1e9, self._beat)
            self.free_ns = perf_counter_ns()
        except Exception as exc:  # counted by the tracer; the heartbeat stops
            self.active = False
            self._on_fault(exc)
