"""The fault policy: an error inside one of looptrace's hooks is counted, that hook is
switched off, and one warning goes to the ``looptrace`` logger; the program never sees it.

Kept apart from the recorder's aggregates: the hooks report here (``fault``), the tracer
registers how to switch each hook off (``on_fault``), and the report reads ``faults()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ._text import printable, terminal_safe
from .events import Fault

logger = logging.getLogger("looptrace")

HANDLING = "fault-handling"
"""The name under which a failure of this policy itself is reported (a disabler or the
log handler raising): counted like any fault, never raised."""


class FaultPolicy:
    """Thread-safe; :meth:`fault` never raises."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[int, str]] = {}
        self._disablers: dict[str, Callable[[], None]] = {}

    def on_fault(self, hook: str, disable: Callable[[], None]) -> None:
        """Register what to do when ``hook`` fails: switch it off."""
        self._disablers[hook] = disable

    def fault(self, hook: str, exc: BaseException, count: int = 1) -> None:
        """An error inside a hook (``count`` of them, when a hook counted errors it caught
        itself): count it, disable that hook, log once."""
        first = self._count(hook, exc, count)
        if not first:
            return
        try:
            disable = self._disablers.get(hook)
            if disable is not None:
                disable()
            logger.warning("looptrace: the %s hook failed and is now disabled "
                           "(the program is not affected): %s: %s",
                           hook, type(exc).__name__, terminal_safe(exc))
        except Exception as inner:  # the program comes first: counted, in the report
            self._count(HANDLING, inner, 1)

    def _count(self, hook: str, exc: BaseException, count: int) -> bool:
        """Add to ``hook``'s count; whether it is the first fault of that hook."""
        with self._lock:
            entry = self._faults.get(hook)
            if entry is None:
                self._faults[hook] = (count, f"{type(exc).__name__}: {printable(exc)}")
                return True
            self._faults[hook] = (entry[0] + count, entry[1])
            return False

    def faults(self) -> tuple[Fault, ...]:
        with self._lock:
            return tuple(Fault(hook, count, error)
                         for hook, (count, error) in self._faults.items())
