"""Live outputs: each block as it is found (OpenTelemetry spans and metrics, log events).

A sink receives the same record of a block as every file renderer: a
:class:`~looptrace.session.BlockEvent`, converted once from what the hooks recorded, on
looptrace's dispatch thread. What else it may read of the recording is the typed,
read-only :class:`SinkInputs`; a sink never sees the recorder or the hooks (the layering
test checks it). ``looptrace.exporters`` holds the renderers of a whole
:class:`~looptrace.session.Session`; sinks may share their mappings (a block's span
attributes are :mod:`looptrace.exporters._spans`'s), never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from looptrace.events import ExecutorFigures, LoopFigures, TaskFigures
from looptrace.session import BlockEvent, Session


class LoopsView(Protocol):
    """Each loop's figures so far, copied out (safe off the loop threads)."""

    def loop_figures(self) -> list[LoopFigures]: ...


class ExecutorsView(Protocol):
    """Each executor call site's figures so far, copied out (safe off the loop threads)."""

    def figures(self) -> list[ExecutorFigures]: ...


class TasksView(Protocol):
    """Full mode: each task row's steps and scheduled time so far (safe off the loop
    threads)."""

    def task_figures(self) -> list[TaskFigures]: ...


@dataclass(frozen=True, slots=True)
class SinkInputs:
    """What a live sink may read of the installation, and the one thing it may tell it."""

    loops: LoopsView
    count_dropped: Callable[[str, int], None]
    """Count items an output had to drop (``"spans"``): they reach the report's
    ``dropped``."""
    snapshot: Callable[[], Session] | None = None
    """The report so far (the final one when called at close): for loop and task spans."""
    executors: ExecutorsView | None = None
    """Executor calls per site (full mode), for the executor histograms."""
    live_span: Callable[[int, int], Any] | None = None
    """The span ``(trace_id, span_id)`` of a block's victim, if it is still in memory
    (held weakly by the hooks): the OpenTelemetry sink links it back to the block."""
    tasks: TasksView | None = None
    """Per-task time (full mode), for the scheduled-time histogram."""


class LiveSink(NamedTuple):
    """A live output, as :mod:`looptrace._api` runs it."""

    name: str
    on_block: Callable[[BlockEvent], None]
    """Called on the dispatch thread with each block, never on a loop thread."""
    close: Callable[[float], None]
    """Deliver what is pending within the given seconds, then stop."""
