"""The HTML report, opened in a real headless Chromium (Debian's ``chromium`` package,
installed by ``scripts/setup-chromium.sh``) driven by Playwright, on a real recording.

The page must load with no console error and no request beyond the file itself, show the
hotspot table with the site, show a task named ``<script>alert(1)</script>`` as text, stay
readable with JavaScript off, and a screenshot is saved (``build/test-artifacts/`` or
``$LOOPTRACE_ARTIFACTS``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from front_end_program import EVIL_TASK, line_of, record
from looptrace import CodeLocation, Session
from looptrace.exporters import html
from looptrace.session import Exemption, FaultSummary

CHROMIUM = os.environ.get("LOOPTRACE_CHROMIUM", "/usr/bin/chromium")
# Playwright adds --headless (headless=True) and --user-data-dir (the profile argument).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
REPOSITORY = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("LOOPTRACE_ARTIFACTS", REPOSITORY / "build" / "test-artifacts"))


@pytest.fixture(scope="module")
def session(slow_http_server: str) -> Session:
    """The program recorded in full mode."""
    return record(slow_http_server, mode="full")


@pytest.fixture(scope="module")
def report_file(session: Session, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(html.render(session), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def playwright(session: Session) -> Iterator[Any]:
    """Playwright's driver. It runs an event loop in this thread, so the recording (which
    runs one of its own) is made first."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-chromium.sh (apt-get install "
                    "chromium) or set LOOPTRACE_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


def launch(playwright: Any, profile: Path, **options: Any) -> Any:
    """Debian's Chromium, headless, with a throw-away profile; Playwright never downloads a
    browser here."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS, **options)


@pytest.fixture(scope="module")
def browser(playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    context = launch(playwright, tmp_path_factory.mktemp("chromium-profile"),
                     viewport={"width": 1280, "height": 900})
    try:
        yield context
    finally:
        context.close()


class _Page:
    """A loaded page and everything it did."""

    def __init__(self, context: Any, url: str) -> None:
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(url, wait_until="load")


@pytest.fixture(scope="module")
def loaded(browser: Any, report_file: Path) -> Iterator[_Page]:
    page = _Page(browser, report_file.as_uri())
    yield page
    page.page.close()


def test_page_loads_without_errors_or_requests(loaded: _Page, report_file: Path) -> None:
    """The report loads with no console error, no script error and no request other than
    the file itself: it is self-contained."""
    assert [m for m in loaded.console if m[0] in ("error", "warning")] == []
    assert loaded.errors == []
    assert loaded.requests == [report_file.as_uri()]


def test_screenshot(loaded: _Page) -> None:
    """A full-page screenshot is saved for people (and CI artifacts) to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / "html-report.png"
    loaded.page.screenshot(path=str(target), full_page=True)
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    print(f"screenshot: {target}")


def test_hotspot_table_shows_sites_and_source(loaded: _Page) -> None:
    """The hotspot table names the time.sleep block's site (file:line and function) and
    the CPU loop's, with the source line around each, read from the file."""
    table = loaded.page.locator("#hotspot-table")
    text = table.inner_text()
    sleep_line = line_of("SLEEP_LINE")
    assert f"front_end_program.py:{sleep_line} in legacy_read" in text
    assert "time.sleep" in text
    assert "front_end_program.py:" in text and "in crunch" in text
    hits = table.locator("pre.source span.hit").all_inner_texts()
    assert any("time.sleep(0.06)" in hit and hit.lstrip().startswith(str(sleep_line))
               for hit in hits), hits


def test_script_task_name_is_text(loaded: _Page) -> None:
    """A task named <script>alert(1)</script> shows as that text in the task table; it
    never becomes an element nor runs."""
    cells = loaded.page.locator("#task-table td.task-name")
    assert EVIL_TASK in cells.all_inner_texts()
    assert loaded.dialogs == []
    assert loaded.page.evaluate("document.scripts.length") == 1  # looptrace's own


def test_timeline_marks_blocks_and_activity(loaded: _Page, session: Session) -> None:
    """The loop's timeline draws busy and io-wait activity and one mark per block, each
    linking to its row in the blocks table."""
    svg = loaded.page.locator("svg.timeline").first
    assert svg.locator("rect.busy").count() > 0 and svg.locator("rect.idle").count() > 0
    marks = svg.locator("rect.block")
    assert marks.count() == len(session.blocks) >= 3
    assert loaded.page.locator("#block-table tbody tr").count() == len(session.blocks)
    title = marks.first.locator("title").text_content() or ""
    assert title.startswith("block #1:")


def test_styles_and_sorting_run_under_the_content_security_policy(loaded: _Page) -> None:
    """The inline style and script are allowed by the page's CSP (by hash): tables are
    styled, and clicking a column header sorts the table."""
    page = loaded.page
    assert page.evaluate(
        "getComputedStyle(document.querySelector('table')).borderCollapse") == "collapse"
    page.locator("#block-table thead th", has_text="duration").click()
    durations = [float(v) for v in page.locator("#block-table tbody td:nth-child(3)")
                 .evaluate_all("cells => cells.map(c => c.getAttribute('data-v'))")]
    assert durations == sorted(durations, reverse=True)


def test_tables_readable_without_javascript(playwright: Any, report_file: Path,
                                            tmp_path: Path) -> None:
    """With JavaScript off the loops, hotspot, blocks and task tables are all there."""
    context = launch(playwright, tmp_path / "profile", java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(report_file.as_uri())
        assert page.evaluate("1 + 1") == 2  # Playwright's own evaluation still works
        for table in ("#hotspot-table", "#block-table", "#task-table", "#loop-table"):
            assert page.locator(f"{table} tbody tr").count() > 0, table
        assert "front_end_program.py" in page.locator("#hotspot-table").inner_text()
        assert page.locator("th.sortable").count() == 0  # the script did not run
    finally:
        context.close()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def test_every_program_string_is_escaped(session: Session) -> None:
    """Markup in any string from the program (argv, thread, paths, functions, calls,
    coroutines, tasks, rules, errors) is rendered as text: the document has exactly the
    elements and attributes looptrace wrote."""
    evil = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    location = CodeLocation(f"/tmp/{evil}.py", 3, evil)
    loop = replace(session.loops[0], thread=evil, kind=evil)
    hotspot = replace(session.hotspots[0], call=evil, site=location, task=evil,
                      coroutine=evil, stack=(location,), advice=evil)
    block = replace(session.blocks[0], call=evil, site=location, task=evil,
                    trace_id=evil, span_id=evil)
    task = replace(session.tasks[0], name=evil, coroutine=evil)
    nasty = replace(session, argv=(evil,), loops=(loop,), hotspots=(hotspot,),
                    blocks=(block,), tasks=(task,), started_at=evil, python=evil,
                    exemptions=(Exemption(evil, 1, evil),),
                    faults=(FaultSummary(evil, 1, evil),), dropped={evil: 1})
    parser = _Tags()
    parser.feed(html.render(nasty))
    assert [tag for tag, _ in parser.tags].count("script") == 1
    assert "img" not in [tag for tag, _ in parser.tags]
    assert not any(name.startswith("on") for _, attrs in parser.tags for name, _ in attrs)


def test_report_command_writes_html(session: Session, tmp_path: Path) -> None:
    """``looptrace report FILE --format html`` renders a saved report like the live one
    (the source excerpts are read when rendering, so both see the same files)."""
    from looptrace.cli import main

    saved = tmp_path / "report.json"
    session.save(saved)
    out = tmp_path / "report.html"
    assert main(["report", str(saved), "--format", "html", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == html.render(Session.load(saved))


def test_many_loops_say_both_what_the_table_and_the_timeline_leave_out(session: Session) -> None:
    """Past 200 loops the table note and the timeline note are both in the page (the
    second used to overwrite the first)."""
    loops = tuple(replace(session.loops[0], id=i) for i in range(1, html.MAX_LOOP_ROWS + 2))
    page = html.render(replace(session, loops=loops))
    assert f"The table shows the {html.MAX_LOOP_ROWS} loops with the most" in page
    assert f"of {len(loops)}; the JSON report has them all" in page
    assert f"Timelines of the {html.MAX_TIMELINES} loops with the most" in page
