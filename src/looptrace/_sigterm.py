"""Write the report before dying of SIGTERM.

Services stop on SIGTERM: a process manager, ``docker stop``, Kubernetes at the start of
a pod's grace period, a master process for its workers. Left to its default, SIGTERM ends
the process at once: no ``atexit``, no report. While the program leaves SIGTERM to that
default, looptrace handles it: stop (which writes the reports, within the exit-flush
bound), then die of SIGTERM as the program would have, so its exit status is unchanged.
A program that handles SIGTERM itself keeps its handler and exits its own way.

"Left to its default" is judged at every moment, not once: servers reset SIGTERM to the
default after looptrace started (gunicorn's ``UvicornWorker`` does in each worker), and
uvicorn re-raises the SIGTERM it caught once it has shut down, with the handler it found.
So while installed, ``signal.signal(SIGTERM, SIG_DFL)`` puts looptrace's handler back
instead, and ``signal.signal``/``signal.getsignal`` show that handler as ``SIG_DFL``: the
program sees the default it asked for, and the report is still written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_original_signal = signal.signal
_original_getsignal = signal.getsignal
_ours: Callable[[int, FrameType | None], None] | None = None


def _shown(handler: _Handler) -> _Handler:
    return signal.SIG_DFL if handler is not None and handler is _ours else handler


def _signal(signalnum: int, handler: _Handler) -> _Handler:
    """``signal.signal`` while looptrace handles SIGTERM: the default means ours."""
    if signalnum == signal.SIGTERM and handler is signal.SIG_DFL and _ours is not None:
        handler = _ours
    return _shown(_original_signal(signalnum, handler))


def _getsignal(signalnum: int) -> _Handler:
    return _shown(_original_getsignal(signalnum))


def report_on_sigterm(stop: Callable[[], object]) -> Callable[[], None]:
    """Handle SIGTERM with ``stop`` then death while the program leaves it to its
    default (main thread only); return the function that takes all this back."""
    global _ours
    if (not hasattr(signal, "SIGTERM") or _ours is not None
            or threading.current_thread() is not threading.main_thread()):
        return lambda: None
    try:
        if _original_getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return lambda: None
    except (ValueError, OSError):
        return lambda: None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(Exception):
            stop()
        _release()
        with contextlib.suppress(ValueError, OSError):
            _original_signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        _original_signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return lambda: None
    _ours = on_sigterm
    signal.signal = _signal
    signal.getsignal = _getsignal
    return _restore


def _release() -> None:
    """Stop standing in for the default (the module functions back, if still ours)."""
    global _ours
    _ours = None
    if signal.signal is _signal:
        signal.signal = _original_signal
    if signal.getsignal is _getsignal:
        signal.getsignal = _original_getsignal


def _restore() -> None:
    ours = _ours
    _release()
    with contextlib.suppress(ValueError, OSError):
        if (ours is not None and threading.current_thread() is threading.main_thread()
                and _original_getsignal(signal.SIGTERM) is ours):
            _original_signal(signal.SIGTERM, signal.SIG_DFL)
