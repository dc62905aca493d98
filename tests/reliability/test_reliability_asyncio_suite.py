"""CPython's own asyncio test suite passes with looptrace installed at start-up, exactly as
it passes without (``scripts/asyncio-suite.py``; see "CPython's asyncio test suite" in
``docs/how-it-works.md``)."""

from __future__ import annotations

import sys
from pathlib import Path

from reliability_helpers import REPO, run_python


def test_cpythons_asyncio_suite_ends_the_same_with_looptrace(tmp_path: Path) -> None:
    """Every test case of `python -m test test_asyncio` ends as without looptrace (a
    difference is run again alone before it counts), no traced process reports a fault
    inside looptrace, and the traced processes did record loops. About 2-4 minutes."""
    result = run_python([str(REPO / "scripts" / "asyncio-suite.py"), "--python", sys.executable,
                         "--work", str(tmp_path)], timeout=1500)
    print(result.stdout)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "0 differ" in result.stdout
