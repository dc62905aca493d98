"""Select waits: how long each loop sleeps in select/epoll, and how busy it is in between.

A timer is set as the selector *instance's* ``select`` attribute, so ``loop._selector`` stays
the very same object (code that inspects it, and asyncio's own tests, see no difference),
and detaching is deleting one instance attribute. Each call records the wait (start,
duration, timeout asked, events ready) and the busy time since the previous wait returned,
which is the iteration's lag: how long any I/O that became ready went unnoticed.
"""

from __future__ import annotations

import selectors
from array import array
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any, Protocol

from looptrace._histogram import bucket_index, bucket_low

OnLongIteration = Callable[[int, int], None]

class SelectTimer(Protocol):
    """What the loop record reads from a select timer (C or Python)."""

    enabled: int | bool
    threshold_ns: int

    @property
    def select_calls(self) -> int: ...
    @property
    def events(self) -> int: ...
    @property
    def io_wait_ns(self) -> int: ...
    @property
    def waiting_since_ns(self) -> int: ...
    @property
    def busy_ns(self) -> int: ...
    @property
    def max_busy_ns(self) -> int: ...
    @property
    def long_iterations(self) -> int: ...
    @property
    def ring_written(self) -> int: ...
    @property
    def faults(self) -> int: ...
    def histogram(self) -> list[tuple[int, int]]: ...
    def ring(self) -> list[tuple[int, int, int, int]]: ...
    def ring_view(self) -> memoryview | None: ...
    def forget_last(self) -> None: ...


class PythonSelectTimer:
    """Pure-Python twin of the C ``SelectTimer``; :attr:`method` is what ``select`` becomes."""

    def __init__(self, original: Callable[..., list[Any]], on_long_iteration: OnLongIteration,
                 threshold_ns: int, ring_capacity: int = 0) -> None:
        self.original = original
        self.on_long_iteration = on_long_iteration
        self.threshold_ns = threshold_ns
        self.enabled: int | bool = True
        self.select_calls = 0
        self.events = 0
        self.io_wait_ns = 0
        self.busy_ns = 0
        self.max_busy_ns = 0
        self.long_iterations = 0
        self.last_end_ns = 0
        self.waiting_since_ns = 0
        self.faults = 0
        self.ring_capacity = ring_capacity
        self.ring_written = 0
        self._ring = array("q", bytes(8 * 4 * ring_capacity)) if ring_capacity else None
        self._hist: dict[int, int] = {}
        self.method = self._build()

    def histogram(self) -> list[tuple[int, int]]:
        return [(bucket_low(i), n) for i, n in sorted(self._hist.items())]

    def ring(self) -> list[tuple[int, int, int, int]]:
        ring = self._ring
        if ring is None:
            return []
        cap = self.ring_capacity
        count = min(self.ring_written, cap)
        first = self.ring_written - count
        out = []
        for k in range(first, first + count):
            i = (k % cap) * 4
            out.append((ring[i], ring[i + 1], ring[i + 2], ring[i + 3]))
        return out

    def ring_view(self) -> memoryview | None:
        """Full mode: the ring itself, int64, 4 per wait (wait ``k`` at
        ``(k % ring_capacity) * 4``), for exporters that copy what is new since their last
        visit; None otherwise."""
        return memoryview(self._ring) if self._ring is not None else None

    def forget_last(self) -> None:
        self.last_end_ns = 0

    def _build(self) -> Callable[..., list[Any]]:
        timer = self
        original = self.original
        clock = perf_counter_ns
        hist = self._hist

        def select(timeout: float | None = None) -> list[Any]:
            if not timer.enabled:
                return original(timeout)
            start = clock()
            last = timer.last_end_ns
            if last:
                # The busy time since the previous wait is known now, before this wait: a
                # program stopped while the loop sleeps still has it counted.
                try:
                    busy = start - last
                    timer.busy_ns += busy
                    index = bucket_index(busy)
                    hist[index] = hist.get(index, 0) + 1
                    timer.max_busy_ns = max(timer.max_busy_ns, busy)
                    if busy >= timer.threshold_ns:
                        timer.long_iterations += 1
                        timer.on_long_iteration(last, start)
                except Exception:  # never into the loop; the tracer reports faults
                    timer.faults += 1
                timer.last_end_ns = 0
            timer.waiting_since_ns = start
            try:
                ready = original(timeout)
            finally:
                timer.waiting_since_ns = 0
            end = clock()
            try:
                timer.select_calls += 1
                timer.events += len(ready)
                timer.io_wait_ns += end - start
                timer.last_end_ns = end
                ring = timer._ring
                if ring is not None:
                    i = (timer.ring_written % timer.ring_capacity) * 4
                    ring[i] = start
                    ring[i + 1] = end - start
                    ring[i + 2] = -1 if timeout is None else int(timeout * 1e9)
                    ring[i + 3] = len(ready)
                    timer.ring_written += 1
            except Exception:  # never into the loop; the tracer reports faults
                timer.faults += 1
            return ready

        select.__wrapped__ = original  # type: ignore[attr-defined]
        return select


def is_real_selector(selector: object) -> bool:
    """Only wrap genuine selectors: a stand-in (a test's mock) keeps its own attributes."""
    return isinstance(selector, selectors.BaseSelector) and "select" not in vars(selector)


def make_select_timer(selector: selectors.BaseSelector, on_long_iteration: OnLongIteration,
                      threshold_ns: int, *, accelerated: bool,
                      ring_capacity: int = 0) -> tuple[Any, SelectTimer]:
    """Return ``(callable to set as selector.select, timer)``."""
    original = selector.select
    if accelerated:
        try:
            from looptrace._speedups import SelectTimer as CSelectTimer
        except ImportError:
            pass
        else:
            c_timer = CSelectTimer(original, on_long_iteration, threshold_ns, ring_capacity)
            return c_timer, c_timer
    py_timer = PythonSelectTimer(original, on_long_iteration, threshold_ns, ring_capacity)
    return py_timer.method, py_timer


def detach_timer(selector: selectors.BaseSelector, select: Any) -> bool:
    """Remove our ``select`` if it is still the one set; return whether it was."""
    if vars(selector).get("select") is select:
        del selector.select
        return True
    return False


class FrozenTimer:
    """A closed loop's final select figures, kept without keeping its selector alive."""

    enabled: int | bool = False
    threshold_ns: int = 0

    def __init__(self, timer: SelectTimer) -> None:
        self.select_calls = timer.select_calls
        self.events = timer.events
        since = timer.waiting_since_ns  # closed mid-wait (SIGTERM): that wait counts too
        self.io_wait_ns = timer.io_wait_ns + (perf_counter_ns() - since if since else 0)
        self.waiting_since_ns = 0
        last = getattr(timer, "last_end_ns", 0)  # closed mid-step (SIGTERM): that busy counts
        self.busy_ns = timer.busy_ns + (perf_counter_ns() - last if last else 0)
        self.max_busy_ns = timer.max_busy_ns
        self.long_iterations = timer.long_iterations
        self.ring_written = timer.ring_written
        self.faults = timer.faults
        self._histogram = timer.histogram()
        self._ring = timer.ring()

    def histogram(self) -> list[tuple[int, int]]:
        return list(self._histogram)

    def ring(self) -> list[tuple[int, int, int, int]]:
        return list(self._ring)

    def ring_view(self) -> memoryview | None:
        return None

    def forget_last(self) -> None:
        pass
