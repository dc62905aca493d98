"""Garbage-collection pauses, so a collection is never blamed on the line that happened to
allocate when it started.

A full collection can stop a loop for tens of milliseconds. The step timer sees a long step
and the samples land wherever the program was; without this, the block would be pinned on an
innocent line. ``gc.callbacks`` tells when each collection starts and stops, on the thread
that runs it; a block mostly spent collecting is reported as a ``gc`` pause instead. A
collection is rare (the collector runs after hundreds of new container objects), so the
callback costs nothing measurable.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections import deque
from time import perf_counter_ns
from typing import Any

_PER_THREAD = 64


class GcWatch:
    def __init__(self, min_ns: int) -> None:
        self.min_ns = min_ns
        self._started: dict[int, tuple[int, int]] = {}
        self._pauses: dict[int, deque[tuple[int, int, int]]] = {}
        self._installed = False

    def start(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True

    def stop(self) -> None:
        if self._installed:
            with contextlib.suppress(ValueError):  # someone removed it for us
                gc.callbacks.remove(self._on_gc)
            self._installed = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        ident = threading.get_ident()
        now = perf_counter_ns()
        if phase == "start":
            self._started[ident] = (now, info.get("generation", -1))
            return
        begun = self._started.pop(ident, None)
        if begun is None:
            return
        start, generation = begun
        if now - start >= self.min_ns:
            pauses = self._pauses.get(ident)
            if pauses is None:
                pauses = self._pauses.setdefault(ident, deque(maxlen=_PER_THREAD))
            pauses.append((start, now - start, generation))

    def within(self, thread_id: int, start_ns: int, end_ns: int) -> tuple[int, int]:
        """``(nanoseconds collecting, highest generation)`` on a thread in a time window."""
        pauses = self._pauses.get(thread_id)
        if not pauses:
            return 0, -1
        total, generation = 0, -1
        for pause_start, duration, gen in list(pauses):
            overlap = min(end_ns, pause_start + duration) - max(start_ns, pause_start)
            if overlap > 0:
                total += overlap
                generation = max(generation, gen)
        return total, generation

    def forget_threads(self, alive: set[int]) -> None:
        for ident in list(self._pauses):
            if ident not in alive:
                self._pauses.pop(ident, None)
