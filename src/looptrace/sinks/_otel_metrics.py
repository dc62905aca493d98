"""Loop metrics through the OpenTelemetry metrics API, modelled on ``nodejs.eventloop.*``
and ``go.schedule.duration``. Nothing here runs on a loop thread.

=====================================  =========  ==========================================
instrument                             unit       what
=====================================  =========  ==========================================
``looptrace.eventloop.lag``            s          histogram: per loop iteration, how long the
                                                  loop ran between two select calls, i.e.
                                                  how long ready I/O could wait unnoticed
``looptrace.eventloop.time``           s          counter, ``looptrace.eventloop.state`` =
                                                  ``busy`` (running steps) or ``io_wait``
                                                  (inside select/epoll)
``looptrace.eventloop.utilization``    1          gauge: busy / (busy + io_wait) since the
                                                  previous collection
``looptrace.eventloop.iterations``     {iteration} counter: select calls
``looptrace.eventloop.blocks``         {block}    counter by ``looptrace.kind`` and
                                                  ``looptrace.call``
``looptrace.executor.queue.duration``  s          histogram (full mode): per
                                                  ``run_in_executor``/``to_thread`` call, how
                                                  long it waited for a free worker
``looptrace.executor.run.duration``    s          histogram (full mode): per such call, how
                                                  long the function ran in the worker
``looptrace.block.victim.delay``       s          histogram: per task or callback a block
                                                  delayed, how long (``looptrace.kind``,
                                                  ``looptrace.call`` of the block)
``looptrace.task.scheduled.duration``  s          histogram (full mode): per task step, how
                                                  long the task waited ready for the loop
                                                  (``looptrace.task.name``,
                                                  ``looptrace.task.coroutine`` of its row)
=====================================  =========  ==========================================

Loop instruments carry ``looptrace.loop.id`` and ``thread.name``. Executor instruments
carry the calling site (``code.file.path``, ``code.line.number``, ``code.function.name``:
the line that called ``run_in_executor`` or ``to_thread``) and the function run
(``looptrace.executor.function``); the pump replays their histograms like the lag's, each
call at the middle of its log-linear bucket (within 12.5%, never above the site's maximum).
The task rows keep sums, not histograms (a histogram bucket per step would cost the step
hook): each pass records the steps a row gained at that row's mean scheduled time over the
pass, at most ``LAG_RECORDS_PER_S`` records a second shared among the rows.

The counters and the gauge are observable: their callbacks read the recorder's figures on
the metric reader's thread. The lag histogram has no observable form in the API, so a
pump thread replays, once a second, what each loop's own histogram (log-linear buckets,
8 per power of two) gained since the last pass into the OpenTelemetry histogram. A record
costs several microseconds in the SDK, so the replay is budgeted: every iteration of 1 ms
or more is always recorded (there can be at most 1,000 of those per second), and the
sub-millisecond ones are thinned proportionally when a loop runs more than
``LAG_RECORDS_PER_S`` of them a second. ``looptrace.eventloop.iterations`` keeps the
exact count.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from looptrace._histogram import bucket_width
from looptrace.events import ExecutorFigures, LoopFigures, TaskFigures
from looptrace.session import BlockEvent

from . import ExecutorsView, LoopsView, TasksView

logger = logging.getLogger("looptrace")

LAG_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""From 100 µs (a step that does real work) to 10 s (a program frozen)."""

EXECUTOR_BUCKETS_S = (0.000025, 0.00005, *LAG_BUCKETS_S)
"""From 25 µs (a thread handoff) to 10 s."""

LAG_RECORDS_PER_S = 1000
_ALWAYS_RECORDED_NS = 1_000_000
_PUMP_INTERVAL_S = 1.0


def _loop_attributes(figures: LoopFigures) -> dict[str, Any]:
    return {"looptrace.loop.id": figures.loop_id, "thread.name": figures.thread_name}


def _executor_attributes(figures: ExecutorFigures) -> dict[str, Any]:
    attributes: dict[str, Any] = {"looptrace.executor.function": figures.function}
    if figures.site is not None:
        attributes.update({"code.file.path": figures.site.file,
                           "code.line.number": figures.site.line,
                           "code.function.name": figures.site.function})
    return attributes


def thin(deltas: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """Scale ``(bucket_low_ns, count)`` pairs of sub-millisecond buckets down to about
    ``budget`` records in total, proportionally; a bucket that had any keeps at least one."""
    total = sum(count for _, count in deltas)
    if total <= budget:
        return deltas
    return [(low, max(1, count * budget // total)) for low, count in deltas]


MAX_VICTIM_RECORDS = 1000
"""Victim delays recorded per block at most (a record costs microseconds in the SDK)."""


def victim_delays(event: BlockEvent) -> list[float]:
    """Each victim's delay in milliseconds: those in detail exactly, the others (a block
    keeps the longest 20) at their mean; at most :data:`MAX_VICTIM_RECORDS`."""
    if not event.victims:
        return []
    exact = [v.delay_ms for v in event.victim_detail][:MAX_VICTIM_RECORDS]
    rest = min(event.victims - len(event.victim_detail), MAX_VICTIM_RECORDS - len(exact))
    if rest <= 0:
        return exact
    mean = max(event.victim_delay_ms - sum(v.delay_ms for v in event.victim_detail), 0.0) \
        / (event.victims - len(event.victim_detail))
    return exact + [mean] * rest


class _Instruments:
    """The instruments on one MeterProvider. Made once per provider (the SDK keeps the first
    instrument of a name and its callbacks), read from whichever installation is current."""

    def __init__(self, meter: Meter) -> None:
        self.source: LoopsView | None = None
        self.retired: LoopsView | None = None  # reported once more after it closed
        self.lock = threading.RLock()  # reentrant: see _hooks/probes.py (issue 11)
        self._seen_util: dict[int, tuple[int, int]] = {}
        self.lag = meter.create_histogram(
            "looptrace.eventloop.lag", unit="s",
            description="How long the event loop ran between two select calls (per "
                        "iteration): the longest that ready I/O waited unnoticed.",
            explicit_bucket_boundaries_advisory=list(LAG_BUCKETS_S))
        self.blocks = meter.create_counter(
            "looptrace.eventloop.blocks", unit="{block}",
            description="Steps of the event loop at or over looptrace's threshold.")
        self.executor_queue = meter.create_histogram(
            "looptrace.executor.queue.duration", unit="s",
            description="How long a run_in_executor/to_thread call waited for a free worker.",
            explicit_bucket_boundaries_advisory=list(EXECUTOR_BUCKETS_S))
        self.executor_run = meter.create_histogram(
            "looptrace.executor.run.duration", unit="s",
            description="How long the function of a run_in_executor/to_thread call ran.",
            explicit_bucket_boundaries_advisory=list(EXECUTOR_BUCKETS_S))
        self.task_scheduled = meter.create_histogram(
            "looptrace.task.scheduled.duration", unit="s",
            description="How long a task step waited ready before the event loop ran it.",
            explicit_bucket_boundaries_advisory=list(EXECUTOR_BUCKETS_S))
        self.victim_delay = meter.create_histogram(
            "looptrace.block.victim.delay", unit="s",
            description="How long a block of the event loop delayed each task or callback "
                        "that was ready or due while it ran.",
            explicit_bucket_boundaries_advisory=list(LAG_BUCKETS_S))
        meter.create_observable_counter(
            "looptrace.eventloop.time", callbacks=[self._observe_time], unit="s",
            description="Time the event loop spent running steps (busy) or waiting in "
                        "select/epoll (io_wait).")
        meter.create_observable_gauge(
            "looptrace.eventloop.utilization", callbacks=[self._observe_utilization],
            unit="1", description="busy / (busy + io_wait) since the previous collection.")
        meter.create_observable_counter(
            "looptrace.eventloop.iterations", callbacks=[self._observe_iterations],
            unit="{iteration}", description="Event-loop iterations (select calls).")

    def plug(self, source: LoopsView) -> None:
        with self.lock:
            self.source, self.retired = source, None
            self._seen_util.clear()

    def unplug(self, source: LoopsView) -> None:
        """After an installation closed, its final figures are reported once more (the
        application's last collection at exit), then no longer."""
        with self.lock:
            if self.source is source:
                self.source, self.retired = None, source

    def figures(self) -> list[LoopFigures]:
        with self.lock:
            source = self.source or self.retired
        if source is None:
            return []
        try:
            return source.loop_figures()
        except Exception as exc:  # never let a collection fail because of us
            logger.debug("looptrace: reading loop figures failed: %s", exc)
            return []

    def _observe_time(self, _: CallbackOptions) -> Iterable[Observation]:
        for figures in self.figures():
            if figures.busy_ns is None or figures.io_wait_ns is None:
                continue
            attributes = _loop_attributes(figures)
            yield Observation(figures.busy_ns / 1e9,
                              {**attributes, "looptrace.eventloop.state": "busy"})
            yield Observation(figures.io_wait_ns / 1e9,
                              {**attributes, "looptrace.eventloop.state": "io_wait"})

    def _observe_utilization(self, _: CallbackOptions) -> Iterable[Observation]:
        for figures in self.figures():
            busy, idle = figures.busy_ns, figures.io_wait_ns
            if busy is None or idle is None:
                continue
            with self.lock:
                last_busy, last_idle = self._seen_util.get(figures.loop_id, (0, 0))
                self._seen_util[figures.loop_id] = (busy, idle)
            delta_busy, delta_idle = busy - last_busy, idle - last_idle
            if delta_busy + delta_idle > 0:
                yield Observation(delta_busy / (delta_busy + delta_idle),
                                  _loop_attributes(figures))

    def _observe_iterations(self, _: CallbackOptions) -> Iterable[Observation]:
        for figures in self.figures():
            if figures.select_calls is not None:
                yield Observation(figures.select_calls, _loop_attributes(figures))
        with self.lock:
            self.retired = None  # the last callback of a collection: the retired one is done


_by_provider: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_by_provider_lock = threading.RLock()  # reentrant: see _hooks/probes.py (issue 11)


def instruments_for(provider: Any, meter: Callable[[], Meter]) -> _Instruments:
    with _by_provider_lock:
        found = _by_provider.get(provider)
        if found is None:
            found = _by_provider[provider] = _Instruments(meter())
        return found


class LoopMetrics:
    """One installation's metrics: it plugs its loops into the provider's instruments, and
    runs the pump that feeds the lag histogram."""

    def __init__(self, instruments: _Instruments, source: LoopsView,
                 executors: ExecutorsView | None = None,
                 tasks: TasksView | None = None) -> None:
        self._instruments = instruments
        self._source = source
        self._executors = executors
        self._tasks = tasks
        self._seen_tasks: dict[tuple[str, str | None], tuple[int, int]] = {}
        self._seen_hist: dict[int, dict[int, int]] = {}
        self._seen_executors: dict[tuple[object, str, str], dict[int, int]] = {}
        self._lock = threading.RLock()  # reentrant: see _hooks/probes.py (issue 11)
        self._stop = threading.Event()
        instruments.plug(source)
        self._thread = threading.Thread(target=self._pump_forever, name="looptrace-metrics",
                                        daemon=True)
        self._thread.start()

    # -- per block (on the dispatch thread)

    def on_block(self, event: BlockEvent) -> None:
        attributes: dict[str, str] = {"looptrace.kind": event.kind}
        if event.call is not None:
            attributes["looptrace.call"] = event.call
        self._instruments.blocks.add(1, attributes)
        record = self._instruments.victim_delay.record
        for delay_ms in victim_delays(event):
            record(delay_ms / 1e3, attributes)

    # -- the lag pump (its own thread)

    def _pump_forever(self) -> None:
        while not self._stop.wait(_PUMP_INTERVAL_S):
            self.pump()

    def pump(self, interval_s: float = _PUMP_INTERVAL_S) -> int:
        """Replay what each loop's lag histogram gained since the last pass; return how
        many records that made. Safe to call from any thread but a loop's."""
        made = 0
        try:
            for figures in self._source.loop_figures():
                made += self._pump_loop(figures, interval_s)
            if self._executors is not None:
                for site in self._executors.figures():
                    made += self._pump_executor(site, interval_s)
            if self._tasks is not None:
                made += self._pump_tasks(self._tasks.task_figures(), interval_s)
        except Exception as exc:  # metrics must never break the pump
            logger.debug("looptrace: lag metrics failed: %s: %s", type(exc).__name__, exc)
        return made

    def _pump_executor(self, figures: ExecutorFigures, interval_s: float) -> int:
        """Replay what a call site's queue and run histograms gained since the last pass."""
        attributes = _executor_attributes(figures)
        made = 0
        for kind, histogram, maximum, instrument in (
                ("queue", figures.queue_histogram, figures.queue_max_ns,
                 self._instruments.executor_queue),
                ("run", figures.run_histogram, figures.run_max_ns,
                 self._instruments.executor_run)):
            with self._lock:
                seen = self._seen_executors.setdefault((figures.site, figures.function, kind),
                                                       {})
                deltas = []
                for low, count in histogram:
                    gained = count - seen.get(low, 0)
                    if gained > 0:
                        deltas.append((low, gained))
                    seen[low] = count
            for low, count in thin(deltas, max(1, int(LAG_RECORDS_PER_S * interval_s))):
                value_s = min(low + bucket_width(low) // 2, max(maximum, low)) / 1e9
                for _ in range(count):
                    instrument.record(value_s, attributes)
                made += count
        return made

    def _pump_tasks(self, rows: list[TaskFigures], interval_s: float) -> int:
        """Record the steps each task row gained since the last pass, at the row's mean
        scheduled time over the pass (thinned to the budget shared among the rows)."""
        gains = []
        with self._lock:
            for row in rows:
                key = (row.name, row.coroutine)
                steps, scheduled = row.steps or 0, row.scheduled_ns or 0
                seen_steps, seen_ns = self._seen_tasks.get(key, (0, 0))
                self._seen_tasks[key] = (steps, scheduled)
                if steps > seen_steps:
                    gains.append((row, steps - seen_steps, max(scheduled - seen_ns, 0)))
        if not gains:
            return 0
        per_row = max(1, int(LAG_RECORDS_PER_S * interval_s) // len(gains))
        record = self._instruments.task_scheduled.record
        made = 0
        for row, steps, scheduled_ns in gains:
            attributes = {"looptrace.task.name": row.name,
                          "looptrace.task.coroutine": row.coroutine or ""}
            value_s = scheduled_ns / steps / 1e9
            for _ in range(min(steps, per_row)):
                record(value_s, attributes)
                made += 1
        return made

    def _pump_loop(self, figures: LoopFigures, interval_s: float) -> int:
        with self._lock:
            seen = self._seen_hist.setdefault(figures.loop_id, {})
            deltas = []
            for low, count in figures.lag_histogram:
                gained = count - seen.get(low, 0)
                if gained > 0:
                    deltas.append((low, gained))
                seen[low] = count
        if not deltas:
            return 0
        long = [(low, n) for low, n in deltas if low >= _ALWAYS_RECORDED_NS]
        short = thin([(low, n) for low, n in deltas if low < _ALWAYS_RECORDED_NS],
                     max(1, int(LAG_RECORDS_PER_S * interval_s)))
        attributes = _loop_attributes(figures)
        record = self._instruments.lag.record
        made = 0
        for low, count in long + short:
            value_s = min(low + bucket_width(low) // 2, max(figures.lag_max_ns, low)) / 1e9
            for _ in range(count):
                record(value_s, attributes)
            made += count
        return made

    def close(self) -> None:
        """Stop the pump after one last pass; the figures are reported once more."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(1.0)
        self.pump()
        self._instruments.unplug(self._source)
