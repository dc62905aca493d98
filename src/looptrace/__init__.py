"""looptrace: where an asyncio program loses its time.

Every select/epoll wait, every step of the event loop, and every block (a step at or over
the threshold) with its exact duration, its exact line, the blocking call and the task.

    import looptrace
    looptrace.install(threshold_ms=100)
    ...
    print(looptrace.snapshot().hotspots)

or, with no code change: ``looptrace run app.py``.

PYTEST_DONT_REWRITE: this package is a library that ``sitecustomize``, a ``.pth`` file or
``opentelemetry-instrument`` may import before pytest starts. Its distribution also ships
the ``pytest11`` plugin, so pytest marks the whole ``looptrace`` package for assertion
rewriting and, finding it already imported, would warn (an error under
``filterwarnings = error``). The marker above tells pytest this package is not to be
rewritten; it has no assertions a test relies on. The plugin module itself, which only
pytest imports, is still rewritten as any plugin is.
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
