"""CPU starvation: how long a loop thread was ready to run but had no CPU.

Linux counts, per thread, the time it spent runnable but waiting in a run queue
(``/proc/.../schedstat``): other processes or threads had the CPUs, or the container hit
its CPU limit. A block spent mostly there is not the fault of whatever line happened to be
running; the report names it as such. Read twice per long step (when the watchdog first
samples it, and when it ends), never on the hot path; elsewhere than Linux it is simply
absent.
"""

from __future__ import annotations

import threading

Reading = tuple[int, int]
"""(nanoseconds on a CPU, nanoseconds waiting for one)"""


def _read(path: str) -> Reading | None:
    try:
        with open(path, "rb") as f:
            on_cpu, waiting = f.read().split()[:2]
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return None


def of_this_thread() -> Reading | None:
    return _read("/proc/thread-self/schedstat")


def of_thread(ident: int) -> Reading | None:
    """The reading of the thread whose ``threading.get_ident()`` is ``ident``."""
    for thread in threading.enumerate():
        if thread.ident == ident:
            native = thread.native_id
            return _read(f"/proc/self/task/{native}/schedstat") if native is not None else None
    return None
