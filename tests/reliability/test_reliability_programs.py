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
    # SIGTERM's default action ends the process at once, before any exit code runs.
    assert (tmp_path / "report.json").exists() == (name != "sigterm")
