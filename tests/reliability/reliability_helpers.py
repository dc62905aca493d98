"""Helpers for the reliability tests: run Python in a child process, count threads and
file descriptors, find the test programs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
REPO = HERE.parent.parent
SRC = REPO / "src"


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child Python: ours without any ``LOOPTRACE_*`` or
    ``PYTHONPATH`` setting (a developer's shell must not change what a test sees)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOOPTRACE_") and k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_python(args: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 120,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python args...`` with this interpreter; output captured as text."""
    return subprocess.run([sys.executable, *args], capture_output=True, encoding="utf-8",
                          errors="surrogateescape", timeout=timeout,
                          env=child_environment(env), cwd=cwd, check=False)


def open_fds() -> set[int]:
    """This process's open file descriptors."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
