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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .events import CodeLocation

SCHEMA = "looptrace.report/1"


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
    schema: str = SCHEMA

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
        text = self.to_json()
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.write("\n")
        os.replace(tmp, path)

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
        try:
            return cls.from_dict(data)
        except ReportError as exc:
            raise ReportError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Session:
        """Read a report file; any problem is a :class:`ReportError` naming the file."""
        name = os.fspath(path)
        try:
            with open(name, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ReportError(f"{name}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ReportError(f"{name}: not a text file, so not a looptrace report") from None
        return cls.from_json(text, source=name)


# -- a validating reader: every problem names the JSON path that holds it


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

    def str(self) -> str:
        if not isinstance(self.data, str):
            raise self._fail(f"expected a string, found {type(self.data).__name__}")
        return self.data

    def opt_str(self) -> str | None:
        return None if self.data is None else self.str()

    def int(self) -> int:
        if isinstance(self.data, bool) or not isinstance(self.data, int):
            raise self._fail(f"expected an integer, found {type(self.data).__name__}")
        return self.data

    def opt_int(self) -> int | None:
        return None if self.data is None else self.int()

    def num(self) -> float:
        if isinstance(self.data, bool) or not isinstance(self.data, int | float) \
                or not math.isfinite(self.data):
            raise self._fail(f"expected a number, found {self.data!r}")
        return float(self.data)

    def opt_num(self) -> float | None:
        return None if self.data is None else self.num()

    def bool(self) -> bool:
        if not isinstance(self.data, bool):
            raise self._fail(f"expected true or false, found {self.data!r}")
        return self.data

    def strs(self) -> tuple[str, ...]:
        return tuple(r.str() for r in self.items())


def _location(r: _Reader) -> CodeLocation | None:
    if r.data is None:
        return None
    return CodeLocation(r["file"].str(), r["line"].int(), r["function"].str())


def _stack(r: _Reader) -> tuple[CodeLocation, ...]:
    return tuple(loc for loc in (_location(item) for item in r.items()) if loc is not None)


def _read_loop(r: _Reader) -> LoopSummary:
    lag = r["lag_ms"]
    return LoopSummary(
        id=r["id"].int(), thread=r["thread"].str(), thread_id=r["thread_id"].int(),
        kind=r["kind"].str(), coverage=r["coverage"].strs(), missing=r["missing"].strs(),
        iterations=r["iterations"].opt_int(), select_calls=r["select_calls"].opt_int(),
        events=r["events"].opt_int(), io_wait_ms=r["io_wait_ms"].opt_num(),
        busy_ms=r["busy_ms"].opt_num(), utilization=r["utilization"].opt_num(),
        lag_ms=Lag(lag["p50"].opt_num(), lag["p99"].opt_num(), lag["max"].opt_num(),
                   lag["source"].str()),
        steps=r["steps"].opt_int(), blocks=r["blocks"].int(), block_ms=r["block_ms"].num(),
        long_iterations=r["long_iterations"].int(),
        saturated_iterations=r["saturated_iterations"].int(),
    )


def _read_hotspot(r: _Reader) -> Hotspot:
    return Hotspot(
        kind=r["kind"].str(), call=r["call"].opt_str(), site=_location(r["site"]),
        count=r["count"].int(), total_ms=r["total_ms"].num(), max_ms=r["max_ms"].num(),
        p50_ms=r["p50_ms"].num(), thread=r["thread"].str(), task=r["task"].opt_str(),
        coroutine=r["coroutine"].opt_str(), stack=_stack(r["stack"]), advice=r["advice"].str(),
    )


def _read_block(r: _Reader) -> BlockEvent:
    return BlockEvent(
        loop=r["loop"].int(), thread=r["thread"].str(), thread_id=r["thread_id"].int(),
        start_ms=r["start_ms"].num(), start_unix_ns=r["start_unix_ns"].int(),
        duration_ms=r["duration_ms"].num(), duration_source=r["duration_source"].str(),
        kind=r["kind"].str(), call=r["call"].opt_str(), site=_location(r["site"]),
        site_source=r["site_source"].str(), task=r["task"].opt_str(),
        coroutine=r["coroutine"].opt_str(), callback=r["callback"].opt_str(),
        samples=r["samples"].int(), trace_id=r["trace_id"].opt_str(),
        span_id=r["span_id"].opt_str(), stack=_stack(r["stack"]),
        gc_ms=r.get("gc_ms", 0.0).num(),
    )


def _read_task(r: _Reader) -> TaskSummary:
    return TaskSummary(
        kind=r["kind"].str(), name=r["name"].str(), coroutine=r["coroutine"].opt_str(),
        steps=r["steps"].opt_int(), busy_ms=r["busy_ms"].opt_num(), blocks=r["blocks"].int(),
        block_ms=r["block_ms"].num(), max_block_ms=r["max_block_ms"].num(),
    )


def _read_timeline(r: _Reader) -> Timeline | None:
    if r.data is None:
        return None
    owners = tuple(Owner(o["kind"].str(), o["name"].str(), o["coroutine"].opt_str())
                   for o in r["owners"].items())
    loops = []
    for lr in r["loops"].items():
        selects = []
        for s in lr["selects"].items():
            parts = s.items()
            if len(parts) != 4:
                raise s._fail("expected [start_ms, duration_ms, timeout_ms, events]")
            selects.append((parts[0].num(), parts[1].num(), parts[2].opt_num(), parts[3].int()))
        steps = []
        for s in lr["steps"].items():
            parts = s.items()
            if len(parts) != 3:
                raise s._fail("expected [start_ms, duration_ms, owner]")
            steps.append((parts[0].num(), parts[1].num(), parts[2].int()))
        loops.append(LoopTimeline(lr["loop"].int(), tuple(selects), tuple(steps)))
    return Timeline(owners, tuple(loops))


def _read_session(r: _Reader) -> Session:
    schema = r.obj().get("schema")
    if schema != SCHEMA:
        if schema is None:
            raise ReportError("not a looptrace report (no 'schema' field)")
        raise ReportError(f"schema {schema!r} is not supported by this looptrace "
                          f"(it reads {SCHEMA!r})")
    dropped_r = r["dropped"]
    dropped = {k: _Reader(v, f"{dropped_r.path}.{k}").int() for k, v in dropped_r.obj().items()}
    tasks = r["tasks"]
    return Session(
        looptrace_version=r["looptrace_version"].str(), python=r["python"].str(),
        implementation=r["implementation"].str(), platform=r["platform"].str(),
        argv=r["argv"].strs(), pid=r["pid"].int(), started_at=r["started_at"].str(),
        started_unix_ns=r["started_unix_ns"].int(), threshold_ms=r["threshold_ms"].num(),
        mode=r["mode"].str(), accelerated=r["accelerated"].bool(), probes=r["probes"].int(),
        wall_ms=r["wall_ms"].num(),
        loops=tuple(_read_loop(x) for x in r["loops"].items()),
        hotspots=tuple(_read_hotspot(x) for x in r["hotspots"].items()),
        blocks=tuple(_read_block(x) for x in r["blocks"].items()),
        tasks=tuple(_read_task(x) for x in tasks["rows"].items()),
        timeline=_read_timeline(r.get("timeline")),
        dropped=dropped,
        faults=tuple(FaultSummary(f["hook"].str(), f["count"].int(), f["error"].str())
                     for f in r["faults"].items()),
        exemptions=tuple(Exemption(e["rule"].str(), e["count"].int(), e.get("test").opt_str())
                         for e in r.get("exemptions", []).items()),
    )
