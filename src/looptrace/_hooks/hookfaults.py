"""Errors inside the hooks, routed to the fault policy (:mod:`looptrace._faults`).

A hook never raises into the program: a Python callback a hook calls is wrapped by
:func:`guarded`, and what the C hooks caught and counted themselves (they cannot log from
the hot path) is turned into faults later by :class:`SwallowedFaults`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from looptrace._recorder import LoopRecord, Recorder


def guarded(callback: Callable[..., None], hook: str,
            recorder: Recorder) -> Callable[..., None]:
    """``callback`` for a hook to call from the hot path: an error in it is a fault of
    ``hook`` (counted, logged once, hook disabled), never an error in the program."""

    def call(*args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:
            recorder.fault(hook, exc)

    return call


class SwallowedFaults:
    """The errors the step hook and select timers caught and counted, reported once each."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._reported: dict[object, int] = {}
        self._lock = threading.RLock()  # reentrant: see _hooks/probes.py

    def report(self, step_hook: Any, records: Iterable[LoopRecord]) -> None:
        """The step hook and select timers (C or Python) catch an error raised inside them
        and count it, since they cannot log from the hot path: turn new counts into faults,
        so the report shows them and the hook is switched off."""
        counters: list[tuple[str, object, Any]] = [("steps", "steps", step_hook)]
        counters.extend(("selector", record.loop_id, record.timer) for record in records)
        with self._lock:
            for hook, key, counter in counters:
                count = int(getattr(counter, "faults", 0) or 0)
                new = count - self._reported.get(key, 0)
                if new > 0:
                    self._reported[key] = count
                    self._recorder.fault(hook, RuntimeError(
                        f"an error inside the {hook} hook (caught and counted by the hook)"),
                        new)
