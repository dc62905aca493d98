"""pytest plugin: fail a test that blocked its event loop, and say where.

Loaded through the ``pytest11`` entry point (``-p no:looptrace`` turns it off).

- ``--looptrace`` (ini ``looptrace = true``): record every test;
- ``--looptrace-max-block-ms N`` (ini ``looptrace_max_block_ms``): also fail a test in
  which the loop blocked longer than N ms, naming each block (site, call, duration, task);
- ``@pytest.mark.looptrace(max_block_ms=N, allow=[...])``: record one test, with its own
  budget; ``allow`` lets named calls or sites pass (each use is listed in the report);
- the ``looptrace_report`` fixture: the test's recording, to assert on;
- ``--looptrace-report PATH`` (ini ``looptrace_report``): write the run's JSON report, and
  the HTML report beside it.

Each test is recorded on its own: looptrace is installed just before the test function
runs and uninstalled right after, so nothing stays patched between tests, and every loop
is found whoever made it (pytest-asyncio in strict or auto mode, any loop scope, loop
factories from ``pytest_asyncio_loop_factories``, ``asyncio.run`` in a plain test, loops
in threads). Fixtures run outside the recording.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from . import _api
from ._combine import Combined, hotspots_from_blocks
from ._config import resolve
from ._files import write_text
from ._pytest_allow import AllowRule, first_match, parse_rules
from .events import CPU_STARVED
from .exporters import html
from .exporters.text import disabled_hook_line, where
from .session import BlockEvent, Exemption, FaultSummary, Hotspot, Session

_MARKER = ("looptrace(max_block_ms=None, allow=()): record this test with looptrace; fail it "
           "if the event loop blocked longer than max_block_ms; allow= lets named calls "
           "('time.sleep'), functions or sites ('app/db.py:42') pass")
_TOP_BLOCKS = 10


@dataclass(frozen=True, slots=True)
class Settings:
    """The run's settings, from the command line and the ini file."""

    record_all: bool
    max_block_ms: float | None
    report_path: str | None
    threshold_ms: float
    max_blocks: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do for one test."""

    max_block_ms: float | None
    allow: tuple[AllowRule, ...]
    threshold_ms: float


def _budget(text: str, where_from: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"{where_from}: {text!r} is not a number of milliseconds") \
            from None
    if not 0 < value < float("inf"):
        raise pytest.UsageError(f"{where_from}: must be a positive number of milliseconds, "
                                f"got {text!r}")
    return value


def _max_block_option(text: str) -> float:
    try:
        return _budget(text, "--looptrace-max-block-ms")
    except pytest.UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("looptrace", "looptrace: event-loop blocks")
    group.addoption("--looptrace", action="store_true", default=False, dest="looptrace",
                    help="record the event loops of every test with looptrace")
    group.addoption("--looptrace-max-block-ms", type=_max_block_option, metavar="N",
                    default=None, dest="looptrace_max_block_ms",
                    help="fail a test in which the event loop blocked longer than N ms "
                         "(implies --looptrace)")
    group.addoption("--looptrace-report", metavar="PATH", default=None,
                    dest="looptrace_report",
                    help="write the run's looptrace report: JSON to PATH, HTML beside it")
    parser.addini("looptrace", type="bool", default=False,
                  help="record the event loops of every test with looptrace")
    parser.addini("looptrace_max_block_ms", default="",
                  help="fail a test in which the event loop blocked longer than this many ms")
    parser.addini("looptrace_report", default="",
                  help="write the run's looptrace report (JSON) here, and HTML beside it")


_SETTINGS = pytest.StashKey["_Run"]()
_PLAN = pytest.StashKey["Plan | None"]()
_RECORDING = pytest.StashKey["_Recording"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)
    option = config.getoption("looptrace_max_block_ms")
    if option is None:
        ini = str(config.getini("looptrace_max_block_ms") or "").strip()
        option = _budget(ini, "looptrace_max_block_ms (ini)") if ini else None
    report = config.getoption("looptrace_report") or \
        str(config.getini("looptrace_report") or "").strip() or None
    try:
        options = resolve({})  # LOOPTRACE_* variables, checked once for the whole run
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    settings = Settings(
        record_all=bool(config.getoption("looptrace") or config.getini("looptrace")
                        or option is not None),
        max_block_ms=option, report_path=report, threshold_ms=options.threshold_ms,
        max_blocks=options.max_blocks)
    config.stash[_SETTINGS] = _Run(settings)


# -- one test


def _plan(item: pytest.Item, settings: Settings) -> Plan | None:
    markers = list(item.iter_markers("looptrace"))
    wanted = settings.record_all or bool(markers) or \
        "looptrace_report" in getattr(item, "fixturenames", ())
    if not wanted:
        return None
    budget = settings.max_block_ms
    allow: list[AllowRule] = []
    seen_budget = False
    for marker in markers:  # the closest marker first
        where_from = f"{item.nodeid}: @pytest.mark.looptrace"
        if marker.args:
            raise TypeError(f"{where_from} takes keyword arguments only "
                            "(max_block_ms=..., allow=[...])")
        unknown = sorted(set(marker.kwargs) - {"max_block_ms", "allow"})
        if unknown:
            raise TypeError(f"{where_from}: unknown argument {unknown[0]!r} "
                            "(it takes max_block_ms and allow)")
        if "max_block_ms" in marker.kwargs and not seen_budget:
            seen_budget = True
            value = marker.kwargs["max_block_ms"]
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, int | float) or not value > 0):
                raise TypeError(f"{where_from}: max_block_ms must be a positive number of "
                                f"milliseconds or None, got {value!r}")
            budget = None if value is None else float(value)
        if "allow" in marker.kwargs:
            allow.extend(parse_rules(marker.kwargs["allow"], where=where_from))
    threshold = settings.threshold_ms if budget is None else min(settings.threshold_ms, budget)
    return Plan(budget, tuple(allow), threshold)


class _Recording:
    """looptrace around one test call: its own installation, or a slice of one that was
    already there (a conftest that installs looptrace itself)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.installation: int | None = None
        self.since_unix_ns = 0
        self.session: Session | None = None

    def start(self) -> None:
        if _api.is_installed():
            self.since_unix_ns = time.time_ns()
            return
        _api.install(threshold_ms=self.plan.threshold_ms)
        self.installation = _api.installation_id()

    def live(self) -> Session:
        if self.session is not None:
            return self.session
        return self._slice(_api.snapshot())

    def stop(self) -> Session:
        if self.installation is not None:
            # If the test uninstalled it itself, its final report is the last one.
            session = _api.uninstall() if _api.installation_id() == self.installation else None
            self.session = session if session is not None else _api.snapshot()
        else:
            self.session = self._slice(_api.snapshot())
        return self.session

    def _slice(self, session: Session) -> Session:
        if self.installation is not None:
            return session
        blocks = tuple(b for b in session.blocks if b.start_unix_ns >= self.since_unix_ns)
        # Its faults are the outer installation's: the terminal summary says them once.
        return replace(session, loops=(), blocks=blocks, hotspots=hotspots_from_blocks(blocks),
                       tasks=(), timeline=None, faults=())


class LooptraceReport:
    """What the ``looptrace_report`` fixture gives a test: its recording so far (inside
    the test) or in full (after it, e.g. in a finalizer)."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item

    @property
    def session(self) -> Session:
        """The test's :class:`~looptrace.Session` (the report)."""
        recording = self._item.stash.get(_RECORDING, None)
        if recording is None:
            raise RuntimeError("looptrace_report: nothing recorded yet; the recording starts "
                               "when the test function is called (request the fixture as an "
                               "argument: getfixturevalue() inside the test comes too late)")
        return recording.live()

    @property
    def blocks(self) -> tuple[BlockEvent, ...]:
        """Every block of the loop at or over the threshold, in time order."""
        return self.session.blocks

    @property
    def hotspots(self) -> tuple[Hotspot, ...]:
        return self.session.hotspots

    @property
    def max_block_ms(self) -> float:
        """The longest block so far (0.0 when there was none)."""
        return max((b.duration_ms for b in self.blocks), default=0.0)

    @property
    def budget_ms(self) -> float | None:
        """The test's budget (``--looptrace-max-block-ms`` or the marker), if any."""
        plan = self._item.stash.get(_PLAN, None)
        return plan.max_block_ms if plan is not None else None

    def blocks_over(self, ms: float) -> tuple[BlockEvent, ...]:
        return tuple(b for b in self.blocks if b.duration_ms > ms)


@pytest.fixture
def looptrace_report(request: pytest.FixtureRequest) -> LooptraceReport:
    """The looptrace recording of this test (requesting it turns looptrace on for it)."""
    return LooptraceReport(request.node)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    run = item.config.stash.get(_SETTINGS, None)
    if run is None:
        return
    try:
        item.stash[_PLAN] = _plan(item, run.settings)
    except TypeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    run = item.config.stash.get(_SETTINGS, None)
    plan = item.stash.get(_PLAN, None)
    if run is None or plan is None:
        return (yield)
    recording = _Recording(plan)
    item.stash[_RECORDING] = recording
    recording.start()
    try:
        result = yield
    except BaseException:
        run.judge(item, recording.stop(), plan)
        _add_section(item, recording)
        raise
    over = run.judge(item, recording.stop(), plan)
    if over:
        assert plan.max_block_ms is not None
        pytest.fail(failure_text(over, plan.max_block_ms), pytrace=False)
    _add_section(item, recording)
    return result


def _add_section(item: pytest.Item, recording: _Recording) -> None:
    """The test's blocks, shown with its failure (or with ``-rP`` when it passed)."""
    blocks = recording.session.blocks if recording.session is not None else ()
    if blocks:
        item.add_report_section("call", "looptrace", "\n".join(
            _block_line(n, b) for n, b in enumerate(blocks, start=1)))


def _block_line(number: int, block: BlockEvent) -> str:
    call = block.call or "slow step (no blocking function named)"
    owner = block.task or block.callback or "?"
    if block.task and block.coroutine:
        owner += f" ({block.coroutine})"
    return (f"  {number}. {block.duration_ms:.1f} ms  {call}\n"
            f"     at {where(block.site)}\n"
            f"     task {owner}")


def failure_text(blocks: list[BlockEvent], budget_ms: float) -> str:
    """The failure message: every block over the budget, with site, call, duration, task."""
    count = len(blocks)
    lines = [f"looptrace: the event loop was blocked longer than the {budget_ms:g} ms budget "
             f"({count} block{'s' if count != 1 else ''}):"]
    lines += [_block_line(n, b) for n, b in enumerate(blocks, start=1)]
    first = blocks[0]
    site = (f"{os.path.basename(first.site.file)}:{first.site.line}"
            if first.site is not None else None)
    rules = [f'"{rule}"' for rule in (first.call, site) if rule is not None]
    if rules:
        lines.append(f"to let it pass: @pytest.mark.looptrace(allow=[{rules[0]}])"
                     + (f" (or the site: allow=[{rules[1]}])" if len(rules) > 1 else ""))
    return "\n".join(lines)


# -- the run


class _Run:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.combined = Combined(max_blocks=settings.max_blocks)
        self.tests = 0
        self.tests_with_blocks = 0
        self.over_budget = 0
        self.starved = 0
        self.top_starved: list[tuple[float, str, BlockEvent]] = []
        self.blocks = 0
        self.top: list[tuple[float, str, BlockEvent]] = []
        self.exemptions: list[Exemption] = []
        self.written: list[str] = []
        # hook -> (its first fault, the first test it hit), and in how many tests
        self.faults: dict[str, tuple[FaultSummary, str]] = {}
        self.tests_with_fault: Counter[str] = Counter()

    def judge(self, item: pytest.Item, session: Session, plan: Plan) -> list[BlockEvent]:
        """Count the test's blocks and exemptions, attach them to its report, and return
        the blocks over its budget that no rule allowed."""
        used: Counter[str] = Counter()
        over = []
        for block in session.blocks:
            if plan.max_block_ms is None or block.duration_ms <= plan.max_block_ms:
                continue
            if block.call == CPU_STARVED:
                # The thread ran on a CPU for less than the threshold: a busy machine made
                # the block, not the test's code; failing for it makes a flaky suite.
                self.starved += 1
                self.top_starved = sorted([*self.top_starved, (block.duration_ms,
                                           item.nodeid, block)], key=lambda t: -t[0])[:5]
                continue
            rule = first_match(plan.allow, block)
            if rule is None:
                over.append(block)
            else:
                used[rule.text] += 1
        exemptions = tuple(Exemption(rule, count, item.nodeid) for rule, count in used.items())
        session = session.with_exemptions(exemptions)
        recording = item.stash.get(_RECORDING, None)
        if recording is not None:
            recording.session = session
        self.tests += 1
        self.blocks += len(session.blocks)
        self.tests_with_blocks += bool(session.blocks)
        self.over_budget += bool(over)
        self.exemptions.extend(exemptions)
        for fault in session.faults:
            self.faults.setdefault(fault.hook, (fault, item.nodeid))
            self.tests_with_fault[fault.hook] += 1
        for block in session.blocks:
            self.top.append((block.duration_ms, item.nodeid, block))
        self.top = sorted(self.top, key=lambda t: -t[0])[:_TOP_BLOCKS]
        self.combined.add(session)
        return over

    def write_report(self, config: pytest.Config) -> None:
        path = self.settings.report_path
        if path is None or self.combined.reports == 0:
            return
        worker = getattr(config, "workerinput", {}).get("workerid")
        base, ext = os.path.splitext(path)
        if worker:  # pytest-xdist: one report per worker, never overwritten by another
            base = f"{base}.{worker}"
        json_path = base + (ext if ext and ext != ".html" else ".json")
        html_path = base + ".html"
        session = self.combined.session(argv=["pytest", *sys.argv[1:]])
        for target, text in ((json_path, session.to_json() + "\n"),
                             (html_path, html.render(session))):
            directory = os.path.dirname(os.path.abspath(target))
            os.makedirs(directory, exist_ok=True)
            write_text(target, text)
            self.written.append(target)

    def summary_lines(self) -> list[str]:
        s = self.settings
        lines = [f"recorded {self.tests} test{'s' if self.tests != 1 else ''}; "
                 f"{self.blocks} block{'s' if self.blocks != 1 else ''} of the loop in "
                 f"{self.tests_with_blocks} test{'s' if self.tests_with_blocks != 1 else ''}"
                 + (f"; {self.over_budget} over budget" if self.over_budget else "")]
        if self.top:
            lines.append("longest blocks:")
            for duration, nodeid, block in self.top:
                call = block.call or "slow step"
                lines.append(f"  {duration:8.1f} ms  {call} at {where(block.site)}  [{nodeid}]")
        if self.starved:
            count = self.starved
            lines.append(f"not counted against the budget: {count} block"
                         f"{'s' if count != 1 else ''} of a busy machine (the loop thread "
                         "waited for a CPU and ran for less than the threshold):")
            for duration, nodeid, block in self.top_starved:
                lines.append(f"  {duration:8.1f} ms  at {where(block.site)}  [{nodeid}]")
        if self.exemptions:
            lines.append("exemptions used (allow=):")
            for x in self.exemptions:
                lines.append(f"  {x.rule!r}: {x.count} block{'s' if x.count != 1 else ''}  "
                             f"[{x.test}]")
        if self.written:
            lines.append("report: " + ", ".join(self.written))
        elif s.report_path is not None:
            lines.append("report: not written (no test was recorded)")
        return lines

    def fault_lines(self) -> list[str]:
        """A hook that switched itself off in a recorded test: said in the summary, not
        only in the JSON report."""
        lines = []
        for hook, (fault, first) in self.faults.items():
            count = self.tests_with_fault[hook]
            lines.append(disabled_hook_line(
                fault, f" in {count} test{'s' if count != 1 else ''} (first {first})"))
        return lines


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(_SETTINGS, None)
    if run is not None:
        run.write_report(session.config)


def _process_wide_fault_lines() -> list[str]:
    """Faults of an installation made outside the plugin (``sitecustomize``, a ``.pth``
    file, ``opentelemetry-instrument``, a conftest), which no test recording shows."""
    if not _api.is_installed():
        return []
    try:
        faults = _api.snapshot().faults
    except Exception:  # the summary of pytest's run comes first
        return []
    return [disabled_hook_line(f, " (installed outside the pytest plugin)") for f in faults]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(_SETTINGS, None)
    if run is None:
        return
    warnings = run.fault_lines() + _process_wide_fault_lines()
    if run.tests == 0 and run.settings.report_path is None and not warnings:
        return
    terminalreporter.section("looptrace")
    for line in warnings:
        terminalreporter.write_line(line, yellow=True, bold=True)
    if run.tests or run.settings.report_path is not None:
        for line in run.summary_lines():
            terminalreporter.write_line(line)
