"""From a long step to a :class:`~looptrace.events.Block`.

A long step is known exactly when it ends (the step timer gives start and end); what ran
during it is known from the watchdog's stack samples and from the probes that fired. This
module joins the three: a probe that explains most of the time makes a ``blocking-call``
at the probe's call site; otherwise the most frequent sampled line makes a ``slow-step``.
Without samples (a block shorter than the watchdog's reaction time, or C code that held
the GIL throughout), the task's await point or the callback's definition stands in, and
``site_source`` says so.

Causes that explain part of a block (a garbage collection, waiting for a CPU) are measured
over the block and reported beside this evidence; a cause replaces the line only for a
garbage collection, whose line is an accident of allocation. CPU starvation becomes the
headline call only when it accounts for the block on its own, and the line stays.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from looptrace.events import (
    CPU_STARVED,
    Block,
    CodeLocation,
    DurationSource,
    ProbeCall,
    SiteSource,
    Victims,
)

from .owners import task_name

_MAX_SITES_PER_STEP = 64


CAUSE_SHARE = 4
"""A cause that took at least a quarter of a block is named among its ``causes``."""


@dataclass(frozen=True, slots=True)
class CpuFigures:
    """The loop thread's CPU time and run-queue wait during one block, from the reading
    nearest its start to its end, and the bounds the starvation rule trusts."""

    on_cpu_ns: int
    wait_ns: int
    on_cpu_max_ns: int
    """At most this long on a CPU (the reading before the start counts what preceded it)."""
    wait_min_ns: int
    """At least this long waiting (the reading inside misses the head of the block)."""


def cpu_figures(step: LongStep, samples: StepSamples | None) -> CpuFigures | None:
    """What the loop thread's schedstat says about the block: differences of readings that
    bracket its start (the last before it, the first inside it) and one at its end. Never
    scaled: a part of the block no reading covers counts as possibly on a CPU and possibly
    not waiting, so doubt keeps the line as the verdict."""
    end = step.sched_end
    if end is None:
        return None
    start = step.start_ns
    before = step.sched_before if step.sched_before and step.sched_before[0] <= start else None
    inside = [r for r in (step.sched_inside, samples.sched if samples is not None else None)
              if r is not None and start < r[0] < end[0]]
    first = min(inside) if inside else None
    if before is None and first is None:
        return None
    duration = step.end_ns - start
    on_max, wait_min = duration, 0
    if before is not None:
        on_max = min(on_max, end[1] - before[1])
        wait_min = max(wait_min, end[2] - before[2] - (start - before[0]))
    if first is not None:
        on_max = min(on_max, end[1] - first[1] + (first[0] - start))
        wait_min = max(wait_min, end[2] - first[2])
    nearest = min((r for r in (before, first) if r is not None),
                  key=lambda r: abs(r[0] - start))
    wait_min = max(0, min(duration, wait_min))
    on_max = max(0, on_max)
    # The figures reported come from the reading nearest the start, kept within the
    # bounds (so a verdict never contradicts the figures shown beside it).
    return CpuFigures(
        on_cpu_ns=max(0, min(duration, on_max, end[1] - nearest[1])),
        wait_ns=max(wait_min, min(duration, end[2] - nearest[2])),
        on_cpu_max_ns=on_max, wait_min_ns=wait_min)


def accounts_alone(cause_ns: int, duration_ns: int, threshold_ns: int) -> bool:
    """A cause accounts for a block on its own: it took at least half of it, and without
    it the step would have stayed under the threshold (no block at all)."""
    return cause_ns * 2 >= duration_ns and duration_ns - cause_ns < threshold_ns


def starved(cpu: CpuFigures | None, duration_ns: int, threshold_ns: int) -> bool:
    """CPU starvation accounts for the block on its own: the thread surely waited for a CPU
    that long (so it also ran on one for less than the threshold). A thread asleep in
    I/O for most of the block is not starved, however long it waited for a CPU besides."""
    if cpu is None or threshold_ns <= 0:
        return False
    return accounts_alone(cpu.wait_min_ns, duration_ns, threshold_ns) \
        and cpu.on_cpu_max_ns < threshold_ns


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
    sched_before: tuple[int, int, int] | None = None
    """The watchdog's last reading of the thread at or before ``start_ns``."""
    sched_inside: tuple[int, int, int] | None = None
    """Its first reading during the step."""
    threshold_ns: int = 0
    nested_ns: int = 0
    """Time spent in nested runs of the loop inside the step (not the step's own time)."""
    in_progress: bool = False
    """The step had not ended: the program stopped inside it (``end_ns`` is the stop)."""
    victims: Victims | None = None
    """What the step delayed (None: not measured)."""


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


def _explaining_call(calls: list[ProbeCall], duration: int) -> ProbeCall | None:
    """The probed call that explains the block: of the function whose calls add up to at
    least half of it, the longest call (ties go to the outermost)."""
    by_call: Counter[str] = Counter()
    for probe_call in calls:
        by_call[probe_call.call] += probe_call.duration_ns
    if not by_call:
        return None
    name, explained = by_call.most_common(1)[0]
    if explained * 2 < duration:
        return None
    return max((c for c in calls if c.call == name), key=lambda c: (c.duration_ns, -c.start_ns))


def _weigh_causes(step: LongStep, cpu: CpuFigures | None,
                  duration: int) -> tuple[tuple[str, ...], str | None]:
    """(the causes that took at least a quarter of the block, the one that accounts for it
    on its own, if any)."""
    causes: list[str] = []
    if cpu is not None and cpu.wait_ns * CAUSE_SHARE >= duration:
        causes.append(CPU_STARVED)
    if step.gc_ns * CAUSE_SHARE >= duration:
        causes.append("gc")
    headline = None
    if accounts_alone(step.gc_ns, duration, step.threshold_ns or duration + 1):
        # A garbage collection: whatever line allocated last was only its trigger.
        generation = f" (generation {step.gc_generation})" if step.gc_generation >= 0 else ""
        headline = f"gc.collect{generation}"
    elif starved(cpu, duration, step.threshold_ns):
        # The thread would not have blocked the loop had it had a CPU: the machine or the
        # container's CPU limit.
        headline = CPU_STARVED
    return tuple(causes), headline


def build_block(step: LongStep, samples: StepSamples | None) -> Block:
    duration = step.end_ns - step.start_ns - step.nested_ns
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

    longest = _explaining_call(step.probe_calls, duration)
    if longest is not None:
        kind, call = "blocking-call", longest.call
        if longest.site is not None:
            site, site_source, stack = longest.site, "probe", longest.stack
        if longest.task is not None and best is None:
            # No sample says whose code it was: the task current at the call does (an
            # eager task's first step runs inside its creator's step).
            task, coroutine = longest.task, longest.coroutine
        if longest.trace_id is not None:
            trace_id, span_id = longest.trace_id, longest.span_id
            trace_sampled = longest.trace_sampled

    cpu = cpu_figures(step, samples)
    causes, headline = _weigh_causes(step, cpu, duration)
    if kind == "slow-step" and headline is not None:
        # A cause that accounts for the block on its own is the headline (call and
        # advice); the line, stack, task and span stay: they are the evidence of what was
        # running (DESIGN.md 3, "Evidence first, causes beside it").
        call = headline
        if site is None and headline.startswith("gc."):
            site_source = "gc"

    return Block(
        loop_id=step.loop_id, thread_id=step.thread_id, thread_name=step.thread_name,
        start_ns=step.start_ns, duration_ns=duration, duration_source=step.duration_source,
        kind=kind,  # type: ignore[arg-type]
        call=call, site=site, site_source=site_source, stack=stack, task=task,
        coroutine=coroutine, callback=step.callback,
        samples=samples.count if samples is not None else 0,
        trace_id=trace_id, span_id=span_id, gc_ns=step.gc_ns, trace_sampled=trace_sampled,
        cpu_wait_ns=cpu.wait_ns if cpu is not None else 0,
        cpu_ns=cpu.on_cpu_ns if cpu is not None else None,
        causes=causes, in_progress=step.in_progress, victims=step.victims,
    )
