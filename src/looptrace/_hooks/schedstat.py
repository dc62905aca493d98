"""CPU starvation: how long a loop thread was ready to run but had no CPU.

Linux counts, per thread, the time it spent runnable but waiting in a run queue
(``/proc/.../schedstat``): other processes or threads had the CPUs, or the container hit
its CPU limit. A block spent mostly there is not the fault of whatever line happened to be
running; the report names it as such. Read twice per long step (when the watchdog first
samples it, and when it ends), never on the hot path; elsewhere than Linux it is simply
absent.
"""

from __future__ import annotations

import os
import threading

Reading = tuple[int, int]
"""(nanoseconds on a CPU, nanoseconds waiting for one)"""


def _read(path: str) -> Reading | None:
    # Read at the end of a long step on the loop thread itself. A procfs file is made by
    # the kernel from memory and never waits for a device; opened O_NONBLOCK it says so,
    # and checkers of blocking calls on a loop thread (blockbuster) let it pass instead of
    # raising inside the step hook, which would switch the hook off.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        on_cpu, waiting = os.read(fd, 256).split()[:2]
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def of_this_thread() -> Reading | None:
    return _read("/proc/thread-self/schedstat")


def of_thread(ident: int) -> Reading | None:
    """The reading of the thread whose ``threading.get_ident()`` is ``ident``."""
    for thread in threading.enumerate():
        if thread.ident == ident:
            native = thread.native_id
            return _read(f"/proc/self/task/{native}/schedstat") if native is not None else None
    return None
