"""Which source ran: a fingerprint of each file a report points at, and the rule for
showing its lines later.

A report is rendered later, maybe after the code changed, maybe from a file someone
crafted. So when a report is made (a snapshot, never in a hook on the loop thread), each
file named by a hotspot or a block site is fingerprinted (SHA-256 of its bytes), and the
HTML report shows source lines only from a file that:

1. is a regular Python source file (``.py``/``.pyw``), at most 5 MB;
2. has a fingerprint recorded in the report;
3. still has that fingerprint when the report is rendered.

So a report rendered after an edit shows no lines rather than today's; a block after a
``chdir`` never shows an unrelated file of the same name; and a crafted report cannot make
the renderer embed ``/etc/passwd`` (not Python source) or any file whose exact content its
author does not already know.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable

MAX_SOURCE_BYTES = 5_000_000
_SUFFIXES = (".py", ".pyw")
_MAX_FILES = 512


def read_source(path: str) -> bytes | None:
    """The bytes of a Python source file, or None (not .py, not a regular file, too big,
    unreadable)."""
    if not path.endswith(_SUFFIXES) or not os.path.isabs(path):
        return None
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SOURCE_BYTES:
                return None
            return f.read(MAX_SOURCE_BYTES + 1)
    except OSError:
        return None


def fingerprint(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fingerprints(paths: Iterable[str]) -> dict[str, str]:
    """``{path: "sha256:..."}`` for each readable Python source among ``paths``."""
    found: dict[str, str] = {}
    for path in paths:
        if path in found or len(found) >= _MAX_FILES:
            continue
        data = read_source(path)
        if data is not None:
            found[path] = fingerprint(data)
    return found


def matching_source(path: str, recorded: str | None) -> bytes | None:
    """The file's bytes if it is Python source that still matches its fingerprint."""
    if not recorded:
        return None
    data = read_source(path)
    if data is None or fingerprint(data) != recorded:
        return None
    return data
