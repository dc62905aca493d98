"""What the watchdog does with the native sampler's samples.

Samples taken during a step join that step's :class:`StepSamples`, as the watchdog's own
would (their line is exact inside C code that holds the GIL); looks that found the loop
thread waiting for the GIL are counted beside them, with the holder's line and call.
Waits for the GIL between two steps (the loop woke from select and could not run) make
blocks of their own, ``gil-stall``, timed by the sampler's looks. When the block of a
step is built, :meth:`NativeFeed.finish` adds what the samples knew: how the call was
known, the time spent waiting for the GIL and who held it; a step that mostly waited for
the GIL becomes a ``gil-stall``, keeping its own line as evidence.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from looptrace.events import Block, CallSource, CodeLocation

from .blocks import CAUSE_SHARE, accounts_alone
from .native import Located, NativeSample, NativeSampler

SampleKey = tuple[object, int]
GIL_WAIT = "gil"
"""The cause named for a block that spent at least a quarter of its time waiting for the GIL."""
AddSample = Callable[[SampleKey, int, NativeSample, Any], None]
"""(step key, thread ident, the sample, the step's handle while it still runs)."""


@dataclass(slots=True)
class GilWait:
    """Looks at one step (or one wait between steps) that saw the loop waiting for the GIL."""

    looks: int = 0
    waiting: int = 0
    first_ns: int = 0
    last_ns: int = 0
    holders: Counter[int] = field(default_factory=Counter)
    held: dict[int, Counter[Located]] = field(default_factory=dict)
    """Per holder: where its looks found it (the most frequent names the stall: a single
    look may land in a moment the holder spends elsewhere)."""
    held_cpu: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Per holder: its CPU time at the first and the last look."""

    def add(self, sample: NativeSample) -> None:
        if not self.waiting:
            self.first_ns = sample.t_ns
        self.waiting += 1
        self.last_ns = sample.t_ns
        self.holders[sample.holder] += 1
        if sample.held is not None and sample.held.site is not None:
            self.held.setdefault(sample.holder, Counter())[sample.held] += 1
        if sample.held_cpu_ns is not None:
            first = self.held_cpu.get(sample.holder, (sample.held_cpu_ns, 0))[0]
            self.held_cpu[sample.holder] = (first, sample.held_cpu_ns)

    def holder_worked_ns(self, ident: int) -> int | None:
        """How long the holder ran on a CPU between the first and the last look."""
        cpu = self.held_cpu.get(ident)
        return cpu[1] - cpu[0] if cpu is not None else None

    def holder(self) -> tuple[int, Located | None]:
        ident = self.holders.most_common(1)[0][0]
        seen = self.held.get(ident)
        return ident, seen.most_common(1)[0][0] if seen else None


class ThreadNames:
    """Thread idents to names, noted while the threads live: a holder may end before its
    stall is collected (the collecting thread cannot run while the holder has the GIL)."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}
        self._threads_seen = -1

    def refresh(self, force: bool = False) -> None:
        count = threading.active_count()
        if count == self._threads_seen and not force:
            return
        self._threads_seen = count
        if len(self._names) > 1024:
            self._names.clear()
        for thread in threading.enumerate():
            if thread.ident is not None:
                self._names[thread.ident] = thread.name

    def __call__(self, ident: int) -> str:
        if ident not in self._names:
            self.refresh(force=True)
        return self._names.get(ident, f"thread {ident}")


class NativeFeed:
    def __init__(self, sampler: NativeSampler, *, threshold_ns: int, interval_ns: int,
                 on_block: Callable[[Block], None],
                 loop_of_thread: Callable[[int], tuple[int, str] | None]) -> None:
        self.sampler = sampler
        self._threshold_ns = threshold_ns
        self._interval_ns = interval_ns
        self._on_block = on_block
        self._loop_of_thread = loop_of_thread
        self._sources: dict[SampleKey, dict[tuple[CodeLocation | None, str | None],
                                            CallSource | None]] = {}
        self._gil: dict[SampleKey, GilWait] = {}
        self._between: dict[int, GilWait] = {}
        self._names = ThreadNames()

    def drain(self, threads: dict[int, tuple[int, Any]], add: AddSample) -> None:
        """Take every watched thread's samples; ``threads`` maps a thread ident to the
        seq and handle of its running step (handle None between steps)."""
        self._names.refresh()
        for thread_id, (seq, handle) in threads.items():
            for sample in self.sampler.take(thread_id):
                if sample.in_step:
                    self._end_wait(thread_id, sample.t_ns)
                    self._step_sample((thread_id, sample.seq), thread_id, sample,
                                      handle if seq == sample.seq else None, add)
                elif sample.waiting:
                    self._between.setdefault(thread_id, GilWait()).add(sample)
                else:
                    self._end_wait(thread_id, sample.t_ns)

    def _step_sample(self, key: SampleKey, thread_id: int, sample: NativeSample,
                     handle: Any, add: AddSample) -> None:
        located = sample.loop
        self._sources.setdefault(key, {})[(located.site, located.call)] = located.call_source
        add(key, thread_id, sample, handle)
        gil = self._gil.setdefault(key, GilWait())
        gil.looks += 1
        if sample.waiting:
            gil.add(sample)

    def forget(self, keys: set[SampleKey]) -> None:
        """Drop what is kept for steps that ended short."""
        for key in keys:
            self._sources.pop(key, None)
            self._gil.pop(key, None)

    def natively_sampled(self, key: SampleKey) -> bool:
        return key in self._sources

    def _end_wait(self, thread_id: int, now_ns: int) -> None:
        wait = self._between.pop(thread_id, None)
        if wait is None:
            return
        # Each edge is known within one look: count the last look's interval in.
        duration = wait.last_ns - wait.first_ns + self._interval_ns
        loop = self._loop_of_thread(thread_id)
        if duration < self._threshold_ns or loop is None:
            return
        ident, held = wait.holder()
        worked = wait.holder_worked_ns(ident)
        if worked is not None and wait.waiting > 1 and worked * 2 < self._threshold_ns:
            # The holder hardly ran: it was preempted with the GIL (a machine out of CPU),
            # its work did not hold the loop. Not a GIL stall of that thread's making.
            return
        site = held.site if held is not None else None
        call = held.call if held is not None else None
        self._on_block(Block(
            loop_id=loop[0], thread_id=thread_id, thread_name=loop[1],
            start_ns=wait.first_ns - self._interval_ns // 2, duration_ns=duration,
            duration_source="native-sampler", kind="gil-stall", call=call, site=site,
            site_source="gil-holder" if site is not None else "unknown",
            stack=held.stack if held is not None else (), task=None, coroutine=None,
            callback=None, samples=wait.waiting, trace_id=None, span_id=None,
            call_source=held.call_source if held is not None else None,
            gil_wait_ns=duration, gil_holder=self._names(ident), gil_holder_call=call,
            gil_holder_site=site))

    def finish(self, key: SampleKey, block: Block) -> Block:
        """The block of step ``key``, with what the native samples knew about it."""
        sources = self._sources.pop(key, None)
        gil = self._gil.pop(key, None)
        if sources is None:
            return block
        changes: dict[str, Any] = {}
        if block.site_source == "samples":
            changes["site_source"] = "native-samples"
            changes["call_source"] = sources.get((block.site, block.call))
        if gil is not None and gil.waiting and gil.looks:
            ident, held = gil.holder()
            changes.update(
                gil_wait_ns=block.duration_ns * gil.waiting // gil.looks,
                gil_holder=self._names(ident),
                gil_holder_call=held.call if held is not None else None,
                gil_holder_site=held.site if held is not None else None)
            if changes["gil_wait_ns"] * CAUSE_SHARE >= block.duration_ns \
                    and GIL_WAIT not in block.causes:
                changes["causes"] = (*block.causes, GIL_WAIT)
            worked = gil.holder_worked_ns(ident)
            if accounts_alone(changes["gil_wait_ns"], block.duration_ns, self._threshold_ns) \
                    and (worked is None or gil.waiting == 1 or worked * 2 >= self._threshold_ns):
                # Mostly waiting for the GIL (a probed Event.wait in Thread.start, say): the
                # holder's call is the headline, the loop's own line stays the site. A step
                # that would have been a block without the wait (a 70 ms time.sleep that then
                # waited 73 ms for the GIL on a busy machine) keeps its own verdict.
                changes.update(kind="gil-stall", call=changes["gil_holder_call"],
                               call_source=held.call_source if held is not None else None)
        return replace(block, **changes)
