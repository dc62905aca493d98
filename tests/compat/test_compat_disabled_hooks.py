"""A hook that switched itself off (an error inside it, caught so the program goes on) is
said where the user looks: the pytest terminal summary, the ``looptrace run`` summary, and
one warning through the ``looptrace`` logger; not only in the JSON report's ``faults``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# An error inside the step hook's slow path, as blockbuster's BlockingError was.
_INJECT = """\
from looptrace import _seams

def _broken(callback):
    raise KeyError("injected")

_seams.replace("steps-internal", _broken)
"""

_BLOCKING_TEST = """\
import asyncio
import time


async def blocks():
    await asyncio.sleep(0)
    time.sleep(0.15)


def test_blocks():
    asyncio.run(blocks())
"""


def test_the_pytest_summary_says_a_hook_was_switched_off(pytester: pytest.Pytester) -> None:
    """Recorded by the plugin (``--looptrace``): the looptrace section of the terminal
    summary starts with the warning, naming the hook, the error and the first test."""
    pytester.makeconftest(_INJECT)
    pytester.makepyfile(test_x=_BLOCKING_TEST)
    result = pytester.runpytest_subprocess("--looptrace", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([
        r"=+ looptrace =+",
        r"WARNING: looptrace switched its steps hook off after 1 error inside it in 1 test "
        r"\(first test_x.py::test_blocks\) \(KeyError: 'injected'\); what that hook "
        r"measures is missing from then on",
        r"recorded 1 test; .*",
    ])


def test_the_pytest_summary_says_it_for_a_process_wide_installation(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed in ``sitecustomize`` (the plugin records nothing): the terminal summary
    still says the hook went off, where before only a report file could."""
    site = pytester.mkdir("site")
    (site / "sitecustomize.py").write_text(_INJECT + "import looptrace\nlooptrace.install()\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    pytester.makepyfile(test_x=_BLOCKING_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([
        r"=+ looptrace =+",
        r"WARNING: looptrace switched its steps hook off after 1 error inside it \(installed "
        r"outside the pytest plugin\) \(KeyError: 'injected'\);.*",
    ])
    assert "recorded" not in result.stdout.str()  # no per-test summary: none was recorded


def test_looptrace_run_says_it_first_and_logs_one_warning(tmp_path: Path) -> None:
    """``looptrace run``: the summary says it right under its first line, and the
    ``looptrace`` logger says it once (Python's last-resort handler prints it on stderr
    when the program configured no logging), however many steps hit the broken hook."""
    program = tmp_path / "app.py"
    program.write_text(textwrap.dedent("""\
        import asyncio
        import time


        async def main():
            for _ in range(3):
                await asyncio.sleep(0)
                time.sleep(0.12)


        asyncio.run(main())
        """))
    runner = _INJECT + "import sys\nfrom looptrace.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    result = subprocess.run([sys.executable, "-c", runner, "run", str(program)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    logged = [n for n, line in enumerate(lines)
              if line == "looptrace: the steps hook failed and is now disabled (the program "
                         "is not affected): KeyError: 'injected'"]
    assert len(logged) == 1, result.stderr
    summary = next(n for n, line in enumerate(lines) if line.startswith("looptrace: ")
                   and " recorded, threshold " in line)
    assert lines[summary + 1].startswith(
        "WARNING: looptrace switched its steps hook off after 1 error inside it "
        "(KeyError: 'injected')"), result.stderr
