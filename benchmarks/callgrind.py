"""What instructions.py and instructions_aiohttp.py share: running a Python program under
callgrind, reading its instruction total, and writing the per-operation table."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping

# Fixed malloc thresholds: glibc's adaptive mmap threshold would otherwise make the count
# depend on the allocation history of the run.
ENV = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576:"
                                       "glibc.malloc.trim_threshold=4194304"}
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


def write(out: str, document: dict[str, object], markdown: str) -> None:
    """The JSON results and, beside them, the Markdown table; the table is printed too."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(document, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown)
    print()
    print(markdown)
