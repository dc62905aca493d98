"""Who paid for a block: the tasks and callbacks it kept waiting, read once when it ends.

A block ends on the loop thread (:mod:`.longsteps`); at that moment the loop's own queues
say who was waiting for it:

- a timer still in ``loop._scheduled`` whose deadline passed before the block's end
  expired during the block (or during the earlier steps of the same batch) and could not
  run: delayed from its deadline (or the block's start, if later) to the block's end;
- a handle in ``loop._ready`` that was already there when the block began (the rest of
  the batch, a timer moved there before the batch, a task woken by an earlier step): delayed
  by the whole block. Handles appended *during* the block were made ready by the block
  itself (``call_soon``, a future's result) and are not its victims: the watchdog counts
  ``len(loop._ready)`` at its first look at the step (:meth:`Watchdog.ready_at_first_look`),
  and only that many handles from the head of the FIFO count. Without that count (the
  watchdog had not looked yet) every handle counts, which may include the block's own.

- a socket that became readable during the block (a request arriving, a response to a
  request in flight): its reader callback waits for the block to end. asyncio registers
  sockets level-triggered, so asking the loop's epoll which are readable (``poll(0)``)
  takes nothing from the loop. The watchdog asks at each of its looks at a long step
  (:class:`ArrivedIo`, from its own thread: an epoll may be polled by two threads); the
  reader is delayed from the first look that saw its socket readable (from the block's
  start, if that was before) to the block's end, and one only readable at the end from the
  last look: within one look (a quarter of the threshold) of the truth. Sockets of other
  selectors, or of blocks the watchdog never looked at, are not counted.

Nothing here runs per step: only once per block (and once per look at a long step). Loops
without these internals (uvloop) have victims "not measured" (None).
"""

from __future__ import annotations

import asyncio
import select
import selectors
import threading
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from looptrace._clock import now_ns
from looptrace.events import Victim, Victims

from . import context
from .owners import callback_name, coroutine_name, task_name, task_of

MAX_DETAIL = 20
"""Victims kept in detail per block (the longest delayed)."""
MAX_REQUESTS = 20
"""Distinct trace ids kept per block."""
_MAX_SPAN_READS = 1000
"""Victims whose request is read per block (a span read costs about a microsecond)."""
_MAX_LIVE_SPANS = 256
_MAX_WAITERS = 8
_MAX_FDS = 1000
"""Readable sockets read per look and per block."""
_MAX_LOOKED_STEPS = 64


class LiveSpans:
    """The still-recording spans of recent victims, by ``(trace_id, span_id)``, held weakly
    and bounded: the OpenTelemetry sink links each back to the block that delayed it."""

    def __init__(self) -> None:
        self._spans: OrderedDict[tuple[int, int], weakref.ref[Any]] = OrderedDict()
        self._lock = threading.RLock()  # reentrant: see _hooks/probes.py

    def keep(self, trace_id: int, span_id: int, span: Any) -> None:
        try:
            ref = weakref.ref(span)
        except TypeError:  # a span type without weak references: no link back
            return
        with self._lock:
            self._spans[(trace_id, span_id)] = ref
            self._spans.move_to_end((trace_id, span_id))
            while len(self._spans) > _MAX_LIVE_SPANS:
                self._spans.popitem(last=False)

    def get(self, trace_id: int, span_id: int) -> Any:
        """The span, if it still exists (the caller checks it still records)."""
        with self._lock:
            ref = self._spans.get((trace_id, span_id))
        return ref() if ref is not None else None


SampleKey = tuple[object, int]
_NOT_READABLE = select.EPOLLOUT if hasattr(select, "EPOLLOUT") else 0


def raw_epoll(loop: Any) -> Any:
    """The loop's ``select.epoll`` object, or None for other selectors (a ``select.poll``
    refuses two threads at once, and a select() needs the loop's fd sets)."""
    selector = getattr(loop, "_selector", None)
    if not isinstance(selector, getattr(selectors, "EpollSelector", ())):
        return None
    raw = getattr(selector, "_selector", None)
    return raw if isinstance(raw, select.epoll) else None


def readable_fds(raw: Any) -> list[int]:
    """The fds the epoll reports readable now, without waiting and without taking any event
    from the loop (level-triggered). Read as asyncio's EpollSelector reads a mask."""
    try:
        events = raw.poll(0)
    except (OSError, ValueError):  # the loop closed it meanwhile: nothing to say
        return []
    return [fd for fd, mask in events if mask & ~_NOT_READABLE]


@dataclass(slots=True)
class IoLooks:
    """The watchdog's looks at one long step's loop: when it first saw each fd readable."""

    first_ns: int
    last_ns: int
    seen: dict[int, int] = field(default_factory=dict)


class ArrivedIo:
    """Readable sockets seen by the watchdog while steps ran long, per step (bounded)."""

    def __init__(self) -> None:
        self._looks: dict[SampleKey, IoLooks] = {}

    def look(self, key: SampleKey, loop: Any, now: int) -> None:
        """Called from the watchdog's thread at each look at a long step of ``loop``."""
        raw = raw_epoll(loop)
        if raw is None:
            return
        fds = readable_fds(raw)
        looks = self._looks.get(key)
        if looks is None:
            if len(self._looks) >= _MAX_LOOKED_STEPS:
                return
            looks = self._looks[key] = IoLooks(now, now)
        looks.last_ns = now
        for fd in fds[:_MAX_FDS]:
            looks.seen.setdefault(fd, now)

    def get(self, key: SampleKey) -> IoLooks | None:
        return self._looks.get(key)

    def keep_only(self, current: dict[object, int]) -> None:
        """Forget the steps that ended (``current``: each loop thread's running step)."""
        if self._looks:
            self._looks = {key: looks for key, looks in self._looks.items()
                           if current.get(key[0]) == key[1]}


def collect(loop: Any, start_ns: int, end_ns: int, ready_before: int | None,
            spans: LiveSpans | None = None, io: IoLooks | None = None) -> Victims | None:
    """The victims of a block of ``loop`` from ``start_ns`` to ``end_ns`` (perf_counter
    nanoseconds), or None when the loop's queues cannot be read (not measured)."""
    queues = _queues(loop)
    if queues is None:
        return None
    ready, scheduled, loop_now = queues
    # The loop's clock (time.monotonic for asyncio, anything for a custom loop) is
    # converted to ours by one pair of readings taken now, at the block's end.
    offset_ns = now_ns() - round(loop_now * 1e9)
    found: list[tuple[int, Any]] = []
    whole = end_ns - start_ns
    limit = len(ready) if ready_before is None else min(ready_before, len(ready))
    for handle in ready[:limit]:
        if not getattr(handle, "_cancelled", False):
            found.append((whole, handle))
    timers = [(end_ns - max(when_ns, start_ns), handle)
              for when_ns, handle in _expired(scheduled, end_ns, offset_ns)]
    if io is not None:
        queued = {id(handle) for handle in ready}
        timers.extend(pair for pair in _arrived(loop, io, start_ns, end_ns)
                      if id(pair[1]) not in queued)  # its reader already waits in the queue
    timers.sort(key=lambda pair: -pair[0])
    found.extend(timers)
    return _summarise(found, spans)


def _arrived(loop: Any, io: IoLooks, start_ns: int, end_ns: int) -> list[tuple[int, Any]]:
    """``(delay_ns, reader handle)`` of the sockets readable at the block's end (read on the
    loop thread). The loop's self-pipe is left out: what other threads sent through it is
    in the ready queue already."""
    raw = raw_epoll(loop)
    if raw is None:
        return []
    own = getattr(getattr(loop, "_ssock", None), "fileno", lambda: -1)()
    keys = loop._selector.get_map()
    if keys is None:  # closed
        return []
    found: list[tuple[int, Any]] = []
    for fd in readable_fds(raw)[:_MAX_FDS]:
        key = keys.get(fd) if fd != own else None
        data = getattr(key, "data", None)
        reader = data[0] if isinstance(data, tuple) and data else None
        if reader is None or getattr(reader, "_cancelled", False):
            continue
        # A look may run as the step ends (the watchdog's thread): one after the end
        # knows nothing of the block.
        delay = end_ns - max(min(io.seen.get(fd, io.last_ns), end_ns), start_ns)
        if delay > 0:
            found.append((delay, reader))
    return found


def _queues(loop: Any) -> tuple[list[Any], list[Any], float] | None:
    ready = getattr(loop, "_ready", None)
    scheduled = getattr(loop, "_scheduled", None)
    clock = getattr(loop, "time", None)
    if not isinstance(ready, deque) or not isinstance(scheduled, list) or clock is None:
        return None
    loop_now = clock()
    if not isinstance(loop_now, int | float):
        return None
    # The ready queue is copied (a deque raises if it changes while iterated: a block still
    # in progress is read from the stopping thread); the heap is walked in place, each
    # index checked, as copying it would cost as much as walking 10,000 timers.
    return list(ready), scheduled, float(loop_now)


def _expired(heap: list[Any], end_ns: int, offset_ns: int) -> list[tuple[int, Any]]:
    """``(deadline_ns, handle)`` of the live timers due before ``end_ns``. ``heap`` is a
    heap by deadline: only the expired part of it is walked, however many timers wait."""
    expired: list[tuple[int, Any]] = []
    pending = [0] if heap else []
    while pending:
        index = pending.pop()
        if index >= len(heap):
            continue
        handle = heap[index]
        when = getattr(handle, "_when", None)
        if not isinstance(when, int | float):
            continue
        when_ns = round(when * 1e9) + offset_ns
        if when_ns >= end_ns:
            continue  # the heap's order: nothing under it is due either
        if not getattr(handle, "_cancelled", False):
            expired.append((when_ns, handle))
        pending.extend((2 * index + 1, 2 * index + 2))
    return expired


def _summarise(found: list[tuple[int, Any]], spans: LiveSpans | None) -> Victims:
    requests: dict[int, None] = {}
    readable = context.readable()
    for _, handle in found[:_MAX_SPAN_READS] if readable else ():
        ids = context.span_ids(getattr(handle, "_context", None))
        if ids is not None:
            requests.setdefault(ids[0])
    detail = tuple(_victim(delay, handle, readable, spans)
                   for delay, handle in found[:MAX_DETAIL])
    return Victims(
        count=len(found), total_ns=sum(delay for delay, _ in found),
        max_ns=max((delay for delay, _ in found), default=0),
        requests=tuple(requests)[:MAX_REQUESTS], request_count=len(requests),
        detail=detail)


def _victim(delay_ns: int, handle: Any, readable: bool, spans: LiveSpans | None) -> Victim:
    callback = getattr(handle, "_callback", None)
    span = context.current_span(getattr(handle, "_context", None)) if readable else None
    ids = context.ids_of(span)
    if ids is not None and spans is not None and _recording(span):
        spans.keep(ids[0], ids[1], span)
    trace_id, span_id = (ids[0], ids[1]) if ids is not None else (None, None)
    task = task_of(callback) or _waiting_task(callback, getattr(handle, "_args", ()))
    if task is not None:
        return Victim("task", task_name(task), coroutine_name(task), delay_ns, trace_id,
                      span_id)
    return Victim("callback", callback_name(callback), None, delay_ns, trace_id, span_id)


def _waiting_task(callback: Any, args: Any) -> Any:
    """The task a timer's callback would wake: ``asyncio.sleep`` sets a future a task
    awaits; ``asyncio.timeout`` and ``wait_for`` call a method of an object holding the
    task. None when no task is found (a plain callback)."""
    owner = getattr(callback, "__self__", None)
    held = getattr(owner, "_task", None)
    if isinstance(held, asyncio.Task):
        return held
    for arg in args[:2] if isinstance(args, tuple) else ():
        if isinstance(arg, asyncio.Future):
            for entry in list(getattr(arg, "_callbacks", None) or ())[:_MAX_WAITERS]:
                waiter = task_of(entry[0] if isinstance(entry, tuple) else entry)
                if waiter is not None:
                    return waiter
    return None


def _recording(span: Any) -> bool:
    try:
        return bool(span.is_recording())
    except Exception:  # a span of another implementation: no link back
        return False
