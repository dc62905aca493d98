"""Heartbeat: blocks on loops whose steps cannot be timed (uvloop and other C loops).

uvloop runs its callbacks from C, so no ``Handle._run`` hook sees them and there is no
Python selector to time. A timer that should fire every ``interval`` is the next best
thing: when it fires late, the loop was blocked for at least that long. The watchdog
samples the loop thread's stack while a beat is overdue, so such a block still gets its
exact line; only its duration is a heartbeat estimate (a lower bound, within one interval).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from looptrace._histogram import bucket_index, bucket_low

OnLate = Callable[["Heartbeat", int, int], None]


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
                if late >= self.threshold_ns:
                    self._on_late(self, due, now)
            self.thread_id = threading.get_ident()
            self._last_beat_ns = now
            self._paused = False
            self.beats += 1
            loop = self.loop()
            if loop is not None:
                loop.call_later(self.interval_ns / 1e9, self._beat)
        except Exception as exc:  # counted by the tracer; the heartbeat stops
            self.active = False
            self._on_fault(exc)
