"""Records: what looptrace observed, as plain immutable values.

These are the words every layer shares. Hooks produce them, the recorder aggregates them,
the session serialises them and exporters render them. They hold strings and integers only,
never frames, tasks or other live objects, so keeping thousands of them costs little and
never keeps the traced program's objects alive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_DEFAULT_TASK_NAME = re.compile(r"Task-\d+\Z")


def task_group(name: str) -> str:
    """The per-task table's row name: asyncio's default names (``Task-123``) identify no
    one, so such tasks are grouped (by coroutine) under ``Task-*``."""
    return "Task-*" if _DEFAULT_TASK_NAME.match(name) else name

CPU_STARVED = "cpu.run_queue"
"""The call named for a block that waiting for a CPU accounts for on its own: the loop
thread ran on one for less than the threshold (the machine's block, not the code's)."""

BlockKind = Literal["blocking-call", "slow-step", "gil-stall"]
"""``blocking-call``: a probe on a known blocking function explains most of the block.
``slow-step``: anything else (CPU work, C extensions, locks, unprobed I/O).
``gil-stall``: the loop thread mostly waited for the GIL held by another thread."""

SiteSource = Literal["probe", "native-samples", "samples", "late-sample", "gil-holder",
                     "await-point", "callback", "gc", "cpu", "unknown"]
"""How a block's site was found, from most to least exact. ``native-samples``: read
without the GIL by the accelerator's sampler thread, exact inside C code that holds it;
``samples``: the watchdog's samples; ``late-sample``: the watchdog could sample only
late (something held the GIL), so the line may be one after the real one;
``gil-holder``: the line of the thread that held the GIL while the loop waited for it;
``gc``: no site, the block was mostly a garbage-collection pause; ``cpu``: no site, the
loop thread mostly waited for a CPU."""

CallSource = Literal["probe", "python-frame", "call-expression", "resolved"]
"""How a block's ``call`` was known: ``probe``: a probe timed it; ``python-frame``: the
Python function the site was running (its module and qualified name); ``call-expression``:
the source text of the call the site's sampled instruction makes (a C function called
from the site, e.g. ``sorted``, ``hashlib.pbkdf2_hmac``); ``resolved``: that text resolved
through the module's globals to the C function it names (``re.Pattern.match``)."""

DurationSource = Literal["step-timer", "heartbeat", "heartbeat+probe", "native-sampler"]
"""``step-timer``: measured around the step. ``heartbeat``: on loops whose steps cannot be
timed (uvloop), from the end of the last timer beat before the block to the late beat (over
by at most one beat interval, 1-5 ms). ``heartbeat+probe``: the same, starting at the probed
blocking call that explains the block. ``native-sampler``: a wait for the GIL between two
steps, timed by the native sampler's looks (within one sample interval)."""


@dataclass(frozen=True, slots=True)
class CodeLocation:
    """A line of code: absolute file path, line number, qualified function name."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


@dataclass(frozen=True, slots=True)
class ProbeCall:
    """A known blocking function that ran on a loop thread, timed by its probe."""

    call: str
    start_ns: int
    duration_ns: int
    thread_id: int
    site: CodeLocation | None
    stack: tuple[CodeLocation, ...]
    task: str | None
    trace_id: int | None
    span_id: int | None
    trace_sampled: bool = True
    coroutine: str | None = None
    """The task's coroutine (an eager task's first step runs inside its creator's)."""


@dataclass(frozen=True, slots=True)
class Victim:
    """A task or callback that a block delayed: it was ready (or its timer expired) while
    the block ran, and could run only after it."""

    kind: Literal["task", "callback"]
    name: str
    """The task's name, or the callback's ``module.qualname``."""
    coroutine: str | None
    delay_ns: int
    """How long the block kept it waiting: from when it was due (or the block's start,
    if it was due before) to the block's end."""
    trace_id: int | None
    span_id: int | None
    """The OpenTelemetry span current where it was scheduled (its request), if any."""


@dataclass(frozen=True, slots=True)
class Victims:
    """Everything a block delayed, bounded: figures over all of them, the longest
    delayed in detail."""

    count: int
    total_ns: int
    max_ns: int
    requests: tuple[int, ...]
    """Distinct trace ids among them (the first few)."""
    request_count: int
    """How many distinct trace ids (among the victims whose span was read)."""
    detail: tuple[Victim, ...]
    """The longest delayed, longest first."""


@dataclass(frozen=True, slots=True)
class Block:
    """One step of the loop that ran at or over the threshold: the loop was blocked."""

    loop_id: int
    thread_id: int
    thread_name: str
    start_ns: int
    duration_ns: int
    duration_source: DurationSource
    kind: BlockKind
    call: str | None
    site: CodeLocation | None
    site_source: SiteSource
    stack: tuple[CodeLocation, ...]
    task: str | None
    coroutine: str | None
    callback: str | None
    samples: int
    trace_id: int | None
    span_id: int | None
    gc_ns: int = 0
    """Time the garbage collector ran during the block."""
    trace_sampled: bool = True
    """Whether the parent span (``trace_id``/``span_id``) was sampled."""
    cpu_wait_ns: int = 0
    """Time the loop thread was ready to run but had no CPU during the block (Linux)."""
    cpu_ns: int | None = None
    """Time the loop thread ran on a CPU during the block (Linux; None: not measured)."""
    causes: tuple[str, ...] = ()
    """Causes that took at least a quarter of the block (``cpu.run_queue``, ``gc``, ``gil``),
    beside the evidence (site, stack, task, span, call), never instead of it."""
    in_progress: bool = False
    """The program stopped inside the block: its duration is the time so far."""
    call_source: CallSource | None = None
    """How ``call`` was known."""
    gil_wait_ns: int = 0
    """Time the loop thread waited for the GIL held by another thread during the block."""
    gil_holder: str | None = None
    """The name of the thread that held the GIL the loop waited for."""
    gil_holder_call: str | None = None
    """What that thread was calling (same rules as ``call``)."""
    gil_holder_site: CodeLocation | None = None
    """Where that thread was (its innermost user frame, else library, else stdlib)."""
    victims: Victims | None = None
    """What the block delayed (None: not measured, e.g. on uvloop)."""


@dataclass(frozen=True, slots=True)
class LoopFigures:
    """What one loop did, as counted by the hooks (raw integers, nanoseconds)."""

    loop_id: int
    kind: str
    thread_id: int
    thread_name: str
    coverage: tuple[str, ...]
    missing: tuple[str, ...]
    select_calls: int | None
    events: int | None
    io_wait_ns: int | None
    busy_ns: int | None
    lag_source: Literal["iterations", "heartbeat"]
    lag_histogram: tuple[tuple[int, int], ...]
    lag_max_ns: int
    steps: int | None
    blocks: int
    block_ns: int
    long_iterations: int
    saturated_iterations: int
    selects: tuple[tuple[int, int, int, int], ...] = ()
    """Full mode: kept select waits, (start_ns, duration_ns, timeout_ns or -1, events)."""
    steps_timeline: tuple[tuple[int, int, int], ...] = ()
    """Full mode: kept steps, (start_ns, duration_ns, owner id into ``Recording.owners``)."""


@dataclass(frozen=True, slots=True)
class LoopNow:
    """A loop's live counters at one instant, for a log line written on that loop."""

    loop_id: int
    blocks: int
    busy_ns: int | None
    """Time running steps so far (None: the loop has no select timer)."""
    io_wait_ns: int | None
    step_start_ns: int
    """When the step running now started (0: none, or the loop's steps are not timed)."""


@dataclass(frozen=True, slots=True)
class SiteFigures:
    """Every block at one site (with one kind and call), aggregated."""

    kind: BlockKind
    call: str | None
    site: CodeLocation | None
    count: int
    total_ns: int
    max_ns: int
    durations_ns: tuple[int, ...]
    """All durations while there are few, then a uniform sample of them."""
    stack: tuple[CodeLocation, ...]
    task: str | None
    coroutine: str | None
    thread_name: str


@dataclass(frozen=True, slots=True)
class TaskFigures:
    """One row of the per-task table: a named task, a group of default-named tasks running
    one coroutine, or a plain callback function."""

    kind: Literal["task", "callback"]
    name: str
    coroutine: str | None
    steps: int | None
    busy_ns: int | None
    blocks: int
    block_ns: int
    max_block_ns: int
    # Full mode's per-task time and life (_hooks/tasks.py); None/0 in default mode.
    scheduled_ns: int | None = None
    idle_ns: int | None = None
    max_step_ns: int | None = None
    created: int = 0
    done: int = 0
    cancelled: int = 0
    never_retrieved: int = 0
    destroyed_pending: int = 0
    pending_at_close: int = 0
    self_wakes: int = 0


@dataclass(frozen=True, slots=True)
class Fault:
    """An error inside one of looptrace's hooks: counted, logged once, hook disabled."""

    hook: str
    count: int
    error: str


@dataclass(frozen=True, slots=True)
class Recording:
    """Everything recorded so far, copied out of the recorder at one instant."""

    threshold_ns: int
    mode: str
    started_ns: int
    now_ns: int
    epoch_offset_ns: int
    argv: tuple[str, ...]
    pid: int
    loops: tuple[LoopFigures, ...]
    sites: tuple[SiteFigures, ...]
    blocks: tuple[Block, ...]
    tasks: tuple[TaskFigures, ...]
    owners: tuple[tuple[str, str, str | None], ...]
    """Full mode: owner id -> (kind, name, coroutine), for ``LoopFigures.steps_timeline``."""
    dropped: tuple[tuple[str, int], ...]
    faults: tuple[Fault, ...]
    accelerated: bool
    probes: int


@dataclass(frozen=True, slots=True)
class ExecutorFigures:
    """Every ``run_in_executor`` / ``to_thread`` call from one site, of one function, in
    one kind of pool, aggregated (raw integers, nanoseconds)."""

    site: CodeLocation | None
    function: str
    calls: int
    """Calls submitted."""
    completed: int
    """Calls whose function returned or raised."""
    queue_ns: int
    """Total time from submit (on the loop thread) to start (in a worker)."""
    queue_max_ns: int
    run_ns: int
    """Total time the function ran in a worker."""
    run_max_ns: int
    workers: int | None
    """The pool's ``max_workers`` (None: not a ThreadPoolExecutor we could read)."""
    peak_queue_depth: int
    """The most calls waiting for a worker in that pool, seen at a submit from the site."""
    task: str | None
    """The awaiting task (current task at submit) of the call that waited longest."""
    trace_id: int | None
    span_id: int | None
    queue_histogram: tuple[tuple[int, int], ...] = ()
    """(bucket_low_ns, count): log-linear buckets (see _histogram) of the queue waits."""
    run_histogram: tuple[tuple[int, int], ...] = ()
    tasks: tuple[str, ...] = ()
    """The awaiting tasks of the calls, first seen first (at most 8)."""
