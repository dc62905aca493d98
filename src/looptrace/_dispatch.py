"""Hands finished blocks to the live sinks (spans, metrics, logs) on a thread of its own,
so a slow sink never delays the watchdog's sampling, and never runs on a loop thread. The
queue is bounded; what overflows is counted.

The watchdog publishes the recorded :class:`~looptrace.events.Block` (cheap: a deque
append); the dispatch thread converts it once, with the ``convert`` it was given, and
hands the result to every listener, so all sinks read one record of the block.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ._clock import now_ns
from .events import Block

Event = TypeVar("Event")
OnFault = Callable[[str, BaseException], None]


class Dispatcher(Generic[Event]):
    def __init__(self, convert: Callable[[Block], Event], on_fault: OnFault,
                 capacity: int = 10_000) -> None:
        self._convert = convert
        self._listeners: list[tuple[str, Callable[[Event], None]]] = []
        self._queue: deque[Block] = deque()
        self._capacity = capacity
        self._on_fault = on_fault
        self._wake = threading.Condition(threading.Lock())
        self._closed = False
        self._busy = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="looptrace-dispatch", daemon=True)
        self._thread.start()

    def add(self, name: str, listener: Callable[[Event], None]) -> None:
        self._listeners.append((name, listener))

    def remove(self, name: str) -> None:
        self._listeners = [(n, f) for n, f in self._listeners if n != name]

    def publish(self, block: Block) -> None:
        with self._wake:
            if self._closed:
                return
            if len(self._queue) >= self._capacity:
                self.dropped += 1
                return
            self._queue.append(block)
            self._wake.notify_all()  # the runner, and any flush() waiting

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return
                block = self._queue.popleft()
                self._busy = True
            self._deliver(block)
            with self._wake:
                self._busy = False
                self._wake.notify_all()

    def _deliver(self, block: Block) -> None:
        try:
            event = self._convert(block)
        except Exception as exc:  # a fault of this stage: the block stays in the report
            self._on_fault("dispatch", exc)
            return
        for name, listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # a failing listener is removed, counted, logged
                self.remove(name)
                self._on_fault(name, exc)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every published block reached the listeners; False on timeout."""
        deadline = now_ns() + int(timeout_s * 1e9)
        with self._wake:
            while self._queue or self._busy:
                left = (deadline - now_ns()) / 1e9
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def close(self, timeout_s: float) -> None:
        """Deliver what is queued (within ``timeout_s``), then stop the thread."""
        self.flush(timeout_s)
        with self._wake:
            self._closed = True
            self.dropped += len(self._queue)
            self._queue.clear()
            self._wake.notify_all()
        self._thread.join(timeout_s)
