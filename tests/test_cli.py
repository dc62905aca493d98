"""looptrace run / report: the program runs as under python; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

LOOPTRACE = [sys.executable, "-m", "looptrace"]


def run(args: list[str], *, cwd: Path | None = None, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOPTRACE, *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=timeout, check=False)


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


BLOCKING_PROGRAM = """
    import asyncio, json, sys, time

    async def main():
        await asyncio.sleep(0)
        time.sleep(0.12)  # CLI_BLOCK
        await asyncio.sleep(0)

    asyncio.run(main())
    print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__}))
"""


def test_run_keeps_argv_path_main_and_prints_the_summary_to_stderr(tmp_path: Path) -> None:
    """The script sees its own argv, sys.path[0] and __name__; stdout is the program's,
    the summary goes to stderr; the JSON report names the blocking line."""
    script = write(tmp_path / "prog.py", BLOCKING_PROGRAM)
    report = tmp_path / "report.json"
    result = run(["run", "--threshold-ms", "50", "--json", str(report), str(script), "a",
                  "--b", "-c"])
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {"argv": [str(script), "a", "--b", "-c"], "path0": str(tmp_path),
                    "name": "__main__"}
    assert "blocking-call  time.sleep" in result.stderr
    assert "prog.py:6 in main" in result.stderr
    data = json.loads(report.read_text())
    assert data["schema"] == "looptrace.report/1"
    (hotspot,) = data["hotspots"]
    assert hotspot["site"] == {"file": str(script), "line": 6, "function": "main"}


def test_python_dash_m_looptrace_and_the_console_script_are_the_same(tmp_path: Path) -> None:
    """`looptrace run` (console script) behaves like `python -m looptrace run`."""
    script = write(tmp_path / "prog.py", BLOCKING_PROGRAM)
    console = Path(sys.executable).parent / "looptrace"
    assert console.exists(), "the looptrace console script is not installed"
    result = subprocess.run([str(console), "run", "--threshold-ms", "50", str(script)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "time.sleep" in result.stderr


def test_run_module_sets_argv_and_path_like_python_dash_m(tmp_path: Path) -> None:
    """`looptrace run -m pkg.mod args` runs the module as __main__ with cwd on sys.path."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write(package / "mod.py", BLOCKING_PROGRAM)
    result = run(["run", "--threshold-ms", "50", "-m", "pkg.mod", "x", "--y"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["argv"] == [str(package / "mod.py"), "x", "--y"]
    assert seen["path0"] == str(tmp_path)
    assert seen["name"] == "__main__"
    assert "time.sleep" in result.stderr


def test_stdin_and_stdout_pass_through(tmp_path: Path) -> None:
    """The program reads its stdin and writes its stdout as usual."""
    script = write(tmp_path / "echo.py", """
        import sys
        sys.stdout.write(sys.stdin.read().upper())
    """)
    result = run(["run", "--quiet", str(script)], stdin="hello\n")
    assert result.returncode == 0
    assert result.stdout == "HELLO\n"
    assert result.stderr == ""


@pytest.mark.parametrize(("code", "status"), [
    ("raise SystemExit(3)", 3),
    ("import sys; sys.exit(0)", 0),
    ("import sys; sys.exit('bye')", 1),
    ("raise ValueError('boom')", 1),
])
def test_exit_status_is_the_programs_and_the_report_is_written(
        tmp_path: Path, code: str, status: int) -> None:
    """sys.exit(n), an uncaught exception: same status as under python; the JSON report is
    written anyway."""
    script = write(tmp_path / "exit.py", f"""
        import asyncio, time
        async def main():
            await asyncio.sleep(0)
            time.sleep(0.08)
        asyncio.run(main())
        {code}
    """)
    report = tmp_path / "report.json"
    result = run(["run", "--threshold-ms", "50", "--json", str(report), str(script)])
    assert result.returncode == status, result.stderr
    assert len(json.loads(report.read_text())["hotspots"]) == 1
    if "ValueError" in code:
        assert "ValueError: boom" in result.stderr
        assert "Traceback" in result.stderr
        # the traceback starts at the program, not inside looptrace or runpy
        assert "looptrace/cli.py" not in result.stderr and "runpy.py" not in result.stderr
    if "'bye'" in code:
        assert "bye" in result.stderr


def test_keyboard_interrupt_still_writes_the_report(tmp_path: Path) -> None:
    """Ctrl-C in the program: the report is written, the status and the traceback are
    Python's own (no looptrace frame in it)."""
    script = write(tmp_path / "interrupt.py", "raise KeyboardInterrupt\n")
    report = tmp_path / "report.json"
    result = run(["run", "--json", str(report), str(script)])
    expected = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              check=False)
    assert result.returncode == expected.returncode
    assert report.exists()
    traceback_lines = [line for line in result.stderr.splitlines() if line.startswith("  File")]
    assert traceback_lines == [line for line in expected.stderr.splitlines()
                               if line.startswith("  File")]


def test_sigterm_writes_the_report_then_ends_as_sigterm(tmp_path: Path) -> None:
    """A service stopped with SIGTERM: the blocks so far are in the report, and the process
    still ends the way SIGTERM ends it."""
    script = write(tmp_path / "service.py", """
        import asyncio, time
        async def main():
            await asyncio.sleep(0)
            time.sleep(0.12)
            await asyncio.sleep(0.01)  # the blocking step is over before we say so
            print("serving", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    report = tmp_path / "report.json"
    process = subprocess.Popen([*LOOPTRACE, "run", "--threshold-ms", "50", "--json",
                                str(report), str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "serving"
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGTERM
    (hotspot,) = json.loads(report.read_text())["hotspots"]
    assert hotspot["call"] == "time.sleep"
    assert "blocking-call  time.sleep" in stderr


def test_a_program_that_handles_sigterm_keeps_its_handler(tmp_path: Path) -> None:
    """looptrace's SIGTERM report only stands in for the default action: a program's own
    handler runs and decides the exit."""
    script = write(tmp_path / "graceful.py", """
        import os, signal, sys
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    """)
    result = run(["run", "--quiet", str(script)])
    assert result.returncode == 7


@pytest.mark.parametrize("args", [
    ["run", "--threshold-ms", "soon", "x.py"],
    ["run", "--threshold-ms", "-5", "x.py"],
    ["run", "--threshold-ms", "nan", "x.py"],
    ["run", "--frobnicate", "x.py"],
    ["run", "--json", "/nonexistent-dir/r.json", "x.py"],
    ["run", "--json", "/", "x.py"],
    ["run", "-m"],
    ["run", "--json", "r.json"],
    ["run"],
    ["run", "--otlp", "ftp://collector", "x.py"],
    ["run", "--mode", "loud", "x.py"],
    ["report", "missing.json"],
    ["report"],
    ["bogus-command"],
])
def test_bad_input_is_one_line_and_status_2(args: list[str]) -> None:
    """Every kind of bad input: one line on stderr, no traceback, exit status 2."""
    result = run(args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("looptrace: error:")
    assert "Traceback" not in result.stderr


def test_bad_environment_variable_is_one_line_and_status_2(tmp_path: Path) -> None:
    """A malformed LOOPTRACE_* variable is named on one line; the program does not run."""
    script = write(tmp_path / "prog.py", "print('ran')\n")
    env = {**os.environ, "LOOPTRACE_THRESHOLD_MS": "quick"}
    result = subprocess.run([*LOOPTRACE, "run", str(script)], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == 2
    assert "LOOPTRACE_THRESHOLD_MS" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_report_renders_a_saved_report(tmp_path: Path) -> None:
    """`looptrace report FILE` prints the summary of a saved report; --format json
    round-trips it."""
    script = write(tmp_path / "prog.py", BLOCKING_PROGRAM)
    report = tmp_path / "report.json"
    assert run(["run", "--quiet", "--threshold-ms", "50", "--json", str(report),
                str(script)]).returncode == 0
    text = run(["report", str(report)])
    assert text.returncode == 0
    assert "blocking-call  time.sleep" in text.stdout
    again = tmp_path / "again.json"
    assert run(["report", str(report), "--format", "json", "-o", str(again)]).returncode == 0
    assert json.loads(again.read_text()) == json.loads(report.read_text())


@pytest.mark.parametrize("content", [
    "",
    "{",
    '{"schema": "looptrace.report/1"',
    "[1, 2, 3]",
    '{"schema": "something-else/9"}',
    '{"schema": "looptrace.report/1", "loops": "many"}',
    "\x00\x01binary",
])
def test_report_of_a_corrupt_file_is_one_clear_line(tmp_path: Path, content: str) -> None:
    """A truncated, corrupt or foreign file: one line naming the file, status 2."""
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = run(["report", str(path)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
    assert "Traceback" not in result.stderr
