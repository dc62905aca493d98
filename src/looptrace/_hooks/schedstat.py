"""CPU starvation: how long a loop thread was ready to run but had no CPU.

Linux counts, per thread, the time it ran on a CPU and the time it spent runnable but
waiting in a run queue (``/proc/.../schedstat``): other processes or threads had the CPUs,
or the container hit its CPU limit. A block's figures are the difference of two readings
of the loop thread, never an extrapolation:

- before or at its start: the watchdog reads each loop thread whenever its step counter
  moved since the last tick (:class:`SchedHistory`, a ``pread`` of a kept file, about a
  microsecond, off the loop's hot path); the last reading before the block and the first
  one inside it bracket its start;
- at its end: the loop thread reads its own figures (the same kept file) when a step at
  or over the threshold ends.

Elsewhere than Linux every reading is simply absent.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from time import perf_counter_ns

Reading = tuple[int, int]
"""(nanoseconds on a CPU, nanoseconds waiting for one)"""

Timed = tuple[int, int, int]
"""(perf_counter_ns of the reading, nanoseconds on a CPU, nanoseconds waiting for one)"""

_KEPT = 4


def _parse(data: bytes) -> Reading | None:
    try:
        on_cpu, waiting = data.split()[:2]
        return int(on_cpu), int(waiting)
    except ValueError:
        return None


def _read(path: str) -> Reading | None:
    # Read at the end of a long step on the loop thread itself. A procfs file is made by
    # the kernel from memory and never waits for a device; opened O_NONBLOCK it says so,
    # and checkers of blocking calls on a loop thread (blockbuster) let it pass instead of
    # raising inside the step hook, which would switch the hook off.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _parse(os.read(fd, 256))
    except OSError:
        return None
    finally:
        os.close(fd)


def of_this_thread() -> Reading | None:
    return _read("/proc/thread-self/schedstat")


def of_thread(ident: int) -> Reading | None:
    """The reading of the thread whose ``threading.get_ident()`` is ``ident``."""
    native = _native_id(ident)
    return _read(f"/proc/self/task/{native}/schedstat") if native is not None else None


def _native_id(ident: int) -> int | None:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.native_id
    return None


class SchedHistory:
    """The last few readings of each loop thread, taken by the watchdog when the thread's
    step counter moved (an idle loop is read once, a busy one once per tick)."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}
        self._unreadable: set[int] = set()
        self._seen: dict[int, object] = {}
        self._kept: dict[int, deque[Timed]] = {}
        self._opening = threading.Lock()  # the watchdog and a loop thread may both open

    def note(self, ident: int, counter: object) -> None:
        """Called by the watchdog at each tick with the thread's step (or beat) counter."""
        if self._seen.get(ident) == counter or ident in self._unreadable:
            return
        self._seen[ident] = counter
        reading = self.read(ident)
        if reading is not None:
            kept = self._kept.get(ident)
            if kept is None:
                kept = self._kept[ident] = deque(maxlen=_KEPT)
            kept.append(reading)

    def read(self, ident: int) -> Timed | None:
        fd = self._fds.get(ident)
        if fd is None:
            fd = self._open(ident)
            if fd is None:
                return None
        at = perf_counter_ns()
        try:
            reading = _parse(os.pread(fd, 128, 0))
        except OSError:
            reading = None
        return (at, *reading) if reading is not None else None

    def _open(self, ident: int) -> int | None:
        with self._opening:
            fd = self._fds.get(ident)
            if fd is not None or ident in self._unreadable:
                return fd
            native = _native_id(ident)
            try:
                if native is None:
                    raise OSError
                # O_NONBLOCK: a procfs file never waits for a device; checkers of
                # blocking calls on a loop thread (blockbuster) let it pass (see _read).
                fd = self._fds[ident] = os.open(f"/proc/self/task/{native}/schedstat",
                                               os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # not Linux, or no /proc: never asked again for this thread
                self._unreadable.add(ident)
                return None
            return fd

    def around(self, ident: int, start_ns: int, end_ns: int) -> tuple[Timed | None, Timed | None]:
        """(last reading at or before ``start_ns``, first one inside the interval)."""
        before: Timed | None = None
        inside: Timed | None = None
        for reading in list(self._kept.get(ident, ())):
            if reading[0] <= start_ns:
                before = reading
            elif reading[0] < end_ns and inside is None:
                inside = reading
        return before, inside

    def forget_threads(self, alive: set[int]) -> None:
        for ident in [i for i in self._fds if i not in alive]:
            self._close(ident)
        for table in (self._seen, self._kept):
            for ident in [i for i in table if i not in alive]:
                del table[ident]
        self._unreadable &= alive

    def close(self) -> None:
        for ident in list(self._fds):
            self._close(ident)

    def _close(self, ident: int) -> None:
        fd = self._fds.pop(ident, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
