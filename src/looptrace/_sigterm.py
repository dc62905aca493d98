"""Write the report before dying of SIGTERM.

Services stop on SIGTERM: a process manager, ``docker stop``, Kubernetes at the start of
a pod's grace period, uvicorn's master for its workers (a uvicorn worker re-raises the
signal with the handler it found once it has shut down). Left to its default, SIGTERM ends
the process at once: no ``atexit``, no report. While the program leaves SIGTERM to that
default, looptrace handles it: stop (which writes the reports, within the exit-flush
bound), then die of SIGTERM as the program would have, so its exit status is unchanged.
A program that handles SIGTERM itself replaces this handler and exits its own way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType


def report_on_sigterm(stop: Callable[[], object]) -> Callable[[], None]:
    """Handle SIGTERM with ``stop`` then death, if SIGTERM is at its default and this is
    the main thread; return the function that takes the handler back (if still ours)."""
    if (not hasattr(signal, "SIGTERM") or threading.current_thread() is not
            threading.main_thread()):
        return lambda: None
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return lambda: None
    except (ValueError, OSError):
        return lambda: None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(Exception):
            stop()
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(ValueError, OSError):
            if (threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGTERM) is on_sigterm):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore
