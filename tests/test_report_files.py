"""Report files are written as ``open(path, "w")`` would write them, never half-written.

One writer (``looptrace._files.write_text``) serves ``looptrace run``, ``looptrace report
-o``, ``Session.save`` and the pytest plugin: a regular file is replaced atomically, a
symbolic link is written through, a FIFO or a device is written in place, and a full disk
is one line and a non-zero status, with no temporary file left behind.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from looptrace._files import write_text

LOOPTRACE = [sys.executable, "-m", "looptrace"]
PROGRAM = "import asyncio\nasyncio.run(asyncio.sleep(0))\nprint('ran')\n"


def _run(tmp_path: Path, *options: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    return subprocess.run([*LOOPTRACE, "run", "--quiet", *options, str(script)],
                          capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)  # type: ignore[call-overload]


def test_a_symlink_is_written_through_and_keeps_its_target_mode(tmp_path: Path) -> None:
    """Item 10: `--json link` writes the link's target; the link stays a link and the
    target keeps its permissions."""
    target = tmp_path / "real.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    result = _run(tmp_path, "--json", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert json.loads(target.read_text())["schema"] == "looptrace.report/1"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "prog.py", "real.json"]


def test_a_fifo_receives_the_report_and_stays_a_fifo(tmp_path: Path) -> None:
    """Item 10: a FIFO is opened and written, as `open(path, "w")` would, not replaced."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = _run(tmp_path, "--json", str(fifo))
    reader.join(60)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert json.loads(received[0])["schema"] == "looptrace.report/1"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_device_is_one_line_and_a_failure_and_stays_a_device(tmp_path: Path) -> None:
    """Item 10: `--json /dev/full` reports ENOSPC in one line and a non-zero status; the
    device is still a device and nothing was left next to it."""
    before = set(os.listdir("/dev"))
    result = _run(tmp_path, "--json", "/dev/full")
    assert result.stdout == "ran\n"
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "looptrace: could not write /dev/full: No space left on device"]
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert set(os.listdir("/dev")) - before == set()
    rendered = subprocess.run([*LOOPTRACE, "report", str(tmp_path / "missing.json"),
                               "-o", "/dev/full"], capture_output=True, text=True,
                              timeout=60, check=False)
    assert rendered.returncode == 2 and len(rendered.stderr.splitlines()) == 1


def _small_file_limit() -> None:
    # A file may not grow past 600 bytes: the report's write fails as on a full disk
    # (EFBIG; Python ignores SIGXFSZ).
    resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))


def test_a_full_disk_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Item 11: when the disk fills while the report is written, the old report stays as
    it was, the error is one line, and no `.tmp` file is left behind."""
    report = tmp_path / "r.json"
    report.write_text("previous report\n")
    result = _run(tmp_path, "--json", str(report), "--html", str(tmp_path / "r.html"),
                  preexec_fn=_small_file_limit)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("looptrace: could not write") for line in lines)
    assert report.read_text() == "previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prog.py", "r.json"]


def test_write_text_unit(tmp_path: Path) -> None:
    """The writer itself: a new file gets the umask's mode, a lone surrogate is escaped,
    writing into /dev/null leaves /dev/null alone."""
    path = tmp_path / "new.txt"
    write_text(path, "name \udcff\n")
    assert path.read_text() == "name \\udcff\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    write_text(os.devnull, "nothing")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
