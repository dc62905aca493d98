"""The report document: schema, fields, round trip, and the terminal summary."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

import looptrace
from looptrace import Session
from looptrace.exporters import text
from looptrace.session import ReportError


def recorded_session(mode: str = "default") -> Session:
    async def worker() -> None:
        for _ in range(3):
            await asyncio.sleep(0.005)

    async def main() -> None:
        await asyncio.gather(worker(), asyncio.create_task(worker(), name="named"))
        time.sleep(0.07)
        await asyncio.sleep(0)

    with looptrace.installed(threshold_ms=40, mode=mode) as tracing:
        asyncio.run(main())
    return tracing.snapshot()


@pytest.mark.parametrize("mode", ["default", "full"])
def test_round_trip_through_json_is_exact(mode: str, tmp_path: Path) -> None:
    """A report saved and loaded again is equal to the original, in both modes."""
    session = recorded_session(mode)
    path = tmp_path / "r.json"
    session.save(path)
    assert Session.load(path) == session
    assert Session.from_json(session.to_json(indent=None)) == session


def test_the_document_has_the_documented_fields() -> None:
    """The fields of docs/report.md (DESIGN §4) are all there, with their types."""
    data = json.loads(recorded_session().to_json())
    assert next(iter(data)) == "schema" and data["schema"] == "looptrace.report/1"
    for key in ("looptrace_version", "python", "argv", "threshold_ms", "wall_ms", "loops",
                "hotspots", "blocks", "tasks", "dropped", "faults"):
        assert key in data, key
    (loop,) = data["loops"]
    for key in ("id", "thread", "kind", "coverage", "iterations", "select_calls",
                "io_wait_ms", "busy_ms", "utilization", "lag_ms", "steps"):
        assert key in loop, key
    assert set(loop["lag_ms"]) >= {"p50", "p99", "max"}
    (hotspot,) = data["hotspots"]
    for key in ("kind", "call", "site", "count", "total_ms", "max_ms", "p50_ms", "thread",
                "task", "stack", "advice"):
        assert key in hotspot, key
    assert set(hotspot["site"]) == {"file", "line", "function"}
    assert all(set(frame) == {"file", "line", "function"} for frame in hotspot["stack"])
    assert hotspot["stack"][-1] == hotspot["site"]
    assert isinstance(data["tasks"]["rows"], list)


def test_reports_hold_no_values_from_the_program() -> None:
    """A report carries code locations and names only: no local variables or arguments."""
    secret = "s3cr3t-" + "value"

    async def main(password: str) -> None:
        await asyncio.sleep(0)
        time.sleep(0.06)
        assert password

    with looptrace.installed(threshold_ms=40) as tracing:
        asyncio.run(main(secret))
    assert secret not in tracing.snapshot().to_json()


def test_a_foreign_schema_is_refused_with_a_clear_message() -> None:
    """A document of another schema is named as such."""
    data = recorded_session().to_dict()
    data["schema"] = "looptrace.report/2"
    with pytest.raises(ReportError, match=r"looptrace\.report/2"):
        Session.from_dict(data)
    del data["schema"]
    with pytest.raises(ReportError, match="not a looptrace report"):
        Session.from_dict(data)


def test_a_wrong_field_type_names_its_path() -> None:
    """A malformed field is reported with its path in the document."""
    data = recorded_session().to_dict()
    data["hotspots"][0]["count"] = "three"
    with pytest.raises(ReportError, match=r"report\.hotspots\[0\]\.count"):
        Session.from_dict(data)


def test_summary_lists_hotspots_with_site_call_and_fix_then_loops() -> None:
    """The terminal summary: each hotspot with its site, call, count and advice; the loop's
    utilisation and lag."""
    summary = text.render(recorded_session())
    assert "Hotspots (by total time)" in summary
    assert "blocking-call  time.sleep" in summary
    assert "test_report_document.py:" in summary
    assert " in recorded_session.<locals>.main" in summary
    assert "fix: use `await asyncio.sleep(...)`" in summary
    assert "utilisation" in summary and "lag p50" in summary


def test_summary_of_a_clean_program_says_so() -> None:
    """No block: the summary says nothing crossed the threshold."""

    async def main() -> None:
        await asyncio.sleep(0.01)

    with looptrace.installed(threshold_ms=40) as tracing:
        asyncio.run(main())
    summary = text.render(tracing.snapshot())
    assert "No block of the loop at or over 40 ms" in summary
    assert "Hotspots" not in summary
