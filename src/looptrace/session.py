"""The report: an immutable, versioned, JSON-serialisable snapshot of one recording.

Every front end writes this document and every exporter reads only this, so a report saved
to a file renders exactly as a live one (``looptrace report FILE --format ...``). The
document is described field by field in ``docs/report.md``; its ``schema`` names the
version, and a reader refuses a document of another schema with a clear message.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ._files import write_text
from .events import CodeLocation

SCHEMA = "looptrace.report/1"
_FINGERPRINT = re.compile("sha256:[0-9a-f]{64}")
MAX_REPORT_BYTES = 512 * 1024 * 1024
"""The largest report file read (a long full-mode run writes tens of megabytes)."""


class ReportError(ValueError):
    """A file or document that is not a readable looptrace report."""


@dataclass(frozen=True, slots=True)
class Lag:
    """Iteration lag (or heartbeat lateness) percentiles, in milliseconds."""

    p50: float | None
    p99: float | None
    max: float | None
    source: str


@dataclass(frozen=True, slots=True)
class LoopSummary:
    id: int
    thread: str
    thread_id: int
    kind: str
    coverage: tuple[str, ...]
    missing: tuple[str, ...]
    iterations: int | None
    select_calls: int | None
    events: int | None
    io_wait_ms: float | None
    busy_ms: float | None
    utilization: float | None
    lag_ms: Lag
    steps: int | None
    blocks: int
    block_ms: float
    long_iterations: int
    saturated_iterations: int


@dataclass(frozen=True, slots=True)
class Hotspot:
    kind: str
    call: str | None
    site: CodeLocation | None
    count: int
    total_ms: float
    max_ms: float
    p50_ms: float
    thread: str
    task: str | None
    coroutine: str | None
    stack: tuple[CodeLocation, ...]
    advice: str


@dataclass(frozen=True, slots=True)
class VictimEvent:
    """A task or callback a block delayed (see ``BlockEvent.victim_detail``)."""

    kind: str
    """``task`` or ``callback``."""
    name: str
    coroutine: str | None
    delay_ms: float
    trace_id: str | None
    span_id: str | None


@dataclass(frozen=True, slots=True)
class BlockEvent:
    loop: int
    thread: str
    thread_id: int
    start_ms: float
    start_unix_ns: int
    duration_ms: float
    duration_source: str
    kind: str
    call: str | None
    site: CodeLocation | None
    site_source: str
    task: str | None
    coroutine: str | None
    callback: str | None
    samples: int
    trace_id: str | None
    span_id: str | None
    stack: tuple[CodeLocation, ...]
    gc_ms: float = 0.0
    trace_sampled: bool = True
    cpu_wait_ms: float = 0.0
    cpu_ms: float | None = None
    causes: tuple[str, ...] = ()
    in_progress: bool = False
    call_source: str | None = None
    gil_wait_ms: float = 0.0
    gil_holder: str | None = None
    gil_holder_call: str | None = None
    gil_holder_site: CodeLocation | None = None
    victims: int | None = None
    """Tasks and callbacks the block delayed (None: not measured, e.g. on uvloop)."""
    victim_delay_ms: float = 0.0
    """Their delays added up."""
    victim_max_delay_ms: float = 0.0
    victim_requests: tuple[str, ...] = ()
    """Trace ids of the requests they belonged to (the first 20)."""
    victim_request_count: int = 0
    victim_detail: tuple[VictimEvent, ...] = ()
    """The longest delayed (at most 20), longest first."""


@dataclass(frozen=True, slots=True)
class TaskSummary:
    kind: str
    name: str
    coroutine: str | None
    steps: int | None
    busy_ms: float | None
    blocks: int
    block_ms: float
    max_block_ms: float
    # Full mode (docs/tasks.md): None or 0 in default mode and in older reports.
    scheduled_ms: float | None = None
    """Ready, waiting for the loop: from the wake (call_soon) to the step's start, summed."""
    idle_ms: float | None = None
    """Awaiting: lifetime minus busy minus scheduled (tasks only)."""
    max_step_ms: float | None = None
    created: int = 0
    done: int = 0
    cancelled: int = 0
    exception_never_retrieved: int = 0
    pending_at_close: int = 0
    destroyed_pending: int = 0
    self_wakes: int = 0
    """Wakes a task made of itself inside its own step (``await asyncio.sleep(0)``)."""
    warnings: tuple[str, ...] = ()
    """In tokio-console's manner: ``long-step``, ``busy-poll``, ``pending-at-close``,
    ``destroyed-pending``, ``exception-never-retrieved`` (see ``analysis.task_warnings``)."""


@dataclass(frozen=True, slots=True)
class Owner:
    kind: str
    name: str
    coroutine: str | None


@dataclass(frozen=True, slots=True)
class LoopTimeline:
    loop: int
    selects: tuple[tuple[float, float, float | None, int], ...]
    """(start_ms, duration_ms, timeout_ms or None, events ready)"""
    steps: tuple[tuple[float, float, int], ...]
    """(start_ms, duration_ms, owner index)"""


@dataclass(frozen=True, slots=True)
class Timeline:
    owners: tuple[Owner, ...]
    loops: tuple[LoopTimeline, ...]


@dataclass(frozen=True, slots=True)
class FaultSummary:
    hook: str
    count: int
    error: str


@dataclass(frozen=True, slots=True)
class Exemption:
    """A block a pytest allow-list let pass: which rule, which site or call, how often."""

    rule: str
    count: int
    test: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutorSite:
    """The ``run_in_executor`` / ``to_thread`` calls from one line, of one function: how
    long they waited for a worker (queue) and ran (run), in a pool of ``workers``."""

    site: CodeLocation | None
    function: str
    calls: int
    completed: int
    queue_ms: float
    max_queue_ms: float
    run_ms: float
    max_run_ms: float
    workers: int | None
    peak_queue_depth: int
    task: str | None
    """The awaiting task of the call that waited longest."""
    trace_id: str | None
    span_id: str | None
    warning: str | None
    """Set when the pool, not the work, was the bottleneck (see ``looptrace.pools``)."""
    waited: int = 0
    """Calls that waited 1 ms or more for a worker."""
    tasks: tuple[str, ...] = ()
    """The awaiting tasks of the calls (at most 8, first seen first): a block's ``task``
    among them is the same task, before and after its executor call."""


@dataclass(frozen=True, slots=True)
class Session:
    """One report. Times are milliseconds from ``started_at`` unless a name says otherwise."""

    looptrace_version: str
    python: str
    implementation: str
    platform: str
    argv: tuple[str, ...]
    pid: int
    started_at: str
    started_unix_ns: int
    threshold_ms: float
    mode: str
    accelerated: bool
    probes: int
    wall_ms: float
    loops: tuple[LoopSummary, ...]
    hotspots: tuple[Hotspot, ...]
    blocks: tuple[BlockEvent, ...]
    tasks: tuple[TaskSummary, ...]
    timeline: Timeline | None
    dropped: dict[str, int]
    faults: tuple[FaultSummary, ...]
    exemptions: tuple[Exemption, ...] = field(default=())
    sources: dict[str, str] = field(default_factory=dict)
    """``{file: "sha256:..."}``: the source that ran, for each site's file (see _sources)."""
    schema: str = SCHEMA
    executors: tuple[ExecutorSite, ...] = field(default=())
    """Executor calls per site, most queue wait first (empty: none, or not measured)."""

    # -- writing

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tasks"] = {"count": len(self.tasks), "rows": data["tasks"]}
        ordered = {"schema": data.pop("schema")}
        ordered.update(data)
        return ordered

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON, atomically (a reader never sees half a file)."""
        write_text(path, self.to_json() + "\n")

    def with_exemptions(self, exemptions: tuple[Exemption, ...]) -> Session:
        return replace(self, exemptions=exemptions)

    # -- reading

    @classmethod
    def from_dict(cls, data: object) -> Session:
        return _read_session(_Reader(data, "report"))

    @classmethod
    def from_json(cls, text: str, *, source: str = "report") -> Session:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                              f"column {exc.colno}); is the file truncated?") from None
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, [[[[...]]]]
            raise ReportError(f"{source}: not a looptrace report ({type(exc).__name__}: "
                              f"{str(exc)[:100]})") from None
        try:
            return cls.from_dict(data)
        except ReportError as exc:
            raise ReportError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, max_bytes: int = MAX_REPORT_BYTES
             ) -> Session:
        """Read a report file; any problem is a :class:`ReportError` naming the file.
        Reads at most ``max_bytes`` (``/dev/zero`` or a huge file is refused, not read
        until memory runs out)."""
        name = os.fspath(path)
        try:
            data = _read_bounded(name, max_bytes)
        except OSError as exc:
            raise ReportError(f"{name}: cannot read ({exc.strerror or exc})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ReportError(f"{name}: not a text file, so not a looptrace report") from None
        return cls.from_json(text, source=name)


_CHUNK = 1 << 20


def _read_bounded(name: str, max_bytes: int) -> bytes:
    """The file's bytes, read in chunks: a NUL byte (never in JSON text) or more than
    ``max_bytes`` stops the reading with a :class:`ReportError`."""
    chunks: list[bytes] = []
    size = 0
    with open(name, "rb") as f:
        while chunk := f.read(_CHUNK):
            if b"\x00" in chunk:
                raise ReportError(f"{name}: binary data (a NUL byte), so not a looptrace "
                                  "report")
            size += len(chunk)
            if size > max_bytes:
                raise ReportError(f"{name}: larger than {max_bytes // (1024 * 1024)} MB; "
                                  "not read (is it a looptrace report?)")
            chunks.append(chunk)
    return b"".join(chunks)


# -- a validating reader: every problem names the JSON path that holds it

_MAX_NUMBER = 1e13
"""Any number of the report: milliseconds up to 300 years, ratios, figures."""
_INT_RANGE = (-(2**63), 2**64)
"""Counts, line numbers, thread idents (unsigned), nanosecond timestamps."""


class _Reader:
    __slots__ = ("data", "path")

    def __init__(self, data: object, path: str) -> None:
        self.data = data
        self.path = path

    def _fail(self, message: str) -> ReportError:
        return ReportError(f"{self.path}: {message}")

    def obj(self) -> dict[str, Any]:
        if not isinstance(self.data, dict):
            raise self._fail(f"expected an object, found {type(self.data).__name__}")
        return self.data

    def __getitem__(self, key: str) -> _Reader:
        data = self.obj()
        if key not in data:
            raise self._fail(f"missing field {key!r}")
        return _Reader(data[key], f"{self.path}.{key}")

    def get(self, key: str, default: object = None) -> _Reader:
        return _Reader(self.obj().get(key, default), f"{self.path}.{key}")

    def items(self) -> list[_Reader]:
        if not isinstance(self.data, list | tuple):
            raise self._fail(f"expected a list, found {type(self.data).__name__}")
        return [_Reader(v, f"{self.path}[{i}]") for i, v in enumerate(self.data)]

    def text(self) -> str:
        if not isinstance(self.data, str):
            raise self._fail(f"expected a string, found {type(self.data).__name__}")
        return self.data

    def opt_text(self) -> str | None:
        return None if self.data is None else self.text()

    def integer(self) -> int:
        if isinstance(self.data, bool) or not isinstance(self.data, int):
            raise self._fail(f"expected an integer, found {type(self.data).__name__}")
        if not _INT_RANGE[0] <= self.data < _INT_RANGE[1]:
            raise self._fail(f"integer out of range: {self.data}")
        return self.data

    def opt_integer(self) -> int | None:
        return None if self.data is None else self.integer()

    def number(self) -> float:
        if isinstance(self.data, bool) or not isinstance(self.data, int | float) \
                or not math.isfinite(self.data):
            raise self._fail(f"expected a number, found {self.data!r}")
        if abs(self.data) > _MAX_NUMBER:  # 1e306 ms: no renderer can place it in time
            raise self._fail(f"number out of range: {self.data!r}")
        return float(self.data)

    def opt_number(self) -> float | None:
        return None if self.data is None else self.number()

    def boolean(self) -> bool:
        if not isinstance(self.data, bool):
            raise self._fail(f"expected true or false, found {self.data!r}")
        return self.data

    def texts(self) -> tuple[str, ...]:
        return tuple(r.text() for r in self.items())


def _location(r: _Reader) -> CodeLocation | None:
    if r.data is None:
        return None
    return CodeLocation(r["file"].text(), r["line"].integer(), r["function"].text())


def _stack(r: _Reader) -> tuple[CodeLocation, ...]:
    return tuple(loc for loc in (_location(item) for item in r.items()) if loc is not None)


def _read_loop(r: _Reader) -> LoopSummary:
    lag = r["lag_ms"]
    return LoopSummary(
        id=r["id"].integer(), thread=r["thread"].text(), thread_id=r["thread_id"].integer(),
        kind=r["kind"].text(), coverage=r["coverage"].texts(), missing=r["missing"].texts(),
        iterations=r["iterations"].opt_integer(), select_calls=r["select_calls"].opt_integer(),
        events=r["events"].opt_integer(), io_wait_ms=r["io_wait_ms"].opt_number(),
        busy_ms=r["busy_ms"].opt_number(), utilization=r["utilization"].opt_number(),
        lag_ms=Lag(lag["p50"].opt_number(), lag["p99"].opt_number(), lag["max"].opt_number(),
                   lag["source"].text()),
        steps=r["steps"].opt_integer(), blocks=r["blocks"].integer(),
        block_ms=r["block_ms"].number(),
        long_iterations=r["long_iterations"].integer(),
        saturated_iterations=r["saturated_iterations"].integer(),
    )


def _read_hotspot(r: _Reader) -> Hotspot:
    return Hotspot(
        kind=r["kind"].text(), call=r["call"].opt_text(), site=_location(r["site"]),
        count=r["count"].integer(), total_ms=r["total_ms"].number(), max_ms=r["max_ms"].number(),
        p50_ms=r["p50_ms"].number(), thread=r["thread"].text(), task=r["task"].opt_text(),
        coroutine=r["coroutine"].opt_text(), stack=_stack(r["stack"]), advice=r["advice"].text(),
    )


def _read_block(r: _Reader) -> BlockEvent:
    return BlockEvent(
        loop=r["loop"].integer(), thread=r["thread"].text(), thread_id=r["thread_id"].integer(),
        start_ms=r["start_ms"].number(), start_unix_ns=r["start_unix_ns"].integer(),
        duration_ms=r["duration_ms"].number(), duration_source=r["duration_source"].text(),
        kind=r["kind"].text(), call=r["call"].opt_text(), site=_location(r["site"]),
        site_source=r["site_source"].text(), task=r["task"].opt_text(),
        coroutine=r["coroutine"].opt_text(), callback=r["callback"].opt_text(),
        samples=r["samples"].integer(), trace_id=r["trace_id"].opt_text(),
        span_id=r["span_id"].opt_text(), stack=_stack(r["stack"]),
        gc_ms=r.get("gc_ms", 0.0).number(),
        trace_sampled=r.get("trace_sampled", True).boolean(),
        cpu_wait_ms=r.get("cpu_wait_ms", 0.0).number(),
        cpu_ms=r.get("cpu_ms").opt_number(),
        causes=r.get("causes", []).texts(),
        in_progress=r.get("in_progress", False).boolean(),
        call_source=r.get("call_source", None).opt_text(),
        gil_wait_ms=r.get("gil_wait_ms", 0.0).number(),
        gil_holder=r.get("gil_holder", None).opt_text(),
        gil_holder_call=r.get("gil_holder_call", None).opt_text(),
        gil_holder_site=_location(r.get("gil_holder_site", None)),
        victims=r.get("victims", None).opt_integer(),
        victim_delay_ms=r.get("victim_delay_ms", 0.0).number(),
        victim_max_delay_ms=r.get("victim_max_delay_ms", 0.0).number(),
        victim_requests=r.get("victim_requests", []).texts(),
        victim_request_count=r.get("victim_request_count", 0).integer(),
        victim_detail=tuple(_read_victim(v) for v in r.get("victim_detail", []).items()),
    )


def _read_victim(r: _Reader) -> VictimEvent:
    return VictimEvent(
        kind=r["kind"].text(), name=r["name"].text(), coroutine=r["coroutine"].opt_text(),
        delay_ms=r["delay_ms"].number(), trace_id=r.get("trace_id").opt_text(),
        span_id=r.get("span_id").opt_text())


def _read_task(r: _Reader) -> TaskSummary:
    return TaskSummary(
        kind=r["kind"].text(), name=r["name"].text(), coroutine=r["coroutine"].opt_text(),
        steps=r["steps"].opt_integer(), busy_ms=r["busy_ms"].opt_number(),
        blocks=r["blocks"].integer(),
        block_ms=r["block_ms"].number(), max_block_ms=r["max_block_ms"].number(),
        scheduled_ms=r.get("scheduled_ms").opt_number(), idle_ms=r.get("idle_ms").opt_number(),
        max_step_ms=r.get("max_step_ms").opt_number(), created=r.get("created", 0).integer(),
        done=r.get("done", 0).integer(), cancelled=r.get("cancelled", 0).integer(),
        exception_never_retrieved=r.get("exception_never_retrieved", 0).integer(),
        pending_at_close=r.get("pending_at_close", 0).integer(),
        destroyed_pending=r.get("destroyed_pending", 0).integer(),
        self_wakes=r.get("self_wakes", 0).integer(), warnings=r.get("warnings", []).texts(),
    )


def _read_timeline(r: _Reader) -> Timeline | None:
    if r.data is None:
        return None
    owners = tuple(Owner(o["kind"].text(), o["name"].text(), o["coroutine"].opt_text())
                   for o in r["owners"].items())
    loops = []
    for lr in r["loops"].items():
        selects = []
        for s in lr["selects"].items():
            parts = s.items()
            if len(parts) != 4:
                raise s._fail("expected [start_ms, duration_ms, timeout_ms, events]")
            selects.append((parts[0].number(), parts[1].number(), parts[2].opt_number(),
                            parts[3].integer()))
        steps = []
        for s in lr["steps"].items():
            parts = s.items()
            if len(parts) != 3:
                raise s._fail("expected [start_ms, duration_ms, owner]")
            steps.append((parts[0].number(), parts[1].number(), parts[2].integer()))
        loops.append(LoopTimeline(lr["loop"].integer(), tuple(selects), tuple(steps)))
    return Timeline(owners, tuple(loops))


def _read_session(r: _Reader) -> Session:
    schema = r.obj().get("schema")
    if schema != SCHEMA:
        if schema is None:
            raise ReportError("not a looptrace report (no 'schema' field)")
        raise ReportError(f"schema {schema!r} is not supported by this looptrace "
                          f"(it reads {SCHEMA!r})")
    dropped_r = r["dropped"]
    dropped = {k: _Reader(v, f"{dropped_r.path}.{k}").integer() for k, v in dropped_r.obj().items()}
    tasks = r["tasks"]
    return Session(
        looptrace_version=r["looptrace_version"].text(), python=r["python"].text(),
        implementation=r["implementation"].text(), platform=r["platform"].text(),
        argv=r["argv"].texts(), pid=r["pid"].integer(), started_at=r["started_at"].text(),
        started_unix_ns=r["started_unix_ns"].integer(), threshold_ms=r["threshold_ms"].number(),
        mode=r["mode"].text(), accelerated=r["accelerated"].boolean(), probes=r["probes"].integer(),
        wall_ms=r["wall_ms"].number(),
        loops=tuple(_read_loop(x) for x in r["loops"].items()),
        hotspots=tuple(_read_hotspot(x) for x in r["hotspots"].items()),
        blocks=tuple(_read_block(x) for x in r["blocks"].items()),
        tasks=tuple(_read_task(x) for x in tasks["rows"].items()),
        timeline=_read_timeline(r.get("timeline")),
        dropped=dropped,
        faults=tuple(FaultSummary(f["hook"].text(), f["count"].integer(), f["error"].text())
                     for f in r["faults"].items()),
        exemptions=tuple(Exemption(e["rule"].text(), e["count"].integer(), e.get("test").opt_text())
                         for e in r.get("exemptions", []).items()),
        sources=_read_sources(r.get("sources", {})),
        executors=tuple(_read_executor(x) for x in r.get("executors", []).items()),
    )


def _read_executor(r: _Reader) -> ExecutorSite:
    return ExecutorSite(
        site=_location(r["site"]), function=r["function"].text(), calls=r["calls"].integer(),
        completed=r["completed"].integer(), queue_ms=r["queue_ms"].number(),
        max_queue_ms=r["max_queue_ms"].number(), run_ms=r["run_ms"].number(),
        max_run_ms=r["max_run_ms"].number(), workers=r["workers"].opt_integer(),
        peak_queue_depth=r["peak_queue_depth"].integer(), task=r["task"].opt_text(),
        trace_id=r["trace_id"].opt_text(), span_id=r["span_id"].opt_text(),
        warning=r["warning"].opt_text(), waited=r.get("waited", 0).integer(),
        tasks=r.get("tasks", []).texts(),
    )


def _read_sources(r: _Reader) -> dict[str, str]:
    sources = {}
    for path, value in r.obj().items():
        fingerprint = _Reader(value, f"{r.path}.{path}").text()
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise ReportError(f"{r.path}.{path}: expected 'sha256:' and 64 hex digits")
        sources[path] = fingerprint
    return sources
