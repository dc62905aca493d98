"""Probes: wrappers on known blocking functions that name the call behind a block.

A probe costs one C call (``_get_running_loop``) when it runs outside a loop thread, as it
does in executor threads, and two clock reads on a loop thread. Only a call that itself
took a noticeable time (:attr:`ProbeBuffer.min_ns`) records where it was made (site,
stack, task, trace context); the block it belongs to picks it up when the step ends.

The catalogue lists functions by dotted path. Modules that are not imported yet are
patched when they appear (the watchdog looks again every second), so installing
looptrace imports nothing on the program's behalf.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
from asyncio import events
from collections import deque
from collections.abc import Callable
from time import perf_counter_ns
from types import FrameType
from typing import Any

from looptrace.events import ProbeCall

from . import context
from ._patch import Patch, PatchSet
from .frames import CodeMap, locate
from .owners import coroutine_name, task_name

# (call name shown in reports, module, attribute path inside the module)
CATALOGUE: tuple[tuple[str, str, str], ...] = (
    ("time.sleep", "time", "sleep"),
    ("http.client.HTTPResponse.read", "http.client", "HTTPResponse.read"),
    ("http.client.HTTPResponse.readinto", "http.client", "HTTPResponse.readinto"),
    ("http.client.HTTPResponse.read1", "http.client", "HTTPResponse.read1"),
    ("http.client.HTTPResponse.readline", "http.client", "HTTPResponse.readline"),
    ("http.client.HTTPConnection.connect", "http.client", "HTTPConnection.connect"),
    ("http.client.HTTPConnection.getresponse", "http.client", "HTTPConnection.getresponse"),
    ("urllib.request.urlopen", "urllib.request", "urlopen"),
    ("socket.getaddrinfo", "socket", "getaddrinfo"),
    ("socket.gethostbyname", "socket", "gethostbyname"),
    ("socket.gethostbyaddr", "socket", "gethostbyaddr"),
    ("socket.create_connection", "socket", "create_connection"),
    ("select.select", "select", "select"),
    ("subprocess.run", "subprocess", "run"),
    ("subprocess.call", "subprocess", "call"),
    ("subprocess.check_call", "subprocess", "check_call"),
    ("subprocess.check_output", "subprocess", "check_output"),
    ("subprocess.Popen.wait", "subprocess", "Popen.wait"),
    ("subprocess.Popen.communicate", "subprocess", "Popen.communicate"),
    ("os.system", "os", "system"),
    ("os.waitpid", "os", "waitpid"),
    ("os.read", "os", "read"),
    ("builtins.input", "builtins", "input"),
    ("threading.Thread.join", "threading", "Thread.join"),
    ("threading.Event.wait", "threading", "Event.wait"),
    ("threading.Condition.wait", "threading", "Condition.wait"),
    ("threading.Semaphore.acquire", "threading", "Semaphore.acquire"),
    ("threading.Barrier.wait", "threading", "Barrier.wait"),
    ("queue.Queue.get", "queue", "Queue.get"),
    ("queue.Queue.put", "queue", "Queue.put"),
    ("queue.Queue.join", "queue", "Queue.join"),
    ("concurrent.futures.Future.result", "concurrent.futures._base", "Future.result"),
    ("concurrent.futures.wait", "concurrent.futures._base", "wait"),
    ("requests.Session.request", "requests.sessions", "Session.request"),
)

_BUFFER_PER_THREAD = 256


class ProbeBuffer:
    """The probed calls of each loop thread, newest last; bounded per thread."""

    def __init__(self, min_ns: int, codemap: CodeMap) -> None:
        self.min_ns = min_ns
        self._codemap = codemap
        self._calls: dict[int, deque[ProbeCall]] = {}

    def record(self, call: str, start_ns: int, duration_ns: int, caller: FrameType | None,
               loop: Any) -> None:
        site, _, stack = locate(caller, self._codemap)
        task = _current_task(loop)
        ids = context.span_ids(None)
        thread_id = threading.get_ident()
        calls = self._calls.get(thread_id)
        if calls is None:
            calls = self._calls.setdefault(thread_id, deque(maxlen=_BUFFER_PER_THREAD))
        calls.append(ProbeCall(call, start_ns, duration_ns, thread_id, site, stack,
                               task_name(task) if task is not None else None,
                               ids[0] if ids else None, ids[1] if ids else None,
                               ids[2] if ids else True,
                               coroutine_name(task) if task is not None else None))

    def between(self, thread_id: int, start_ns: int, end_ns: int) -> list[ProbeCall]:
        """The calls a thread made entirely within ``[start_ns, end_ns]``."""
        calls = self._calls.get(thread_id)
        if not calls:
            return []
        return [c for c in list(calls)
                if c.start_ns >= start_ns and c.start_ns + c.duration_ns <= end_ns]

    def forget_threads(self, alive: set[int]) -> None:
        for thread_id in list(self._calls):
            if thread_id not in alive:
                self._calls.pop(thread_id, None)


def _current_task(loop: Any) -> Any:
    try:
        return asyncio.current_task(loop)
    except RuntimeError:
        return None


def make_probe(name: str, original: Callable[..., Any], buffer: ProbeBuffer,
               on_fault: Callable[[BaseException], None]) -> Callable[..., Any]:
    get_running_loop = events._get_running_loop
    clock = perf_counter_ns
    getframe = sys._getframe

    @functools.wraps(original)
    def probe(*args: Any, **kwargs: Any) -> Any:
        loop = get_running_loop()
        if loop is None:
            return original(*args, **kwargs)
        start = clock()
        try:
            return original(*args, **kwargs)
        finally:
            duration = clock() - start
            if duration >= buffer.min_ns:
                try:
                    buffer.record(name, start, duration, getframe(1), loop)
                except Exception as exc:  # never raise into the program; counted
                    on_fault(exc)

    probe.__looptrace_probe__ = name  # type: ignore[attr-defined]
    return probe


def _resolve(module_name: str, path: str) -> tuple[Any, str] | None:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    owner: Any = module
    *parents, attribute = path.split(".")
    for part in parents:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    if not callable(vars(owner).get(attribute) if hasattr(owner, "__dict__") else None):
        return None
    return owner, attribute


class Probes:
    """The catalogue's probes: patched as their modules appear, reverted all at once."""

    def __init__(self, buffer: ProbeBuffer, on_fault: Callable[[BaseException], None],
                 catalogue: tuple[tuple[str, str, str], ...] = CATALOGUE) -> None:
        self.buffer = buffer
        self._on_fault = on_fault
        self._waiting = list(catalogue)
        self._patches = PatchSet()
        # Reentrant: SIGTERM's report runs in a signal handler on the loop thread, which
        # may have been interrupted inside patch_available (run at every loop start);
        # a plain lock would make the handler wait for itself forever.
        self._lock = threading.RLock()
        self._closed = False
        self.installed = 0

    def patch_available(self) -> None:
        """Patch every waiting entry whose module is imported now."""
        with self._lock:
            if self._closed:
                return
            still_waiting = []
            for entry in self._waiting:
                name, module_name, path = entry
                found = _resolve(module_name, path)
                if found is None:
                    still_waiting.append(entry)
                    continue
                owner, attribute = found
                original = getattr(owner, attribute)
                if getattr(original, "__looptrace_probe__", None):
                    continue  # a probe left behind by an installation someone patched over
                self._patches.apply(
                    Patch(owner, attribute, make_probe(name, original, self.buffer,
                                                       self._on_fault)))
                self.installed += 1
            self._waiting = still_waiting
            if self._closed:  # reverted by a handler that interrupted this loop: undo ours
                self._patches.revert_all()
                self._waiting = []

    def revert(self, *, locked: bool = True) -> None:
        self._closed = True
        if not locked:
            self._patches.revert_all()
            self._waiting = []
            return
        with self._lock:
            self._patches.revert_all()
            self._waiting = []
