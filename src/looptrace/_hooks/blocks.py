"""From a long step to a :class:`~looptrace.events.Block`.

A long step is known exactly when it ends (the step timer gives start and end); what ran
during it is known from the watchdog's stack samples and from the probes that fired. This
module joins the three: a probe that explains most of the time makes a ``blocking-call``
at the probe's call site; otherwise the most frequent sampled line makes a ``slow-step``.
Without samples (a block shorter than the watchdog's reaction time, or C code that held
the GIL throughout), the task's await point or the callback's definition stands in, and
``site_source`` says so.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from looptrace.events import (
    Block,
    CodeLocation,
    DurationSource,
    ProbeCall,
    SiteSource,
)

from .owners import task_name

_MAX_SITES_PER_STEP = 64
CPU_STARVED = "cpu.run_queue"
"""The call named for a block spent mostly waiting for a CPU."""


def _cpu_wait(step: LongStep, samples: StepSamples | None, duration: int) -> int:
    """Time the loop thread waited for a CPU during the step: measured from the first
    sample to the step's end, and scaled to the whole step."""
    if samples is None or samples.sched is None or step.sched_end is None:
        return 0
    start, _, waited_before = samples.sched
    end, _, waited_after = step.sched_end
    if end <= start:
        return 0
    return max(0, min(duration, (waited_after - waited_before) * duration // (end - start)))


@dataclass(slots=True)
class LongStep:
    """What the loop thread knows when a step at or over the threshold ends."""

    loop_id: int
    thread_id: int
    thread_name: str
    start_ns: int
    end_ns: int
    sample_key: tuple[object, int]
    duration_source: DurationSource
    task: str | None
    coroutine: str | None
    callback: str | None
    fallback_site: CodeLocation | None
    fallback_source: SiteSource
    trace_id: int | None
    span_id: int | None
    probe_calls: list[ProbeCall]
    trace_sampled: bool = True
    sched_end: tuple[int, int, int] | None = None
    """(end_ns, ns on a CPU, ns waiting for one) of the loop thread when the step ended."""
    gc_ns: int = 0
    gc_generation: int = -1


@dataclass(slots=True)
class SampledTask:
    """The task current at sample time. Its name is read again when the block is built:
    an eager task (3.12+) runs its first step before ``create_task`` has named it."""

    ref: weakref.ref[Any] | None
    name: str
    coroutine: str | None

    def current_name(self) -> str:
        task = self.ref() if self.ref is not None else None
        if task is not None:
            try:
                return task_name(task)
            except Exception:  # a task subclass may misbehave; the sampled name stands
                return self.name
        return self.name


@dataclass(slots=True)
class SiteSamples:
    count: int = 0
    stack: tuple[CodeLocation, ...] = ()
    tasks: Counter[int] = field(default_factory=Counter)
    spans: Counter[tuple[int, int, bool]] = field(default_factory=Counter)


@dataclass(slots=True)
class StepSamples:
    """The watchdog's samples of one running step, grouped by (site, callee)."""

    count: int = 0
    overflow: int = 0
    by_site: dict[tuple[CodeLocation | None, str | None], SiteSamples] = field(
        default_factory=dict)
    tasks: dict[int, SampledTask] = field(default_factory=dict)
    sched: tuple[int, int, int] | None = None
    """(time, ns on a CPU, ns waiting for one) of the loop thread at the first sample."""

    def add(self, site: CodeLocation | None, callee: str | None,
            stack: tuple[CodeLocation, ...], task: Any, coroutine: str | None,
            span: tuple[int, int, bool] | None) -> None:
        self.count += 1
        key = (site, callee)
        entry = self.by_site.get(key)
        if entry is None:
            if len(self.by_site) >= _MAX_SITES_PER_STEP:
                self.overflow += 1
                return
            entry = self.by_site[key] = SiteSamples(stack=stack)
        entry.count += 1
        if task is not None:
            task_id = id(task)
            if task_id not in self.tasks:
                try:
                    ref: weakref.ref[Any] | None = weakref.ref(task)
                except TypeError:
                    ref = None
                self.tasks[task_id] = SampledTask(ref, task_name(task), coroutine)
            entry.tasks[task_id] += 1
        if span is not None:
            entry.spans[span] += 1

    def most_common(self) -> tuple[tuple[CodeLocation | None, str | None], SiteSamples] | None:
        if not self.by_site:
            return None
        return max(self.by_site.items(), key=lambda item: item[1].count)


def build_block(step: LongStep, samples: StepSamples | None) -> Block:
    duration = step.end_ns - step.start_ns
    kind = "slow-step"
    call: str | None = None
    site = step.fallback_site
    site_source: SiteSource = step.fallback_source if site is not None else "unknown"
    stack: tuple[CodeLocation, ...] = (site,) if site is not None else ()
    task, coroutine = step.task, step.coroutine
    trace_id, span_id, trace_sampled = step.trace_id, step.span_id, step.trace_sampled

    best = samples.most_common() if samples is not None else None
    if best is not None:
        (sampled_site, callee), entry = best
        if sampled_site is not None:
            site, site_source, stack, call = sampled_site, "samples", entry.stack, callee
        if entry.tasks:
            # Eager tasks run their first step inside their creator's: trust the samples.
            sampled = samples.tasks[entry.tasks.most_common(1)[0][0]]  # type: ignore[union-attr]
            task, coroutine = sampled.current_name(), sampled.coroutine
        if entry.spans:
            trace_id, span_id, trace_sampled = entry.spans.most_common(1)[0][0]

    by_call: Counter[str] = Counter()
    for probe_call in step.probe_calls:
        by_call[probe_call.call] += probe_call.duration_ns
    if by_call:
        name, explained = by_call.most_common(1)[0]
        if explained * 2 >= duration:
            # The longest call of that name is the one to show; ties go to the outermost.
            longest = max((c for c in step.probe_calls if c.call == name),
                          key=lambda c: (c.duration_ns, -c.start_ns))
            kind, call = "blocking-call", name
            if longest.site is not None:
                site, site_source, stack = longest.site, "probe", longest.stack
            if longest.task is not None and best is None:
                task = longest.task
            if longest.trace_id is not None:
                trace_id, span_id = longest.trace_id, longest.span_id
                trace_sampled = longest.trace_sampled

    cpu_wait = _cpu_wait(step, samples, duration)
    if kind == "slow-step" and step.gc_ns * 2 >= duration:
        # Mostly a garbage collection: not the fault of whatever line was running.
        generation = f" (generation {step.gc_generation})" if step.gc_generation >= 0 else ""
        call, site, site_source, stack = f"gc.collect{generation}", None, "gc", ()
    elif kind == "slow-step" and cpu_wait * 2 >= duration:
        # Mostly waiting for a CPU: the machine or the container's CPU limit, not the line.
        call, site, site_source, stack = CPU_STARVED, None, "cpu", ()

    return Block(
        loop_id=step.loop_id, thread_id=step.thread_id, thread_name=step.thread_name,
        start_ns=step.start_ns, duration_ns=duration, duration_source=step.duration_source,
        kind=kind,  # type: ignore[arg-type]
        call=call, site=site, site_source=site_source, stack=stack, task=task,
        coroutine=coroutine, callback=step.callback,
        samples=samples.count if samples is not None else 0,
        trace_id=trace_id, span_id=span_id, gc_ns=step.gc_ns, trace_sampled=trace_sampled,
        cpu_wait_ns=cpu_wait,
    )
