"""What instructions.py and instructions_aiohttp.py share: running a Python program under
callgrind, reading its instruction total, and the per-operation table."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping

import tools

# The malloc thresholds every benchmark pins: glibc's adaptive mmap threshold would
# otherwise make the count depend on the allocation history of the run.
ENV = {**os.environ, "GLIBC_TUNABLES": tools.MALLOC_PINNED}
COMMAND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
_TOTAL = re.compile(r"Collected : (\d+)")


def total(stderr: str) -> int:
    """The instruction total callgrind printed, or exit with its output."""
    match = _TOTAL.search(stderr)
    if match is None:
        raise SystemExit(f"callgrind failed:\n{stderr[-2000:]}")
    return int(match.group(1))


def python_version(python: str) -> str:
    return subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def table(title: str, columns: Iterable[str], configs: Iterable[str],
          results: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown: one row per configuration, one column per workload, each cell the count
    and what it adds over the ``none`` configuration."""
    columns = list(columns)
    lines = [title, "", "| configuration | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name in configs:
        cells = []
        for column in columns:
            value, base = results[column][name], results[column]["none"]
            cells.append(f"{value:,.0f}" if name == "none" else
                         f"{value:,.0f} ({value - base:+,.0f}, {value / base - 1:+.1%})")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

