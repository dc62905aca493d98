"""``sys._current_frames()``, made safe on CPython 3.11.

On 3.11, ``sys._current_frames()`` holds the runtime's thread-list lock while it makes
frame objects. A garbage collection started by one of those allocations may free a
``threading.local`` (looptrace's pure-Python step hook has one; so do many programs and
libraries), whose destructor takes that lock again: the whole process hangs, GIL held
(CPython gh-106883 and gh-116969; 3.12 runs collections only between bytecodes). The
watchdog calls it every few milliseconds while the loop is blocked, so looptrace holds the
collector off around the call, as the fix proposed for CPython does.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from types import FrameType

CurrentFrames = Callable[[], dict[int, FrameType]]


def _with_gc_held_off() -> dict[int, FrameType]:
    """The pure-Python fallback. Another thread could run between the calls below: if it
    switched the collector off itself there, it is switched on again after (a race the C
    version, which runs no Python code in between, does not have)."""
    if not gc.isenabled():
        return sys._current_frames()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        gc.enable()


def _choose() -> CurrentFrames:
    if sys.version_info >= (3, 12):
        return sys._current_frames
    try:
        from looptrace._speedups import current_frames
    except ImportError:  # not built, or built before it had current_frames
        return _with_gc_held_off
    return current_frames


current_frames: CurrentFrames = _choose()
"""``sys._current_frames()``: thread ident -> the frame it runs now."""
