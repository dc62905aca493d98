"""looptrace: where an asyncio program loses its time.

Every select/epoll wait, every step of the event loop, and every block (a step at or over
the threshold) with its exact duration, its exact line, the blocking call and the task.

    import looptrace
    looptrace.install(threshold_ms=100)
    ...
    print(looptrace.snapshot().hotspots)

or, with no code change: ``looptrace run app.py``.
"""

from ._api import Tracing, install, installed, is_installed, loop_factory, snapshot, uninstall
from ._version import __version__
from .events import CodeLocation
from .session import ReportError, Session

__all__ = [
    "CodeLocation",
    "ReportError",
    "Session",
    "Tracing",
    "__version__",
    "install",
    "installed",
    "is_installed",
    "loop_factory",
    "snapshot",
    "uninstall",
]
