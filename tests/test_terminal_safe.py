"""Names from the traced program never reach the terminal raw (issue 11, item 12).

A task, a thread, a file, a function, an exception text or an argv item may hold ANSI
escapes (set the window title, clear the screen, recolour) or newlines (forge a summary
line). The summary of `looptrace run` and `looptrace report --format text` show them
escaped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from looptrace._text import terminal_safe

LOOPTRACE = [sys.executable, "-m", "looptrace"]
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\rback\nlooptrace: 0 blocks\u202etxt"

PROGRAM = """
    import asyncio, threading, time
    HOSTILE = {hostile!r}

    def {function}():
        time.sleep(0.12)

    async def blocker():
        await asyncio.sleep(0)
        {function}()

    async def main():
        await asyncio.create_task(blocker(), name=HOSTILE)

    def run():
        asyncio.run(main())

    thread = threading.Thread(target=run, name=HOSTILE)
    thread.start()
    thread.join()
"""


def _assert_safe(text: str) -> None:
    for line in text.splitlines():
        assert "\x1b" not in line and "\x07" not in line and "\r" not in line, repr(line)
        assert "\u202e" not in line
    # the forged summary line stays inside the name's line
    assert not any(line.startswith("looptrace: 0 blocks") for line in text.splitlines())


def test_the_summary_and_the_text_report_escape_program_names(tmp_path: Path) -> None:
    """Task and thread names with escapes and newlines: escaped in the summary and in
    `looptrace report --format text`; the JSON report keeps them exactly."""
    script = tmp_path / "hostile.py"
    script.write_text(textwrap.dedent(PROGRAM.format(hostile=HOSTILE, function="blocking")))
    report = tmp_path / "r.json"
    result = subprocess.run([*LOOPTRACE, "run", "--threshold-ms", "50", "--json", str(report),
                             str(script), HOSTILE], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    summary = result.stderr
    assert "\\x1b]0;owned\\x07" in summary
    _assert_safe(summary)
    data = json.loads(report.read_text())
    assert data["hotspots"][0]["task"] == HOSTILE
    assert data["argv"][-1] == HOSTILE
    rendered = subprocess.run([*LOOPTRACE, "report", str(report)], capture_output=True,
                              text=True, timeout=60, check=False)
    assert rendered.returncode == 0
    _assert_safe(rendered.stdout)
    assert "\\x1b[2J" in rendered.stdout


def test_a_crafted_report_cannot_reach_the_terminal_raw(tmp_path: Path) -> None:
    """Every text field of a crafted report (file, function, call, advice, fault, loop
    kind, dropped counter names) is escaped by `looptrace report`."""
    script = tmp_path / "p.py"
    script.write_text("import asyncio, time\nasync def m():\n    await asyncio.sleep(0)\n"
                      "    time.sleep(0.06)\nasyncio.run(m())\n")
    report = tmp_path / "r.json"
    subprocess.run([*LOOPTRACE, "run", "--quiet", "--threshold-ms", "30", "--json",
                    str(report), str(script)], check=True, timeout=120)
    data = json.loads(report.read_text())
    hotspot = data["hotspots"][0]
    hotspot["site"]["file"] = "/x/" + HOSTILE + ".py"
    hotspot["site"]["function"] = HOSTILE
    hotspot["call"] = HOSTILE
    hotspot["advice"] = HOSTILE
    data["loops"][0]["kind"] = HOSTILE
    data["dropped"] = {HOSTILE: 1}
    data["faults"] = [{"hook": HOSTILE, "count": 1, "error": HOSTILE}]
    report.write_text(json.dumps(data))
    rendered = subprocess.run([*LOOPTRACE, "report", str(report)], capture_output=True,
                              text=True, timeout=60, check=False)
    assert rendered.returncode == 0, rendered.stderr
    _assert_safe(rendered.stdout)


def test_terminal_safe_unit() -> None:
    """Control characters become escapes; printable text, even non-ASCII, is kept."""
    assert terminal_safe("Task-1 é 任务") == "Task-1 é 任务"
    assert terminal_safe("a\x1b[0mb\nc\td\x9b") == "a\\x1b[0mb\\x0ac\\x09d\\x9b"
    assert terminal_safe("a\nb\tc\x1b", multiline=True) == "a\nb\tc\\x1b"
    assert terminal_safe("\u202eevil") == "\\u202eevil"
