"""The terminal summary: hotspots by total time, each with its site, call and fix, then
how busy each loop was.

Every name in it comes from the traced program (or from a report file anyone could have
written): each is shown through :func:`looptrace._text.terminal_safe`, so an ANSI escape or
a newline in a task name cannot retitle the window, clear the screen or forge a line."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from looptrace._text import terminal_safe as _t
from looptrace.events import CodeLocation
from looptrace.session import (
    BlockEvent,
    ExecutorSite,
    FaultSummary,
    Hotspot,
    LoopSummary,
    Session,
    TaskSummary,
)

_MAX_HOTSPOTS = 10
_MAX_EXECUTOR_SITES = 5
_MAX_TASKS = 3
_MAX_TASK_WARNINGS = 8
_TASK_WARNINGS = {
    "long-step": "did not yield for {max_step} (a step at or over the threshold)",
    "busy-poll": "woke itself {self_wakes} times in {steps} steps (a busy-poll)",
    "pending-at-close": "{pending_at_close} still pending when its loop closed",
    "destroyed-pending": "{destroyed_pending} destroyed while pending",
    "exception-never-retrieved": "{never_retrieved} with an exception never retrieved",
}


def short_path(path: str) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith("..") else relative


def where(site: CodeLocation | None) -> str:
    if site is None:
        return "(site unknown)"
    return f"{_t(short_path(site.file))}:{site.line} in {_t(site.function)}"


def duration(value_ms: float | None) -> str:
    """A duration for people, the same in the terminal and in the HTML report: seconds
    from 1 s, whole milliseconds from 10 ms, hundredths below."""
    if value_ms is None:
        return "n/a"
    if value_ms >= 1000:
        return f"{value_ms / 1000:.2f} s"
    if value_ms >= 10:
        return f"{value_ms:.0f} ms"
    return f"{value_ms:.2f} ms"


def disabled_hook_line(fault: FaultSummary, where_from: str = "") -> str:
    """The warning for a hook that switched itself off after an error inside it (said
    first: what that hook measures is missing from the report from then on)."""
    errors = f"{fault.count} error{'s' if fault.count != 1 else ''}"
    return (f"WARNING: looptrace switched its {_t(fault.hook)} hook off after {errors} inside "
            f"it{where_from} ({_t(fault.error)}); what that hook measures is missing from then "
            "on")


def victim_summary(blocks: Iterable[BlockEvent]) -> str | None:
    """What some blocks cost others: ``delayed 37 tasks and callbacks by 4.20 s in all,
    longest 181 ms, in 19 requests``; None when nothing was measured or delayed."""
    measured = [b for b in blocks if b.victims]
    count = sum(b.victims or 0 for b in measured)
    if not count:
        return None
    total = sum(b.victim_delay_ms for b in measured)
    longest = max(b.victim_max_delay_ms for b in measured)
    what = "task or callback" if count == 1 else "tasks and callbacks"
    text = (f"delayed {count} {what} by {duration(total)} in all, "
            f"longest {duration(longest)}")
    requests = {t for b in measured for t in b.victim_requests}
    # A block keeps the first 20 trace ids; beyond, only their number.
    seen = max([len(requests), *(b.victim_request_count for b in measured)])
    if seen:
        more = "at least " if seen > len(requests) or any(
            b.victim_request_count > len(b.victim_requests) for b in measured) else ""
        text += f", in {more}{seen} request{'s' if seen != 1 else ''}"
    return text


def _same_site(block: BlockEvent, hotspot: Hotspot) -> bool:
    return (block.kind, block.call, block.site) == (hotspot.kind, hotspot.call, hotspot.site)


def _hotspot_lines(number: int, hotspot: Hotspot,
                   blocks: Sequence[BlockEvent] = ()) -> list[str]:
    title = _t(hotspot.call) if hotspot.call else "(no blocking function named)"
    lines = [
        f"  {number}. {_t(hotspot.kind)}  {title}",
        f"     at {where(hotspot.site)}",
        f"     {hotspot.count}x  total {duration(hotspot.total_ms)}  "
        f"max {duration(hotspot.max_ms)}  p50 {duration(hotspot.p50_ms)}"
        f"  thread {_t(hotspot.thread)}",
    ]
    if hotspot.task or hotspot.coroutine:
        lines.append(f"     task {_t(hotspot.task or '?')} ({_t(hotspot.coroutine or '?')})")
    victims = victim_summary(b for b in blocks if _same_site(b, hotspot))
    if victims:
        lines.append(f"     {victims}")
    if hotspot.advice:
        lines.append(f"     fix: {_t(hotspot.advice)}")
    return lines


def _executor_site_lines(number: int, row: ExecutorSite) -> list[str]:
    calls = f"{row.calls} call{'s' if row.calls != 1 else ''}"
    workers = f"{row.workers} workers" if row.workers is not None else "workers unknown"
    lines = [
        f"  {number}. {_t(row.function)}  {calls}",
        f"     at {where(row.site)}",
        f"     queue {duration(row.queue_ms)} in all (max {duration(row.max_queue_ms)})  "
        f"run {duration(row.run_ms)} (max {duration(row.max_run_ms)})  {workers}  "
        f"peak queue {row.peak_queue_depth}",
    ]
    if row.tasks:
        more = " ..." if len(row.tasks) >= 8 else ""  # the row keeps 8
        lines.append(f"     tasks {_t(', '.join(row.tasks))}{more}")
    if row.task or row.trace_id:
        story = [f"task {_t(row.task)}"] if row.task else []
        if row.trace_id:
            story.append(f"trace {row.trace_id}")
        lines.append(f"     longest wait: {'  '.join(story)}")
    if row.warning:
        lines.append(f"     WARNING: {_t(row.warning)}")
    return lines


def executor_lines(session: Session) -> list[str]:
    """The executor section: the sites whose calls waited longest for a worker, each with
    the pool verdict when the pool was the bottleneck. Empty when no call was timed."""
    rows = [row for row in session.executors if row.calls]
    if not rows:
        return []
    lines = ["", "Executor calls (run_in_executor, to_thread; by queue wait)"]
    for number, row in enumerate(rows[:_MAX_EXECUTOR_SITES], start=1):
        lines.extend(_executor_site_lines(number, row))
    if len(rows) > _MAX_EXECUTOR_SITES:
        lines.append(f"  ... and {len(rows) - _MAX_EXECUTOR_SITES} more sites "
                     "(write the full report with --json)")
    return lines


def _task_label(task: TaskSummary) -> str:
    if task.coroutine and task.coroutine != task.name:
        return f"{_t(task.name)} ({_t(task.coroutine)})"
    return _t(task.name)


def _warning_text(task: TaskSummary, warning: str) -> str:
    template = _TASK_WARNINGS.get(warning)
    if template is None:  # a newer report's warning: its code is all we know
        return _t(warning)
    return f"{warning}: " + template.format(
        max_step=duration(task.max_step_ms), self_wakes=task.self_wakes, steps=task.steps,
        pending_at_close=task.pending_at_close, destroyed_pending=task.destroyed_pending,
        never_retrieved=task.exception_never_retrieved)


def task_lines(session: Session) -> list[str]:
    """Full mode: the tasks that kept the loop busy, the ones that waited longest to be
    scheduled, and the warnings. Empty without per-task time."""
    rows = [t for t in session.tasks if t.kind == "task" and t.scheduled_ms is not None]
    if not rows:
        return []
    lines = ["", "Tasks by busy time (running steps)"]
    by_busy = sorted(rows, key=lambda t: (-(t.busy_ms or 0.0), t.name))[:_MAX_TASKS]
    for number, task in enumerate(by_busy, start=1):
        lines.append(f"  {number}. {_task_label(task)}  busy {duration(task.busy_ms)}  "
                     f"{task.steps} steps  longest {duration(task.max_step_ms)}")
    lines.append("Tasks by scheduled time (ready, waiting for the loop)")
    by_wait = sorted(rows, key=lambda t: (-(t.scheduled_ms or 0.0), t.name))[:_MAX_TASKS]
    for number, task in enumerate(by_wait, start=1):
        lines.append(f"  {number}. {_task_label(task)}  scheduled "
                     f"{duration(task.scheduled_ms)}  {task.steps} steps  "
                     f"idle {duration(task.idle_ms)}")
    warned = [(task, w) for task in session.tasks for w in task.warnings]
    if warned:
        lines.append("Task warnings")
        for task, warning in warned[:_MAX_TASK_WARNINGS]:
            lines.append(f"  {_task_label(task)}: {_warning_text(task, warning)}")
        if len(warned) > _MAX_TASK_WARNINGS:
            lines.append(f"  ... and {len(warned) - _MAX_TASK_WARNINGS} more "
                         "(write the full report with --json)")
    return lines


def _loop_lines(loop: LoopSummary) -> list[str]:
    lines = [f"  loop {loop.id}  {_t(loop.thread)}  {_t(loop.kind)}"]
    figures = []
    if loop.utilization is not None:
        figures.append(f"utilisation {loop.utilization * 100:.1f}%")
    if loop.busy_ms is not None:
        figures.append(f"busy {duration(loop.busy_ms)}")
    if loop.io_wait_ms is not None:
        figures.append(f"io-wait {duration(loop.io_wait_ms)}")
    if loop.iterations is not None:
        figures.append(f"{loop.iterations} iterations")
    if loop.steps is not None:
        figures.append(f"{loop.steps} steps")
    figures.append(f"{loop.blocks} block{'s' if loop.blocks != 1 else ''}")
    lines.append("     " + "  ".join(figures))
    lag = loop.lag_ms
    if lag.max is not None:
        label = "lag" if lag.source == "iterations" else "heartbeat lag"  # ours, fixed
        lines.append(f"     {label} p50 {duration(lag.p50)}  p99 {duration(lag.p99)}  "
                     f"max {duration(lag.max)}")
    if loop.saturated_iterations:
        lines.append(f"     {loop.saturated_iterations} saturated iterations (many short "
                     "steps ready at once; no single step to blame)")
    if loop.missing:
        lines.append(f"     not measurable on this loop: {_t(', '.join(loop.missing))}")
    return lines


def render(session: Session) -> str:
    blocks = sum(h.count for h in session.hotspots)
    loops = len(session.loops)
    lines = [
        f"looptrace: {duration(session.wall_ms)} recorded, threshold "
        f"{duration(session.threshold_ms)}, {loops} loop{'s' if loops != 1 else ''}, "
        f"{blocks} block{'s' if blocks != 1 else ''}",
        *(disabled_hook_line(fault) for fault in session.faults),
        "",
    ]
    if session.hotspots:
        lines.append("Hotspots (by total time)")
        for number, hotspot in enumerate(session.hotspots[:_MAX_HOTSPOTS], start=1):
            lines.extend(_hotspot_lines(number, hotspot, session.blocks))
        if len(session.hotspots) > _MAX_HOTSPOTS:
            lines.append(f"  ... and {len(session.hotspots) - _MAX_HOTSPOTS} more "
                         "(write the full report with --json)")
    else:
        lines.append(f"No block of the loop at or over {duration(session.threshold_ms)}.")
    lines.extend(executor_lines(session))
    lines.extend(task_lines(session))
    if session.loops:
        lines.append("")
        lines.append("Loops")
        for loop in session.loops:
            lines.extend(_loop_lines(loop))
    notes = []
    dropped = {k: v for k, v in session.dropped.items() if v}
    if dropped:
        notes.append("dropped (bounded buffers): " +
                     ", ".join(f"{_t(k)} {v}" for k, v in sorted(dropped.items())))
    if notes:
        lines.append("")
        lines.extend(notes)
    # Belt and braces: nothing but newlines and tabs reaches the terminal unescaped.
    return _t("\n".join(lines), multiline=True) + "\n"
