"""Nested loop runs: a step that runs its own loop again (nest_asyncio, a nested
``run_until_complete``) contains other steps and select waits. Charged whole, it would be
one huge block on top of the blocks of the steps inside it, and a probed call inside the
nested run would be pinned on the outer step.

``events._set_running_loop(loop)`` while that loop already runs on the thread marks where a
nested run starts or ends (nest_asyncio calls it on the way in and on the way out); the
marks are kept per thread with the step they happened in, so a long step can take the
nested runs out of its own time. The door is called once per run, never per step.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter_ns

_KEPT = 128


class NestedRuns:
    def __init__(self) -> None:
        self._marks: dict[int, deque[tuple[int, int]]] = {}

    def mark(self, thread_id: int, step_handle: object) -> None:
        """A nested run of the loop began or ended inside the step of ``step_handle``."""
        marks = self._marks.get(thread_id)
        if marks is None:
            marks = self._marks.setdefault(thread_id, deque(maxlen=_KEPT))
        marks.append((perf_counter_ns(), id(step_handle)))

    def within(self, thread_id: int, step_handle: object, start_ns: int,
               end_ns: int) -> list[tuple[int, int]]:
        """The nested runs directly inside one step, ``(start_ns, end_ns)`` each; one still
        open at ``end_ns`` (a step in progress) ends there."""
        marks = self._marks.get(thread_id)
        if not marks:
            return []
        key = id(step_handle)
        times = [t for t, handle in list(marks) if handle == key and start_ns <= t <= end_ns]
        if len(times) % 2:
            times.append(end_ns)
        return list(zip(times[0::2], times[1::2], strict=True))

    def forget_threads(self, alive: set[int]) -> None:
        for ident in [i for i in self._marks if i not in alive]:
            del self._marks[ident]


def outside(intervals: list[tuple[int, int]], start_ns: int) -> bool:
    """Whether ``start_ns`` lies outside every interval."""
    return all(not (begin <= start_ns < end) for begin, end in intervals)
