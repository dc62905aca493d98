"""Programs that do unusual things to their own process run under ``looptrace run`` exactly
as under ``python``: same standard output, same exit status."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from reliability_helpers import run_python

PROGRAMS = {
    # Regression: the summary was written to the closed (or None) stderr, and the
    # ValueError/AttributeError turned exit status 0 into 1.
    "closes-stderr": """
        import asyncio, sys
        asyncio.run(asyncio.sleep(0))
        print("out", flush=True)
        sys.stderr.close()
    """,
    "streams-none": """
        import asyncio, sys
        asyncio.run(asyncio.sleep(0))
        print("out", flush=True)
        sys.stdout = None
        sys.stderr = None
    """,
    "closes-stdout": """
        import asyncio, sys
        asyncio.run(asyncio.sleep(0))
        print("out", flush=True)
        sys.stdout.close()
    """,
    "keyboard-interrupt": """
        import asyncio
        async def main():
            await asyncio.sleep(0)
            raise KeyboardInterrupt
        asyncio.run(main())
    """,
    "sigterm": """
        import asyncio, os, signal
        async def main():
            await asyncio.sleep(0)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(5)
        asyncio.run(main())
    """,
    "exit-with-a-thread-running": """
        import asyncio, sys, threading
        threading.Thread(target=lambda: asyncio.run(asyncio.sleep(0.2))).start()
        print("main done", flush=True)
        sys.exit(7)
    """,
    "fork": """
        import asyncio, os, time
        async def main():
            time.sleep(0.06)
            await asyncio.sleep(0)
        pid = os.fork()
        if pid == 0:
            asyncio.run(main())
            print("child ok", flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        asyncio.run(main())
        print("parent ok")
    """,
    "chdir": """
        import asyncio, os, time
        os.chdir("/")
        async def main():
            time.sleep(0.06)
            await asyncio.sleep(0)
        asyncio.run(main())
        print("ok")
    """,
    "own-excepthook": """
        import sys
        sys.excepthook = lambda t, v, tb: print("custom hook:", t.__name__, v)
        raise ValueError("boom")
    """,
    "exit-from-a-callback": """
        import asyncio, sys
        loop = asyncio.new_event_loop()
        loop.call_soon(sys.exit, 5)
        loop.run_forever()
    """,
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_an_unusual_program_runs_as_under_python(tmp_path: Path, name: str) -> None:
    """Same stdout and exit status under `looptrace run` as under `python`."""
    script = tmp_path / f"{name.replace('-', '_')}.py"
    script.write_text(textwrap.dedent(PROGRAMS[name]))
    alone = run_python([str(script)], timeout=60)
    traced = run_python(["-m", "looptrace", "run", "--threshold-ms", "50", "--json",
                         str(tmp_path / "report.json"), str(script)], timeout=60)
    assert traced.returncode == alone.returncode, traced.stderr
    assert traced.stdout == alone.stdout
    # Even SIGTERM: looptrace run writes the report, then ends as SIGTERM ends a process.
    assert (tmp_path / "report.json").exists()


def test_names_that_are_not_utf8_are_written_and_read_back(tmp_path: Path) -> None:
    """Regression: a script in a directory whose name is not UTF-8, run with an argument
    that is not UTF-8 (both legal on Linux; Python holds such bytes as lone surrogates),
    made looptrace fail at exit with a UnicodeEncodeError traceback, exit status 1 and no
    report. Now every output is written, the program's status kept, the JSON report reads
    back the same names, and `looptrace report` renders it in every format."""
    directory = tmp_path / "caf\udcff"  # the byte 0xff, as os.fsdecode() gives it
    directory.mkdir()
    script = directory / "app.py"
    script.write_text(textwrap.dedent("""
        import asyncio, sys, time
        async def main():
            time.sleep(0.06)
            await asyncio.sleep(0)
        asyncio.run(main())
        sys.exit(3)
    """))
    outputs = {"json": "r.json", "html": "r.html", "chrome-trace": "c.json",
               "jaeger-json": "j.json"}
    options = [item for option, name in outputs.items()
               for item in (f"--{option}", str(tmp_path / name))]
    result = run_python(["-m", "looptrace", "run", "--threshold-ms", "20", *options,
                         str(script), "arg-\udcfe"], timeout=60)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    for name in outputs.values():
        assert (tmp_path / name).stat().st_size > 0
    from looptrace import Session

    session = Session.load(tmp_path / "r.json")
    assert session.argv == (str(script), "arg-\udcfe")
    assert session.hotspots[0].site is not None
    assert session.hotspots[0].site.file == str(script)
    for fmt in ("text", "json", "html", "chrome", "jaeger"):
        rendered = run_python(["-m", "looptrace", "report", str(tmp_path / "r.json"),
                               "--format", fmt], timeout=60)
        assert rendered.returncode == 0, rendered.stderr
