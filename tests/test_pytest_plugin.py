"""The pytest plugin, exercised through real inner pytest runs (``pytester``).

Blocks are real: a test module blocks its loop with ``time.sleep`` (a probed call) or a
CPU loop, and the plugin must name the site. Timings are generous (the machine may be
busy): blocks last 150 ms and budgets are 60 ms.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from looptrace import Session

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

BLOCKING = """
import asyncio
import time

import pytest


def legacy_read():
    time.sleep(0.15)  # the blocking line


@pytest.mark.asyncio
async def test_blocks():
    await asyncio.sleep(0)
    legacy_read()


@pytest.mark.asyncio
async def test_fast():
    await asyncio.sleep(0.01)
"""

SLEEP_LINE = next(n for n, line in enumerate(BLOCKING.strip().splitlines(), start=1)
                  if "the blocking line" in line)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def _json(path: object) -> dict[str, object]:
    with open(str(path), encoding="utf-8") as f:
        data: dict[str, object] = json.load(f)
    return data


def test_blocking_test_fails_and_names_the_block(project: pytest.Pytester) -> None:
    """With a budget, a test whose loop blocked longer fails; the message names the site
    (file:line and function), the call, the duration and the task."""
    project.makepyfile(test_app=BLOCKING)
    result = project.runpytest("--looptrace-max-block-ms", "60")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*looptrace: the event loop was blocked longer than the 60 ms budget (1 block):",
        "*1. * ms  time.sleep",
        f"*at test_app.py:{SLEEP_LINE} in legacy_read",
        "*task Task-* (test_blocks)",
        '*to let it pass: @pytest.mark.looptrace(allow=[[]"time.sleep"[]]) (or the site: *',
    ])
    assert "test_fast" not in "\n".join(line for line in result.outlines if "FAILED" in line)


def test_same_test_passes_without_looptrace(project: pytest.Pytester) -> None:
    """Without --looptrace (nor marker, nor fixture) nothing is recorded and the blocking
    test passes; -p no:looptrace removes the plugin and its options."""
    project.makepyfile(test_app=BLOCKING)
    project.runpytest().assert_outcomes(passed=2)
    result = project.runpytest("-p", "no:looptrace", "--looptrace")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --looptrace*"])


def test_ini_options(project: pytest.Pytester) -> None:
    """looptrace_max_block_ms in the ini file sets the budget like the option; a value that
    is not a number is a usage error naming the setting."""
    project.makeini(INI + "looptrace_max_block_ms = 60\n")
    project.makepyfile(test_app=BLOCKING)
    project.runpytest().assert_outcomes(passed=1, failed=1)
    project.makeini(INI + "looptrace_max_block_ms = fast\n")
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*looptrace_max_block_ms (ini): 'fast' is not a number*"])


def test_marker_sets_budget_for_one_test_with_strict_markers(project: pytest.Pytester) -> None:
    """The registered marker turns looptrace on for its test alone, with its own budget,
    under --strict-markers; unmarked tests are not recorded."""
    project.makepyfile(test_app="""
        import asyncio, time
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.looptrace(max_block_ms=60)
        async def test_guarded():
            time.sleep(0.15)

        @pytest.mark.asyncio
        async def test_unguarded():
            time.sleep(0.15)

        @pytest.mark.asyncio
        @pytest.mark.looptrace(max_block_ms=500)
        async def test_generous():
            time.sleep(0.15)
    """)
    result = project.runpytest("--strict-markers", "-rf")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_app.py::test_guarded - Failed: looptrace*"])
    result.stdout.fnmatch_lines(["*recorded 2 tests; 2 blocks of the loop in 2 tests; "
                                 "1 over budget"])


def test_marker_allow_exempts_calls_sites_and_functions(project: pytest.Pytester) -> None:
    """allow= lets a named call, a file:line site or a function pass; a rule that does not
    match lets nothing pass; every exemption used is listed in the terminal summary and in
    the JSON report (rule, count, test)."""
    project.makepyfile(test_app="""
        import asyncio, time
        import pytest

        def legacy_read():
            time.sleep(0.15)

        def crunch():
            deadline = time.perf_counter() + 0.15
            while time.perf_counter() < deadline:
                pass

        @pytest.mark.asyncio
        @pytest.mark.looptrace(allow=["time.sleep"])
        async def test_by_call():
            legacy_read()

        @pytest.mark.asyncio
        @pytest.mark.looptrace(allow=["test_app.py:5"])
        async def test_by_site():
            legacy_read()

        @pytest.mark.asyncio
        @pytest.mark.looptrace(allow="crunch")
        async def test_by_function():
            crunch()

        @pytest.mark.asyncio
        @pytest.mark.looptrace(allow=["http.client.*"])
        async def test_not_matching():
            legacy_read()
    """)
    report = project.path / "out" / "run.json"
    result = project.runpytest("--looptrace-max-block-ms", "60", "--looptrace-report",
                               str(report))
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*exemptions used (allow=):",
        "*'time.sleep': 1 block  [[]test_app.py::test_by_call[]]",
        "*'test_app.py:5': 1 block  [[]test_app.py::test_by_site[]]",
        "*'crunch': 1 block  [[]test_app.py::test_by_function[]]",
    ])
    exemptions = _json(report)["exemptions"]
    assert exemptions == [
        {"rule": "time.sleep", "count": 1, "test": "test_app.py::test_by_call"},
        {"rule": "test_app.py:5", "count": 1, "test": "test_app.py::test_by_site"},
        {"rule": "crunch", "count": 1, "test": "test_app.py::test_by_function"},
    ]


def test_marker_with_bad_arguments_is_a_clear_error(project: pytest.Pytester) -> None:
    """A positional budget, an unknown argument or a non-string rule errors that test with
    one line saying what the marker takes."""
    project.makepyfile(test_app="""
        import pytest

        @pytest.mark.looptrace(50)
        def test_positional():
            pass

        @pytest.mark.looptrace(max_ms=50)
        def test_unknown():
            pass

        @pytest.mark.looptrace(allow=[42])
        def test_rule():
            pass
    """)
    result = project.runpytest()
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines([
        "*@pytest.mark.looptrace takes keyword arguments only*",
        "*unknown argument 'max_ms' (it takes max_block_ms and allow)*",
        "*allow= entries must be non-empty strings*",
    ])


def test_fixture_gives_the_recording(project: pytest.Pytester,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The looptrace_report fixture turns recording on and shows the test its blocks as
    they are found, with the site of each (threshold from LOOPTRACE_THRESHOLD_MS)."""
    monkeypatch.setenv("LOOPTRACE_THRESHOLD_MS", "60")
    project.makepyfile(test_app="""
        import asyncio, time
        import pytest

        def legacy_read():
            time.sleep(0.15)

        @pytest.mark.asyncio
        async def test_sees_its_block(looptrace_report):
            legacy_read()
            await asyncio.sleep(0)
            (block,) = looptrace_report.blocks
            assert block.call == "time.sleep"
            assert block.site.function == "legacy_read" and block.site.line == 5
            assert 140 <= block.duration_ms < 2000
            assert looptrace_report.max_block_ms == block.duration_ms
            assert looptrace_report.budget_ms is None
            assert looptrace_report.hotspots[0].count == 1

        def test_plain_code_has_no_blocks(looptrace_report):
            assert looptrace_report.blocks == ()
    """)
    project.runpytest().assert_outcomes(passed=2)


LOOP_SCOPES = """
import asyncio
import time

import pytest


def legacy_read():
    time.sleep(0.15)


@pytest.mark.asyncio(loop_scope="{scope}")
async def test_blocks_{scope}():
    legacy_read()


@pytest.mark.asyncio(loop_scope="{scope}")
async def test_fast_{scope}():
    await asyncio.sleep(0.005)


@pytest.mark.asyncio(loop_scope="{scope}")
async def test_blocks_again_{scope}():
    await asyncio.sleep(0)
    legacy_read()
"""

PRISTINE_CONFTEST = """
import pytest
import looptrace


@pytest.fixture(autouse=True)
def nothing_installed_outside_the_call():
    assert not looptrace.is_installed()
    yield
    assert not looptrace.is_installed()
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_pytest_asyncio_loop_scopes(project: pytest.Pytester, mode: str) -> None:
    """In strict and auto mode, with function, class, module, package and session loop
    scopes, every blocking test fails and every fast one passes; looptrace is installed
    only while a test function runs (fixtures see it uninstalled)."""
    project.makeconftest(PRISTINE_CONFTEST)
    for scope in ("function", "module", "package", "session"):
        source = LOOP_SCOPES.format(scope=scope)
        if mode == "auto":
            source = source.replace(f'@pytest.mark.asyncio(loop_scope="{scope}")\n', "")
            source += f'\npytestmark = pytest.mark.asyncio(loop_scope="{scope}")\n'
        project.makepyfile(**{f"test_{scope}": source})
    project.makepyfile(test_class="""
        import asyncio, time
        import pytest

        @pytest.mark.asyncio(loop_scope="class")
        class TestShared:
            async def test_blocks_class(self):
                time.sleep(0.15)

            async def test_fast_class(self):
                await asyncio.sleep(0.005)
    """)
    result = project.runpytest("--looptrace-max-block-ms", "60", "-o", f"asyncio_mode={mode}",
                               "-p", "no:randomly")
    result.assert_outcomes(passed=5, failed=9)
    failed = {line.split(" ")[1] for line in result.outlines if line.startswith("FAILED")}
    assert all("test_blocks" in nodeid for nodeid in failed), failed


def test_user_loop_factories(project: pytest.Pytester) -> None:
    """Loops made by the user's pytest_asyncio_loop_factories hook are recorded: a plain
    SelectorEventLoop subclass and uvloop (no Python selector: the heartbeat finds the
    block), both fail with the site named."""
    project.makeconftest("""
        import asyncio
        import uvloop

        class AppLoop(asyncio.SelectorEventLoop):
            pass

        def pytest_asyncio_loop_factories(config, item):
            return {"app": AppLoop, "uvloop": uvloop.new_event_loop}
    """)
    project.makepyfile(test_app=BLOCKING)
    result = project.runpytest("--looptrace-max-block-ms", "60", "-rf")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines_random([
        "FAILED test_app.py::test_blocks[[]app[]] - Failed: looptrace*",
        "FAILED test_app.py::test_blocks[[]uvloop[]] - Failed: looptrace*",
    ])
    # Count in the FAILURES section only: on CI (the CI variable set) pytest repeats the whole
    # message in the short summary.
    failures = result.stdout.str().partition("short test summary info")[0]
    assert failures.count(f"     at test_app.py:{SLEEP_LINE} in legacy_read\n") == 2


def test_without_pytest_asyncio(project: pytest.Pytester) -> None:
    """With pytest-asyncio disabled, a plain test that runs its own loop with asyncio.run is
    recorded and judged the same way."""
    project.makeini("[pytest]\n")
    project.makepyfile(test_app="""
        import asyncio, time

        def legacy_read():
            time.sleep(0.15)

        async def handler():
            legacy_read()

        def test_runs_its_own_loop():
            asyncio.run(handler())

        def test_runs_a_fast_loop():
            asyncio.run(asyncio.sleep(0.005))
    """)
    result = project.runpytest("-p", "no:asyncio", "--looptrace-max-block-ms", "60")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*at test_app.py:4 in legacy_read", "*task Task-* (handler)"])


def test_report_files(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """--looptrace-report writes the run's JSON report (readable by looptrace.Session.load,
    one loop per recorded test, blocks at one site in several tests summed into one
    hotspot) and the HTML report beside it."""
    monkeypatch.setenv("LOOPTRACE_THRESHOLD_MS", "60")
    project.makepyfile(test_app=BLOCKING + textwrap.dedent("""

        @pytest.mark.asyncio
        async def test_blocks_too():
            legacy_read()
    """))
    report = project.path / "reports" / "looptrace.json"
    result = project.runpytest("--looptrace", "--looptrace-report", str(report))
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([f"report: {report}, {report.with_suffix('.html')}"])
    session = Session.load(report)
    assert len(session.loops) == 3
    assert [b.loop for b in session.blocks] == [1, 3]  # renumbered: one loop per test
    (hotspot,) = session.hotspots  # the same site in two tests: one hotspot
    assert hotspot.count == 2 and hotspot.total_ms == pytest.approx(
        sum(b.duration_ms for b in session.blocks), abs=0.01)
    assert hotspot.call == "time.sleep" and hotspot.site is not None
    assert (hotspot.site.function, hotspot.site.line) == ("legacy_read", SLEEP_LINE)
    html = report.with_suffix(".html").read_text(encoding="utf-8")
    assert f"test_app.py</code>:{SLEEP_LINE}" in html or f"test_app.py:{SLEEP_LINE}" in html


def test_records_inside_an_existing_installation(project: pytest.Pytester) -> None:
    """When the suite installs looptrace itself, the plugin leaves that installation alone
    and judges each test by the blocks that started during it."""
    project.makeconftest("""
        import pytest
        import looptrace

        @pytest.fixture(autouse=True, scope="session")
        def traced():
            looptrace.install(threshold_ms=20)
            yield
            looptrace.uninstall()
    """)
    project.makepyfile(test_app=BLOCKING + textwrap.dedent("""

        @pytest.mark.asyncio
        async def test_after_the_block():
            import looptrace
            assert looptrace.is_installed()
    """))
    result = project.runpytest("--looptrace-max-block-ms", "60")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([f"*at test_app.py:{SLEEP_LINE} in legacy_read"])


STARVED = """
import asyncio, os, subprocess, sys, time
import pytest


def work(cpu_ms):
    end = time.thread_time() + cpu_ms / 1000
    while time.thread_time() < end:
        pass


@pytest.fixture
def one_busy_cpu():
    cpu = min(os.sched_getaffinity(0))
    competitor = subprocess.Popen(
        [sys.executable, "-c", "print('spinning', flush=True)\\nwhile True: pass"],
        stdout=subprocess.PIPE, text=True)
    os.sched_setaffinity(competitor.pid, {cpu})
    competitor.stdout.readline()
    time.sleep(0.1)
    yield cpu
    competitor.kill()
    competitor.wait()


@pytest.mark.asyncio
async def test_starved(one_busy_cpu):
    os.sched_setaffinity(0, {one_busy_cpu})  # the loop thread only (Linux)
    os.setpriority(os.PRIO_PROCESS, 0, 19)  # the loop thread only (Linux)
    for _ in range(4):
        await asyncio.sleep(0.02)
        work(15)
"""


def test_a_block_the_busy_machine_made_does_not_fail_the_test(
        project: pytest.Pytester) -> None:
    """A loop thread that ran 15 ms of work but waited hundreds for a CPU (pinned beside a
    busy process at nice 19) is blocked by the machine, not by the test's code: those
    blocks are listed in the summary and do not count against the budget; any block the
    code made itself still does."""
    project.makepyfile(test_starved=STARVED)
    report = project.path / "run.json"
    # A subprocess: the test pins and lowers its own thread.
    result = project.runpytest_subprocess("--looptrace-max-block-ms", "50",
                                          "--looptrace-report", str(report))
    blocks = _json(report)["blocks"]
    assert isinstance(blocks, list)
    over = [b for b in blocks if b["duration_ms"] > 50]
    starved = [b for b in over if b["call"] == "cpu.run_queue"]
    assert starved, over
    result.stdout.fnmatch_lines([f"*not counted against the budget: {len(starved)} block*"
                                 "of a busy machine*"])
    own = [b for b in over if b["call"] != "cpu.run_queue"]
    result.assert_outcomes(passed=0 if own else 1, failed=1 if own else 0)
    assert "cpu.run_queue" not in "\n".join(
        line for line in result.stdout.lines if line.startswith(("  1.", "  2.", "  3.")))
