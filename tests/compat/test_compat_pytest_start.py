"""looptrace imported before pytest starts (``sitecustomize``, a ``.pth`` file) changes no
outcome of a suite that turns warnings into errors, nor the warnings a suite counts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_INI = """\
[pytest]
filterwarnings = error
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
addopts = -p pytester -p no:cacheprovider
"""

_SUITE = '''\
import asyncio

import pytest

import looptrace


def test_sitecustomize_installed_looptrace():
    """The run really is the process-wide case: looptrace was installed before pytest."""
    assert looptrace.is_installed()


@pytest.mark.asyncio
async def test_a_loop_runs_and_is_recorded():
    await asyncio.sleep(0)
    assert looptrace.snapshot().loops


def test_an_inner_run_counts_no_warning(pytester):
    """As pytest-asyncio's own tests do: a pytest run inside this process (a new Config,
    which marks the plugin distributions for rewriting again) counts its warnings."""
    pytester.makeini(INI)
    pytester.makepyfile("def test_ok():\\n    pass\\n")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1, warnings=0)


def test_a_pytest_subprocess_starts(pytester):
    """A pytest child process inherits the sitecustomize and the warnings-as-errors."""
    pytester.makeini(INI)
    pytester.makepyfile("def test_ok():\\n    pass\\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, warnings=0)
'''


def test_pytest_with_filterwarnings_error_starts_under_a_sitecustomize(tmp_path: Path) -> None:
    """A real pytest process, warnings as errors, ``import looptrace; looptrace.install()``
    in ``sitecustomize``: it starts (no PytestAssertRewriteWarning), every test passes,
    and inner pytest runs (in process and in a subprocess) count no warning."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import looptrace\nlooptrace.install()\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(_INI)
    (project / "test_suite.py").write_text(f"INI = {_INI!r}\n" + textwrap.dedent(_SUITE))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOOPTRACE_", "PYTEST_")) and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert "PytestAssertRewriteWarning" not in output, output
    assert result.returncode == 0, output
    assert "4 passed" in output, output
    assert "warning" not in output.splitlines()[-1], output
