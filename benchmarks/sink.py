"""An in-process sink for looptrace's full mode: every step and every select wait, exported.

Full mode writes each step (start_ns, duration_ns, owner id) and each select wait
(start_ns, duration_ns, timeout_ns, events) into per-thread / per-loop rings of plain
integers. This sink is what an exporter of the complete trace would do: a thread of its own
wakes every ``interval_s``, copies the records written since its last visit out of each ring
(one memcpy per ring, through the rings' memoryviews), decodes them into integer arrays and
folds them into running totals, as a serializer would before shipping them. Records that a
ring overwrote before the sink reached them are counted as ``lost``, so "every step
exported" is checked, not assumed.

It reads looptrace's internals (the installation's step hook and loop records): it is a
benchmark fixture, not an API.
"""

from __future__ import annotations

import threading
from array import array
from typing import Any


class _RingCursor:
    """Where the sink stopped reading one ring."""

    __slots__ = ("read", "source", "width")

    def __init__(self, source: Any, width: int) -> None:
        self.source = source
        self.width = width
        self.read = 0


class FullTraceSink:
    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.steps = 0
        self.step_ns = 0
        self.waits = 0
        self.wait_ns = 0
        self.lost = 0
        self.bytes = 0
        self.drains = 0
        self._cursors: dict[int, _RingCursor] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-full-sink", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, int]:
        """Stop the thread, drain what is left, return the figures."""
        self._stop.set()
        self._thread.join()
        self.drain()
        return {"steps_exported": self.steps, "waits_exported": self.waits,
                "lost": self.lost, "bytes": self.bytes, "drains": self.drains}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.drain()

    def _sources(self) -> list[tuple[Any, Any, int]]:
        """(key object, ring owner, record width) for every ring looptrace fills now."""
        from looptrace import _api

        installation = _api._current
        if installation is None:
            return []
        tracer = installation.tracer
        sources: list[tuple[Any, Any, int]] = []
        hook = tracer.step_hook
        if hook is not None:
            sources.extend((slot, slot, 3) for slot in hook.slots())
        for record in tracer.recorder.loop_records():
            timer = record.timer
            if timer is not None and hasattr(timer, "ring_view"):
                sources.append((timer, timer, 4))
        return sources

    def drain(self) -> None:
        """Copy out what every ring got since the last visit. A cursor keeps its ring alive,
        so the last records of a loop that closed (its timer is replaced by a frozen copy)
        or of a thread that ended (its slot is pruned) are still exported."""
        self.drains += 1
        for key, source, width in self._sources():
            cursor = self._cursors.get(id(key))
            if cursor is None or cursor.source is not source:
                self._cursors[id(key)] = _RingCursor(source, width)
        for cursor in list(self._cursors.values()):
            self._drain_one(cursor)

    def _drain_one(self, cursor: _RingCursor) -> None:
        source = cursor.source
        if cursor.width == 3:
            ring = source.ring
            capacity = getattr(source, "ring_capacity", None)
        else:
            ring = source.ring_view()
            capacity = getattr(source, "ring_capacity", None)
        if ring is None:  # full mode off, or a closed loop's frozen figures
            return
        view = memoryview(ring).cast("B").cast("q")
        width = cursor.width
        if capacity is None:
            capacity = len(view) // width
        written = source.ring_written
        first = cursor.read
        if written - first > capacity:
            self.lost += written - first - capacity
            first = written - capacity
        if first >= written:
            return
        # One or two contiguous slices of the ring, copied while we hold the GIL, so the
        # loop thread cannot write in between.
        begin = (first % capacity) * width
        end = (written % capacity) * width
        if end > begin:
            raw = view[begin:end].tobytes()
        else:
            raw = view[begin:].tobytes() + view[:end].tobytes()
        cursor.read = written
        records = array("q")
        records.frombytes(raw)
        count = len(records) // width
        duration_total = sum(records[1::width])
        self.bytes += len(raw)
        if width == 3:
            self.steps += count
            self.step_ns += duration_total
        else:
            self.waits += count
            self.wait_ns += duration_total
