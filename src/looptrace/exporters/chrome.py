"""Chrome Trace Event JSON, for ui.perfetto.dev and chrome://tracing.

Layout (one process, the traced program):

- one track per loop, on its thread: every select wait (``io-wait``) and every step
  (``step``) in full mode, and every block, named by its call and site (``block``); a
  block replaces the step it was, so the track stays a flat sequence;
- one synthetic track per task (and per plain callback) of each loop, holding that task's
  steps (full mode) or its blocks (default mode);
- metadata naming the process and every track, and ordering the tracks.

All slices are complete events (``"ph": "X"`` with ``dur``) in microseconds from the
start of the recording. Slices on one track must nest or follow each other (Perfetto
moves overlapping slices to an "overflow" track); times are rounded to the microsecond, so
two adjacent slices can overlap by a rounding step. :func:`nest` trims such overlaps
before writing, and a test checks the nesting of every track on real recordings.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from looptrace.events import task_group
from looptrace.session import BlockEvent, Owner, Session, VictimEvent

from ._spans import evidence_fields
from .text import short_path

_LOOP_TID_BASE = 1
_TASK_TID_BASE = 1000
_LOOP_SORT_BASE = 0
_TASK_SORT_BASE = 1000
ROUNDING_US = 2.0
"""Overlaps up to this are rounding: times are kept to the microsecond, twice."""
_BLOCK_MATCH = 0.5
"""A step is the block when it overlaps at least half of the block's duration."""


@dataclass(slots=True)
class Slice:
    """One complete event before it is written: start and duration in microseconds."""

    ts: float
    dur: float
    name: str
    cat: str
    args: dict[str, Any] = field(default_factory=dict)
    cname: str | None = None


@dataclass(slots=True)
class Track:
    tid: int
    name: str
    sort_index: int
    slices: list[Slice] = field(default_factory=list)


def _us(value_ms: float) -> float:
    return round(value_ms * 1000.0, 3)


def block_name(block: BlockEvent) -> str:
    """What a block's slice is called: its call (or ``slow step``) and its site."""
    what = block.call or "slow step"
    if block.site is None:
        return f"{what} (site unknown)"
    return f"{what} @ {short_path(block.site.file)}:{block.site.line}"


def _block_args(block: BlockEvent) -> dict[str, Any]:
    args: dict[str, Any] = {
        "duration_ms": block.duration_ms,
        "duration_source": block.duration_source,
        "kind": block.kind,
        "call": block.call,
        "site": str(block.site) if block.site is not None else None,
        "site_source": block.site_source,
        "samples": block.samples,
        "task": block.task,
        "coroutine": block.coroutine,
        "callback": block.callback,
        "thread": block.thread,
    }
    if block.trace_id is not None:
        args["trace_id"] = block.trace_id
        args["span_id"] = block.span_id
    # Causes and figures beside the evidence, when they say something.
    args.update(evidence_fields(block))
    return {k: v for k, v in args.items() if v is not None}


def _block_slice(block: BlockEvent) -> Slice:
    return Slice(_us(block.start_ms), _us(block.duration_ms), block_name(block),
                 "block", _block_args(block), cname="terrible")


def _owner_label(owner: Owner) -> str:
    if owner.kind == "task":
        return f"task {owner.name}" + (f" ({owner.coroutine})" if owner.coroutine else "")
    if owner.kind == "callback":
        return f"callback {owner.name}"
    return owner.name


def nest(slices: Iterable[Slice]) -> list[Slice]:
    """Order one track's slices and make them nest (adjusting them in place).

    A slice that starts inside another but ends after it is either a rounding overlap
    (at most :data:`ROUNDING_US`: the earlier slice is cut to end where the later one
    starts) or a real one (the later slice is cut to end with the earlier)."""
    ordered = sorted(slices, key=lambda s: (s.ts, -s.dur))
    open_slices: list[Slice] = []
    kept: list[Slice] = []
    for piece in ordered:
        while open_slices and _end(open_slices[-1]) <= piece.ts:
            open_slices.pop()
        while open_slices and _end(piece) > _end(open_slices[-1]):
            parent = open_slices[-1]
            if _end(parent) - piece.ts <= ROUNDING_US:
                parent.dur = round(piece.ts - parent.ts, 3)
                open_slices.pop()
            else:
                piece.dur = round(_end(parent) - piece.ts, 3)
                break
        kept.append(piece)
        open_slices.append(piece)
    return [piece for piece in kept if piece.dur > 0 or piece.cat == "block"]


def _end(piece: Slice) -> float:
    return piece.ts + piece.dur


class _BlockFinder:
    """Which block (if any) a step of the timeline is: the same step, measured once by the
    step timer for the block and once for the timeline."""

    def __init__(self, blocks: list[Slice]) -> None:
        self.blocks = sorted(blocks, key=lambda b: b.ts)
        self.starts = [b.ts for b in self.blocks]

    def block_of(self, step: Slice) -> Slice | None:
        end = step.ts + step.dur
        # Blocks of one loop follow each other, so only the last block starting before the
        # step ends, and its neighbours, can overlap it.
        last = bisect.bisect_right(self.starts, end) - 1
        for block in self.blocks[max(0, last - 1):last + 2]:
            overlap = min(end, block.ts + block.dur) - max(step.ts, block.ts)
            if block.dur > 0 and overlap >= _BLOCK_MATCH * block.dur:
                return block
        return None


class _Builder:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.loop_tracks: dict[int, Track] = {}
        self.task_tracks: dict[tuple[int, str], Track] = {}
        self.victims: list[tuple[Slice, BlockEvent]] = []
        """Each block with its slice on the loop track (for the flow arrows to its victims)."""

    def loop_track(self, loop_id: int) -> Track:
        track = self.loop_tracks.get(loop_id)
        if track is None:
            thread = next((loop.thread for loop in self.session.loops if loop.id == loop_id),
                          "?")
            track = Track(_LOOP_TID_BASE + len(self.loop_tracks),
                          f"loop {loop_id} ({thread})", _LOOP_SORT_BASE + loop_id)
            self.loop_tracks[loop_id] = track
        return track

    def task_track(self, loop_id: int, label: str) -> Track:
        key = (loop_id, label)
        track = self.task_tracks.get(key)
        if track is None:
            number = len(self.task_tracks)
            track = Track(_TASK_TID_BASE + number, f"{label} · loop {loop_id}",
                          _TASK_SORT_BASE + number)
            self.task_tracks[key] = track
        return track

    def build(self) -> None:
        session = self.session
        for loop in session.loops:
            self.loop_track(loop.id)
        blocks_by_loop: dict[int, list[Slice]] = {}
        for block in session.blocks:
            blocks_by_loop.setdefault(block.loop, []).append(_block_slice(block))
        timeline = session.timeline
        timed_loops: set[int] = set()
        if timeline is not None:
            owners = timeline.owners
            for lt in timeline.loops:
                timed_loops.add(lt.loop)
                track = self.loop_track(lt.loop)
                for start, duration, timeout, ready in lt.selects:
                    args: dict[str, Any] = {"duration_ms": duration, "events": ready}
                    if timeout is not None:
                        args["timeout_ms"] = timeout
                    track.slices.append(Slice(_us(start), _us(duration), "select",
                                              "io-wait", args, cname="good"))
                finder = _BlockFinder(blocks_by_loop.get(lt.loop, []))
                for start, duration, owner_index in lt.steps:
                    owner = owners[owner_index] if 0 <= owner_index < len(owners) \
                        else Owner("other", "?", None)
                    label = _owner_label(owner)
                    args = {"duration_ms": duration, "owner": owner.name}
                    if owner.coroutine:
                        args["coroutine"] = owner.coroutine
                    piece = Slice(_us(start), _us(duration), label, "step", args)
                    same = finder.block_of(piece)
                    if same is None:
                        track.slices.append(piece)
                        task_piece = Slice(piece.ts, piece.dur, "step", "step", dict(args))
                    else:  # the block's own slice stands for this step on the loop track
                        task_piece = Slice(same.ts, same.dur, same.name, "block",
                                           dict(same.args), cname=same.cname)
                    self.task_track(lt.loop, label).slices.append(task_piece)
        for block in session.blocks:
            piece = _block_slice(block)
            self.loop_track(block.loop).slices.append(piece)
            self.victims.append((piece, block))
            if block.loop not in timed_loops:
                owner = (Owner("task", block.task, block.coroutine) if block.task is not None
                         else Owner("callback", block.callback or "?", None))
                task_piece = Slice(piece.ts, piece.dur, piece.name, "block", dict(piece.args),
                                   cname="terrible")
                self.task_track(block.loop, _owner_label(owner)).slices.append(task_piece)

    def events(self) -> list[dict[str, Any]]:
        pid = self.session.pid
        program = " ".join(self.session.argv) or "python"
        events: list[dict[str, Any]] = [
            {"ph": "M", "pid": pid, "tid": 0, "name": "process_name",
             "args": {"name": f"looptrace: {program}"}},
            {"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index",
             "args": {"sort_index": 0}},
        ]
        for track in [*self.loop_tracks.values(), *self.task_tracks.values()]:
            events.append({"ph": "M", "pid": pid, "tid": track.tid, "name": "thread_name",
                           "args": {"name": track.name}})
            events.append({"ph": "M", "pid": pid, "tid": track.tid,
                           "name": "thread_sort_index", "args": {"sort_index": track.sort_index}})
            track.slices = nest(track.slices)
            for piece in track.slices:
                event: dict[str, Any] = {"ph": "X", "pid": pid, "tid": track.tid,
                                         "ts": piece.ts, "dur": piece.dur, "name": piece.name,
                                         "cat": piece.cat, "args": piece.args}
                if piece.cname is not None:
                    event["cname"] = piece.cname
                events.append(event)
        events.extend(self.flows())
        return events

    def flows(self) -> list[dict[str, Any]]:
        """Flow arrows from each block to the next step of every task or callback it
        delayed (in detail), where that owner has a track holding such a step (full mode
        keeps every step; in default mode only blocking tasks have tracks). Read after the
        tracks were nested."""
        pid = self.session.pid
        flows: list[dict[str, Any]] = []
        for piece, block in self.victims:
            loop_track = self.loop_tracks[block.loop]
            end = piece.ts + piece.dur
            for victim in block.victim_detail:
                target = self._next_step(block.loop, victim, end)
                if target is None:
                    continue
                track, ts = target
                flow_id = len(flows) // 2 + 1
                common = {"pid": pid, "name": "delayed", "cat": "victim", "id": flow_id}
                flows.append({"ph": "s", "tid": loop_track.tid,
                              "ts": round(end - min(1.0, piece.dur / 2), 3), **common})
                flows.append({"ph": "f", "bp": "e", "tid": track.tid, "ts": ts,
                              "args": {"delay_ms": victim.delay_ms}, **common})
        return flows

    def _next_step(self, loop_id: int, victim: VictimEvent,
                   after_us: float) -> tuple[Track, float] | None:
        # Full mode names default-named tasks as a group (Task-*); default mode's tracks
        # hold the blocking task by its own name.
        for name in dict.fromkeys((task_group(victim.name), victim.name)):
            kind = "task" if victim.kind == "task" else "callback"
            track = self.task_tracks.get(
                (loop_id, _owner_label(Owner(kind, name, victim.coroutine))))
            if track is None:
                continue
            starts = [piece.ts for piece in track.slices]
            index = bisect.bisect_left(starts, after_us - ROUNDING_US)
            if index < len(starts):
                return track, starts[index]
        return None


def trace_events(session: Session) -> dict[str, Any]:
    """The trace as a JSON-ready object: ``{"traceEvents": [...], ...}``."""
    builder = _Builder(session)
    builder.build()
    return {
        "traceEvents": builder.events(),
        "displayTimeUnit": "ms",
        "otherData": {
            "generator": f"looptrace {session.looptrace_version}",
            "python": session.python,
            "argv": list(session.argv),
            "started_at": session.started_at,
            "threshold_ms": session.threshold_ms,
            "mode": session.mode,
            "wall_ms": session.wall_ms,
        },
    }


def render(session: Session) -> str:
    """The Chrome Trace Event JSON document for ``session``."""
    return json.dumps(trace_events(session), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")) + "\n"
