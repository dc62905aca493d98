"""The Chrome Trace Event export, checked against the format's rules on real recordings.

Rules (Trace Event Format, and what Perfetto needs to draw it without an overflow track):
every event has ``ph``, ``pid``, ``tid`` and ``name``; complete events (``X``) have
numeric ``ts`` and ``dur``; on each track complete events nest (no partial overlap); a
``process_name`` names the process and a ``thread_name`` names every track.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from front_end_program import EVIL_TASK, THRESHOLD_MS, line_of, record
from looptrace import Session
from looptrace.exporters import chrome

Event = dict[str, Any]


@pytest.fixture(scope="module")
def full_session(slow_http_server: str) -> Session:
    """The program recorded in full mode (every select wait and step)."""
    return record(slow_http_server, mode="full")


@pytest.fixture(scope="module")
def default_session(slow_http_server: str) -> Session:
    """The program recorded in default mode (blocks and loop figures only)."""
    return record(slow_http_server, mode="default")


def check_trace_rules(document: object) -> list[Event]:
    """Assert the trace-event rules; return the events."""
    assert isinstance(document, dict)
    events = document["traceEvents"]
    assert isinstance(events, list) and events
    assert document.get("displayTimeUnit") in ("ms", "ns")
    names: dict[tuple[int, int], str] = {}
    processes: set[int] = set()
    tracks: dict[tuple[int, int], list[Event]] = defaultdict(list)
    flows: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        assert {"ph", "pid", "tid", "name"} <= set(event), event
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        if event["ph"] == "M":
            assert event["name"] in {"process_name", "process_sort_index", "thread_name",
                                     "thread_sort_index"}, event
            if event["name"] == "thread_name":
                names[(event["pid"], event["tid"])] = event["args"]["name"]
            if event["name"] == "process_name":
                processes.add(event["pid"])
                assert event["args"]["name"]
            continue
        if event["ph"] in ("s", "f"):  # a flow arrow (a block to a task it delayed)
            flows[event["id"]].append(event)
            continue
        assert event["ph"] == "X", event
        assert isinstance(event["ts"], int | float) and event["ts"] >= 0, event
        assert isinstance(event.get("dur"), int | float) and event["dur"] >= 0, event
        assert isinstance(event["name"], str) and event["name"]
        tracks[(event["pid"], event["tid"])].append(event)
    for (pid, tid), slices in tracks.items():
        assert pid in processes, f"process {pid} has no process_name"
        assert names.get((pid, tid)), f"track {tid} has no thread_name"
        open_ends: list[float] = []
        for piece in sorted(slices, key=lambda e: (e["ts"], -e["dur"])):
            while open_ends and open_ends[-1] <= piece["ts"]:
                open_ends.pop()
            end = piece["ts"] + piece["dur"]
            assert not open_ends or end <= open_ends[-1] + 1e-6, \
                f"{piece} overlaps its parent on track {names[(pid, tid)]!r}"
            open_ends.append(end)
    for pair in flows.values():
        assert sorted(e["ph"] for e in pair) == ["f", "s"], pair
        for end in pair:  # each end lies in a slice of its track, which it binds to
            assert any(p["ts"] <= end["ts"] <= p["ts"] + p["dur"]
                       for p in tracks[(end["pid"], end["tid"])]), end
    return list(events)


def _tracks(events: list[Event]) -> dict[str, list[Event]]:
    names = {e["tid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}
    by_name: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        if event["ph"] == "X":
            by_name[names[event["tid"]]].append(event)
    return by_name


def test_full_mode_trace_follows_the_rules(full_session: Session) -> None:
    """Full mode: the loop's track holds its select waits (with the ready events they
    returned) and steps, each block replaces its step and is named by call and site, and
    every task has a named track of its own where its blocks are marked the same way; the
    document follows the trace-event rules."""
    events = check_trace_rules(json.loads(chrome.render(full_session)))
    tracks = _tracks(events)
    loop_track = tracks["loop 1 (MainThread)"]
    selects = [e for e in loop_track if e["cat"] == "io-wait"]
    steps = [e for e in loop_track if e["cat"] == "step"]
    blocks = [e for e in loop_track if e["cat"] == "block"]
    assert len(selects) >= 5 and len(steps) >= 10
    assert any(e["args"]["events"] > 0 for e in selects)  # woken by the loopback socket
    sleep_name = f"time.sleep @ tests/front_end_program.py:{line_of('SLEEP_LINE')}"
    assert [e["name"] for e in blocks].count(sleep_name) == 2
    assert any(e["name"].startswith("slow step @ tests/front_end_program.py:") for e in blocks)
    for event in blocks:
        assert event["dur"] >= THRESHOLD_MS * 1000
        if "site" in event["args"]:  # named "file:line" after it
            assert event["args"]["site"].split(" in ")[0].endswith(event["name"].split(" @ ")[1]
                                                                   .split("/")[-1])
    for block in full_session.blocks:
        assert any(e["ts"] == round(block.start_ms * 1000, 3)
                   and e["dur"] == round(block.duration_ms * 1000, 3) for e in blocks)
    for label in ("task fetcher (fetch)", "task legacy (legacy_worker)",
                  "task cruncher (cpu_worker)", f"task {EVIL_TASK} (evil)"):
        assert tracks[f"{label} · loop 1"], label
    legacy = tracks["task legacy (legacy_worker) · loop 1"]
    assert [e["name"] for e in legacy if e["cat"] == "block"] == [sleep_name, sleep_name]
    assert all(e["name"] == "step" for e in legacy if e["cat"] == "step")


def test_default_mode_trace_has_blocks_on_loop_and_task_tracks(
        default_session: Session) -> None:
    """Default mode (no per-step timeline): each block is on the loop's track and on its
    task's track, and the document still follows the rules."""
    events = check_trace_rules(json.loads(chrome.render(default_session)))
    tracks = _tracks(events)
    loop_blocks = tracks["loop 1 (MainThread)"]
    assert {e["cat"] for e in loop_blocks} == {"block"}
    assert len(loop_blocks) == len(default_session.blocks) >= 3
    legacy = [e["name"] for e in tracks["task legacy (legacy_worker) · loop 1"]]
    assert legacy.count(f"time.sleep @ tests/front_end_program.py:{line_of('SLEEP_LINE')}") == 2
    # A plain string: pytest shortens the repr of other objects, and with it the evidence.
    assert tracks["task cruncher (cpu_worker) · loop 1"], "\n".join(
        [", ".join(tracks)] + [f"{b.task} {b.coroutine} {b.kind} {b.call} {b.site_source}"
                               f" {b.site} {b.duration_ms:.1f} ms"
                               for b in default_session.blocks])


def test_trace_from_a_saved_report(full_session: Session, tmp_path: Path) -> None:
    """``looptrace report FILE --format chrome`` renders a saved report to the same trace
    as the live session."""
    saved = tmp_path / "report.json"
    full_session.save(saved)
    out = tmp_path / "trace.json"
    subprocess.run([sys.executable, "-m", "looptrace", "report", str(saved), "--format",
                    "chrome", "-o", str(out)], check=True, timeout=60)
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(chrome.render(full_session))


def test_nest_trims_rounding_overlaps() -> None:
    """Two slices that overlap by a rounding step are made to follow each other, a slice
    inside another stays inside it, and a real overlap is cut to end with its parent."""
    first = chrome.Slice(0.0, 10.001, "a", "step")
    second = chrome.Slice(10.0, 5.0, "b", "step")
    inner = chrome.Slice(11.0, 1.0, "c", "block")
    kept = chrome.nest([second, inner, first])
    assert [(s.name, s.ts, s.dur) for s in kept] == [("a", 0.0, 10.0), ("b", 10.0, 5.0),
                                                     ("c", 11.0, 1.0)]
    overlapping = chrome.Slice(12.0, 6.0, "d", "step")  # a real overlap: cut to fit
    assert [(s.name, s.dur) for s in chrome.nest([first, second, overlapping])][-1] == \
        ("d", 3.0)
    check_trace_rules({"displayTimeUnit": "ms", "traceEvents": [
        {"ph": "M", "pid": 1, "tid": 0, "name": "process_name", "args": {"name": "p"}},
        {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "t"}},
        *({"ph": "X", "pid": 1, "tid": 1, "ts": s.ts, "dur": s.dur, "name": s.name}
          for s in kept)]})
