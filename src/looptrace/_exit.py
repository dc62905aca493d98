"""How a ``looptrace run`` ends: the report written once, whatever stops the program, and
the process ending the way it would have ended under ``python``.

- The program returns, raises or calls ``sys.exit``: the report is written, then its status.
- SIGTERM while the program leaves SIGTERM to its default (death): a handler writes the
  report, then the process dies of SIGTERM as it would have. The handler runs on the main
  thread between two bytecodes of whatever it interrupted, possibly looptrace's own code
  holding a lock; so every lock on this path is reentrant (see ``_hooks/probes.py``), and
  a deadline kills the process with SIGTERM if a lock of someone else's still holds the
  report up. A second SIGTERM ends it at once.
- Ctrl-C or SIGTERM while the report is being written: noted, the report finished, then
  the process dies of that signal. A second Ctrl-C abandons the report with one line.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGTERM_DEADLINE_S = 10.0
"""After SIGTERM, the longest the report may take before the process dies without it
(Docker and systemd wait 10 s or more before SIGKILL)."""

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _Abandoned(BaseException):
    """A second Ctrl-C while the report is written: stop writing."""


def _in_main_thread() -> bool:
    return _thread.get_ident() == _MAIN_THREAD_ID


_MAIN_THREAD_ID = _thread.get_ident()


def flush_stdio() -> None:
    """As python's finalisation does before it dies of a signal."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def die_of(signum: int) -> int:
    """End the process killed by ``signum``, as python does after an uncaught
    KeyboardInterrupt (SIGINT) or when SIGTERM has its default action."""
    flush_stdio()
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return 128 + signum


class Finisher:
    """Calls ``write`` (stop recording, write the reports and the summary) once, with
    SIGINT and SIGTERM deferred until it is done."""

    def __init__(self, write: Callable[[], None]) -> None:
        self._write = write
        self._done = False
        self.deferred: int | None = None
        """The signal that arrived while writing, to die of afterwards."""

    def __call__(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            with self._signals_deferred():
                self._write()
        except _Abandoned:
            with contextlib.suppress(Exception):
                sys.stderr.write("looptrace: interrupted again while writing the report; "
                                 "report abandoned\n")
            self.deferred = signal.SIGINT

    @contextlib.contextmanager
    def _signals_deferred(self) -> Iterator[None]:
        if not _in_main_thread():
            yield
            return
        previous: dict[int, _Handler] = {}

        def note(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGINT and self.deferred == signal.SIGINT:
                raise _Abandoned
            if previous.get(signum) is not signal.SIG_IGN:
                self.deferred = self.deferred or signum

        for signum in (int(signal.SIGINT), int(signal.SIGTERM)):
            with contextlib.suppress(OSError, ValueError):
                current = signal.getsignal(signum)
                if current is signal.SIG_DFL and signum == signal.SIGTERM \
                        and self.deferred == signal.SIGTERM:
                    continue  # inside the SIGTERM handler: a second SIGTERM ends it now
                previous[signum] = current
                signal.signal(signum, note)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                with contextlib.suppress(OSError, ValueError, TypeError):
                    signal.signal(signum, handler)


def _deadline(seconds: float) -> None:
    """Started on a raw thread (``threading`` may be mid-way through starting a thread of
    the program, holding its own lock): if the report is not written in time, die."""
    time.sleep(seconds)
    with contextlib.suppress(OSError):
        os.write(2, b"looptrace: the report was not written within "
                    b"%d s of SIGTERM; ending without it\n" % int(seconds))
    os.kill(os.getpid(), signal.SIGTERM)


def report_on_sigterm(finish: Finisher) -> Callable[[], None]:
    """Services stop on SIGTERM, which would end the process before any report is written.
    While the program leaves SIGTERM to its default (death), write the report first, then
    die of SIGTERM as it would have. A program that handles SIGTERM itself replaces this.
    Returns what restores the default."""
    if not hasattr(signal, "SIGTERM") or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # From here a second SIGTERM, or the deadline, ends the process at once.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            _thread.start_new_thread(_deadline, (SIGTERM_DEADLINE_S,))
        finish.deferred = signal.SIGTERM
        with contextlib.suppress(Exception):
            finish()
        die_of(signal.SIGINT if finish.deferred == signal.SIGINT else signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore
